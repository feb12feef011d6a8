"""Test configuration: every test starts from a clean Pyro state, seeded RNGs and JAX on the CPU."""

from __future__ import annotations

import os
import random
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# XLA compiles are most of the JAX tests' time: keep them in JAX's persistent compilation cache, shared by
# the xdist workers (and their subprocesses) and kept between runs, so a program compiled by one test is
# read back by the next one that builds the same program (on a warm cache tests/jax runs ~4x faster).
# Your own JAX_COMPILATION_CACHE_DIR wins; JAX_ENABLE_COMPILATION_CACHE=false turns the cache off.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax-compile"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Under pytest-xdist (`make test` runs `-n 2`) each worker gets its share of the cores: otherwise
# every worker's OpenMP (torch) and Eigen (XLA) pools would take all of them and the workers would
# fight over the cores. Set before torch or jax starts; subprocesses of a test inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
# The tests' XLA programs are tiny, so compiling them is most of the JAX tests' time: compile with LLVM's
# optimisations off (-O0; ~30% less CPU time on tests/jax, same results up to float rounding; the tests check
# behaviour, never speed) and with XLA:CPU's older LLVM-IR fusion emitters instead of the MLIR-based ones
# (the whole suite 650 -> 531 CPU-s, cold cache; BENCHMARKS.md "Test suite time"). Your own XLA_FLAGS win.
_XLA_FLAGS = ["--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"]
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, str(_THREADS))
    if _THREADS == 1:
        _XLA_FLAGS.append("--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("XLA_FLAGS", " ".join(_XLA_FLAGS))

import numpy as np  # noqa: E402 - after the thread settings above
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

warnings.filterwarnings("ignore", message=".*arviz.*", category=FutureWarning)


@pytest.fixture(autouse=True)
def _clean_state():
    """Seed numpy/random/torch; clear Pyro's param store and enable its validation."""
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeds legacy global-RNG users too
    try:
        import pyro
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.manual_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    # no test may leave state in Pyro's global store: BNNs keep their state in their modules
    leaked = list(pyro.get_param_store().keys())
    pyro.clear_param_store()
    assert not leaked, f"test leaked Pyro params into the global store: {leaked}"


def pytest_configure(config):
    if _WORKERS > 1:  # torch may already be imported (plugins): set its pool size directly too
        import torch

        torch.set_num_threads(_THREADS)


# Test modules whose tests share an expensive module- or session-scoped fixture (the demo run, the
# built wheel, a finished `uncertlr train` run, a NUTS run, a compiled SVI loop): under
# `--dist loadgroup` each group runs in one worker, so its fixture is made once; every other test is
# handed out on its own. (The `xdist_group` mark cannot do this here: pytest-xdist 3.8 renames the
# marked tests through an attribute that pytest 9.2 no longer reads, so the mark is ignored.)
KEEP_TOGETHER = {
    "tests/app/test_cli.py": "cli",
    "tests/app/test_demo.py": "demo",
    "tests/test_build.py": "build",
    "tests/jax/test_jax_svi.py": "jax-svi",
    "tests/torch/test_distributed.py": "ddp",
    "tests/diagnostics/test_browser.py": "diagnostics-nuts",
    "tests/diagnostics/test_convert.py": "diagnostics-nuts",
    "tests/diagnostics/test_report.py": "diagnostics-nuts",
}


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with the groups of :data:`KEEP_TOGETHER`; other modes are xdist's own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class Scheduler(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return KEEP_TOGETHER.get(nodeid.split("::", 1)[0]) or super()._split_scope(nodeid)

    return Scheduler(config, log)


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first (a stable sort: otherwise in collection order).

    Under pytest-xdist (``--dist loadgroup``) the workers then start on the long tests and the short
    ones fill in behind them, instead of one worker running a long test alone at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_addoption(parser):
    parser.addoption(
        "--data-dir",
        default=None,
        help="folder holding the shared data sets (default: $UNCERTLR_DATA or ../shared/data)",
    )


@pytest.fixture(scope="session")
def data_root(request):
    """The shared data folder: ``--data-dir``, else :func:`uncertlr.data.data_dir` ($UNCERTLR_DATA, ../shared/data)."""
    from uncertlr.data import data_dir

    return data_dir(request.config.getoption("--data-dir"))


@pytest.fixture(scope="session")
def fsdd_dir(data_root):
    """The FSDD recordings folder; skips (saying where it looked) when the data folder is absent."""
    folder = data_root / "fsdd" / "recordings"
    if not folder.is_dir():
        pytest.skip(
            f"FSDD data not found at {folder}: pass --data-dir or set UNCERTLR_DATA to the shared data folder"
        )
    return folder
