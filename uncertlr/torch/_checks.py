"""Value checks of a BNN's inputs and outputs without host reads where a host read costs.

A host read (``bool(t)``, ``int(t)``, ``t.item()``) is free in eager mode on the CPU, so there
:class:`~uncertlr.torch.BNN` checks values on the host on every call and raises a ``ValueError``
that names the problem (with the offending values where it helps). Elsewhere a host read costs:
under ``torch.compile`` it breaks the graph, and on an accelerator it synchronises the device
every step. There the first eager call still checks on the host, and every later call (and every
compiled call) checks with device-side asserts (``torch._assert_async``): the same conditions, a
``RuntimeError`` carrying the same message — on a GPU at the next synchronisation. Shape and dtype
checks never read values, so they run on every call everywhere.

Example:
    >>> import torch
    >>> host_reads(torch.zeros(2), checked_before=True)  # eager, on the CPU
    True
    >>> assert_labels(torch.tensor([0, 3]), 3)
    Traceback (most recent call last):
    ...
    RuntimeError: labels must lie in [0, 3)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["assert_finite", "assert_labels", "host_reads"]


def host_reads(ref: Tensor, *, checked_before: bool) -> bool:
    """Whether value checks may read ``ref``'s device back to the host now.

    True in eager mode on the CPU, and on any device for the first call (``checked_before`` False);
    False while ``torch.compile`` traces.
    """
    if torch.compiler.is_compiling():
        return False
    return not checked_before or ref.device.type == "cpu"


def assert_finite(x: Tensor, message: str) -> None:
    """Device-side assert that ``x`` holds no NaN or inf."""
    torch._assert_async(torch.isfinite(x).all(), message)


def assert_labels(y: Tensor, num_classes: int) -> None:
    """Device-side assert that every class label lies in ``[0, num_classes)``."""
    torch._assert_async(((y >= 0) & (y < num_classes)).all(), f"labels must lie in [0, {num_classes})")
