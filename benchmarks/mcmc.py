"""NUTS on a BNN: uncertlr's path vs a hand-written NumPyro model of the same network, in one process.

Network: 64-16-10 tanh MLP (Flax linen, ``uncertlr_models.flax_mlp.FlaxMLP``) with N(0, 1)
priors on every weight, trained on the first 1,000 sklearn digits (pixels / 16) and
tested on the remaining 797. Each run: 2 chains x (300 warm-up + 300 samples), NUTS with
NumPyro's defaults, both starting from NumPyro's default ``init_to_uniform`` and the same
PRNG key. Runs alternate (hand-written, uncertlr, hand-written, ...) and every quantity is
the median over repeats.

Columns:
  seconds               wall time of MCMC.run (compilation included, as a user pays it)
  ess_per_s             median effective sample size over all weights / seconds
  ess_ll_per_s          median ESS of the pointwise test log-likelihood / seconds
  max_rhat_predictive   max split R-hat of the pointwise test log-likelihood (target <= 1.01)
  rhat_weights          median split R-hat over weights (inflated by permutation symmetry)
  accuracy              test accuracy of the posterior-predictive mean
  us_per_grad           one gradient of the potential energy (what every leapfrog step costs), median
                        of interleaved blocks: the model's overhead, free of the run-to-run randomness
                        of trajectory lengths that dominates ESS/s
Target: uncertlr ess_per_s / hand-written ess_per_s >= 0.95.

Usage:
    python benchmarks/mcmc.py             # full run (3 repeats, ~2-3 minutes on 2 cores)
    python benchmarks/mcmc.py --quick     # smoke run (1 repeat, 2 x (100 + 100))
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402

from benchmarks._common import base_parser, interleaved_medians, print_table, write_results  # noqa: E402
from uncertlr import priors  # noqa: E402
from uncertlr.jax import bayesian, mcmc  # noqa: E402
from uncertlr_models.flax_mlp import FlaxMLP  # noqa: E402

TARGET = 0.95
HIDDEN = 16


def load() -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    return jnp.asarray(x[:1000]), jnp.asarray(y[:1000]), jnp.asarray(x[1000:]), jnp.asarray(y[1000:])


def handwritten_model(x: jax.Array, y: jax.Array | None = None) -> None:
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([64, HIDDEN]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
    w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0).expand([HIDDEN, 10]).to_event(2))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
    logits = jnp.tanh(x @ w1 + b1) @ w2 + b2
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Categorical(logits=logits), obs=y)


def handwritten_logits(s: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ s["w1"] + s["b1"][:, None, :]) @ s["w2"] + s["b2"][:, None, :]


def summarize(
    name: str, seconds: float, chains: dict[str, np.ndarray], logits: jax.Array, y: jax.Array, num_chains: int
) -> dict[str, float]:
    """ESS/R-hat over weights and the pointwise test log-likelihood; accuracy of the predictive mean."""
    ess_w = np.concatenate([np.ravel(effective_sample_size(v)) for v in chains.values()])
    rhat_w = np.concatenate([np.ravel(split_gelman_rubin(v)) for v in chains.values()])
    ll = np.asarray(dist.Categorical(logits=logits).log_prob(y))  # [C * D, N]
    ll = ll.reshape(num_chains, -1, ll.shape[-1])
    ess_ll = effective_sample_size(ll)
    rhat_ll = split_gelman_rubin(ll)
    probs = np.asarray(jax.nn.softmax(logits, -1)).mean(0)
    return {
        "name": name,
        "seconds": seconds,
        "ess_weights": float(np.median(ess_w)),
        "ess_per_s": float(np.median(ess_w)) / seconds,
        "ess_ll_per_s": float(np.median(ess_ll)) / seconds,
        "max_rhat_predictive": float(np.max(rhat_ll)),
        "rhat_weights": float(np.median(rhat_w)),
        "accuracy": float((probs.argmax(-1) == np.asarray(y)).mean()),
    }


def run_handwritten(key: jax.Array, data: tuple, warmup: int, samples: int, chains: int, method: str) -> dict:
    x, y, xt, yt = data
    sampler = MCMC(
        NUTS(handwritten_model),
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method=method,
        progress_bar=False,
    )
    t0 = time.perf_counter()
    sampler.run(key, x, y)
    jax.block_until_ready(sampler.get_samples())
    seconds = time.perf_counter() - t0
    by_chain = {k: np.asarray(v) for k, v in sampler.get_samples(group_by_chain=True).items()}
    logits = handwritten_logits(sampler.get_samples(), xt)
    return summarize("numpyro (hand-written)", seconds, by_chain, logits, yt, chains)


def run_uncertlr(
    key: jax.Array, data: tuple, warmup: int, samples: int, chains: int, method: str, init: str
) -> dict:
    x, y, xt, yt = data
    net = FlaxMLP(hidden=(HIDDEN,), out_features=10, activation="tanh")
    bnn = bayesian(
        net, params=net.init(jax.random.key(1), x[:1]), num_data=x.shape[0], prior=priors.Normal(1.0)
    )
    res = mcmc(
        bnn,
        x,
        y,
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method=method,
        init=init,
        rng_key=key,
        progress=False,
    )
    by_chain = {k: np.asarray(v) for k, v in res.get_samples(group_by_chain=True).items()}
    name = "uncertlr" if init == "uniform" else f"uncertlr (init={init!r})"
    return summarize(name, res.seconds, by_chain, res.sample_outputs(xt), yt, chains)


def uncertlr_bnn(x: jax.Array):
    net = FlaxMLP(hidden=(HIDDEN,), out_features=10, activation="tanh")
    return bayesian(
        net, params=net.init(jax.random.key(1), x[:1]), num_data=x.shape[0], prior=priors.Normal(1.0)
    )


def gradient_costs(data: tuple, quick: bool) -> dict[str, float]:
    """Microseconds per gradient of each model's potential energy (jitted; interleaved blocks, median)."""
    x, y = data[0], data[1]
    fns = {}
    for name, model in (
        ("numpyro (hand-written)", handwritten_model),
        ("uncertlr", uncertlr_bnn(x).mcmc_model),
    ):
        info = initialize_model(jax.random.key(0), model, model_args=(x, y))
        grad = jax.jit(jax.grad(info.potential_fn))
        z = info.param_info.z
        jax.block_until_ready(grad(z))
        fns[name] = lambda g=grad, z=z: jax.block_until_ready(g(z))
    blocks, steps = (3, 50) if quick else (7, 200)
    return {k: 1e6 * v for k, v in interleaved_medians(fns, blocks=blocks, steps=steps).items()}


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--repeats", type=int, default=None, help="alternating runs per method (default 3, quick 1)"
    )
    p.add_argument("--chain-method", default="sequential", choices=("sequential", "vectorized", "parallel"))
    p.add_argument(
        "--with-weights-init",
        action="store_true",
        help="also run uncertlr's default init='weights' (chains start near the network's weights)",
    )
    args = p.parse_args(argv)
    warmup = samples = 100 if args.quick else 300
    chains = 2
    repeats = args.repeats or (1 if args.quick else 3)
    data = load()
    runs: dict[str, list[dict]] = {}
    for r in range(repeats):
        key = jax.random.key(100 + r)
        for row in (
            run_handwritten(key, data, warmup, samples, chains, args.chain_method),
            run_uncertlr(key, data, warmup, samples, chains, args.chain_method, "uniform"),
        ):
            runs.setdefault(row["name"], []).append(row)
            print(f"repeat {r}: {row['name']}: {row['seconds']:.1f} s, ESS/s {row['ess_per_s']:.1f}")
        if args.with_weights_init:
            row = run_uncertlr(key, data, warmup, samples, chains, args.chain_method, "weights")
            runs.setdefault(row["name"], []).append(row)
    grads = gradient_costs(data, args.quick)
    rows = []
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "name"}
        rows.append({"name": name, **med, "repeats": len(rs), "us_per_grad": grads.get(name)})
    base = rows[0]["ess_per_s"]
    for row in rows:
        row["ratio"] = row["ess_per_s"] / base
    print_table(
        f"NUTS, 64-{HIDDEN}-10 tanh BNN, 1,000 digits, {chains} chains x ({warmup} + {samples}), "
        f"{args.chain_method} chains, median of {repeats} alternating runs",
        rows,
        [
            ("name", "method", "s"),
            ("seconds", "seconds", ".1f"),
            ("ess_weights", "ESS (weights)", ".0f"),
            ("ess_per_s", "ESS/s", ".1f"),
            ("ess_ll_per_s", "ESS/s (test ll)", ".1f"),
            ("max_rhat_predictive", "max R-hat (test ll)", ".3f"),
            ("rhat_weights", "median R-hat (w)", ".3f"),
            ("accuracy", "accuracy", ".3f"),
            ("us_per_grad", "µs/grad", ".0f"),
            ("ratio", "ratio", ".2f"),
        ],
    )
    ours = next(r for r in rows if r["name"] == "uncertlr")["ratio"]
    print(f"uncertlr ESS/s / hand-written ESS/s = {ours:.2f} (target >= {TARGET})")
    print(
        f"gradient cost: uncertlr {grads['uncertlr']:.0f} us vs hand-written {grads['numpyro (hand-written)']:.0f} us "
        f"(ratio {grads['numpyro (hand-written)'] / grads['uncertlr']:.2f} in speed)"
    )
    write_results(
        "mcmc",
        rows,
        args.json,
        target=TARGET,
        warmup=warmup,
        samples=samples,
        chains=chains,
        chain_method=args.chain_method,
        repeats=repeats,
        per_run=runs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
