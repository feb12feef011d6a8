"""The methods of ``benchmarks/lr_robustness.py``: one :class:`Run` per (method, base LR, seed).

Deterministic baselines train the task's network (a classifier by cross-entropy; a regressor
by Gaussian likelihood with a learned homoskedastic noise std), Bayesian ones the same network
made Bayesian by ``uncertlr.torch.bayesian`` (N(0, 1) prior, the task's KL weight). The base LR
is constant unless the method itself changes it (a schedule, a controller). LR-free
optimizers take the grid value as a multiplier of their default: ``lr / 1e-3`` (Prodigy, DoG;
1e-3 on the grid = their default of 1.0); Schedule-Free AdamW and IVON take the grid value as
their learning rate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uncertlr import likelihoods, priors
from uncertlr.modulation import LayerScaleCap, Product, Ratio, UncertaintyPlateau, UncertaintyWarmup
from uncertlr.torch import Modulator, batch_entropy, batch_predictive_variance, bayesian, elbo_signal

__all__ = ["DETERMINISTIC", "METHODS", "MODULATED", "Run"]

DETERMINISTIC = (
    "adam-constant",
    "adam-cosine",
    "adam-plateau(val)",
    "schedulefree",
    "prodigy",
    "dog",
    "ivon",
    "adam+uplateau",
)
BAYESIAN = (
    "bnn",
    "bnn+g1",
    "bnn+uplateau",
    "bnn+uwarmup+uplateau",
    "bnn+scalecap",
    "bnn+uplateau+scalecap",
    "bnn+lr-matched",
)
METHODS = DETERMINISTIC + BAYESIAN
#: Methods whose step a Modulator scales (the ``modulated`` flag of the JSON summary).
MODULATED = (
    "adam+uplateau",
    "bnn+g1",
    "bnn+uplateau",
    "bnn+uwarmup+uplateau",
    "bnn+scalecap",
    "bnn+uplateau+scalecap",
)
#: The per-layer trust region on the posterior log-std of the ``+scalecap`` variants.
SCALE_CAP = 1e-3
#: Needs the optional ``bench`` extra.
OPTIONAL = {"schedulefree": "schedulefree", "prodigy": "prodigyopt", "dog": "dog", "ivon": "ivon"}


def plateau(patience: int) -> UncertaintyPlateau:
    """The armed uncertainty plateau of the prototype (patience = cooldown = ``patience`` steps)."""
    return UncertaintyPlateau(factor=0.5, patience=patience, cooldown=patience, arm=0.9, decay=0.9)


class PointRegressor(nn.Module):
    """A deterministic regressor with a learned homoskedastic noise std (maximum likelihood)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.log_noise = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Run:
    """One training run. ``step(xb, yb)`` trains a minibatch; ``predict(x, S)`` returns
    ``[S, N, C]`` probabilities (classification) or ``(mean [S, N, 1], variance [S, N, 1])``."""

    def __init__(
        self, method: str, lr: float, task: Any, *, num_data: int, total_steps: int, matched_lr=None
    ):
        self.method, self.task, self.regression = method, task, task.regression
        self.sched = self.plateau_sched = self.mod = self.bnn = None
        self.signal_kind = None
        net = task.make_net()
        patience = task.patience_epochs * task.steps_per_epoch(num_data)
        if method in DETERMINISTIC:
            self.model: nn.Module = PointRegressor(net) if self.regression else net
            params = list(self.model.parameters())
            if method == "schedulefree":
                import schedulefree

                self.opt = schedulefree.AdamWScheduleFree(params, lr=lr)
            elif method == "prodigy":
                import prodigyopt

                self.opt = prodigyopt.Prodigy(params, lr=lr / 1e-3)
            elif method == "dog":
                import dog

                self.opt = dog.DoG(params, lr=lr / 1e-3)
            elif method == "ivon":
                import ivon

                self.opt = ivon.IVON(params, lr=lr, ess=num_data)
            else:
                self.opt = torch.optim.Adam(params, lr=lr)
            if method == "adam-cosine":
                self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, total_steps)
            elif method == "adam-plateau(val)":
                # one epoch of patience, like the uncertainty plateau (counted in epochs here)
                self.plateau_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    self.opt, factor=0.5, patience=task.patience_epochs, cooldown=task.patience_epochs
                )
            elif method == "adam+uplateau":
                self.mod = Modulator(plateau(patience)).attach(self.opt)
                self.signal_kind = "output"
        else:
            lik = likelihoods.Normal() if self.regression else likelihoods.Categorical()
            self.bnn = bayesian(net, num_data=num_data, prior=priors.Normal(1.0), likelihood=lik,
                                kl_weight=task.kl_weight, init_scale=1e-3)  # fmt: skip
            self.model = self.bnn
            base = matched_lr if method == "bnn+lr-matched" else lr
            self.opt = torch.optim.Adam(self.bnn.parameters(), lr=base)
            rule: Any = None
            if method == "bnn+g1":
                rule = Ratio(kappa=-0.5)
            elif method in ("bnn+uplateau", "bnn+uplateau+scalecap"):
                rule = plateau(patience)
            elif method == "bnn+uwarmup+uplateau":
                horizon = 2 * task.steps_per_epoch(num_data)
                rule = Product(
                    (UncertaintyWarmup(start=0.1, release=0.5, horizon=horizon), plateau(patience))
                )
            variance = LayerScaleCap(max_step=SCALE_CAP) if method.endswith("+scalecap") else None
            if rule is not None or variance is not None:
                sigma = self.bnn if variance is not None else None
                self.mod = Modulator(rule, variance=variance, sigma=sigma).attach(self.opt)
            if rule is not None:
                self.signal_kind = "elbo"
                self._elbo_signal = elbo_signal(self.bnn)

    # ------------------------------------------------------------------ training

    def _loss(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Any]:
        if self.bnn is not None:
            terms = self.bnn.elbo(xb, yb)
            return terms.loss, terms
        out = self.model(xb)
        if self.regression:
            return -likelihoods.normal_log_prob(yb, out, self.model.log_noise.exp()).mean(), out
        return F.cross_entropy(out, yb), out

    def step(self, xb: Tensor, yb: Tensor) -> float:
        self.opt.zero_grad()
        if self.method == "ivon":
            with self.opt.sampled_params(train=True):
                loss, _ = self._loss(xb, yb)
                loss.backward()
        else:
            loss, extra = self._loss(xb, yb)
            loss.backward()
            if self.signal_kind is not None:
                self.mod.observe(self._signal(loss, extra))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss {value}")
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        return value

    def _signal(self, loss: Tensor, extra: Any) -> Tensor:
        if self.signal_kind == "elbo":
            return self._elbo_signal(extra)
        if self.regression:  # deterministic regressor: its noise variance (no epistemic part)
            return batch_predictive_variance(extra.detach()[None], self.model.log_noise.exp())
        return batch_entropy(extra)

    def train_mode(self, on: bool) -> None:
        """Schedule-Free keeps two sequences: evaluate at the averaged one."""
        if self.method == "schedulefree":
            (self.opt.train if on else self.opt.eval)()

    def end_epoch(self, val_loss: float | None) -> None:
        if self.plateau_sched is not None and val_loss is not None:
            self.plateau_sched.step(val_loss)

    def factors(self) -> list[float]:
        """The applied factor of every step (empty for unmodulated methods)."""
        if self.mod is None:
            return []
        return [r.get("scale", 1.0) for r in self.mod.history]

    def variance_factors(self) -> list[float]:
        """The mean per-layer factor on the posterior log-std step, every step (``+scalecap`` only)."""
        if self.mod is None:
            return []
        return [r["variance_scale"] for r in self.mod.history if "variance_scale" in r]

    # ------------------------------------------------------------------ prediction

    @torch.no_grad()
    def predict(self, x: Tensor, num_samples: int) -> Any:
        if self.bnn is not None:
            out = self.bnn.predict(x, num_samples=num_samples)
            return (out.mean, out.variance) if self.regression else out
        self.model.eval()
        try:
            if self.method == "ivon":
                outs = []
                for _ in range(num_samples):
                    with self.opt.sampled_params():
                        outs.append(self.model(x))
                out = torch.stack(outs)
            else:
                out = self.model(x)[None]
        finally:
            self.model.train()
        if self.regression:
            return out, torch.exp(2 * self.model.log_noise).expand_as(out)
        return torch.softmax(out, -1)

    @torch.no_grad()
    def val_loss(self, x: Tensor, y: Tensor) -> float:
        """Mean validation NLL of the point prediction (the plateau baseline's monitor)."""
        self.model.eval()
        try:
            out = self.model(x)
        finally:
            self.model.train()
        if self.regression:
            return float(-likelihoods.normal_log_prob(y, out, self.model.log_noise.exp()).mean())
        return float(F.cross_entropy(out, y))
