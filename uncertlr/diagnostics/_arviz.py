"""The one place that imports ArviZ (0.23.x), so a move to ArviZ 1.x touches only this package.

``import arviz`` 0.23 emits a FutureWarning about the coming 1.x split, and its
matplotlib plots a MatplotlibDeprecationWarning under matplotlib 3.11; both are
silenced here by message, nothing else is.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

try:
    import matplotlib

    matplotlib.use("Agg", force=False)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"(?s).*ArviZ is undergoing a major refactor", category=FutureWarning
        )
        import arviz as az
    import xarray as xr
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "uncertlr.diagnostics needs the report extra: pip install 'uncertlr[report]' (arviz>=0.20,<1)"
    ) from exc

__all__ = ["az", "quiet_plots", "xr"]


@contextlib.contextmanager
def quiet_plots() -> Iterator[None]:
    """Silence ArviZ 0.23's MatplotlibDeprecationWarning (``normalize_kwargs``) while plotting."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*alias_mapping to normalize_kwargs.*")
        yield
