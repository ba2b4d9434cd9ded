# stepmail — the interface for people and CI alike. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock libs/*/pyproject.toml services/*/pyproject.toml tools/*/pyproject.toml
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

.PHONY: install
install: $(VENV)/.synced ## Create the virtualenv and install everything (pinned by uv.lock)

.PHONY: run
run: install ## Start the whole platform with embedded Postgres, broker and SMTP catcher
	$(VENV)/bin/stepmail-dev run

.PHONY: test
test: install promtool chromium ## Lint, type-check, then unit, integration and end-to-end tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --durations=15

.PHONY: unit
unit: install ## Unit tests only (no processes started)
	$(VENV)/bin/pytest -q tests/unit

.PHONY: bench
bench: install debian-tools ## Benchmarks (all, or BENCH="ingest renderer"); figures in bench-results/
	$(VENV)/bin/python -m bench $(BENCH)

.PHONY: chaos
chaos: install ## SIGKILL each service and restart Postgres under 20,000 mails (CHAOS_MAILS); account for every mail
	$(VENV)/bin/python -m bench.chaos

.PHONY: fmt
fmt: install ## Format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: lint
lint: install ## Lint and type-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: lock
lock: $(UV) ## Re-resolve uv.lock after a dependency change
	$(UV) lock --python $(PYTHON)

.PHONY: clean
clean: ## Remove the virtualenvs and local state
	rm -rf $(VENV) $(TOOLS) .devstack .mypy_cache .ruff_cache .pytest_cache

.PHONY: debian-tools
debian-tools: ## Install Postfix's smtp-sink/smtp-source (Debian, as root) when missing
	@if command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ]; then \
		echo "debian-tools: smtp-sink and smtp-source already present"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "debian-tools: not root or no apt-get; install Debian's postfix for smtp-sink/smtp-source (benchmarks fall back to aiosmtpd)"; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix; \
	fi

.PHONY: promtool
promtool: ## Install promtool (Debian's prometheus package, as root) when missing
	@if command -v promtool >/dev/null 2>&1; then \
		echo "promtool: already present"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "promtool: not root or no apt-get; install Debian's prometheus for promtool (its tests are skipped)"; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
	fi

.PHONY: chromium
chromium: ## Install Debian's chromium for the browser test (as root) when missing
	@if [ "$${STEPMAIL_SKIP_BROWSER:-}" = 1 ] || command -v chromium >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "chromium: not root or no apt-get; install Debian's chromium, or set STEPMAIL_SKIP_BROWSER=1 to skip the browser test"; \
	else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	fi
