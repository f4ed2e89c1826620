# resflow: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# The CPU build of torch is installed first and pinned, so the project's `torch>=2.4`
# is already satisfied and pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dask,spark,dev]"
	touch $(STAMP)

demo: install
	$(BIN)/resflow demo --workdir demo-output

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check resflow backends benchmarks tests

bench: install
	$(BIN)/resflow bench --quick

clean:
	rm -rf demo-output .pytest_cache
