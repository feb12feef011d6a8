"""Post-hoc calibration: temperature scaling for any classifier's predictive samples.

Temperature scaling (Guo et al., 2017) divides a classifier's logits by one number ``T``
fitted on held-out data; it fixes over- (``T > 1``) or under-confidence (``T < 1``) without
changing which class is predicted. Here it works on probabilities, so it serves every method
behind uncertlr's ``predict`` — deterministic nets (``[1, N, C]`` or ``[N, C]``), BNNs,
ensembles, MCMC — and keeps their ``[S, N, C]`` shape: each sample's log-probabilities are
divided by ``T`` and renormalised (for ``S = 1`` this is exactly classic temperature scaling,
since ``log softmax(z) = z - const``), and ``T`` minimises the NLL of the tempered model
average on the validation set.

:func:`fit_score_temperature` lets the temperature grow with an out-of-distribution score of each
input (a feature density's ``-log q``, an entropy, ...): ``T(x) = exp(a + b z(x))`` with ``b >= 0``
("density-aware" temperature scaling in the spirit of Tomani et al., 2023), so inputs unlike the
validation data are softened more, which a single temperature cannot do. How fast it should grow is
hard to learn from a validation split with few errors; :func:`fit_score_slope` fits the slope ``b`` on
cross-fitted (out-of-fold) predictions of the whole training set instead, and :func:`cross_fit_score_slope`
trains those cross-fitted models for you (:class:`uncertlr.torch.DensityTemperature` and
:class:`uncertlr.jax.DensityTemperature` do all of it for a network's feature density).

Example:
    >>> import numpy as np
    >>> from uncertlr.calibration import fit_temperature
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(500, 3)) * 4                     # an over-confident classifier
    >>> labels = np.array([rng.choice(3, p=np.exp(l / 4) / np.exp(l / 4).sum()) for l in logits])
    >>> probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    >>> t = fit_temperature(probs, labels)
    >>> bool(2.5 < t.value < 6.0), t(probs).shape
    (True, (500, 3))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from uncertlr._arrays import convert, host
from uncertlr._progress import progress_task
from uncertlr.likelihoods import check_labels
from uncertlr.metrics._checks import _check_probs

Array = Any

__all__ = [
    "NEVER_SHARPEN",
    "ScoreTemperature",
    "Temperature",
    "cross_fit_score_slope",
    "fit_score_slope",
    "fit_score_temperature",
    "fit_temperature",
]

#: ``bounds=`` for :func:`fit_temperature` that never sharpen (``1 <= T <= 20``): the safe fit for a model
#: average (a BNN, an ensemble, MC dropout) or any model that is already calibrated.
NEVER_SHARPEN: tuple[float, float] = (1.0, 20.0)


def _tempered(logp: Array, temperature: Any, xp: Any) -> Array:
    """Softmax of ``logp / T`` over the last axis (max-shifted)."""
    z = logp / temperature
    z = z - xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(z)
    return e / xp.sum(e, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Temperature:
    """A fitted temperature; call it on probabilities ``[S, N, C]`` or ``[N, C]`` of any array library.

    Attributes:
        value: ``T > 0`` (``T > 1`` softens over-confident predictions).
    """

    value: float

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not (
            isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0
        ):
            raise ValueError(f"the temperature must be a positive finite number; got {self.value!r}")

    def __call__(self, probs: Array) -> Array:
        """Tempered probabilities, same shape, dtype and library as ``probs``."""
        squeeze = getattr(probs, "ndim", 0) == 2
        xp, p = _check_probs(probs)
        tiny = xp.finfo(p.dtype).tiny
        out = _tempered(xp.log(xp.clip(p, tiny, None)), self.value, xp)
        return out[0] if squeeze else out


def _validation(
    probs: Array, labels: Array, bounds: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs[S, N, C], log probs, labels[N])`` on the host in float64/int64, checked; and the bounds checked."""
    lo, hi = bounds
    if not (0 < lo <= 1 <= hi < math.inf and lo < hi):
        raise ValueError(f"bounds must satisfy 0 < low <= 1 <= high < inf, low < high; got {bounds!r}")
    _, p = _check_probs(probs)
    probs64, y = host(p, np.float64), host(labels)
    check_labels(y, probs64.shape[1], probs64.shape[2])
    return probs64, np.log(np.clip(probs64, np.finfo(np.float64).tiny, None)), y.astype(np.int64)


