"""The quickstart task: deterministic data, a lossless tokenizer, a loadable tiny model."""

import json
import re

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.tasks import arithmetic

BOXED = re.compile(r"\\boxed\{(-?\d+)\}")
STEP = re.compile(r"(\d+)\+(\d+)=(\d+)")


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _boxed(solution):
    return BOXED.findall(solution)[-1]


def test_dataset_is_deterministic_given_seed(tmp_path):
    a = arithmetic.write_dataset(str(tmp_path / "a"), seed=3, num_train=50, num_val=10)
    b = arithmetic.write_dataset(str(tmp_path / "b"), seed=3, num_train=50, num_val=10)
    c = arithmetic.write_dataset(str(tmp_path / "c"), seed=4, num_train=50, num_val=10)
    for split in ("train", "val"):
        assert _rows(a[split]) == _rows(b[split])
        assert _rows(a[split]) != _rows(c[split])
    assert len(_rows(a["train"])) == 50 and len(_rows(a["val"])) == 10


def test_rows_have_the_interface_columns(tmp_path):
    paths = arithmetic.write_dataset(str(tmp_path), seed=0, num_train=20, num_val=5, min_terms=3, max_terms=4)
    for row in _rows(paths["train"]) + _rows(paths["val"]):
        assert row["data_source"] == "arithmetic"
        terms = [int(t) for t in row["prompt"].removeprefix("Q: ").removesuffix(" =\nA:").split("+")]
        assert row["prompt"] == arithmetic.make_prompt(terms)
        assert 3 <= row["num_terms"] == len(terms) <= 4
        assert row["answer"] == str(sum(terms))
        totals = [sum(terms[:i]) for i in range(1, len(terms) + 1)]
        assert row["num_carries"] == sum(a // 10 != b // 10 for a, b in zip(totals, totals[1:]))
        assert row["solution"].startswith(" ") and row["solution"].endswith("}")  # the framework adds EOS


def test_val_solutions_are_correct(tmp_path):
    paths = arithmetic.write_dataset(str(tmp_path), seed=0, num_train=10, num_val=200)
    for row in _rows(paths["val"]):
        assert row["teacher_correct"]
        assert _boxed(row["solution"]) == row["answer"]
        assert all(int(a) + int(b) == int(c) for a, b, c in STEP.findall(row["solution"]))


def test_train_teacher_drops_carries_at_the_configured_rate(tmp_path):
    noise = 0.3
    paths = arithmetic.write_dataset(str(tmp_path), seed=0, num_train=2000, num_val=1, noise=noise)
    rows = _rows(paths["train"])
    carries = slips = 0
    for row in rows:
        running = None
        for a, b, c in STEP.findall(row["solution"]):
            a, b, c = int(a), int(b), int(c)
            assert running is None or a == running  # the chain continues from the teacher's own sum
            running = c
            if (a + b) // 10 != a // 10:  # carry step: right, or the carry dropped
                carries += 1
                slips += c == a + b - 10
                assert c in (a + b, a + b - 10)
            else:  # steps without a carry are always right
                assert c == a + b
        # The boxed answer is the teacher's own result; it matches the gold one exactly when no slip.
        assert _boxed(row["solution"]) == str(running)
        assert row["teacher_correct"] == (_boxed(row["solution"]) == row["answer"])
    assert abs(slips / carries - noise) < 0.03
    wrong = sum(not r["teacher_correct"] for r in rows) / len(rows)
    assert 0.2 < wrong < 0.6  # noisy rows exist, but most demonstrations are still right

    clean = arithmetic.write_dataset(str(tmp_path / "clean"), seed=0, num_train=200, num_val=1, noise=0.0)
    assert all(r["teacher_correct"] for r in _rows(clean["train"]))


def test_tokenizer_round_trips_task_strings(tmp_path):
    paths = arithmetic.write_dataset(str(tmp_path), seed=0, num_train=50, num_val=5)
    tok = AutoTokenizer.from_pretrained(arithmetic.build_model(str(tmp_path / "m"), hidden_size=16,
                                                               num_layers=1, num_heads=2, intermediate_size=32))
    assert len(tok) <= 128
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
    strings = [r["prompt"] + r["solution"] for r in _rows(paths["train"])] + ["  a b\n\\boxed{-12} ,=+"]
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.decode(ids) == s
        assert tok.unk_token_id not in ids
    assert len(tok.encode("\\boxed{7}", add_special_tokens=False)) == 4  # \boxed is one token


def test_built_model_loads_and_runs(tmp_path):
    out = arithmetic.build_model(str(tmp_path / "a"), seed=1, hidden_size=32, num_layers=1, num_heads=2,
                                 intermediate_size=64)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok)
    batch = tok(["Q: 1+2+3 =\nA:", "Q: 9+9+9+9 =\nA:"], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], len(tok)) and torch.isfinite(logits).all()

    # Same seed, same weights: the init is deterministic.
    again = AutoModelForCausalLM.from_pretrained(arithmetic.build_model(
        str(tmp_path / "b"), seed=1, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    for p, q in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)
