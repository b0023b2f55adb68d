"""Batched log-probs of text continuations: the forward pass behind model rewards (likelihood).

Where it runs, and why:
- ``scorer: policy`` (default) — on the rollout workers. They hold the current policy, and the
  score phase runs between generation and the weight sync, so it is exactly the policy that wrote
  the responses (π_old, as §14 asks), already resident on the device that generated them: no extra
  copy of the model, one batched no-grad forward per worker share.
- ``scorer: <model dir or hub id>`` — a fixed scorer model, loaded once in the reward actor that
  needs it (on its device: CPU unless the actor was given a GPU).
Not in the reward pool processes: a forward pass wants the model resident and the batch whole, not
a model per process; model rewards are therefore their own kind (``rewards/base.py``).

Rows are left-padded so every continuation ends at the last position; only the last A+1 positions'
logits are built (``logits_to_keep``), so memory is O(batch · A · V), not O(batch · T · V).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from rlreason.types import TokenScoreRequest, TokenScoreResult


def _encode(tokenizer, context: str, continuation: str, special: bool,
            max_len: Optional[int]) -> tuple[list[int], int, bool]:
    """Token ids of context+continuation (tokenised together), where the continuation starts, and
    whether the context was cut from the left to fit ``max_len`` positions.

    The start is the end of the longest common prefix with the context's own tokens: when a token
    straddles the boundary it is counted as part of the continuation.
    """
    ctx = tokenizer.encode(context, add_special_tokens=special)
    full = tokenizer.encode(context + continuation, add_special_tokens=special)
    k = 0
    while k < min(len(ctx), len(full)) and ctx[k] == full[k]:
        k += 1
    k = max(k, 1)  # the first token has no prediction; score from position 1 at the earliest
    cut = len(full) - max_len if max_len and len(full) > max_len else 0
    # Too long for the model: keep the answer and the end of the reasoning (§14 says mark such rows).
    cut = min(cut, k - 1)
    return full[cut:], k - cut, cut > 0


@torch.no_grad()
def continuation_logprobs(model, tokenizer, req: TokenScoreRequest) -> TokenScoreResult:
    """log π(continuation token | everything before it) at temperature 1, batched, in request order."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    max_len = getattr(model.config, "max_position_embeddings", None)
    rows = [_encode(tokenizer, c, x, req.add_special_tokens, max_len) for c, x in zip(req.contexts, req.continuations)]
    width = max((len(ids) - k for ids, k, _ in rows), default=0)
    logprobs = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths share a batch
    for lo in range(0, len(order), max(req.batch_size, 1)):
        part = order[lo:lo + max(req.batch_size, 1)]
        seqs = [rows[i][0] for i in part]
        keep = max(len(rows[i][0]) - rows[i][1] for i in part)  # continuation tokens to score
        lp = _last_logprobs(model, seqs, keep, pad, device)  # [b, keep]
        for b, i in enumerate(part):
            n = len(rows[i][0]) - rows[i][1]
            logprobs[i, :n] = lp[b, keep - n:].cpu()
            mask[i, :n] = 1.0
    vocab = getattr(model.config, "vocab_size", 0) or len(tokenizer)
    truncated = torch.tensor([cut for _, _, cut in rows], dtype=torch.bool)
    return TokenScoreResult(logprobs=logprobs, mask=mask, vocab_size=int(vocab), truncated=truncated)


def _last_logprobs(model, seqs: list[list[int]], keep: int, pad: int, device) -> torch.Tensor:
    """Log-probs of the last ``keep`` tokens of each left-padded sequence. Returns [b, keep]."""
    if keep <= 0:  # empty continuations: nothing to score
        return torch.zeros(len(seqs), 0)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attn = torch.zeros(len(seqs), width, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s):] = torch.tensor(s)
        attn[b, width - len(s):] = 1
    ids, attn = ids.to(device), attn.to(device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    kwargs = dict(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False)
    try:  # logits of the last keep+1 positions only; older models do not take the argument
        logits = model(**kwargs, logits_to_keep=keep + 1).logits
    except TypeError:
        logits = model(**kwargs).logits
    logits = logits[:, -(keep + 1):-1].float()  # position t predicts token t+1
    targets = ids[:, -keep:]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- scorers handed to model rewards


class LocalScorer:
    """A named scorer model loaded in this process (once), on ``device`` (default: CUDA if present)."""

    def __init__(self, path: str, add_special_tokens: bool = True, batch_size: int = 16,
                 device: Optional[str] = None, dtype: str = "float32"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.add_special_tokens, self.batch_size = add_special_tokens, batch_size

    def __call__(self, contexts: list[str], continuations: list[str]) -> TokenScoreResult:
        req = TokenScoreRequest(contexts, continuations, self.add_special_tokens, self.batch_size)
        return continuation_logprobs(self.model, self.tokenizer, req)


class PolicyScorer:
    """The current policy, on the rollout workers: each scores a contiguous share of the rows."""

    def __init__(self, actors: list, add_special_tokens: bool = True, batch_size: int = 16):
        if not actors:
            raise ValueError("scorer=policy needs the rollout workers, which hold the policy; they are passed by "
                             "the trainer (RewardGroup). Outside a run, name a scorer model instead.")
        self.actors, self.add_special_tokens, self.batch_size = actors, add_special_tokens, batch_size

    def __call__(self, contexts: list[str], continuations: list[str]) -> TokenScoreResult:
        import ray

        n, w = len(contexts), len(self.actors)
        bounds = [round(i * n / w) for i in range(w + 1)]
        futures = [a.score_tokens.remote(TokenScoreRequest(contexts[lo:hi], continuations[lo:hi],
                                                           self.add_special_tokens, self.batch_size))
                   for a, lo, hi in zip(self.actors, bounds, bounds[1:]) if hi > lo]
        return TokenScoreResult.concat(ray.get(futures))


@functools.lru_cache(maxsize=2)
def local_scorer(path: str, add_special_tokens: bool = True) -> LocalScorer:
    """One LocalScorer per model path and process."""
    return LocalScorer(path, add_special_tokens)
