"""`uncertlr train`: run folder, SIGINT/SIGTERM checkpoint-and-exit, bit-identical --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from uncertlr.app.cli import main
from uncertlr.runfolder import read_history, read_metrics

ARGS = [  # 8 epochs of 85 steps (~2-6 ms each): the signal, 0.3 s after "training started", lands mid-run
    "--epochs",
    "8",
    "--hidden",
    "16",
    "--batch-size",
    "16",
    "--num-samples",
    "4",
    "--checkpoint-every",
    "1000000",
]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from uncertlr.app.cli import main; sys.exit(main())", *args]


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", COLUMNS="120")


def _final_state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def _in_process(*args: str) -> None:
    """``uncertlr train ...`` in this process, on one thread as the subprocesses (``_env``) run: the
    reference and the resumed runs need no process of their own (only the interrupted run must be one,
    to be sent a real signal), which saves a Python + torch start-up per run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *args]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted reference run for each ``--modulator`` (trained once, on first use)."""
    runs = {}

    def get(modulator):
        if modulator not in runs:
            out = tmp_path_factory.mktemp(f"ref-{modulator}")
            _in_process("--out", str(out), *ARGS, "--modulator", modulator)
            (runs[modulator],) = out.iterdir()
        return runs[modulator]

    return get


# the modulator's rule state (running means, per-weight states) is part of the checkpoint too
@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, modulator", [(signal.SIGTERM, "none"), (signal.SIGINT, "g1"), (signal.SIGTERM, "p2")]
)
def test_signal_writes_checkpoint_and_resume_is_bit_identical(tmp_path, uninterrupted, sig, modulator):
    name = "bnn" if modulator == "none" else f"bnn+{modulator}"
    uninterrupted = uninterrupted(modulator)
    proc = subprocess.Popen(
        _cli("train", "--out", str(tmp_path), *ARGS, "--modulator", modulator),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    for line in proc.stdout:  # wait until the loop is running
        if "training started" in line:
            break
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err and "uncertlr train --resume" in out.replace("\n", "")
    (run,) = tmp_path.iterdir()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    total = read_metrics(uninterrupted)["config"]["epochs"] * 85
    assert 0 < ckpt["step"] < total
    assert not (run / "metrics.json").exists()  # results are written only by a finished run

    _in_process("--resume", str(run))  # a fresh process is not needed: everything comes from the checkpoint
    a, b = _final_state(run), _final_state(uninterrupted)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the RNG stream continues exactly too, so even the sampled predictions agree (wall time aside)
    got, ref = (read_metrics(r)["models"][name] for r in (run, uninterrupted))
    assert {k: v for k, v in got.items() if k != "seconds"} == {
        k: v for k, v in ref.items() if k != "seconds"
    }
    if modulator != "none":  # the modulator's record continues across the resume
        hist = read_history(run)[name]
        assert hist == read_history(uninterrupted)[name]
        assert all("scale" in h for h in hist)
        # the rule acted: a global factor changes over the steps; per-parameter factors (renormalised to
        # mean 1) differ between weights
        per_param = "scale_min" in hist[-1]
        assert (
            any(h["scale_min"] < h["scale_max"] for h in hist)
            if per_param
            else len({h["scale"] for h in hist}) > 1
        )


def test_train_in_process_and_bad_resume(tmp_path):
    assert (
        main(["train", "--out", str(tmp_path), "--epochs", "2", "--hidden", "8", "--num-samples", "2"]) == 0
    )
    (run,) = tmp_path.iterdir()
    m = read_metrics(run)
    assert m["models"]["bnn"]["skipped_steps"] == 0 and m["task"] == "digits"
    assert {
        "checkpoint.pt",
        "config.json",
        "history.json",
        "predictions.npz",
        "reliability.png",
        "report.html",
        "summary.json",
        "posterior-bnn.nc",
    } <= {p.name for p in run.iterdir()}  # what `uncertlr report` needs, and the report itself
    # a missing run folder is one line and status 2, no traceback (more in tests/app/test_cli.py)
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
