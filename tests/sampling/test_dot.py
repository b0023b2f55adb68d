"""DOT dynamic outlier truncation: the spec's vectors, then a cut and a real re-score (algorithms.md §12.5)."""

import torch

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput
from rlreason.config.schema import OutlierTruncationConfig
from rlreason.rewards.math_verify import math_verify
from rlreason.sampling.base import Groups
from rlreason.sampling.dot import OutlierTruncation, outlier_lengths
from rlreason.tasks.arithmetic import build_tokenizer
from rlreason.types import RewardResult, RolloutBatch


def test_spec_vectors():
    g = torch.zeros(5, dtype=torch.long)
    lengths = torch.tensor([100, 110, 120, 130, 900])
    assert torch.equal(outlier_lengths(lengths, torch.ones(5), g), lengths)  # T = floor(272 + 3·351.24) = 1325
    lengths = torch.tensor([1000] * 15 + [3000])
    new = outlier_lengths(lengths, torch.ones(16), torch.zeros(16, dtype=torch.long))
    assert new.tolist() == [1000] * 15 + [2625]  # mean 1125, std 500, margin 375 >= 32


def test_only_all_correct_groups_and_margins():
    lengths = torch.tensor([1000] * 15 + [3000] + [1000] * 15 + [3000])
    gid = torch.tensor([0] * 16 + [1] * 16)
    correct = torch.ones(32)
    correct[20] = 0.0  # group 1 is not all correct
    new = outlier_lengths(lengths, correct, gid)
    assert new[15] == 2625 and new[31] == 3000
    assert outlier_lengths(lengths, correct, gid, success_rate=0.9)[31] == 2625  # 15/16 correct is enough
    assert outlier_lengths(lengths, correct, gid, margin=400)[15] == 3000  # 375 tokens over: under the margin
    assert outlier_lengths(lengths, correct, gid, margin=0.1)[15] == 2625  # fractional: 300 tokens needed
    single = outlier_lengths(torch.tensor([50]), torch.ones(1), torch.zeros(1, dtype=torch.long))
    assert single.tolist() == [50]  # std 0 for a singleton: T = L, nothing to cut


def arithmetic_rollout(texts, tok):
    ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
    width = max(len(x) for x in ids)
    resp = torch.full((len(ids), width), tok.pad_token_id)
    mask = torch.zeros(len(ids), width)
    for i, x in enumerate(ids):
        resp[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1.0
    n = len(ids)
    return RolloutBatch(torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.long), resp, mask,
                        torch.full((n, width), -0.5) * mask, torch.zeros(n, dtype=torch.bool),
                        torch.zeros(n, dtype=torch.long), texts, pad_id=tok.pad_token_id)


def verify(rollout, uids):
    """Re-score with the quickstart's verifier, in this process (the trainer sends it to the reward workers)."""
    out = [math_verify(response=t, ground_truth="20") for t in rollout.response_text]
    rewards = RewardResult(torch.tensor([o["score"] for o in out]), torch.tensor([o["correct"] for o in out]), {})
    return Groups(rollout, rewards, list(uids))


def test_an_all_correct_group_gains_signal_against_its_padded_outlier():
    tok = build_tokenizer()
    short = " 7+5=12, 12+8=20 \\boxed{20}"
    padded = " 7+5=12, 12+8=20" + ", check 7+5+8=20" * 4 + " \\boxed{20}"
    groups = verify(arithmetic_rollout([short] * 7 + [padded], tok), [3])
    assert groups.rewards.correct.tolist() == [1.0] * 8
    before = groups.rollout.lengths.long()
    out = OutlierTruncation(OutlierTruncationConfig(enable=True, alpha=1.0, margin=4), tok)(groups, verify)
    cut = out.rollout.lengths.long()
    assert cut[:7].tolist() == before[:7].tolist() and cut[7] < before[7]
    lengths, mean = before.double(), before.double().mean()
    assert int(cut[7]) == int(torch.floor(mean + lengths.std()))  # T = floor(mean + α·std), α = 1
    text = out.rollout.response_text[7]
    assert padded.startswith(text) and "boxed" not in text
    assert out.rollout.response_mask[7, int(cut[7]):].sum() == 0 and out.rollout.rollout_logprobs[7, int(cut[7]):].sum() == 0
    assert out.rewards.correct[7] == 0.0 and out.rewards.correct[:7].tolist() == [1.0] * 7
    assert out.stats["dot/truncated"] == 1 and out.stats["dot/rescored_incorrect"] == 1
    adv = ADVANTAGES.get("grpo")(AdvantageInput(out.rewards.scores, out.rollout.group_index,
                                                out.rollout.response_mask, out.rewards.correct))
    assert (adv[:7, 0] > 0).all() and adv[7, 0] < 0  # the short answers are now preferred