def fit_temperature(
    probs: Array, labels: Array, *, bounds: tuple[float, float] = (0.05, 20.0)
) -> Temperature:
    """The temperature that minimises the NLL of the tempered model average on ``(probs, labels)``.

    Args:
        probs: validation predictions ``[S, N, C]`` (or ``[N, C]``) of any array library.
        labels: ``[N]`` integer labels.
        bounds: the search interval for ``T`` (a bounded 1-D search over ``log T``, on the host,
            in float64); it must contain 1. :data:`NEVER_SHARPEN`, ``(1.0, 20.0)``, never sharpens a
            model: the safer fit for a BNN (``benchmarks/shift.py``, digits: a free fit on 202 validation
            images sharpened one seed's BNN to ``T = 0.11`` and its NLL on corrupted inputs rose from 3.8
            to 21.5; kept at ``T >= 1``, 2.8).

    Returns:
        A :class:`Temperature` (apply it to the test predictions of the same model).

    Warns:
        UserWarning: when the fit ends at a bound of the search interval — typically a validation
            set with (almost) no errors, on which the NLL keeps falling as ``T`` shrinks; such a
            temperature sharpens the model and can make it badly over-confident under shift.
    """
    lo, hi = bounds
    probs64, logp, y = _validation(probs, labels, bounds)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        pbar = _tempered(logp, math.exp(log_t), np).mean(0)
        return float(-np.mean(np.log(np.clip(pbar[rows, y], np.finfo(np.float64).tiny, None))))

    res = minimize_scalar(nll, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-6})
    t = float(math.exp(res.x))
    # a bound of 1 is the user's "never sharpen" (or "never soften"): ending there is what they asked for
    at_lo = lo != 1 and res.x < math.log(lo) + 1e-2
    at_hi = hi != 1 and res.x > math.log(hi) - 1e-2
    if at_lo or at_hi:
        wrong = int((probs64.mean(0).argmax(-1) != y).sum())
        why = "as T shrinks, and the sharpened predictions can be badly over-confident on new data"
        warnings.warn(
            f"the fitted temperature {t:.3g} is at the {'lower' if at_lo else 'upper'} search bound "
            f"{lo if at_lo else hi:g}: with {wrong} misclassified of {len(y)} validation inputs the NLL keeps "
            f"falling {why if at_lo else 'as T grows'}; fit on a larger validation set, or narrow bounds= "
            "(e.g. (1.0, 20.0) to never sharpen)",
            UserWarning,
            stacklevel=2,
        )
    return Temperature(t)


@dataclass(frozen=True)
class ScoreTemperature:
    """A per-input temperature ``T(x) = clip(exp(a + b · (score - center) / scale), *bounds)``; call it on
    probabilities ``[S, N, C]`` (or ``[N, C]``) and the inputs' scores ``[N]`` (or ``[N, K]``: several scores,
    e.g. one per layer, each with its own slope).

    Attributes:
        a, b: the fitted intercept and slope (``b >= 0``: a more unusual input is never sharpened more);
            with ``K`` scores ``b``, ``center`` and ``scale`` are tuples of ``K`` floats.
        center, scale: the validation scores' mean and standard deviation (the scores are standardised by them).
        bounds: the range ``T`` is clipped to.
    """

    a: float
    b: float | tuple[float, ...]
    center: float | tuple[float, ...]
    scale: float | tuple[float, ...]
    bounds: tuple[float, float] = (0.05, 20.0)

    def temperatures(self, score: Array) -> np.ndarray:
        """``T`` of each input, ``[N]`` (numpy float64)."""
        z = (host(score, np.float64) - np.asarray(self.center)) / np.asarray(self.scale)
        with np.errstate(over="ignore"):
            return np.clip(np.exp(self.a + _weighted(z, self.b)), *self.bounds)

    def __call__(self, probs: Array, score: Array) -> Array:
        """Tempered probabilities, same shape, dtype and library as ``probs``."""
        squeeze = getattr(probs, "ndim", 0) == 2
        xp, p = _check_probs(probs)
        t = _check_score(score, p.shape[1], _width(self.b))
        temps = convert(self.temperatures(t), xp, p, "temperatures")
        tiny = xp.finfo(p.dtype).tiny
        out = _tempered(xp.log(xp.clip(p, tiny, None)), xp.astype(temps, p.dtype)[:, None], xp)
        return out[0] if squeeze else out


def _width(b: float | tuple[float, ...]) -> int | None:
    """How many score columns a slope takes: ``None`` for one score ``[N]``, ``K`` for ``[N, K]``."""
    return len(b) if isinstance(b, tuple) else None


def _weighted(z: np.ndarray, b: Any) -> np.ndarray:
    """``b · z`` per input: ``b z`` for scores ``[N]``, ``z @ b`` for ``[N, K]``."""
    return z @ np.asarray(b, dtype=np.float64) if z.ndim == 2 else b * z


