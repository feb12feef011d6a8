"""keep_freed_memory: glibc keeps freed blocks for reuse, so a training-like loop stops page-faulting."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import uncertlr.torch._allocator as allocator
from uncertlr.torch import keep_freed_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Six 2 MiB tensors written and freed together, 30 times: the pattern of a BNN step's parameter-sized
# temporaries. The page faults of the loop are counted after one warm-up round.
_LOOP = """
import resource, sys, torch
from uncertlr.torch import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() is True
def step():
    tensors = [torch.ones(512 * 1024) for _ in range(6)]
    del tensors
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    # a fresh process: the setting is process-wide and must not leak into the test worker
    out = subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    pages = 30 * 6 * 2 * 2**20 // 4096  # 92,160: what re-faulting every tensor of every round would cost
    # glibc's defaults fault part or all of it in again, depending on the heap's layout when the process
    # starts (~3,500 or ~91,000 faults, seen in repeated runs); kept, the rounds reuse the same pages (~500)
    assert kept < pages // 100
    assert kept < default


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="mmap_threshold must be a positive number of bytes"):
        keep_freed_memory(mmap_threshold=0)
    with pytest.raises(ValueError, match="trim_threshold must be a positive number of bytes"):
        keep_freed_memory(trim_threshold=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 33554432 bytes"):
        keep_freed_memory(mmap_threshold=64 * 2**20)
    with pytest.raises(ValueError, match="fit a C int"):
        keep_freed_memory(trim_threshold=2**40)


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert keep_freed_memory() is False
