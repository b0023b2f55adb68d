"""The native rollout engine: batched sampling from a Hugging Face causal LM with a KV cache.

Prompts are left-padded (position ids from the attention mask, as the learner computes them);
finished rows are dropped from the batch and the cache, so the long tail decodes at the size it
really has. On CPU, decode steps of Llama and Qwen2 models run through ``LeanDecoder``
(rollout/decoder.py); prefill and other models use the Hugging Face forward. Deliberately not here:
speculative decoding (a separate engine layer), paged attention, continuous batching.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from rlreason.rollout.decoder import LeanCache, LeanDecoder, lean_decoder
from rlreason.rollout.sampling import sample_tokens, token_logprobs
from rlreason.types import GenerationRequest, RolloutBatch, SamplingParams


def cache_arg(model) -> str:
    """The forward's name for the KV cache: ``cache`` (recent transformers, 5.25 here) or ``past_key_values``.

    Newer releases still take ``past_key_values`` with a warning until 5.40; older ones would
    silently swallow an unknown ``cache`` into ``**kwargs`` and decode without the cache.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class DecodeState:
    """Rows still decoding: their KV cache, attention mask, next positions and next-token logits."""

    cache: object  # transformers DynamicCache over the live rows, or a LeanCache
    mask: Tensor  # [live, P + t] attention mask (with a LeanCache: [live, P], the cache holds the rest)
    next_pos: Tensor  # [live] position id of the next token
    live: Tensor  # [live] original row index of each batch position
    logits: Tensor  # [live, V] logits of the next token

    def keep(self, idx: Tensor) -> None:
        """Drop finished rows from the batch and the cache, so the tail decodes at its real size."""
        self.cache.batch_select_indices(idx)
        self.mask, self.next_pos, self.logits = self.mask[idx], self.next_pos[idx], self.logits[idx]
        self.live = self.live[idx.cpu()]


