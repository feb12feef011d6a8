"""Predictions in bounded memory: a BNN's outputs ``[S, N, ...]`` computed in chunks of draws × inputs.

``bnn.predict`` and ``bnn.sample_outputs`` evaluate the network for ``S`` weight draws at once
with ``torch.func.vmap``. Materialising every draw's weights and every input's activations at
once grows as ``S × (P + N × activations)``; here the draws are split so that ``k × P`` stays
under ``weight_elements`` and the inputs so that ``k × m`` rows of activations stay under a
memory budget. The activation size of one input row is measured once per call, with forward
hooks on a probe of a few rows. Each chunk of draws is sampled once and applied to every chunk
of inputs, so the sample axis means the same weights for every input.

Only the result ``[S, N, ...]`` (and its transform, e.g. the softmax, written chunk by chunk
into it) grows with ``S × N``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from uncertlr import _spec
from uncertlr._spec import MEMORY_BUDGET, device_chunk_plan
from uncertlr.torch._adapters import take_rows
from uncertlr.torch._modules import named_shape_errors
from uncertlr.torch._rnn import vmappable_rnns

__all__ = ["MEMORY_BUDGET", "activation_bytes_per_row", "chunked_outputs", "cuda_free_memory"]

#: Rows of the probe that measures the activations of one input.
_PROBE_ROWS = 4


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o) for o in obj.values())
    return 0


def activation_bytes_per_row(
    net: torch.nn.Module, call: Callable[[Any], Any], x: Any, num_rows: int | None = None
) -> int:
    """Bytes one input row occupies in every module's output (and the input itself), measured on a probe.

    ``call(x_probe)`` runs the network once; containers' outputs are counted with their
    children's, so this overestimates (a safe bound for the budget). ``x`` is a tensor or a
    structured batch (tuples, lists, dicts of tensors) with ``num_rows`` rows.
    """
    probe = take_rows(x, 0, _PROBE_ROWS)
    rows = min(_PROBE_ROWS, x.shape[0] if num_rows is None else num_rows)
    total = _tensor_bytes(probe)

    def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
        nonlocal total
        total += _tensor_bytes(out)

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        with torch.no_grad():
            call(probe)
    finally:
        for h in handles:
            h.remove()
    return max(1, math.ceil(total / max(1, rows)))


def cuda_free_memory(device: torch.device) -> Callable[[], int | None] | None:
    """How to ask ``device`` for its free bytes (``torch.cuda.mem_get_info``), or ``None`` off CUDA.

    :func:`uncertlr._spec.device_chunk_plan` asks only when the CPU budgets would split the work: on a
    CUDA device they cut a ResNet-18's 32 draws × 128 inputs into ~80 small passes, each too small to fill
    the GPU (``predict`` ran ~12× slower than with the grown budgets on an H200).

    Example:
        >>> cuda_free_memory(torch.device("cpu")) is None
        True
    """
    if device.type != "cuda":
        return None
    return lambda: int(torch.cuda.mem_get_info(device)[0])


def chunked_outputs(
    bnn: Any,
    x: Any,
    num_samples: int,
    *,
    weight_elements: int,
    max_batch: int | None = None,
    memory_budget: int | None = None,
    check: Callable[[Tensor, Tensor], None] | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    scale_to_device: bool = True,
) -> Tensor:
    """``transform(outputs)`` ``[S, N, ...]`` of ``bnn``'s network under ``S`` fresh posterior draws, in chunks.

    Args:
        bnn: a :class:`~uncertlr.torch.BNN` (its ``posterior``, ``net``, ``_call``, ``_noise``).
        weight_elements: most ``draws × P`` weight elements at once.
        max_batch: inputs per forward pass (default: as many as ``memory_budget`` allows).
        memory_budget: bytes of activations per forward pass (default :data:`uncertlr._spec.MEMORY_BUDGET`;
            on a CUDA device see ``scale_to_device``).
        check: called as ``check(lead_chunk, outputs_chunk)`` before ``transform`` (validation), with
            the tensor that stands for the batch chunk (see :mod:`uncertlr.torch._adapters`).
        transform: applied to each chunk of outputs (e.g. a softmax), written into the result.
        scale_to_device: on a CUDA device, grow both budgets with its free memory where they would split
            the work (:func:`uncertlr._spec.device_chunk_plan`).
    """
    post = bnn.posterior
    lead = bnn.adapter.lead(x)
    n = lead.shape[0]
    with torch.no_grad(), bnn._eval_mode(), vmappable_rnns(bnn.net):
        loc = post.loc
        budget = _spec.MEMORY_BUDGET if memory_budget is None else memory_budget
        row_bytes = 1
        if max_batch is None:
            with named_shape_errors(lead):  # the probe is the first forward pass: name x's problems
                row_bytes = activation_bytes_per_row(
                    bnn.net, lambda xb: bnn._call(post.unflatten(loc), xb), x, n
                )
        plan = device_chunk_plan(
            cuda_free_memory(loc.device) if scale_to_device else None,
            num_samples=num_samples,
            num_rows=n,
            num_params=post.num_params,
            row_bytes=row_bytes,
            weight_elements=weight_elements,
            memory_budget=budget,
            max_batch=max_batch,
            element_size=loc.element_size(),
        )
        result: Tensor | None = None
        for s0 in range(0, num_samples, plan.draws):
            k = min(plan.draws, num_samples - s0)
            flat_w = post.draw(bnn._noise(k))  # mean-field, low-rank or full covariance
            for r0 in range(0, n, plan.rows):
                xb = x if plan.rows >= n else take_rows(x, r0, r0 + plan.rows)
                lead_b = lead[r0 : r0 + plan.rows]
                with named_shape_errors(lead_b):
                    out = vmap(lambda w, xb=xb: bnn._call(post.unflatten(w), xb))(flat_w)
                if check is not None:
                    check(lead_b, out)
                if transform is not None:
                    out = transform(out)
                if plan.draws >= num_samples and plan.rows >= n:
                    return out  # one chunk: no copy
                if result is None:
                    result = out.new_empty((num_samples, n, *out.shape[2:]))
                result[s0 : s0 + k, r0 : r0 + lead_b.shape[0]] = out
                del out
    assert result is not None
    return result
