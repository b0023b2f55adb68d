"""RolloutWorker: a Ray actor holding a generation engine and its copy of the policy weights."""

from __future__ import annotations

from typing import Union

import torch

from rlreason.config.schema import RunConfig
from rlreason.models import load_model, load_tokenizer
from rlreason.types import GenerationRequest, RolloutBatch, TokenScoreRequest, TokenScoreResult
from rlreason.workers.drafter import DrafterHost, trains_drafter
from rlreason.workers.weights import WeightsHandle, node_id, read


class RolloutWorker(DrafterHost):  # DrafterHost: the speculative drafter's calls (rollout.spec)
    def __init__(self, cfg: RunConfig, model_path: str, threads: int, index: int = 0):
        """``index``: this worker's place in the group; worker 0 hosts the drafter's training."""
        self.cfg = cfg
        torch.set_num_threads(max(threads, 1))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = load_tokenizer(cfg.model.tokenizer or model_path, cfg.model.trust_remote_code)
        self.weights_version = 0
        self.receiver = None  # BroadcastReader: weights from learner rank 0 (rlreason.workers.broadcast)
        if cfg.rollout.engine == "vllm":  # vLLM loads the policy itself (rlreason/rollout/vllm_engine.py)
            from rlreason.rollout.vllm_engine import engine_for_worker

            self.engine = engine_for_worker(cfg, model_path, tokenizer)
            # vLLM holds no Hugging Face model to train a drafter against: worker 0 keeps a copy of the
            # policy for that, updated at every weight sync (same GPU; vLLM takes half of it by default)
            self.own_copy = index == 0 and trains_drafter(cfg)
            self.drafter_target = load_model(model_path, cfg.model, device).requires_grad_(False) if self.own_copy else None
            return
        model = load_model(model_path, cfg.model, device)
        from rlreason.rollout.native import NativeEngine

        if cfg.rollout.spec.enable:
            from rlreason.workers.drafter import build_spec_engine

            self.engine = build_spec_engine(cfg, model, tokenizer)
        else:
            self.engine = NativeEngine(model, tokenizer, max_batch=cfg.rollout.batch_size)
        self.drafter_target, self.own_copy = model, False  # the engine's own policy (updated by load_weights)

    def ready(self) -> bool:
        return True

    def set_threads(self, threads: int) -> None:
        """torch threads from now on (pipelined mode splits the CPUs once generation and training overlap)."""
        torch.set_num_threads(max(threads, 1))

    def generate(self, req: GenerationRequest) -> RolloutBatch:
        self.spot_halt()  # the drafter's spot training yields the worker (rollout.spec.train.mode=spot)
        out = self.engine.generate(req)
        out.weights_version = self.weights_version
        return out

    def score_tokens(self, req: TokenScoreRequest) -> TokenScoreResult:
        """Log-probs of text continuations under the current policy (model rewards, e.g. likelihood)."""
        self.spot_halt()
        from rlreason.workers.scoring import continuation_logprobs

        return continuation_logprobs(self.engine.model, self.engine.tokenizer, req)

    def node(self) -> str:
        return node_id()

    def join_broadcast(self, where: str, rank: int, size: int, slots: int) -> None:
        """Receive the weights from learner rank 0's broadcast group from now on (a new group replaces the last)."""
        from rlreason.workers.broadcast import BroadcastReader

        if self.receiver is not None:
            self.receiver.close()
        self.receiver = BroadcastReader(where, rank, size, slots)

    def release_gpu(self) -> None:
        """Colocated vLLM (cluster.placement=colocate) sleeps while the learner has the GPU: its weights
        go to CPU memory and its KV cache is freed; the next weight sync wakes it (weights, then KV cache)."""
        if self.cfg.rollout.engine == "vllm" and self.cfg.cluster.placement == "colocate":
            self.engine.sleep(level=1)

    def load_weights(self, state: Union[WeightsHandle, dict[str, torch.Tensor]], version: int) -> int:
        """Replace the policy weights (called at every step boundary): a published handle (rlreason.workers.weights)
        or a state dict; returns the new version."""
        self.spot_halt()
        if isinstance(state, WeightsHandle):
            state = read(state, self.receiver)
        self.engine.load_state_dict(state)
        if self.own_copy:
            self.drafter_target.load_state_dict(state, strict=True)
        self.weights_version = version
        return version
