# clipvdb: `make demo` runs the main job on the embedded database; `make test` runs the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_DATA ?= ../shared/data
CITUS_SRC ?= ../shared/citus
DATA_DIR ?= .cache/data

.PHONY: demo test lint docs format bench bench-quick clean venv citus

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

# Builds Citus into the embedded PostgreSQL when its source is beside this checkout, so that the
# cluster tests run; without the source they skip and say why.
test: $(VENV)/.installed
	@if [ -f "$(CITUS_SRC)/build.sh" ]; then $(MAKE) --no-print-directory citus; \
	  else echo "no Citus source in $(CITUS_SRC): the cluster tests will skip"; fi
	$(PY) -m pytest -q

# Citus (distributed PostgreSQL) into the virtual environment's embedded PostgreSQL, from
# $(CITUS_SRC) (about 45 s; nothing to do when it is installed).
citus: $(VENV)/.installed
	@if [ ! -f "$(CITUS_SRC)/build.sh" ]; then \
	  echo "make citus: no Citus source in $(CITUS_SRC); set CITUS_SRC to a folder holding build.sh and the Citus tarball, or use an external Citus coordinator (CLIPVDB_DATABASE_URL, docker/compose.citus.yaml)"; exit 1; fi
	scripts/build-citus "$(CITUS_SRC)" "$$($(PY) -c 'from clipvdb import embedded; print(embedded.pg_config())')"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check clipvdb migrations tests bench docs/cli_reference.py
	$(VENV)/bin/ruff format --check clipvdb migrations tests bench docs/cli_reference.py
	$(PY) -m mypy clipvdb
	$(PY) docs/cli_reference.py --check

# docs/cli.md: every command's --help, generated from the CLI itself (make lint fails when it is stale).
docs: $(VENV)/.installed
	$(PY) docs/cli_reference.py

format: $(VENV)/.installed
	$(VENV)/bin/ruff format clipvdb migrations tests bench
	$(VENV)/bin/ruff check --fix clipvdb migrations tests bench

# Each step rewrites its own marked block of BENCHMARKS.md (the headline also the README's); the
# headline runs first, on a machine nothing else has warmed; the peers run clipvdb's commands again beside theirs.
bench: $(VENV)/.installed
	@if [ -f "$(SHARED_DATA)/cifar10-jpeg.tar.gz" ] && [ ! -d "$(DATA_DIR)/cifar10" ]; then \
	  mkdir -p $(DATA_DIR) && tar -xzf "$(SHARED_DATA)/cifar10-jpeg.tar.gz" -C $(DATA_DIR); fi
	$(PY) -m bench.headline --data $(DATA_DIR)/cifar10 --sample $(SHARED_DATA)/samples/ship.png --clip 1280 --write
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.peers --data $(DATA_DIR)/cifar10 --write
	@if [ -f "$(CITUS_SRC)/build.sh" ]; then $(MAKE) --no-print-directory citus && \
	  $(PY) -m bench.cluster --data $(DATA_DIR)/cifar10 --train 10000 --test 1000 --write; fi
	$(PY) -m bench.trained --data $(DATA_DIR)/cifar10 --write
	$(PY) -m bench.scale --data $(DATA_DIR)/cifar10 --scale-data $(DATA_DIR)/cifar10-1m --write
	$(PY) -m bench --data $(SHARED_DATA)

bench-quick: $(VENV)/.installed
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-out bench-out
