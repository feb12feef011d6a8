"""uncertlr: Bayesian, uncertainty-aware training for the PyTorch and JAX models you already have.

The top level is backend-neutral (it imports neither torch nor jax):

* :mod:`uncertlr.metrics` — uncertainty and calibration on numpy, torch or jax arrays;
* :mod:`uncertlr.priors`, :mod:`uncertlr.likelihoods`, :mod:`uncertlr.select` — the model
  vocabulary both backends share;
* :mod:`uncertlr.calibration` — post-hoc temperature scaling of any method's predictions;
* :mod:`uncertlr.model_selection` — settings chosen on whole held-out sources (leave-one-group-out);
* :mod:`uncertlr.density` — class-conditional Gaussians over features, an out-of-distribution score.

Backends: :mod:`uncertlr.torch` (Pyro) and, with the ``jax`` extra, :mod:`uncertlr.jax` (NumPyro).

Example:
    >>> import numpy as np
    >>> import uncertlr
    >>> probs = np.full((4, 2, 3), 1 / 3)
    >>> round(float(uncertlr.metrics.predictive_entropy(probs, normalized=True)[0]), 6)
    1.0
"""

from uncertlr import calibration, density, likelihoods, metrics, model_selection, priors, select

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "calibration",
    "density",
    "likelihoods",
    "metrics",
    "model_selection",
    "priors",
    "select",
]
