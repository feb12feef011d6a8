"""Shared benchmark machinery: same-process interleaved timing, result tables, JSON output.

Timings on a shared machine drift by tens of percent over a minute, so every
benchmark measures ratios against a baseline run *in the same process*, in
interleaved blocks (baseline, A, B, baseline, A, B, ...), and reports the median
of the per-block times. Absolute milliseconds are printed for context only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def base_parser(description: str, *, timing: bool = False) -> argparse.ArgumentParser:
    """The options every benchmark shares; ``timing=True`` (the scripts that call :func:`setup_clock`) adds
    ``--keep-freed-memory``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (smoke test / CI)")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the JSON rows (default benchmarks/results/NAME.json)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the calling thread's CPU clock instead of the wall clock (implies --threads 1): "
        "on a loaded machine it counts the work, not the waiting for a core",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="shared data folder (default $UNCERTLR_DATA or ../shared/data)",
    )
    if timing:
        p.add_argument(
            "--keep-freed-memory",
            action="store_true",
            help="call uncertlr.torch.keep_freed_memory() first (glibc keeps freed blocks for reuse), as the "
            "uncertlr command line does; every row of the run then has it",
        )
    return p


def interleaved_medians(
    fns: Mapping[str, Callable[[], Any]],
    *,
    blocks: int,
    steps: int,
    warmup: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per call of each function, from ``blocks`` interleaved blocks of ``steps`` calls.

    ``clock``: ``time.perf_counter`` (wall) or ``time.thread_time`` (CPU time of the calling
    thread; only meaningful when torch runs on that one thread, see ``--cpu-time``).
    """
    per = interleaved_blocks(fns, blocks=blocks, steps=steps, warmup=warmup, clock=clock)
    return {k: statistics.median(v) for k, v in per.items()}


def interleaved_blocks(
    fns: Mapping[str, Callable[[], Any]],
    *,
    blocks: int,
    steps: int,
    warmup: int = 10,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function in each of ``blocks`` interleaved blocks (see :func:`interleaved_medians`).

    ``sync``: called before each block starts and before it is timed to have ended (an accelerator's
    ``torch.cuda.synchronize``: its work is asynchronous).
    """
    done = sync or (lambda: None)
    for f in fns.values():
        for _ in range(warmup):
            f()
    done()
    per: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for b in range(blocks):
        # block b starts at the b-th function: each one runs in every position of the order equally
        # often, so none is always timed right after the same neighbour (whose memory traffic, or a
        # clock that drifts within a block, would then bias one ratio)
        for k in names[b % len(names) :] + names[: b % len(names)]:
            f = fns[k]
            done()
            t0 = clock()
            for _ in range(steps):
                f()
            done()
            per[k].append((clock() - t0) / steps)
    return per


_ALLOCATOR: dict[str, bool] = {"keep_freed_memory": False}


def setup_clock(args: argparse.Namespace) -> Callable[[], float]:
    """Apply ``--keep-freed-memory``, ``--threads`` and ``--cpu-time``; returns the clock ``interleaved_medians`` should use."""
    import torch

    if getattr(args, "keep_freed_memory", False):
        from uncertlr.torch import keep_freed_memory

        _ALLOCATOR["keep_freed_memory"] = keep_freed_memory()
    if args.cpu_time:
        torch.set_num_threads(1)
        return time.thread_time
    if args.threads:
        torch.set_num_threads(args.threads)
    return time.perf_counter


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],  # others' work on a shared machine
        "keep_freed_memory": _ALLOCATOR[
            "keep_freed_memory"
        ],  # glibc keeping freed blocks (--keep-freed-memory)
    }
    try:
        import torch

        info.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        )
        from uncertlr.torch import _native, _noise

        # the per-parameter rules' compiled CPU kernels: loaded, or why not (UNCERTLR_NATIVE=0 turns them off)
        info["native_kernels"] = _native.status()
        # whether the mean-field noise comes from the compiled (vectorised) Philox sampler
        info["compiled_noise_sampler"] = _noise._compiled_sampler() is not None
    except ImportError:  # pragma: no cover
        pass
    return info


def print_table(
    title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]
) -> None:
    """Print ``rows`` as a rich table; ``columns`` are (key, header, format)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header, justify="right" if _ != "s" else "left")
    for r in rows:
        table.add_row(*("-" if r.get(k) is None else format(r[k], fmt) for k, _, fmt in columns))
    Console(width=max(100, Console().width)).print(table)


def write_results(
    name: str, rows: Sequence[Mapping[str, Any]], path: Path | None = None, **extra: Any
) -> Path:
    """Write ``{"benchmark", "created", "machine", "rows", ...extra}`` as JSON; returns the path."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
        **extra,
        "rows": list(rows),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path
