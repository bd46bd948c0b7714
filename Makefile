# trialsync: `make demo` runs the main job locally, `make test` runs every test.
# Both bootstrap their own virtualenv (.venv) with the pinned dependencies in constraints.txt.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Built binaries and images live outside the checkout so clones share them.
export TRIALSYNC_CACHE ?= $(HOME)/.cache/trialsync
STAMP := $(VENV)/.installed
# The local cluster (a real node) needs Linux and root; elsewhere its tests skip, and in CI
# (TRIALSYNC_REQUIRE_CLUSTER=1) a node that cannot start is an error.
NODE := $(shell [ "$${TRIALSYNC_REQUIRE_CLUSTER:-0}" = 1 ] || { [ "$$(uname -s)" = Linux ] && [ "$$(id -u)" = 0 ]; } && echo --node)
TOOLS_BIN = $$(bash tools/build.sh $(NODE) --bin-dir)
IMAGES_MANIFEST = $$($(BIN)/python images/build.py --manifest)

.PHONY: help venv system-deps tools images lint test test-unit demo bench crds docs clean \
	cluster-up cluster-down kind-up kind-down

help:
	@echo "make demo   - helm install, a SyncConfig and a training Job on a local cluster"
	@echo "make test   - lint, type-check and run every test (builds the test control plane once)"
	@echo "make tools  - build or reuse the test cluster's binaries and HDFS in $(TRIALSYNC_CACHE)"
	@echo "make images - build the sidecar, operator and pause images with buildah"
	@echo "make cluster-up / cluster-down - a local cluster with a node, for kubectl and helm"
	@echo "make kind-up / kind-down - a kind cluster on podman, node image built here (kind/)"
	@echo "make bench  - benchmarks against s5cmd, rclone and aws s3 (not part of make test)"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

venv: $(STAMP)

# Debian packages the node and the image builds need (no-op when present; root only).
system-deps:
	@bash tools/system-deps.sh

# The test cluster's binaries (Go, tools/build.sh) and the tests' HDFS (Java, tools/hdfs.sh).
tools: system-deps
	@bash tools/build.sh $(NODE)
	@bash tools/hdfs.sh

images: $(STAMP) tools
	@$(BIN)/python images/build.py

lint: $(STAMP)
	$(BIN)/ruff check sidecar operator localcluster tests bench demo tools images kind
	$(BIN)/ruff format --check sidecar operator localcluster tests bench demo tools images kind
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The node's tests and the others run side by side (tools/run_tests.py): most of the first
# is waiting on pods.
test: $(STAMP) tools images lint
	TRIALSYNC_TOOLS_BIN="$(TOOLS_BIN)" TRIALSYNC_IMAGES="$(IMAGES_MANIFEST)" \
		$(BIN)/python tools/run_tests.py -ra

# Prints KUBECONFIG=... and CLUSTER_NET="nsenter --net=... --" once the node is Ready.
cluster-up: $(STAMP) tools images
	@TRIALSYNC_TOOLS_BIN="$(TOOLS_BIN)" TRIALSYNC_IMAGES="$(IMAGES_MANIFEST)" \
		$(BIN)/python -m localcluster up

# kind on podman, with its node image built here from Go modules (kind/build.sh); loads the
# images of the newest manifest images/build.py wrote and prints KUBECONFIG= and KIND_NET=.
kind-up: system-deps tools images
	@bash kind/up.sh

kind-down:
	@bash kind/down.sh

cluster-down: $(STAMP)
	@$(BIN)/python -m localcluster down

test-unit: $(STAMP)
	$(BIN)/pytest -ra tests/unit

# On Linux as root: the whole story on the local cluster. Elsewhere the demo says so, says
# how to run it on kind, and shows the sidecar alone.
demo: $(STAMP) tools $(if $(NODE),images)
	TRIALSYNC_TOOLS_BIN="$(TOOLS_BIN)" $(if $(NODE),TRIALSYNC_IMAGES="$(IMAGES_MANIFEST)") \
		PYTHONPATH=. $(BIN)/python demo/demo.py

bench: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/run.py

# The chart ships a copy of the CRD; tests/apiserver/test_chart.py fails if they differ.
crds:
	cp crds/syncconfig.yaml charts/trialsync/crds/syncconfig.yaml

# The README's SyncConfig reference is generated from the CRD; a test fails if it is stale.
docs: $(STAMP)
	$(BIN)/python tools/crd_reference.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
