"""Likelihood rewards (algorithms.md §14): equal to log p(answer | prompt, CoT) computed independently."""

import math

import pytest
import torch

from rlreason.config.schema import RewardConfig, RewardFunctionConfig, RunConfig
from rlreason.rewards.likelihood import floor_value, likelihood_scores
from rlreason.types import ScoreRequest, TokenScoreRequest
from rlreason.workers.reward import RewardWorker
from rlreason.workers.scoring import continuation_logprobs

PROMPTS = ["Q: 1+2 =\nA:", "Q: 7+5+8 =\nA:", "Q: 3+3 =\nA:", "Q: 9+1+1+1 =\nA:"]
RESPONSES = [" 1+2=3 <answer>3</answer>", " 7+5=12, 12+8=20. So<answer>20", " 3+3 is six, I think 6 <answer>5</answer>",
             " no marker here, just 12"]
ANSWERS = ["3", "20", "6", "12"]


def test_spec_vector():
    lp = torch.tensor([[-0.1, -0.2, -0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    got = [likelihood_scores(lp, mask, v).item() for v in ("logprob", "avg_logprob", "prob", "avg_prob")]
    assert got == pytest.approx([-0.6, -0.2, 0.548812, 0.821462], abs=1e-6)
    assert floor_value("prob", 3, 100, None) == 0.0 and floor_value("avg_prob", 3, 100, None) == 0.0
    assert floor_value("logprob", 3, 100, None) == pytest.approx(-3 * math.log(100))
    assert floor_value("avg_logprob", 3, 100, None) == pytest.approx(-math.log(100))
    assert floor_value("logprob", 3, 100, -50.0) == -50.0


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def independent(model, tok, prompt, response, answer, marker="<answer", prefix=">"):
    """log p(answer | prompt, CoT cut at the marker): one unpadded sequence, tokens counted by hand."""
    cot = response[:response.find(marker)]
    ctx = tok.encode(prompt + cot + marker + prefix)
    ans = tok.encode(answer)
    ids = torch.tensor([ctx + ans])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(ans))


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_forward_equals_independent_computation(tiny, batch_size):
    model, tok = tiny
    ctx = [p + r[:r.find("<answer")] + "<answer>" for p, r in zip(PROMPTS[:3], RESPONSES[:3])]
    res = continuation_logprobs(model, tok, TokenScoreRequest(ctx, ANSWERS[:3], batch_size=batch_size))
    got = (res.logprobs.double() * res.mask).sum(-1)
    want = [independent(model, tok, p, r, a) for p, r, a in zip(PROMPTS, RESPONSES, ANSWERS[:3])]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert res.mask.sum(-1).tolist() == [1.0, 2.0, 1.0] and res.vocab_size == len(tok)


def test_reward_worker_with_a_named_scorer_model(tiny, tiny_model_dir):
    model, tok = tiny
    fns = [RewardFunctionConfig("likelihood", 1.0, {"scorer": tiny_model_dir}),
           RewardFunctionConfig("likelihood", 0.0, {"scorer": tiny_model_dir, "variant": "prob"}, log_as="prob")]
    worker = RewardWorker(RewardConfig(functions=fns, processes=1), answer_key="answer")
    try:
        n = len(PROMPTS)
        res = worker.score(ScoreRequest(PROMPTS, RESPONSES, [{"answer": a} for a in ANSWERS], list(range(n)),
                                        [5] * n, [False] * n, group_ids=[0, 0, 1, 1]))
    finally:
        worker.close()
    want = [independent(model, tok, p, r, a) for p, r, a in zip(PROMPTS[:3], RESPONSES[:3], ANSWERS[:3])]
    assert res.errors == []
    assert res.components["likelihood"][:3].double().tolist() == pytest.approx(want, abs=1e-5)
    assert res.components["prob"][:3].double().tolist() == pytest.approx([math.exp(w) for w in want], abs=1e-5)
    # no marker: a finite floor (uniform model over the answer's 2 tokens) and probability 0
    assert res.components["likelihood"][3].item() == pytest.approx(-2 * math.log(len(tok)), abs=1e-5)
    assert res.components["prob"][3].item() == 0.0
    assert res.components["likelihood/marker"].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_rollout_worker_scores_with_its_policy(tiny, tiny_model_dir):
    """scorer=policy runs on the rollout workers: the same numbers from the engine's own model."""
    from rlreason.workers.rollout import RolloutWorker

    worker = RolloutWorker(RunConfig(), tiny_model_dir, threads=1)
    ctx = [p + r[:r.find("<answer")] + "<answer>" for p, r in zip(PROMPTS[:3], RESPONSES[:3])]
    res = worker.score_tokens(TokenScoreRequest(ctx, ANSWERS[:3]))
    model, tok = tiny
    want = [independent(model, tok, p, r, a) for p, r, a in zip(PROMPTS, RESPONSES, ANSWERS[:3])]
    assert (res.logprobs.double() * res.mask).sum(-1).tolist() == pytest.approx(want, abs=1e-5)


def test_context_longer_than_the_model_is_cut_from_the_left(tiny):
    model, tok = tiny
    long_ctx = "Q: 1+1 =\nA:" + " 1+1=2," * 60 + "<answer>"  # > 256 positions of the tiny model
    res = continuation_logprobs(model, tok, TokenScoreRequest([long_ctx, "Q: 1+1 =\nA:<answer>"], ["2", "2"]))
    assert res.truncated.tolist() == [True, False] and res.mask.sum(-1).tolist() == [1.0, 1.0]
    ids = tok.encode(long_ctx + "2")[-model.config.max_position_embeddings:]
    with torch.no_grad():
        want = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -2].double(), -1)[ids[-1]].item()
    assert res.logprobs[0, 0].item() == pytest.approx(want, abs=1e-5)
