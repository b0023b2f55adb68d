"""Redundancy reward (Reconsidering Overthinking, algorithms.md §13): P(x) vectors, FCS, ERD, IRD."""

import pytest
import torch

from rlreason.config.schema import RewardConfig, RewardFunctionConfig
from rlreason.rewards.redundancy import (fcs_end, internal_redundancy, last_boxed, penalty_sigmoid, redundancy,
                                         split_cot, split_sentences, windows)
from rlreason.types import ScoreRequest
from rlreason.workers.reward import RewardWorker


@pytest.mark.parametrize("x,p", [(0, 1.0), (0.5, 0.98197), (0.65, 0.730393), (0.7, 0.498761), (0.75, 0.26713),
                                 (0.9, 0.015552), (1.0, 0.0)])
def test_penalty_sigmoid_vectors(x, p):
    assert penalty_sigmoid(x) == pytest.approx(p, abs=1e-6)


def test_combination_vector():
    assert 0.5 * (penalty_sigmoid(0.75) + (1 - 0.25)) == pytest.approx(0.508565, abs=1e-6)


def test_cot_answer_fcs_and_sentences():
    assert split_cot("a</think>b") == "a" and split_cot("a</think>b</think>") is None and split_cot("ab") is None
    assert split_cot("ab", think_end=None) == "ab"
    assert last_boxed(r"x \boxed{1} then \boxed{\frac{1}{2}} end") == r"\frac{1}{2}"
    cot = "Add 1000 and 234: that is 1,234. Check: 1234 again."
    assert cot[:fcs_end(cot, "1234")] == "Add 1000 and 234: that is 1,234"  # thousands-separated form
    assert fcs_end("so 5+12 is 17, then 12", "12") == len("so 5+12 is 17, then 12")  # not after an operator
    assert fcs_end("The Answer Is Blue", "blue") == len("The Answer Is Blue")  # lower-cased search
    assert split_sentences("It is 3.5 now. Next! Why? $a. b$ stays.") == ["It is 3.5 now.", "Next!", "Why?",
                                                                      "$a. b$ stays."]
    assert windows([f"s{i}" for i in range(40)])[:2] == ["s0 s1 s2 s3", "s2 s3 s4 s5"]  # w=4, stride 2
    assert internal_redundancy(torch.eye(3)) == 0.0 and internal_redundancy(torch.ones(1, 4)) == 0.0


def response(extra: str = "") -> str:
    return ("<think>We need 7+5. Seven plus five is 12. " + extra + "So the result is \\boxed{12}.</think> "
            "The answer is \\boxed{12}.")


def test_penalty_grows_when_a_correct_solution_is_followed_by_more_text():
    more = "Let me double check this carefully. Counting up from seven: eight, nine, ten, eleven, twelve. " * 3
    short, long_, longer = redundancy(response=[response(), response(more), response(more * 2)],
                                      ground_truth=["12"] * 3, internal=False)
    assert 0 < short["erd"] < long_["erd"] < longer["erd"] < 1
    assert short["score"] > long_["score"] > longer["score"]
    assert short["score"] == pytest.approx(1 - short["erd"])
    wrong, malformed = redundancy(response=[response().replace("{12}", "{13}"), "no think tag \\boxed{12}"],
                                  ground_truth=["12", "12"], internal=False)
    assert wrong == {"score": 0.0} and malformed == {"score": 0.0}


def test_internal_redundancy_with_the_bundled_minilm():
    repeated = "<think>" + "Seven plus five is twelve. " * 8 + "So \\boxed{12}.</think> \\boxed{12}"
    varied = ("<think>Seven plus five: start at seven. Count five steps up. The steps pass eight and nine. "
              "Then ten, which crosses a multiple of ten. Eleven follows. The last step lands on the result. "
              "Cats are unrelated to this sum. So \\boxed{12}.</think> \\boxed{12}")
    rep, var = redundancy(response=[repeated, varied], ground_truth=["12", "12"], external=False)
    assert rep["ird"] > 0.85 and var["ird"] < rep["ird"] - 0.2
    assert rep["score"] < 0.05 < var["score"]


def test_batch_kind_through_the_reward_worker_with_a_named_embedder(tmp_path):
    (tmp_path / "emb.py").write_text(
        "import torch\n"
        "def embed(texts):\n"
        "    return torch.stack([torch.tensor([1.0, float(len(t) % 3)]) for t in texts])\n")
    fn = RewardFunctionConfig("redundancy", 1.0, {"embedder": f"{tmp_path / 'emb.py'}:embed"})
    worker = RewardWorker(RewardConfig(functions=[fn], processes=1, timeout_s=30), answer_key="answer")
    try:
        req = ScoreRequest(prompts=["p"] * 3, responses=[response(), response("More. " * 5), "bad"],
                           rows=[{"answer": "12"}] * 3, sample_ids=[0, 1, 2], response_lengths=[1] * 3,
                           truncated=[False] * 3, group_ids=[0, 0, 1])
        res = worker.score(req)
    finally:
        worker.close()
    assert res.errors == []
    erd = res.components["redundancy/erd"]
    assert erd[0] < erd[1] and torch.isnan(erd[2]) and res.scores[2] == 0.0
    assert (res.components["redundancy/ird"][:2] >= 0).all()
