"""Feature-space density: an out-of-distribution score from a trained network's features.

Gaussian discriminant analysis on the input ``φ(x)`` of the network's last ``nn.Linear`` layer
(the "deep deterministic uncertainty" recipe, Mukhoti et al., CVPR 2023): one Gaussian per class,
``q(φ) = Σ_c π_c N(φ; μ_c, Σ_c)``, fitted once on the training set after training (class
frequencies ``π_c``, class means and Ledoit-Wolf shrunk covariances, float64; the math is
:class:`uncertlr.density.ClassGaussians`, which takes features from any library). The score of an input is
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

import torch
from torch import Tensor, nn

from uncertlr.density import ClassGaussians
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
        shrinkage: how each class covariance is estimated (:class:`~uncertlr.density.ClassGaussians`):
            ``"ledoit-wolf"`` (the default) shrinks it towards a multiple of the identity by the
            Ledoit-Wolf estimate of the best amount, so classes with fewer inputs than feature
            dimensions still get a well-conditioned density; a number in ``[0, 1]`` fixes the amount.

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
        ClassGaussians(shrinkage=shrinkage)  # validates it
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
        if y is not None:
            if not isinstance(y, Tensor):
                raise TypeError(f"y must be a torch.Tensor of class labels; got {type(y).__name__}")
            check_labels(y, phi.shape[0], self.layer.out_features)
            y = y.cpu()
        g = ClassGaussians(shrinkage=self.shrinkage).fit(phi.cpu(), y, num_classes=self.layer.out_features)
        self.means, self.chols = torch.from_numpy(g.means), torch.from_numpy(g.chols)
        self.log_weights, self.shrinkages = torch.from_numpy(g.log_weights), torch.from_numpy(g.shrinkages)
        return self

    def log_density(self, x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """``log q(φ(x))`` of each input, ``[N]`` (float64, on the CPU): higher = more like the training data."""
        if self.means.shape[0] == 0:
            raise RuntimeError("call fit(x_train, y_train) before log_density/score")
        g = ClassGaussians(shrinkage=self.shrinkage)
        g.means, g.chols = self.means.cpu().numpy(), self.chols.cpu().numpy()
        g.log_weights = self.log_weights.cpu().numpy()
        return torch.from_numpy(g.log_density(self.features(x, batch_size=batch_size).cpu()))

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
