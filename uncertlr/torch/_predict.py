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
from uncertlr._spec import MEMORY_BUDGET, ChunkPlan, chunk_plan
from uncertlr.torch._adapters import take_rows
from uncertlr.torch._modules import named_shape_errors
from uncertlr.torch._rnn import vmappable_rnns

__all__ = ["MEMORY_BUDGET", "activation_bytes_per_row", "chunked_outputs", "device_budgets", "plan_chunks"]

#: On a CUDA device the budgets of one vectorised pass grow to these fractions of its free memory.
CUDA_ACTIVATION_FRACTION = 1 / 4
CUDA_WEIGHT_FRACTION = 1 / 8

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


def device_budgets(
    device: torch.device, *, memory_budget: int, weight_elements: int, element_size: int
) -> tuple[int, int]:
    """``(activation bytes, weight elements)`` of one vectorised pass on ``device``.

    The given budgets bound memory on the CPU. On a CUDA device they would cut a ResNet-18's
    32 draws × 128 inputs into ~80 small passes, each too small to fill the GPU (predict ran ~18×
    slower per input-sample than the deterministic forward pass on an H200); there each grows to a
    fraction of the device's free memory (:data:`CUDA_ACTIVATION_FRACTION`, :data:`CUDA_WEIGHT_FRACTION`).

    Example:
        >>> device_budgets(torch.device("cpu"), memory_budget=1 << 20, weight_elements=1000, element_size=4)
        (1048576, 1000)
    """
    if device.type != "cuda":
        return memory_budget, weight_elements
    free, _ = torch.cuda.mem_get_info(device)
    return (
        max(memory_budget, int(free * CUDA_ACTIVATION_FRACTION)),
        max(weight_elements, int(free * CUDA_WEIGHT_FRACTION) // max(1, element_size)),
    )


def plan_chunks(
    device: torch.device | None,
    *,
    num_samples: int,
    num_rows: int,
    num_params: int,
    row_bytes: int,
    weight_elements: int,
    memory_budget: int,
    max_batch: int | None,
    element_size: int,
) -> ChunkPlan:
    """:func:`~uncertlr._spec.chunk_plan` with the given budgets, or, on a CUDA ``device`` where they would split
    the work, with :func:`device_budgets` (asked only then: a driver call per ``predict`` is not free).

    Example:
        >>> plan_chunks(None, num_samples=8, num_rows=10, num_params=100, row_bytes=64,
        ...             weight_elements=2**20, memory_budget=2**20, max_batch=None, element_size=4)
        ChunkPlan(draws=8, rows=10)
    """
    kw = dict(num_samples=num_samples, num_rows=num_rows, num_params=num_params, row_bytes=row_bytes)
    plan = chunk_plan(**kw, weight_elements=weight_elements, memory_budget=memory_budget, max_batch=max_batch)
    if device is None or device.type != "cuda" or (plan.draws >= num_samples and plan.rows >= num_rows):
        return plan
    memory_budget, weight_elements = device_budgets(
        device, memory_budget=memory_budget, weight_elements=weight_elements, element_size=element_size
    )
    return chunk_plan(**kw, weight_elements=weight_elements, memory_budget=memory_budget, max_batch=max_batch)


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
        scale_to_device: on a CUDA device, grow both budgets with its free memory (:func:`device_budgets`).
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
        plan = plan_chunks(
            loc.device if scale_to_device else None,
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
