# Developer entry points. Each target is thin: one tool each; `make help` lists them.
# A fresh machine needs only python3 (>=3.11), node/npm, gcc and cmake; `make install` does the rest.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PY       := $(BIN)/python
BUF      := node_modules/.bin/buf
STAMP    := $(VENV)/.installed-stamp
NPMSTAMP := node_modules/.installed-stamp
PROTODEPS := build/protodeps

.DEFAULT_GOAL := help
.PHONY: help install run run-cluster test test-fast gen check-gen lint buf-lint buf-breaking fmt bench bench-quick clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

install: $(STAMP) $(NPMSTAMP) system-deps  ## .venv with the server, gateway and test tools; npm tools; chromium

# Debian's chromium renders /docs in the gateway's tests (headless, offline); Debian's prometheus
# scrapes the server in tests/observability (a throwaway process on a free port each time); Debian's
# postgresql serves the storage tests on PostgreSQL (tests/postgres_testlib.py: initdb into a temporary
# directory, a server on a free port). Each is installed only if missing. The prometheus and postgresql
# packages enable a system service of their own that nothing here uses: each is stopped and disabled
# right after the install. Debian keeps initdb out of PATH (/usr/lib/postgresql/<version>/bin): it is
# linked into /usr/local/bin, where the tests look for it. Debian's wrk is `make bench-quick`'s load generator
# (without it the benchmark falls back to an aiohttp client, which saturates first).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.PHONY: system-deps cluster-deps
system-deps: cluster-deps
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }
	@command -v prometheus >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus && \
		{ $(SUDO) systemctl disable --now prometheus 2>/dev/null || \
		  $(SUDO) service prometheus stop 2>/dev/null || true; }; }
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends wrk; }

# What make run-cluster needs beside the venv (and the tests of the shared limits and the PostgreSQL store):
# redis-server and PostgreSQL's programs.
cluster-deps:
	@# Debian's redis-server: a throwaway one per test for the shared limits (tests/redis_testlib.py).
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server && \
		{ $(SUDO) systemctl disable --now redis-server 2>/dev/null || \
		  $(SUDO) service redis-server stop 2>/dev/null || true; }; }
	@command -v initdb >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql && \
		{ $(SUDO) systemctl disable --now postgresql 2>/dev/null || \
		  $(SUDO) service postgresql stop 2>/dev/null || true; } && \
		for tool in initdb postgres pg_ctl; do \
		  $(SUDO) ln -sf "$$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/$$tool" /usr/local/bin/$$tool; \
		done; }

# llama-cpp-python compiles from source the first time (about 6 minutes on 2 cores); pip caches the wheel.
# A portable AVX2 build: the native one enables AMX/AVX-512 kernels that crash (general protection
# fault) on virtual CPUs that advertise but don't grant them, and a cached native wheel breaks on
# any other CPU.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF

$(STAMP): pyproject.toml sdk/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet -e '.[local,dev]'
	# The SDK is its own distribution (sdk/pyproject.toml); the tests import it from here.
	$(PY) -m pip install --quiet -e ./sdk
	touch $@

$(NPMSTAMP): package.json package-lock.json
	# `npm ci`, not `npm install`: it installs exactly what package-lock.json pins and never writes
	# it, so a fresh clone's `make install` leaves the tree clean (and a lock that disagrees with
	# package.json fails here instead of being rewritten). The lock records every platform's optional
	# buf binary (darwin, linux, win32), though npm installs only this machine's: a lock written on one
	# platform with only its own binary would make `npm install` elsewhere add the rest. After
	# changing package.json, refresh the lock with `npm install --package-lock-only` and commit it.
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# make stays the server's parent (an `exec` in the recipe would replace only the shell, and a simple
# command has none), and it relays a SIGTERM it gets to the server: a SIGTERM to the process group
# reaches the server twice. The server takes that repeat as the same request and still drains
# (RELAY_WINDOW_SECONDS in server/__main__.py).
run: $(STAMP)  ## serve gRPC on 127.0.0.1:50051 and HTTP on 127.0.0.1:8080 with the local model
	$(PY) -m server

