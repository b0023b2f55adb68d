"""Builders more than one test directory uses (tests/ is on sys.path through its conftest.py)."""

import contextlib
import os
import subprocess

import torch

from rlreason.batches import sft_batch
from rlreason.types import TrainBatch


def fixed_batch(model_dir, n=12, seed=0) -> TrainBatch:
    """Random prompts and responses of varied lengths with ±1 advantages (a fixed RL batch), groups of 4."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(seed)
    prompts = [tok.encode(f"Q: {i}+{i + 1} =\nA:", add_special_tokens=False) for i in range(n)]
    responses = [torch.randint(4, 60, (int(torch.randint(3, 10, (1,), generator=gen)),), generator=gen).tolist()
                 for _ in range(n)]
    batch = sft_batch(prompts, responses, tok.pad_token_id)
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    batch.advantages = sign[:, None] * batch.seqs.response_mask
    batch.group_index = torch.arange(n) // 4
    return batch


def bare_learner(cfg, model):
    """A LearnerWorker without DeepSpeed: the plain model stands in for the engine (same forward)."""
    from rlreason.rollout.sampling import logprob_temperature
    from rlreason.workers.learner import LearnerWorker, rollout_is_cap
    from rlreason.workers.packing import packing_is_exact

    worker = LearnerWorker.__new__(LearnerWorker)
    worker.cfg, worker.device, worker.engine, worker.ref = cfg, "cpu", model, None
    worker.packing = packing_is_exact(model.eval(), "cpu")  # as LearnerWorker.__init__ decides it
    worker.rank, worker.world_size = 0, 1
    worker.temperature = logprob_temperature(cfg.rollout.temperature)
    worker.is_cap = rollout_is_cap(cfg)
    return worker


def session_processes(sid: int) -> list[int]:
    """Every live process of session ``sid`` (what a killed driver's Ray leaves behind)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def teacher_forced_logprobs(model, out, temperature: float) -> torch.Tensor:
    """[N, T] log-probs of a RolloutBatch's responses from one full forward of prompt + response."""
    from rlreason.kernels.logprobs import token_logprobs_entropy

    ids = torch.cat([out.prompt_ids, out.response_ids], 1)
    mask = torch.cat([out.prompt_mask, out.response_mask.long()], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    P = out.prompt_ids.shape[1]
    return token_logprobs_entropy(logits[:, P - 1:-1], ids[:, P:], temperature)[0]


@contextlib.contextmanager
def tmpfs(path, options: str):
    """A tmpfs mounted at ``path`` (created) with mount ``options`` for the block; skips the test without root."""
    import pytest

    path.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
