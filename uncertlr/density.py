"""Class-conditional Gaussian densities over features: an out-of-distribution score for any backend.

:class:`ClassGaussians` fits one Gaussian per class to feature vectors ``φ[N, D]`` (Gaussian
discriminant analysis), ``q(φ) = Σ_c π_c N(φ; μ_c, Σ_c)`` with class frequencies ``π_c``, class means and
Ledoit-Wolf shrunk covariances, and scores new features by ``-log q(φ)`` (higher = more unusual). With
a network's penultimate features this is the density part of "deep deterministic uncertainty"
(Mukhoti et al., CVPR 2023): inputs whose features lie away from every class's training features
score high even where the softmax is confidently wrong about them.

It computes on the host in float64 with numpy, whatever library the features come from (numpy, torch
or JAX arrays), and returns numpy arrays. :class:`uncertlr.torch.FeatureDensity` and
:class:`uncertlr.jax.FeatureDensity` read a torch or a Flax/Equinox network's layer inputs for you; for
other features, pass the ones your network computes (e.g. ``net.apply(params, x, method=...)``).

Example:
    >>> import numpy as np
    >>> from uncertlr.density import ClassGaussians
    >>> rng = np.random.default_rng(0)
    >>> feats, labels = rng.normal(size=(200, 3)) + np.repeat([[0, 0, 0], [5, 0, 0]], 100, 0), np.repeat([0, 1], 100)
    >>> g = ClassGaussians().fit(feats, labels)
    >>> score = g.score(np.array([[0.0, 0, 0], [5, 0, 0], [2.5, 9, 0]]))   # [N]: higher = more unusual
    >>> bool(score[2] > score[:2].max())
    True
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.linalg import solve_triangular

from uncertlr._arrays import host
from uncertlr.calibration import ScoreTemperature, cross_fit_score_slope, fit_score_temperature
from uncertlr.likelihoods import check_labels

__all__ = ["ClassGaussians"]

Array = Any


class ClassGaussians:
    """One Gaussian per class over feature vectors; ``score`` = ``-log q(φ)`` (see the module docstring).

    Args:
        shrinkage: how each class covariance is estimated: ``"ledoit-wolf"`` (the default) shrinks the
            sample covariance ``S`` towards ``μ I`` (``μ = tr(S)/D``) by the Ledoit-Wolf (2004) estimate of
            the best amount, ``Σ = (1 - s) S + s μ I``, so classes with fewer inputs than feature dimensions
            still get a well-conditioned density; a number ``s`` in ``[0, 1]`` fixes the amount. ``S`` is
            the maximum-likelihood covariance (divided by the class size), as in scikit-learn's
            ``ledoit_wolf``/``ShrunkCovariance``.

    Attributes (after :meth:`fit`, numpy float64): ``classes [K]`` (the labels that occurred),
    ``means [K, D]``, ``chols [K, D, D]`` (lower Cholesky factors of the covariances), ``log_weights [K]``
    (log class frequencies), ``shrinkages [K]`` (the amount used per class).

    Example:
        >>> import numpy as np
        >>> g = ClassGaussians(shrinkage=0.1).fit(np.random.default_rng(0).normal(size=(50, 2)))
        >>> g.log_density(np.zeros((4, 2))).shape
        (4,)
    """

    def __init__(self, *, shrinkage: float | str = "ledoit-wolf"):
        if shrinkage != "ledoit-wolf" and (
            isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 <= shrinkage <= 1
        ):
            raise ValueError(f"shrinkage must be 'ledoit-wolf' or a number in [0, 1]; got {shrinkage!r}")
        self.shrinkage: float | str = shrinkage if isinstance(shrinkage, str) else float(shrinkage)
        self.classes = np.zeros(0, np.int64)
        self.means = np.zeros((0, 0))
        self.chols = np.zeros((0, 0, 0))
        self.log_weights = np.zeros(0)
        self.shrinkages = np.zeros(0)

    @staticmethod
    def _features(features: Array, name: str = "features") -> np.ndarray:
        phi = host(features, np.float64)
        if phi.ndim != 2 or phi.shape[0] == 0:
            raise ValueError(f"{name} must be [N, D] with N >= 1; got shape {tuple(phi.shape)}")
        if not np.isfinite(phi).all():
            raise ValueError(f"{name} hold NaN or inf")
        return phi

    def fit(
        self, features: Array, labels: Array | None = None, *, num_classes: int | None = None
    ) -> ClassGaussians:
        """Fit one Gaussian per class of ``labels [N]`` (integers in ``[0, num_classes)``), or one Gaussian
        with ``labels=None``. Every class that occurs needs at least two inputs; classes that do not occur
        get no component (``π_c = 0``).

        Returns:
            ``self``.
        """
        phi = self._features(features)
        n, d = phi.shape
        if labels is None:
            y = np.zeros(n, np.int64)
        else:
            check_labels(labels, n, num_classes if num_classes is not None else 2**62)
            y = host(labels).astype(np.int64)
        classes, counts = np.unique(y, return_counts=True)
        if counts.min() < 2:
            raise ValueError(
                f"every class needs at least 2 inputs for a covariance; class(es) {classes[counts < 2].tolist()} have 1"
            )
        # a tiny ridge keeps a class whose features are constant (dead units) defined
        floor = 1e-9 * max(float(phi.var(0).mean()), 1e-30)
        means, chols, amounts = [], [], []
        for c in classes:
            f = phi[y == c]
            mu = f.mean(0)
            cov, amount = _shrunk_covariance(f - mu, self.shrinkage)
            try:
                chol = np.linalg.cholesky(cov + floor * np.eye(d))
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"the covariance of class {int(c)}'s features is not positive definite with shrinkage="
                    f"{self.shrinkage!r}; use 'ledoit-wolf' or a larger amount"
                ) from None
            means.append(mu)
            chols.append(chol)
            amounts.append(amount)
        self.classes = classes
        self.means, self.chols = np.stack(means), np.stack(chols)
        self.log_weights = np.log(counts / n)
        self.shrinkages = np.asarray(amounts)
        return self

    def log_density(self, features: Array) -> np.ndarray:
        """``log q(φ)`` of each feature vector, ``[N]`` (numpy float64): higher = more like the training data."""
        if self.means.shape[0] == 0:
            raise RuntimeError("call fit(features, labels) before log_density/score")
        phi = self._features(features)
        d = self.means.shape[1]
        if phi.shape[1] != d:
            raise ValueError(f"features must have {d} columns, as in fit; got shape {tuple(phi.shape)}")
        comps = np.empty((self.means.shape[0], phi.shape[0]))
        for k, (mu, chol) in enumerate(zip(self.means, self.chols)):
            z = solve_triangular(chol, (phi - mu).T, lower=True, check_finite=False)  # [D, N]
            half_log_det = np.log(np.diagonal(chol)).sum()
            comps[k] = -0.5 * np.square(z).sum(0) - half_log_det - 0.5 * d * math.log(2 * math.pi)
        comps += self.log_weights[:, None]
        top = comps.max(0)
        return top + np.log(np.exp(comps - top).sum(0))

    def score(self, features: Array) -> np.ndarray:
        """The OOD score ``-log q(φ)``, ``[N]``: higher = more likely out of distribution (pass in- and
        out-of-distribution scores to :func:`uncertlr.metrics.ood_auroc`)."""
        return -self.log_density(features)

    def __repr__(self) -> str:
        return f"ClassGaussians(shrinkage={self.shrinkage!r}, components={self.means.shape[0]})"


def _shrunk_covariance(centred: np.ndarray, shrinkage: float | str) -> tuple[np.ndarray, float]:
    """``((1 - s) S + s tr(S)/D I, s)`` of centred rows ``[n, D]``: ``S = XᵀX / n``, ``s`` given or Ledoit-Wolf's.

    The Ledoit-Wolf amount is the estimate of Ledoit & Wolf (2004, "A well-conditioned estimator for
    large-dimensional covariance matrices"), written as scikit-learn's ``ledoit_wolf_shrinkage`` computes it.
    """
    n, d = centred.shape
    emp = centred.T @ centred / n
    mu = float(np.trace(emp)) / d
    if shrinkage == "ledoit-wolf" and d == 1:
        amount = 0.0  # one dimension: S is already a multiple of I (scikit-learn reports 0 too)
    elif shrinkage == "ledoit-wolf":
        sq = np.square(centred)
        delta_ = float(np.square(emp).sum())  # = ‖XᵀX‖²_F / n²
        beta_ = float((sq.T @ sq).sum())
        beta = (beta_ / n - delta_) / (d * n)
        delta = (delta_ - 2.0 * mu * float(np.trace(emp)) + d * mu**2) / d
        beta = min(beta, delta)
        amount = 0.0 if beta == 0 else beta / delta
    else:
        amount = float(shrinkage)
    return (1.0 - amount) * emp + amount * mu * np.eye(d), amount


class _Fold:
    """A network trained for one fold, as :func:`uncertlr.calibration.cross_fit_score_slope` takes it."""

    def __init__(self, owner: _TemperedByDensity, net: Any):
        self.owner, self.net = owner, net

    def predict(self, x: Array, num_samples: int = 1) -> Array:
        return self.owner._probs(self.net, x, num_samples)


class _TemperedByDensity(ABC):
    """What the torch and the JAX ``DensityTemperature`` share: the fit and the tempering, around four hooks
    a backend fills in (``_net``, ``_new_density``, ``_probs``, ``_trained``)."""

    _net: Any  # the user's network, in the form the hooks take

    def __init__(
        self,
        layers: str | Sequence[str] | None,
        per_layer: bool,
        bounds: tuple[float, float],
        shrinkage: float | str,
    ):
        # a list when named (a copy, and what a saved state holds), else None or "all"/"hidden"
        self.layers = layers if layers is None or isinstance(layers, str) else list(layers)
        self.per_layer, self.bounds, self.shrinkage = bool(per_layer), bounds, shrinkage
        self.density: Any = None
        self.temperature: ScoreTemperature | None = None
        self.cross_fitted = False

    @abstractmethod
    def _new_density(self, net: Any) -> Any:
        """An unfitted feature density of ``net``."""

    @abstractmethod
    def _probs(self, net: Any, x: Array, num_samples: int) -> Array:
        """``net``'s probabilities ``[S, N, C]`` for ``x``."""

    def _trained(self, trained: Any) -> Any:  # what the user's train() returned, as a network for the hooks
        return trained

    def _scores(self, density: Any) -> Callable[[Array], Any]:
        return density.layer_scores if self.per_layer else density.score

    def _fit(
        self,
        x: Array,
        y: Array,
        x_val: Array,
        y_val: Array,
        *,
        train: Callable[[Array, Array], Any] | None,
        folds: int,
        seed: int,
        num_samples: int,
        progress: bool,
    ) -> Any:
        density = self._new_density(self._net).fit(x, y)
        slope = None
        if train is not None:
            slope = cross_fit_score_slope(
                lambda xs, ys: _Fold(self, self._trained(train(xs, ys))),
                lambda m, xs, ys: self._scores(self._new_density(m.net).fit(xs, ys)),
                x,
                y,
                folds=folds,
                seed=seed,
                num_samples=num_samples,
                bounds=self.bounds,
                progress=progress,
            )
        self.temperature = fit_score_temperature(
            self._probs(self._net, x_val, num_samples),
            y_val,
            self._scores(density)(x_val),
            bounds=self.bounds,
            slope=slope,
        )
        self.density, self.cross_fitted = density, train is not None
        return self

    def _fitted(self) -> tuple[Any, ScoreTemperature]:
        if self.density is None or self.temperature is None:
            raise RuntimeError("call fit(x, y, x_val, y_val) before predict/temperatures")
        return self.density, self.temperature

    def _temperatures(self, x: Array) -> np.ndarray:
        density, temperature = self._fitted()
        return temperature.temperatures(self._scores(density)(x))

    def _predict(self, x: Array, num_samples: int) -> Array:
        density, temperature = self._fitted()
        return temperature(self._probs(self._net, x, num_samples), self._scores(density)(x))

    def __repr__(self) -> str:
        fitted = "unfitted" if self.temperature is None else f"cross_fitted={self.cross_fitted}"
        return f"DensityTemperature(layers={self.layers!r}, per_layer={self.per_layer}, {fitted})"
