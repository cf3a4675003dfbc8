# metering: make targets. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HYPOTHESIS_PROFILE ?= ci

.PHONY: help install test test-unit test-integration test-reliability lint fmt demo kafka-up kafka-down kafka-status bench promtool stress-ng clean helm chart-rules

help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "metering needs Python >= 3.11 (found %s)" % sys.version.split()[0])'
	@command -v java >/dev/null || { echo "java not found: install a JDK 17 (the local Kafka broker needs it)"; exit 1; }
	@command -v mvn >/dev/null || { echo "mvn not found: install Maven 3 (it fetches the Kafka jars)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install metering with dev extras (no-op when up to date)

lint: install ## ruff and mypy (strict on metering/, storage/, agents/, bench/ and tools/)
	$(BIN)/ruff check metering storage agents tests bench tools
	$(BIN)/mypy

fmt: install ## Format the code with ruff
	$(BIN)/ruff format metering storage agents tests
	$(BIN)/ruff check --fix metering storage agents tests

test: install lint ## Lint, then the whole suite (unit, property, contract, real-broker integration)
	@$(MAKE) --no-print-directory promtool || echo "promtool unavailable: its checks will be skipped"
	@$(MAKE) --no-print-directory helm || echo "helm unavailable: the chart checks will be skipped"
	$(BIN)/python -m pytest -q

# CPU_LOAD: CPU hogs during the reliability suite (default one per core; 0: none). stress-ng
# when `make stress-ng` can fetch it, else busy-loop processes (tests/integration/cpuload.py).
CPU_LOAD ?= nproc
test-reliability: install ## Reliability suite at full size (300k-record crash loop, 10k fuzzed records, ...), every core saturated
	@$(MAKE) --no-print-directory stress-ng || echo "stress-ng unavailable: busy-loop processes will load the CPU instead"
	METERING_CPU_LOAD=$(CPU_LOAD) METERING_RELIABILITY=full METERING_FUZZ_RECORDS=10000 $(BIN)/python -m pytest -q -s -m reliability --timeout 3600

test-unit: install ## Only the tests that need no broker
	$(BIN)/python -m pytest -q -m "not kafka"

test-integration: install ## Only the real-broker tests
	$(BIN)/python -m pytest -q -m kafka

DEMO_ARGS ?=
demo: install ## Run the pipeline end to end on the embedded local broker (DEMO_ARGS="--duration 60")
	$(BIN)/metering demo $(DEMO_ARGS)

kafka-up: install ## Start a local single-node Kafka broker (prints its bootstrap address)
	@$(BIN)/metering kafka up

kafka-down: install ## Stop the local Kafka broker started by kafka-up
	@$(BIN)/metering kafka down

kafka-status: install ## Is the local broker running?
	@$(BIN)/metering kafka status

BENCH_ARGS ?=
bench: install ## Benchmarks (~15 min; BENCH_ARGS="--quick" or "--only replay,scale"); rewrites BENCHMARKS.md
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet py-spy \
	  || echo "py-spy unavailable: missed targets will not be profiled"
	$(BIN)/python -m bench $(BENCH_ARGS)

# promtool checks compose/prometheus/rules.yml (tests/unit/test_compose.py uses it when found).
# Debian's `prometheus` package (apt-get download + dpkg -x, no root, a few seconds), cached
# outside the repository; override the cache with METERING_CACHE_DIR.
PROMTOOL_CACHE := $(or $(METERING_CACHE_DIR),$(HOME)/.cache/metering)
promtool: ## Fetch promtool into ~/.cache/metering/promtool/ (Debian package; prints its path)
	@set -euo pipefail; dest="$(PROMTOOL_CACHE)/promtool/promtool"; \
	if [ ! -x "$$dest" ]; then \
	  command -v apt-get >/dev/null && command -v dpkg >/dev/null \
	    || { echo "promtool: needs apt-get and dpkg (Debian/Ubuntu); or put promtool on PATH" >&2; exit 1; }; \
	  work="$$(mktemp -d)"; trap 'rm -rf "$$work"' EXIT; \
	  (cd "$$work" && apt-get download -q prometheus >/dev/null 2>&1) \
	    || { echo "promtool: 'apt-get download prometheus' failed (run apt-get update?)" >&2; exit 1; }; \
	  dpkg -x "$$work"/prometheus_*.deb "$$work/root"; \
	  mkdir -p "$$(dirname "$$dest")"; \
	  install -m 0755 "$$work/root/usr/bin/promtool" "$$dest.tmp" && mv "$$dest.tmp" "$$dest"; \
	fi; \
	"$$dest" --version 2>&1 | head -n 1; echo "promtool: $$dest"

# helm renders and lints deploy/helm/metering (tests/unit/test_helm_chart.py uses it when
# found). Built from its Go module with `go install` (no download site; a few minutes the
# first time, then the Go module cache makes it quick), cached outside the repository like
# promtool; override the cache with METERING_CACHE_DIR.
HELM_VERSION := v3.16.4
HELM_CACHE := $(or $(METERING_CACHE_DIR),$(HOME)/.cache/metering)
helm: ## Build helm $(HELM_VERSION) into ~/.cache/metering/helm/ (go install; prints its path)
	@set -euo pipefail; dest="$(HELM_CACHE)/helm/helm"; stamp="$(HELM_CACHE)/helm/version"; \
	if [ ! -x "$$dest" ] || [ "$$(cat "$$stamp" 2>/dev/null)" != "$(HELM_VERSION)" ]; then \
	  command -v go >/dev/null || { echo "helm: needs Go (go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)); or put helm on PATH" >&2; exit 1; }; \
	  work="$$(mktemp -d)"; trap 'rm -rf "$$work"' EXIT; \
	  echo "helm: building $(HELM_VERSION) from its Go module (first time: a few minutes)" >&2; \
	  GOBIN="$$work" GOFLAGS=-buildvcs=false go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION) \
	    || { echo "helm: go install failed (no Go module proxy?)" >&2; exit 1; }; \
	  mkdir -p "$$(dirname "$$dest")"; \
	  install -m 0755 "$$work/helm" "$$dest.tmp" && mv "$$dest.tmp" "$$dest"; \
	  echo "$(HELM_VERSION)" > "$$stamp"; \
	fi; \
	echo "helm: $$dest ($(HELM_VERSION))"

