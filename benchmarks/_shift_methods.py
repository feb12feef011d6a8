"""The methods of ``benchmarks/shift.py``: how each is built and trained, and how its predictions are scored.

Every method ends as ``predict(x) -> [S, N, C]`` probabilities (or a ``NormalPrediction``), the
library's one interface. Last-layer Laplace is fitted on the trained deterministic network
(no training of its own); ``<method>+ts`` is the same predictions after temperature scaling
fitted on a validation split (:func:`uncertlr.calibration.fit_temperature`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from uncertlr import likelihoods, metrics, priors, runfolder
from uncertlr.calibration import cross_fit_score_slope
from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch import (
    FeatureDensity,
    LastLayerLaplace,
    PointNetwork,
    bayesian,
    deep_ensemble,
    fit,
    mc_dropout,
)

METHODS = ("deterministic", "mc-dropout", "ensemble", "laplace", "bnn", "bnn-lowrank", "bnn-ensemble")


@dataclass(frozen=True)
class Config:
    """Training settings of one task (every method gets the same data, batches and budget per member)."""

    hidden: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    batch_size: int = 64
    det_epochs: int = 60
    det_lr: float = 3e-3
    # L2 weight decay (Adam's coupled form) of the non-Bayesian nets: deterministic, MC dropout, ensemble
    # members; last-layer Laplace reuses the deterministic net, so it is then a Laplace around a MAP estimate
    det_weight_decay: float = 0.0
    bnn_epochs: int = 150
    bnn_lr: float = 1e-2
    kl_weight: float = 0.1
    prior_scale: float = 1.0
    init_scale: float = 1e-3
    rank: int = 10
    dropout: float = 0.1
    ensemble_size: int = 5
    bnn_ensemble_size: int = 3
    num_samples: int = 32
    time_pool: int = 1  # FSDD: average this many log-mel frames into one (input 40 x 64 / time_pool)
    # > 0: the deterministic net's density temperatures also get a slope fitted on this many folds' out-of-fold
    # predictions of the training data (calibration.fit_score_slope; rows "deterministic+density-ts-cv")
    slope_folds: int = 0


@dataclass
class Fitted:
    """A trained method: ``predict(x)`` and what training cost."""

    predict: Callable[[torch.Tensor], Any]
    train_seconds: float
    # OOD scores of its own by name ([N] numpy, higher = more unusual), e.g. feature densities
    ood_scores: dict[str, Callable[[torch.Tensor], np.ndarray]] = field(default_factory=dict)
    ood_score_seconds: float = 0.0  # fitting them, after training
    # several scores per input by name ([N, K] numpy: one per layer), only for per-layer density temperatures
    layer_scores: dict[str, Callable[[torch.Tensor], np.ndarray]] = field(default_factory=dict)
    # slopes of their density temperatures from cross-fitted models (Config.slope_folds), by score name
    # (a tuple of K slopes for a layer score)
    score_slopes: dict[str, float | tuple[float, ...]] = field(default_factory=dict)

    def temperature_scores(self) -> dict[str, Callable[[torch.Tensor], np.ndarray]]:
        """Every score a density temperature is fitted on: ``ood_scores`` and ``layer_scores``."""
        return {**self.ood_scores, **self.layer_scores}


def _fit(
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    cfg: Config,
    seed: int,
    weight_decay: float = 0.0,
) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * math.ceil(len(x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    t0 = time.perf_counter()
    fit(
        model.elbo,
        opt,
        x,
        y,
        epochs=epochs,
        batch_size=cfg.batch_size,
        scheduler=sched,
        generator=torch.Generator().manual_seed(seed),
        progress=False,
    )
    return time.perf_counter() - t0


def _predictor(model: Any, num_samples: int) -> Callable[[torch.Tensor], Any]:
    def predict(x: torch.Tensor) -> Any:
        with torch.no_grad():
            parts = [model.predict(c, num_samples=num_samples) for c in x.split(2048)]
        if isinstance(parts[0], NormalPrediction):
            return NormalPrediction(*(torch.cat(t, dim=1) for t in zip(*parts)))
        return torch.cat(parts, dim=1)

    return predict


def train_methods(
    methods: tuple[str, ...],
    net: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: Config,
    *,
    seed: int,
    regression: bool = False,
    advance: Callable[..., None] = lambda *a, **k: None,
) -> dict[str, Fitted]:
    """Train ``methods`` on ``(x, y)`` from ``net()`` seeded with ``seed``; Laplace reuses the deterministic net."""
    lik = "normal" if regression else "categorical"
    out: dict[str, Fitted] = {}

    def bnn(guide: str = "meanfield") -> Any:
        return bayesian(
            net(),
            num_data=len(x),
            prior=priors.Normal(cfg.prior_scale),
            likelihood=likelihoods.Normal() if regression else likelihoods.Categorical(),
            kl_weight=cfg.kl_weight,
            init_scale=cfg.init_scale,
            guide=guide,
            rank=cfg.rank if guide == "lowrank" else None,
        )

    det = None
    for name in methods:
        torch.manual_seed(seed)
        if name == "laplace":
            if det is None:
                raise ValueError("laplace needs 'deterministic' earlier in the list of methods")
            t0 = time.perf_counter()
            la = LastLayerLaplace(det).fit(x, y)
            out[name] = Fitted(
                _predictor(la, cfg.num_samples), out["deterministic"].train_seconds + time.perf_counter() - t0
            )
        else:
            if name == "deterministic":
                model: Any = PointNetwork(net(), lik)
                epochs, lr = cfg.det_epochs, cfg.det_lr
                det = model
            elif name == "mc-dropout":
                model, epochs, lr = (
                    mc_dropout(net(), p=cfg.dropout, likelihood=lik),
                    cfg.det_epochs,
                    cfg.det_lr,
                )
            elif name == "ensemble":
                model = deep_ensemble(net, size=cfg.ensemble_size, seed=seed * 1000, likelihood=lik)
                epochs, lr = cfg.det_epochs, cfg.det_lr
            elif name == "bnn":
                model, epochs, lr = bnn(), cfg.bnn_epochs, cfg.bnn_lr
            elif name == "bnn-lowrank":
                model, epochs, lr = bnn("lowrank"), cfg.bnn_epochs, cfg.bnn_lr
            elif name == "bnn-ensemble":
                model = deep_ensemble(bnn, size=cfg.bnn_ensemble_size, seed=seed * 1000 + 500)
                epochs, lr = cfg.bnn_epochs, cfg.bnn_lr
            else:
                raise ValueError(f"unknown method {name!r}; known: {METHODS}")
            wd = 0.0 if name.startswith("bnn") else cfg.det_weight_decay
            secs = _fit(model, x, y, epochs=epochs, lr=lr, cfg=cfg, seed=seed, weight_decay=wd)
            out[name] = Fitted(_predictor(model, cfg.num_samples), secs)
            # feature densities (one per ensemble member), as more OOD scores
            if name in ("deterministic", "ensemble") and not regression:
                t0 = time.perf_counter()
                for key, layers in (("density", None), ("density-all", "all")):
                    density = FeatureDensity(model, layers=layers).fit(x, y)
                    out[name].ood_scores[key] = lambda x, d=density: d.score(x).numpy()
                if name == "deterministic" and len(density.layer_names) > 1:
                    # each hidden layer's own score (every Linear input but the network's own input), one
                    # slope per layer: rows "deterministic+density-hidden-ts(-cv)"
                    out[name].layer_scores["density-hidden"] = lambda x, d=density: d.layer_scores(x)[
                        :, 1:
                    ].numpy()
                out[name].ood_score_seconds = time.perf_counter() - t0
            if name == "deterministic" and cfg.slope_folds > 0 and not regression:
                out[name].score_slopes = cross_fitted_slopes(net, x, y, cfg, seed=seed, advance=advance)
        advance(description=f"trained {name}")
    return out


def cross_fitted_slopes(
    net: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: Config,
    *,
    seed: int,
    advance: Callable[..., None] = lambda *a, **k: None,
) -> dict[str, float]:
    """The density temperatures' slopes from ``cfg.slope_folds`` ``deterministic`` nets (and their densities),
    each trained by :func:`train_methods` without one fold of ``(x, y)``, predicting and scoring that fold
    (:func:`uncertlr.calibration.cross_fit_score_slope`, one slope per score name from the same nets);
    ``advance`` ticks once per net (``shift.py`` counts them in its progress total)."""
    one_net = replace(cfg, slope_folds=0)
    trained = 0

    def train(xs: torch.Tensor, ys: torch.Tensor) -> Any:
        nonlocal trained
        f = train_methods(("deterministic",), net, xs, ys, one_net, seed=seed)["deterministic"]
        trained += 1
        advance(description=f"slope net {trained}/{cfg.slope_folds}")
        return _Scored(f)

    return cross_fit_score_slope(  # type: ignore[no-any-return]
        train,
        lambda m, xs, ys: m.fitted.temperature_scores(),
        x,
        y,
        folds=cfg.slope_folds,
        seed=40_000 + seed,
        progress=False,
    )


@dataclass
class _Scored:
    """A trained method as :func:`uncertlr.calibration.cross_fit_score_slope` takes it: ``predict(x, num_samples)``."""

    fitted: Fitted

    def predict(self, x: torch.Tensor, num_samples: int = 1) -> Any:
        return self.fitted.predict(x)


# --------------------------------------------------------------------------- scores


def aurc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the risk-coverage curve (selective classification by max mean probability; lower is better).

    Inputs are sorted by confidence; the risk at coverage ``k/N`` is the error rate of the ``k``
    most confident; AURC is the mean of those risks over ``k = 1..N``. ``probs`` is ``[S, N, C]`` or the
    mean prediction ``[N, C]``.
    """
    pbar = probs.mean(0) if probs.ndim == 3 else probs
    conf = pbar.max(-1)
    wrong = (pbar.argmax(-1) != labels).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    risks = np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)
    return float(risks.mean())


