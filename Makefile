# clipvdb: `make demo` runs the main job on the embedded database; `make test` runs the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_DATA ?= ../shared/data
DATA_DIR ?= .cache/data

.PHONY: demo test lint format bench bench-quick clean venv

$(VENV)/.installed: pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  py="$${PYTHON:-$$(.ci/find-python)}" || exit 1; \
	  echo "using $$py ($$($$py --version))"; \
	  "$$py" -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

# Uses the real CIFAR-10 copy in ../shared/data when it is there; otherwise the demo
# falls back to what it can get (see README).
demo: $(VENV)/.installed
	@if [ -f "$(SHARED_DATA)/cifar10-jpeg.tar.gz" ] && [ ! -d "$(DATA_DIR)/cifar10" ]; then \
	  mkdir -p $(DATA_DIR) && tar -xzf "$(SHARED_DATA)/cifar10-jpeg.tar.gz" -C $(DATA_DIR); fi
	$(VENV)/bin/clipvdb db upgrade
	$(VENV)/bin/clipvdb db status
	@data=""; [ -d "$(DATA_DIR)/cifar10" ] && data="--data $(DATA_DIR)/cifar10"; \
	  echo "$(VENV)/bin/clipvdb demo $$data --out demo-out"; $(VENV)/bin/clipvdb demo $$data --out demo-out

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check clipvdb migrations tests bench
	$(VENV)/bin/ruff format --check clipvdb migrations tests bench
	$(PY) -m mypy clipvdb

format: $(VENV)/.installed
	$(VENV)/bin/ruff format clipvdb migrations tests bench
	$(VENV)/bin/ruff check --fix clipvdb migrations tests bench

bench: $(VENV)/.installed
	$(PY) -m bench --data $(SHARED_DATA)
	@if [ -f "$(SHARED_DATA)/cifar10-jpeg.tar.gz" ] && [ ! -d "$(DATA_DIR)/cifar10" ]; then \
	  mkdir -p $(DATA_DIR) && tar -xzf "$(SHARED_DATA)/cifar10-jpeg.tar.gz" -C $(DATA_DIR); fi
	$(PY) -m bench.headline --data $(DATA_DIR)/cifar10 --sample $(SHARED_DATA)/samples/ship.png --clip 640
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.peers --data $(DATA_DIR)/cifar10

bench-quick: $(VENV)/.installed
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-out bench-out
