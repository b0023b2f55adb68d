"""GSM8K-format word problems, generated offline: the data shape of the realistic-model recipe.

Rows look like GSM8K's (``openai/gsm8k``, subset ``main``): ``question``, and ``answer`` holding a worked
solution with ``<<a*b=c>>`` calculator notes that ends in ``#### N``. A recipe that runs here on these
rows runs on GSM8K itself by setting ``data.train=openai/gsm8k data.subset=main``. Each row also has
``solution``: the same steps in the format the system prompt asks for (ending in ``\\boxed{N}``), the
supervised warm-up's target.
"""

from __future__ import annotations

import json
import os
import random

DATA_SOURCE = "word_problems"
NAMES = [("Natalia", "she"), ("Tom", "he"), ("Aisha", "she"), ("Ken", "he"), ("Maria", "she"), ("Omar", "he")]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "stamps"]


def _boxes_given_away(rng: random.Random) -> tuple[str, list[tuple], list[str]]:
    """(question, calculations, one line per calculation); ``None`` stands for the previous result."""
    (name, pron), item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    c = rng.randint(1, a * b - 1)
    q = (f"{name} has {a} boxes of {item}. Each box holds {b} {item}. {pron.capitalize()} gives away {c} {item}. "
         f"How many {item} does {name} have left?")
    lines = [f"{name} has {{}} {item}.", f"After giving away {c}, {pron} has {{}} {item} left."]
    return q, [(a, "*", b), (None, "-", c)], lines


def _change(rng: random.Random) -> tuple[str, list[tuple], list[str]]:
    (name, pron), item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    paid = rng.choice([p for p in (10, 20, 50, 100) if p > a * b])
    q = (f"{name} buys {a} {item} at ${b} each and pays with a ${paid} bill. "
         f"How many dollars of change does {pron} get?")
    return q, [(a, "*", b), (paid, "-", None)], [f"The {item} cost ${{}}.", "The change is ${}."]


def _pages(rng: random.Random) -> tuple[str, list[tuple], list[str]]:
    name, pron = rng.choice(NAMES)
    a, b, c = rng.randint(5, 30), rng.randint(2, 7), rng.randint(1, 20)
    q = (f"{name} reads {a} pages a day for {b} days, then {c} pages on the last day. "
         f"How many pages does {pron} read in total?")
    lines = [f"In {b} days {pron} reads {{}} pages.", "With the last day that makes {} pages."]
    return q, [(a, "*", b), (None, "+", c)], lines


def solve(calcs: list[tuple], lines: list[str]) -> tuple[str, str, int]:
    """Work the calculations in order: GSM8K's text (``a * b = <<a*b=c>>c``), the plain text
    (``a * b = c``) and the answer."""
    gsm8k, plain, result = [], [], None
    for (a, op, b), line in zip(calcs, lines):
        a, b = (result if a is None else a), (result if b is None else b)
        result = {"*": a * b, "+": a + b, "-": a - b}[op]
        gsm8k.append(line.format(f"{a} {op} {b} = <<{a}{op}{b}={result}>>{result}"))
        plain.append(line.format(f"{a} {op} {b} = {result}"))
    return "\n".join(gsm8k), "\n".join(plain), result


PROBLEMS = [_boxes_given_away, _change, _pages]


def make_row(rng: random.Random) -> dict:
    question, calcs, lines = rng.choice(PROBLEMS)(rng)
    gsm8k_steps, plain_steps, answer = solve(calcs, lines)
    return {
        "question": question,
        "answer": f"{gsm8k_steps}\n#### {answer}",  # GSM8K's column: the ground truth
        "solution": f"{plain_steps}\nThe answer is \\boxed{{{answer}}}.",  # the warm-up's target
        "data_source": DATA_SOURCE,
    }


def write_dataset(out_dir: str, *, seed: int = 0, num_train: int = 2000, num_val: int = 64) -> dict[str, str]:
    """Write ``train.jsonl`` and ``val.jsonl`` (disjoint questions) and return their paths."""
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    seen, rows = set(), []
    while len(rows) < num_train + num_val:
        row = make_row(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    paths = {"train": os.path.join(out_dir, "train.jsonl"), "val": os.path.join(out_dir, "val.jsonl")}
    for split, part in (("train", rows[:num_train]), ("val", rows[num_train:])):
        with open(paths[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return paths
