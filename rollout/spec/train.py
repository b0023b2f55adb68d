"""Online drafter training: distil the current policy into the drafter on the policy's own rollouts.

Data. Each RL step's rollouts (prompt + response token ids) enter a buffer that keeps the last
``buffer_steps`` steps (TLT's one-step offset: the previous step's long responses make up for the
current step's). Only token ids are kept. The target's features (the input of its LM head,
``features.capture_features``) are re-computed at training time by a no-grad forward of the
*current* policy, the one the next rollout samples from. Why not capture them in the learner's
old-log-prob pass (TLT's "free" option): that pass runs the policy *before* its update, so the
drafter would chase a policy one step old; re-computing costs one target forward per drafter step
(small next to a rollout) but keeps the buffer small (ids, not [L, H] features, so checkpoints hold
it whole) and needs nothing from the learner (any ZeRO stage or world size works unchanged).

Loss (speculative.md §5.4), over the positions whose next token is a response token:

    L = w_v · SmoothL1(ĥ_{t+1}, f_{t+1}) + w_p · CE(softmax(z_{t+1} / T), log_softmax(ẑ_{t+1} / T))

f the target's feature, z = lm_head(f) its logits, T the rollout temperature (acceptance is
1 − TV between the warped laws, so that is the law to match), ĥ the drafter's predicted feature
(EAGLE only: the lm drafter has no feature to regress) and ẑ its logits (over the reduced draft
vocabulary when there is one: the cross-entropy then only counts the tokens it can propose).

No gradient reaches the policy: features and target laws come from a no-grad forward, the
target copy the trainer reads is frozen (``requires_grad_(False)``: it is the rollout engine's
inference copy, and the EAGLE drafter's shared embedding and head belong to it), and the
optimizer holds only the drafter's own parameters.

Not here: spot mode (training on idle rollout workers, preempted by the next rollout), EAGLE-3's
training-time test (unrolled multi-step drafting), sequence packing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from rlreason.rollout.sampling import logprob_temperature
from rlreason.rollout.spec.features import capture_features
from rlreason.rollout.spec.layers import KVCache, run_blocks
from rlreason.types import SequenceBatch


@dataclass
class DrafterWeights:
    """A published drafter: the policy version it was trained for, and its own state (not the target's)."""

    version: int
    state: dict[str, Tensor]  # drafter.state_dict(): fc, decoder layer(s), own embedding/head (lm), vocab map


@dataclass
class DrafterUpdate:
    """What one training phase returns to the driver."""

    weights: DrafterWeights
    metrics: dict[str, float]  # drafter/loss, drafter/feature_loss, drafter/ce_loss, drafter/accept_*, ...


class DrafterBuffer:
    """Token sequences of the last ``steps`` RL steps: (prompt + response ids, prompt length) per row."""

    def __init__(self, steps: int):
        self.steps = steps
        self.items: list[tuple[int, list[tuple[list[int], int]]]] = []  # (RL step, rows)

    def add(self, step: int, seqs: SequenceBatch) -> None:
        p, rows = seqs.prompt_width, []
        for ids, att, resp in zip(seqs.input_ids, seqs.attention_mask, seqs.response_mask):
            prompt, response = ids[:p][att[:p].bool()].tolist(), ids[p:][resp.bool()].tolist()
            if response:
                rows.append((prompt + response, len(prompt)))
        self.items = ([it for it in self.items if it[0] != step] + [(step, rows)])[-self.steps:]

    def rows(self) -> list[tuple[list[int], int]]:
        return [r for _, rows in self.items for r in rows]

    def newest(self) -> list[tuple[list[int], int]]:
        return self.items[-1][1] if self.items else []


def pad_rows(rows: list[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids [n, L], attention mask [n, L] and response mask [n, L] (1 on response tokens)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    resp = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (seq, n_prompt) in enumerate(rows):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        resp[i, n_prompt:len(seq)] = True
    return ids, mask, resp


class DrafterTrainer:
    def __init__(self, drafter, target, cfg, temperature: float, pad_id: int, seed: int = 0):
        """``cfg``: a DrafterTrainConfig (steps, batch_size, buffer_steps, lr, weight_decay, grad_clip, weights)."""
        self.drafter, self.target, self.cfg = drafter, target.requires_grad_(False), cfg
        self.temperature = logprob_temperature(temperature)
        self.pad_id = pad_id
        self.eagle = getattr(drafter, "needs_features", False)
        self.buffer = DrafterBuffer(cfg.buffer_steps)
        self.optimizer = torch.optim.AdamW(drafter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0  # drafter optimizer steps so far
        self.frozen = None  # a copy of the drafter as first published (cfg.track_frozen): what a frozen one would do

    @property
    def device(self) -> torch.device:
        return next(self.target.parameters()).device

    # ---- the two forwards -------------------------------------------------------------------

    @torch.no_grad()
    def _target(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Features f [n, L-1, H] of positions 0..L-2 and the logits z [n, L-1, V] they give."""
        feats: list[Tensor] = []
        dtype = next(self.drafter.parameters()).dtype
        with capture_features(self.target, feats, dtype=dtype):
            logits = self.target(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return feats[0].to(self.device), logits[:, :-1].float()

    def _pairs(self, ids: Tensor, mask: Tensor, resp: Tensor, f: Tensor, z: Tensor):
        """Teacher-forced drafter inputs and aligned targets: (tokens, valid, feats in, f next, z next, loss mask).

        EAGLE pair j = (token j+1, feature j) predicts feature j+1 and token j+2 (drafters.py ``_pairs``);
        the lm drafter reads token j and predicts token j+1.
        """
        n = ids.shape[1]
        if self.eagle:
            return ids[:, 1:n - 1], mask[:, 1:n - 1].bool(), f[:, :n - 2], f[:, 1:], z[:, 1:], resp[:, 2:]
        return ids[:, :n - 1], mask[:, :n - 1].bool(), None, None, z, resp[:, 1:]

    def _drafter(self, tokens: Tensor, valid: Tensor, feats: Optional[Tensor], drafter=None) -> tuple[Tensor, Tensor]:
        """The drafter over whole sequences (a fresh cache): hidden states [n, W, H] and logits [n, W, Vd]."""
        d = drafter or self.drafter
        pos = (valid.long().cumsum(1) - 1).clamp_min(0)
        h = run_blocks(d.layers, d._inputs(tokens, feats), pos, valid, KVCache(len(d.layers)))
        return h, d._logits(h)

    def _laws(self, z: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Target law p [.., Vd] restricted to the draft vocabulary, and the drafter's log q [.., Vd], both at T."""
        p = torch.softmax(z / self.temperature, -1)
        vmap = self.drafter.vocab_map
        return (p if vmap is None else p[..., vmap]), torch.log_softmax(logits.float() / self.temperature, -1)

    # ---- training ---------------------------------------------------------------------------

    def _loss(self, rows: list[tuple[list[int], int]]) -> tuple[Tensor, dict[str, float]]:
        ids, mask, resp = (t.to(self.device) for t in pad_rows(rows, self.pad_id))
        f, z = self._target(ids, mask)
        tokens, valid, f_in, f_next, z_next, m = self._pairs(ids, mask, resp, f, z)
        h, logits = self._drafter(tokens, valid, f_in)
        p, logq = self._laws(z_next[m], logits[m])
        ce = -(p * logq).sum(-1).mean()
        loss = self.cfg.ce_weight * ce
        stats = {"drafter/ce_loss": ce.item()}
        if self.eagle and self.cfg.feature_weight > 0:
            feat = F.smooth_l1_loss(h[m].float(), f_next[m].float())
            loss = loss + self.cfg.feature_weight * feat
            stats["drafter/feature_loss"] = feat.item()
        stats["drafter/loss"] = loss.item()
        return loss, stats

    def _sample(self, rows: list, k: int) -> list:
        idx = torch.randperm(len(rows), generator=self.generator)[:k].tolist()
        return [rows[i] for i in idx]

    def add(self, seqs: SequenceBatch, step: int) -> None:
        self.buffer.add(step, seqs)

    def train(self, steps: Optional[int] = None) -> dict[str, float]:
        """``steps`` (default cfg.steps) optimizer steps on minibatches of the buffer; mean losses."""
        rows = self.buffer.rows()
        steps = self.cfg.steps if steps is None else steps
        if not rows or not steps:
            return {}
        self.drafter.train()
        sums: dict[str, float] = {}
        for _ in range(steps):
            loss, stats = self._loss(self._sample(rows, self.cfg.batch_size))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.drafter.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.updates += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v / steps
        self.drafter.eval()
        return sums

    @torch.no_grad()
    def acceptance(self, rows: list[tuple[list[int], int]], drafter=None) -> float:
        """Offline acceptance: mean over response positions of Σ min(p′, q) = 1 − TV (first draft position).

        No engine needed; it is the acceptance rate of a one-token draft sampled at temperature T
        (top-k/top-p ignored). Rows are taken as given (pass a fixed slice for a comparable number).
        """
        if not rows:
            return float("nan")
        ids, mask, resp = (t.to(self.device) for t in pad_rows(rows, self.pad_id))
        f, z = self._target(ids, mask)
        tokens, valid, f_in, _, z_next, m = self._pairs(ids, mask, resp, f, z)
        _, logits = self._drafter(tokens, valid, f_in, drafter)
        p, logq = self._laws(z_next[m], logits[m])  # q is 0 off the draft vocabulary: those tokens add nothing
        return float(torch.minimum(p, logq.exp()).sum(-1).mean())

    def step(self, seqs: SequenceBatch, step: int, steps: Optional[int] = None, probe: int = 64) -> dict[str, float]:
        """One RL step's phase: add its rollouts, train, and report acceptance on them before and after.

        ``accept_before`` is the held-out number: the drafter trained up to the previous step, on rows
        it has not seen, against the policy it will be replaced for. ``accept_frozen`` (track_frozen) is
        the first published drafter on the same rows.
        """
        self.add(seqs, step)
        newest = self.buffer.newest()[:probe]
        out = {"drafter/accept_before": self.acceptance(newest)}
        if self.frozen is not None:
            out["drafter/accept_frozen"] = self.acceptance(newest, self.frozen)
        out.update(self.train(steps))
        out.update({"drafter/accept_after": self.acceptance(newest), "drafter/updates": float(self.updates),
                    "drafter/buffer_rows": float(len(self.buffer.rows()))})
        if self.cfg.track_frozen and self.frozen is None:
            shared = {id(m): m for m in getattr(self.drafter, "_shared", ())}  # EAGLE: the target's, not copied
            self.frozen = copy.deepcopy(self.drafter, shared)  # the version this step publishes, kept frozen
        return out

    def weights(self, version: int) -> DrafterWeights:
        state = self.drafter.state_dict()
        return DrafterWeights(version, {k: v.detach().to("cpu", copy=True) for k, v in state.items()})

    # ---- checkpoint protocol (rlreason.checkpoint) ------------------------------------------

    def state_dict(self) -> dict:
        # copies: an optimizer's state_dict() holds its live moment tensors, which training updates in place
        return {"drafter": self.weights(0).state, "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "buffer": list(self.buffer.items), "generator": self.generator.get_state(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.drafter.load_state_dict(state["drafter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.items = list(state["buffer"])
        self.generator.set_state(state["generator"])
        self.updates = state["updates"]
