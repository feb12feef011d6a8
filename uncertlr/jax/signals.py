"""Uncertainty signals for the LR modulator on the JAX side: batch signals and an MCMC-informed one.

Batch signals (the twins of :mod:`uncertlr.torch.signals`, same names and numbers; 0-d arrays,
jit-safe, from the outputs ``bnn.elbo`` already computed for ``K`` weight draws):

* :func:`batch_entropy`, :func:`batch_mutual_information` — for classifiers (logits ``[K, B, C]``,
  ``C >= 2``; a single output column, a regression mean, is refused);
* :func:`batch_predictive_variance`, :func:`batch_epistemic_variance`,
  :func:`batch_aleatoric_variance` — for a Normal likelihood (outputs are the means
  ``[K, B, ...]``; the noise std is ``params["noise_scale"]`` when it is learned).

MCMC-informed:

:class:`LastLayerMCMCSignal` treats a network's penultimate features as fixed and puts
a Bayesian softmax-regression head on them: every ``refresh_every`` steps it runs NUTS
(short warm-up, a few chains) on that head given the *current* features of a reference
set, and between refreshes it scores each batch under the held posterior draws. The
signal is the batch mean of the posterior predictive entropy (total uncertainty) or of
the mutual information (epistemic). The network can be torch or JAX: the signal only
sees feature arrays (torch tensors are detached and copied to the host).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uncertlr import likelihoods, metrics, priors
from uncertlr.jax.bnn import bayesian
from uncertlr.jax.mcmc import DivergenceWarning, MCMCResult, mcmc

__all__ = [
    "LastLayerMCMCSignal",
    "batch_aleatoric_variance",
    "batch_entropy",
    "batch_epistemic_variance",
    "batch_mutual_information",
    "batch_predictive_variance",
]

_KINDS: dict[str, Callable[..., Any]] = {
    "entropy": metrics.predictive_entropy,
    "mutual_information": metrics.mutual_information,
    "expected_entropy": metrics.expected_entropy,
}


def _logits(logits: Any) -> jax.Array:
    lg = jnp.asarray(logits)
    if lg.ndim not in (2, 3) or lg.size == 0:
        raise ValueError(f"logits must have shape [B, C] or [K, B, C], none empty; got {lg.shape}")
    if not jnp.issubdtype(lg.dtype, jnp.floating):
        raise TypeError(f"logits must be floating point; got dtype {lg.dtype}")
    if lg.shape[-1] < 2:
        raise ValueError(
            f"logits must have at least 2 classes on their last axis; got shape {lg.shape}. One output "
            "per example is a regression mean (Normal likelihood), whose entropy is 0: use "
            "batch_predictive_variance / batch_epistemic_variance / batch_aleatoric_variance"
        )
    return jax.lax.stop_gradient(lg if lg.ndim == 3 else lg[None])


def batch_entropy(logits: Any) -> jax.Array:
    """Mean predictive entropy of a batch (nats, 0-d) from logits ``[B, C]`` or ``[K, B, C]``.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(batch_entropy(jnp.zeros((5, 4)))), 4) == round(float(jnp.log(4.0)), 4)
        True
    """
    return jnp.mean(metrics.predictive_entropy(jax.nn.softmax(_logits(logits), -1), validate=False))


def batch_mutual_information(logits: Any) -> jax.Array:
    """Mean mutual information (epistemic part) of a batch from ``logits[K, B, C]`` (0-d; 0 for K = 1).

    Example:
        >>> import jax.numpy as jnp
        >>> float(batch_mutual_information(jnp.array([[[5.0, 0.0]], [[0.0, 5.0]]]))) > 0.5
        True
    """
    return jnp.mean(metrics.mutual_information(jax.nn.softmax(_logits(logits), -1), validate=False))


def _means(outputs: Any) -> jax.Array:
    out = jnp.asarray(outputs)
    if out.ndim < 2 or out.size == 0:
        raise ValueError(
            f"outputs must have shape [K, B, ...] (K weight draws first; a deterministic net's outputs "
            f"as out[None]), none empty; got shape {out.shape}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"outputs must be floating point; got dtype {out.dtype}")
    return jax.lax.stop_gradient(out)


def _noise_var(noise_scale: Any, out: jax.Array) -> jax.Array:
    if isinstance(noise_scale, bool) or noise_scale is None:
        raise TypeError(f"noise_scale must be the noise std (a number or an array); got {noise_scale!r}")
    sd = jax.lax.stop_gradient(jnp.asarray(noise_scale, dtype=out.dtype))
    try:
        return jnp.broadcast_to(sd * sd, out.shape[1:])
    except ValueError as exc:
        raise ValueError(
            f"noise_scale of shape {sd.shape} does not broadcast to one draw's outputs {out.shape[1:]}"
        ) from exc


def batch_epistemic_variance(outputs: Any) -> jax.Array:
    """Mean over the batch of the variance of the means across the ``K`` draws of ``outputs[K, B, ...]``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(batch_epistemic_variance(jnp.array([[0.0, 1.0], [2.0, 1.0]])))
        0.5
    """
    return jnp.mean(jnp.var(_means(outputs), axis=0))


def batch_aleatoric_variance(outputs: Any, noise_scale: Any) -> jax.Array:
    """Mean over the batch of the noise variance ``noise_scale²`` (a number or an array broadcastable to ``[B, ...]``).

    Example:
        >>> import jax.numpy as jnp
        >>> float(batch_aleatoric_variance(jnp.zeros((1, 4)), 0.5))
        0.25
    """
    return jnp.mean(_noise_var(noise_scale, _means(outputs)))


def batch_predictive_variance(outputs: Any, noise_scale: Any) -> jax.Array:
    """Mean over the batch of the predictive variance: noise variance + variance of the means (0-d).

    Example:
        >>> import jax.numpy as jnp
        >>> float(batch_predictive_variance(jnp.array([[0.0, 1.0], [2.0, 1.0]]), 1.0))
        1.5
    """
    out = _means(outputs)
    return jnp.mean(_noise_var(noise_scale, out)) + jnp.mean(jnp.var(out, axis=0))


def _host(a: Any, name: str, *, dtype: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu().numpy()
    out = np.asarray(a, dtype=dtype)
    if dtype is np.float32 and not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or inf")
    return out


def _head(p: dict[str, jax.Array], h: jax.Array) -> jax.Array:
    return h @ p["kernel"] + p["bias"]


class LastLayerMCMCSignal:
    """Posterior predictive uncertainty of a batch under a NUTS-sampled last layer, refreshed every K steps.

    Args:
        num_classes: outputs of the head.
        refresh_every: steps between NUTS runs (the first call always runs one).
        kind: ``"entropy"`` (predictive entropy), ``"mutual_information"`` or ``"expected_entropy"``.
        num_warmup, num_samples, num_chains, chain_method: of each NUTS run. With
            ``"sequential"`` or ``"parallel"`` chains, refreshes reuse the compiled sampler
            (NumPyro 0.22 cannot rerun ``"vectorized"`` chains with new data, so those recompile).
        prior_scale: std of the N(0, s²) prior on the head's weights and biases.
        max_reference: at most this many reference rows per refresh (a fixed-size random subset,
            so every refresh has the same shapes).
        normalized: divide by ``log(num_classes)`` (signal in [0, 1]).
        rng_key: seed or JAX key.

    Attributes:
        result: the latest :class:`~uncertlr.jax.MCMCResult` (None before the first refresh).
        refreshes: number of NUTS runs; ``seconds``: their total wall time (the signal's cost),
        ``refresh_seconds`` each one's (the first includes compilation; later ones with the same
        reference size reuse the compiled sampler);
        ``divergences``: divergent transitions over all refreshes.

    Example:
        >>> import math
        >>> import numpy as np
        >>> from uncertlr.jax import LastLayerMCMCSignal
        >>> rng = np.random.default_rng(0)
        >>> feats, labels = rng.normal(size=(60, 4)).astype("float32"), rng.integers(0, 3, 60)
        >>> sig = LastLayerMCMCSignal(num_classes=3, refresh_every=10, num_warmup=30, num_samples=30, num_chains=1)
        >>> u = sig(0, feats[:8], reference=(feats, labels))
        >>> 0.0 <= u <= math.log(3), sig.refreshes
        (True, 1)
    """

    def __init__(
        self,
        *,
        num_classes: int,
        refresh_every: int = 100,
        kind: str = "entropy",
        num_warmup: int = 100,
        num_samples: int = 100,
        num_chains: int = 2,
        chain_method: str = "sequential",
        prior_scale: float = 1.0,
        max_reference: int = 512,
        normalized: bool = False,
        rng_key: Any = 0,
    ):
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {sorted(_KINDS)}; got {kind!r}")
        for name, v in (
            ("num_classes", num_classes),
            ("refresh_every", refresh_every),
            ("max_reference", max_reference),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {num_classes}")
        self.num_classes = num_classes
        self.refresh_every = refresh_every
        self.kind = kind
        self.mcmc_options = {
            "num_warmup": num_warmup,
            "num_samples": num_samples,
            "num_chains": num_chains,
            "chain_method": chain_method,
        }
        self.prior = priors.Normal(float(prior_scale))
        self.max_reference = max_reference
        self.normalized = normalized
        self._key = jax.random.key(rng_key) if isinstance(rng_key, int) else rng_key
        self._rng = np.random.default_rng(int(np.asarray(jax.random.key_data(self._key)).ravel()[-1]))
        self.result: MCMCResult | None = None
        self.refreshes = 0
        self.seconds = 0.0
        self.refresh_seconds: list[float] = []
        self.divergences = 0
        self._last_refresh: int | None = None
        self._score = jax.jit(self._score_impl)

    def needs_refresh(self, step: int) -> bool:
        """Whether a call at ``step`` runs NUTS (no posterior yet, or ``refresh_every`` steps since the last)."""
        return self._last_refresh is None or step - self._last_refresh >= self.refresh_every

    def refresh(self, features: Any, labels: Any, *, step: int = 0) -> MCMCResult:
        """Run NUTS on the head given reference ``features[N, D]`` and integer ``labels[N]``."""
        h = _host(features, "features", dtype=np.float32)
        y = _host(labels, "labels", dtype=np.int64)
        if h.ndim != 2 or y.shape != (h.shape[0],):
            raise ValueError(f"need features [N, D] and labels [N]; got {h.shape} and {y.shape}")
        if len(h) > self.max_reference:
            idx = np.sort(self._rng.choice(len(h), self.max_reference, replace=False))
            h, y = h[idx], y[idx]
        self._key, key = jax.random.split(self._key)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DivergenceWarning)  # counted in self.divergences instead
            if (
                self.mcmc_options["chain_method"] != "vectorized"  # numpyro 0.22 cannot rerun those
                and self.result is not None
                and self.result.bnn.shapes["kernel"][0] == h.shape[1]
                and self.result.bnn.num_data == len(h)
            ):
                # same shapes: rerun the compiled sampler on the new features (warm-up included)
                sampler = self.result.mcmc
                sampler.run(key, jnp.asarray(h), jnp.asarray(y, dtype=jnp.int32))
                jax.block_until_ready(sampler.get_samples())
                self.result = MCMCResult(
                    self.result.bnn, sampler, self.result.model, time.perf_counter() - t0
                )
            else:
                params = {
                    "kernel": jnp.zeros((h.shape[1], self.num_classes)),
                    "bias": jnp.zeros(self.num_classes),
                }
                bnn = bayesian(
                    _head,
                    params=params,
                    num_data=len(h),
                    prior=self.prior,
                    likelihood=likelihoods.Categorical(),
                )
                self.result = mcmc(
                    bnn,
                    h,
                    y.astype(np.int32),
                    rng_key=key,
                    progress=False,
                    init="prior",
                    jit_model_args=True,
                    **self.mcmc_options,
                )
        self.refresh_seconds.append(time.perf_counter() - t0)
        self.seconds += self.refresh_seconds[-1]
        self.refreshes += 1
        self.divergences += self.result.num_divergences
        self._last_refresh = step
        return self.result

    def _score_impl(self, kernel: jax.Array, bias: jax.Array, h: jax.Array) -> jax.Array:
        probs = jax.nn.softmax(jnp.einsum("nd,sdc->snc", h, kernel) + bias[:, None, :], -1)
        return jnp.mean(_KINDS[self.kind](probs, normalized=self.normalized))

    def score(self, features: Any) -> float:
        """The signal for a batch ``features[B, D]`` under the current posterior draws."""
        if self.result is None:
            raise RuntimeError("no posterior yet: call refresh(features, labels) or the signal itself first")
        h = _host(features, "features", dtype=np.float32)
        s = self.result.samples
        if h.ndim != 2 or h.shape[1] != s["kernel"].shape[1]:
            raise ValueError(f"features must be [B, {s['kernel'].shape[1]}]; got {h.shape}")
        return float(self._score(s["kernel"], s["bias"], jnp.asarray(h)))

    def __call__(self, step: int, features: Any, *, reference: tuple[Any, Any] | None = None) -> float:
        """The signal at ``step`` for the batch ``features``; refreshes the posterior from ``reference`` when due.

        ``reference`` is ``(features[N, D], labels[N])`` of a reference set (e.g. a held
        training subset) computed with the network's *current* weights; it is only read
        when a refresh is due, so compute it lazily (``signal.needs_refresh(step)``).
        """
        if self.needs_refresh(step):
            if reference is None:
                raise ValueError(f"step {step} needs a NUTS refresh: pass reference=(features, labels)")
            self.refresh(*reference, step=step)
        value = self.score(features)
        if not math.isfinite(value):  # pragma: no cover - softmax of finite logits is finite
            raise FloatingPointError(f"signal is {value} at step {step}")
        return value

    def __repr__(self) -> str:
        return (
            f"LastLayerMCMCSignal(kind={self.kind!r}, refresh_every={self.refresh_every}, "
            f"refreshes={self.refreshes}, seconds={self.seconds:.1f})"
        )
