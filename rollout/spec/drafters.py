"""Drafters: what proposes the K tokens the target verifies.

Every drafter follows one protocol, driven by ``rollout/spec/engine.py``:

    begin(ids, mask, feats, first)   prompts [B, P] (left-padded), the target's features [B, P, H]
                                     (input of its LM head; None for drafters that need none), and
                                     the first sampled token [B]
    extend(tokens, valid, feats)     newly committed tokens [B, W] (``valid`` marks real ones) and
                                     the target features of the positions *before* them [B, W, H]
    propose(k, sampling, gen)        K drafts [B, K] and the law q [B, K, V] each was drawn from
                                     (None: one-hot proposals)
    keep(idx)                        finished rows leave the batch

Neural drafters feed committed context lazily: ``extend`` only queues it and the next ``propose``
runs one forward over the queued block, so while the selector keeps SD off (K = 0 at large batch)
the drafter costs nothing; switching SD on is a single catch-up forward (TLT re-prefills instead).
Speculative entries of the drafter's own cache are cropped at the next ``propose``.

- ``EagleDrafter`` (EAGLE-1/2, Li et al. 2024): fc([embed(x_{t+1}); f_t]) → one decoder layer → the
  target's own frozen LM head; embedding and head are the target's, shared by reference.
- ``SmallLMDrafter``: an independent small causal LM (own embedding and head), no features.
- ``NgramDrafter``: prompt/sibling lookup, no training (the model-free baseline of TLT and Seer).
A reduced draft vocabulary (EAGLE-3's d2t map) restricts the head to ``vocab_map`` [Vd] tokens;
verification stays exact because q is only needed on the tokens it proposes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlreason.rollout.sampling import warp_logits
from rlreason.rollout.spec.layers import DecoderBlock, DrafterConfig, KVCache, RMSNorm, run_blocks
from rlreason.types import SamplingParams


def draw_drafts(logits: Tensor, sp: SamplingParams, gen: Optional[torch.Generator],
                vocab_map: Optional[Tensor], vocab: int) -> tuple[Tensor, Optional[Tensor]]:
    """Sample one draft per row from logits [B, Vd]: (tokens [B] in the full vocabulary, q [B, V] or None)."""
    if sp.temperature == 0:
        idx, q = logits.argmax(-1), None  # one-hot proposal
    else:
        probs = torch.softmax(warp_logits(logits, sp.temperature, sp.top_k, sp.top_p), -1)
        idx = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)
        q = probs
        if vocab_map is not None:
            q = torch.zeros(probs.shape[0], vocab, dtype=probs.dtype, device=probs.device).scatter_(
                -1, vocab_map.expand(probs.shape[0], -1), probs)
    return (idx if vocab_map is None else vocab_map[idx]), q


class NeuralDrafter(nn.Module):
    """Shared machinery of the cached neural drafters: queued context, drafting loop, rollback."""

    needs_features = False

    def __init__(self, cfg: DrafterConfig, vocab_map: Optional[Tensor] = None):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.num_layers)])
        self.register_buffer("vocab_map", vocab_map, persistent=True)
        self._reset(0)

    # -- subclass hooks: inputs of one step, and the logits / next feature of its output
    def _inputs(self, tokens: Tensor, feats: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def _logits(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _pairs(self, ids: Tensor, mask: Tensor, feats: Optional[Tensor], first: Tensor):
        """The prompt as (tokens [B, W], valid [B, W], feats) to queue before the first propose."""
        raise NotImplementedError

    # -- protocol
    def _reset(self, b: int) -> None:
        self.cache = KVCache(self.cfg.num_layers)
        self.next_pos = torch.zeros(b, dtype=torch.long)
        self.committed = 0  # cache columns holding committed (not speculative) entries
        self.q_tok: list[Tensor] = []
        self.q_valid: list[Tensor] = []
        self.q_feat: list[Tensor] = []

    def begin(self, ids: Tensor, mask: Tensor, feats: Optional[Tensor], first: Tensor) -> None:
        self._reset(ids.shape[0])
        self.next_pos = self.next_pos.to(ids.device)
        self.extend(*self._pairs(ids, mask.bool(), feats, first))

    def extend(self, tokens: Tensor, valid: Tensor, feats: Optional[Tensor]) -> None:
        self.q_tok.append(tokens)
        self.q_valid.append(valid.bool())
        if feats is not None:
            self.q_feat.append(feats)

    def keep(self, idx: Tensor) -> None:
        self.cache.select(idx)
        self.next_pos = self.next_pos[idx]
        self.q_tok = [t[idx] for t in self.q_tok]
        self.q_valid = [v[idx] for v in self.q_valid]
        self.q_feat = [f[idx] for f in self.q_feat]

    def _step(self, tokens: Tensor, feats: Optional[Tensor], valid: Tensor, pos: Tensor) -> Tensor:
        return run_blocks(self.layers, self._inputs(tokens, feats), pos, valid, self.cache)

    def _flush(self) -> Tensor:
        """Run the queued committed context; return each row's last hidden state [B, H]."""
        self.cache.crop(self.committed)
        tokens, valid = torch.cat(self.q_tok, 1), torch.cat(self.q_valid, 1)
        feats = torch.cat(self.q_feat, 1) if self.q_feat else None
        pos = self.next_pos[:, None] + valid.long().cumsum(1) - 1
        h = self._step(tokens, feats, valid, pos.clamp_min(0))
        self.next_pos = self.next_pos + valid.long().sum(1)
        self.committed = self.cache.length
        self.q_tok, self.q_valid, self.q_feat = [], [], []
        return h[:, -1]  # every queued block is right-aligned: its last column is real in every row

    @torch.no_grad()
    def propose(self, k: int, sp: SamplingParams, gen: Optional[torch.Generator]):
        """K drafts [B, K] and their laws q [B, K, V] (None when the drafts are one-hot)."""
        h = self._flush()
        drafts, qs = [], []
        for i in range(k):
            tok, q = draw_drafts(self._logits(h), sp, gen, self.vocab_map, self.cfg.vocab_size)
            drafts.append(tok)
            qs.append(q)
            if i + 1 < k:  # feed the draft (and, for EAGLE, its predicted feature) for the next one
                ones = torch.ones(len(tok), 1, dtype=torch.bool, device=tok.device)
                h = self._step(tok[:, None], h[:, None], ones, (self.next_pos + i)[:, None])[:, -1]
        q = None if qs[0] is None else torch.stack(qs, 1)
        return torch.stack(drafts, 1), q


