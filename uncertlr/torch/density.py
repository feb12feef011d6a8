"""Feature-space density: an out-of-distribution score from a trained network's features.

Gaussian discriminant analysis on the input ``φ(x)`` of the network's last ``nn.Linear`` layer
(the "deep deterministic uncertainty" recipe, Mukhoti et al., CVPR 2023): one Gaussian per class,
``q(φ) = Σ_c π_c N(φ; μ_c, Σ_c)``, fitted once on the training set after training (class
frequencies ``π_c``, class means and Ledoit-Wolf shrunk covariances, float64). The score of an input is
``-log q(φ(x))``: inputs whose features lie away from every class's training features score
high, also when the softmax is confidently wrong about them, which is where predictive entropy
fails on near out-of-distribution inputs (BENCHMARKS.md, "Feature density for near-OOD").

It needs no change to training and no sampling: one forward pass per input. It scores; it does not
change the predictions (use the network's own, or any other method's ``predict``, beside it).

Example:
    >>> import torch
    >>> from uncertlr.torch import FeatureDensity
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> x, y = torch.randn(300, 4), torch.randint(0, 3, (300,))
    >>> density = FeatureDensity(net).fit(x, y)
    >>> score = density.score(torch.cat([x[:5], 50 * x[:5]]))   # [N]: higher = more unusual
    >>> bool(score[5:].min() > score[:5].max())
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from uncertlr.likelihoods import check_labels
from uncertlr.torch._features import last_linear, layer_input
from uncertlr.torch.ensemble import PointNetwork

__all__ = ["FeatureDensity"]

_WHAT = "a feature density"


class FeatureDensity(nn.Module):
    """Class-conditional Gaussians over the features the last ``nn.Linear`` layer of a trained network sees.

    The network is not copied: :meth:`fit` and :meth:`score` read its current features; refit after
    training it further. Fitted statistics are buffers, so ``state_dict`` saves them.

    Args:
        model: the trained network (its output must be the last Linear layer's output), or a
            :class:`~uncertlr.torch.PointNetwork`.
        last_layer: the Linear layer whose input are the features (default: the last ``nn.Linear``
            in ``named_modules()``).
        shrinkage: how each class covariance is estimated from its features: ``"ledoit-wolf"`` (the
            default) shrinks the sample covariance ``S`` towards ``μ I`` (``μ = tr(S)/D``) by the
            Ledoit-Wolf (2004) estimate of the best amount, ``Σ = (1 - s) S + s μ I``, so classes with
            fewer inputs than feature dimensions still get a well-conditioned density; a number ``s`` in
            ``[0, 1]`` fixes the amount. ``S`` is the maximum-likelihood covariance (divided by the
            class size), as in scikit-learn's ``ledoit_wolf``/``ShrunkCovariance``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        >>> d = FeatureDensity(net).fit(torch.randn(50, 4), torch.randint(0, 2, (50,)))
        >>> tuple(d.log_density(torch.randn(7, 4)).shape)
        (7,)
    """

    means: Tensor
    chols: Tensor
    log_weights: Tensor
    shrinkages: Tensor

    def __init__(
        self, model: nn.Module, *, last_layer: str | None = None, shrinkage: float | str = "ledoit-wolf"
    ):
        super().__init__()
        if isinstance(model, PointNetwork):
            model = model.net
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if shrinkage != "ledoit-wolf" and (
            isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 <= shrinkage <= 1
        ):
            raise ValueError(f"shrinkage must be 'ledoit-wolf' or a number in [0, 1]; got {shrinkage!r}")
        # a plain attribute, not a submodule: the density's state_dict holds only what fit() estimated
        self.__dict__["net"] = model
        self.layer_name, layer = last_linear(model, last_layer, _WHAT)
        self.__dict__["layer"] = layer
        self.shrinkage = shrinkage if isinstance(shrinkage, str) else float(shrinkage)
        d = self.layer.in_features
        self.register_buffer("means", torch.zeros(0, d, dtype=torch.float64))
        self.register_buffer("chols", torch.zeros(0, d, d, dtype=torch.float64))
        self.register_buffer("log_weights", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("shrinkages", torch.zeros(0, dtype=torch.float64))  # per class, as fitted

    def features(self, x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """``φ(x)``: the last Linear layer's input ``[N, D]`` (float64), in eval mode without gradients."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"x must hold at least one input [N, ...]; got shape {tuple(x.shape)}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError("x holds NaN or inf")
        parts = [
            layer_input(self.net, self.layer, self.layer_name, xb, _WHAT)[0] for xb in x.split(batch_size)
        ]
        phi = torch.cat(parts).double()
        if not bool(torch.isfinite(phi).all()):
            raise ValueError("the network's features of x are not finite (inputs too large for the network?)")
        return phi

    def fit(self, x: Tensor, y: Tensor | None = None, *, batch_size: int = 1024) -> FeatureDensity:
        """Fit one Gaussian per class (``y``: labels ``[N]``) or, with ``y=None``, one Gaussian (regression).

        Every class that occurs in ``y`` needs at least two inputs; classes that do not occur get no
        component (``π_c = 0``).

        Returns:
            ``self``.
        """
        phi = self.features(x, batch_size=batch_size)
        n, d = phi.shape
        if y is None:
            labels = torch.zeros(n, dtype=torch.long)
        else:
            if not isinstance(y, Tensor):
                raise TypeError(f"y must be a torch.Tensor of class labels; got {type(y).__name__}")
            check_labels(y, n, self.layer.out_features)
            labels = y.long().cpu()
        phi = phi.cpu()
        classes, counts = torch.unique(labels, return_counts=True)
        if int(counts.min()) < 2:
            few = classes[counts < 2].tolist()
            raise ValueError(f"every class needs at least 2 inputs for a covariance; class(es) {few} have 1")
        means, chols, amounts = [], [], []
        eye = torch.eye(d, dtype=torch.float64)
        # a tiny ridge keeps a class whose features are constant (dead units) defined
        floor = 1e-9 * max(float(phi.var(0).mean()), 1e-30)
        for c in classes.tolist():
            f = phi[labels == c]
            mu = f.mean(0)
            cov, amount = _shrunk_covariance(f - mu, self.shrinkage)
            chol, info = torch.linalg.cholesky_ex(cov + floor * eye)
            if int(info) != 0:
                raise ValueError(
                    f"the covariance of class {c}'s features is not positive definite with shrinkage="
                    f"{self.shrinkage!r}; use 'ledoit-wolf' or a larger amount"
                )
            means.append(mu)
            chols.append(chol)
            amounts.append(amount)
        self.shrinkages = torch.tensor(amounts, dtype=torch.float64)
        self.means = torch.stack(means)
        self.chols = torch.stack(chols)
        self.log_weights = torch.log(counts.double() / n)
        return self

    def log_density(self, x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """``log q(φ(x))`` of each input, ``[N]`` (float64, on the CPU): higher = more like the training data."""
        if self.means.shape[0] == 0:
            raise RuntimeError("call fit(x_train, y_train) before log_density/score")
        phi = self.features(x, batch_size=batch_size).cpu()
        d = phi.shape[1]
        diff = phi[None] - self.means[:, None]  # [K, N, D]
        z = torch.linalg.solve_triangular(self.chols, diff.transpose(1, 2), upper=False)  # [K, D, N]
        log_det = torch.log(torch.diagonal(self.chols, dim1=1, dim2=2)).sum(1)  # [K]: ½ log |Σ_k|
        comp = -0.5 * z.square().sum(1) - log_det[:, None] - 0.5 * d * math.log(2 * math.pi)  # [K, N]
        return torch.logsumexp(comp + self.log_weights[:, None], 0)

    def score(self, x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """The OOD score ``-log q(φ(x))``, ``[N]``: higher = more likely out of distribution
        (pass in- and out-of-distribution scores to :func:`uncertlr.metrics.ood_auroc`)."""
        return -self.log_density(x, batch_size=batch_size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # the fitted statistics' shapes (components) are known only from the saved state
        for name in ("means", "chols", "log_weights", "shrinkages"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"layer={self.layer_name!r}, components={self.means.shape[0]}, shrinkage={self.shrinkage!r}"


def _shrunk_covariance(centred: Tensor, shrinkage: float | str) -> tuple[Tensor, float]:
    """``((1 - s) S + s tr(S)/D I, s)`` of centred rows ``[n, D]``: ``S = XᵀX / n``, ``s`` given or Ledoit-Wolf's.

    The Ledoit-Wolf amount is the estimate of Ledoit & Wolf (2004, "A well-conditioned estimator for
    large-dimensional covariance matrices"), written as scikit-learn's ``ledoit_wolf_shrinkage`` computes it.
    """
    n, d = centred.shape
    emp = centred.T @ centred / n
    mu = float(torch.diagonal(emp).sum()) / d
    if shrinkage == "ledoit-wolf":
        sq = centred.square()
        delta_ = float((emp.square()).sum())  # = ‖XᵀX‖²_F / n²
        beta_ = float((sq.T @ sq).sum())
        beta = (beta_ / n - delta_) / (d * n)
        delta = (delta_ - 2.0 * mu * float(torch.diagonal(emp).sum()) + d * mu**2) / d
        beta = min(beta, delta)
        amount = 0.0 if beta == 0 else beta / delta
    else:
        amount = float(shrinkage)
    return (1.0 - amount) * emp + amount * mu * torch.eye(d, dtype=emp.dtype), amount
