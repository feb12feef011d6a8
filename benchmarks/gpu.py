"""Step time of deterministic vs Bayesian training on an accelerator (or the CPU), predict throughput, NUTS.

Runs unchanged on CUDA and on the CPU and records the device. For each network, in one
process and interleaved blocks (ratios = median step time / median deterministic step time):

  deterministic   the plain network, Adam, cross-entropy (the baseline)
  deterministic A/A  a second deterministic network: the noise floor of every ratio
  bnn             uncertlr.torch.bayesian(net) + Adam over bnn.parameters(), bnn.elbo(x, y).loss
  bnn + G1        + Modulator(Ratio()) on the batch entropy of the ELBO's own outputs
  bnn + P2        + Modulator(GradSigmaRatio(), sigma=bnn)
  bnn + P2, record=False  the same without the per-step history record (no host read)
  bnn compiled    torch.compile(bnn.loss) (with --compile; the cold compile time is printed)

Networks (synthetic data; the step time does not depend on the values):

  mlp          784-400-400-10 ReLU MLP, batch 128 (the CPU worst case of BENCHMARKS.md)
  resnet18     uncertlr_models.ResNet18 (torchvision's layout, CIFAR stem, batch norm), 32x32 RGB, batch 128
  transformer  uncertlr_models.TransformerClassifier, 4 blocks of width 256, 4 heads, 128 tokens, batch 64

Predict throughput: inputs x posterior samples per second of ``bnn.predict(x, num_samples=32)``, of
the same with the CPU's memory budgets, and of 32 one-draw forward passes; for reference, inputs
per second of the deterministic network's forward pass in eval mode (with the peak memory on CUDA).
NUTS: uncertlr.jax.mcmc on a 64-16-10 tanh BNN of 1,000 digits (2 chains x (200 + 200)) on
JAX's default device (a GPU when jax has CUDA; the row says which).

Each row also gives the range of the per-block ratios (a block's time over the same block's
deterministic time). ``--sync-check`` (CUDA) counts the host synchronisations per step of each
method and names the lines that cause them; ``--profile FILE`` writes the profiler's heaviest
operators of the deterministic and BNN steps. On CUDA every timed block ends with
``torch.cuda.synchronize()``. ``--quick`` shrinks every
network, batch and count so the whole script runs in about a minute on 2 CPU cores (the numbers
are then a smoke test, not a measurement).

Usage:
    python benchmarks/gpu.py                 # on the GPU machine (cuda if available)
    python benchmarks/gpu.py --compile       # also the torch.compile row (minutes of cold compile)
    python benchmarks/gpu.py --quick         # CPU smoke run
    python benchmarks/gpu.py --sync-check --profile benchmarks/results/gpu_profile.txt
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX must leave GPU memory to torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import (  # noqa: E402
    base_parser,
    interleaved_blocks,
    machine,
    print_table,
    write_results,
)
from uncertlr import priors  # noqa: E402
from uncertlr.modulation import GradSigmaRatio, Ratio  # noqa: E402
from uncertlr.torch import Modulator, batch_entropy, bayesian  # noqa: E402
from uncertlr_models import ResNet18, TransformerClassifier  # noqa: E402

GPU_TARGET_RESNET = 1.3  # the goal for a BNN ResNet-18 step on a GPU


def networks(quick: bool) -> dict[str, tuple[Callable[[], nn.Module], Callable[[torch.device], tuple]]]:
    """name -> (network factory, data factory(device) -> (x, y))."""
    if quick:
        dims, batch, img, width, d_model, seq, blocks, tb = (64, 32, 10), 16, 16, 8, 32, 16, 1, 8
    else:
        dims, batch, img, width, d_model, seq, blocks, tb = (784, 400, 400, 10), 128, 32, 64, 256, 128, 4, 64
    vocab = 1000

    def mlp() -> nn.Module:
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    def labels(n: int, dev: torch.device) -> torch.Tensor:
        return torch.randint(0, 10, (n,), device=dev)

    return {
        "mlp": (mlp, lambda dev: (torch.randn(batch, dims[0], device=dev), labels(batch, dev))),
        "resnet18": (
            lambda: ResNet18(10, width=width),
            lambda dev: (torch.randn(batch, 3, img, img, device=dev), labels(batch, dev)),
        ),
        "transformer": (
            lambda: TransformerClassifier(vocab, 10, d_model=d_model, heads=4, layers=blocks, max_len=seq),
            lambda dev: (torch.randint(0, vocab, (tb, seq), device=dev), labels(tb, dev)),
        ),
    }


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed_blocks(
    fns: dict[str, Callable[[], object]], dev: torch.device, blocks: int, steps: int
) -> dict[str, list[float]]:
    """Seconds per call in each of ``blocks`` interleaved blocks; each block ends with a device synchronisation."""
    return interleaved_blocks(fns, blocks=blocks, steps=steps, warmup=3, sync=lambda: _sync(dev))


def timed_medians(fns: dict[str, Callable[[], object]], dev: torch.device, blocks: int, steps: int) -> dict:
    """Median seconds per call over interleaved blocks (:func:`timed_blocks`)."""
    return {k: statistics.median(v) for k, v in timed_blocks(fns, dev, blocks, steps).items()}


def ratio_rows(name: str, per: dict[str, list[float]], notes: dict[str, str]) -> list[dict]:
    """One row per step function: median ms, the ratio of medians to ``deterministic`` and the
    range of the per-block ratios (each block's time over the same block's deterministic time)."""
    base = per["deterministic"]
    med = statistics.median(base)
    rows = []
    for k, v in per.items():
        block_ratios = [a / b for a, b in zip(v, base)]
        rows.append(
            {
                "network": name,
                "method": k,
                "ms": 1e3 * statistics.median(v),
                "ratio": statistics.median(v) / med,
                "ratio_min": min(block_ratios),
                "ratio_max": max(block_ratios),
                "note": notes.get(k, ""),
            }
        )
    return rows


def host_syncs(fns: dict[str, Callable[[], object]], steps: int = 3) -> dict[str, dict]:
    """CUDA host synchronisations per step of each step function, and where they happen.

    Counted with ``torch.cuda.set_sync_debug_mode("warn")`` after one unwatched step (checks
    that run on the first call only are not counted). A step with no host read lets the CPU
    queue the next step's kernels while the GPU still runs this one's.
    """
    out: dict[str, dict] = {}
    for k, f in fns.items():
        f()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    f()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        hits = [w for w in caught if "synchroniz" in str(w.message).lower()]
        where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in hits})
        out[k] = {"per_step": len(hits) / steps, "where": where}
    return out


def profile_steps(fns: dict[str, Callable[[], object]], dev: torch.device, steps: int = 5) -> str:
    """The profiler's table of the heaviest operators of ``steps`` calls of each step function."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    parts = []
    for k, f in fns.items():
        f()
        _sync(dev)
        with profile(activities=acts) as prof:
            for _ in range(steps):
                f()
            _sync(dev)
        avg = prof.key_averages()
        key = "device_time_total" if dev.type == "cuda" else "cpu_time_total"
        try:
            table = avg.table(sort_by=key, row_limit=18)
        except (AttributeError, KeyError, ValueError):  # older torch: cuda_time_total
            table = avg.table(sort_by="cuda_time_total" if dev.type == "cuda" else key, row_limit=18)
        parts.append(f"=== {k} ({steps} steps) ===\n{table}")
    return "\n\n".join(parts)


