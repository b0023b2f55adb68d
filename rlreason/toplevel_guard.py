"""Keep the repository's top-level folders from posing as packages of their own name.

``kernels/``, ``rewards/``, ``rollout/`` and ``recipes/`` sit at the repository root but install as
``rlreason.kernels`` and so on. A Python process whose working directory is the repository root has
that directory on ``sys.path`` (``python -m pytest``, ``python -c``, Ray workers started from there),
so a bare ``import kernels`` would find our folder before Hugging Face's ``kernels``, which
transformers >= 5.24 imports. Each folder's ``__init__`` therefore calls :func:`step_aside` when it is
imported under its bare name: the package of that name installed elsewhere takes its place, or, where
there is none, an empty namespace module does (what Python gives for a folder without
``__init__.py``, and what transformers treats as "not installed"). Our code is never reachable there.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types


def step_aside(name: str, init_file: str) -> None:
    """Replace ``sys.modules[name]`` (our folder, imported by its bare name) with the real package."""
    our_root = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != our_root]
    spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    if spec is None or spec.loader is None:
        sys.modules[name] = _empty_namespace(name)
        return
    module = importlib.util.module_from_spec(spec)
    # The import system returns whatever sits in sys.modules[name] once our __init__ has run.
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _empty_namespace(name: str) -> types.ModuleType:
    # A package with nothing in it (`import NAME.sub` fails) and no __file__, like an empty PEP 420 namespace.
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = []
    return importlib.util.module_from_spec(spec)
