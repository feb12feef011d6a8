"""The arguments both backends' ``bayesian()`` take, checked in one place, and what ``bnn.elbo`` returns.

``uncertlr.torch.bayesian`` and ``uncertlr.jax.bayesian`` accept and refuse exactly the
same values for the arguments they share (a cross-backend test holds them to it):

* ``num_data``: an integer >= 1 (Python or numpy), the training-set size;
* ``kl_weight``: a finite number > 0 (Pyro's and NumPyro's ``scale`` handlers refuse 0);
* ``init_scale``: a finite number > 0;
* ``prior``: an :mod:`uncertlr.priors` spec (default ``Normal(1.0)``);
* ``likelihood``: a :mod:`uncertlr.likelihoods` spec or its name;
* ``select``: a predicate or :class:`~uncertlr.select.Selector` (default: all parameters).

Both backends' ``predict`` split their work the same way, by :func:`chunk_plan` under
:data:`MEMORY_BUDGET`, so memory stays bounded whatever the number of draws and inputs.

Example:
    >>> from uncertlr._spec import bnn_spec
    >>> bnn_spec(num_data=100).kl_weight
    1.0
    >>> bnn_spec(num_data=0)
    Traceback (most recent call last):
    ...
    ValueError: num_data must be a positive integer (the training-set size); got 0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

from uncertlr import likelihoods as _lik
from uncertlr import priors as _priors
from uncertlr.select import Predicate, Selector, as_selector

__all__ = [
    "ACCELERATOR_ACTIVATION_FRACTION",
    "ACCELERATOR_WEIGHT_FRACTION",
    "MEMORY_BUDGET",
    "BNNSpec",
    "ChunkPlan",
    "ELBOTerms",
    "bnn_spec",
    "chunk_plan",
    "device_chunk_plan",
    "grown_budgets",
    "positive_float",
    "positive_int",
]


def positive_int(name: str, value: Any, *, what: str = "") -> int:
    """``value`` as an ``int`` >= 1 (Python or numpy integers; never a bool); a ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer{what}; got {value!r}")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` > 0 (Python or numpy numbers; never a bool); a ValueError otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


class ELBOTerms(NamedTuple):
    """One evaluation of the negative ELBO on a minibatch (all per data point), on either backend.

    Returned by ``bnn.elbo`` of :mod:`uncertlr.torch` (tensors) and :mod:`uncertlr.jax` (arrays).

    Attributes:
        loss: ``nll + kl_weight * kl / num_data`` — what to minimise (0-d).
        nll: expected negative log-likelihood per data point, averaged over particles (0-d).
        kl: ``KL(q || p)`` of the whole posterior (0-d; Monte Carlo where no closed form).
        outputs: the network's raw outputs for each particle, ``[K, B, ...]`` (logits for
            classification) — reuse them for uncertainty signals without a second forward pass.
    """

    loss: Any
    nll: Any
    kl: Any
    outputs: Any


class BNNSpec(NamedTuple):
    """The checked, normalised arguments of ``bayesian()``."""

    num_data: int
    prior: _priors.Prior
    likelihood: _lik.Likelihood
    select: Selector
    init_scale: float
    kl_weight: float
    validate: bool


def bnn_spec(
    *,
    num_data: Any,
    prior: _priors.Prior | None = None,
    likelihood: _lik.Likelihood | str = "categorical",
    select: Predicate | Selector | None = None,
    init_scale: Any = 1e-3,
    kl_weight: Any = 1.0,
    validate: bool = True,
) -> BNNSpec:
    """Check and normalise the arguments both ``bayesian()`` functions share (see the module docs)."""
    num_data = positive_int("num_data", num_data, what=" (the training-set size)")
    kl_weight = positive_float("kl_weight", kl_weight)
    init_scale = positive_float("init_scale", init_scale)
    prior = _priors.Normal(1.0) if prior is None else prior
    if not isinstance(prior, (_priors.Normal, _priors.FanInNormal, _priors.ScaleMixtureNormal)):
        raise TypeError(f"prior must be an uncertlr.priors spec; got {type(prior).__name__}")
    if not isinstance(validate, bool):
        raise TypeError(f"validate must be True or False; got {validate!r}")
    return BNNSpec(
        num_data=num_data,
        prior=prior,
        likelihood=_lik.as_likelihood(likelihood),
        select=as_selector(select),
        init_scale=init_scale,
        kl_weight=kl_weight,
        validate=validate,
    )


