# Two commands do all the set-up on a fresh machine:
#   make demo   - the whole flow on embedded defaults (kapacitord + UDF + bridge + receiver)
#   make test   - the whole test suite (builds kapacitord from the Go module proxy once)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv kapacitor test demo bench check proto docs dist clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench,dist]'
	touch $@

venv: $(STAMP)

kapacitor:
	scripts/kapacitor-build >/dev/null

test: venv kapacitor
	$(BIN)/python -m pytest

demo: venv kapacitor
	$(BIN)/python -m demo

bench: venv kapacitor
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