class EagleDrafter(NeuralDrafter):
    """EAGLE-style drafter: predicts the target's next feature; the target's embedding and head are shared."""

    needs_features = True

    def __init__(self, cfg: DrafterConfig, vocab_map: Optional[Tensor] = None):
        super().__init__(cfg, vocab_map)
        self.fc = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        # EAGLE-1 feeds fc's output to layer 0 without an input norm (the EAGLE code, and vLLM's EAGLE
        # layout): the same function here, so a drafter published to vLLM computes what it was trained to
        self.layers[0].input_layernorm = nn.Identity()
        self._shared: tuple = ()

    def attach(self, embed: nn.Module, head: nn.Module) -> "EagleDrafter":
        """Point at the target's embedding and LM head (references: a policy sync updates them in place).

        Not registered as submodules, so they are neither trained, saved nor published with the drafter.
        """
        self._shared = (embed, head)
        return self

    def _inputs(self, tokens: Tensor, feats: Optional[Tensor]) -> Tensor:
        embed, _ = self._shared
        return self.fc(torch.cat([embed(tokens).to(feats.dtype), feats], -1))

    def head_weight(self) -> Tensor:
        w = self._shared[1].weight
        return w if self.vocab_map is None else w[self.vocab_map]

    def _logits(self, h: Tensor) -> Tensor:
        return F.linear(h, self.head_weight())

    def _pairs(self, ids, mask, feats, first):
        # pair j = (token j+1, feature j): the feature at a token predicts the one after it
        tokens = torch.cat([ids[:, 1:], first[:, None]], 1)
        return tokens, mask, feats