# --------------------------------------------------------------------------- bounded-memory predict (both backends)

#: Bytes of activations (inputs included) one vectorised forward pass of ``predict`` may hold:
#: ``draws × rows × bytes per row``. Both backends' ``predict`` split draws and inputs to stay under it.
MEMORY_BUDGET = 256 << 20


#: On an accelerator whose free memory is known, one pass may grow to these fractions of it (activations,
#: weights) when the budgets above would split the work: small passes leave a GPU idle between launches
#: (a ResNet-18's 32 draws × 128 inputs ran ~12× slower as ~80 passes on an H200).
ACCELERATOR_ACTIVATION_FRACTION = 1 / 4
ACCELERATOR_WEIGHT_FRACTION = 1 / 8


class ChunkPlan(NamedTuple):
    """``draws`` weight samples × ``rows`` inputs per vectorised forward pass."""

    draws: int
    rows: int


def chunk_plan(
    *,
    num_samples: int,
    num_rows: int,
    num_params: int,
    row_bytes: int,
    weight_elements: int,
    memory_budget: int = MEMORY_BUDGET,
    max_batch: int | None = None,
) -> ChunkPlan:
    """Draws per chunk (``draws × P ≤ weight_elements``) and rows per chunk (``draws × rows × row_bytes ≤ memory_budget``,
    or ``max_batch`` rows when given).

    Example:
        >>> chunk_plan(num_samples=256, num_rows=10_000, num_params=1000, row_bytes=4096, weight_elements=2**25)
        ChunkPlan(draws=256, rows=256)
        >>> chunk_plan(num_samples=8, num_rows=10, num_params=1000, row_bytes=4096, weight_elements=2**25)
        ChunkPlan(draws=8, rows=10)
    """
    draws = max(1, min(num_samples, weight_elements // max(1, num_params)))
    if max_batch is not None:
        return ChunkPlan(draws, min(num_rows, max_batch))
    rows = memory_budget // (draws * row_bytes)
    if rows < 1:  # even one row is too much for this many draws at once: fewer draws
        draws = max(1, min(draws, memory_budget // row_bytes))
        rows = 1
    return ChunkPlan(draws, max(1, min(num_rows, rows)))


def grown_budgets(
    free_bytes: int, *, memory_budget: int, weight_elements: int, element_size: int
) -> tuple[int, int]:
    """``(activation bytes, weight elements)`` grown to the accelerator fractions of ``free_bytes`` (never shrunk).

    Example:
        >>> grown_budgets(8 << 30, memory_budget=256 << 20, weight_elements=2**25, element_size=4)
        (2147483648, 268435456)
    """
    return (
        max(memory_budget, int(free_bytes * ACCELERATOR_ACTIVATION_FRACTION)),
        max(weight_elements, int(free_bytes * ACCELERATOR_WEIGHT_FRACTION) // max(1, element_size)),
    )


def device_chunk_plan(
    free_memory: Callable[[], int | None] | None,
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
    """:func:`chunk_plan` with the given budgets, or, where they would split the work and ``free_memory()``
    knows the device's free bytes (``None``: the CPU), with :func:`grown_budgets` of it. ``free_memory`` is
    asked only then: a driver call per ``predict`` is not free.

    Example:
        >>> device_chunk_plan(lambda: 8 << 30, num_samples=32, num_rows=128, num_params=11_200_000,
        ...                   row_bytes=5_000_000, weight_elements=2**25, memory_budget=256 << 20,
        ...                   max_batch=None, element_size=4)
        ChunkPlan(draws=23, rows=18)
    """
    kw = dict(num_samples=num_samples, num_rows=num_rows, num_params=num_params, row_bytes=row_bytes)
    plan = chunk_plan(**kw, weight_elements=weight_elements, memory_budget=memory_budget, max_batch=max_batch)
    if free_memory is None or (plan.draws >= num_samples and plan.rows >= num_rows):
        return plan
    free = free_memory()
    if free is None:
        return plan
    memory_budget, weight_elements = grown_budgets(
        free, memory_budget=memory_budget, weight_elements=weight_elements, element_size=element_size
    )
    return chunk_plan(**kw, weight_elements=weight_elements, memory_budget=memory_budget, max_batch=max_batch)
