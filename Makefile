# modelfleet — the two commands are `make demo` and `make test`; both build .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers: one more than the CPUs (many tests wait on real processes), at most 8.
WORKERS ?= $(shell $(PY) -c 'import os; print(min(8, (os.cpu_count() or 1) + 1))')

.PHONY: demo test test-fast lint bench bench-install conformance clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/modelfleet demo

# Installs Debian's prometheus package if missing (promtool and a real Prometheus for the
# observability tests), starts a throw-away PostgreSQL on loopback (installing Debian's
# package if missing) so the PostgreSQL tests run too, installs Debian's softhsm2 if missing
# (the PKCS#11 signing test, issue 10) and wrk (the deployed drift benchmark's test, issue 9),
# then the whole suite on $(WORKERS) pytest-xdist
# workers (every PostgreSQL test makes its own database; `make test WORKERS=0` runs serially),
# a test module at a time per worker (its module fixtures made once), the modules in the
# order tests/conftest.py sorts them: those with slow or process-starting tests first.
test: $(STAMP)
	bash scripts/ensure-prometheus.sh bash scripts/ensure-softhsm.sh bash scripts/ensure-wrk.sh \
		bash scripts/with-postgres.sh $(BIN)/python -m pytest -q --durations=25 \
		-n $(WORKERS) --dist loadscope --no-loadscope-reorder

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e and not postgres and not slow" -n $(WORKERS) --dist loadscope --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run all

# Installed size and agent RSS: `pip install modelfleet` (agent only) vs the full install.
bench-install: $(STAMP)
	$(BIN)/python -m benchmarks.install_size --full

# The tuf-conformance suite against `modelfleet tuf-client` (issue 10; not part of `make test`):
# builds .bench/conformance-venv and prints the suite's result (docs/conformance.md).
conformance: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/conformance.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .pg
