"""Last-layer Laplace for a trained Flax or Equinox network: the JAX twin of :class:`uncertlr.torch.LastLayerLaplace`.

The last dense layer's weight and bias (``P = C (D + 1)`` numbers) get the Gaussian posterior
``N(θ*, (H + δ I)⁻¹)`` around their trained values ``θ*``, ``H`` the generalised Gauss-Newton matrix of the
training NLL — exact for a last layer, whose outputs are linear in its weights:

* categorical: ``H = Σ_n (diag p_n - p_n p_nᵀ) ⊗ φ̃_n φ̃_nᵀ`` (``φ̃ = [φ, 1]``, the layer's input);
* Gaussian with noise std ``σ``: ``H = I / σ² ⊗ Σ_n φ̃_n φ̃_nᵀ`` (Bayesian linear regression on ``φ``).

The prior precision ``δ`` maximises the Laplace marginal likelihood (or is given); the math is shared with
the torch class (:mod:`uncertlr._laplace`), and both give the same posterior on the same weights. ``H`` is
built on the host in float64 (numpy; JAX computes the features), so it is exact whatever JAX's default
precision, batch by batch: memory holds one batch's features and the ``P × P`` matrix. The layer's input is read during an ordinary forward pass, as :class:`uncertlr.jax.FeatureDensity`
reads it, and the network is not changed. ``predict`` samples the last layer only, so one forward pass
serves every draw.

Parameters are ordered as the torch class orders them: ``[W | b]`` row-major with ``W`` as ``[C, D]`` (an
Equinox ``Linear``'s ``weight``; the transpose of a Flax ``kernel``).

Example:
    >>> import jax, numpy as np
    >>> from uncertlr.jax import LastLayerLaplace
    >>> from uncertlr_models.eqx_mlp import EqxMLP
    >>> net = EqxMLP(4, (16,), 3, key=jax.random.key(0))       # (untrained here, to keep it short)
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32); y = np.arange(64) % 3
    >>> la = LastLayerLaplace(net).fit(x, y)
    >>> la.prior_precision > 0, la.predict(x[:5], num_samples=8).shape
    (True, (8, 5, 3))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

from uncertlr import likelihoods as _lik
from uncertlr._arrays import host
from uncertlr._laplace import check_prior_precision, fit_prior_precision, log_marginal_likelihood
from uncertlr._spec import positive_int
from uncertlr.jax._networks import as_network
from uncertlr.jax._posterior import KeyStream, as_prediction
from uncertlr.jax._validation import check_batch, check_inputs
from uncertlr.jax.density import FeatureDensity
from uncertlr.likelihoods import NormalPrediction

__all__ = ["MAX_PARAMS", "LastLayerLaplace"]

Array = Any

#: Most last-layer parameters (weight + bias) the full GGN is built for (as the torch class).
MAX_PARAMS = 8192


class LastLayerLaplace:
    """A Laplace posterior over the last dense layer of a trained Flax (linen or nnx) or Equinox network.

    The weights are read when :meth:`fit` runs (a flax.nnx module's features as it is at each call): fit
    again after training further. Picklable.

    The approximation is centred on the trained weights, so train the network as a MAP estimate, i.e. with
    weight decay (``optax.adamw``, or an L2 term): around weights trained without it the marginal likelihood
    picks a small prior precision and the predictions come out under-confident (as with the torch class).

    Args:
        net: the trained network — a flax.linen module (with ``params=``), a flax.nnx module or an Equinox
            module (vmapped over the batch). Its output must be the last dense layer's output: logits
            ``[N, C]`` (categorical) or means ``[N, C]`` (normal).
        params: the linen module's trained variables; nothing for nnx/Equinox.
        likelihood: ``"categorical"`` or ``"normal"`` (or a :mod:`uncertlr.likelihoods` spec).
        last_layer: the dense layer's name as :class:`~uncertlr.jax.FeatureDensity` names it (``"Dense_2"``,
            ``"layers.2"``, ``"out"``); default: the last dense layer the forward pass calls.
        noise_scale: Gaussian likelihood: the noise std (default: the root mean squared training residual).
        seed: seeds the draws of :meth:`predict` calls without ``rng_key`` (each call advances it).

    Attributes:
        prior_precision: ``δ`` (after :meth:`fit`).
        layer_name: the layer whose weights get the posterior.
        num_params: ``P``.
    """

    def __init__(
        self,
        net: Any,
        *,
        params: Any = None,
        likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
        last_layer: str | None = None,
        noise_scale: float | None = None,
        seed: int = 0,
    ):
        self.likelihood = _lik.as_likelihood(likelihood)
        self._density = FeatureDensity(net, params=params, layers=last_layer)  # validates net and params
        self._net, self._params = net, params
        if noise_scale is not None and not (math.isfinite(noise_scale) and noise_scale > 0):
            raise ValueError(f"noise_scale must be positive and finite; got {noise_scale!r}")
        self.noise_scale = noise_scale
        self.layer_name: str | None = last_layer
        self.num_params = 0
        self.prior_precision = math.nan
        self._keys = KeyStream(seed)
        self._fitted = False

    # ------------------------------------------------------------------ features

    def _batches(self, x: Array, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(φ̃[n, D + 1], outputs[n, C])`` of each batch in float64, checking the outputs are the layer's."""
        check_inputs(x)
        for start in range(0, x.shape[0], batch_size):
            xb = check_batch(x[start : start + batch_size])
            out, first = self._density._pass(xb)
            if not self._density._chosen:
                self._density._choose(out, first)
            name = self._density.layer_names[0]
            is_conv, phi, layer_out = first[name]
            if is_conv:
                raise ValueError(f"last_layer={name!r} is a convolution; name a dense layer")
            if jnp.shape(layer_out) != jnp.shape(out) or not bool(jnp.array_equal(layer_out, out)):
                raise ValueError(
                    f"the network's output must be the output of layer {name!r} (its last dense layer): "
                    "the posterior over that layer's weights then gives the network's predictions"
                )
            if jnp.ndim(out) != 2:
                raise ValueError(f"the network must output [N, C]; got shape {tuple(jnp.shape(out))}")
            phi, out = np.asarray(phi, dtype=np.float64), np.asarray(out, dtype=np.float64)
            if not (np.isfinite(phi).all() and np.isfinite(out).all()):
                raise ValueError("the network's features or outputs of x are not finite")
            yield np.concatenate([phi, np.ones((len(phi), 1))], 1), out

    def _theta(self, num_classes: int, num_features: int) -> np.ndarray:
        """``W̃ = [W | b]`` flattened row-major ``[P]`` (float64), ``W`` as ``[C, D]``."""
        values = as_network(self._net, params=self._params).values
        name = self.layer_name
        self._prefix = pre = f"{name}." if name else ""  # "": the network is the layer itself
        if f"{pre}kernel" in values:  # Flax: kernel [D, C]
            w = np.asarray(values[f"{pre}kernel"], dtype=np.float64).T
        elif f"{pre}weight" in values:  # Equinox: weight [C, D]
            w = np.asarray(values[f"{pre}weight"], dtype=np.float64)
        else:
            raise ValueError(f"layer {name!r} holds no kernel or weight among the network's parameters")
        if w.shape != (num_classes, num_features):
            raise ValueError(
                f"layer {name!r}'s weight has shape {w.shape} but the layer maps {num_features} inputs to "
                f"{num_classes} outputs"
            )
        b = values.get(f"{pre}bias")
        b = np.zeros(num_classes) if b is None else np.asarray(b, dtype=np.float64).reshape(num_classes)
        self._has_bias = f"{pre}bias" in values
        self._kernel = f"{pre}kernel" in values
        return np.concatenate([w, b[:, None]], 1).reshape(-1)

    # ------------------------------------------------------------------ fitting

    def fit(
        self, x: Array, y: Array, *, prior_precision: float | str = "marglik", batch_size: int = 256
    ) -> LastLayerLaplace:
        """Build the GGN on the training data ``(x[N, ...], y[N])`` and set the prior precision.

        Args:
            x, y: the network's training data (numpy or JAX arrays; integer labels ``[N]`` or targets
                ``[N, C]`` / ``[N]`` for one output).
            prior_precision: ``"marglik"`` (maximise the marginal likelihood over ``δ ∈ [1e-4, 1e6]``) or
                a positive number.
            batch_size: rows per forward pass.

        Returns:
            ``self``.
        """
        batch_size = positive_int("batch_size", batch_size)
        given = check_prior_precision(prior_precision)
        if not hasattr(y, "shape") or not hasattr(x, "shape") or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must have the same number of rows; got {getattr(x, 'shape', None)} and "
                f"{getattr(y, 'shape', None)}"
            )
        y_host = host(y)
        categorical = isinstance(self.likelihood, _lik.Categorical)
        hmat = np.zeros((0, 0))
        loglik, sq, done = 0.0, 0.0, 0
        # accumulated batch by batch, so memory holds one batch's features and the [P, P] matrix, never [N, P]
        for phi, out in self._batches(x, batch_size):
            n, d1 = phi.shape
            c = out.shape[1]
            if done == 0:
                self.layer_name = self._density.layer_names[0]
                self.num_params = c * d1
                if self.num_params > MAX_PARAMS:
                    raise ValueError(
                        f"the last layer has {self.num_params} parameters; the full GGN is built for at most "
                        f"{MAX_PARAMS}"
                    )
                hmat = np.zeros((self.num_params, self.num_params) if categorical else (d1, d1))
            yb = y_host[done : done + n]
            if categorical:
                _lik.check_labels(yb, n, c)
                logp = out - scipy.special.logsumexp(out, axis=1, keepdims=True)
                p = np.exp(logp)
                # Σ_n (diag p_n - p_n p_nᵀ) ⊗ φ̃_n φ̃_nᵀ = blockdiag_a(Φ̃ᵀ diag(p_a) Φ̃) - GᵀG, G_n = p_n ⊗ φ̃_n
                blocks = hmat.reshape(c, d1, c, d1)  # a view: adding to it adds to hmat
                for a in range(c):
                    blocks[a, :, a, :] += (phi * p[:, a : a + 1]).T @ phi
                g = (p[:, :, None] * phi[:, None, :]).reshape(n, self.num_params)
                hmat -= g.T @ g
                loglik += float(logp[np.arange(n), yb.astype(np.int64).reshape(n)].sum())
            else:
                targets = yb.astype(np.float64)
                if targets.size != out.size:
                    raise ValueError(
                        f"y must hold one target per output, {(len(y_host), c)}; got shape {y_host.shape}"
                    )
                targets = targets.reshape(out.shape)
                if not np.isfinite(targets).all():
                    raise ValueError("y holds NaN or inf")
                sq += float(np.square(targets - out).sum())
                hmat += phi.T @ phi  # the Gram matrix of φ̃, for now
            done += n
        theta = self._theta(c, d1 - 1)
        if not categorical:
            n_out = done * c
            if self.noise_scale is None:
                self.noise_scale = math.sqrt(sq / n_out)
            s2 = self.noise_scale**2
            hmat = np.kron(np.eye(c), hmat) / s2
            loglik = -0.5 * sq / s2 - 0.5 * n_out * math.log(2 * math.pi * s2)
        self._num_classes, self._num_features = c, d1 - 1
        self._theta_star = theta
        self._loglik = loglik
        self._theta_sq = float(theta @ theta)
        self._hmat = 0.5 * (hmat + hmat.T)
        self._evals = np.clip(np.linalg.eigvalsh(self._hmat), 0.0, None)
        self._factor_cache: tuple[float, np.ndarray] | None = None
        self.prior_precision = (
            fit_prior_precision(loglik, self._theta_sq, self._evals) if given is None else given
        )
        self._fitted = True
        return self

    def log_marginal_likelihood(self, prior_precision: float | None = None) -> float:
        """The Laplace log marginal likelihood for prior precision ``δ`` (default: the fitted one)."""
        self._check_fitted("log_marginal_likelihood")
        d = self.prior_precision if prior_precision is None else float(prior_precision)
        return log_marginal_likelihood(self._loglik, self._theta_sq, self._evals, d)

    def _check_fitted(self, what: str) -> None:
        if not self._fitted:
            raise RuntimeError(f"call fit(x, y) before {what}()")

    def _factor(self) -> np.ndarray:
        """Lower Cholesky factor ``L`` of the posterior precision ``H + δ I = L Lᵀ`` (cached per ``δ``)."""
        d = float(self.prior_precision)
        if self._factor_cache is None or self._factor_cache[0] != d:
            try:
                chol = np.linalg.cholesky(self._hmat + d * np.eye(self.num_params))
            except (
                np.linalg.LinAlgError
            ):  # H's rounding made it indefinite beyond δ: project it onto the PSD cone
                evals, evecs = np.linalg.eigh(self._hmat)
                chol = np.linalg.cholesky((evecs * (np.clip(evals, 0.0, None) + d)) @ evecs.T)
            self._factor_cache = (d, chol)
        return self._factor_cache[1]

    def posterior_covariance(self) -> np.ndarray:
        """``(H + δ I)⁻¹`` ``[P, P]`` (numpy float64), parameters ordered as ``[W | b]`` row-major, ``W`` ``[C, D]``."""
        self._check_fitted("posterior_covariance")
        inv = scipy.linalg.solve_triangular(self._factor(), np.eye(self.num_params), lower=True)
        return inv.T @ inv

    def posterior_scale(self) -> dict[str, np.ndarray]:
        """Posterior std of the last layer's parameters in the network's own layout and names: ``{"<layer>.kernel":
        [D, C]}`` (Flax) or ``{"<layer>.weight": [C, D]}`` (Equinox), and ``"<layer>.bias": [C]`` when it has one."""
        self._check_fitted("posterior_scale")
        inv = scipy.linalg.solve_triangular(self._factor(), np.eye(self.num_params), lower=True)
        sd = np.sqrt(np.square(inv).sum(0)).reshape(self._num_classes, -1)  # diag((L Lᵀ)⁻¹)
        w = sd[:, :-1]
        pre = self._prefix
        out = {f"{pre}kernel": w.T} if self._kernel else {f"{pre}weight": w}
        if self._has_bias:
            out[f"{pre}bias"] = sd[:, -1]
        return out

    # ------------------------------------------------------------------ prediction

    def sample_outputs(
        self, x: Array, *, num_samples: int = 32, rng_key: Any = None, batch_size: int = 1024
    ) -> Array:
        """Outputs ``[S, N, C]`` (a float32 JAX array) under ``S`` draws of the last layer's weights."""
        self._check_fitted("predict")
        num_samples = positive_int("num_samples", num_samples)
        batch_size = positive_int("batch_size", batch_size)
        eps = np.asarray(
            jax.random.normal(self._keys.next(rng_key), (num_samples, self.num_params)), dtype=np.float64
        )
        # θ = θ* + L⁻ᵀ ε has covariance (L Lᵀ)⁻¹ = (H + δ I)⁻¹
        draws = scipy.linalg.solve_triangular(self._factor().T, eps.T, lower=False).T
        theta = (self._theta_star + draws).reshape(num_samples, self._num_classes, -1)
        parts = [np.einsum("nd,scd->snc", phi, theta) for phi, _ in self._batches(x, batch_size)]
        return jnp.asarray(np.concatenate(parts, axis=1), dtype=jnp.float32)

    def predict(
        self, x: Array, *, num_samples: int = 32, rng_key: Any = None, batch_size: int = 1024
    ) -> Array | NormalPrediction:
        """``[S, N, C]`` probabilities, or a ``NormalPrediction`` (means ``[S, N, C]``, the noise variance).

        Args:
            x: inputs ``[N, ...]``.
            num_samples: draws of the last layer.
            rng_key: a JAX key or an int seed (default: the next key of the ``seed`` given at construction).
            batch_size: rows per forward pass.
        """
        out = self.sample_outputs(x, num_samples=num_samples, rng_key=rng_key, batch_size=batch_size)
        return as_prediction(out, self.likelihood, None if self.noise_scale is None else self.noise_scale**2)

    def __repr__(self) -> str:
        return (
            f"LastLayerLaplace({self._density.kind}, layer={self.layer_name!r}, P={self.num_params}, "
            f"prior_precision={self.prior_precision:.4g})"
        )
