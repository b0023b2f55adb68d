"""SpeculativeEngine: the native engine's decode loop with a drafter and lossless verification.

One iteration, for the B live rows: the selector picks K for this batch size. K = 0 is a plain
decode step. K > 0: the drafter proposes K tokens per row, one target forward over
[pending, d₁ … d_K] gives K+1 warped distributions, ``verify_chain`` accepts a prefix per row and
draws the next token (residual or bonus). Tokens and log-probs recorded are the target's.

KV rollback, per row, without re-feeding: the target's ``DynamicCache`` is cropped (whole batch)
to L + 1 + max(n_acc), the longest accepted run; a row that accepted fewer drafts keeps its
rejected columns as *holes* — its attention mask is 0 there and its position ids continue from
its own length (``next_pos``), so attention and rotary phases are exactly those of a compact
cache (masked keys contribute exactly zero). Holes cost at most K columns of memory per
iteration and vanish when the row finishes. The drafter keeps its own cache the same way.

EOS, stop strings and the length limit are applied per row to the emitted run: a row stops at the
first EOS inside an accepted run, and tokens past ``max_new_tokens`` are dropped (the first m
tokens of the chain are exactly distributed, so truncation keeps the law). Sampling is exact for
any seed but uses randomness differently from plain decoding: same seed, same *distribution*,
not the same samples (greedy decoding gives the same tokens).

Not here: tree drafts, sampled-children trees, penalties/logit processors (none exist in the
native engine yet; they would have to be applied per verified position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from rlreason.rollout.native import DecodeState, NativeEngine, _Rows, left_pad
from rlreason.rollout.sampling import sample_tokens, token_logprobs
from rlreason.rollout.spec.features import FeatureTap
from rlreason.rollout.spec.stats import SpecStats
from rlreason.rollout.spec.verify import target_probs, verify_chain
from rlreason.types import GenerationRequest, RolloutBatch, SamplingParams


class FixedK:
    """The trivial strategy: always ``k`` drafts (k = 0 is plain decoding through the same loop)."""

    def __init__(self, k: int):
        self.k = k

    def choose(self, batch: int) -> int:
        return self.k

    def observe(self, batch: int, k: int, seconds: float, n_acc: Optional[list[int]]) -> None:
        pass


@dataclass
class SpecState(DecodeState):
    pending: Optional[Tensor] = None  # [live] last sampled token, not yet in the target's cache

    def keep(self, idx: Tensor) -> None:
        super().keep(idx)
        self.pending = self.pending[idx]


def right_align(x: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of x [B, W, ...] hold n[b]+1 leading entries; move them to the right end -> (x', valid [B, W])."""
    w = int(n.max()) + 1
    shift = (w - 1 - n)[:, None]
    col = torch.arange(w, device=x.device)[None]
    idx = (col - shift).clamp_min(0)
    gathered = x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))
    return gathered, col >= shift


