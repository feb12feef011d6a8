"""NUTS BNN vs SVI BNN vs a deep ensemble, last-layer Laplace and a deterministic network on sklearn digits
(JAX backend).

One 64-16-10 tanh MLP (Flax linen, ``uncertlr_models.flax_mlp.FlaxMLP``), five ways:

* deterministic: Adam on the cross-entropy with L2 weight decay (optax; a MAP estimate under a Gaussian
  prior, which last-layer Laplace needs), point predictions;
* ensemble: five such networks trained at once under ``jax.vmap`` (each its own initialisation and batch
  order), behind ``uncertlr.jax.Ensemble``;
* laplace: ``uncertlr.jax.LastLayerLaplace`` on the deterministic network (prior precision by marginal
  likelihood);
* SVI: ``uncertlr.jax.svi`` with the mean-field Normal guide, N(0, 1) priors;
* NUTS: ``uncertlr.jax.mcmc``, chains started near the deterministic network's weights,
  N(0, 1) priors; divergences, R-hat and ESS of the test log-likelihood are reported.

Prints an accuracy / calibration / uncertainty table (test set, and test images with
shuffled pixels as the out-of-distribution set) and writes a run folder under ``--out``
through :func:`uncertlr.app.pipeline.save`, like every other example: ``metrics.json``
(schema ``uncertlr.metrics/1``), ``history.json``, ``predictions.npz``, ``reliability.png``,
``uncertainty.png`` and the diagnostics report of the SVI and NUTS posteriors (``report.html``).

Usage:
    python examples/mcmc_digits.py                       # ~1-2 minutes on 2 CPU cores
    python examples/mcmc_digits.py --quick               # smoke run
    python examples/mcmc_digits.py --chains 4 --chain-method parallel   # with 4 devices
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

from uncertlr import priors, runfolder
from uncertlr.app.pipeline import Results, results_table, save
from uncertlr.data import load_digits, shuffle_pixels
from uncertlr.jax import Ensemble, LastLayerLaplace, bayesian, mcmc, svi
from uncertlr.runfolder import classification_summary
from uncertlr_models.flax_mlp import FlaxMLP


def _adam(lr, weight_decay):
    """Adam on the loss plus ``weight_decay / 2 ‖w‖²`` (the L2 term in the gradient, as torch's Adam does it)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))


def train_deterministic(net, variables, x, y, *, epochs, batch_size, lr, weight_decay, seed):
    """Minibatch Adam on the cross-entropy (with L2 weight decay); returns the trained variables and the history."""
    opt = _adam(lr, weight_decay)
    params = variables["params"]
    state = opt.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss(p):
            logits = net.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    rng = np.random.default_rng(seed)
    history, n = [], len(x)
    for epoch in range(epochs):
        order = rng.permutation(n)
        for j in range(n // batch_size):
            idx = order[j * batch_size : (j + 1) * batch_size]
            params, state, value = step(params, state, x[idx], y[idx])
            history.append({"step": len(history), "epoch": epoch, "loss": float(value), "lr": lr})
    return {"params": params}, history


def train_ensemble(net, x, y, *, size, epochs, batch_size, lr, weight_decay, seed):
    """``size`` networks trained at once under ``jax.vmap``, each from its own initialisation and with its own
    batch order; returns their variables stacked on a leading member axis, and the mean loss per step."""
    keys = jax.random.split(jax.random.key(seed + 1000), size)
    params = jax.vmap(net.init, in_axes=(0, None))(keys, x[:1])["params"]
    opt = _adam(lr, weight_decay)
    state = jax.vmap(opt.init)(params)

    def one(p, s, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": p}, xb), yb).mean()

        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    step = jax.jit(jax.vmap(one))
    rng = np.random.default_rng(seed + 1000)
    history, n = [], len(x)
    for epoch in range(epochs):
        orders = np.stack([rng.permutation(n) for _ in range(size)])
        for j in range(n // batch_size):
            idx = orders[:, j * batch_size : (j + 1) * batch_size]
            params, state, value = step(params, state, x[idx], y[idx])
            history.append({"step": len(history), "epoch": epoch, "loss": float(value.mean()), "lr": lr})
    return {"params": params}, history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent folder of the run folder")
    p.add_argument("--warmup", type=int, default=None, help="NUTS warm-up per chain (default 300, quick 50)")
    p.add_argument("--samples", type=int, default=None, help="NUTS draws per chain (default 300, quick 50)")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--chain-method", default="sequential", choices=("sequential", "vectorized", "parallel"))
    p.add_argument("--svi-epochs", type=int, default=None, help="SVI epochs (default 200, quick 10)")
    p.add_argument(
        "--weight-decay",
        type=float,
        default=1e-3,
        help="L2 weight decay of the deterministic and ensemble nets",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warmup = args.warmup or (50 if args.quick else 300)
    samples = args.samples or (50 if args.quick else 300)
    svi_epochs = args.svi_epochs or (10 if args.quick else 200)
    det_epochs = 10 if args.quick else 100
    batch = 64

    from rich.console import Console

    console = Console()
    run = runfolder.new_run_dir(args.out, "mcmc_digits")
    split = load_digits(seed=args.seed)
    x, y = jnp.asarray(split.x_train), jnp.asarray(split.y_train.astype(np.int32))
    xt, yt = jnp.asarray(split.x_test), split.y_test
    xo = jnp.asarray(shuffle_pixels(split.x_test, seed=args.seed + 1))
    console.print(
        f"[bold]mcmc_digits[/]: {len(x)} train / {len(xt)} test images, OOD = shuffled pixels; "
        f"jax {jax.__version__} on {jax.devices()[0].platform} x {jax.device_count()}"
    )
    net = FlaxMLP(hidden=(16,), out_features=10, activation="tanh")
    variables = net.init(jax.random.key(args.seed), x[:1])
    results, preds, histories, extra = {}, {"labels": yt}, {}, {}

    t0 = time.perf_counter()
    trained, histories["deterministic"] = train_deterministic(
        net,
        variables,
        x,
        y,
        epochs=det_epochs,
        batch_size=batch,
        lr=1e-2,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    det = lambda xx: jax.nn.softmax(net.apply(trained, xx), -1)[None]  # noqa: E731 - [1, N, C]
    p_in, p_out = np.asarray(det(xt)), np.asarray(det(xo))
    results["deterministic"] = {
        **classification_summary(p_in, yt, p_out),
        "seconds": time.perf_counter() - t0,
    }
    preds["deterministic_test"], preds["deterministic_ood"] = np.asarray(p_in), np.asarray(p_out)

    t0 = time.perf_counter()
    members, histories["ensemble"] = train_ensemble(
        net,
        x,
        y,
        size=5,
        epochs=det_epochs,
        batch_size=batch,
        lr=1e-2,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    ens = Ensemble(net, params=members, stacked=True)
    p_in, p_out = np.asarray(ens.predict(xt)), np.asarray(ens.predict(xo))
    results["ensemble"] = {**classification_summary(p_in, yt, p_out), "seconds": time.perf_counter() - t0}
    preds["ensemble_test"], preds["ensemble_ood"] = p_in, p_out

    t0 = time.perf_counter()
    la = LastLayerLaplace(net, params=trained).fit(x, y)
    p_in = np.asarray(la.predict(xt, num_samples=100, rng_key=1))
    p_out = np.asarray(la.predict(xo, num_samples=100, rng_key=2))
    results["laplace"] = {
        **classification_summary(p_in, yt, p_out),
        "seconds": results["deterministic"]["seconds"] + time.perf_counter() - t0,
    }
    preds["laplace_test"], preds["laplace_ood"] = p_in, p_out
    histories["laplace"] = histories["deterministic"]  # (it trains nothing of its own)
    extra["laplace"] = {"prior_precision": la.prior_precision, "layer": la.layer_name}

    bnn = bayesian(net, params=variables, num_data=len(x), prior=priors.Normal(1.0), init_scale=1e-3)
    t0 = time.perf_counter()
    fit = svi(
        bnn, x, y, optimizer=optax.adam(1e-2), num_steps=svi_epochs * (len(x) // batch), batch_size=batch
    )
    p_in = np.asarray(fit.predict(xt, num_samples=100, rng_key=1))
    p_out = np.asarray(fit.predict(xo, num_samples=100, rng_key=2))
    results["svi"] = {**classification_summary(p_in, yt, p_out), "seconds": time.perf_counter() - t0}
    preds["svi_test"], preds["svi_ood"] = np.asarray(p_in), np.asarray(p_out)
    histories["svi"] = fit.history

    # NUTS from the trained network's weights (plus a small jitter per chain)
    nuts_bnn = bayesian(net, params=trained, num_data=len(x), prior=priors.Normal(1.0))
    t0 = time.perf_counter()
    res = mcmc(
        nuts_bnn,
        x,
        y,
        num_warmup=warmup,
        num_samples=samples,
        num_chains=args.chains,
        chain_method=args.chain_method,
        rng_key=args.seed,
    )
    num = min(200, res.num_draws)
    p_in, p_out = np.asarray(res.predict(xt, num_samples=num)), np.asarray(res.predict(xo, num_samples=num))
    results["nuts"] = {**classification_summary(p_in, yt, p_out), "seconds": time.perf_counter() - t0}
    preds["nuts_test"], preds["nuts_ood"] = np.asarray(p_in), np.asarray(p_out)
    ll = np.asarray(res.log_likelihood(xt, jnp.asarray(yt.astype(np.int32))))
    results["nuts"].update(
        divergences=res.num_divergences,
        ess_test_ll_median=float(np.median(effective_sample_size(ll))),
        rhat_test_ll_max=float(np.max(split_gelman_rubin(ll))) if args.chains > 1 else float("nan"),
    )
    extra["nuts"] = {
        "warmup": warmup,
        "samples": samples,
        "chains": args.chains,
        "chain_method": args.chain_method,
    }

    console.print(results_table(results, title="digits (JAX): test set and shuffled-pixel OOD set"))
    n = results["nuts"]
    console.print(
        f"NUTS: {n['divergences']} divergences, median ESS of the test log-likelihood {n['ess_test_ll_median']:.0f}, "
        f"max R-hat {n['rhat_test_ll_max']:.3f}"
    )

    doc = {
        "task": "digits",
        "seed": args.seed,
        "device": jax.devices()[0].platform,
        "config": {**vars(args), "out": str(args.out), **extra},
        "ood": "test images with shuffled pixels",
    }
    preds = {k: np.asarray(v, np.float32) if k != "labels" else v for k, v in preds.items()}
    inference = {}
    try:
        from uncertlr.diagnostics import to_inference_data

        yt32 = jnp.asarray(yt.astype(np.int32))
        inference = {
            "svi": to_inference_data(fit, x=xt, y=yt32, num_samples=100, name="svi"),
            "nuts": to_inference_data(res, x=xt, y=yt32, name="nuts"),
        }
    except ImportError as exc:  # the report extra is optional
        console.print(f"no diagnostics report: {exc}", markup=False)
    save(
        Results(results, preds, histories, ood="shuffled pixels"),
        run,
        doc=doc,
        inference=inference,
        console=console,
    )
    console.print(f"run folder: [bold]{run}[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