# Scale-out on one machine (README.md, Deployment): a local PostgreSQL (its data kept in CLUSTER_DIR, so a
# restart keeps conversations and keys; `rm -rf build/cluster` or `make clean` forgets them) and Redis on
# free loopback ports, then `python -m server --workers WORKERS` in front of them, with the user's other
# AIBATTLE_* settings. Ctrl-C stops the server (it drains), then Redis and PostgreSQL. `make run` stays
# one process on SQLite: scale-out is something a deployment opts into.
CLUSTER_DIR ?= build/cluster
WORKERS     ?= 2
run-cluster: $(STAMP) cluster-deps  ## local PostgreSQL + Redis and 2 server workers on them (Ctrl-C stops it all)
	$(PY) tools/run_cluster.py --dir $(CLUSTER_DIR) --workers $(WORKERS)

gen: install  ## regenerate gen/ and the SDK's _gen/ from proto/, and its sync client from the async one
	$(PY) tools/codegen.py

check-gen: install  ## fail if gen/, the SDK's _gen/ or its sync client differs from what it is generated from
	$(PY) tools/codegen.py --check

# buf takes google/api and google/rpc from the installed googleapis-common-protos (no BSR at run time).
$(PROTODEPS): $(STAMP)
	$(PY) tools/codegen.py --export-deps $@

buf-lint: $(NPMSTAMP) $(PROTODEPS)  ## buf lint (STANDARD) on proto/
	$(BUF) lint

# Default base: HEAD~1 on a clean proto/ (CI: the previous commit of main), HEAD when proto/ has
# uncommitted edits. A missing base (first commit, shallow clone) fails with a message; see the script.
buf-breaking: $(NPMSTAMP) $(PROTODEPS)  ## breaking changes in proto/ against BASE (default: HEAD~1, or HEAD if proto/ is edited)
	$(PY) tools/buf_breaking.py --buf $(BUF) --deps $(PROTODEPS) $(if $(BASE),--base $(BASE))

lint: install buf-lint buf-breaking  ## buf lint and breaking (vs BASE), ruff, mypy
	$(BIN)/ruff check common server gateway sdk tests tools bench examples
	$(BIN)/ruff format --check common server gateway sdk tests tools bench examples
	$(BIN)/mypy

fmt: install  ## format the hand-written code
	$(BIN)/ruff format common server gateway sdk tests tools bench examples
	$(BIN)/ruff check --fix common server gateway sdk tests tools bench examples

test: install check-gen lint  ## the whole suite: generated-code drift, lint, pytest
	$(BIN)/pytest -q

test-fast: install  ## pytest without the tests that drive the real model
	$(BIN)/pytest -q -m "not slow"

bench: install  ## benchmarks: print figures, assert nothing (first the whole table, bench/table.py)
	$(PY) bench/table.py
	$(PY) bench/local_model.py
	$(PY) bench/collab_eval.py --problems 3 --max-tokens 48 --max-iterations 1 --samples 3
	$(PY) bench/gateway_overhead.py
	$(PY) bench/observability_overhead.py
	$(PY) bench/vs_litellm.py
	$(PY) bench/scale_out.py
	$(PY) bench/quick.py
	$(PY) bench/burst.py --slow 20 --grpc 3000 --sse 3000

# Under 90 s: a fake OpenAI upstream, a bare aiohttp relay in front of it (the floor) and ours, p50 at c=1 and
# req/s at c=32, each as a ratio to the floor. Run it before and after any change to the hot path.
bench-quick: install  ## the hot path against the Python floor, as ratios (< 90 s; before and after hot-path changes)
	$(PY) bench/quick.py

clean:  ## remove build outputs and caches (keeps .venv and node_modules)
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path './node_modules/*' -exec rm -rf {} +
