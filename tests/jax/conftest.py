"""JAX tests: skip the folder cleanly when the jax extra is missing."""

import pytest

pytest.importorskip("jax")
pytest.importorskip("numpyro")