def _check_score(score: Array, n: int, width: int | None = None) -> np.ndarray:
    """``score`` on the host as float64, ``[N]`` (``width=None``) or ``[N, K]``; any width when ``width`` is -1."""
    s = host(score, np.float64)
    ok = (
        s.shape == (n,)
        if width is None
        else (s.ndim == 2 and s.shape[0] == n and s.shape[1] >= 1 and (width == -1 or s.shape[1] == width))
    )
    if not ok:
        want = f"[N] = [{n}]" if width is None else f"[N, K] = [{n}, {'K' if width == -1 else width}]"
        raise ValueError(f"score must have shape {want}; got {tuple(s.shape)}")
    if not np.isfinite(s).all():
        raise ValueError("score holds NaN or inf")
    return s


def _as_tuple(x: np.ndarray, columns: bool) -> Any:
    """A fitted per-column vector as a tuple of floats (``[N, K]`` scores), a float otherwise."""
    return tuple(float(v) for v in np.atleast_1d(x)) if columns else float(np.asarray(x).reshape(()))


def fit_score_temperature(
    probs: Array,
    labels: Array,
    score: Array,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
    slope: float | Sequence[float] | None = None,
) -> ScoreTemperature:
    """A temperature that grows with each input's out-of-distribution ``score``, fitted by validation NLL.

    ``T(x) = exp(a + b z(x))``, ``z`` the score standardised by the validation scores' mean and standard
    deviation, ``b >= 0``; ``(a, b)`` minimise the NLL of the tempered model average on the validation set
    (L-BFGS-B on the host, in float64). With ``b = 0`` this is :func:`fit_temperature`. Several scores
    ``[N, K]`` (e.g. :meth:`uncertlr.torch.FeatureDensity.layer_scores`, one per layer) get one slope each,
    ``T(x) = exp(a + Σ_k b_k z_k(x))`` (Tomani et al., 2023). A clean validation set says little about
    *how fast* T should grow far from it (with few errors to learn from, the slope it fits is noisy), so
    check the result under shift, or fit the slope on more held-out predictions with
    :func:`fit_score_slope` and pass it as ``slope=``.

    Args:
        probs: validation predictions ``[S, N, C]`` (or ``[N, C]``) of any array library.
        labels: ``[N]`` integer labels.
        score: ``[N]`` OOD scores of the same inputs, higher = more unusual
            (e.g. :class:`uncertlr.torch.FeatureDensity`'s ``score``), or ``[N, K]``: K scores.
        bounds: the range of ``T`` (and of ``exp(a)``); it must contain 1.
        slope: fix ``b`` (``>= 0``, per standard deviation of the validation scores; K of them for
            ``[N, K]`` scores) and fit only ``a``, e.g. a slope from :func:`fit_score_slope`.

    Returns:
        A :class:`ScoreTemperature` (apply it to the test predictions and scores of the same model).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> score = rng.normal(size=600)                          # how unusual each input is
        >>> logits = rng.normal(size=(600, 3)) * 4
        >>> soft = 4 * np.exp(score)                              # the true temperature grows with it
        >>> labels = np.array([rng.choice(3, p=np.exp(l / t) / np.exp(l / t).sum()) for l, t in zip(logits, soft)])
        >>> probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        >>> cal = fit_score_temperature(probs, labels, score)
        >>> bool(cal.b > 0.5), cal(probs, score).shape
        (True, (600, 3))
        >>> two = fit_score_temperature(probs, labels, np.stack([score, rng.normal(size=600)], 1))
        >>> bool(two.b[0] > 0.5 > two.b[1])                     # the score that matters gets the slope
        True
    """
    lo, hi = bounds
    probs64, logp, y = _validation(probs, labels, bounds)
    columns = np.ndim(score) == 2
    s = _check_score(score, probs64.shape[1], -1 if columns else None)
    center = s.mean(0)
    scale = s.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (s - center) / scale
    k = s.shape[1] if columns else 1
    rows = np.arange(len(y))
    tiny = np.finfo(np.float64).tiny

    def nll(w: np.ndarray) -> float:
        with np.errstate(over="ignore"):
            t = np.clip(np.exp(w[0] + _weighted(z, w[1:] if columns else w[1])), lo, hi)
        pbar = _tempered(logp, t[None, :, None], np).mean(0)
        return float(-np.mean(np.log(np.clip(pbar[rows, y], tiny, None))))

    def result(a: float, b: np.ndarray) -> ScoreTemperature:
        return ScoreTemperature(
            float(a), _as_tuple(b, columns), _as_tuple(center, columns), _as_tuple(scale, columns), (lo, hi)
        )

    if slope is not None:
        b = np.asarray(slope, dtype=np.float64).reshape(-1)
        if (
            b.shape != (k,)
            or (np.ndim(slope) != 0) != columns
            or not (np.isfinite(b).all() and (b >= 0).all())
        ):
            want = f"{k} finite numbers >= 0 (one per score column)" if columns else "a finite number >= 0"
            raise ValueError(f"slope must be {want}; got {slope!r}")
        fixed = minimize_scalar(
            lambda a: nll(np.concatenate([[a], b])),
            bounds=(math.log(lo), math.log(hi)),
            method="bounded",
            options={"xatol": 1e-6},
        )
        return result(fixed.x, b)
    with warnings.catch_warnings():  # only a starting point: its bound warning is not the user's concern
        warnings.simplefilter("ignore")
        start = math.log(fit_temperature(probs64, y, bounds=bounds).value)
    res = minimize(
        nll,
        np.concatenate([[start], np.zeros(k)]),
        method="L-BFGS-B",
        bounds=[(math.log(lo), math.log(hi))] + [(0.0, 5.0)] * k,
    )
    return result(res.x[0], res.x[1:])


