"""GSM8K-format rows: deterministic, disjoint splits, and every row's solution scores 1 against its
GSM8K answer under math_verify (and a wrong number scores 0)."""

import json
import re

from rlreason.rewards.math_verify import math_verify
from rlreason.tasks import word_problems


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_deterministic_and_disjoint(tmp_path):
    a = word_problems.write_dataset(str(tmp_path / "a"), seed=3, num_train=100, num_val=20)
    b = word_problems.write_dataset(str(tmp_path / "b"), seed=3, num_train=100, num_val=20)
    c = word_problems.write_dataset(str(tmp_path / "c"), seed=4, num_train=100, num_val=20)
    assert _rows(a["train"]) == _rows(b["train"]) and _rows(a["train"]) != _rows(c["train"])
    train, val = _rows(a["train"]), _rows(a["val"])
    assert (len(train), len(val)) == (100, 20)
    assert not {r["question"] for r in train} & {r["question"] for r in val}


def test_rows_are_gsm8k_format_and_solutions_verify(tmp_path):
    rows = _rows(word_problems.write_dataset(str(tmp_path), seed=0, num_train=150, num_val=0)["train"])
    for row in rows:
        *steps, final = row["answer"].split("\n")
        n = int(re.fullmatch(r"#### (-?\d+)", final).group(1))
        for calc in re.findall(r"<<([^>]+)>>", row["answer"]):  # the calculator notes are right
            expr, value = calc.split("=")
            assert eval(expr) == int(value), calc  # noqa: S307 - digits and + - * only
        assert row["solution"].endswith(f"\\boxed{{{n}}}.") and n >= 0
        assert math_verify(response=row["solution"], ground_truth=row["answer"])["correct"] == 1.0
        assert math_verify(response=f"\\boxed{{{n + 1}}}", ground_truth=row["answer"])["correct"] == 0.0
    assert len({r["question"].split()[1] for r in rows}) >= 2  # more than one problem kind
