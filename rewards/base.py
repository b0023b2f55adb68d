"""Kinds of reward function, how a recipe's name resolves to one, and the input of model rewards.

One calling convention per kind; the reward worker dispatches on the kind, never on a name:

- ``sample`` (default): ``fn(*, prompt, response, ground_truth, **columns) -> float | dict | None``,
  one call per response, in a reward process under a wall-clock timeout.
- ``group``: the same keywords, each per-response field a list over one prompt's group (run-level
  fields ``step``, ``max_response_length`` and the recipe's kwargs stay scalars); returns a list.
  For group-relative rewards such as the Kimi length penalty.
- ``batch``: the same lists over every response a reward worker scores in a step (whole groups);
  for rewards that batch a model (sentence embeddings) or a remote service (HTTP).
- ``model``: ``fn(inp: ModelRewardInput, **kwargs) -> list``; runs in the reward actor, which hands it
  ``inp.scorer``, a batched forward pass of the current policy or of a named model (likelihood
  rewards). See ``rlreason/workers/scoring.py`` for where that forward pass runs.

A reward whose signature names ``correct`` runs after the others and receives the verdict of the
verifier rewards (those that return a ``correct`` metric): 1.0, 0.0, or None where none applied.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol
from urllib.parse import urlparse

from rlreason.registry import Entry, Registry, RegistryError, first_line
from rlreason.types import TokenScoreResult

KINDS = ("sample", "group", "batch", "model")


def batched(per: str = "group", **traits: Any) -> Callable[[Callable], Callable]:
    """Mark a user reward as batched: it receives lists for a whole group (per="group") or batch."""
    if per not in ("group", "batch"):
        raise ValueError(f"batched(per={per!r}): use 'group' or 'batch'")
    return _mark(per, traits)


def model_reward(fn: Callable) -> Callable:
    """Mark a user reward as a model reward: ``fn(inp: ModelRewardInput, **kwargs) -> list``."""
    return _mark("model", {})(fn)


def _mark(kind: str, traits: dict) -> Callable[[Callable], Callable]:
    def decorate(fn: Callable) -> Callable:
        fn.rlreason_traits = {**getattr(fn, "rlreason_traits", {}), **traits, "kind": kind}
        return fn

    return decorate


class TokenScorer(Protocol):
    """A batched forward pass: per-token log-probs of each continuation given its context."""

    def __call__(self, contexts: list[str], continuations: list[str]) -> TokenScoreResult: ...


@dataclass
class ModelRewardInput:
    """What a model reward sees: one row per response, plus the scorer that holds the model."""

    prompts: list[str]  # [n] prompt text
    responses: list[str]  # [n] response text
    ground_truths: list[Any]  # [n] the answer column of each row
    rows: list[dict[str, Any]]  # [n] dataset rows
    group_ids: list[int]  # [n] prompt (group) of each response
    scorer: TokenScorer
    correct: Optional[list[Optional[float]]] = None  # [n] verifier verdicts, for rewards that ask
    step: int = 0


class RewardRegistry(Registry):
    """The reward registry; besides names and import/file paths it resolves HTTP endpoints."""

    def entry(self, spec: str) -> Entry:
        if spec.startswith(("http://", "https://")):
            from rlreason.rewards.http import http_reward

            fn = functools.partial(http_reward, url=spec)
            return Entry(spec, fn, f"POST the batch as JSON to {spec}", {"kind": "batch"})
        return super().entry(spec)


# ----------------------------------------------------------------------------- resolving a recipe's name


@dataclass
class Resolved:
    spec: str
    fn: Callable
    kind: str
    wants_correct: bool
    summary: str = ""
    traits: dict = field(default_factory=dict)


def file_part(spec: str) -> Optional[str]:
    """The path of a 'path/to/file.py:function' spec, else None."""
    target = spec.rpartition(":")[0]
    return target if target.endswith(".py") and not spec.startswith(("http://", "https://")) else None


def read_sources(specs: list[str]) -> dict[str, str]:
    """Source text of every reward file named by ``specs``, read here (on the driver) so it can travel.

    Reward actors and their processes may run on other nodes, where the path need not exist; they
    execute this text instead (``resolve``), under the original path so tracebacks name it.
    """
    out: dict[str, str] = {}
    for spec in specs:
        path = file_part(spec)
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out[path] = f.read()
    return out


def resolve(spec: str, sources: Optional[dict[str, str]] = None) -> Resolved:
    """The function a recipe names, with its kind; file rewards run from shipped source when given."""
    from rlreason.rewards import REWARDS

    path = file_part(spec)
    if path is not None and sources and path in sources:
        attr = spec.rpartition(":")[2]
        module = _module_from_source(path, sources[path])
        if not callable(getattr(module, attr, None)):
            raise RegistryError(f"'{path}' has no function '{attr}'")
        fn = getattr(module, attr)
        entry = Entry(spec, fn, first_line(fn.__doc__), dict(getattr(fn, "rlreason_traits", {})))
    else:
        entry = REWARDS.entry(spec)
    kind = entry.traits.get("kind", "sample")
    if kind not in KINDS:
        raise RegistryError(f"reward '{spec}' has kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return Resolved(spec, entry.fn, kind, _names_correct(entry.fn), entry.summary, entry.traits)


def _names_correct(fn: Callable) -> bool:
    try:
        return "correct" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def log_name(spec: str) -> str:
    """The short name a component is logged under: the function of 'module:fn', an URL's last part."""
    if spec.startswith(("http://", "https://")):
        url = urlparse(spec)
        return url.path.strip("/").replace("/", "_") or url.hostname or "http"
    return spec.rpartition(":")[2] or spec


@functools.lru_cache(maxsize=None)
def _module_from_source(path: str, source: str):
    # One module per (path, source): a stable name keeps pickling by reference working, and the
    # file's directory goes on sys.path (when it exists here) so its sibling imports still work.
    name = "rlreason_user_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    module_spec = importlib.util.spec_from_loader(name, loader=None, origin=path)
    module = importlib.util.module_from_spec(module_spec)
    module.__file__ = path
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder) and folder not in sys.path:
        sys.path.append(folder)
    sys.modules[name] = module
    try:
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 (the user's own reward file)
    except Exception as e:
        del sys.modules[name]
        raise RegistryError(f"importing reward file '{path}' failed: {type(e).__name__}: {e}") from e
    return module
