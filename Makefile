# FLIP — the two commands: `make demo` and `make test`. Everything else is for developers.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# Use uv from PATH when present; otherwise install it with pip and run it as a module.
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export UV_LINK_MODE ?= copy

.PHONY: help ensure-uv system-deps install demo test lint fmt typecheck pytest clean bench-poll bench-cohort bench-imaging bench-agg bench-fl

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

ensure-uv: ## install uv with pip when it is missing (pip itself from Debian packages when root)
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || { \
		$(PYTHON) -m pip --version >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
			apt-get update -qq && apt-get install -y -qq python3-pip; }; \
		$(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --quiet --user uv || \
		$(PYTHON) -m pip install --quiet --break-system-packages uv; }

system-deps: ## Debian packages for imaging (Orthanc + DICOMweb, dcm2niix + pigz): installed when root and missing
	@missing=""; \
	command -v Orthanc >/dev/null 2>&1 || missing="$$missing orthanc orthanc-dicomweb"; \
	command -v dcm2niix >/dev/null 2>&1 || missing="$$missing dcm2niix"; \
	command -v pigz >/dev/null 2>&1 || missing="$$missing pigz"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
			&& { command -v systemctl >/dev/null 2>&1 && systemctl disable --now orthanc >/dev/null 2>&1 || true; }; \
		else echo "note: install$$missing (Debian packages) for the imaging tests and demo" >&2; fi; \
	fi

install: ensure-uv system-deps ## install the workspace (uv sync from uv.lock) and the Debian packages it needs
	$(UV) sync --locked

demo: install ## run the whole product on embedded defaults and walk a project to APPROVED
	$(UV) run flip demo

test: install lint typecheck ## every test: lint, types, unit and integration on real PostgreSQL
	$(UV) run pytest

pytest: install ## tests only (no lint/types)
	$(UV) run pytest

lint: install ## ruff lint + format check
	$(UV) run ruff check .
	$(UV) run ruff format --check .

fmt: install ## apply ruff fixes and formatting
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

typecheck: install ## mypy (strict) on our packages
	$(UV) run mypy

clean: ## remove caches and local demo state
	rm -rf .flip .mypy_cache .ruff_cache .pytest_cache

bench-poll: install ## benchmark: task pickup latency and idle load, long-poll vs 5 s polling (1,000 trusts)
	$(UV) run python bench/poll.py --trusts $(or $(TRUSTS),1000)

bench-cohort: install ## benchmark: cohort statistics through the data-access-api vs the same SQL in psql (1 M persons)
	$(UV) run python bench/cohort.py --persons $(or $(PERSONS),1000000)

bench-agg: install ## benchmark: FedAvg aggregation throughput vs measured memory bandwidth (3 updates of 1 GiB)
	$(UV) run python bench/agg.py --params $(or $(PARAMS),268435456) --clients $(or $(CLIENTS),3)

bench-fl: install ## benchmark: FL time to first step, per-round overhead vs a local loop, FedAvg AUC vs central (3 rounds of 30 s)
	$(UV) run python bench/fl.py --round-seconds $(or $(ROUND_SECONDS),30) --rounds $(or $(ROUNDS),3)

bench-imaging: install ## benchmark: PACS import (retrieve, de-identify, convert, store) vs dcm2niix alone (16 clinical-size studies)
	$(UV) run python bench/imaging.py --studies $(or $(STUDIES),16) --size $(or $(SIZE),clinical) --pacs $(or $(PACS),auto)
