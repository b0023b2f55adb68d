"""Models for ``bench_rollout.py``: a deep target trained on the quickstart's arithmetic task, and an
EAGLE drafter distilled from the target's own rollouts. Both are cached in a directory you pass.

Why trained: speculative decoding only pays when the drafter agrees with the target; a random
target has acceptance ~0. The target learns the task at 2-12 terms (the quickstart uses 3-5), so
one batch can mix 2-term answers (~16 tokens) with 12-term ones (~100 tokens): the long tail.
The drafter is trained with ``rlreason.rollout.spec.train.DrafterTrainer`` (the online trainer of
the RL loop) on responses the target sampled at temperature 1, i.e. on-policy.

Deliberately not here: the RL loop itself, a reduced draft vocabulary (the character vocabulary has
~100 tokens, so the drafter's head is already cheap).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from types import SimpleNamespace

import torch

from rlreason.config.spec_schema import DrafterTrainConfig
from rlreason.rollout.native import NativeEngine
from rlreason.rollout.spec.build import build_drafter
from rlreason.rollout.spec.train import DrafterTrainer
from rlreason.tasks.arithmetic import build_model, make_row
from rlreason.types import GenerationRequest, SamplingParams, SequenceBatch

MIN_TERMS, MAX_TERMS = 2, 12
NOISE = 0.6  # the quickstart teacher's carry-drop rate: the target keeps real entropy at carries
EAGLE = SimpleNamespace(drafter="eagle", drafter_layers=1, lm_hidden_size=0)


def load(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def _batch(tok, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+solution+EOS ids and labels (-100 on prompt and padding)."""
    seqs, plens = [], []
    for r in rows:
        p = tok.encode(r["prompt"], add_special_tokens=False)
        seqs.append(p + tok.encode(r["solution"], add_special_tokens=False) + [tok.eos_token_id])
        plens.append(len(p))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (s, p) in enumerate(zip(seqs, plens)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, p:len(s)] = ids[i, p:len(s)]
    return ids, labels


def train_target(path: str, layers: int, hidden: int, steps: int, seed: int = 0, batch: int = 32,
                 lr: float = 2e-3) -> dict:
    """Build a ``layers`` x ``hidden`` Llama and teach it the noisy-teacher solutions (SFT, cosine lr)."""
    build_model(path, seed=seed, hidden_size=hidden, num_layers=layers, num_heads=max(hidden // 32, 1),
                intermediate_size=4 * hidden, max_position_embeddings=256)
    model, tok = load(path)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.1 + 0.45 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    rng, losses, start = random.Random(f"bench-target-{seed}"), [], time.perf_counter()
    torch.manual_seed(seed)
    for step in range(steps):
        ids, labels = _batch(tok, [make_row(rng, MIN_TERMS, MAX_TERMS, NOISE) for _ in range(batch)])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"target step {step}: loss {loss.item():.4f}", flush=True)
    model.eval().save_pretrained(path)
    return {"target_loss_last20": sum(losses[-20:]) / min(20, len(losses)),
            "target_train_s": time.perf_counter() - start, "target_params": sum(p.numel() for p in model.parameters())}


def prompts(tok, n: int, seed: str, terms: tuple[int, int] = (MIN_TERMS, MAX_TERMS)) -> list[list[int]]:
    rng = random.Random(seed)
    return [tok.encode(make_row(rng, terms[0], terms[1], NOISE)["prompt"], add_special_tokens=False) for _ in range(n)]


def train_drafter(model, tok, steps: int, seed: int = 0, rollouts: int = 256) -> tuple[object, dict]:
    """An EAGLE drafter for ``model``, distilled from ``rollouts`` responses it sampled at T = 1."""
    drafter = build_drafter(EAGLE, model, seed=seed)
    cfg = DrafterTrainConfig(steps=steps, batch_size=32, buffer_steps=1, lr=2e-3, weight_decay=0.0)
    trainer = DrafterTrainer(drafter, model, cfg, temperature=1.0, pad_id=tok.pad_token_id, seed=seed)
    sp = SamplingParams(temperature=1.0, max_new_tokens=160)
    start = time.perf_counter()
    req = GenerationRequest(prompts(tok, rollouts, f"bench-drafter-{seed}"), [1] * rollouts, 0, sp, seed)
    trainer.add(SequenceBatch.from_rollout(NativeEngine(model, tok, max_batch=64).generate(req)), step=0)
    probe = trainer.buffer.rows()[:64]
    before = trainer.acceptance(probe)
    losses = [trainer.train(min(50, steps - done)) for done in range(0, steps, 50)]
    for i, m in enumerate(losses):
        print(f"drafter steps {50 * (i + 1)}: {json.dumps({k: round(v, 4) for k, v in m.items()})}", flush=True)
    return drafter, {"drafter_offline_accept_before": before, "drafter_offline_accept_after": trainer.acceptance(probe),
                     "drafter_loss_last": losses[-1].get("drafter/loss", float("nan")),
                     "drafter_train_s": time.perf_counter() - start}


def cached_models(cache: str, layers: int, hidden: int, target_steps: int, drafter_steps: int, seed: int = 0,
                  rollouts: int = 256):
    """(target, tokenizer, drafter, info): trained once, then read back from ``cache``."""
    tdir = os.path.join(cache, f"target_L{layers}_d{hidden}_s{target_steps}_seed{seed}")
    info_path = os.path.join(tdir, "bench_info.json")
    info = json.load(open(info_path)) if os.path.isfile(info_path) else {}
    if "target_train_s" not in info:
        info = train_target(tdir, layers, hidden, target_steps, seed)
        json.dump(info, open(info_path, "w"))
    model, tok = load(tdir)
    dpath = os.path.join(tdir, f"eagle1_s{drafter_steps}.pt")
    if os.path.isfile(dpath):
        drafter = build_drafter(EAGLE, model, seed=seed)
        drafter.load_state_dict(torch.load(dpath))
    else:
        drafter, dinfo = train_drafter(model, tok, drafter_steps, seed, rollouts)
        torch.save(drafter.state_dict(), dpath)
        info.update(dinfo)
        json.dump(info, open(info_path, "w"))
    return model, tok, drafter.eval(), info
