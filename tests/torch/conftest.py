"""Fixtures shared by the torch tests."""

from __future__ import annotations

import pytest
import torch

from uncertlr.torch import _native, _noise


@pytest.fixture(params=["two-generators", "compiled"])
def two_threads(request, monkeypatch):
    """Two threads, and draws of >= 1,000 elements from one of the two fast noise paths (the parameter):
    ATen's sampler with two generators, or the compiled Philox sampler (float32; skipped where it is not)."""
    if request.param == "compiled":
        if _noise._compiled_sampler() is None:
            pytest.skip(f"no vectorised compiled sampler here ({_native.status()})")
        monkeypatch.setattr(_noise, "NATIVE_MIN_ELEMENTS", 1000)
    else:
        monkeypatch.setattr(_noise, "NATIVE_MIN_ELEMENTS", 2**62)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(_noise, "PARALLEL_MIN_ELEMENTS", 1000)
    yield request.param
    torch.set_num_threads(before)
