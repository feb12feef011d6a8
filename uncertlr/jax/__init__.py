"""The JAX backend: NumPyro BNNs from Flax/Equinox models and the LR modulator as optax transformations.

Needs the ``jax`` extra: ``pip install 'uncertlr[jax]'``. The public names live in

* :mod:`uncertlr.jax.bnn` — :func:`bayesian` makes a :class:`BNN` (NumPyro model, mean-field
  guide, ``bnn.elbo`` returning :class:`ELBOTerms`);
* :mod:`uncertlr.jax.step` — :func:`svi_step`: one SVI step as a pure ``init``/``update`` pair
  (:class:`SVIStep`, :class:`SVIState`, :class:`StepInfo`), :func:`posterior_scale_args`, :data:`DATA_AXIS`;
* :mod:`uncertlr.jax.svi` — :func:`svi` (minibatch VI with any optax optimizer: resume, validation,
  early stopping, devices), :class:`SVIResult`, :class:`EarlyStopping`;
* :mod:`uncertlr.jax.checkpoint` — :func:`save_checkpoint`, :func:`load_checkpoint`;
* :mod:`uncertlr.jax.mcmc` — :func:`mcmc` (NUTS/HMC), :class:`MCMCResult`, :class:`DivergenceWarning`;
* :mod:`uncertlr.jax.modulation` — :func:`scale_by_uncertainty`, :func:`scale_by_grad_uncertainty`,
  :func:`for_numpyro` and :func:`feed` (the modulator inside ``numpyro.infer.SVI``);
* :mod:`uncertlr.jax.density` — :class:`FeatureDensity` (class-conditional Gaussians over a Flax or Equinox
  network's layer inputs: an out-of-distribution score) and :class:`DensityTemperature` (predictions softened
  per input by it);
* :mod:`uncertlr.jax.dropout` — :func:`mc_dropout` / :class:`MCDropout` (a trained network's own dropout
  layers kept on at prediction time);
* :mod:`uncertlr.jax.ensemble` — :class:`Ensemble` (trained Flax/Equinox members, listed or stacked for
  ``jax.vmap``, or BNN results, behind one ``predict``) and :func:`ensemble_spread` (their spread as σ);
* :mod:`uncertlr.jax.laplace` — :class:`LastLayerLaplace` (a trained network's last dense layer under a
  Laplace posterior, the prior precision by marginal likelihood);
* :mod:`uncertlr.jax.signals` — :class:`LastLayerMCMCSignal` and the batch signals
  (:func:`batch_entropy`, :func:`batch_predictive_variance` and its parts...).

Both results share ``predict(x, num_samples=S)`` (``[S, N, C]`` probabilities or a
:class:`NormalPrediction`), ``sample_outputs``, ``posterior_loc``/``posterior_scale``/``posterior_spread``.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from uncertlr.jax import bayesian, svi
    >>> bnn = bayesian(lambda p, x: x @ p["w"], params={"w": jnp.zeros((4, 3))}, num_data=32)
    >>> x, y = jnp.ones((32, 4)), jnp.zeros(32, dtype=jnp.int32)
    >>> res = svi(bnn, x, y, optimizer=optax.adam(1e-2), num_steps=5, progress=False)
    >>> res.predict(x, num_samples=4).shape
    (4, 32, 3)
"""

try:
    import jax  # noqa: F401
    import numpyro  # noqa: F401
    import optax  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "uncertlr.jax needs the jax extra: pip install 'uncertlr[jax]' (jax, jaxlib, numpyro, optax)"
    ) from exc

from uncertlr.jax.bnn import BNN, ELBOTerms, bayesian
from uncertlr.jax.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from uncertlr.jax.density import DensityTemperature, FeatureDensity
from uncertlr.jax.dropout import MCDropout, mc_dropout
from uncertlr.jax.ensemble import Ensemble, ensemble_spread
from uncertlr.jax.laplace import LastLayerLaplace
from uncertlr.jax.mcmc import DivergenceWarning, MCMCResult, mcmc
from uncertlr.jax.modulation import (
    cap_scale_step,
    feed,
    for_numpyro,
    scale_by_grad_uncertainty,
    scale_by_uncertainty,
)
from uncertlr.jax.signals import (
    LastLayerMCMCSignal,
    batch_aleatoric_variance,
    batch_entropy,
    batch_epistemic_variance,
    batch_mutual_information,
    batch_predictive_variance,
)
from uncertlr.jax.step import DATA_AXIS, StepInfo, SVIState, SVIStep, posterior_scale_args, svi_step
from uncertlr.jax.svi import EarlyStopping, SVIResult, svi
from uncertlr.likelihoods import NormalPrediction

__all__ = [
    "BNN",
    "Checkpoint",
    "DATA_AXIS",
    "DivergenceWarning",
    "ELBOTerms",
    "DensityTemperature",
    "EarlyStopping",
    "Ensemble",
    "FeatureDensity",
    "LastLayerLaplace",
    "LastLayerMCMCSignal",
    "MCDropout",
    "MCMCResult",
    "NormalPrediction",
    "SVIResult",
    "SVIState",
    "SVIStep",
    "StepInfo",
    "batch_aleatoric_variance",
    "batch_entropy",
    "batch_epistemic_variance",
    "batch_mutual_information",
    "batch_predictive_variance",
    "bayesian",
    "feed",
    "for_numpyro",
    "load_checkpoint",
    "mc_dropout",
    "mcmc",
    "posterior_scale_args",
    "save_checkpoint",
    "cap_scale_step",
    "ensemble_spread",
    "scale_by_grad_uncertainty",
    "scale_by_uncertainty",
    "svi",
    "svi_step",
]
