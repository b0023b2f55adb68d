"""The arithmetic task's verbose variant: padded demonstrations, and the default left byte-identical."""

import hashlib
import json
import random

from rlreason.tasks.arithmetic import teach, write_dataset


def digest(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def test_default_dataset_is_unchanged(tmp_path):
    paths = write_dataset(str(tmp_path))  # the quickstart's data before the verbose option existed
    assert digest(paths["train"]) == "f251af02b64013be2b47252724a8a2dc"
    assert digest(paths["val"]) == "5820f38095c2541cf484a0e9685e9ce0"


def test_padding_restates_the_sum_and_keeps_the_answer():
    solution, answer = teach([7, 5, 8], random.Random(0), noise=0.0, verbose=1.0)
    assert solution == " 7+5=12, 12+8=20, check 7+5+8=20, check 7+5+8=20 \\boxed{20}" and answer == 20
    assert teach([7, 5, 8], random.Random(0), noise=0.0, verbose=1.0, max_checks=1)[0].count("check") == 1


def test_verbose_train_set_mixes_short_and_padded_answers(tmp_path):
    paths = write_dataset(str(tmp_path), num_train=400, verbose=0.5)
    with open(paths["train"]) as f:
        rows = [json.loads(line) for line in f]
    checks = [r["solution"].count("check") for r in rows]
    assert {0, 1, 2} == set(checks)
    assert 0.35 < checks.count(0) / len(rows) < 0.65  # (1 - 0.5) of the solutions stay short
    with open(paths["val"]) as f:
        assert all("check" not in json.loads(line)["solution"] for line in f)  # val demonstrations stay short