@dataclass
class _Rows:
    """Output buffers of one chunk of rows."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    truncated: list[bool]


class NativeEngine:
    def __init__(self, model, tokenizer, max_batch: int = 0, lean: bool = True):
        self.model = model.eval()
        self.lean = lean  # decode through LeanDecoder where the model is supported
        self.decoder: Optional[LeanDecoder] = None  # the current weights' (rebuilt after a weight sync)
        self.cache_arg = cache_arg(model)
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)

    @torch.no_grad()
    def generate(self, req: GenerationRequest) -> RolloutBatch:
        """Sample ``group_sizes[b]`` responses for every prompt of the request."""
        start = time.perf_counter()
        gen = torch.Generator(device="cpu").manual_seed(req.seed)
        rows = [ids for ids, g in zip(req.prompt_ids, req.group_sizes) for _ in range(g)]
        groups = [req.group_offset + b for b, g in enumerate(req.group_sizes) for _ in range(g)]
        chunk = self.max_batch or max(len(rows), 1)
        self.decoder = lean_decoder(self.model, self.decoder) if self.lean else None
        out = _Rows([], [], [])
        curve: list[int] = []
        for lo in range(0, len(rows), chunk):
            part = self._generate_chunk(rows[lo:lo + chunk], req.sampling, gen, curve)
            out.tokens += part.tokens
            out.logprobs += part.logprobs
            out.truncated += part.truncated
        batch = self._to_batch(rows, groups, out)
        batch.gen_seconds = time.perf_counter() - start
        batch.batch_sizes = curve
        return batch

    def _generate_chunk(self, prompts: list[list[int]], sp: SamplingParams, gen: torch.Generator,
                        curve: list[int]) -> _Rows:
        n = len(prompts)
        res = _Rows([[] for _ in range(n)], [[] for _ in range(n)], [True] * n)
        state = self._prefill(prompts, room=sp.max_new_tokens)
        for step in range(sp.max_new_tokens):
            curve.append(len(state.live))
            tok = sample_tokens(state.logits, sp.temperature, sp.top_k, sp.top_p, gen).to(self.device)
            lp = token_logprobs(state.logits, tok, sp.temperature)
            finished = self._record(res, state.live, tok, lp, sp)
            if step == sp.max_new_tokens - 1:
                break
            if finished:
                keep = torch.tensor([j for j in range(len(state.live)) if j not in finished], dtype=torch.long)
                if keep.numel() == 0:
                    break
                state.keep(keep.to(self.device))
                tok = tok[keep.to(self.device)]
            self._advance(state, tok)
        return res

    def _prefill(self, prompts: list[list[int]], room: int = 0) -> "DecodeState":
        """The prompts' forward; with ``room`` and a lean decoder, the cache moves into a LeanCache
        with that many free positions."""
        from rlreason.rollout.kv_cache import GrowingCache

        ids, mask = left_pad(prompts, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = GrowingCache()  # appends in place (DynamicCache copies the whole cache every step)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         **{self.cache_arg: cache}, use_cache=True)
        if self.decoder is not None and room:
            cache = LeanCache.from_prefill(cache, mask, room)
        return DecodeState(cache, mask, positions[:, -1] + 1, torch.arange(len(prompts)), out.logits[:, -1])

    def _advance(self, state: "DecodeState", tok: Tensor) -> None:
        """Feed one sampled token per live row; leaves the next-token logits in ``state``."""
        if isinstance(state.cache, LeanCache):
            state.logits = self.decoder.step(tok, state.next_pos, state.cache)
            state.next_pos = state.next_pos + 1
            return
        state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
        out = self.model(input_ids=tok[:, None], attention_mask=state.mask, position_ids=state.next_pos[:, None],
                         **{self.cache_arg: state.cache}, use_cache=True)
        state.logits = out.logits[:, -1]
        state.next_pos = state.next_pos + 1

    def _record(self, res: _Rows, live: Tensor, tok: Tensor, lp: Tensor, sp: SamplingParams) -> set[int]:
        """Append each live row's token; return the batch positions whose response just ended."""
        finished = set()
        window = max((len(s) for s in sp.stop), default=0) + 2
        for j, (row, t, logp) in enumerate(zip(live.tolist(), tok.tolist(), lp.tolist())):
            res.tokens[row].append(t)
            res.logprobs[row].append(logp)
            if t in self.eos_ids or (sp.stop and self._hit_stop(res.tokens[row], sp.stop, window)):
                res.truncated[row] = False
                finished.add(j)
        return finished

    def _hit_stop(self, tokens: list[int], stops: list[str], window: int) -> bool:
        tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def _to_batch(self, prompts: list[list[int]], groups: list[int], res: _Rows) -> RolloutBatch:
        n = len(prompts)
        width = max((len(t) for t in res.tokens), default=0) or 1
        resp = torch.full((n, width), self.pad_id, dtype=torch.long)
        rmask = torch.zeros(n, width)
        rlp = torch.zeros(n, width)
        for i, (toks, lps) in enumerate(zip(res.tokens, res.logprobs)):
            resp[i, :len(toks)] = torch.tensor(toks, dtype=torch.long)
            rmask[i, :len(toks)] = 1.0
            rlp[i, :len(lps)] = torch.tensor(lps)
        pids, pmask = left_pad(prompts, self.pad_id)
        texts = self.tokenizer.batch_decode([t for t in res.tokens], skip_special_tokens=True)
        return RolloutBatch(
            prompt_ids=pids, prompt_mask=pmask, response_ids=resp, response_mask=rmask,
            rollout_logprobs=rlp, truncated=torch.tensor(res.truncated, dtype=torch.bool),
            group_index=torch.tensor(groups, dtype=torch.long), response_text=texts,
            pad_id=self.pad_id, gen_tokens=int(rmask.sum().item()),
        )


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to [n, max_len] ids and a 0/1 attention mask."""
    width = max((len(s) for s in seqs), default=0) or 1
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask



