# asrd developer entry points. Everything the project needs is installed from here:
# .venv from PyPI, the Pulsar broker jars from Maven Central (scripts/pulsar), Debian packages
# for PostgreSQL and the deployment tests (scripts/deploy-deps).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := daemon tests scripts $(wildcard benchmarks)

.PHONY: venv deploy-deps lint test demo bench broker-start broker-stop clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

lint: venv deploy-deps
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy --strict daemon/asrd
	scripts/lint-deploy

# Debian packages for the deployment checks and tests (nspawn, debootstrap, buildah, bwrap).
deploy-deps:
	scripts/deploy-deps

test: lint
	$(BIN)/pytest -q

demo: venv
	$(BIN)/python scripts/demo.py

bench: venv
	$(BIN)/pip install -q -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/run.py
	@# The emulator's own load test needs Debian's wrk as its separate load generator.
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; } \
		|| { echo "bench: install wrk (Debian package) for benchmarks/emulator_get.py"; exit 1; }
	$(BIN)/python benchmarks/emulator_get.py
	$(BIN)/python benchmarks/intake_move.py
	$(BIN)/python benchmarks/console_pages.py

broker-start:
	scripts/pulsar start

broker-stop:
	scripts/pulsar stop

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
