# asrd developer entry points. Everything the project needs is installed from here:
# .venv from PyPI, the Pulsar broker jars from Maven Central (scripts/pulsar), Debian packages
# for PostgreSQL and the deployment tests (scripts/deploy-deps).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := daemon tests scripts soak $(wildcard benchmarks)

.PHONY: venv deploy-deps lint check test demo bench soak broker-start broker-stop clean

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

# The inner loop: lint, types and the fast tests. `slow` tests (they start the broker,
# PostgreSQL, systemd or the image: tests/conftest.py marks them) are left to `make test`.
# The fast tests mostly wait on sockets and subprocesses, so four processes share two cores
# well; worksteal keeps one long test from holding the end of the run.
check: lint
	$(BIN)/pytest -q -m "not slow" -n 4 --dist worksteal

# The whole suite, one test at a time (they share one broker).
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
	$(BIN)/python benchmarks/intake_memory.py
	$(BIN)/python benchmarks/tracing.py
	$(BIN)/python benchmarks/console_pages.py

# The production wiring under load and faults for SOAK_S seconds (default 3600) at SOAK_RATE
# jobs/s (default 100), as root (docs/soak.md):
# results in soak/results/. Not part of `make test`.
SOAK_S ?= 3600
SOAK_RATE ?= 100
soak: venv deploy-deps
	SOAK_S=$(SOAK_S) SOAK_RATE=$(SOAK_RATE) $(BIN)/python -m soak.run

broker-start:
	scripts/pulsar start

broker-stop:
	scripts/pulsar stop

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
