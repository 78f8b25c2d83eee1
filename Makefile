# featurestore: `make run` serves the demo, `make test` runs everything CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# Debian packages the test suite starts as real servers / tools.
DEB_PACKAGES := redis-server redis-tools etcd-server etcd-client prometheus prometheus-alertmanager docker-compose wrk chromium
PYTEST_ARGS ?=
# make test runs pytest in this many processes, a test file to a process (pytest-xdist,
# --dist loadfile: a file's module-scoped servers start once). Most of the suite waits on
# servers, not on a core: on this 2-core VM 8:34 in two processes, 19:23 in one (2026-12-06;
# the one-process run still had ~50 s of two tests since made quicker).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: help run test venv install system-deps lint format types proto unit bench bench-feast clean

help:
	@echo "make run      create .venv, install, serve the 100k-user demo (HTTP :8080, gRPC :50051)"
	@echo "make test     install test deps (pip + apt), lint, type-check, run pytest on real servers"
	@echo "make unit     the unit tests only (seconds, no servers)"
	@echo "make proto    regenerate gRPC code from proto/"
	@echo "make bench    every benchmark: Feast side by side (uniform and Zipf keys), cache admission, gRPC vs HTTP,"
	@echo "              overload (HTTP, gRPC), a failing store, a lean Redis client against redis-py, 1 -> 2 workers,"
	@echo "              derived features, ClickHouse, lineage, footprint, drift, the lineage page, streaming (~100 min;"
	@echo "              writes benchmarks/RESULTS.md); make bench-feast runs only the Feast comparison"

# The venv itself (pip upgraded once); each stamp below installs one set of extras into it.
$(PY):
	@# Stock Debian ships python3 without venv support (python3-venv): install it once.
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); echo "python venv support missing: installing python3-venv"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends python3-venv; \
	  $(PYTHON) -m venv $(VENV); }
	$(PIP) install -q --upgrade pip

# Everything: every backend extra and the test tools (make test, lint, bench).
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	@touch $(STAMP)

# What the demo needs beside the core: the in-process ClickHouse engine (user_transactions),
# /graphql, and the client behind `featurestore join`.
$(RUN_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e ".[embedded,graphql,client]"
	@touch $(RUN_STAMP)

venv install: $(STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/featurestore serve --demo

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

types: $(STAMP)
	$(VENV)/bin/mypy

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/featurestore/v1/*.proto

test: $(STAMP) system-deps lint types
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

bench-feast: $(STAMP) system-deps
	$(PY) -m benchmarks.run

bench: bench-feast
	$(PY) -m benchmarks.run --skip-feast-setup --keys zipf --batches 1,100 --concurrency 8,32
	$(PY) -m benchmarks.cache_admission
	$(PY) -m benchmarks.cache_cpu
	$(PY) -m benchmarks.cache_side_by_side
	$(PY) -m benchmarks.cache_figures
	$(PY) -m benchmarks.cache_cost
	$(PY) -m benchmarks.transports
	$(PY) -m benchmarks.transports --transports grpc --env FEATURESTORE_GRPC__INTAKE_LOOPS=0 --no-feast --rounds 3 --out benchmarks/results/grpc-intake-ab.md --title "gRPC call intake: 16 take-ups of Join against grpc.aio's one (issue 16, requirements 4 and 5)"
	$(PY) -m benchmarks.grpc_floor
	$(PY) -m benchmarks.proto_encoding
	$(PY) -m benchmarks.redis_protocol
	$(PY) -m benchmarks.overload
	$(PY) -m benchmarks.overload --batch 1000
	$(PY) -m benchmarks.overload --transport grpc
	$(PY) -m benchmarks.overload --transport grpc --client-deadline-ms 500
	$(PY) -m benchmarks.grpc_refusal
	$(PY) -m benchmarks.store_faults
	$(PY) -m benchmarks.scaling
	$(PY) -m benchmarks.transports --transports http --no-feast --rounds 3 --duration 6 --concurrency 32 --store-option auto_pipeline=false --out benchmarks/results/autopipeline-c32.md --title "Auto-pipelining A/B: HTTP Join at concurrency 32, auto_pipeline on (the default) and off (issue 16, requirement 3)"
	$(PY) -m benchmarks.transports --transports http --no-feast --rounds 3 --duration 6 --concurrency 8 --store-option auto_pipeline=false --out benchmarks/results/autopipeline-c8.md --title "Auto-pipelining A/B: HTTP Join at concurrency 8, auto_pipeline on (the default) and off (issue 16, requirement 3)"
	$(PY) -m benchmarks.http_servers
	$(PY) -m benchmarks.derived
	$(PY) -m benchmarks.derived_cpu
	$(PY) -m benchmarks.derived_arrays
	$(PY) -m benchmarks.json_encoding
	$(PY) -m benchmarks.deadlines
	$(PY) -m benchmarks.clickhouse_point_reads
	$(PY) -m benchmarks.lineage
	$(PY) -m benchmarks.footprint --runs 3
	$(PY) -m benchmarks.footprint --runs 3 --no-clickhouse
	$(PY) -m benchmarks.footprint --runs 3 --no-derived
	$(PY) -m benchmarks.drift --rounds 5 --duration 8
	$(PY) -m benchmarks.lineage_page
	$(PY) -m benchmarks.streaming
	$(PY) -m benchmarks.stream_windows
	$(PY) -m benchmarks.stream_writes

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
