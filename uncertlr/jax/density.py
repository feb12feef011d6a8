"""Feature-space density of a Flax or Equinox network: the JAX twin of :class:`uncertlr.torch.FeatureDensity`.

Gaussian discriminant analysis on the inputs a trained network's dense layers see (the "deep deterministic
uncertainty" recipe, Mukhoti et al., CVPR 2023): one Gaussian per class, ``q(φ) = Σ_c π_c N(φ; μ_c, Σ_c)``,
fitted once on the training set after training (class frequencies, class means, Ledoit-Wolf shrunk
covariances, float64; the math is :class:`uncertlr.density.ClassGaussians`). The score of an input is
``-log q(φ(x))``: high where the features lie away from every class's training features, also when the
softmax is confidently wrong (BENCHMARKS.md, "Feature density for near-OOD").

The features are read during an ordinary forward pass, without changing the network: a flax.linen module's
``nn.Dense``/``nn.Conv`` calls are intercepted (``flax.linen.intercept_methods``); a flax.nnx module is read
through a clone whose ``nnx.Linear``/``nnx.Conv`` layers record their inputs (your module is not touched); an
Equinox module through a copy whose ``eqx.nn.Linear``/``eqx.nn.Conv`` layers do (Equinox modules act on one
example and are vmapped over the batch, as :func:`uncertlr.jax.bayesian` does); nnx and Equinox networks are read
in inference mode (``module.eval()``, ``eqx.nn.inference_mode``), a linen module as ``apply`` runs it by
default (pass a module built deterministic, e.g. ``Dropout(deterministic=True)``). Layers are named like the
parameters :func:`uncertlr.jax.bayesian` names: ``"Dense_1"`` (linen), ``"out"`` or ``"layers.0"`` (nnx),
``"layers.2"`` (Equinox). ``layers="all"`` reads every dense layer's input and scores by the mean of the
layers' standardised scores, as the torch side does. A convolution named in ``layers=`` is read as its input
averaged over its positions (one feature per channel).

Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> import flax.linen as nn
    >>> from uncertlr.jax import FeatureDensity
    >>> net = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(3)])
    >>> x = jax.random.normal(jax.random.key(0), (300, 4))
    >>> y = np.random.default_rng(0).integers(0, 3, 300)
    >>> density = FeatureDensity(net, params=net.init(jax.random.key(1), x[:1])).fit(x, y)
    >>> score = density.score(jnp.concatenate([x[:5], 50 * x[:5]]))   # [N] numpy: higher = more unusual
    >>> bool(score[5:].min() > score[:5].max())
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uncertlr._arrays import host
from uncertlr.density import ClassGaussians, _TemperedByDensity
from uncertlr.jax._networks import _path_name
from uncertlr.jax._validation import check_module
from uncertlr.likelihoods import check_labels

__all__ = ["DensityTemperature", "FeatureDensity"]

Array = Any

# (name, is a convolution, input, output) of each dense/conv call, in call order
_Record = tuple[str, bool, Array, Array]


def _layer_kinds(kind: str) -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``(dense layer classes, convolution classes)`` of a framework."""
    if kind == "flax.linen":
        import flax.linen as nn

        return (nn.Dense,), (nn.Conv,)
    if kind == "flax.nnx":
        from flax import nnx

        return (nnx.Linear,), (nnx.Conv,)
    import equinox as eqx

    return (eqx.nn.Linear,), (eqx.nn.Conv,)