class SmallLMDrafter(NeuralDrafter):
    """A standalone small causal LM over the target's tokens (own embedding, norm and head)."""

    def __init__(self, cfg: DrafterConfig, vocab_map: Optional[Tensor] = None):
        super().__init__(cfg, vocab_map)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.norm = RMSNorm(cfg.hidden_size, cfg.eps)
        out = cfg.vocab_size if vocab_map is None else len(vocab_map)
        self.lm_head = nn.Linear(cfg.hidden_size, out, bias=False)

    def _inputs(self, tokens: Tensor, feats: Optional[Tensor]) -> Tensor:
        return self.embed_tokens(tokens)

    def _logits(self, h: Tensor) -> Tensor:
        return self.lm_head(self.norm(h))

    def _step(self, tokens, feats, valid, pos):
        return super()._step(tokens, None, valid, pos)  # the fed-back "feature" is not an input here

    def _pairs(self, ids, mask, feats, first):
        ones = torch.ones_like(mask[:, :1])
        return torch.cat([ids, first[:, None]], 1), torch.cat([mask, ones], 1), None


class NgramDrafter:
    """Prompt lookup: continue the longest recent n-gram match in the row's own text, then its siblings'.

    Siblings are the ``siblings`` rows on either side in the batch (a prompt's samples are adjacent),
    so a propose costs O(B · siblings), not O(B²) (20k rows made the whole-batch pool hang).
    """

    needs_features = False

    def __init__(self, min_n: int = 1, max_n: int = 4, siblings: int = 8):
        self.min_n, self.max_n, self.siblings = min_n, max_n, siblings
        self.hist: list[list[int]] = []

    def begin(self, ids: Tensor, mask: Tensor, feats, first: Tensor) -> None:
        self.hist = [row[m.bool()].tolist() + [int(f)] for row, m, f in zip(ids.cpu(), mask.cpu(), first.cpu())]

    def extend(self, tokens: Tensor, valid: Tensor, feats) -> None:
        for h, row, v in zip(self.hist, tokens.cpu().tolist(), valid.cpu().tolist()):
            h.extend(t for t, ok in zip(row, v) if ok)

    def keep(self, idx: Tensor) -> None:
        self.hist = [self.hist[i] for i in idx.tolist()]

    def _continue(self, seq: list[int], pools: list[list[int]]) -> int:
        for n in range(min(self.max_n, len(seq) - 1), self.min_n - 1, -1):
            key = seq[-n:]
            for pool in pools:  # own text first (searched backwards: the most recent match wins)
                stop = len(pool) - n if pool is seq else len(pool) - n + 1
                for s in range(stop - 1, -1, -1):
                    if pool[s:s + n] == key and s + n < len(pool):
                        return pool[s + n]
        return seq[-1]

    def propose(self, k: int, sp: SamplingParams, gen) -> tuple[Tensor, None]:
        out = []
        for i, h in enumerate(self.hist):
            seq = list(h)
            near = self.hist[max(i - self.siblings, 0):i] + self.hist[i + 1:i + 1 + self.siblings]
            pools = [seq] + near
            for _ in range(k):
                seq.append(self._continue(seq, pools))
            out.append(seq[len(h):])
        return torch.tensor(out, dtype=torch.long).view(len(self.hist), k), None


def build_vocab_map(token_counts: Tensor, size: int, always: tuple[int, ...] = ()) -> Tensor:
    """The ``size`` most frequent token ids (plus ``always``, e.g. EOS), sorted: a reduced draft vocabulary."""
    order = torch.argsort(token_counts, descending=True).tolist()
    keep = list(dict.fromkeys(list(always) + order))[:size]
    return torch.tensor(sorted(keep), dtype=torch.long)
