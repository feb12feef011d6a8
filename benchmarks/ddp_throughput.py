"""Data-parallel throughput: a BNN + LR modulator under DistributedDataParallel vs one process.

Network: the 784-400-400-10 MLP of ``step_time.py`` made Bayesian with
``uncertlr.torch.bayesian``, Adam, the G1 modulator (signal all-reduced across processes),
synthetic data, global batch ``--batch`` (default 256). Each configuration is launched with
``torchrun`` (gloo on CPU, NCCL on GPU) and times ``--steps`` training steps after a warm-up;
configurations are run in interleaved rounds and the median per configuration is reported.

Configurations (CPU threads per process chosen so each uses the same cores):
  1 proc x T threads     the baseline: one process on all T cores
  1 proc x 1 thread      one process on one core (what each DDP process gets on a CPU)
  N procs x T/N threads  DDP; each process computes the gradient of B/N samples
  ... no modulator       the same DDP run without the modulator (the cost of its signal all-reduce)

Rows: ``name``, ``processes``, ``threads``, ``samples_per_s``, ``ratio`` (to the baseline).
On a 2-core machine do not expect a speed-up: DDP splits the same cores and adds an
all-reduce per step; the benchmark shows what the split costs. On GPUs each process has
its own device.

Usage:
    python benchmarks/ddp_throughput.py            # 2 processes vs 1, 3 rounds
    python benchmarks/ddp_throughput.py --quick
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(out: Path, steps: int, batch: int, modulated: bool = True) -> None:
    import torch
    import torch.nn.functional as F  # noqa: F401 - keeps the import cost out of the timing
    from torch.nn.parallel import DistributedDataParallel as DDP

    from benchmarks.step_time import NUM_DATA, mlp
    from uncertlr import priors
    from uncertlr.modulation import Ratio
    from uncertlr.torch import Modulator, batch_entropy, bayesian
    from uncertlr.torch.distributed import ELBOLoss, init_from_env

    info = init_from_env()
    torch.manual_seed(0)
    bnn = bayesian(mlp(), num_data=NUM_DATA, prior=priors.Normal(1.0), init_scale=1e-3).to(info.device)
    loss = ELBOLoss(bnn)
    if info.world_size > 1:
        loss = DDP(loss, broadcast_buffers=False)
    opt = torch.optim.Adam(bnn.parameters(), lr=1e-3)
    mod = Modulator(Ratio(kappa=-0.5)).attach(opt) if modulated else None
    g = torch.Generator().manual_seed(info.rank)
    local = batch // info.world_size
    x = torch.randn(local, 784, generator=g).to(info.device)
    y = torch.randint(0, 10, (local,), generator=g).to(info.device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        terms = loss(x, y)
        terms.loss.backward()
        if mod is not None:
            mod.observe(batch_entropy(terms.outputs))
        opt.step()

    for _ in range(10):
        step()
    if info.world_size > 1:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if info.device.type == "cuda":
        torch.cuda.synchronize()
    if info.world_size > 1:
        torch.distributed.barrier()
    seconds = time.perf_counter() - t0
    if info.rank == 0:
        out.write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "steps": steps,
                    "batch": batch,
                    "threads": torch.get_num_threads(),
                    "device": str(info.device),
                }
            )
        )
    if info.world_size > 1:
        torch.distributed.destroy_process_group()


def launch(nproc: int, threads: int, steps: int, batch: int, modulated: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        env.pop("WORLD_SIZE", None)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            __file__,
            "--worker",
            str(out),
            str(steps),
            str(batch),
            "1" if modulated else "0",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if res.returncode != 0:
            raise SystemExit(f"torchrun failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    from benchmarks._common import base_parser, print_table, write_results

    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="processes of the DDP run (default 2)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=256, help="global batch size")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 20, 1
    cores = args.threads or os.cpu_count() or 1
    split = max(1, cores // args.nproc)
    configs = [  # (name, processes, threads per process, modulator)
        ("1 process", 1, cores, True),
        ("1 process, 1 thread", 1, 1, True),
        (f"{args.nproc} processes (DDP)", args.nproc, split, True),
        (f"{args.nproc} processes (DDP), no modulator", args.nproc, split, False),
    ]
    samples: dict[str, list[float]] = {c[0]: [] for c in configs}
    for r in range(args.rounds):
        for name, nproc, threads, modulated in configs:
            res = launch(nproc, threads, args.steps, args.batch, modulated)
            samples[name].append(res["steps"] * res["batch"] / res["seconds"])
            print(f"round {r + 1}: {name}: {samples[name][-1]:.0f} samples/s ({res['device']})", flush=True)
    base = statistics.median(samples[configs[0][0]])
    rows = [
        {
            "name": name,
            "processes": nproc,
            "threads": threads,
            "samples_per_s": statistics.median(samples[name]),
            "ratio": statistics.median(samples[name]) / base,
            "rounds": samples[name],
        }
        for name, nproc, threads, _ in configs
    ]
    print_table(
        f"BNN + G1 modulator, 784-400-400-10 MLP, global batch {args.batch}: DDP vs one process",
        rows,
        [
            ("name", "configuration", "s"),
            ("processes", "procs", "d"),
            ("threads", "threads/proc", "d"),
            ("samples_per_s", "samples/s", ".0f"),
            ("ratio", "ratio", ".2f"),
        ],
    )
    write_results(
        "ddp_throughput" + ("-quick" if args.quick else ""),
        rows,
        args.json,
        steps=args.steps,
        batch=args.batch,
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    else:
        sys.exit(main())
