"""The input features of a network's layers: its last ``nn.Linear`` layer's (shared by the last-layer methods),
or any Linear or convolution layer's (:class:`~uncertlr.torch.FeatureDensity`; a convolution's input is averaged
over its spatial positions, one value per channel)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__: list[str] = []


def last_linear(
    net: nn.Module, name: str | None, what: str, arg: str = "last_layer"
) -> tuple[str, nn.Linear]:
    """``(name, layer)`` of the ``nn.Linear`` called ``name`` (default: the last one in ``named_modules()``)."""
    linears = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear layer for {what}")
    name = name if name is not None else list(linears)[-1]
    if name not in linears:
        raise ValueError(f"{arg}={name!r} is not an nn.Linear of the network; Linear layers: {list(linears)}")
    return name, linears[name]


CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def layer_inputs(
    net: nn.Module, layers: dict[str, nn.Module], x: Tensor, *, head: str | None = None, what: str = ""
) -> tuple[list[Tensor], Tensor]:
    """``([φ_l[N, D_l] for each layer], outputs)``: the inputs of ``layers`` and the network's output on ``x``,
    in eval mode, without gradients (one forward pass). A convolution's input ``[N, C, *spatial]`` is averaged
    over its spatial positions: ``[N, C]``.

    ``head`` names one of ``layers`` whose output must be the network's output (the last-layer methods read
    the features the head sees); a ValueError otherwise, naming ``what`` needs it.
    """
    store: dict[str, tuple[Tensor, Any]] = {}

    def keeper(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:  # None: output unchanged
            phi = args[0]
            if isinstance(module, CONV) and name not in store and phi.dim() > 2:  # (the first call counts)
                phi = phi.mean(dim=tuple(range(2, phi.dim())))  # [N, C, *spatial] -> [N, C]
            store.setdefault(name, (phi, output))

        return hook

    handles = [layer.register_forward_hook(keeper(name)) for name, layer in layers.items()]
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in handles:
            h.remove()
        net.train(was)
    missing = [name for name in layers if name not in store]
    if missing:
        raise ValueError(f"the forward pass of {type(net).__name__} never called the layer(s) {missing}")
    if head is not None:
        head_out = store[head][1]
        if not isinstance(out, Tensor) or head_out.shape != out.shape or not torch.equal(head_out, out):
            raise ValueError(
                f"the output of {type(net).__name__} must be the output of its last Linear layer ({head!r}) "
                f"for {what}"
            )
    phis = [store[name][0] for name in layers]
    for name, phi in zip(layers, phis):
        if phi.dim() != 2:
            raise ValueError(
                f"the input of layer {name!r} must be [N, D] (a Linear) or [N, C, *spatial] (a convolution); "
                f"got shape {tuple(phi.shape)}"
            )
    return phis, out


def layer_input(net: nn.Module, layer: nn.Linear, name: str, x: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """``(φ[N, D], outputs)``: the input of the head ``layer`` and the network's output on ``x`` (see
    :func:`layer_inputs`; the network's output must be ``layer``'s)."""
    (phi,), out = layer_inputs(net, {name: layer}, x, head=name, what=what)
    return phi, out
