"""Bayesian neural networks from any ``torch.nn.Module``, as Pyro models with a fast exact ELBO.

``bayesian(net, ...)`` deep-copies ``net``, makes the selected parameters random
(prior ``p(w)``, mean-field Normal posterior ``q(w)``) and returns a :class:`BNN`:

* ``bnn.loss(x, y)`` — the minibatch negative ELBO per data point, differentiable,
  for any ``torch.optim`` optimizer over ``bnn.parameters()`` in your own loop;
* ``bnn.model`` / ``bnn.guide`` — the same model as Pyro programs (``pyro.sample``
  sites named after the parameters), for ``pyro.infer.SVI``, ``Predictive``,
  ``TraceMeanField_ELBO`` or effect handlers. ``bnn.loss`` equals
  ``TraceMeanField_ELBO().differentiable_loss(bnn.model, bnn.guide, x, y) / num_data``
  for the same weight draw; it is computed by a fused kernel instead of a Pyro trace;
* ``bnn.predict(x, num_samples=S)`` — ``[S, N, C]`` probabilities (or
  :class:`NormalPrediction` for regression), vectorised over samples with ``torch.func.vmap``;
* ``bnn.posterior_scale()`` — the posterior std of every random parameter.

Nothing lives in Pyro's global parameter store: all state is in the module.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn
from torch.func import vmap

from uncertlr import likelihoods as _lik
from uncertlr import priors as _priors
from uncertlr._spec import ELBOTerms, bnn_spec, positive_int
from uncertlr.likelihoods import NormalPrediction
from uncertlr.metrics import LayerSpread, layer_spread
from uncertlr.select import Predicate, Selector
from uncertlr.torch import _checks
from uncertlr.torch._adapters import Adapter, Inputs, Output
from uncertlr.torch._guards import check_predicted, check_tensor, nonfinite_cause, warn_if_probabilities
from uncertlr.torch._likelihood import LikelihoodModule
from uncertlr.torch._lowrank import FullNormal, LowRankNormal, joint_guide, make_posterior
from uncertlr.torch._modules import fan_in, named_shape_errors, owner
from uncertlr.torch._noise import SEED_BOUND, seeded_standard_normal, standard_normal
from uncertlr.torch._predict import chunked_outputs
from uncertlr.torch._programs import meanfield_guide, prior_site
from uncertlr.torch._rnn import vmappable_rnns

__all__ = ["BNN", "ELBOTerms", "NormalPrediction", "bayesian"]

#: Upper bound on ``num_samples * P`` weight elements materialised at once by ``predict``.
PREDICT_CHUNK_ELEMENTS = 2**25


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- antithetic noise under compile

_HANDLES = itertools.count()
_PAIRED: weakref.WeakValueDictionary[int, BNN] = weakref.WeakValueDictionary()


@torch.library.custom_op(
    "uncertlr::paired_standard_normal", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def _paired_normal_op(like: Tensor, handle: int) -> Tensor:
    """A BNN's antithetic training noise ``[P]`` (already negated on the closing step) for ``torch.compile``.

    The pairing state lives in the BNN (``handle``), so it runs here, at run time, once per call.
    """
    eps, sign = _PAIRED[handle]._paired_draw(like)
    return eps if sign == 1 else eps.neg()


@_paired_normal_op.register_fake
def _(like: Tensor, handle: int) -> Tensor:
    return like.new_empty((like.numel(),))


# --------------------------------------------------------------------------- the BNN


class BNN(nn.Module):
    """A Bayesian version of a torch network; create it with :func:`bayesian`.

    Submodules: ``net`` (the deep copy; random parameters turned into buffers),
    ``posterior`` (:class:`~uncertlr.torch._meanfield.MeanFieldNormal`), ``likelihood_module``.
    ``parameters()`` holds the posterior's ``loc``/``log_scale``, the learned noise (if
    any) and every deterministic parameter of ``net``.
    """

    #: state-dict entries a saved state may lack (it then loads with their defaults)
    _optional_state_keys = ("noise_pair",)

    def __init__(
        self,
        net: nn.Module,
        *,
        prior: _priors.Prior,
        likelihood: _lik.Categorical | _lik.Normal,
        select: Selector,
        num_data: int,
        init_scale: float,
        kl_weight: float,
        validate: bool,
        adapter: Adapter | None = None,
        guide: str = "meanfield",
        rank: int | None = None,
        antithetic: bool = True,
    ):
        super().__init__()
        self.net = copy.deepcopy(net)
        self.adapter = adapter or Adapter()
        self.prior = prior
        self.num_data = int(num_data)
        self.kl_weight = float(kl_weight)
        self.validate = bool(validate)
        self._checked = False  # values checked on the host once (see _checks.host_reads)
        self.likelihood_module = LikelihoodModule(likelihood)

        names = [n for n, _ in self.net.named_parameters()]
        if not names:
            raise ValueError("the network has no parameters to make Bayesian")
        bound = select.bind(names)
        chosen: dict[str, Tensor] = {}
        for n, p in self.net.named_parameters():
            if bound(n, owner(self.net, n)[0]) and p.requires_grad:
                chosen[n] = p
        aliases: dict[int, list[str]] = {}
        for n, p in self.net.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(n)
        for p in chosen.values():
            if len(aliases[id(p)]) > 1:
                raise ValueError(f"tied parameters cannot be made random: {aliases[id(p)]} share one tensor")
        if not chosen:
            raise ValueError(f"select={select!r} chose none of the network's parameters {names[:6]}...")

        fan_ins = {n: fan_in(self.net, n, p) for n, p in chosen.items()}
        self.posterior = make_posterior(
            guide, {n: p.detach() for n, p in chosen.items()}, init_scale, rank=rank
        )
        # Random parameters become non-persistent buffers holding the initial weights; every
        # forward pass replaces them with posterior draws through functional_call.
        for n in chosen:
            mod, leaf = owner(self.net, n)
            t = mod._parameters.pop(leaf)
            mod.register_buffer(leaf, t.detach().clone(), persistent=False)

        prior_scale = torch.cat(
            [
                torch.full((p.numel(),), prior.scale_for(fan_ins[n]), dtype=p.dtype, device=p.device)
                for n, p in chosen.items()
            ]
        )
        self.register_buffer("prior_prec", prior_scale.pow(-2))
        # the same precision for every weight (a Normal prior): the KL kernel multiplies by a number
        same = bool((self.prior_prec == self.prior_prec[0]).all())
        self._prior_prec_number: float | None = float(self.prior_prec[0]) if same else None
        # constant part of KL(q || p) for a Normal prior: sum(log sigma_p) - P / 2
        self.register_buffer("kl_const", prior_scale.log().sum() - 0.5 * prior_scale.numel())
        if prior.centered:
            self.register_buffer("prior_loc", self.posterior.loc.detach().clone())
        elif prior.loc != 0.0:
            self.register_buffer("prior_loc", torch.full_like(prior_scale, float(prior.loc)))
        else:
            self.prior_loc: Tensor | None = None
        self._analytic_kl = not isinstance(prior, _priors.ScaleMixtureNormal)
        # antithetic training noise (mean-field only): the seed of the last draw and whether the
        # next training step takes its negation. A buffer, so a checkpoint resumes mid-pair exactly;
        # the Python copy spares the accelerator a host read per step
        self.antithetic = bool(antithetic) and not isinstance(self.posterior, (LowRankNormal, FullNormal))
        if self.antithetic:
            self.register_buffer("noise_pair", torch.zeros(2, dtype=torch.int64))
        self._pair: tuple[int, int] = (0, 0)  # (phase, seed) as in noise_pair
        self._pair_eps: tuple[int, Tensor] | None = None  # (seed, the draw) while its negation is due
        self._register()
        self._has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.net.modules())

    # ------------------------------------------------------------------ introspection

    @property
    def random_names(self) -> list[str]:
        """Names of the random parameters, in storage order."""
        return list(self.posterior.names)

    @property
    def likelihood(self) -> _lik.Categorical | _lik.Normal:
        return self.likelihood_module.spec

    def posterior_loc(self) -> dict[str, Tensor]:
        """Posterior mean of every random parameter: ``{name: tensor shaped like the parameter}`` (detached)."""
        return self.posterior.unflatten(self.posterior.loc.detach())

    def posterior_scale(self) -> dict[str, Tensor]:
        """Posterior std of every random parameter: ``{name: tensor shaped like the parameter}`` (detached).

        Example:
            >>> import torch
            >>> from uncertlr.torch import bayesian
            >>> bnn = bayesian(torch.nn.Linear(3, 2), num_data=10, init_scale=0.01)
            >>> {k: tuple(v.shape) for k, v in bnn.posterior_scale().items()}
            {'weight': (2, 3), 'bias': (2,)}
        """
        return self.posterior.unflatten(self.posterior.scale.detach())

    def posterior_spread(self) -> dict[str, LayerSpread]:
        """Per layer: mean posterior std and mean ``|μ|/σ`` (see :func:`uncertlr.metrics.layer_spread`)."""
        return layer_spread(self.posterior_loc(), self.posterior_scale())

    def sample_parameters(self, num_samples: int) -> dict[str, Tensor]:
        """Posterior draws ``{name: [num_samples, *shape]}`` of every random parameter (no gradient)."""
        with torch.no_grad():
            eps = torch.randn(
                num_samples,
                self.posterior.num_params,
                dtype=self.posterior.loc.dtype,
                device=self.posterior.loc.device,
            )
            return self.posterior.unflatten(self.posterior.draw(eps))

    def mean_network(self) -> nn.Module:
        """A deterministic copy of the network with every random parameter at its posterior mean."""
        net = copy.deepcopy(self.net)
        for n, t in self.posterior_loc().items():
            mod, leaf = owner(net, n)
            del mod._buffers[leaf]
            mod.register_parameter(leaf, nn.Parameter(t.clone()))
        return net

    # ------------------------------------------------------------------ validation

    def _check_input(self, x: Any) -> Tensor:
        """Check every tensor of the batch ``x``; return the one that stands for it (see ``_adapters``)."""
        for name, t in self.adapter.tensors(x):
            check_tensor(self, t, name)
        return self.adapter.lead(x)

    def _host_checks(self, done: bool = False) -> bool:
        """Whether value checks read back to the host now; ``done`` marks the end of a checked call."""
        host = _checks.host_reads(self.posterior.loc, checked_before=self._checked)
        if done and host:
            self._checked = True
        return host

    # ------------------------------------------------------------------ forward passes

    def _call(self, weights: Mapping[str, Tensor], x: Any) -> Tensor:
        # the random parameters are never tied (__init__ refuses that): no search for their aliases
        return self.adapter.call(self.net, weights, x, tie_weights=False)

    def _outputs(self, flat_w: Tensor, x: Tensor) -> Tensor:
        """Network outputs ``[K, B, ...]`` for flat weights ``[P]`` (K = 1) or ``[K, P]``; vmap when ``K > 1``."""
        with named_shape_errors(self.adapter.lead(x)):
            return self._outputs_unchecked(flat_w, x)

    def _outputs_unchecked(self, flat_w: Tensor, x: Tensor) -> Tensor:
        if flat_w.dim() == 1:
            return self._call(self.posterior.unflatten(flat_w), x).unsqueeze(0)
        if self._has_batchnorm and self.net.training:
            raise ValueError(
                "BatchNorm in training mode cannot be evaluated for several weight samples at once "
                "(its running statistics are shared); use num_particles=1 or put the BatchNorm layers in eval mode"
            )
        with vmappable_rnns(self.net):
            return vmap(lambda w: self._call(self.posterior.unflatten(w), x), randomness="different")(flat_w)

    def _noise(self, num: int | None) -> Tensor:
        """Standard-normal noise ``[num, P]``, or ``[P]`` when ``num`` is None."""
        return standard_normal(self.posterior.loc.detach(), num)

    def _training_noise(self, num: int | None) -> tuple[Tensor, float]:
        """``(eps, sign)``: the noise ``sign * eps`` of one training step (antithetic pairs, see :func:`bayesian`).

        With several particles the second half of them are the first half negated; with one, every
        other training step negates the previous step's draw (kept, or drawn again from its seed),
        by ``sign = -1`` (the sampling kernel negates it for free). Each step's noise is exactly
        N(0, I); only consecutive steps are paired.
        """
        if not (self.antithetic and self.training and torch.is_grad_enabled()):
            return self._noise(num), 1.0
        if num is not None:
            half = self._noise((num + 1) // 2)
            return torch.cat([half, half[: num // 2].neg()]), 1.0
        like = self.posterior.loc.detach()
        if torch.compiler.is_compiling():  # the pairing runs in an opaque op, outside the graph
            return _paired_normal_op(like, self._handle), 1.0
        return self._paired_draw(like)

    def _paired_draw(self, like: Tensor) -> tuple[Tensor, float]:
        """One step of the pairing across steps: ``(eps, 1.0)`` opens a pair, ``(eps, -1.0)`` closes it."""
        phase, seed = self._pair
        if phase == 0:
            seed = int(torch.randint(SEED_BOUND, (1,), dtype=torch.int64))
            eps = seeded_standard_normal(like, seed)
            self._set_pair(1, seed)
            self._pair_eps = (seed, eps)
            return eps, 1.0
        kept, self._pair_eps = self._pair_eps, None
        if kept is not None and kept[0] == seed and kept[1].shape == like.shape:
            eps = kept[1].to(like.device, like.dtype)  # the same numbers after .to(device / dtype)
        else:  # e.g. after load_state_dict: the same numbers, from their seed (in the same dtype)
            eps = seeded_standard_normal(like, seed)
        self._set_pair(0, seed)
        return eps, -1.0

    def _register(self) -> None:
        """A handle by which the compiled graph's noise op finds this BNN (a copy gets its own)."""
        self._handle = next(_HANDLES)
        _PAIRED[self._handle] = self

    def __setstate__(self, state: dict[str, Any]) -> None:  # copy.deepcopy, pickle
        super().__setstate__(state)
        self._register()

    def _set_pair(self, phase: int, seed: int) -> None:
        self._pair = (phase, seed)
        self.noise_pair.copy_(torch.tensor([phase, seed], dtype=torch.int64), non_blocking=True)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # type: ignore[override]
        key = prefix + "noise_pair"
        if self.antithetic and key not in state_dict:  # a state from before antithetic noise: a fresh pair
            state_dict[key] = torch.zeros(2, dtype=torch.int64)
        elif not self.antithetic:
            state_dict.pop(key, None)  # ignore the pairing of a model saved with antithetic noise
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.antithetic:
            phase, seed = (int(v) for v in self.noise_pair.tolist())
            self._pair, self._pair_eps = (phase, seed), None

    def elbo(self, x: Tensor, y: Tensor, *, num_particles: int = 1) -> ELBOTerms:
        """Negative ELBO terms on a minibatch ``(x[B, ...], y[B, ...])``, per data point.

        ``loss = E_q[-log p(y | x, w)] / B + kl_weight * KL(q || p) / num_data``, the
        expectation estimated with ``num_particles`` reparameterised weight draws (the
        KL is exact for Normal priors, Monte Carlo with an exact entropy otherwise).
        A loss made non-finite by the data (inputs or targets too large) raises ``ValueError``;
        one made non-finite by diverged parameters is returned, for :class:`~uncertlr.torch.StepGuard`
        (and :func:`~uncertlr.torch.fit`) to skip and count.

        Example:
            >>> import torch
            >>> from uncertlr.torch import bayesian
            >>> bnn = bayesian(torch.nn.Linear(4, 3), num_data=100)
            >>> terms = bnn.elbo(torch.randn(8, 4), torch.randint(0, 3, (8,)), num_particles=2)
            >>> tuple(terms.outputs.shape)
            (2, 8, 3)
        """
        num_particles = positive_int("num_particles", num_particles)
        lead = self._check_input(x)
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor; got {type(y).__name__}")
        if y.shape[:1] != lead.shape[:1]:
            raise ValueError(
                f"x and y must have the same batch size; got {lead.shape[0]} and {y.shape[0] if y.dim() else 'a scalar'}"
            )
        post = self.posterior
        eps, sign = self._training_noise(None if num_particles == 1 else num_particles)
        if self._analytic_kl:
            prec = self.prior_prec if self._prior_prec_number is None else self._prior_prec_number
            flat_w, kl = post.sample_kl(eps, self.prior_loc, prec, self.kl_const, sign)
        else:
            # exact entropy of q plus a Monte Carlo estimate of the cross-entropy to the prior
            entropy_const = -0.5 * post.num_params * math.log(2 * math.pi * math.e)
            flat_w, neg_entropy = post.sample_kl(eps, None, 0.0, entropy_const, sign)
            log_prior = self.prior.log_prob(flat_w).sum(-1)  # type: ignore[union-attr]
            kl = neg_entropy - (log_prior if flat_w.dim() == 1 else log_prior.mean())
        outputs = self._outputs(flat_w, x)
        if self.validate:
            self.likelihood_module.check(outputs[0], y, host=self._host_checks())
            warn_if_probabilities(self, outputs)
        nll = self.likelihood_module.nll(outputs, y)
        loss = nll + self.kl_weight * kl / self.num_data
        # bad data raise here; a diverging optimizer returns its non-finite loss for StepGuard to skip
        # (where host reads cost, the data checks above are device-side asserts and this one is skipped)
        if self.validate and self._host_checks(done=True) and not torch.isfinite(loss.detach()):
            cause = nonfinite_cause(self, x, y, outputs.detach(), kl.detach())
            if cause is not None:
                raise ValueError(cause)
        return ELBOTerms(loss, nll, kl, outputs)

    def loss(self, x: Tensor, y: Tensor, *, num_particles: int = 1) -> Tensor:
        """The minibatch negative ELBO per data point (0-d, differentiable): ``elbo(x, y).loss``.

        Example:
            >>> import torch
            >>> from uncertlr.torch import bayesian
            >>> bnn = bayesian(torch.nn.Linear(4, 3), num_data=100)
            >>> opt = torch.optim.Adam(bnn.parameters(), lr=1e-2)
            >>> loss = bnn.loss(torch.randn(8, 4), torch.randint(0, 3, (8,)))
            >>> loss.backward(); opt.step()
        """
        return self.elbo(x, y, num_particles=num_particles).loss

    def forward(self, x: Tensor) -> Tensor:
        """Outputs of the network under one posterior draw, ``[B, ...]``."""
        self._check_input(x)
        with torch.no_grad():
            w = self.posterior.draw(self._noise(None))
        return self._call(self.posterior.unflatten(w), x)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    def sample_outputs(self, x: Tensor, *, num_samples: int = 32, max_batch: int | None = None) -> Tensor:
        """Raw network outputs ``[S, N, ...]`` under ``S`` posterior draws, in eval mode, without gradients.

        Vectorised over samples with ``torch.func.vmap``, in chunks of draws and of inputs so
        that memory stays bounded whatever ``S`` and ``N`` are (see :meth:`predict`).
        """
        num_samples = positive_int("num_samples", num_samples)
        max_batch = None if max_batch is None else positive_int("max_batch", max_batch)
        self._check_input(x)
        return chunked_outputs(
            self, x, num_samples, weight_elements=PREDICT_CHUNK_ELEMENTS, max_batch=max_batch
        )

    def predict(
        self, x: Tensor, *, num_samples: int = 32, max_batch: int | None = None
    ) -> Tensor | NormalPrediction:
        """Posterior predictive samples for inputs ``x[N, ...]``.

        Memory is bounded: the draws are evaluated a few at a time (at most
        ``PREDICT_CHUNK_ELEMENTS`` weights at once) and the inputs ``max_batch`` rows at a time —
        by default as many rows as keep the activations under
        :data:`uncertlr.torch._predict.MEMORY_BUDGET` (256 MiB), measured on the network itself.
        On a CUDA device both budgets grow to a fraction of its free memory (a quarter for
        activations, an eighth for weights), so the passes are large enough to fill it.
        Only the result grows with ``S × N``.

        Args:
            num_samples: posterior draws ``S``.
            max_batch: inputs per forward pass (default: chosen from the memory budget).

        Returns:
            classification: probabilities ``[S, N, C]``;
            regression: :class:`NormalPrediction` with ``mean`` and ``variance`` ``[S, N, ...]``.

        Feed the result to :mod:`uncertlr.metrics`.

        Example:
            >>> import torch
            >>> from uncertlr import metrics
            >>> from uncertlr.torch import bayesian
            >>> bnn = bayesian(torch.nn.Linear(4, 3), num_data=100)
            >>> probs = bnn.predict(torch.randn(5, 4), num_samples=10)
            >>> tuple(probs.shape), tuple(metrics.mutual_information(probs).shape)
            ((10, 5, 3), (5,))
        """
        num_samples = positive_int("num_samples", num_samples)
        max_batch = None if max_batch is None else positive_int("max_batch", max_batch)
        self._check_input(x)
        categorical = isinstance(self.likelihood, _lik.Categorical)
        out = chunked_outputs(
            self,
            x,
            num_samples,
            weight_elements=PREDICT_CHUNK_ELEMENTS,
            max_batch=max_batch,
            check=functools.partial(check_predicted, self) if self.validate else None,
            transform=(lambda o: torch.softmax(o, dim=-1)) if categorical else None,
        )
        if categorical:
            return out
        with torch.no_grad():
            scale = self.likelihood_module.noise_scale
            var = (
                (scale * scale) if isinstance(scale, Tensor) else torch.tensor(scale * scale, dtype=out.dtype)
            )
            return NormalPrediction(out, var.to(out).expand_as(out))

    # ------------------------------------------------------------------ Pyro programs

    def _slices(self) -> Iterator[tuple[str, torch.Size, slice]]:
        start = 0
        for n, s, k in zip(self.posterior.names, self.posterior.shapes, self.posterior.sizes):
            yield n, s, slice(start, start + k)
            start += k

    def model(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The Pyro model: a ``pyro.sample`` site per random parameter (named like it), then ``obs``.

        Returns the network's outputs. Use with ``bnn.guide`` in any Pyro inference
        algorithm; KL weighting (``kl_weight``) is applied with ``poutine.scale``.
        """
        with poutine.scale(scale=self.kl_weight):
            weights = {n: pyro.sample(n, prior_site(self, s, sl)) for n, s, sl in self._slices()}
        out = self._call(weights, x)
        self.likelihood_module.observe(out, y, self.num_data)
        return out

    def guide(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """The Pyro guide: the mean-field Normal posterior, one site per random parameter
        (a correlated posterior: one auxiliary joint site, see :func:`~uncertlr.torch._lowrank.joint_guide`)."""
        if isinstance(self.posterior, (LowRankNormal, FullNormal)):
            return joint_guide(self.posterior, self._slices(), self.kl_weight)
        return meanfield_guide(self.posterior, self._slices(), self.kl_weight)


def bayesian(
    net: nn.Module,
    *,
    num_data: int,
    prior: _priors.Prior | None = None,
    likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
    select: Predicate | Selector | None = None,
    init_scale: float = 1e-3,
    kl_weight: float = 1.0,
    validate: bool = True,
    inputs: Inputs = None,
    output: Output = None,
    guide: str = "meanfield",
    rank: int | None = None,
    antithetic: bool = True,
) -> BNN:
    """Make a Bayesian neural network from any ``torch.nn.Module`` (which is left untouched).

    Args:
        net: the network. Any module built from Linear, Conv, norm layers, Embedding,
            RNN/LSTM/GRU, attention...: uncertlr acts on parameters, not layer types.
        num_data: size of the training set ``N``; minibatch likelihoods are scaled by it.
        prior: :mod:`uncertlr.priors` spec; default ``Normal(1.0)`` (``N(0, 1)``; a fan-in-scaled
            prior collapses mean-field VI on small data, see the README).
        likelihood: ``likelihoods.Categorical()`` (outputs are logits) or
            ``likelihoods.Normal()`` (outputs are means; learned noise), or their names.
        select: predicate ``(name, module) -> bool`` choosing the random parameters
            (see :mod:`uncertlr.select`); the rest stay deterministic. Default: all.
        init_scale: initial posterior std of every random weight; the posterior means
            start at the network's current weights.
        kl_weight: multiplies the KL term (1 = the ELBO; < 1 a tempered posterior); must be > 0.
        validate: check inputs and targets each call (shapes, dtypes, NaN/inf, label range).
        inputs: how a batch ``x`` reaches ``net.forward``: ``None`` (one tensor), ``"positional"``
            (a tuple of tensors: ``net(*x)``), ``"keywords"`` (a dict: ``net(**x)``), a tuple of
            names (those keys of a dict batch, as keyword arguments) or ``x -> (args, kwargs)``.
        output: where the logits (or regression means) are in what ``forward`` returns: ``None``
            (a tensor), a key or attribute name (``"logits"`` of a dict, dataclass or Hugging
            Face ``ModelOutput``), a tuple index, or ``result -> tensor``. Example:
            ``bayesian(net, ..., inputs=("input_ids", "attention_mask"), output="logits")``.
        guide: the posterior family: ``"meanfield"`` (default), ``"lowrank"`` (diagonal plus a
            rank-``rank`` factor over all random parameters, default rank 10) or ``"full"`` (full
            covariance; for a last layer). See :mod:`uncertlr.torch._lowrank`.
        rank: columns of the low-rank factor (``guide="lowrank"`` only).
        antithetic: draw the mean-field training noise in antithetic pairs: every other training
            step (``loss``/``elbo`` in train mode with gradients on) uses the previous step's
            noise negated, ``-eps``, and ``K`` particles are ``ceil(K/2)`` draws and their negations.
            Each step's weights are still an exact draw from ``q`` (the ELBO gradient stays
            unbiased); the noise of consecutive steps cancels in the optimizer's running averages
            (lower variance), and half the normal numbers are drawn (on the CPU the draw is a
            fifth of an MLP's step). The pairing is saved in the ``state_dict`` (``noise_pair``),
            so a resumed run continues exactly. ``False``: independent noise every step. Under
            ``torch.compile`` the pairing runs in an opaque op (``uncertlr::paired_standard_normal``);
            not for ``guide="lowrank"``/``"full"``.

    Example:
        >>> import torch
        >>> from uncertlr import select
        >>> from uncertlr.torch import bayesian
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        >>> bnn = bayesian(net, num_data=1000, select=select.last_layer())
        >>> bnn.random_names
        ['2.weight', '2.bias']
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    spec = bnn_spec(
        num_data=num_data,
        prior=prior,
        likelihood=likelihood,
        select=select,
        init_scale=init_scale,
        kl_weight=kl_weight,
        validate=validate,
    )
    return BNN(
        net, **spec._asdict(), adapter=Adapter(inputs, output), guide=guide, rank=rank, antithetic=antithetic
    )