def step_fns(make: Callable[[], nn.Module], x, y, dev: torch.device, compile_: bool) -> tuple[dict, dict]:
    """The training steps of one network and the notes (cold compile time)."""
    torch.manual_seed(0)
    fns: dict[str, Callable[[], object]] = {}
    notes: dict[str, str] = {}
    net = make().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def det() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    fns["deterministic"] = det
    net2 = make().to(dev)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)

    def det_again() -> None:  # a second deterministic net: the noise floor of the ratios
        opt2.zero_grad(set_to_none=True)
        F.cross_entropy(net2(x), y).backward()
        opt2.step()

    fns["deterministic A/A"] = det_again

    def bnn_step(rule=None, compiled=False, record=True) -> Callable[[], None]:
        torch.manual_seed(0)
        bnn = bayesian(make(), num_data=50_000, prior=priors.Normal(1.0), init_scale=1e-3).to(dev)
        bopt = torch.optim.Adam(bnn.parameters(), lr=1e-3)
        mod = None
        if rule is not None:
            per_param = bool(getattr(rule, "per_parameter", False))
            mod = Modulator(rule, sigma=bnn if per_param else None, record=record).attach(bopt)
        elbo = torch.compile(bnn.elbo) if compiled else bnn.elbo

        def step() -> None:
            bopt.zero_grad(set_to_none=True)
            terms = elbo(x, y)
            terms.loss.backward()
            if mod is not None and not mod.per_parameter:
                mod.observe(batch_entropy(terms.outputs))
            bopt.step()

        return step

    fns["bnn"] = bnn_step()
    fns["bnn + G1"] = bnn_step(Ratio())
    fns["bnn + P2"] = bnn_step(GradSigmaRatio())
    fns["bnn + P2, record=False"] = bnn_step(GradSigmaRatio(), record=False)
    if compile_:
        step = bnn_step(compiled=True)
        t0 = time.perf_counter()
        step()
        _sync(dev)
        notes["bnn compiled"] = f"cold compile {time.perf_counter() - t0:.0f} s"
        fns["bnn compiled"] = step
    return fns, notes


