"""Online drafter training on a tiny arithmetic model's own rollouts: the loss falls, acceptance rises
(offline and in the engine), no gradient reaches the policy, and a restored trainer continues exactly."""

import random

import pytest
import torch

from rlreason.config.spec_schema import DrafterTrainConfig, SpecConfig
from rlreason.rollout.native import NativeEngine
from rlreason.rollout.spec.build import build_drafter, prompt_vocab_map
from rlreason.rollout.spec.engine import FixedK, SpeculativeEngine
from rlreason.rollout.spec.train import DrafterBuffer, DrafterTrainer
from rlreason.tasks.arithmetic import make_row
from rlreason.types import GenerationRequest, SamplingParams, SequenceBatch
from spec_helpers import load

SP = SamplingParams(temperature=1.0, max_new_tokens=40)


@pytest.fixture(scope="module")
def arithmetic_model(tmp_path_factory):
    """A one-layer Llama taught the quickstart's running-sum solutions for a moment (peaked, structured laws)."""
    from rlreason.tasks.arithmetic import build_model

    path = build_model(str(tmp_path_factory.mktemp("arith")), seed=0, hidden_size=48, num_layers=1, num_heads=4,
                       intermediate_size=96)
    model, tok = load(path)
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(60):
        rows = [make_row(rng, 3, 5, 0.0) for _ in range(32)]
        seqs = [tok.encode(r["prompt"] + r["solution"], add_special_tokens=False) + [tok.eos_token_id] for r in rows]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
        labels = ids.masked_fill(ids == tok.pad_token_id, -100)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), tok


def rollouts(model, tok, seed, prompts=16, n=4):
    rng = random.Random(seed)
    ids = [tok.encode(make_row(rng, 3, 5, 0.0)["prompt"], add_special_tokens=False) for _ in range(prompts)]
    return SequenceBatch.from_rollout(NativeEngine(model, tok).generate(GenerationRequest(ids, [n] * prompts, 0, SP,
                                                                                           seed)))


def trainer_for(model, tok, kind, **overrides):
    spec = SpecConfig(enable=True, drafter=kind)
    cfg = DrafterTrainConfig(**{"steps": 40, "batch_size": 32, "lr": 3e-3, **overrides})
    return DrafterTrainer(build_drafter(spec, model, seed=1), model, cfg, SP.temperature, tok.pad_token_id, seed=0)


def engine_accept_rate(model, tok, drafter, seed=5):
    rng = random.Random(seed)
    ids = [tok.encode(make_row(rng, 3, 5, 0.0)["prompt"], add_special_tokens=False) for _ in range(8)]
    out = SpeculativeEngine(model, tok, drafter, FixedK(3)).generate(GenerationRequest(ids, [2] * 8, 0, SP, seed))
    return out.stats["spec/n/accepted"] / out.stats["spec/n/draft_tokens"]


@pytest.mark.parametrize("kind", ["eagle", "lm"])
def test_loss_falls_and_acceptance_rises_on_own_rollouts(arithmetic_model, kind):
    model, tok = arithmetic_model
    before_params = {k: v.clone() for k, v in model.state_dict().items()}
    tr = trainer_for(model, tok, kind)
    held_out = DrafterBuffer(1)
    held_out.add(0, rollouts(model, tok, seed=99))
    accept0, engine0 = tr.acceptance(held_out.rows()), engine_accept_rate(model, tok, tr.drafter)
    tr.add(rollouts(model, tok, seed=1), step=1)
    first = tr.train(steps=1)["drafter/loss"]
    last = tr.train()["drafter/loss"]
    accept1, engine1 = tr.acceptance(held_out.rows()), engine_accept_rate(model, tok, tr.drafter)
    print(f"{kind}: loss {first:.3f} -> {last:.3f}; offline acceptance {accept0:.3f} -> {accept1:.3f}; "
          f"engine acceptance (K=3) {engine0:.3f} -> {engine1:.3f}")
    assert last < 0.7 * first
    assert accept1 > accept0 + 0.15 and accept1 > 0.6
    assert engine1 > engine0 + 0.15
    # no gradient reached the policy, and it did not move
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before_params[k]) for k, v in model.state_dict().items())


def test_published_weights_and_restored_trainer_continue_exactly(arithmetic_model):
    model, tok = arithmetic_model
    a = trainer_for(model, tok, "eagle", steps=3, batch_size=8)
    a.add(rollouts(model, tok, seed=1, prompts=4), step=1)
    a.train()
    saved = a.state_dict()
    b = trainer_for(model, tok, "eagle", steps=3, batch_size=8)
    b.load_state_dict(saved)
    assert a.train() == b.train() and a.updates == b.updates == 6
    wa, wb = a.weights(2), b.weights(2)
    assert wa.state.keys() == wb.state.keys() and all(torch.equal(wa.state[k], wb.state[k]) for k in wa.state)
    assert not any(k.startswith(("embed", "lm_head")) for k in wa.state)  # the target's shared parts stay out
    fresh = build_drafter(SpecConfig(drafter="eagle"), model, seed=7)
    fresh.load_state_dict(wa.state)  # what a rollout worker does with a publish
    assert engine_accept_rate(model, tok, fresh) == engine_accept_rate(model, tok, a.drafter)


def test_buffer_keeps_the_last_steps_and_only_real_tokens():
    ids = torch.tensor([[0, 5, 6, 7, 0], [4, 5, 6, 8, 9]])
    seqs = SequenceBatch(ids, torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
                         torch.tensor([[1.0, 0.0], [1.0, 1.0]]), prompt_width=3)
    buf = DrafterBuffer(2)
    for step in (1, 2, 3):
        buf.add(step, seqs)
    assert [s for s, _ in buf.items] == [2, 3]
    assert buf.newest() == [([5, 6, 7], 2), ([4, 5, 6, 8, 9], 3)]


def test_reduced_draft_vocabulary_trains_and_maps_back(arithmetic_model):
    model, tok = arithmetic_model
    seqs = rollouts(model, tok, seed=1, prompts=4)
    vmap = prompt_vocab_map(seqs.input_ids.tolist(), 12, model.config.vocab_size, (tok.eos_token_id,))
    assert len(vmap) == 12 and tok.eos_token_id in vmap.tolist()
    spec = SpecConfig(enable=True, drafter="lm")
    tr = DrafterTrainer(build_drafter(spec, model, vmap, seed=1), model, DrafterTrainConfig(steps=5, batch_size=8),
                        1.0, tok.pad_token_id)
    tr.add(seqs, 1)
    assert tr.drafter.lm_head.weight.shape[0] == 12 and tr.train()["drafter/loss"] > 0
    # drafts are mapped back into the full vocabulary: greedy SD still returns exactly greedy decoding
    greedy = SamplingParams(temperature=0.0, max_new_tokens=30)
    req = GenerationRequest(seqs.input_ids[:4, :seqs.prompt_width].tolist(), [1] * 4, 0, greedy, 0)
    req.prompt_ids = [[t for t in ids if t != tok.pad_token_id] for ids in req.prompt_ids]
    out = SpeculativeEngine(model, tok, tr.drafter, FixedK(3)).generate(req)
    assert torch.equal(out.response_ids, NativeEngine(model, tok).generate(req).response_ids)
    assert out.stats["spec/n/accepted"] > 0
