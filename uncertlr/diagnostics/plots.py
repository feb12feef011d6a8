"""ArviZ plots for MCMC runs: rank plots and the energy plot (matplotlib, Agg backend).

Example:
    >>> import numpy as np
    >>> from uncertlr.diagnostics._arviz import az
    >>> from uncertlr.diagnostics.plots import rank_plot
    >>> idata = az.from_dict(posterior={"w": np.random.default_rng(0).normal(size=(2, 100, 3))})
    >>> fig = rank_plot(idata, ["w[0]", "w[2]"])
    >>> len(fig.axes)
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from uncertlr.diagnostics._arviz import az, quiet_plots

__all__ = ["energy_plot", "rank_plot", "select_series"]


def select_series(idata: Any, labels: Sequence[str]) -> dict[str, np.ndarray]:
    """``{label: draws[chain, draw]}`` for ``arviz.summary`` labels such as ``"w[0]"`` or ``"0.weight[17]"``.

    Labels are looked up in ``posterior`` and then ``posterior_predictive``; a label's
    bracket holds the coordinate values of the variable's non-sample dimensions.
    """
    out = {}
    for label in labels:
        name, _, rest = label.partition("[")
        for group in ("posterior", "posterior_predictive"):
            if group in idata.groups() and name in getattr(idata, group):
                da = getattr(idata, group)[name]
                break
        else:
            raise KeyError(f"{label!r} is in neither posterior nor posterior_predictive")
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        if extra:
            values = [v.strip() for v in rest.rstrip("]").split(",")]
            if len(values) != len(extra):
                raise KeyError(f"{label!r} needs {len(extra)} coordinates ({extra})")
            sel = {}
            for d, v in zip(extra, values):
                coord = da[d].values
                match = [c for c in coord if str(c) == v]
                if not match:
                    raise KeyError(f"{label!r}: {v!r} is not a coordinate of {d}")
                sel[d] = match[0]
            da = da.sel(sel)
        out[label] = np.asarray(da.transpose("chain", "draw").values, dtype=np.float64)
    return out


def rank_plot(idata: Any, labels: Sequence[str], *, columns: int = 3) -> Figure:
    """Rank plots (``arviz.plot_rank``) of the scalar quantities named by ``labels``.

    Each panel shows, per chain, the histogram of the ranks of its draws among all
    chains' draws: flat and alike when the chains agree.
    """
    series = select_series(idata, labels)
    data = az.from_dict(posterior=series)
    n = len(series)
    cols = min(columns, n)
    rows = -(-n // cols)
    with quiet_plots():
        axes = az.plot_rank(
            data,
            var_names=list(series),
            kind="bars",
            grid=(rows, cols),
            figsize=(3.6 * cols, 2.6 * rows),
            show=False,
        )
    fig = np.atleast_1d(axes).ravel()[0].figure
    for ax in fig.axes:
        ax.title.set_fontsize(9)
        ax.xaxis.label.set_fontsize(8)
        ax.yaxis.label.set_fontsize(8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def energy_plot(idata: Any) -> Figure:
    """``arviz.plot_energy``: marginal energy vs energy transitions (needs ``sample_stats.energy``)."""
    if "sample_stats" not in idata.groups() or "energy" not in idata.sample_stats:
        raise ValueError("no energy in sample_stats: run NumPyro's MCMC with extra_fields=('energy',)")
    with quiet_plots():
        ax = az.plot_energy(idata, figsize=(6, 3.4), show=False)
    fig = np.atleast_1d(ax).ravel()[0].figure
    fig.tight_layout()
    return fig
