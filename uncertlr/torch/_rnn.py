"""Pure-tensor forwards for ``nn.RNN``/``nn.LSTM``/``nn.GRU`` that ``torch.func.vmap`` can batch.

``aten::lstm`` and ``aten::gru`` have no vmap batching rule, so drawing several
weight samples at once would fail. Inside :func:`vmappable_rnns` every recurrent
module of a network uses the step-by-step forward below instead: the same
equations as PyTorch's (gate order ``i, f, g, o`` for LSTM; ``r, z, n`` for GRU
with the reset gate applied to ``W_hn h + b_hn``), a loop over time steps and
layers, never over weight samples. Tests compare it with the native modules.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["vmappable_rnns"]


def _cell(
    mode: str,
    nonlinearity: str,
    x: Tensor,
    h: Tensor,
    c: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    gi = F.linear(x, w_ih, b_ih)
    gh = F.linear(h, w_hh, b_hh)
    if mode == "LSTM":
        assert c is not None
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, None
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    return act(gi + gh), None


def _rnn_forward(self: nn.RNNBase, input: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None):  # noqa: A002
    if isinstance(input, nn.utils.rnn.PackedSequence):
        raise NotImplementedError(
            "PackedSequence inputs cannot be vectorised over weight samples; pad the batch instead"
        )
    if getattr(self, "proj_size", 0):
        raise NotImplementedError("LSTM with proj_size > 0 cannot be vectorised over weight samples yet")
    mode = self.mode if self.mode in ("LSTM", "GRU") else "RNN"
    nonlinearity = "relu" if self.mode == "RNN_RELU" else "tanh"
    unbatched = input.dim() == 2
    x = (
        input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
    )  # [T, B, F]
    num_dir = 2 if self.bidirectional else 1
    batch = x.shape[1]
    h0: Tensor | None
    c0: Tensor | None = None
    if hx is None:
        h0 = None
    elif mode == "LSTM":
        h0, c0 = hx  # type: ignore[misc]
    else:
        h0 = hx  # type: ignore[assignment]
    if unbatched:
        h0 = h0.unsqueeze(1) if h0 is not None else None
        c0 = c0.unsqueeze(1) if c0 is not None else None
    zeros = x.new_zeros(batch, self.hidden_size)
    h_n, c_n = [], []
    layer_input = x
    for layer in range(self.num_layers):
        outs = []
        for d in range(num_dir):
            sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
            w_ih, w_hh = getattr(self, "weight_ih" + sfx), getattr(self, "weight_hh" + sfx)
            b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
            b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
            k = layer * num_dir + d
            h = h0[k] if h0 is not None else zeros
            c = (c0[k] if c0 is not None else zeros) if mode == "LSTM" else None
            steps = range(layer_input.shape[0] - 1, -1, -1) if d == 1 else range(layer_input.shape[0])
            seq = [None] * layer_input.shape[0]
            for t in steps:
                h, c = _cell(mode, nonlinearity, layer_input[t], h, c, w_ih, w_hh, b_ih, b_hh)
                seq[t] = h
            outs.append(torch.stack(seq))  # type: ignore[arg-type]
            h_n.append(h)
            if c is not None:
                c_n.append(c)
        layer_input = torch.cat(outs, dim=-1) if num_dir == 2 else outs[0]
        if self.dropout > 0 and self.training and layer < self.num_layers - 1:
            layer_input = F.dropout(layer_input, self.dropout, training=True)
    output = layer_input
    hn = torch.stack(h_n)
    cn = torch.stack(c_n) if mode == "LSTM" else None
    if unbatched:
        output, hn = output.squeeze(1), hn.squeeze(1)
        cn = cn.squeeze(1) if cn is not None else None
    elif self.batch_first:
        output = output.transpose(0, 1)
    return output, ((hn, cn) if mode == "LSTM" else hn)


@contextlib.contextmanager
def vmappable_rnns(net: nn.Module) -> Iterator[bool]:
    """Within the block, every ``nn.RNNBase`` in ``net`` runs the vmap-friendly forward.

    Yields whether any recurrent module was found. The instance attribute is removed
    on exit, so the fast native kernels are used everywhere else.
    """
    patched = [m for m in net.modules() if isinstance(m, nn.RNNBase)]
    for m in patched:
        m.forward = types.MethodType(_rnn_forward, m)  # type: ignore[method-assign]
    try:
        yield bool(patched)
    finally:
        for m in patched:
            del m.forward
