"""Data parallelism through torchrun (gloo): replicas stay identical and match one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("_ddp_worker.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One torchrun launch (two processes) and one single-process run, each training both modes."""
    out = tmp_path_factory.mktemp("ddp")
    args = [str(WORKER), str(out), "12", "plain,g1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=180, env=_env())
    if res.returncode != 0 and "terminate called without an active exception" in res.stderr:
        # a worker aborted in C++ ("terminate called without an active exception") with no Python error:
        # seen once in a contended suite, not reproduced in 12 launches alone or under load; launch again once
        res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=180, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    subprocess.run([sys.executable, *args], check=True, timeout=120, env=_env())
    return out


def test_two_process_ddp_matches_single_process_on_the_combined_batch(runs):
    r0, r1, single = (torch.load(runs / f, weights_only=True) for f in ("rank0.pt", "rank1.pt", "single.pt"))
    assert len(r0["params"]) == len(single["params"]) > 0
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)  # every replica applied exactly the same updates
    for a, b in zip(r0["params"], single["params"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # = one process on the combined batch
    assert any(not torch.equal(a, b) for a, b in zip(r0["params"], r0["init"]))  # training did move them
    assert (
        len(r0["losses"]) == len(r1["losses"]) == len(single["losses"]) == 12
    )  # each rank logs its own half-batch loss


def test_ddp_modulator_all_reduces_its_signal_so_replicas_take_the_same_step(runs):
    """Each process sees only its shard, so its local entropy differs; the modulator averages it
    over processes before the rule sees it, so every replica applies the same factor — and the
    run equals one process on the combined batch (whose entropy is the mean of the equal shards')."""
    r0, r1, single = (
        torch.load(runs / f"g1-{f}", weights_only=True) for f in ("rank0.pt", "rank1.pt", "single.pt")
    )
    assert len(r0["signals"]) == len(single["signals"]) == 12
    # the shards really disagree, so without the all-reduce the replicas would diverge
    assert not torch.allclose(r0["local_signals"], r1["local_signals"])
    # what the rule saw: the mean of the local signals, identical on both ranks
    assert torch.equal(r0["signals"], r1["signals"]) and torch.equal(r0["scales"], r1["scales"])
    torch.testing.assert_close(r0["signals"], (r0["local_signals"] + r1["local_signals"]) / 2)
    torch.testing.assert_close(r0["signals"], single["signals"], rtol=1e-4, atol=1e-6)
    assert (r0["scales"] != 1).any()  # the modulator did scale the steps
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    for a, b in zip(r0["params"], single["params"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
