"""Peak memory of ``bnn.predict`` on the FSDD speech CNN: chunked over inputs and draws vs all inputs at once.

Each configuration runs in a fresh subprocess, which reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), so configurations cannot inflate each other.
The network is ``uncertlr_models.SpeechCNN(40, 10)`` made Bayesian (26,506 random weights);
inputs are random log-mel features of the FSDD shape ``[N, 40 bands, 64 frames]``.

Modes:

* ``baseline`` — import torch and uncertlr, build the BNN and the inputs, allocate and touch
  an output of ``[S, N, 10]`` floats: the floor any prediction starts from;
* ``chunked`` — ``bnn.predict(x, num_samples=S)`` as shipped (draws and inputs in chunks,
  to a 256 MiB activation budget);
* ``all-rows`` — ``bnn.predict(x, num_samples=S, max_batch=N)``: every input in one pass,
  which is what ``predict`` did before issue 13 (the draws were chunked, the inputs not).

Run: ``python benchmarks/predict_memory.py`` (the default ladder; ~45 min on 2 busy cores) or
``python benchmarks/predict_memory.py --config chunked:10000:256`` for the issue's full goal
(2.56 M network evaluations: hours on 2 CPU cores, minutes on a workstation). With
``--time-limit SECONDS`` a configuration stops after that long and reports the peak of the
chunks it computed (all chunks have the same size) plus the output it had not yet written.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import base_parser, machine, print_table, write_results

#: (mode, inputs N, samples S): all-rows runs grow with N; chunked runs must not.
LADDER = (
    ("baseline", 10_000, 256),
    ("all-rows", 25, 32),
    ("all-rows", 50, 32),
    ("all-rows", 100, 32),
    ("chunked", 100, 32),
    ("chunked", 10_000, 8),
    ("chunked", 100, 256),
    ("chunked", 400, 256),
)
GOAL_MB = 2048


def _partial_report(info: dict[str, Any], t0: float, calls: list[int], plan_chunks: int) -> None:
    """After ``--time-limit``: print what a run of the first chunks measured, and end the process."""
    done = max(0, calls[0] - 1)  # the first call is the activation probe
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    untouched = info["output_mb"] * (1 - done / plan_chunks)  # output pages not yet written
    info.update(
        partial=True,
        completed_chunks=done,
        total_chunks=plan_chunks,
        seconds=time.perf_counter() - t0,
        peak_rss_mb=peak,
        projected_peak_mb=peak + untouched,
    )
    print(json.dumps(info), flush=True)
    os._exit(0)


def child(
    mode: str, rows: int, samples: int, threads: int | None, time_limit: float | None = None
) -> dict[str, Any]:
    """One configuration, in this process: returns its peak RSS and time.

    With ``time_limit`` a timer ends the run after that many seconds and reports the peak of
    the chunks computed so far (every chunk has the same size, so the working set has
    plateaued) plus the output pages not yet written: ``projected_peak_mb``.
    """
    import torch

    from uncertlr import _spec
    from uncertlr.torch import bayesian
    from uncertlr.torch._predict import activation_bytes_per_row
    from uncertlr.torch.bnn import PREDICT_CHUNK_ELEMENTS
    from uncertlr_models import SpeechCNN

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    bnn = bayesian(SpeechCNN(40, 10), num_data=2250)
    x = torch.randn(rows, 40, 64)
    t0 = time.perf_counter()
    if time_limit:
        post = bnn.posterior
        with torch.no_grad():
            row_bytes = activation_bytes_per_row(
                bnn.net, lambda xb: bnn._call(post.unflatten(post.loc), xb), x
            )
        plan = _spec.chunk_plan(
            num_samples=samples,
            num_rows=rows,
            num_params=post.num_params,
            row_bytes=row_bytes,
            weight_elements=PREDICT_CHUNK_ELEMENTS,
            max_batch=rows if mode == "all-rows" else None,
        )
        chunks = -(-samples // plan.draws) * -(-rows // plan.rows)
        calls = [0]
        real_call = bnn._call

        def counted(w: Any, xb: Any) -> Any:
            calls[0] += 1
            return real_call(w, xb)

        bnn._call = counted
        info = {"mode": mode, "rows": rows, "samples": samples, "output_mb": samples * rows * 10 * 4 / 2**20}
        info.update(chunk_draws=plan.draws, chunk_rows=plan.rows, row_bytes=row_bytes)
        timer = threading.Timer(time_limit, _partial_report, (info, t0, calls, chunks))
        timer.daemon = True
        timer.start()
        t0 = time.perf_counter()
    if mode == "baseline":
        out = torch.ones(samples, rows, 10)
        checksum = float(out.sum())
    else:
        probs = bnn.predict(x, num_samples=samples, max_batch=rows if mode == "all-rows" else None)
        assert probs.shape == (samples, rows, 10)
        checksum = float(probs.sum())  # = S * N: every draw and input was computed
        assert abs(checksum - samples * rows) < 1e-2 * samples * rows
    seconds = time.perf_counter() - t0
    return {
        "mode": mode,
        "rows": rows,
        "samples": samples,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
        "output_mb": samples * rows * 10 * 4 / 2**20,
        "input_mb": x.numel() * 4 / 2**20,
        "random_weights": bnn.posterior.num_params,
        "checksum": checksum,
    }


def run(
    mode: str, rows: int, samples: int, threads: int | None, time_limit: float | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", f"{mode}:{rows}:{samples}"]
    if threads:
        cmd += ["--threads", str(threads)]
    if time_limit:
        cmd += ["--time-limit", str(time_limit)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"mode": mode, "rows": rows, "samples": samples, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--config", action="append", default=None, help="MODE:N:S (repeatable); default: the ladder"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop each configuration after this many seconds and report the peak of the chunks done "
        "(plus the output not yet written) as projected_peak_mb",
    )
    args = p.parse_args()
    if args.child:
        mode, rows, samples = args.child.split(":")
        print(json.dumps(child(mode, int(rows), int(samples), args.threads, args.time_limit)))
        return
    configs = (
        [(m, int(n), int(s)) for m, n, s in (c.split(":") for c in args.config)] if args.config else LADDER
    )
    if args.quick:
        configs = [("baseline", 100, 8), ("all-rows", 10, 4), ("chunked", 10, 4)]
    rows = []
    for mode, n, s in configs:
        r = run(mode, n, s, args.threads, args.time_limit)
        r["under_goal"] = r.get("peak_rss_mb", float("inf")) < GOAL_MB
        rows.append(r)
        print(json.dumps(r), flush=True)
    print_table(
        "bnn.predict on the FSDD CNN: peak RSS per configuration (fresh subprocess each)",
        rows,
        [
            ("mode", "mode", "s"),
            ("rows", "inputs N", "d"),
            ("samples", "samples S", "d"),
            ("output_mb", "output MB", ".1f"),
            ("peak_rss_mb", "peak RSS MB", ".0f"),
            ("projected_peak_mb", "projected MB", ".0f"),
            ("completed_chunks", "chunks done", "d"),
            ("total_chunks", "chunks", "d"),
            ("seconds", "seconds", ".1f"),
        ],
    )
    write_results("predict_memory", rows, args.json, goal_mb=GOAL_MB, machine=machine())


if __name__ == "__main__":
    main()
