"""Issue 13: no traceback for a user's mistake — one line and status 2; Ctrl-C 130; locked run folders; plain text."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

import uncertlr.app.train as train_mod
from uncertlr.app.cli import main
from uncertlr.runfolder import lock_run_dir, read_metrics

SMALL = ["--epochs", "2", "--hidden", "8", "--num-samples", "2", "--batch-size", "64"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from uncertlr.app.cli import main; sys.exit(main())", *args]


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", COLUMNS="200")


def _one_line_error(capsys, command: str) -> str:
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1, out.err
    assert lines[0].startswith((f"uncertlr {command}: error: ", "uncertlr: error: "))
    assert "Traceback" not in out.err + out.out
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--out", str(out), *SMALL]) == 0
    (run,) = out.iterdir()
    return run


MISTAKES = [
    (["train", "--batch-size", "0"], "--batch-size: must be an integer >= 1; got '0'"),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every: must be an integer >= 1"),
    (["train", "--hidden", "abc"], "--hidden: must be comma-separated layer widths"),
    (["train", "--hidden=-3"], "--hidden: must be comma-separated layer widths"),
    (["train", "--hidden", "8,0"], "--hidden: must be comma-separated layer widths"),
    (["train", "--seed", "-1"], "--seed: must be an integer in [0, 4294967295]"),
    (["train", "--seed", "4294967296"], "--seed: must be an integer in [0, 4294967295]"),
    (["train", "--epochs", "-1"], "--epochs: must be an integer >= 1"),
    (["train", "--epochs", "2.5"], "--epochs: must be an integer >= 1"),
    (["train", "--num-samples", "0"], "--num-samples: must be an integer >= 1"),
    (["train", "--max-consecutive-skips", "0"], "--max-consecutive-skips: must be an integer >= 1"),
    (["train", "--lr", "nan"], "--lr: must be a finite number > 0"),
    (["train", "--lr", "-0.1"], "--lr: must be a finite number > 0"),
    (["train", "--kl-weight", "inf"], "--kl-weight: must be a finite number > 0"),
    (["train", "--data", "mnist"], "--data: invalid choice"),
    (["train", "--modulator", "g3"], "--modulator: invalid choice"),
    (["train", "--resume", "/nonexistent/run"], "--resume: '/nonexistent/run' does not exist"),
    (["demo", "--num-samples", "0"], "--num-samples: must be an integer >= 1"),
    (["demo", "--epochs", "0"], "--epochs: must be an integer >= 1"),
    (["demo", "--seed", "-1"], "--seed: must be an integer in"),
    (["report", "/nonexistent/run"], "'/nonexistent/run' does not exist"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv, message", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_every_mistake_is_one_line_and_status_2_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "runs"
    argv = [*argv[:1], "--out", str(out), *argv[1:]] if argv[0] in ("train", "demo") else argv
    assert main(argv) == 2
    line = _one_line_error(capsys, argv[0])
    assert message in line
    assert not out.exists()  # refused before anything was created


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for command in ("train", "demo"):
        assert main([command, "--out", str(a_file)]) == 2
        assert "is a file, not a folder" in _one_line_error(capsys, command)
        assert main([command, "--out", str(a_file / "below")]) == 2
        assert f"{a_file} is a file, not a folder" in _one_line_error(capsys, command)
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot be tested as root
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["train", "--out", str(ro / "runs")]) == 2
        assert "permission denied" in _one_line_error(capsys, "train")


def _resumable(tmp_path, finished_run):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "config.json"):
        (run / name).write_bytes((finished_run / name).read_bytes())
    return run


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("checkpoint.pt", b"PK\x03\x04 truncated", "cannot resume .* is not a readable checkpoint"),
        ("checkpoint.pt", b"", "cannot resume"),
        ("config.json", b"{not json", "cannot resume .*config.json is damaged"),
        ("config.json", b"[" * 50_000 + b"]" * 50_000, "cannot resume .*config.json is damaged"),
        (
            "config.json",
            json.dumps({"num_samples": 0}).encode(),
            "config.json is damaged: num_samples must be",
        ),
        (
            "config.json",
            json.dumps({"hidden": "8"}).encode(),
            "config.json is damaged: hidden must be a list",
        ),
        (
            "config.json",
            json.dumps({"epochs": 1e9}).encode(),
            "config.json is damaged: epochs must be an integer",
        ),
        ("config.json", json.dumps({"wat": 1}).encode(), "unknown training settings \\['wat'\\]"),
        ("config.json", json.dumps([1]).encode(), "config.json is damaged: must hold an object"),
    ],
)
def test_a_damaged_run_folder_on_resume_is_one_line(tmp_path, capsys, finished_run, name, content, message):
    run = _resumable(tmp_path, finished_run)
    (run / name).write_bytes(content)
    before = {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith(".")}
    assert main(["train", "--resume", str(run)]) == 2
    import re

    assert re.search(message, _one_line_error(capsys, "train"))
    assert {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith(".")} == before


def test_a_checkpoint_that_does_not_fit_the_saved_config_is_one_line(tmp_path, capsys, finished_run):
    run = _resumable(tmp_path, finished_run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "hidden": [16]}))
    assert main(["train", "--resume", str(run)]) == 2
    assert "does not fit this model" in _one_line_error(capsys, "train")


def test_a_run_folder_in_use_is_refused(tmp_path, capsys, finished_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from uncertlr.runfolder import lock_run_dir\n"
            "with lock_run_dir(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith(".")}
        for command in ("train", "report"):
            argv = ["train", "--resume", str(run)] if command == "train" else ["report", str(run)]
            assert main(argv) == 2
            assert f"in use by another uncertlr process (pid {holder.pid})" in _one_line_error(
                capsys, command
            )
        assert {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith(".")} == before
    finally:
        holder.kill()  # kill -9: the operating system releases the lock
        holder.wait()
    with lock_run_dir(run):  # free again
        pass


def test_resume_keeps_the_cumulative_wall_time(tmp_path, monkeypatch):
    """Part one stops (SIGTERM) after 100 fake seconds; the resumed part takes 50: the run took 150."""
    clock = [0.0]
    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    real_fit = train_mod.fit
    plan: dict[int, float] = {}

    def fit(*args, on_step, **kwargs):
        def step(state):
            if state.step in plan:
                clock[0] = plan.pop(state.step)
                if not plan and kwargs["start_step"] == 0:
                    signal.raise_signal(
                        signal.SIGTERM
                    )  # the run's handler turns it into a checkpoint and a stop
            return on_step(state)

        return real_fit(*args, on_step=step, **kwargs)

    monkeypatch.setattr(train_mod, "fit", fit)
    plan.update({5: 100.0})
    assert main(["train", "--out", str(tmp_path), *SMALL]) == 128 + signal.SIGTERM
    (run,) = tmp_path.iterdir()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["extra"]["seconds"] == 100.0
    clock[0] = 1000.0
    plan.update({44: 1050.0})  # the resumed part ends 50 s after it began
    assert main(["train", "--resume", str(run)]) == 0
    assert read_metrics(run)["models"]["bnn"]["seconds"] == 150.0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["extra"]["seconds"] == 150.0


def test_resume_may_change_what_does_not_change_the_trajectory(tmp_path, capsys, finished_run):
    run = _resumable(tmp_path, finished_run)
    assert main(["train", "--resume", str(run), "--num-samples", "3", "--lr", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "ignoring lr" in out
    assert read_metrics(run)["config"]["num_samples"] == 3 and read_metrics(run)["config"]["lr"] != 0.5


def test_ctrl_c_in_demo_is_one_line_status_130_and_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    import uncertlr.app.demo as demo_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_mod, "compare", interrupted)
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1"]) == 130
    assert "uncertlr demo: error: interrupted (Ctrl-C)" in _one_line_error(capsys, "demo")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_before_the_first_checkpoint_leaves_no_folder(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "setup", interrupted)
    assert main(["train", "--out", str(tmp_path), *SMALL]) == 130
    assert "interrupted (Ctrl-C)" in _one_line_error(capsys, "train")
    assert list(tmp_path.iterdir()) == []


class _CtrlCInSetName:
    def __set_name__(self, owner, name):
        raise KeyboardInterrupt


def test_ctrl_c_that_python_wrapped_in_another_error_is_still_an_interruption(tmp_path, capsys, monkeypatch):
    # Ctrl-C while a lazy import defines a class (torch._dynamo's, under the first optimizer) reaches us as
    # "RuntimeError: Error calling __set_name__ ..." caused by the KeyboardInterrupt
    import uncertlr.app.demo as demo_mod

    def ctrl_c_in_a_class_body(*a, **k):
        type("Lazy", (), {"msg": _CtrlCInSetName()})

    monkeypatch.setattr(demo_mod, "compare", ctrl_c_in_a_class_body)
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1"]) == 130
    assert "uncertlr demo: error: interrupted (Ctrl-C)" in _one_line_error(capsys, "demo")
    assert list(tmp_path.iterdir()) == []

    def a_real_bug(*a, **k):
        raise RuntimeError("not an interruption")

    monkeypatch.setattr(demo_mod, "compare", a_real_bug)
    with pytest.raises(RuntimeError, match="not an interruption"):
        main(["demo", "--out", str(tmp_path), "--epochs", "1"])


def test_brackets_in_paths_are_printed_as_text_not_markup(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal's width: keep the path on one line
    out = tmp_path / "runs-[exp1]" / "a[/]b"  # "[/]" used to crash rich, "[exp1]" to vanish
    assert main(["train", "--out", str(out), *SMALL]) == 0
    (run,) = out.iterdir()
    printed = capsys.readouterr()
    flat = printed.out.replace("\n", "")
    # the last line, and the "training started" line
    assert f"run folder: {run}" in flat and f"run folder {run}" in flat
    assert "Traceback" not in printed.err


def test_real_subprocesses_exit_2_with_one_line(tmp_path):
    for argv, message in (
        (["train", "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
        (["train", "--resume", str(tmp_path)], "has no checkpoint.pt or config.json"),
        (["demo", "--out", "/proc/uncertlr-cannot-be-here"], "uncertlr demo: error:"),
    ):
        res = subprocess.run(_cli(*argv), capture_output=True, text=True, env=_env(), timeout=300)
        assert res.returncode == 2, (argv, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr + res.stdout


def test_ctrl_c_in_a_real_demo_is_one_line(tmp_path):
    proc = subprocess.Popen(
        _cli("demo", "--out", str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # as from a terminal: a shell's background job (e.g. `bash .ci/run &`) starts with SIGINT ignored,
        # and Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stdout:  # wait until it trains
        if "uncertlr demo" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        # CPython drops a KeyboardInterrupt raised inside a weakref callback (an import lock's, while
        # the demo still imports a module lazily): it prints "Exception ignored in: ..." and the run
        # goes on. A user presses Ctrl-C again; so does the test
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    err = re.sub(r"Exception ignored in: .*?\nKeyboardInterrupt[^\n]*\n", "", err, flags=re.S)
    assert (
        err.strip().splitlines()[-1] == "uncertlr demo: error: interrupted (Ctrl-C)"
        and "Traceback" not in err
    ), err[-2000:]


def test_version_answers_without_importing_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from uncertlr.app.cli import main; rc = main(['--version']); "
        "print(rc, 'torch' in sys.modules, 'jax' in sys.modules, time.perf_counter() - t)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    lines = res.stdout.split("\n")
    assert lines[0].startswith("uncertlr ")
    rc, torch_loaded, jax_loaded, _ = lines[1].split()
    assert (rc, torch_loaded, jax_loaded) == ("0", "False", "False")


def test_the_missing_extra_hint_keeps_its_brackets(tmp_path, finished_run):
    code = (
        "import sys; sys.modules['arviz'] = None\n"  # as if the report extra were not installed
        "from uncertlr.app.cli import main; sys.exit(main(['report', sys.argv[1]]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(finished_run)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert res.returncode == 2 and "uncertlr[report]" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_demo_lists_only_the_files_it_wrote(tmp_path, monkeypatch):
    from rich.console import Console

    import uncertlr.app.pipeline as pipeline
    from uncertlr.app.demo import DemoConfig, run_demo

    monkeypatch.setattr(pipeline.Comparison, "inference", lambda self, **k: {})  # as without ArviZ
    console = Console(record=True, width=400)
    run = run_demo(tmp_path / "[runs]", DemoConfig(epochs=1, det_epochs=1, num_samples=2), console=console)
    text = console.export_text()
    assert not (run / "report.html").exists() and "report.html" not in text
    assert (
        f"run folder: {run} (history.json, metrics.json, predictions.npz, reliability.png, uncertainty.png)"
        in text
    )
