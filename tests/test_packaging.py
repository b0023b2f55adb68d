"""The repo's rewards/, rollout/, kernels/ and recipes/ install as rlreason.* — wheel and editable."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared():
    cfg = pyproject()["tool"]["setuptools"]
    return cfg["packages"], cfg["package-dir"]


def test_every_package_directory_is_declared():
    packages, dirs = declared()
    found = set()
    for name, rel in dirs.items():
        for init in (ROOT / rel).rglob("__init__.py"):
            sub = init.parent.relative_to(ROOT / rel).parts
            found.add(".".join((name, *sub)))
    assert found == set(packages), "add new sub-packages to [tool.setuptools] packages"
    assert not any(p in ("kernels", "rewards", "rollout") for p in packages)


# Run with the repository root first on sys.path, as `python -c` / `python -m pytest` from the root put it,
# and as Ray puts the driver's working directory on its workers' path.
SHADOW_CHECK = """
import importlib, sys
import transformers.activations  # transformers >= 5.24 imports Hugging Face's `kernels` here
from transformers import LlamaConfig, LlamaForCausalLM
import rlreason.kernels.logprobs, rlreason.rollout.native, rlreason.rewards
from rlreason.tasks.arithmetic import build_model

def ours(root):
    found = {}
    for name in ("kernels", "rewards", "rollout", "recipes"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        places = [getattr(module, "__file__", None) or "", *getattr(module, "__path__", [])]
        ours = root + "/" + name  # our folder of that name (a venv inside the checkout is not ours)
        found[name] = [p for p in places if p == ours or p.startswith(ours + "/")]
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=2))
    return found, type(model).__name__, rlreason.rollout.native.__name__, len(rlreason.rewards.REWARDS.names())
"""


def test_repo_root_first_on_sys_path_shadows_nothing():
    code = SHADOW_CHECK + f"\nsys.path.insert(0, {str(ROOT)!r})\nprint(ours({str(ROOT)!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    found, model, native, rewards = eval(out.stdout.strip().splitlines()[-1])
    assert found == {n: [] for n in found}, f"our folders answered a bare import: {found}"
    assert model == "LlamaForCausalLM" and native == "rlreason.rollout.native" and rewards > 5


@pytest.mark.slow
def test_a_ray_worker_started_from_the_repo_root_shadows_nothing():
    code = SHADOW_CHECK + f"""
import ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
# Ray puts the driver's working directory (here the repository root) on the worker's path.
result = ray.get(ray.remote(lambda: ({str(ROOT)!r} in sys.path, ours({str(ROOT)!r}))).remote())
ray.shutdown()
print(result)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    root_on_path, (found, model, native, rewards) = eval(out.stdout.strip().splitlines()[-1])
    assert root_on_path, "the worker should see the driver's working directory, as a user's run does"
    assert found == {n: [] for n in found}, f"our folders answered a bare import in a Ray worker: {found}"
    assert model == "LlamaForCausalLM" and native == "rlreason.rollout.native" and rewards > 5


def test_this_environment_imports_the_mapped_packages():
    import rlreason.kernels
    import rlreason.rewards
    import rlreason.rollout

    assert Path(rlreason.rewards.__file__).parent.name == "rewards"
    assert Path(rlreason.rollout.__file__).parent.name == "rollout"
    assert Path(rlreason.kernels.__file__).parent.name == "kernels"


@pytest.mark.slow
def test_wheel_install_imports_and_finds_recipes(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("rlreason-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    code = ("import rlreason, rlreason.rewards, rlreason.rollout.native, rlreason.kernels.logprobs;"
            "from rlreason.config import list_recipes;"
            "print(rlreason.__file__); print(rlreason.rewards.__file__); print(sorted(list_recipes()))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0].startswith(str(site)) and out[1].startswith(str(site))
    assert "quickstart" in out[2]
    assert not (site / "rewards").exists() and not (site / "kernels").exists()


def _locked() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints-cpu.txt: '{line}' is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def _closure(root: str, extras: set[str]) -> dict[str, Optional[str]]:
    """Distributions that `root[extras]` needs, transitively, with their installed versions (None for one
    not installed here: CI installs `.[dev]`, not `.[bench]`; its own requirements are then not followed)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            key = canonicalize_name(req.name)
            if key not in found:
                try:
                    found[key] = metadata.version(req.name)
                except metadata.PackageNotFoundError:
                    found[key] = None
                    continue
                todo.append((req.name, set(req.extras)))
    return found


def test_the_lock_pins_every_dependency_at_the_installed_version():
    # bench too: its README command installs TRL under the same lock, and bench_step ran with that TRL
    locked, needed = _locked(), _closure("rlreason", {"dev", "bench"})
    missing = sorted(set(needed) - set(locked))
    assert not missing, f"constraints-cpu.txt lacks {missing}: run scripts/refresh_lock.sh"
    if os.environ.get("RLREASON_LOCK_CHECK") == "0":  # scripts/refresh_lock.sh tests newer versions
        return
    from packaging.version import Version

    drift = {n: (v, locked[n]) for n, v in needed.items()
             if v is not None and Version(v).public != Version(locked[n]).public}
    assert not drift, f"installed (left) differs from constraints-cpu.txt (right): {drift}; install with " \
                      "`pip install -c constraints-cpu.txt -e \".[dev]\"` or refresh the lock"


def test_the_build_is_bounded_and_uses_nothing_deprecated(tmp_path):
    """pip builds rlreason in an isolated env the lock does not reach: pyproject bounds the backend
    above, the locked setuptools lies inside that bound, and building with it warns of nothing that a
    later release will remove (a deprecated pyproject field turns into a failed install)."""
    from packaging.requirements import Requirement

    requires = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    for req in requires:
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{req} has no upper bound"
        assert req.specifier.contains(_locked()[req.name]), f"the locked {req.name} is outside {req}"
    code = ("import sys, setuptools.build_meta as backend\n"
            "print(backend.prepare_metadata_for_build_wheel(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    metadata = (tmp_path / out.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