class SpeculativeEngine(NativeEngine):
    def __init__(self, model, tokenizer, drafter, strategy, max_batch: int = 0):
        super().__init__(model, tokenizer, max_batch, lean=False)  # verification needs the HF cache
        self.drafter, self.strategy = drafter, strategy
        self.tap = FeatureTap(model) if drafter.needs_features else None
        self.stats = SpecStats()

    def load_drafter_state(self, state: dict[str, Tensor]) -> None:
        """Install published drafter weights (the vLLM engine has the same call)."""
        self.drafter.load_state_dict(state)

    def generate(self, req: GenerationRequest) -> RolloutBatch:
        self.stats = SpecStats()
        batch = super().generate(req)
        batch.stats = self.stats.as_dict()
        return batch

    def _feats(self) -> Optional[Tensor]:
        return self.tap.take() if self.tap is not None else None

    def _generate_chunk(self, prompts: list[list[int]], sp: SamplingParams, gen: torch.Generator,
                        curve: list[int]) -> _Rows:
        n = len(prompts)
        res = _Rows([[] for _ in range(n)], [[] for _ in range(n)], [True] * n)
        d = self._prefill(prompts)
        feats = self._feats()
        tok = sample_tokens(d.logits, sp.temperature, sp.top_k, sp.top_p, gen).to(self.device)
        lp = token_logprobs(d.logits, tok, sp.temperature)
        done = self._record_runs(res, d.live, tok[:, None], lp[:, None], torch.zeros_like(tok), sp)
        ids, mask = left_pad(prompts, self.pad_id)
        self.drafter.begin(ids.to(self.device), mask.to(self.device), feats, tok)
        st = SpecState(d.cache, d.mask, d.next_pos, d.live, d.logits[:, :0], pending=tok)
        while self._prune(st, done):
            b = len(st.live)
            k = self.strategy.choose(b)
            start = time.perf_counter()
            if k == 0:
                toks, lps, n_acc, draft_s = *self._plain(st, sp, gen), None, 0.0
            else:
                toks, lps, n_acc, draft_s = self._speculate(st, k, sp, gen)
            n_acc = torch.zeros(b, dtype=torch.long) if n_acc is None else n_acc
            before = sum(len(res.tokens[r]) for r in st.live.tolist())
            done = self._record_runs(res, st.live, toks, lps, n_acc, sp)
            seconds = time.perf_counter() - start
            emitted = sum(len(res.tokens[r]) for r in st.live.tolist()) - before  # after EOS/length cuts
            self.strategy.observe(b, k, seconds, n_acc.tolist() if k else None)
            self.stats.record(b, k, seconds, emitted, draft_s, n_acc.tolist() if k else None)
            curve.append(b)
        return res

    def _prune(self, st: SpecState, done: set[int]) -> bool:
        """Drop finished rows (target state and drafter); False when none is left."""
        if done:
            keep = torch.tensor([j for j in range(len(st.live)) if j not in done], dtype=torch.long)
            if keep.numel() == 0:
                return False
            st.keep(keep.to(self.device))
            self.drafter.keep(keep.to(self.device))
        return len(st.live) > 0

    def _plain(self, st: SpecState, sp: SamplingParams, gen) -> tuple[Tensor, Tensor]:
        """K = 0: one decode step; the drafter only queues the new context."""
        self._advance(st, st.pending)
        tok = sample_tokens(st.logits, sp.temperature, sp.top_k, sp.top_p, gen).to(self.device)
        lp = token_logprobs(st.logits, tok, sp.temperature)
        st.logits = st.logits[:, :0]
        self.drafter.extend(tok[:, None], torch.ones_like(tok[:, None], dtype=torch.bool), self._feats())
        st.pending = tok
        return tok[:, None], lp[:, None]

    def _speculate(self, st: SpecState, k: int, sp: SamplingParams, gen):
        """Draft K, verify K+1 in one target forward, roll back the rejected columns per row."""
        t0 = time.perf_counter()
        drafts, q = self.drafter.propose(k, sp, gen)
        draft_s = time.perf_counter() - t0
        b, width = len(st.live), st.mask.shape[1]
        inp = torch.cat([st.pending[:, None], drafts.to(self.device)], 1)  # [B, K+1]
        mask = torch.cat([st.mask, torch.ones_like(st.mask[:, :1]).expand(b, k + 1)], 1)
        pos = st.next_pos[:, None] + torch.arange(k + 1, device=self.device)
        logits = self.model(input_ids=inp, attention_mask=mask, position_ids=pos, **{self.cache_arg: st.cache},
                            use_cache=True).logits  # [B, K+1, V]
        feats = self._feats()
        p = target_probs(logits, sp.temperature, sp.top_k, sp.top_p)
        n_acc, nxt = verify_chain(p, drafts.to(self.device), q, gen)
        toks = torch.cat([drafts.to(self.device), torch.zeros_like(nxt)[:, None]], 1)
        toks.scatter_(1, n_acc[:, None], nxt[:, None])  # row i emits drafts[:n_i] then nxt at column n_i
        lps = token_logprobs(logits.reshape(b * (k + 1), -1), toks.reshape(-1), sp.temperature).view(b, k + 1)
        keep_w = width + 1 + int(n_acc.max())
        extra = width + k + 1 - keep_w
        if extra:
            st.cache.crop(-extra)  # a negative count removes columns in transformers 4.x and 5.x alike
        col = torch.arange(keep_w - width, device=self.device)[None]
        st.mask = torch.cat([st.mask, (col <= n_acc[:, None]).to(st.mask.dtype)], 1)
        st.next_pos = st.next_pos + n_acc + 1
        st.pending = nxt
        block, valid = right_align(toks, n_acc)
        fblock = right_align(feats, n_acc)[0] if feats is not None else None
        self.drafter.extend(block, valid, fblock)
        return toks, lps, n_acc.cpu(), draft_s

    def _record_runs(self, res: _Rows, live: Tensor, toks: Tensor, lps: Tensor, n_acc: Tensor,
                     sp: SamplingParams) -> set[int]:
        """Append row j's n_acc[j]+1 tokens, stopping at EOS / a stop string / the length limit."""
        finished = set()
        window = max((len(s) for s in sp.stop), default=0) + 2
        for j, (row, ts, ls, m) in enumerate(zip(live.tolist(), toks.tolist(), lps.tolist(), n_acc.tolist())):
            out, logps = res.tokens[row], res.logprobs[row]
            for t, logp in zip(ts[:m + 1], ls[:m + 1]):
                out.append(t)
                logps.append(logp)
                if t in self.eos_ids or (sp.stop and self._hit_stop(out, sp.stop, window)):
                    res.truncated[row] = False
                    finished.add(j)
                    break
                if len(out) >= sp.max_new_tokens:
                    finished.add(j)
                    break
        return finished
