"""JAX training-step time of uncertlr's SVI relative to a deterministic Flax + optax step, in one process.

Network: 784-400-400-10 ReLU MLP (Flax linen), batch 128, synthetic data, N(0, 1) priors,
initial posterior std 1e-3, Adam (1e-3) everywhere, ``num_data`` 60,000. Ratios are median
step time / median deterministic step time over interleaved blocks (every block runs every
method once), so the machine's drift cancels.

Rows:
  deterministic           Flax MLP + optax.adam, one jitted step per call (the baseline)
  uncertlr svi()          ``svi(bnn, x, y, state=...)``: the compiled while-loop over device-resident batches,
                          ``--svi-steps`` steps per call, the call's own overhead (data checks) included;
                          ``, 2 steps per epoch``: on the first 256 rows only (epochs shorter than a chunk)
  uncertlr svi_step       the public ``svi_step(bnn, adam).update`` called once per step (like the rows below);
                          antithetic noise (the default); ``, independent noise``: ``antithetic=False``
  uncertlr in NumPyro SVI ``numpyro.infer.SVI(bnn.model, bnn.guide, adam, TraceMeanField_ELBO())``, jitted update
  hand-written NumPyro    numpyro.sample priors + AutoNormal + TraceMeanField_ELBO, jitted update
  pure-JAX mean-field     hand-written loc/softplus-scale step, analytic KL, jitted
  ... + G1                the modulator's global rule on the step's predictive entropy (ratio to the row without)
  ... + P2                the per-parameter rule with the guide's sigma (ratio to the row without)
  torch deterministic / torch uncertlr   the same MLP in PyTorch (``uncertlr.torch.bayesian``), for reference

``compile_s``: seconds from nothing to the first step's result (tracing, compiling, the first
step); for ``svi()`` also the compiles of a second call with other step counts (``recompiles``).

Usage:
    python benchmarks/jax_step.py            # full run (~5 minutes on 2 cores)
    python benchmarks/jax_step.py --quick    # smoke run (< 3 minutes)
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks._common import base_parser, print_table, write_results  # noqa: E402

DIMS = (784, 400, 400, 10)
BATCH = 128
NUM_DATA = 60_000
LR = 1e-3
INIT_SCALE = 1e-3

Step = Callable[[], Any]


def _net() -> Any:
    from uncertlr_models.flax_mlp import FlaxMLP

    return FlaxMLP(hidden=DIMS[1:-1], out_features=DIMS[-1])


def deterministic(data: dict[str, Any]) -> Step:
    net, xb, yb = _net(), data["xb"], data["yb"]
    tx = optax.adam(LR)
    params = net.init(jax.random.key(0), xb)
    state = [params, tx.init(params)]

    @jax.jit
    def step(p: Any, s: Any) -> Any:
        loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(net.apply(q, xb), yb).mean()  # noqa: E731
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    def run() -> None:
        state[:] = step(*state)
        jax.block_until_ready(state[0])

    return run


def _bnn(data: dict[str, Any], antithetic: bool = True, num_data: int = NUM_DATA) -> Any:
    from uncertlr import priors
    from uncertlr.jax import bayesian

    net = _net()
    variables = net.init(jax.random.key(0), data["xb"])
    return bayesian(
        net,
        params=variables,
        num_data=num_data,
        prior=priors.Normal(1.0),
        init_scale=INIT_SCALE,
        antithetic=antithetic,
    )


def _modulated(rule: str) -> optax.GradientTransformation:
    from uncertlr.jax import scale_by_grad_uncertainty, scale_by_uncertainty
    from uncertlr.modulation import GradSigmaRatio, Ratio

    mod = (
        scale_by_uncertainty(Ratio(kappa=-0.5))
        if rule == "g1"
        else scale_by_grad_uncertainty(GradSigmaRatio())
    )
    return optax.chain(optax.scale_by_adam(), mod, optax.scale_by_learning_rate(LR))


def _rule_kwargs(rule: str | None) -> dict[str, Any]:
    from uncertlr.jax import posterior_scale_args

    if rule is None:
        return {"optimizer": optax.adam(LR)}
    if rule == "g1":
        return {"optimizer": _modulated("g1"), "signal": "entropy"}
    return {"optimizer": _modulated("p2"), "extra_args": posterior_scale_args}


def uncertlr_svi(data: dict[str, Any], rule: str | None = None, rows: int | None = None) -> Step:
    from uncertlr.jax import svi

    x, y, steps = data["x"][:rows], data["y"][:rows], data["svi_steps"]
    bnn, kw = _bnn(data, num_data=len(x)), _rule_kwargs(rule)
    fit = svi(bnn, x, y, num_steps=1, batch_size=BATCH, progress=False, **kw)
    state = [fit.state]

    def run() -> None:
        state[0] = svi(
            bnn, x, y, num_steps=steps, batch_size=BATCH, state=state[0], progress=False, **kw
        ).state
        jax.block_until_ready(state[0].params)

    run.units = steps  # type: ignore[attr-defined]
    run.bnn, run.kw, run.data = bnn, kw, (x, y)  # type: ignore[attr-defined]
    return run


def uncertlr_step(data: dict[str, Any], rule: str | None = None, antithetic: bool = True) -> Step:
    from uncertlr.jax import svi_step

    step = svi_step(_bnn(data, antithetic), **_rule_kwargs(rule))
    xb, yb = data["xb"], data["yb"]
    state = [step.init(0)]

    def run() -> None:
        state[0], info = step.update(state[0], xb, yb)
        jax.block_until_ready(info.loss)

    return run


def _numpyro_run(model: Any, guide: Any, tx: Any, data: dict[str, Any]) -> Step:
    from numpyro.infer import SVI, TraceMeanField_ELBO

    xb, yb = data["xb"], data["yb"]
    svi = SVI(model, guide, tx, TraceMeanField_ELBO())
    state = [svi.init(jax.random.key(0), xb, yb)]
    update = jax.jit(svi.update)

    def run() -> None:
        state[0], loss = update(state[0], xb, yb)
        jax.block_until_ready(loss)

    return run


def uncertlr_in_numpyro(data: dict[str, Any]) -> Step:
    bnn = _bnn(data)
    return _numpyro_run(bnn.model, bnn.guide, optax.adam(LR), data)


def uncertlr_in_numpyro_g1(data: dict[str, Any]) -> Step:
    """The modulator inside NumPyro's SVI, fed the loss (the signal NumPyro's step has)."""
    from uncertlr.jax import for_numpyro

    bnn = _bnn(data)
    tx = for_numpyro(_modulated("g1"), extra_args=lambda params, loss: {"uncertainty": loss})
    return _numpyro_run(bnn.model, bnn.guide, tx, data)


def handwritten_numpyro(data: dict[str, Any]) -> Step:
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer.autoguide import AutoNormal

    net = _net()
    shapes = jax.tree.map(jnp.shape, net.init(jax.random.key(0), data["xb"])["params"])

    def model(x: Any, y: Any = None) -> None:
        params = {
            layer: {
                k: numpyro.sample(f"{layer}.{k}", dist.Normal(0.0, 1.0).expand(s).to_event(len(s)))
                for k, s in ps.items()
            }
            for layer, ps in shapes.items()
        }
        logits = net.apply({"params": params}, x)
        with numpyro.plate("data", NUM_DATA, subsample_size=x.shape[0]):
            numpyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    return _numpyro_run(model, AutoNormal(model, init_scale=INIT_SCALE), optax.adam(LR), data)


def pure_jax_meanfield(data: dict[str, Any]) -> Step:
    net, xb, yb = _net(), data["xb"], data["yb"]
    loc = net.init(jax.random.key(0), xb)["params"]
    rho = jax.tree.map(lambda v: jnp.full_like(v, math.log(math.expm1(INIT_SCALE))), loc)
    leaves, treedef = jax.tree.flatten(loc)
    tx = optax.adam(LR)

    def loss(p: Any, key: Any) -> Any:
        mu, r = p
        sigma = jax.tree.map(jax.nn.softplus, r)
        eps = treedef.unflatten(
            [jax.random.normal(k, v.shape) for k, v in zip(jax.random.split(key, len(leaves)), leaves)]
        )
        w = jax.tree.map(lambda m, s, e: m + s * e, mu, sigma, eps)
        nll = optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": w}, xb), yb).mean()
        kl = sum(
            jnp.sum(-jnp.log(s) + 0.5 * (s * s + m * m) - 0.5)
            for m, s in zip(jax.tree.leaves(mu), jax.tree.leaves(sigma))
        )
        return nll + kl / NUM_DATA

    @jax.jit
    def step(p: Any, s: Any, key: Any) -> Any:
        key, k = jax.random.split(key)
        u, s = tx.update(jax.grad(loss)(p, k), s, p)
        return optax.apply_updates(p, u), s, key

    state = [(loc, rho), tx.init((loc, rho)), jax.random.key(1)]

    def run() -> None:
        state[:] = step(*state)
        jax.block_until_ready(state[0])

    return run


def _torch_mlp() -> Any:
    from torch import nn

    layers: list[Any] = []
    for a, b in zip(DIMS[:-1], DIMS[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def torch_deterministic(data: dict[str, Any]) -> Step:
    import torch
    import torch.nn.functional as F

    net, (x, y) = _torch_mlp(), data["torch"]
    opt = torch.optim.Adam(net.parameters(), lr=LR)

    def run() -> None:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return run


def torch_uncertlr(data: dict[str, Any]) -> Step:
    import torch

    from uncertlr import priors
    from uncertlr.torch import bayesian

    bnn = bayesian(_torch_mlp(), num_data=NUM_DATA, prior=priors.Normal(1.0), init_scale=INIT_SCALE)
    opt = torch.optim.Adam(bnn.parameters(), lr=LR)
    x, y = data["torch"]

    def run() -> None:
        opt.zero_grad()
        bnn.loss(x, y).backward()
        opt.step()

    return run


BUILDERS: dict[str, tuple[Callable[..., Step], dict[str, Any], str | None]] = {
    # name: (builder, kwargs, the row its ratio is also given against)
    "deterministic": (deterministic, {}, None),
    "uncertlr svi()": (uncertlr_svi, {}, None),
    "uncertlr svi(), 2 steps per epoch": (uncertlr_svi, {"rows": 2 * BATCH}, "uncertlr svi()"),
    "uncertlr svi_step": (uncertlr_step, {}, None),
    "uncertlr svi_step, independent noise": (uncertlr_step, {"antithetic": False}, "uncertlr svi_step"),
    "uncertlr in NumPyro SVI": (uncertlr_in_numpyro, {}, None),
    "hand-written NumPyro": (handwritten_numpyro, {}, None),
    "pure-JAX mean-field": (pure_jax_meanfield, {}, None),
    "uncertlr svi() + G1": (uncertlr_svi, {"rule": "g1"}, "uncertlr svi()"),
    "uncertlr svi() + P2": (uncertlr_svi, {"rule": "p2"}, "uncertlr svi()"),
    "uncertlr svi_step + G1": (uncertlr_step, {"rule": "g1"}, "uncertlr svi_step"),
    "uncertlr in NumPyro SVI + G1": (uncertlr_in_numpyro_g1, {}, "uncertlr in NumPyro SVI"),
    "torch deterministic": (torch_deterministic, {}, None),
    "torch uncertlr": (torch_uncertlr, {}, "torch deterministic"),
}


def _count_compiles() -> list[str]:
    seen: list[str] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: seen.append(name) if name.endswith("backend_compile_duration") else None
    )
    return seen


def measure(fns: dict[str, Step], *, blocks: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per step of each function, one median per repeat over ``blocks`` interleaved blocks."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        per: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(blocks):
            for k, f in fns.items():
                units = getattr(f, "units", 1)
                calls = max(1, STEPS // units)
                t0 = time.perf_counter()
                for _ in range(calls):
                    f()
                per[k].append((time.perf_counter() - t0) / (calls * units))
        for k, v in per.items():
            out[k].append(statistics.median(v))
    return out


STEPS = 60


def main(argv: list[str] | None = None) -> int:
    global STEPS
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None, help="independent measurements (default 3, quick 1)")
    p.add_argument(
        "--blocks", type=int, default=None, help="interleaved blocks per repeat (default 7, quick 3)"
    )
    p.add_argument("--svi-steps", type=int, default=None, help="steps per svi() call (default 240, quick 60)")
    p.add_argument(
        "--only", nargs="*", default=None, help="methods to run (default: all; the baseline always)"
    )
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    blocks = args.blocks or (3 if args.quick else 7)
    STEPS = 20 if args.quick else 60
    svi_steps = args.svi_steps or (60 if args.quick else 240)
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(NUM_DATA, DIMS[0])).astype(np.float32))
    y = jnp.asarray(rng.integers(0, DIMS[-1], NUM_DATA).astype(np.int32))
    data = {
        "x": x,
        "y": y,
        "xb": x[:BATCH],
        "yb": y[:BATCH],
        "svi_steps": svi_steps,
        "torch": (torch.randn(BATCH, DIMS[0]), torch.randint(0, DIMS[-1], (BATCH,))),
    }
    names = [n for n in BUILDERS if args.only is None or n == "deterministic" or n in args.only]
    compiles = _count_compiles()
    fns, compile_s, notes = {}, {}, {}
    for name in names:
        builder, kwargs, _ = BUILDERS[name]
        t0 = time.perf_counter()
        fn = builder(data, **kwargs)
        if getattr(fn, "units", 1) == 1:
            fn()  # the first step (compiles)
        compile_s[name] = time.perf_counter() - t0
        if hasattr(fn, "bnn"):  # svi(): a second call with other step counts must compile nothing
            del compiles[:]
            from uncertlr.jax import svi

            svi(fn.bnn, *fn.data, num_steps=3, batch_size=BATCH, progress=False, **fn.kw)
            notes[name] = len(compiles)
        fns[name] = fn
        print(f"{name}: ready in {compile_s[name]:.1f} s", flush=True)
    overhead = None
    if "uncertlr svi()" in fns:  # what one svi() call costs besides its steps (data checks, placement)
        t0 = time.perf_counter()
        for _ in range(3):
            from uncertlr.jax import svi

            svi(
                fns["uncertlr svi()"].bnn,
                x,
                y,
                num_steps=0,
                batch_size=BATCH,
                progress=False,
                optimizer=fns["uncertlr svi()"].kw["optimizer"],
            )
        overhead = (time.perf_counter() - t0) / 3
    for f in fns.values():  # warm-up
        f()
    times = measure(fns, blocks=blocks, repeats=repeats)
    base = times["deterministic"]
    rows = []
    for name in names:
        ratios = [t / b for t, b in zip(times[name], base)]
        ref = BUILDERS[name][2]
        row = {
            "method": name,
            "ms_per_step": 1e3 * statistics.median(times[name]),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "compile_s": compile_s[name],
        }
        if ref is not None and ref in times:
            rel = [t / r for t, r in zip(times[name], times[ref])]
            row.update(relative_to=ref, ratio_to_ref=statistics.median(rel))
        if name in notes:
            row["recompiles_on_second_call"] = notes[name]
        rows.append(row)
    print_table(
        f"JAX step time, {DIMS} MLP, batch {BATCH}: ratio to the deterministic step (median of {repeats} x {blocks} blocks)",
        rows,
        [
            ("method", "method", "s"),
            ("ms_per_step", "ms/step", ".2f"),
            ("ratio", "ratio", ".2f"),
            ("ratio_min", "min", ".2f"),
            ("ratio_max", "max", ".2f"),
            ("ratio_to_ref", "vs its base", ".3f"),
            ("compile_s", "first step s", ".1f"),
            ("recompiles_on_second_call", "recompiles", "d"),
        ],
    )
    if overhead is not None:
        print(f"one svi() call besides its steps (data checks, placement): {1e3 * overhead:.0f} ms")
    write_results(
        "jax_step",
        rows,
        args.json,
        quick=args.quick,
        jax=jax.__version__,
        devices=[str(d) for d in jax.devices()],
        svi_steps_per_call=svi_steps,
        svi_call_overhead_s=overhead,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
