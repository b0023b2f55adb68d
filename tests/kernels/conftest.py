"""Fixtures for the log-prob kernels: every test runs on the chunked path and on the Triton kernels.

The tests use CPU tensors, so the Triton kernels run under Triton's interpreter. Triton reads
TRITON_INTERPRET both when a kernel is decorated (import) and when it launches, so the variable
is set for the duration of each Triton test (and restored after it).
"""

import importlib
import sys

import pytest


@pytest.fixture
def triton_rows(monkeypatch):
    """``rlreason.kernels.triton_rows`` with its kernels interpreted; skips when Triton is absent."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")
    name = "rlreason.kernels.triton_rows"
    module = sys.modules.get(name)
    if module is None:
        return importlib.import_module(name)
    return module if module.INTERPRETED else importlib.reload(module)


@pytest.fixture(params=["chunked", "triton"])
def impl(request):
    """A non-naive implementation name ('triton' runs interpreted)."""
    if request.param == "triton":
        request.getfixturevalue("triton_rows")
    return request.param
