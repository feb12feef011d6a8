"""The input features of a network's last ``nn.Linear`` layer (shared by the last-layer methods)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__: list[str] = []


def last_linear(net: nn.Module, name: str | None, what: str) -> tuple[str, nn.Linear]:
    """``(name, layer)`` of the ``nn.Linear`` called ``name`` (default: the last one in ``named_modules()``)."""
    linears = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear layer for {what}")
    name = name if name is not None else list(linears)[-1]
    if name not in linears:
        raise ValueError(
            f"last_layer={name!r} is not an nn.Linear of the network; Linear layers: {list(linears)}"
        )
    return name, linears[name]


def layer_input(net: nn.Module, layer: nn.Linear, name: str, x: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """``(φ[N, D], outputs)``: the input of ``layer`` and the network's output on ``x``, in eval mode, no gradient.

    The network's output must be ``layer``'s output (the methods read the features the head sees).
    """
    store: dict[str, Tensor] = {}
    handle = layer.register_forward_hook(lambda m, a, o: store.update(phi=a[0], out=o))
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        handle.remove()
        net.train(was)
    if "phi" not in store or store["out"].shape != out.shape or not torch.equal(store["out"], out):
        raise ValueError(
            f"the output of {type(net).__name__} must be the output of its last Linear layer ({name!r}) for {what}"
        )
    phi = store["phi"]
    if phi.dim() != 2:
        raise ValueError(f"the last layer's input must be [N, D]; got shape {tuple(phi.shape)}")
    return phi, out
