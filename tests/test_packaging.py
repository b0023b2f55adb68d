"""The repo's rewards/, rollout/, kernels/ and recipes/ install as rlreason.* — wheel and editable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
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
