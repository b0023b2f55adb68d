"""Registries: a name -> function table per kind of plug-in, with one fixed signature each.

A recipe names an entry by its registered name (``grpo``), by an import path
(``my_pkg.mod:fn``) or, for kinds that allow it, by a file path (``path/to/file.py:fn``).
The caller never special-cases an entry: every function of a registry is called the same way.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Entry:
    name: str
    fn: Callable
    summary: str
    # free-form facts the validator may check, e.g. {"needs_groups": True}
    traits: dict[str, Any] = field(default_factory=dict)


class RegistryError(ValueError):
    pass


class Registry:
    """A table of plug-ins of one kind (advantage estimators, policy losses, rewards, ...)."""

    def __init__(self, kind: str, signature: str):
        self.kind = kind
        self.signature = signature  # shown in errors and `rlreason list`
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **traits: Any) -> Callable[[Callable], Callable]:
        def decorate(fn: Callable) -> Callable:
            if name in self._entries and self._entries[name].fn is not fn:
                raise RegistryError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, fn, first_line(fn.__doc__), dict(traits))
            return fn

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, spec: str) -> Entry:
        """The entry for a registered name, ``module:function`` or ``file.py:function``."""
        if spec in self._entries:
            return self._entries[spec]
        if ":" in spec:
            fn = load_callable(spec)
            traits = dict(getattr(fn, "rlreason_traits", {}))
            return Entry(spec, fn, first_line(fn.__doc__), traits)
        close = difflib.get_close_matches(spec, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RegistryError(
            f"unknown {self.kind} '{spec}'.{hint} Registered: {', '.join(self.names())}; "
            f"or give 'module:function' / 'path/to/file.py:function' ({self.signature})."
        )

    def get(self, spec: str) -> Callable:
        return self.entry(spec).fn


def first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n")[0].strip()


def load_callable(spec: str) -> Callable:
    """Import ``module:attr`` or ``path/to/file.py:attr`` and return the attribute."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise RegistryError(f"'{spec}' is not of the form 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        module = _load_file(target, spec)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise RegistryError(f"cannot import module '{target}' named by '{spec}': {e}") from e
    try:
        fn = getattr(module, attr)
    except AttributeError:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, public, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise RegistryError(f"'{target}' has no attribute '{attr}'.{hint}") from None
    if not callable(fn):
        raise RegistryError(f"'{spec}' is not callable")
    return fn


def _load_file(path: str, spec: str):
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise RegistryError(f"file '{path}' named by '{spec}' does not exist (looked at {full})")
    # A stable module name per file, so pickling by reference works inside one process.
    name = "rlreason_user_" + "".join(c if c.isalnum() else "_" for c in full)
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise RegistryError(f"importing '{path}' named by '{spec}' failed: {type(e).__name__}: {e}") from e
    return module


def check_kwargs(fn: Callable, kwargs: dict[str, Any], where: str, skip: int = 1) -> None:
    """Fail early when a recipe passes keyword arguments a registered function does not take."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(
                f"{where}: '{key}' is not a parameter of {getattr(fn, '__name__', fn)}.{hint} "
                f"Valid: {', '.join(valid) or '(none)'}"
            )
