# Encore — every set-up step lives here so a fresh clone (and CI) needs nothing installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# torch is pinned only here (not in pyproject): 2.13.0 resolves to the CPU wheel shipped on our machines.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install install-dev demo test test-all bench parity clean

$(VENV)/.stamp-core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-core pyproject.toml $(wildcard scripts/setup-*.sh)
	bash scripts/setup-system.sh
	$(PIP) install -e ".[dev,train,serve,ui,data]"
	touch $@

install: $(VENV)/.stamp-core

install-dev: $(VENV)/.stamp-dev

demo: $(VENV)/.stamp-core
	$(VENV)/bin/encore demo

test: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.stamp-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

parity: $(VENV)/.stamp-dev
	$(PY) -m pytest -q -m parity $(PYTEST_ARGS)

bench: $(VENV)/.stamp-dev
	$(PY) -m encore.bench
	$(PY) -m encore.bench_planner

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
