"""Last-layer Laplace approximation (MacKay, 1992; Daxberger et al., 2021, "Laplace Redux") behind one ``predict``.

A trained deterministic network's last ``nn.Linear`` layer gets a Gaussian posterior
``N(θ*, (H + δ I)⁻¹)`` around its trained weights ``θ*`` (weight and bias, ``P = C (D + 1)``
numbers), where ``H`` is the generalised Gauss-Newton matrix of the training NLL — exact for
a last layer, since the outputs are linear in its weights:

* categorical: ``H = Σ_n (diag p_n - p_n p_nᵀ) ⊗ φ̃_n φ̃_nᵀ`` (``φ̃ = [φ, 1]``, the layer's input);
* Gaussian with noise std ``σ``: ``H = I / σ² ⊗ Σ_n φ̃_n φ̃_nᵀ`` (Bayesian linear regression on ``φ``).

The prior precision ``δ`` is fitted by maximising the Laplace marginal likelihood
``log p(D | θ*) - δ‖θ*‖²/2 + P/2 log δ - ½ Σ log(λ_i + δ)`` (``λ`` the eigenvalues of ``H``;
computed once, then a 1-D search), or given; the posterior is then one Cholesky factor of
``H + δ I``. ``predict`` samples the last layer's weights, so it returns ``[S, N, C]``
probabilities (or a :class:`~uncertlr.likelihoods.NormalPrediction`) like every other method.

The full ``P × P`` GGN is kept (at most :data:`MAX_PARAMS` numbers a side; ``P = 1,290`` for a
128-feature, 10-class head). laplace-torch was not used: it would add torchvision and nine
other packages next to the pinned torch.

Example:
    >>> import torch
    >>> from uncertlr.torch import LastLayerLaplace
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> la = LastLayerLaplace(net).fit(x, y)
    >>> la.prior_precision > 0, tuple(la.predict(x[:5], num_samples=8).shape)
    (True, (8, 5, 3))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from uncertlr import likelihoods as _lik
from uncertlr._laplace import check_prior_precision, fit_prior_precision, log_marginal_likelihood
from uncertlr._spec import positive_int
from uncertlr.likelihoods import NormalPrediction
from uncertlr.torch._features import last_linear, layer_input
from uncertlr.torch.ensemble import PointNetwork

__all__ = ["MAX_PARAMS", "LastLayerLaplace"]

_WHAT = "a last-layer Laplace"

#: Most last-layer parameters (weight + bias) the full GGN is built for.
MAX_PARAMS = 8192


class LastLayerLaplace(nn.Module):
    """A Laplace posterior over the last ``nn.Linear`` layer of a trained network.

    The network is not copied: :meth:`fit` reads its current last-layer weights and
    :meth:`predict` its current features; refit after training it further.

    The approximation is centred on the trained weights, so train the network as a MAP estimate,
    i.e. with weight decay (``torch.optim.Adam(..., weight_decay=1e-3)`` on digits): around weights
    trained without it the marginal likelihood picks a small prior precision and the predictions
    come out under-confident (digits: clean ECE 0.147 without weight decay, 0.057 with it;
    BENCHMARKS.md, "Weight decay of the deterministic nets").

    Args:
        model: the trained network (its output must be the last Linear layer's output), or a
            :class:`~uncertlr.torch.PointNetwork` (its likelihood and learned noise are used).
        likelihood: ``"categorical"`` or ``"normal"`` for a plain network.
        last_layer: the Linear layer's name (default: the last ``nn.Linear`` in ``named_modules()``).
        noise_scale: Gaussian likelihood: the noise std (default: the model's learned noise, or
            the root mean squared training residual).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        likelihood: _lik.Categorical | _lik.Normal | str = "categorical",
        last_layer: str | None = None,
        noise_scale: float | None = None,
    ):
        super().__init__()
        if isinstance(model, PointNetwork):
            self.net, self.likelihood = model.net, model.likelihood
            if noise_scale is None and isinstance(self.likelihood, _lik.Normal):
                noise_scale = float(torch.as_tensor(model.likelihood_module.noise_scale).detach())
        elif isinstance(model, nn.Module):
            self.net, self.likelihood = model, _lik.as_likelihood(likelihood)
        else:
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.layer_name, self.layer = last_linear(self.net, last_layer, _WHAT)
        out_f, in_f = self.layer.weight.shape
        self.num_params = out_f * (in_f + 1)
        if self.num_params > MAX_PARAMS:
            raise ValueError(
                f"the last layer has {self.num_params} parameters; the full GGN is built for at most {MAX_PARAMS}"
            )
        if noise_scale is not None and not (math.isfinite(noise_scale) and noise_scale > 0):
            raise ValueError(f"noise_scale must be positive and finite; got {noise_scale!r}")
        self.noise_scale = noise_scale
        self.prior_precision = math.nan
        self._fitted = False

    # ------------------------------------------------------------------ features

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(φ̃[N, D + 1], outputs[N, C])`` at the current weights (no gradient)."""
        phi, out = layer_input(self.net, self.layer, self.layer_name, x, _WHAT)
        return torch.cat([phi, torch.ones_like(phi[:, :1])], 1).double(), out.double()

    def _theta(self) -> Tensor:
        """``W̃ = [W | b]`` flattened row-major ``[P]`` (float64)."""
        w = self.layer.weight.detach().double()
        b = (
            self.layer.bias.detach().double()
            if self.layer.bias is not None
            else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        )
        return torch.cat([w, b[:, None]], 1).reshape(-1)

    # ------------------------------------------------------------------ fitting

    def fit(
        self, x: Tensor, y: Tensor, *, prior_precision: float | str = "marglik", batch_size: int = 256
    ) -> LastLayerLaplace:
        """Build the GGN on the training data ``(x[N, ...], y[N])`` and set the prior precision.

        Args:
            prior_precision: ``"marglik"`` (maximise the marginal likelihood over
                ``δ ∈ [1e-4, 1e6]``) or a positive number.
            batch_size: rows per forward pass.

        Returns:
            ``self``.
        """
        batch_size = positive_int("batch_size", batch_size)
        check_prior_precision(prior_precision)
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(
                f"x and y must have the same, non-zero number of rows; got {x.shape[0]} and {y.shape[0]}"
            )
        c = self.layer.weight.shape[0]
        d1 = self.layer.in_features + 1
        f64 = dict(dtype=torch.float64, device=self.layer.weight.device)  # where the features are
        h = torch.zeros(c, d1, c, d1, **f64)
        gram = torch.zeros(d1, d1, **f64)
        loglik, sq = 0.0, 0.0
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            phi, out = self._features(xb)
            yb = yb.to(out.device)
            if isinstance(self.likelihood, _lik.Categorical):
                _lik.check_labels(yb, out.shape[0], out.shape[1])
                p = torch.softmax(out, -1)
                lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
                h += torch.einsum("nab,nd,ne->adbe", lam, phi, phi)
                loglik += float(torch.log_softmax(out, -1).gather(1, yb.long()[:, None]).sum())
            else:
                yb2 = yb.double().reshape(out.shape)
                gram += phi.T @ phi
                sq += float((yb2 - out).square().sum())
        if isinstance(self.likelihood, _lik.Categorical):
            hmat = h.reshape(self.num_params, self.num_params)
        else:
            n_out = x.shape[0] * c
            if self.noise_scale is None:
                self.noise_scale = math.sqrt(sq / n_out)
            s2 = self.noise_scale**2
            hmat = torch.kron(torch.eye(c, **f64), gram) / s2
            loglik = -0.5 * sq / s2 - 0.5 * n_out * math.log(2 * math.pi * s2)
        self._loglik = loglik
        self._theta_star = self._theta()
        # the eigenvalues alone serve the marginal likelihood; the posterior itself is a Cholesky factor of
        # H + δ I, made once δ is known (eigvalsh + cholesky cost a third of eigh: 1.5 vs 4.6 s for P = 3,210)
        self._hmat = 0.5 * (hmat + hmat.T)
        self._evals = torch.linalg.eigvalsh(self._hmat).clamp_min(0.0)
        self._factor_cache: tuple[float, Tensor] | None = None
        given = check_prior_precision(prior_precision)
        self._theta_sq = float(self._theta_star.square().sum())
        self.prior_precision = (
            fit_prior_precision(self._loglik, self._theta_sq, self._evals.cpu().numpy())
            if given is None
            else given
        )
        self._fitted = True
        return self

    def log_marginal_likelihood(self, prior_precision: float | None = None) -> float:
        """The Laplace log marginal likelihood for prior precision ``δ`` (default: the fitted one)."""
        self._check_fitted("log_marginal_likelihood", need_delta=prior_precision is None)
        d = self.prior_precision if prior_precision is None else float(prior_precision)
        return log_marginal_likelihood(self._loglik, self._theta_sq, self._evals.cpu().numpy(), d)

    def _check_fitted(self, what: str, need_delta: bool = True) -> None:
        if not hasattr(self, "_evals") or (need_delta and not self._fitted):
            raise RuntimeError(f"call fit(x, y) before {what}()")

    def _factor(self) -> Tensor:
        """Lower Cholesky factor ``L`` of the posterior precision ``H + δ I = L Lᵀ`` (cached per ``δ``)."""
        d = float(self.prior_precision)
        if self._factor_cache is None or self._factor_cache[0] != d:
            eye = torch.eye(self.num_params, dtype=self._hmat.dtype, device=self._hmat.device)
            chol, info = torch.linalg.cholesky_ex(self._hmat + d * eye)
            if int(info) != 0:  # H's rounding made it indefinite beyond δ: project it onto the PSD cone
                evals, evecs = torch.linalg.eigh(self._hmat)
                chol = torch.linalg.cholesky((evecs * (evals.clamp_min(0.0) + d)) @ evecs.T)
            self._factor_cache = (d, chol)
        return self._factor_cache[1]

    def posterior_covariance(self) -> Tensor:
        """``(H + δ I)⁻¹`` ``[P, P]`` (float64), parameters ordered as ``[W | b]`` row-major."""
        self._check_fitted("posterior_covariance")
        return torch.cholesky_inverse(self._factor())

    def posterior_scale(self) -> dict[str, Tensor]:
        """Posterior std of the last layer: ``{"<layer>.weight": [C, D], "<layer>.bias": [C]}``."""
        self._check_fitted("posterior_scale")
        # diag((L Lᵀ)⁻¹) = column sums of (L⁻¹)²
        eye = torch.eye(self.num_params, dtype=self._hmat.dtype, device=self._hmat.device)
        var = torch.linalg.solve_triangular(self._factor(), eye, upper=False).square().sum(0)
        sd = var.sqrt().reshape(self.layer.weight.shape[0], -1).to(self.layer.weight.dtype)
        out = {f"{self.layer_name}.weight": sd[:, :-1]}
        if self.layer.bias is not None:
            out[f"{self.layer_name}.bias"] = sd[:, -1]
        return out

    def parameter_scale(self) -> dict[Tensor, Tensor]:
        """``{parameter: σ}`` of the last layer for the LR modulator's ``sigma=`` (per-parameter rules)."""
        sd = self.posterior_scale()
        out = {self.layer.weight: sd[f"{self.layer_name}.weight"]}
        if self.layer.bias is not None:
            out[self.layer.bias] = sd[f"{self.layer_name}.bias"]
        return out

    # ------------------------------------------------------------------ prediction

    def sample_outputs(self, x: Tensor, *, num_samples: int = 32) -> Tensor:
        """Outputs ``[S, N, C]`` under ``S`` draws of the last layer's weights (float32 like the net)."""
        self._check_fitted("predict")
        num_samples = positive_int("num_samples", num_samples)
        phi, _ = self._features(x)
        eps = torch.randn(num_samples, self.num_params, dtype=torch.float64, device=phi.device)
        # θ = θ* + L⁻ᵀ ε has covariance (L Lᵀ)⁻¹ = (H + δ I)⁻¹
        draws = torch.linalg.solve_triangular(self._factor().T, eps.T, upper=True).T
        theta = (self._theta_star + draws).reshape(num_samples, self.layer.weight.shape[0], -1)
        return torch.einsum("nd,scd->snc", phi, theta).to(self.layer.weight.dtype)

    def predict(self, x: Tensor, *, num_samples: int = 32) -> Tensor | NormalPrediction:
        """``[S, N, C]`` probabilities, or a ``NormalPrediction`` (means ``[S, N, C]``, noise variance)."""
        out = self.sample_outputs(x, num_samples=num_samples)
        if isinstance(self.likelihood, _lik.Categorical):
            return torch.softmax(out, -1)
        var = torch.full_like(out, float(self.noise_scale) ** 2)  # type: ignore[arg-type]
        return NormalPrediction(out, var)

    def extra_repr(self) -> str:
        return f"layer={self.layer_name!r}, P={self.num_params}, prior_precision={self.prior_precision:.4g}"
