"""The built-in ``math_verify`` reward: is the response's final answer equal to the ground truth?

Follows TRL's ``accuracy_reward`` (algorithms.md §15, wrapper 1): the gold answer is parsed with
math-verify's default configs, the response's last ``\\boxed{}`` with a LaTeX config that needs an
anchor (boxed first), and ``verify(gold, prediction)`` is called with the gold first (it is not
symmetric). Differences from TRL, and why:

- Plain-text gold answers (``[1,2)``, ``x^2+1``, ``2\\sqrt{3}``) are wrapped in ``$...$`` before
  parsing: the default configs only read LaTeX inside an environment, and the plain-expression
  parser reads ``2\\sqrt{3}`` as 2 and ``1, 2`` as 2. (Known gap: ``1e3`` reads as 1·e·3.)
- A gold answer that math-verify can keep only as raw text (no sympy object) counts as
  unparsable, so the reward returns ``None`` rather than comparing strings.
- The prediction uses math-verify's full LaTeX normalisation (``malformed_operators`` and ``nits``
  on, not off as in TRL), so the common shorthand ``\\boxed{\\frac13}`` parses.
- Timeouts are raised as :class:`RewardTimeout`, never swallowed into a 0: math-verify returns
  ``[]``/``False`` on a timeout unless ``raise_on_error=True``, so we ask it to raise and sort
  timeouts from ordinary parse errors ourselves.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from itertools import product

from math_verify import ExprExtractionConfig, LatexExtractionConfig, LatexNormalizationConfig, parse, verify
from math_verify.errors import TimeoutException

from rlreason.rewards import REWARDS


class RewardTimeout(TimeoutError):
    """A reward computation ran out of time (a TimeoutError, so reward pools report it as a timeout)."""


# Gold / plain answers: default configs (LaTeX in an environment, then plain expressions).
_GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
# Responses: only anchored LaTeX ("final answer is $x$", "answer: $x$"), \boxed{} first.
_PRED_CONFIG = (
    LatexExtractionConfig(
        normalization_config=LatexNormalizationConfig(
            basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
        boxed_match_priority=0,
        try_extract_without_anchor=False,
    ),
)
# Signs that a string already holds a LaTeX environment math-verify can find.
_LATEX_ENV = ("$", "\\boxed", "\\(", "\\[", "\\begin")


@REWARDS.register("math_verify", verifier=True)
def math_verify(
    *,
    response: str,
    ground_truth: str,
    answer_pattern: str | None = None,
    format_reward: float = 0.0,
    correct_score: float = 1.0,
    incorrect_score: float = 0.0,
    timeout_s: float | None = 5.0,
    tail_chars: int | None = 4000,
    **_unused,
) -> dict | None:
    """1 if the response's final answer (last \\boxed{} or answer_pattern match) equals the ground truth.

    Returns ``{"score", "correct", "parsed"}``: ``score`` is ``correct_score`` or
    ``incorrect_score``, plus ``format_reward`` when an answer was found and parsed (even a wrong
    one); ``correct`` is 1.0/0.0; ``parsed`` is 1.0 when an answer was extracted. Returns ``None``
    (not applicable) when the ground truth is missing or cannot be parsed. Only the last
    ``tail_chars`` characters of the response are searched. ``answer_pattern`` is a regex whose
    first group (last match) is the answer, e.g. ``Answer:\\s*(.+)``. Raises :class:`RewardTimeout`
    when math-verify's ``timeout_s`` runs out (enforced only in a process's main thread; elsewhere
    the caller's reward pool bounds the wall-clock time).
    """
    if ground_truth is None:
        return None
    # signal.alarm (math-verify's timeout) only works in the main thread and takes whole seconds.
    seconds = None
    if timeout_s and timeout_s > 0 and threading.current_thread() is threading.main_thread():
        seconds = max(1, math.ceil(timeout_s))

    gold = _parse_plain(gold_answer(ground_truth), seconds)
    if not gold:
        return None

    text = response or ""
    if tail_chars is not None and tail_chars > 0 and len(text) > tail_chars:
        text = text[-tail_chars:]
    if answer_pattern is not None:
        matches = list(_compile(answer_pattern).finditer(text))
        answer = _last_group(matches[-1]) if matches else ""
        # "Answer: 17." ends a sentence; the dot is not part of the answer.
        pred = _parse_plain(answer.strip().rstrip("."), seconds) if answer.strip() else []
    else:
        pred = _parse(text, _PRED_CONFIG, seconds, extraction_mode="first_match")

    correct = _verify(gold, pred, seconds)
    # A match math-verify could only keep as raw text (e.g. "\boxed{10\%}") is not "parsed".
    parsed = correct or any(not isinstance(p, str) for p in pred)
    score = (correct_score if correct else incorrect_score) + (format_reward if parsed else 0.0)
    return {"score": float(score), "correct": float(correct), "parsed": float(parsed)}


def gold_answer(ground_truth) -> str:
    """The answer part of a ground truth: GSM8K's worked solutions end in ``#### N``, and only N counts
    (its thousands commas dropped); without the marker, the whole string."""
    text = str(ground_truth).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text


@functools.lru_cache(maxsize=4096)
def _parse_plain(answer: str, seconds: int | None) -> tuple:
    """Parse a gold (or pattern-extracted) answer that may be plain text or LaTeX without ``$``.

    Cached: the G responses of a prompt share one gold answer (parse results are immutable sympy
    objects; a timeout raises and so is never cached).
    """
    if not answer:
        return ()
    tries = [answer] if any(marker in answer for marker in _LATEX_ENV) else [f"${answer}$", answer]
    for text in tries:
        parsed = _parse(text, _GOLD_CONFIG, seconds)
        # Only the raw-text fallback (e.g. "\\frac{" kept as a string) means math-verify could not
        # parse it; comparing such strings would score broken data, so treat it as unparsable.
        if any(not isinstance(p, str) for p in parsed):
            return tuple(parsed)
    return ()


def _parse(text: str, config, seconds: int | None, **kwargs) -> list:
    try:
        return parse(text, extraction_config=config, parsing_timeout=seconds, raise_on_error=True, **kwargs)
    except TimeoutException as e:  # a BaseException: `except Exception` would miss it
        raise RewardTimeout(f"math-verify parsing timed out after {seconds}s") from e
    except Exception:  # what math-verify does without raise_on_error: nothing parsed
        return []


def _verify(gold, pred, seconds: int | None) -> bool:
    # verify() itself loops over product(gold, pred); we loop here so that one failing pair does not
    # hide a later matching pair while timeouts still surface (raise_on_error=True).
    for g, p in product(gold, pred):
        try:
            if verify(g, p, timeout_seconds=seconds, raise_on_error=True):
                return True
        except TimeoutException as e:
            raise RewardTimeout(f"math-verify comparison timed out after {seconds}s") from e
        except Exception:
            continue
    return False


@functools.lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _last_group(match: re.Match) -> str:
    return (match.group(1) if match.re.groups else match.group(0)) or ""
