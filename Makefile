# Two commands do everything on a fresh clone with only Python >= 3.11:
#   make demo   - the demo on embedded Valkey and PostgreSQL
#   make test   - the test suite on real servers (embedded unless VALKEY_URL / DATABASE_URL)
# and, when wanted:
#   make bench          - the full benchmark (minutes): bench-results/bench.{md,json,png}
#   make bench QUICK=1  - a reduced run, well under a minute (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-heavy lint demo bench doctor clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The scenarios too heavy for make test (100,000 targets); .ci/run runs them too.
test-heavy: $(STAMP)
	$(BIN)/pytest --heavy -m heavy $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/atomic-cache demo

bench: $(STAMP)
	$(BIN)/atomic-cache bench$(if $(filter-out 0,$(QUICK)), --quick)

doctor: $(STAMP)
	$(BIN)/atomic-cache doctor

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench-results
