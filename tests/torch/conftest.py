"""Fixtures shared by the torch tests."""

from __future__ import annotations

import pytest
import torch

from uncertlr.torch import _noise


@pytest.fixture
def two_threads(monkeypatch):
    """The two-generator noise path (two threads) for draws of >= 1,000 elements, whatever the worker's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(_noise, "PARALLEL_MIN_ELEMENTS", 1000)
    yield
    torch.set_num_threads(before)
