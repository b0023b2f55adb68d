"""The README's example reward file, by file path and as module:function, through the reward worker."""

from pathlib import Path

from rlreason.config.schema import RewardConfig, RewardFunctionConfig
from rlreason.types import ScoreRequest
from rlreason.workers.reward import RewardWorker

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "rewards"


def test_example_rewards(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # reward processes get this sys.path
    fns = [RewardFunctionConfig("math_verify"),
           RewardFunctionConfig(f"{EXAMPLES / 'my_reward.py'}:concise", 0.5, {"max_chars": 20}),
           RewardFunctionConfig("my_reward:shortest_correct_bonus", 0.2)]
    responses = [r"so \boxed{12}", r"7+5=12, so \boxed{12}", r"\boxed{13}", r"\boxed{6}"]
    rows = [{"answer": "12", "num_carries": 1}] * 3 + [{"answer": "6", "num_carries": 0}]
    worker = RewardWorker(RewardConfig(functions=fns, processes=2), answer_key="answer")
    try:
        res = worker.score(ScoreRequest(["Q"] * 4, responses, rows, [0, 1, 2, 3], [9] * 4, [False] * 4,
                                        group_ids=[0, 0, 0, 1]))
    finally:
        worker.close()
    assert res.errors == []
    assert res.correct.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert res.components["shortest_correct_bonus"].tolist() == [1.0, 0.0, 0.0, 1.0]  # shortest right one per group
    assert res.components["concise/right"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert res.components["concise/carries"].tolist() == [1.0, 1.0, 1.0, 0.0]  # the dataset column arrived
    concise = [float(r) - min(len(x) / 20, 1.0) for r, x in zip([1, 1, 0, 1], responses)]
    want = [c + 0.5 * k + 0.2 * b for c, k, b in zip([1.0, 1.0, 0.0, 1.0], concise, [1.0, 0.0, 0.0, 1.0])]
    assert [round(x, 5) for x in res.scores.tolist()] == [round(x, 5) for x in want]