def classification_scores(probs: Any, labels: np.ndarray) -> dict[str, float]:
    """accuracy, NLL, Brier, ECE (15 bins) and AURC of ``probs[S, N, C]``."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(-1, keepdims=True)
    return {
        "accuracy": float(metrics.accuracy(p, labels)),
        "nll": float(metrics.nll(p, labels)),
        "brier": float(metrics.brier(p, labels)),
        "ece": float(metrics.ece(p, labels)),
        "aurc": aurc(p, labels),
    }


def ood_scores(p_in: Any, p_out: Any) -> dict[str, float]:
    """OOD AUROC of predictive entropy (``auroc``) and of mutual information (``auroc_mi``)."""
    a, b = np.asarray(p_in, np.float64), np.asarray(p_out, np.float64)
    out = {"auroc": float(metrics.ood_auroc(metrics.predictive_entropy(a), metrics.predictive_entropy(b)))}
    if a.shape[0] > 1:
        out["auroc_mi"] = float(
            metrics.ood_auroc(metrics.mutual_information(a), metrics.mutual_information(b))
        )
    return out


def regression_scores(
    pred: NormalPrediction, targets: np.ndarray, y_loc: float, y_scale: float
) -> dict[str, float]:
    """RMSE, NLL, 90% coverage in the targets' original units."""
    p = NormalPrediction(*(t.double().numpy()[..., 0] for t in pred)).rescale(loc=y_loc, scale=y_scale)
    s = runfolder.regression_summary(p, targets[:, 0] * y_scale + y_loc)
    return {k: s[k] for k in ("rmse", "nll", "coverage_90", "width_90", "epistemic_std")}
