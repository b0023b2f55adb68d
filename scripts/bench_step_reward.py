"""The reward of scripts/bench_step.py, shared by both frameworks: 1 when the response is the sum."""


def exact_sum(*, response, ground_truth, **columns):
    """rlreason's signature (keyword arguments, ``ground_truth`` from data.answer_key)."""
    return 1.0 if response.strip() == str(ground_truth) else 0.0


def trl_exact_sum(completions, answer, **kwargs):
    """TRL's signature: lists of completions and of the dataset's ``answer`` column."""
    return [exact_sum(response=c, ground_truth=a) for c, a in zip(completions, answer)]
