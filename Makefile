# trialsync: `make demo` runs the main job locally, `make test` runs every test.
# Both bootstrap their own virtualenv (.venv) with the pinned dependencies in constraints.txt.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Built binaries (kube-apiserver, etcd, helm) live outside the checkout so clones share them.
export TRIALSYNC_CACHE ?= $(HOME)/.cache/trialsync
STAMP := $(VENV)/.installed

.PHONY: help venv tools lint test test-unit demo bench crds docs clean

help:
	@echo "make demo   - run the sidecar against a local S3 server over a simulated trial"
	@echo "make test   - lint, type-check and run every test (builds the test control plane once)"
	@echo "make tools  - build or reuse kube-apiserver, etcd and helm in $(TRIALSYNC_CACHE)"
	@echo "make bench  - benchmarks against s5cmd, rclone and aws s3 (not part of make test)"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

venv: $(STAMP)

tools:
	@bash tools/build.sh

lint: $(STAMP)
	$(BIN)/ruff check sidecar operator tests bench demo tools
	$(BIN)/ruff format --check sidecar operator tests bench demo tools
	$(BIN)/mypy

test: $(STAMP) tools lint
	TRIALSYNC_TOOLS_BIN="$$(bash tools/build.sh --bin-dir)" $(BIN)/pytest -ra

test-unit: $(STAMP)
	$(BIN)/pytest -ra tests/unit

demo: $(STAMP) tools
	PYTHONPATH=. $(BIN)/python demo/demo.py

bench: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/run.py

# The chart ships a copy of the CRD; tests/e2e/test_chart.py fails if they differ.
crds:
	cp crds/syncconfig.yaml charts/trialsync/crds/syncconfig.yaml

# The README's SyncConfig reference is generated from the CRD; a test fails if it is stale.
docs: $(STAMP)
	$(BIN)/python tools/crd_reference.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