chart-rules: ## Copy compose/prometheus/rules.yml into the Helm chart (one source of alerts)
	cp compose/prometheus/rules.yml deploy/helm/metering/files/rules.yml

# stress-ng saturates the CPU during `make test-reliability`. Debian's package and the three
# libraries it needs beyond a base system (apt-get download + dpkg -x, no root), cached next to
# promtool; a wrapper sets LD_LIBRARY_PATH. A stress-ng on PATH is used as it is.
stress-ng: ## Fetch stress-ng into ~/.cache/metering/stress-ng/ (Debian packages; prints its path)
	@set -euo pipefail; dest="$(PROMTOOL_CACHE)/stress-ng/stress-ng"; \
	if command -v stress-ng >/dev/null; then dest="$$(command -v stress-ng)"; \
	elif [ ! -x "$$dest" ]; then \
	  command -v apt-get >/dev/null && command -v dpkg >/dev/null \
	    || { echo "stress-ng: needs apt-get and dpkg (Debian/Ubuntu); or put stress-ng on PATH" >&2; exit 1; }; \
	  work="$$(mktemp -d)"; trap 'rm -rf "$$work"' EXIT; \
	  (cd "$$work" && apt-get download -q stress-ng libipsec-mb1 libjudydebian1 libsctp1 >/dev/null 2>&1) \
	    || { echo "stress-ng: 'apt-get download stress-ng ...' failed (run apt-get update?)" >&2; exit 1; }; \
	  for deb in "$$work"/*.deb; do dpkg -x "$$deb" "$$work/root"; done; \
	  dir="$$(dirname "$$dest")"; mkdir -p "$$dir/lib"; \
	  cp -a "$$work"/root/usr/lib/*/*.so* "$$dir/lib/"; \
	  install -m 0755 "$$work/root/usr/bin/stress-ng" "$$dir/stress-ng.bin"; \
	  printf '#!/bin/sh\nd="$$(dirname "$$0")"\nLD_LIBRARY_PATH="$$d/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" exec "$$d/stress-ng.bin" "$$@"\n' > "$$dest.tmp"; \
	  chmod 0755 "$$dest.tmp" && mv "$$dest.tmp" "$$dest"; \
	fi; \
	"$$dest" --version 2>&1 | head -n 1; echo "stress-ng: $$dest"

clean: ## Remove the venv and caches (keeps the Maven/Kafka jar cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
