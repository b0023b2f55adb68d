#!/usr/bin/env bash
# Refresh constraints-cpu.txt, the locked CPU dependency set that the README's install and CI use.
#
#   bash scripts/refresh_lock.sh                     # resolve, run the default suite, write the lock
#   bash scripts/refresh_lock.sh -m "not slow and not e2e"   # other pytest arguments (a quicker check)
#
# 1. A scratch venv resolves the newest versions that pyproject.toml's ranges allow (torch stays at the
#    locked CPU build: TORCH=2.14.1 bash scripts/refresh_lock.sh moves it).
# 2. The test suite runs in that venv from the repository root, as a user runs it.
# 3. Only if it passes, the venv's exact versions replace constraints-cpu.txt; review `git diff` and commit.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=constraints-cpu.txt
torch_version=${TORCH:-$(sed -n 's/^torch==//p' "$lock")}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

python3 -m venv "$scratch/venv"
# shellcheck disable=SC1091
. "$scratch/venv/bin/activate"
echo "torch==$torch_version" > "$scratch/torch.txt"
pip install -q -c "$scratch/torch.txt" -e ".[dev,bench]"  # bench: TRL, for scripts/bench_step.py

if [ $# -eq 0 ]; then set -- -m "not gpu"; fi
RLREASON_LOCK_CHECK=0 python -m pytest "$@"

{
  echo "# The tested CPU dependency set: every package that \`pip install -c $lock -e \".[dev,bench]\"\` installs,"
  echo "# at the version the test suite passed with ($(python -V), $(uname -sm), $(date -u +%Y-%m-%d))."
  echo "# Written by scripts/refresh_lock.sh; do not edit by hand. torch's pin has no local label (+cpu), so"
  echo "# the CPU wheel and a plain one both match it."
  pip freeze --all --exclude-editable | grep -v '^pip==' | sed 's/^torch==\([^+]*\)+.*/torch==\1/' | LC_ALL=C sort -f
} > "$scratch/lock"
mv "$scratch/lock" "$lock"
echo "wrote $lock ($(grep -vc '^#' "$lock") packages); review it with git diff"