def predict_rows(name, make, x, dev, blocks: int, samples: int) -> list[dict]:
    """Inputs (× draws) per second, and the peak memory on CUDA, of four ways to predict.

    ``bnn.predict`` (its default budgets: on CUDA a fraction of free memory), the same with the CPU
    budgets (256 MiB of activations, 2**25 weights per vectorised pass), ``S`` plain forward passes
    of one draw each (no vmap), and the deterministic network's forward pass.
    """
    from uncertlr.torch._predict import chunked_outputs

    torch.manual_seed(0)
    net = make().to(dev).eval()
    bnn = bayesian(make(), num_data=50_000, init_scale=1e-3).to(dev).eval()
    post = bnn.posterior

    def det_forward() -> None:
        with torch.no_grad():
            net(x)

    def bnn_predict() -> None:
        bnn.predict(x, num_samples=samples)

    def cpu_budgets() -> None:
        chunked_outputs(bnn, x, samples, weight_elements=2**25, scale_to_device=False)

    def loop() -> None:
        with torch.no_grad():
            for _ in range(samples):
                torch.softmax(bnn._call(post.unflatten(post.draw(bnn._noise(None))), x), -1)

    fns = {"det": det_forward, "bnn": bnn_predict, "cpu": cpu_budgets, "loop": loop}
    peak: dict[str, float | None] = {}
    for k, f in fns.items():
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            f()
            torch.cuda.synchronize(dev)
            peak[k] = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        else:
            peak[k] = None
    t = timed_medians(fns, dev, blocks, 3)
    n = x.shape[0]
    what = {
        "det": ("deterministic forward", n, "inputs/s"),
        "bnn": (f"bnn.predict (S={samples})", n * samples, "input-samples/s"),
        "cpu": ("  the same, CPU budgets", n * samples, "input-samples/s"),
        "loop": (f"  {samples} forward passes, no vmap", n * samples, "input-samples/s"),
    }
    return [
        {"network": name, "what": w, "per_s": count / t[k], "unit": unit, "peak_mib": peak[k]}
        for k, (w, count, unit) in what.items()
    ]


def nuts_row(quick: bool) -> dict:
    """NUTS with uncertlr.jax on JAX's default device; skipped (with the reason) if JAX is missing."""
    try:
        import jax
        import jax.numpy as jnp
        import numpy as np
        from sklearn.datasets import load_digits

        from uncertlr.jax import bayesian as jbayesian
        from uncertlr.jax import mcmc
        from uncertlr_models.flax_mlp import FlaxMLP
    except ImportError as e:  # pragma: no cover - optional
        return {"what": "NUTS", "note": f"skipped: {e}"}
    try:
        return _nuts(jax, jnp, np, load_digits, jbayesian, mcmc, FlaxMLP, quick)
    except Exception as e:  # a JAX/NumPyro version it was not written for: say so, keep the rows
        return {"what": "NUTS", "note": f"failed: {type(e).__name__}: {e}"}