def _linen_reader(module: Any, variables: Any) -> Callable[[Array], tuple[Array, list[_Record]]]:
    import flax.linen as nn

    dense, conv = _layer_kinds("flax.linen")

    def run(x: Array) -> tuple[Array, list[_Record]]:
        rec: list[_Record] = []

        def intercept(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
            out = next_fun(*args, **kwargs)
            mod = context.module
            if context.method_name == "__call__" and isinstance(mod, dense + conv) and args:
                rec.append((".".join(str(p) for p in mod.path), isinstance(mod, conv), args[0], out))
            return out

        with nn.intercept_methods(intercept):
            out = module.apply(variables, x)
        return out, rec

    return run


_TAP_CLASSES: dict[type, type] = {}
_TAP_LOCK = threading.Lock()
_TAPE = threading.local()  # the records of the forward pass running on this thread


def _nnx_tapped(cls: type) -> type:
    """A subclass of the nnx layer class ``cls`` whose ``__call__`` also records its input and output."""
    with _TAP_LOCK:
        if cls not in _TAP_CLASSES:

            def __call__(self: Any, inputs: Array, *args: Any, **kwargs: Any) -> Array:
                out = cls.__call__(self, inputs, *args, **kwargs)
                name, is_conv = _TAPE.names[id(self)]
                _TAPE.records.append((name, is_conv, inputs, out))
                return out

            _TAP_CLASSES[cls] = type(f"_Tapped{cls.__name__}", (cls,), {"__call__": __call__})
        return _TAP_CLASSES[cls]


def _nnx_reader(module: Any) -> Callable[[Array], tuple[Array, list[_Record]]]:
    from flax import nnx

    dense, conv = _layer_kinds("flax.nnx")

    def run(x: Array) -> tuple[Array, list[_Record]]:
        clone = nnx.clone(module)  # shares the arrays; the user's module keeps its own layer classes
        clone.eval()  # dropout off, batch norm on its running statistics (the clone's flags only)
        names = {}
        for path, node in nnx.iter_graph(clone):
            if isinstance(node, dense + conv):
                names[id(node)] = (".".join(str(p) for p in path), isinstance(node, conv))
                node.__class__ = _nnx_tapped(type(node))
        _TAPE.names, _TAPE.records = names, []
        try:
            out = clone(x)
            return out, _TAPE.records
        finally:
            _TAPE.names, _TAPE.records = {}, []

    return run


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            obj = getattr(obj, k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            obj = obj[k.idx]
        else:
            obj = obj[k.key]
    return obj


def _equinox_reader(module: Any) -> Callable[[Array], tuple[Array, list[_Record]]]:
    import equinox as eqx

    dense, conv = _layer_kinds("equinox")

    class _Tap(eqx.Module):  # type: ignore[misc]
        layer: Any
        name: str = eqx.field(static=True)
        is_conv: bool = eqx.field(static=True)

        def __call__(self, x: Array, *args: Any, **kwargs: Any) -> Array:
            out = self.layer(x, *args, **kwargs)
            _TAPE.records.append((self.name, self.is_conv, x, out))
            return out

    leaves = jax.tree_util.tree_flatten_with_path(module, is_leaf=lambda n: isinstance(n, dense + conv))[0]
    paths = [p for p, leaf in leaves if isinstance(leaf, dense + conv)]
    tapped = eqx.tree_at(
        lambda m: [_get(m, p) for p in paths],
        module,
        replace=[_Tap(_get(module, p), _path_name(p), isinstance(_get(module, p), conv)) for p in paths],
    )
    tapped = eqx.nn.inference_mode(tapped)  # dropout off, batch norm on its running statistics

    def run(x: Array) -> tuple[Array, list[_Record]]:
        meta: list[tuple[str, bool]] = []

        def one(xi: Array) -> tuple[Array, list[tuple[Array, Array]]]:
            _TAPE.records = []
            out = tapped(xi)
            meta[:] = [(n, c) for n, c, _, _ in _TAPE.records]
            return out, [(i, o) for _, _, i, o in _TAPE.records]

        try:
            out, arrays = jax.vmap(one)(x)
        finally:
            _TAPE.records = []
        return out, [(n, c, i, o) for (n, c), (i, o) in zip(meta, arrays)]

    return run


class FeatureDensity:
    """Class-conditional Gaussians over the features a trained Flax or Equinox network's dense layers see.

    The parameters are read when the density is made: make a new one after training further (a flax.nnx
    module is read as it is at each call). Picklable (the fitted Gaussians are numpy arrays).

    Args:
        net: a flax.linen module (with ``params=``), a flax.nnx module or an Equinox module (vmapped over the
            batch). A plain ``apply(params, x)`` function has no layers to read: fit
            :class:`uncertlr.density.ClassGaussians` on the features you compute.
        params: the linen module's variables (``module.init(...)`` or trained ones); nothing for nnx/Equinox.
        layers: whose inputs are the features: ``None`` (the default) the last dense layer the forward
            pass calls (the network's output must then be that layer's output), a layer's name or a list of
            names (dense layers or convolutions; a convolution's input is averaged over its positions),
            ``"all"`` (every dense layer, in call order) or ``"hidden"`` (every dense layer but the first: in an
            MLP, the hidden layers' outputs, leaving out the network's own input).
        shrinkage: how each class covariance is estimated (:class:`~uncertlr.density.ClassGaussians`):
            ``"ledoit-wolf"`` (the default) or a fixed amount in ``[0, 1]``.

    Attributes:
        layer_names: the layers read, in the order given (``"all"``: call order).
        gaussians: one fitted :class:`~uncertlr.density.ClassGaussians` per layer (after :meth:`fit`).

    Example:
        >>> import jax, numpy as np
        >>> from uncertlr_models.eqx_mlp import EqxMLP
        >>> net = EqxMLP(4, (8,), 2, key=jax.random.key(0))
        >>> x, y = np.random.default_rng(0).normal(size=(50, 4)), np.arange(50) % 2
        >>> every = FeatureDensity(net, layers="all").fit(x, y)
        >>> every.layer_names, every.score(x[:7]).shape
        (['layers.0', 'layers.1'], (7,))
    """

    def __init__(
        self,
        net: Any,
        *,
        params: Any = None,
        layers: str | Sequence[str] | None = None,
        shrinkage: float | str = "ledoit-wolf",
    ):
        kind = check_module(
            net,
            params,
            "FeatureDensity",
            " (for a plain apply function, fit uncertlr.density.ClassGaussians on the features you compute)",
        )
        if kind == "flax.linen":
            variables = dict(params)
            params = variables if "params" in variables else {"params": variables}
        self._net, self._variables = net, params
        self._reader: Callable[[Array], tuple[Array, list[_Record]]] | None = None
        ClassGaussians(shrinkage=shrinkage)  # validates it
        self.kind, self.shrinkage = kind, shrinkage
        self._layers = layers
        if layers is not None and layers not in ("all", "hidden"):
            names = [layers] if isinstance(layers, str) else list(layers)
            if not names or len(set(names)) != len(names):
                raise ValueError(f"layers must name distinct dense or convolution layers; got {names!r}")
            self.layer_names: list[str] = names
        else:
            self.layer_names = []  # known after the first forward pass
        self.gaussians: list[ClassGaussians] = []
        self._center = np.zeros(0)
        self._scale = np.ones(0)
        self._num_classes: int | None = None
        self._chosen = False

    def _read(self, x: Array) -> tuple[Array, list[_Record]]:
        if self._reader is None:  # built on first use (and again after unpickling)
            if self.kind == "flax.linen":
                self._reader = _linen_reader(self._net, self._variables)
            elif self.kind == "flax.nnx":
                self._reader = _nnx_reader(self._net)
            else:
                self._reader = _equinox_reader(self._net)
        return self._reader(x)

    def _pass(self, x: Array) -> tuple[Array, dict[str, tuple[bool, Array, Array]]]:
        out, records = self._read(x)
        first: dict[str, tuple[bool, Array, Array]] = {}
        for name, is_conv, inp, o in records:
            first.setdefault(name, (is_conv, inp, o))  # (the first call counts)
        return out, first

    def _choose(self, out: Array, first: dict[str, tuple[bool, Array, Array]]) -> None:
        """Settle ``layer_names`` (and the number of classes) from the first forward pass."""
        dense = [n for n, (c, _, _) in first.items() if not c]
        if not dense and self._layers in (None, "all", "hidden"):
            raise ValueError(f"the forward pass of the {self.kind} network calls no dense layer to read")
        if self._layers is None:
            head = dense[-1]
            head_out = first[head][2]
            if jnp.shape(head_out) != jnp.shape(out) or not bool(jnp.array_equal(head_out, out)):
                raise ValueError(
                    f"the network's output must be the output of its last dense layer ({head!r}) for the "
                    "default layers=None; name the layers= to read"
                )
            self.layer_names = [head]
        elif self._layers == "all":
            self.layer_names = dense
        elif self._layers == "hidden":
            if len(dense) < 2:
                raise ValueError(
                    f"layers='hidden' reads every dense layer but the first; the forward pass calls {len(dense)} "
                    f"({dense}): name the layers to read instead"
                )
            self.layer_names = dense[1:]
        else:
            unknown = [n for n in self.layer_names if n not in first]
            if unknown:
                raise ValueError(
                    f"layers={unknown[0]!r} is not a dense or convolution layer the forward pass calls; "
                    f"those layers: {list(first)}"
                )
        self._num_classes = int(jnp.shape(out)[-1]) if jnp.ndim(out) == 2 else None
        self._chosen = True

    def features(self, x: Array, *, batch_size: int = 1024) -> list[np.ndarray]:
        """``[φ_l(x)]``: each read layer's input ``[N, D_l]`` (numpy float64), one forward pass per batch."""
        if not hasattr(x, "shape") or len(x.shape) == 0 or x.shape[0] == 0:
            raise ValueError(
                f"x must hold at least one input [N, ...]; got shape {getattr(x, 'shape', None)}"
            )
        if jnp.issubdtype(jnp.asarray(x[:1]).dtype, jnp.inexact) and not bool(
            jnp.isfinite(jnp.asarray(x)).all()
        ):
            raise ValueError("x holds NaN or inf")
        parts: list[list[np.ndarray]] = []
        for start in range(0, x.shape[0], batch_size):
            out, first = self._pass(jnp.asarray(x[start : start + batch_size]))
            if not self._chosen:
                self._choose(out, first)
            row = []
            for name in self.layer_names:
                is_conv, phi, _ = first[name]
                phi = np.asarray(phi, dtype=np.float64)
                if is_conv and phi.ndim > 2:  # [N, *spatial, C] (Flax) or [N, C, *spatial] (Equinox, vmapped)
                    spatial = range(2, phi.ndim) if self.kind == "equinox" else range(1, phi.ndim - 1)
                    phi = phi.mean(axis=tuple(spatial))
                if phi.ndim != 2:
                    raise ValueError(
                        f"the input of layer {name!r} must be [N, D] (a dense layer) or a convolution's "
                        f"[N, ..., C]; got shape {phi.shape}"
                    )
                row.append(phi)
            parts.append(row)
        phis = [np.concatenate([p[i] for p in parts]) for i in range(len(self.layer_names))]
        if not all(np.isfinite(phi).all() for phi in phis):
            raise ValueError("the network's features of x are not finite (inputs too large for the network?)")
        return phis

    def fit(self, x: Array, y: Array | None = None, *, batch_size: int = 1024) -> FeatureDensity:
        """Fit one Gaussian per class (``y``: integer labels ``[N]``) or, with ``y=None``, one Gaussian
        (regression), for each layer's input; also each layer's score mean and std on ``x``, which
        :meth:`score` standardises by when it combines several layers.

        Returns:
            ``self``.
        """
        phis = self.features(x, batch_size=batch_size)
        labels = None
        if y is not None:
            check_labels(y, phis[0].shape[0], self._num_classes if self._num_classes is not None else 2**62)
            labels = host(y).astype(np.int64)
        self.gaussians = [ClassGaussians(shrinkage=self.shrinkage).fit(phi, labels) for phi in phis]
        train = [g.score(phi) for g, phi in zip(self.gaussians, phis)]
        self._center = np.array([s.mean() for s in train])
        self._scale = np.array([max(float(s.std()), 1e-12) for s in train])
        return self

    def _check_fitted(self) -> None:
        if not self.gaussians:
            raise RuntimeError("call fit(x_train, y_train) before log_density/score")

    def log_density(self, x: Array, *, batch_size: int = 1024) -> np.ndarray:
        """``log q(φ(x))`` of each input, ``[N]`` (numpy float64): higher = more like the training data.
        Defined for one layer; with several, use :meth:`score`."""
        self._check_fitted()
        if len(self.gaussians) != 1:
            raise ValueError(
                f"log_density reads one layer; this density reads {self.layer_names}: use score()"
            )
        return self.gaussians[0].log_density(self.features(x, batch_size=batch_size)[0])

    def layer_scores(self, x: Array, *, batch_size: int = 1024) -> np.ndarray:
        """Each layer's own OOD score ``-log q_l(φ_l(x))``, ``[N, L]`` (numpy float64), one column per layer in
        :attr:`layer_names` order: the inputs of a per-layer temperature
        (:func:`uncertlr.calibration.fit_score_temperature` with ``[N, L]`` scores), which gives each layer its
        own slope instead of :meth:`score`'s equal weights.

        Example:
            >>> import jax, numpy as np
            >>> from uncertlr_models.eqx_mlp import EqxMLP
            >>> net = EqxMLP(4, (8,), 2, key=jax.random.key(0))
            >>> x, y = np.random.default_rng(0).normal(size=(50, 4)), np.arange(50) % 2
            >>> FeatureDensity(net, layers="all").fit(x, y).layer_scores(x[:7]).shape
            (7, 2)
        """
        self._check_fitted()
        phis = self.features(x, batch_size=batch_size)
        return np.stack([g.score(phi) for g, phi in zip(self.gaussians, phis)], axis=1)

    def score(self, x: Array, *, batch_size: int = 1024) -> np.ndarray:
        """The OOD score ``[N]`` (numpy), higher = more likely out of distribution: ``-log q(φ(x))`` for one
        layer; for several, the mean over layers of ``(-log q_l(φ_l(x)) - center_l) / scale_l`` (each layer's
        training mean and std)."""
        scores = self.layer_scores(x, batch_size=batch_size)  # [N, L]
        if scores.shape[1] == 1:
            return scores[:, 0].copy()
        return ((scores - self._center) / self._scale).mean(1)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}  # a closure over the network: rebuilt on first use

    def __repr__(self) -> str:
        return f"FeatureDensity({self.kind}, layers={self.layer_names or self._layers!r}, shrinkage={self.shrinkage!r})"


class DensityTemperature(_TemperedByDensity):
    """A trained Flax or Equinox classifier's predictions, softened per input by how unusual its features are:
    the JAX twin of :class:`uncertlr.torch.DensityTemperature`.

    ``T(x) = exp(a + b · z(x))``, ``z`` the input's :class:`FeatureDensity` score standardised on the validation
    inputs; the slope ``b >= 0`` from ``folds`` networks you train like yours, each without one fold of the
    training data (:func:`uncertlr.calibration.cross_fit_score_slope`), the intercept ``a`` from your network's
    validation predictions. The network's output must be the logits ``[N, C]``; the probabilities are their
    softmax. A temperature never changes the predicted class.

    Args:
        net: the trained network: a flax.linen module (with ``params=``), a flax.nnx module or an Equinox module,
            as :class:`FeatureDensity` reads them.
        params: the linen module's trained variables; nothing for nnx/Equinox.
        layers: whose inputs the density reads (default ``"all"``; ``"hidden"``: every dense layer but the first).
        per_layer: one slope per layer (:meth:`FeatureDensity.layer_scores`) instead of one for the averaged score.
        bounds: the range of ``T``.
        shrinkage: the density's covariance estimate.

    Attributes (after :meth:`fit`): ``density``, ``temperature`` (a
    :class:`~uncertlr.calibration.ScoreTemperature`), ``cross_fitted``.

    Example:
        >>> import jax, numpy as np
        >>> from uncertlr.jax import DensityTemperature
        >>> from uncertlr_models.eqx_mlp import EqxMLP
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(300, 2)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int32)
        >>> net = EqxMLP(2, (8,), 2, key=jax.random.key(0))           # (untrained here, to keep it short)
        >>> cal = DensityTemperature(net).fit(x[:200], y[:200], x[200:], y[200:], progress=False)
        >>> cal.predict(x[:5]).shape, cal.temperatures(x[:5]).shape   # [S, N, C] as a jax array; [N] numpy
        ((1, 5, 2), (5,))
    """

    def __init__(
        self,
        net: Any,
        *,
        params: Any = None,
        layers: str | Sequence[str] | None = "all",
        per_layer: bool = False,
        bounds: tuple[float, float] = (0.05, 20.0),
        shrinkage: float | str = "ledoit-wolf",
    ):
        super().__init__(layers, per_layer, bounds, shrinkage)
        self._reader = self._new_density((net, params))  # validates the network and its arguments now
        self._net = (self._reader._net, self._reader._variables)
        self._linen = self._reader.kind == "flax.linen"

    def _new_density(self, net: tuple[Any, Any]) -> FeatureDensity:
        return FeatureDensity(net[0], params=net[1], layers=self.layers, shrinkage=self.shrinkage)

    def _trained(self, trained: Any) -> tuple[Any, Any]:
        return (self._net[0], trained) if self._linen else (trained, None)

    def _probs(self, net: tuple[Any, Any], x: Array, num_samples: int, *, batch_size: int = 1024) -> Array:
        read = (self._reader if net is self._net else self._new_density(net))._read  # the user's: built once
        logits = jnp.concatenate(
            [read(jnp.asarray(x[i : i + batch_size]))[0] for i in range(0, x.shape[0], batch_size)]
        )
        if logits.ndim != 2:
            raise ValueError(f"the network must output logits [N, C]; got shape {tuple(logits.shape)}")
        if not bool(jnp.isfinite(logits).all()):
            raise ValueError("the network's outputs are not finite")
        return jax.nn.softmax(logits, axis=-1)[None]

    def fit(
        self,
        x: Array,
        y: Array,
        x_val: Array,
        y_val: Array,
        *,
        train: Callable[[Array, Array], Any] | None = None,
        folds: int = 5,
        seed: int = 0,
        progress: bool = True,
    ) -> DensityTemperature:
        """Fit the density on ``(x, y)``, the slope on cross-fitted networks (when ``train`` is given) and the
        intercept on ``(x_val, y_val)``; returns ``self``.

        Args:
            x, y: the network's training data (numpy or JAX arrays; integer labels ``[N]``).
            x_val, y_val: held-out data the network did not train on.
            train: ``train(x, y)`` trains a new network on that part the way yours was trained and returns it
                in the form you passed: the trained variables for a flax.linen module (the module is reused),
                the trained module for flax.nnx and Equinox. ``None``: the slope from the validation data too.
            folds: how many cross-fitted networks.
            seed: the seed of the fold assignment.
            progress: show a progress bar over the cross-fitted networks.
        """
        return self._fit(  # type: ignore[no-any-return]
            x, y, x_val, y_val, train=train, folds=folds, seed=seed, num_samples=1, progress=progress
        )

    def temperatures(self, x: Array) -> np.ndarray:
        """``T(x)`` of each input, ``[N]`` (numpy float64)."""
        return self._temperatures(x)

    def predict(self, x: Array, *, num_samples: int = 1) -> Array:
        """The network's softmax ``[1, N, C]`` (a JAX array), each input's tempered by its own ``T(x)``
        (``num_samples`` is accepted for the uniform interface; one network gives one draw)."""
        return self._predict(x, 1)