def fit_score_slope(
    probs: Array,
    labels: Array,
    score: Array,
    folds: Array,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float | tuple[float, ...]:
    """The slope ``b`` of a :class:`ScoreTemperature`, fitted on out-of-fold predictions of several models.

    A validation split holds few errors, so the slope :func:`fit_score_temperature` fits on it is noisy. With
    K-fold cross-fitting every training input is predicted once by a model that did not train on it: pass
    those predictions, their labels, their scores and which fold (model) produced each. The scores are
    standardised within each fold (each model's scores on its own held-out inputs, as
    :func:`fit_score_temperature` standardises a validation set), then one ``(a, b)`` is fitted on all of
    them; the slope carries over to your final model, whose intercept you fit on its own validation part:
    ``fit_score_temperature(probs_val, y_val, score_val, slope=b)``.

    Args:
        probs: out-of-fold predictions ``[S, N, C]`` (or ``[N, C]``), of any array library.
        labels: ``[N]`` integer labels.
        score: ``[N]`` OOD scores of the same inputs, each from the model that predicted it; or ``[N, K]``,
            K scores (e.g. one per layer), each standardised on its own and given its own slope.
        folds: ``[N]`` fold (model) ids.
        bounds: the range of ``T``, as in :func:`fit_score_temperature`.

    Returns:
        ``b >= 0``, per standard deviation of held-out scores (a tuple of K for ``[N, K]`` scores).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> folds = np.repeat(np.arange(3), 300)
        >>> z = rng.normal(size=900)
        >>> score = 10.0 * folds + (1.0 + folds) * z      # each model scores on its own scale
        >>> logits = rng.normal(size=(900, 3)) * 4
        >>> soft = 4 * np.exp(z)                            # the true temperature grows with z
        >>> labels = np.array([rng.choice(3, p=np.exp(l / t) / np.exp(l / t).sum()) for l, t in zip(logits, soft)])
        >>> probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        >>> bool(fit_score_slope(probs, labels, score, folds) > 0.5)
        True
    """
    s = host(score, np.float64)
    f = host(folds)  # any hashable ids: ints, strings
    if s.ndim not in (1, 2) or f.shape != s.shape[:1] or f.ndim != 1:
        raise ValueError(
            f"score must have shape [N] or [N, K] and folds [N]; got {tuple(s.shape)} and {tuple(f.shape)}"
        )
    z = np.empty_like(s)
    for k in np.unique(f):
        part = s[f == k]
        if len(part) < 2:
            raise ValueError(
                f"fold {k} holds {len(part)} input(s); each fold needs at least 2 to standardise"
            )
        sd = part.std(0)
        z[f == k] = (part - part.mean(0)) / np.where(sd > 0, sd, 1.0)
    return fit_score_temperature(probs, labels, z, bounds=bounds).b


def cross_fit_score_slope(
    train: Callable[[Any, Any], Any],
    score: Callable[[Any, Any, Any], Any],
    x: Array,
    y: Array,
    *,
    folds: int = 5,
    seed: int = 0,
    num_samples: int = 1,
    bounds: tuple[float, float] = (0.05, 20.0),
    progress: bool = True,
) -> Any:
    """Train ``folds`` models by ``train``, each without one fold of ``(x, y)``, and fit a score temperature's
    slope on their held-out predictions (:func:`fit_score_slope`).

    Every input is predicted once, by the model that did not see it, so the slope learns from as many
    held-out errors as the training set holds instead of the few in a validation split. Backend-neutral:
    models and scores may be torch, JAX or numpy.

    Args:
        train: ``train(x, y)`` returns a fresh model trained on that part the way your final model was
            trained, with ``predict(x, num_samples=S)`` returning probabilities ``[S, N, C]`` or ``[N, C]``
            (seed inside it for reproducible runs).
        score: ``score(model, x, y)`` returns the scoring function of a model trained on ``(x, y)``: a
            callable ``x -> [N]`` (or ``[N, K]``: one slope per column) OOD scores, e.g.
            ``lambda m, x, y: FeatureDensity(m, layers="all").fit(x, y).score``; or a mapping of names to
            such callables, to fit one slope per named score from the same models.
        x: inputs ``[N, ...]`` of any array library that takes a boolean numpy mask as an index.
        y: ``[N]`` integer labels, same library.
        folds: how many models (``>= 2``, at most one per input).
        seed: the seed of the random fold assignment (``folds`` near-equal parts).
        num_samples: posterior samples ``S`` per prediction (1 for a deterministic net).
        bounds: the range of ``T``, as in :func:`fit_score_temperature`.
        progress: show a progress bar (one step per trained model).

    Returns:
        The slope ``b`` (a float, or a tuple of K for ``[N, K]`` scores), or a dict of them by score name.
        Pass it to ``fit_score_temperature(probs_val, y_val, score_val, slope=b)`` for your final model.

    Raises:
        ValueError: ``folds`` out of range, ``x`` and ``y`` of different lengths, or a model's predictions or
            scores of the wrong shape (with the fold named).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(900, 2))            # column 0: the logit scale; column 1: how unusual
        >>> soft = 4 * np.exp(x[:, 1])               # the true temperature grows with column 1
        >>> logits = np.stack([4 * x[:, 0], -4 * x[:, 0]], 1)
        >>> y = np.array([rng.choice(2, p=np.exp(l / t) / np.exp(l / t).sum()) for l, t in zip(logits, soft)])
        >>> class Fixed:                             # a "model" that needs no training
        ...     def predict(self, x, num_samples=1):
        ...         z = np.stack([4 * x[:, 0], -4 * x[:, 0]], 1)
        ...         return np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        >>> b = cross_fit_score_slope(lambda x, y: Fixed(), lambda m, x, y: (lambda x: x[:, 1]), x, y,
        ...                           progress=False)
        >>> bool(b > 0.5)
        True
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2; got {folds!r}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y must have one row per input; got {n} and {len(y)}")
    if folds > n:
        raise ValueError(f"folds={folds} exceeds the {n} inputs: each fold needs at least one")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1; got {num_samples!r}")
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    labels = host(y)
    probs: list[np.ndarray] = []
    scores: dict[Any, list[np.ndarray]] = {}
    named = True
    with progress_task(progress, "cross-fitted slope", folds) as advance:
        for k in range(folds):
            held = fold_of == k
            x_fit, y_fit = x[~held], y[~held]
            model = train(x_fit, y_fit)
            _, p = _check_probs(
                model.predict(x[held], num_samples=num_samples), f"fold {k}: predict's probabilities"
            )
            p = host(p, np.float64)
            if p.shape[1] != int(held.sum()):
                raise ValueError(
                    f"fold {k}: predict returned {p.shape[1]} predictions for {int(held.sum())} inputs"
                )
            probs.append(p)
            scorer = score(model, x_fit, y_fit)
            named = isinstance(scorer, Mapping)
            for key, fn in scorer.items() if named else [(None, scorer)]:
                s = host(fn(x[held]), np.float64)
                if s.shape[:1] != (p.shape[1],) or s.ndim not in (1, 2):
                    raise ValueError(
                        f"fold {k}: score {key!r} returned shape {tuple(s.shape)} for {p.shape[1]} inputs; "
                        "want [N] or [N, K]"
                    )
                scores.setdefault(key, []).append(s)
            advance()
    sizes = {len(v) for v in scores.values()}
    if sizes != {folds}:
        raise ValueError("score must return the same score names for every fold")
    if len({q.shape[0] for q in probs}) > 1:
        raise ValueError(
            f"every fold's model must return as many samples S; got {[q.shape[0] for q in probs]}"
        )
    order = np.concatenate([np.flatnonzero(fold_of == k) for k in range(folds)])
    p_all, y_all, f_all = np.concatenate(probs, axis=1), labels[order], fold_of[order]
    slopes = {
        key: fit_score_slope(p_all, y_all, np.concatenate(parts), f_all, bounds=bounds)
        for key, parts in scores.items()
    }
    return slopes if named else slopes[None]