def _nuts(jax, jnp, np, load_digits, jbayesian, mcmc, FlaxMLP, quick: bool) -> dict:  # noqa: N803
    x, y = load_digits(return_X_y=True)
    x, y = jnp.asarray((x[:1000] / 16.0).astype(np.float32)), jnp.asarray(y[:1000].astype(np.int32))
    net = FlaxMLP(hidden=(16,), out_features=10, activation="tanh")
    bnn = jbayesian(
        net, params=net.init(jax.random.key(1), x[:1]), num_data=x.shape[0], prior=priors.Normal(1.0)
    )
    n = 50 if quick else 200
    res = mcmc(bnn, x, y, num_warmup=n, num_samples=n, num_chains=2, rng_key=0, progress=False)
    return {
        "what": f"NUTS 64-16-10 BNN, 1,000 digits, 2 chains x ({n} + {n})",
        "device": str(jax.devices()[0]),
        "seconds": res.seconds,
        "draws_per_s": 2 * n / res.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--compile", action="store_true", help="add the torch.compile(bnn.elbo) row")
    p.add_argument("--networks", nargs="+", default=None, help="subset of: mlp resnet18 transformer")
    p.add_argument("--no-nuts", action="store_true", help="skip the NUTS row")
    p.add_argument("--no-predict", action="store_true", help="skip the predict throughput rows")
    p.add_argument(
        "--sync-check",
        action="store_true",
        help="on CUDA, count the host synchronisations per step of each method (and where they happen)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write the profiler's heaviest operators of the deterministic and BNN steps to this file",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    blocks, steps = (3, 3) if args.quick else (7, 20)
    samples = 4 if args.quick else 32
    nets = networks(args.quick)
    chosen = args.networks or list(nets)
    rows, predict, notes_all, syncs, profiles = [], [], {}, {}, []
    for name in chosen:
        make, data = nets[name]
        x, y = data(dev)
        print(f"{name}: timing training steps on {dev} ...", flush=True)
        fns, notes = step_fns(make, x, y, dev, args.compile)
        rows += ratio_rows(name, timed_blocks(fns, dev, blocks, steps), notes)
        if args.sync_check and dev.type == "cuda":
            syncs[name] = host_syncs(fns)
        if args.profile is not None:
            profiles.append(
                f"##### {name}\n" + profile_steps({k: fns[k] for k in ("deterministic", "bnn")}, dev)
            )
        notes_all.update({f"{name}/{k}": v for k, v in notes.items()})
        if not args.no_predict:
            predict += predict_rows(name, make, x, dev, blocks, samples)
        del fns
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    info = machine()
    info["device"] = str(dev)
    if dev.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(dev)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(dev)))
        info["cuda"] = torch.version.cuda
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    title = f"training step on {info.get('device_name', dev)} ({blocks} interleaved blocks x {steps} steps)"
    print_table(
        title,
        rows,
        [
            ("network", "network", "s"),
            ("method", "method", "s"),
            ("ms", "ms/step", ".2f"),
            ("ratio", "ratio", ".2f"),
            ("ratio_min", "min", ".2f"),
            ("ratio_max", "max", ".2f"),
        ]
        + [("note", "note", "s")],
    )
    if syncs:
        sync_rows = [
            {"network": n, "method": k, "per_step": v["per_step"], "where": ", ".join(v["where"][:4])}
            for n, d in syncs.items()
            for k, v in d.items()
        ]
        print_table(
            "host synchronisations per step (torch.cuda.set_sync_debug_mode)",
            sync_rows,
            [
                ("network", "network", "s"),
                ("method", "method", "s"),
                ("per_step", "per step", ".1f"),
                ("where", "where", "s"),
            ],
        )
    if args.profile is not None:
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        args.profile.write_text("\n\n".join(profiles) + "\n")
        print(f"wrote {args.profile}")
    if predict:
        print_table(
            "predict throughput",
            predict,
            [
                ("network", "network", "s"),
                ("what", "what", "s"),
                ("per_s", "per second", ",.0f"),
                ("unit", "unit", "s"),
                ("peak_mib", "peak MiB", ",.0f"),
            ],
        )
    nuts = None if args.no_nuts else nuts_row(args.quick)
    if nuts is not None:
        print("NUTS:", nuts)
    resnet = next((r for r in rows if r["network"] == "resnet18" and r["method"] == "bnn"), None)
    if resnet is not None:
        print(
            f"BNN ResNet-18 step / deterministic = {resnet['ratio']:.2f} (goal on a GPU <= {GPU_TARGET_RESNET})"
        )
    write_results(
        "gpu_quick" if args.quick else "gpu",
        rows,
        args.json,
        device=info,
        predict=predict,
        nuts=nuts,
        blocks=blocks,
        steps=steps,
        notes=notes_all,
        host_syncs=syncs or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
