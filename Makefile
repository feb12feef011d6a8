# Two commands do everything on a fresh machine with Python 3.11 and pip:
#   make demo   - create .venv, install pinned dependencies, run `uncertlr demo`
#   make test   - create .venv, install pinned dependencies, run the whole test suite
# torch==2.13.0 is installed first (a CPU build); requirements/constraints.txt pins the rest.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers: sized for a 2-core CI machine (tests/conftest.py gives each worker its share
# of the cores, so the workers' torch/XLA thread pools do not oversubscribe them)
TEST_WORKERS ?= 2

.PHONY: demo test lint docs bench bench-deps clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "uncertlr needs Python >= 3.10 (3.11 is tested)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[jax,report,audio,lightning,docs,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/uncertlr demo

# The whole suite, slow end-to-end tests included (`-m "not slow"` for a quick local run), with the
# 15 slowest tests listed. --dist loadgroup hands out tests one by one, the slow ones first, except
# that the modules in tests/conftest.py's KEEP_TOGETHER run in one worker each, so their expensive
# module- or session-scoped fixtures (e.g. the demo run) are made once.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check uncertlr models tests benchmarks examples
	$(BIN)/ruff format --check uncertlr models tests benchmarks examples
	$(BIN)/lint-imports

# The documentation site (mkdocs-material + mkdocstrings) into site/; any warning fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Baselines for the benchmarks: the `bench` extra (Schedule-Free, Prodigy, DoG, IVON: GPL-3.0, used only as a baseline) and TyXe (--no-deps, or it replaces torch).
bench-deps: $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[bench]'
	$(BIN)/python -m pip install --quiet --no-deps tyxe==0.0.2

bench: bench-deps
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis benchmarks/results site
