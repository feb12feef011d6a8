"""benchmarks/gpu.py and benchmarks/host_overhead.py run end to end (on the CPU, in their quick modes) and
write what BENCHMARKS.md reads: every method's row, ratios against the deterministic step with their per-block
range, the profile."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu, host_overhead  # noqa: E402

METHODS = {"deterministic", "deterministic A/A", "bnn", "bnn + G1", "bnn + P2", "bnn + P2, record=False"}


def _check_rows(rows, networks, extra=()):
    assert {r["network"] for r in rows} == set(networks)
    for net in networks:
        mine = {r["method"]: r for r in rows if r["network"] == net}
        assert set(mine) == METHODS | set(extra)
        assert mine["deterministic"]["ratio"] == 1.0
        for r in mine.values():
            assert r["ratio"] > 0 and r["ratio_min"] <= r["ratio_max"]


def test_gpu_benchmark_quick_on_the_cpu(tmp_path):
    out, prof = tmp_path / "gpu.json", tmp_path / "profile.txt"
    assert (
        gpu.main(["--quick", "--networks", "mlp", "--no-nuts", "--json", str(out), "--profile", str(prof)])
        == 0
    )
    doc = json.loads(out.read_text())
    _check_rows(doc["rows"], ["mlp"])
    assert doc["device"]["device"] == "cpu" and doc["host_syncs"] is None  # counted on CUDA only
    what = [r["what"] for r in doc["predict"]]
    assert len(what) == 4 and all(r["per_s"] > 0 for r in doc["predict"])
    text = prof.read_text()
    assert "=== deterministic" in text and "=== bnn" in text


def test_host_overhead_quick(tmp_path):
    out = tmp_path / "host.json"
    assert host_overhead.main(["--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    _check_rows(rows, list(host_overhead.tiny_networks()), extra=["bnn, tie_weights=True"])
    assert all(r["us"] > 0 for r in rows)


def test_host_overhead_runs_the_per_parameter_rule_as_an_accelerator_does():
    from uncertlr.modulation import GradSigmaRatio
    from uncertlr.torch._fused import FusedRule

    rule = GradSigmaRatio(warmup=0)
    g, sigma = torch.randn(10), torch.rand(10) + 0.1

    def update() -> tuple[torch.Tensor, float | None]:
        f = FusedRule(rule, [4, 6], [rule.init(torch.zeros(n)) for n in (4, 6)])
        return f.update(g, sigma), f.last_total

    on_host, total = update()
    assert total == pytest.approx(10.0)  # the CPU's host path knows the factors' sum
    with host_overhead.accelerator_paths():
        on_device, none = update()
    assert none is None  # the general path, as on a GPU
    torch.testing.assert_close(on_device, on_host, rtol=2e-5, atol=1e-6)
