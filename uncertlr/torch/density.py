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
``layers="all"`` (every Linear layer; or a list of Linear or convolution layers, a convolution's input
averaged over its positions, one feature per channel) fits one density per layer input and scores by the mean
of their standardised scores (each layer's ``-log q`` minus its training mean, over its training
standard deviation; Lee et al., 2018, combine layers similarly), which also sees shifts of the
early features (corrupted inputs). A deep ensemble gets one density per member and layer, combined the
same way.

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

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from uncertlr.calibration import ScoreTemperature
from uncertlr.density import ClassGaussians, _TemperedByDensity
from uncertlr.likelihoods import check_labels
from uncertlr.torch._features import CONV, last_linear, layer_inputs
from uncertlr.torch.ensemble import Ensemble, PointNetwork

__all__ = ["DensityTemperature", "FeatureDensity"]

_WHAT = "a feature density"


class _Components(nn.Module):
    """The fitted class Gaussians of one layer's input (buffers, so ``state_dict`` saves them)."""

    means: Tensor
    chols: Tensor
    log_weights: Tensor
    shrinkages: Tensor

    def __init__(self, d: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(0, d, dtype=torch.float64))
        self.register_buffer("chols", torch.zeros(0, d, d, dtype=torch.float64))
        self.register_buffer("log_weights", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("shrinkages", torch.zeros(0, dtype=torch.float64))  # per class, as fitted

    def set(self, g: ClassGaussians) -> None:
        self.means, self.chols = torch.from_numpy(g.means), torch.from_numpy(g.chols)
        self.log_weights, self.shrinkages = torch.from_numpy(g.log_weights), torch.from_numpy(g.shrinkages)

    def gaussians(self, shrinkage: float | str) -> ClassGaussians:
        g = ClassGaussians(shrinkage=shrinkage)
        g.means, g.chols = self.means.cpu().numpy(), self.chols.cpu().numpy()
        g.log_weights, g.shrinkages = self.log_weights.cpu().numpy(), self.shrinkages.cpu().numpy()
        return g

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # the fitted statistics' shapes (components) are known only from the saved state
        for name in ("means", "chols", "log_weights", "shrinkages"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _readable(net: nn.Module) -> dict[str, nn.Module]:
    """The layers whose inputs a density can read, in ``named_modules()`` order: Linear and convolution layers."""
    return {n: m for n, m in net.named_modules() if isinstance(m, (nn.Linear, *CONV))}


def _width(layer: nn.Module) -> int:
    """The feature size of a layer's input: a Linear's ``in_features``, a convolution's ``in_channels``."""
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels  # type: ignore[return-value]


class FeatureDensity(nn.Module):
    """Class-conditional Gaussians over the features a trained network's ``nn.Linear`` (and convolution) layers see.

    The network is not copied: :meth:`fit` and :meth:`score` read its current features; refit after
    training it further. Fitted statistics are buffers, so ``state_dict`` saves them.

    Args:
        model: the trained network, a :class:`~uncertlr.torch.PointNetwork`, or an
            :class:`~uncertlr.torch.Ensemble` of them (:func:`~uncertlr.torch.deep_ensemble`): one density per
            member, scored by the mean of the members' standardised scores.
        layers: whose inputs are the features: ``None`` (the default) the last ``nn.Linear`` in
            ``named_modules()`` (the network's output must then be that layer's output), a layer's name or a
            list of names, ``"all"`` (every ``nn.Linear``) or ``"hidden"`` (every ``nn.Linear`` but the first:
            in an MLP, the hidden layers' outputs, leaving out the network's own input). An
            ``nn.Conv1d/2d/3d`` named here is read as its input ``[N, C, *spatial]`` averaged over its
            positions, one feature per channel; ``"all"``
            leaves convolutions out because averaging loses what tells inputs apart early in a network
            (on a digits CNN the first convolution's averaged input scored AUROC 0.52 and the mean over
            all layers fell below the head alone: ``benchmarks/feature_density.py``).
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
        >>> every = FeatureDensity(net, layers="all").fit(torch.randn(50, 4), torch.randint(0, 2, (50,)))
        >>> every.layer_names, tuple(every.score(torch.randn(7, 4)).shape)
        (['0', '2'], (7,))
    """

    score_center: Tensor
    score_scale: Tensor

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: str | Sequence[str] | None = None,
        shrinkage: float | str = "ledoit-wolf",
    ):
        super().__init__()
        if isinstance(model, Ensemble):
            if not all(isinstance(m, PointNetwork) for m in model.members):
                kinds = sorted({type(m).__name__ for m in model.members})
                raise TypeError(
                    f"FeatureDensity reads an ensemble of deterministic networks (PointNetwork members, "
                    f"deep_ensemble(make_net, ...)); this one's members are {kinds}"
                )
            nets = [m.net for m in model.members]  # type: ignore[union-attr]
        elif isinstance(model, PointNetwork):
            nets = [model.net]
        elif isinstance(model, nn.Module):
            nets = [model]
        else:
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        ClassGaussians(shrinkage=shrinkage)  # validates it
        # plain attributes, not submodules: the density's state_dict holds only what fit() estimated
        self.__dict__["nets"] = nets
        self.__dict__["net"] = nets[0]
        head_name, head = last_linear(nets[0], None, _WHAT)  # (raises without any Linear)
        self._num_classes = head.out_features
        readable = _readable(nets[0])
        if layers is None:
            names = [head_name]
        elif layers in ("all", "hidden"):  # convolutions only by name: see the class docstring
            names = [n for n, m in readable.items() if isinstance(m, nn.Linear)]
            if layers == "hidden":
                if len(names) < 2:
                    raise ValueError(
                        f"layers='hidden' reads every nn.Linear but the first; this network has {len(names)} "
                        f"({names}): name the layers to read instead"
                    )
                names = names[1:]
        else:
            names = [layers] if isinstance(layers, str) else list(layers)
            if not names or len(set(names)) != len(names):
                raise ValueError(f"layers must name distinct Linear or convolution layers; got {names!r}")
            unknown = [n for n in names if n not in readable]
            if unknown:
                raise ValueError(
                    f"layers={unknown[0]!r} is not an nn.Linear or nn.Conv1d/2d/3d of the network; "
                    f"those layers: {list(readable)}"
                )
        self.layer_names = names
        per_net = []
        for i, net in enumerate(nets):
            found = _readable(net)
            missing = [n for n in names if n not in found]
            if missing:
                raise ValueError(
                    f"every ensemble member needs the layers {names}; member {i} lacks {missing}"
                )
            sizes = [_width(found[n]) for n in names]
            if per_net and sizes != [_width(per_net[0][n]) for n in names]:
                raise ValueError(f"ensemble member {i}'s layers {names} take inputs of other sizes: {sizes}")
            per_net.append({n: found[n] for n in names})
        self.__dict__["layers"] = per_net
        self._check_output = layers is None
        self.shrinkage = shrinkage if isinstance(shrinkage, str) else float(shrinkage)
        # member-major: component m * len(layers) + l is member m's layer l
        self.components = nn.ModuleList(_Components(_width(per_net[0][n])) for _ in nets for n in names)
        k = len(nets) * len(names)
        self.register_buffer("score_center", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("score_scale", torch.ones(k, dtype=torch.float64))

    def features(self, x: Tensor, *, batch_size: int = 1024) -> list[Tensor]:
        """``[φ_l(x)]``: each layer's input ``[N, D_l]`` (float64), in eval mode without gradients; for an
        ensemble, every member's layers in turn (member-major)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"x must hold at least one input [N, ...]; got shape {tuple(x.shape)}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError("x holds NaN or inf")
        parts = [self._read(xb) for xb in x.split(batch_size)]
        phis = [torch.cat([p[i] for p in parts]).double() for i in range(len(self.components))]
        if not all(bool(torch.isfinite(phi).all()) for phi in phis):
            raise ValueError("the network's features of x are not finite (inputs too large for the network?)")
        return phis

    def _read(self, x: Tensor) -> list[Tensor]:
        # the default reads the head: its output must then be the network's
        head = self.layer_names[0] if self._check_output else None
        what = f"{_WHAT}, or name the layers= to read"
        return [
            phi
            for net, layers in zip(self.nets, self.layers)
            for phi in layer_inputs(net, layers, x, head=head, what=what)[0]
        ]

    def fit(self, x: Tensor, y: Tensor | None = None, *, batch_size: int = 1024) -> FeatureDensity:
        """Fit one Gaussian per class (``y``: labels ``[N]``) or, with ``y=None``, one Gaussian (regression),
        for each layer's input (of each ensemble member); also each one's score mean and standard deviation
        on ``x``, which :meth:`score` standardises by when it combines several.

        Every class that occurs in ``y`` needs at least two inputs; classes that do not occur get no
        component (``π_c = 0``).

        Returns:
            ``self``.
        """
        phis = self.features(x, batch_size=batch_size)
        if y is not None:
            if not isinstance(y, Tensor):
                raise TypeError(f"y must be a torch.Tensor of class labels; got {type(y).__name__}")
            check_labels(y, phis[0].shape[0], self._num_classes)
            y = y.cpu()
        for i, (phi, comp) in enumerate(zip(phis, self.components)):
            g = ClassGaussians(shrinkage=self.shrinkage).fit(phi.cpu(), y)
            comp.set(g)
            s = g.score(phi.cpu())
            self.score_center[i], self.score_scale[i] = float(s.mean()), max(float(s.std()), 1e-12)
        return self

    def _check_fitted(self) -> None:
        if self.components[0].means.shape[0] == 0:
            raise RuntimeError("call fit(x_train, y_train) before log_density/score")

    def log_density(self, x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """``log q(φ(x))`` of each input, ``[N]`` (float64, on the CPU): higher = more like the training data.
        Defined for one layer of one network; with several layers or an ensemble, use :meth:`score`."""
        if len(self.components) != 1:
            raise ValueError(
                f"log_density reads one layer of one network; this density reads {self.layer_names}"
                + (f" of {len(self.nets)} ensemble members" if len(self.nets) > 1 else "")
                + ": use score()"
            )
        self._check_fitted()
        phi = self.features(x, batch_size=batch_size)[0].cpu()
        return torch.from_numpy(self.components[0].gaussians(self.shrinkage).log_density(phi))

    def layer_scores(self, x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """Each layer's own OOD score ``-log q_k(φ_k(x))``, ``[N, K]`` (float64, on the CPU), one column per
        layer in :attr:`layer_names` order (per ensemble member, then layer, for an ensemble): the inputs of
        a per-layer temperature (:func:`uncertlr.calibration.fit_score_temperature` with ``[N, K]`` scores),
        which gives each layer its own slope instead of :meth:`score`'s equal weights.

        Example:
            >>> import torch
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
            >>> d = FeatureDensity(net, layers="all").fit(torch.randn(50, 4), torch.randint(0, 2, (50,)))
            >>> tuple(d.layer_scores(torch.randn(7, 4)).shape)
            (7, 2)
        """
        self._check_fitted()
        phis = self.features(x, batch_size=batch_size)
        return torch.stack(
            [
                torch.from_numpy(comp.gaussians(self.shrinkage).score(phi.cpu()))
                for phi, comp in zip(phis, self.components)
            ],
            dim=1,
        )

    def score(self, x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """The OOD score ``[N]``, higher = more likely out of distribution (pass in- and out-of-distribution
        scores to :func:`uncertlr.metrics.ood_auroc`): ``-log q(φ(x))`` for one layer of one network; for
        several layers or ensemble members, the mean over them of ``(-log q_k(φ_k(x)) - center_k) / scale_k``
        (each one's training mean and std)."""
        scores = self.layer_scores(x, batch_size=batch_size)  # [N, K], on the CPU
        if scores.shape[1] == 1:
            return scores[:, 0].contiguous()
        return ((scores - self.score_center.to(scores)) / self.score_scale.to(scores)).mean(1)

    def extra_repr(self) -> str:
        return f"layers={self.layer_names}, shrinkage={self.shrinkage!r}"


class DensityTemperature(_TemperedByDensity):
    """A trained network's predictions, softened per input by how unusual the input's features are.

    ``T(x) = exp(a + b · z(x))``, ``z`` the input's :class:`FeatureDensity` score, standardised on the validation
    inputs; the slope ``b >= 0`` is fitted on the out-of-fold predictions of ``folds`` networks you train like
    yours, each without one fold of the training data (:func:`uncertlr.calibration.cross_fit_score_slope`), and
    the intercept ``a`` on your network's validation predictions
    (:func:`uncertlr.calibration.fit_score_temperature`). Inputs like the training data keep (about) the
    temperature plain temperature scaling would give; inputs whose features are far from every class's are
    softened more. A temperature never changes the predicted class.

    On ``benchmarks/shift.py`` this method halves the corrupted-input ECE of spoken digits' MLP and CNN: 0.49× the
    network's over 21 and 14 seeds, at the bar rather than clearly under it. On digits images it comes closest with
    one slope per hidden layer (``layers="hidden", per_layer=True``: 0.53× over 30 seeds). See BENCHMARKS.md,
    "Uncertainty under distribution shift". Without ``train`` the slope is fitted on the validation part too, which holds few errors
    to learn from: noisier (corrupted ECE 0.167 instead of 0.149 on digits).

    Args:
        model: the trained :class:`~uncertlr.torch.PointNetwork`, or an :class:`~uncertlr.torch.Ensemble` of them
            (what :class:`FeatureDensity` reads); its ``predict(x, num_samples=S)`` gives the probabilities.
        layers: whose inputs the density reads, as :class:`FeatureDensity`'s ``layers`` (default ``"all"``:
            every ``nn.Linear``; ``"hidden"``: all but the first).
        per_layer: one slope per layer (:meth:`FeatureDensity.layer_scores`, Tomani et al., 2023) instead of one
            for the layers' averaged score (:meth:`FeatureDensity.score`).
        bounds: the range of ``T``.
        shrinkage: the density's covariance estimate, as :class:`FeatureDensity`'s.

    Attributes (after :meth:`fit`): ``density`` (the model's fitted :class:`FeatureDensity`), ``temperature``
    (the fitted :class:`~uncertlr.calibration.ScoreTemperature`), ``cross_fitted`` (whether the slope came from
    cross-fitted networks).

    Example:
        >>> import torch
        >>> from uncertlr.torch import DensityTemperature, PointNetwork, fit
        >>> def train(x, y):
        ...     torch.manual_seed(0)
        ...     net = PointNetwork(torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)))
        ...     fit(net.elbo, torch.optim.Adam(net.parameters(), 1e-2), x, y, epochs=20, batch_size=64,
        ...         progress=False)
        ...     return net
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(600, 2, generator=g)        # labels get noisier away from x[:, 1] = 0
        >>> flip = torch.rand(600, generator=g) < 0.45 * (1 - torch.exp(-x[:, 1] ** 2))
        >>> y = ((x[:, 0] > 0) ^ flip).long()
        >>> net = train(x[:450], y[:450])
        >>> cal = DensityTemperature(net).fit(x[:450], y[:450], x[450:], y[450:], train=train, progress=False)
        >>> t = cal.temperatures(torch.tensor([[1.0, 0.0], [1.0, 3.0]]))   # a typical and an unusual input
        >>> bool(t[1] > 5 * t[0])
        True
        >>> cal.predict(x[:5]).shape                                        # [S, N, C], as model.predict
        torch.Size([1, 5, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: str | Sequence[str] | None = "all",
        per_layer: bool = False,
        bounds: tuple[float, float] = (0.05, 20.0),
        shrinkage: float | str = "ledoit-wolf",
    ):
        if not isinstance(model, (PointNetwork, Ensemble)):
            raise TypeError(
                "DensityTemperature tempers a PointNetwork or an Ensemble of them (what FeatureDensity reads); "
                f"got {type(model).__name__}"
            )
        super().__init__(layers, per_layer, bounds, shrinkage)
        self.model = self._net = model
        self._new_density(model)  # validates the layers now

    def _new_density(self, net: nn.Module) -> FeatureDensity:
        return FeatureDensity(net, layers=self.layers, shrinkage=self.shrinkage)

    def _probs(self, net: Any, x: Tensor, num_samples: int) -> Tensor:
        with torch.no_grad():
            return net.predict(x, num_samples=num_samples)  # type: ignore[no-any-return]

    def fit(
        self,
        x: Tensor,
        y: Tensor,
        x_val: Tensor,
        y_val: Tensor,
        *,
        train: Callable[[Tensor, Tensor], Any] | None = None,
        folds: int = 5,
        seed: int = 0,
        num_samples: int = 1,
        progress: bool = True,
    ) -> DensityTemperature:
        """Fit the density on ``(x, y)``, the slope on cross-fitted networks (when ``train`` is given) and the
        intercept on ``(x_val, y_val)``; returns ``self``.

        Args:
            x, y: the training data of ``model`` (inputs ``[N, ...]``, labels ``[N]``).
            x_val, y_val: held-out data ``model`` did not train on.
            train: ``train(x, y)`` returns a new network trained on that part the way ``model`` was (a
                :class:`~uncertlr.torch.PointNetwork` or :class:`~uncertlr.torch.Ensemble`); ``folds`` of them
                are trained. ``None``: fit the slope on the validation data too (cheaper, noisier).
            folds: how many cross-fitted networks.
            seed: the seed of the fold assignment.
            num_samples: ``S`` passed to the networks' ``predict``.
            progress: show a progress bar over the cross-fitted networks.
        """
        return self._fit(  # type: ignore[no-any-return]
            x,
            y,
            x_val,
            y_val,
            train=train,
            folds=folds,
            seed=seed,
            num_samples=num_samples,
            progress=progress,
        )

    def temperatures(self, x: Tensor) -> Tensor:
        """``T(x)`` of each input, ``[N]`` (float64, on the CPU)."""
        return torch.from_numpy(self._temperatures(x))

    def predict(self, x: Tensor, *, num_samples: int = 1) -> Tensor:
        """The model's probabilities ``[S, N, C]``, each input's tempered by its own ``T(x)``."""
        return self._predict(x, num_samples)  # type: ignore[no-any-return]

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`fit` estimated: the density's buffers and the temperature's numbers, as tensors and plain
        Python values (``torch.save`` it; ``torch.load(path, weights_only=True)`` reads it back).

        Example:
            >>> import torch
            >>> from uncertlr.torch import DensityTemperature, PointNetwork
            >>> net = PointNetwork(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
            >>> x, y = torch.randn(200, 2), torch.randint(0, 2, (200,))
            >>> cal = DensityTemperature(net).fit(x[:150], y[:150], x[150:], y[150:], progress=False)
            >>> again = DensityTemperature(net).load_state_dict(cal.state_dict())   # no refit
            >>> torch.equal(again.predict(x[:5]), cal.predict(x[:5]))
            True
        """
        density, temperature = self._fitted()
        numbers = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(temperature).items()
        }
        return {
            "density": density.state_dict(),
            "temperature": numbers,
            "cross_fitted": self.cross_fitted,
            "layers": self.layers,
            "per_layer": self.per_layer,
        }

    def load_state_dict(self, state: dict[str, Any]) -> DensityTemperature:
        """Restore a :meth:`state_dict` onto this (unfitted or fitted) instance of the same network and settings;
        returns ``self``."""
        for key, mine in (("layers", self.layers), ("per_layer", self.per_layer)):
            if state.get(key) != mine:
                raise ValueError(
                    f"the state was saved with {key}={state.get(key)!r}; this instance has {key}={mine!r}"
                )
        density = self._new_density(self.model)
        density.load_state_dict(state["density"])
        t = state["temperature"]
        self.temperature = ScoreTemperature(
            float(t["a"]),
            *(
                tuple(float(v) for v in t[k]) if isinstance(t[k], list) else float(t[k])
                for k in ("b", "center", "scale")
            ),
            bounds=(float(t["bounds"][0]), float(t["bounds"][1])),
        )
        self.density, self.cross_fitted = density, bool(state["cross_fitted"])
        return self
