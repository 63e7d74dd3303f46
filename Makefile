# Two commands do everything on a fresh clone with only Python >= 3.11:
#   make demo   - the demo on embedded Valkey and PostgreSQL
#   make test   - the test suite on real servers (embedded unless VALKEY_URL / DATABASE_URL)
# and, when wanted:
#   make bench          - the full benchmark (minutes): bench-results/bench.{md,json} and
#                         a picture per scenario (bench-*.png, shown by bench-plots.md)
#   make bench QUICK=1  - a reduced run, about a minute on 2 CPUs (what CI runs)
#   make test-lowest    - mypy and the suite with the lowest supported dependencies
#   make docs           - the documentation site (mkdocs build --strict) in site/
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second venv: the dependencies whose releases differ in behaviour or types, each at
# the lower bound pyproject.toml gives it (">=X" installed as "==X").
LOWEST_VENV ?= .venv-lowest
LOWEST_STAMP := $(LOWEST_VENV)/.installed
LOWEST_PINS = $(shell $(PYTHON) -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(" ".join(re.sub(r">=([^,]+).*", r"==\1", d) for d in deps if re.match(r"(valkey-glide|sqlalchemy|asyncpg|pydantic)\b", d)))')

.PHONY: install test test-heavy test-lowest lint docs demo bench doctor clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The scenarios too heavy for make test (100,000 targets, Sentinel failovers); .ci/run runs
# them too.
test-heavy: $(STAMP)
	$(BIN)/pytest --heavy -m heavy $(PYTEST_ARGS)

$(LOWEST_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install --quiet -e '.[dev]' $(foreach pin,$(LOWEST_PINS),'$(pin)')
	touch $(LOWEST_STAMP)

# The type check and the suite (as make test runs it) with the lowest supported
# valkey-glide, SQLAlchemy, asyncpg and pydantic; .ci/run runs it too.
test-lowest: $(LOWEST_STAMP)
	@$(LOWEST_VENV)/bin/python -c 'from importlib.metadata import version as v; print("lowest:", *(f"{p} {v(p)}" for p in ("valkey-glide", "sqlalchemy", "asyncpg", "pydantic")))'
	$(LOWEST_VENV)/bin/mypy
	$(LOWEST_VENV)/bin/pytest --heavy -m "not heavy or sentinel" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# MODEL=ranked runs the demo on the ranked model (default: the policy model).
demo: $(STAMP)
	$(BIN)/atomic-cache demo$(if $(MODEL), --model $(MODEL))

bench: $(STAMP)
	$(BIN)/atomic-cache bench$(if $(filter-out 0,$(QUICK)), --quick)

doctor: $(STAMP)
	$(BIN)/atomic-cache doctor

clean:
	rm -rf $(VENV) $(LOWEST_VENV) .mypy_cache .ruff_cache .pytest_cache bench-results site
