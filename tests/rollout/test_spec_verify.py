"""Exactness of the verification rule by exhaustive enumeration (speculative.md §2.5, test 1).

Toy target p and drafter q are Markov in the last token with random logits. Every branch of a
speculative round (draft draws × accept/reject × residual/bonus draws) is enumerated with the
real ``acceptance_probs`` and ``next_token_dist``, rounds are composed up to N tokens, and the
resulting law of the first N tokens is compared with autoregressive sampling from the warped p′.
"""

import itertools
from collections import defaultdict

import pytest
import torch

from rlreason.rollout.sampling import warp_logits
from rlreason.rollout.spec import verify

V, N = 4, 4


def markov(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, V, generator=g, dtype=torch.float64) * 1.5


def warped(logits, t, k, p):
    return verify.target_probs(logits, t, k, p)


def draft_table(q_logits, t, k, p, greedy):
    """q(·|c) [V, V]: the drafter's proposal law (one-hot argmax for greedy drafters)."""
    if greedy:
        return torch.zeros(V, V, dtype=torch.float64).scatter_(-1, q_logits.argmax(-1, keepdim=True), 1.0)
    return torch.softmax(warp_logits(q_logits, t, k, p), -1)


def sd_round(c, P, Q, K, next_dist, one_hot_q):
    """{emitted tuple: probability} of one round from context token c."""
    seqs = [d for d in itertools.product(range(V), repeat=K)]
    draw = torch.tensor([torch.prod(torch.stack([Q[([c] + list(d))[i], d[i]] for i in range(K)])).item()
                         for d in seqs], dtype=torch.float64)
    keep = draw > 0
    drafts = torch.tensor(seqs, dtype=torch.long)[keep]
    draw = draw[keep]
    ctx = torch.cat([torch.full((len(drafts), 1), c), drafts], 1)  # [M, K+1] token before each position
    p = P[ctx]  # [M, K+1, V]
    q = None if one_hot_q else Q[ctx[:, :K]]
    acc = verify.acceptance_probs(p, drafts, q)
    out = defaultdict(float)
    for n in range(K + 1):
        prob = torch.prod(acc[:, :n], 1) * ((1 - acc[:, n]) if n < K else 1.0) * draw
        dist = next_dist(p, drafts, q, torch.full((len(drafts),), n))
        for m in range(len(drafts)):
            if prob[m] == 0:
                continue
            for y in range(V):
                if dist[m, y] > 0:
                    out[tuple(drafts[m, :n].tolist()) + (y,)] += float(prob[m] * dist[m, y])
    return out


def sd_dist(c, n, rounds):
    """Law of the first n emitted tokens, composing rounds (truncating the last one)."""
    out = defaultdict(float)
    for emitted, prob in rounds[c].items():
        if len(emitted) >= n:
            out[emitted[:n]] += prob
            continue
        for rest, p2 in sd_dist(emitted[-1], n - len(emitted), rounds).items():
            out[emitted + rest] += prob * p2
    return out


def ar_dist(c, n, P):
    out = defaultdict(float)
    for seq in itertools.product(range(V), repeat=n):
        prob, prev = 1.0, c
        for y in seq:
            prob *= float(P[prev, y])
            prev = y
        if prob > 0:
            out[seq] += prob
    return out


def tv(a, b):
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def run(target, drafter, K, greedy=False, next_dist=verify.next_token_dist, one_hot_q=False):
    P = warped(markov(1), *target)
    Q = draft_table(markov(2), *drafter, greedy=greedy)
    rounds = {c: sd_round(c, P, Q, K, next_dist, one_hot_q) for c in range(V)}
    return tv(sd_dist(0, N, rounds), ar_dist(0, N, P))


CASES = [  # (target T, top-k, top-p), (drafter T, top-k, top-p)
    ((1.0, 0, 1.0), (1.0, 0, 1.0)),
    ((0.8, 3, 1.0), (1.3, 2, 1.0)),  # the prototype of speculative.md §2.6
    ((1.2, 0, 0.7), (0.6, 0, 1.0)),
    ((0.5, 2, 0.9), (1.0, 0, 0.8)),
]


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("target,drafter", CASES)
def test_sampled_drafts_are_exact(target, drafter, K):
    assert run(target, drafter, K) < 1e-12


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("target", [(1.0, 0, 1.0), (0.7, 0, 0.8)])
def test_greedy_one_hot_drafts_are_exact(target, K):
    assert run(target, (1.0, 0, 1.0), K, greedy=True) < 1e-12
    assert run(target, (1.0, 0, 1.0), K, greedy=True, one_hot_q=True) < 1e-12  # q=None path


def test_greedy_target_accepts_only_the_argmax():
    assert run((0.0, 0, 1.0), (1.0, 0, 1.0), 3) < 1e-12


@pytest.mark.parametrize("target,drafter", CASES[1:3])
def test_a_wrong_residual_is_caught(target, drafter):
    """Mutation test: drawing from p′ instead of norm(max(0, p′ − q)) after a rejection is biased."""
    def broken(p, drafts, q, n_acc):
        return p[torch.arange(len(n_acc)), n_acc]

    assert run(target, drafter, 2, next_dist=broken) > 0.01


def test_verify_chain_first_token_follows_p_statistically():
    """The sampled path (coins, residual draws) of ``verify_chain``: first emitted token ~ p′(·|c)."""
    P = warped(markov(1), 0.8, 3, 1.0)
    Q = draft_table(markov(2), 1.3, 0, 1.0, greedy=False)
    g = torch.Generator().manual_seed(0)
    n, K, c = 200_000, 3, 0
    drafts = torch.empty(n, K, dtype=torch.long)
    prev = torch.full((n,), c)
    for i in range(K):
        drafts[:, i] = torch.multinomial(Q[prev], 1, generator=g).squeeze(-1)
        prev = drafts[:, i]
    ctx = torch.cat([torch.full((n, 1), c), drafts], 1)
    n_acc, nxt = verify.verify_chain(P[ctx], drafts, Q[ctx[:, :K]], g)
    first = torch.where(n_acc > 0, drafts[:, 0], nxt)
    freq = torch.bincount(first, minlength=V).double() / n
    se = (P[c] * (1 - P[c]) / n).sqrt()
    assert ((freq - P[c]).abs() <= 5 * se + 1e-12).all()
    assert 0 < n_acc.double().mean() < K  # both accepts and rejects happened


def test_expected_accept_len_and_speedup():
    assert verify.expected_accept_len(0.0, 4) == 1.0
    assert verify.expected_accept_len(1.0, 4) == 5.0
    assert verify.expected_accept_len(0.7, 4) == pytest.approx((1 - 0.7 ** 5) / 0.3)
    # speculative.md §5.7: α = 0.7, K = 4, c_v = 1.3, c_d/c_t = 0.08 -> S ≈ 1.7
    assert verify.predicted_speedup(0.7, 4, 1.3, 0.08) == pytest.approx(1.70, abs=0.02)
