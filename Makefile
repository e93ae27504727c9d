# Two commands do all the set-up on a fresh machine:
#   make demo   - the whole flow on embedded defaults (kapacitord + UDF + bridge + receiver)
#   make test   - the whole test suite (builds kapacitord 1.8.6 + 1.5.9, InfluxDB 1.11.8 and
#                 Alertmanager 0.35.0 from source once, into ~/.cache/kapacitor-oncall; see scripts/*-build)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# kapacitord versions the e2e suite runs against (comma-separated; tests/e2e reads the same
# variable): `KAPACITOR_VERSIONS=1.8.6 make test` narrows the matrix locally.
KAPACITOR_VERSIONS ?= 1.8.6,1.5.9
export KAPACITOR_VERSIONS

.PHONY: venv kapacitor kapacitor-default influxdb alertmanager promtool chromium postgres peers test demo bench check proto docs dist clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench,dist]'
	touch $@

venv: $(STAMP)

# Each build is cached per version with a lock; a warm run only checks the binaries.
kapacitor:
	@for v in $$(echo "$(KAPACITOR_VERSIONS)" | tr ',' ' '); do \
	  scripts/kapacitor-build "$$v" >/dev/null || exit 1; \
	done

kapacitor-default:
	scripts/kapacitor-build >/dev/null

# PostgreSQL server binaries for the replica tests (Debian's package where the machine has none).
postgres:
	scripts/postgres-install >/dev/null

influxdb:
	scripts/influxdb-build >/dev/null

# A real Prometheus Alertmanager for tests/alertmanager (cached like kapacitord).
alertmanager:
	scripts/alertmanager-build >/dev/null

# promtool checks deploy/prometheus rules; Chromium drives the status page (tests/ui).
promtool:
	nice scripts/promtool-build >/dev/null

chromium:
	scripts/chromium-install

peers: kapacitor influxdb alertmanager promtool chromium postgres

test: venv peers
	$(BIN)/python -m pytest

demo: venv kapacitor-default
	$(BIN)/python -m demo

bench: venv kapacitor postgres
	$(BIN)/python -m bench $(BENCH_ARGS)

proto:
	scripts/gen-proto

# Wheel and sdist in dist/ for hosts without this repository (README "Install").
dist: venv
	rm -rf dist build
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/python -m twine check --strict dist/*

# docs/configuration.md is generated from the config schema (a test fails when it is stale).
docs: venv
	$(BIN)/python -m bridge config-reference --output docs/configuration.md

check: venv
	scripts/gen-proto --check

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis dist build
