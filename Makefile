# resflow: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed
GALLERY_GSD ?= 0.3

.PHONY: install demo test test-fast lint bench accuracy gallery clean gpu-archive gpu-wheels

install: $(STAMP)

# The CPU build of torch is installed first and pinned, so the project's `torch>=2.4`
# is already satisfied and pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dask,spark,s3,dev,bench]"
	touch $(STAMP)

demo: install
	$(BIN)/resflow demo --out demo-output

# Two pytest workers, each taking whole test files (so a module's fixtures are made once)
# in the order tests/conftest.py gives them, longest first: while one waits on a JVM, a
# cluster or a subprocess, the other computes.
PYTEST = $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test: install
	$(PYTEST)

# The edit loop: everything but the slow, Spark and S3 tests.
test-fast: install
	$(PYTEST) -m "not slow and not spark and not s3"

lint: install
	$(BIN)/ruff check resflow backends benchmarks tests

bench: install
	$(BIN)/resflow bench --quick

# What the GPU check carries to a host without a package index (benchmarks/README.md, "GPU
# check"): the archive, ingested here, then the wheels the host lacks, split with it into
# parts that each travel with the repository within 64 MiB; prints sizes and the carry plan.
gpu-archive: install
	$(BIN)/python -m benchmarks.gpu_check archive

gpu-wheels: gpu-archive
	$(BIN)/python -m benchmarks.gpu_check wheels

# The accuracy study behind docs/accuracy.md (needs ../shared/data/fair; its last run took
# about 80 minutes on 2 cores): leave one place out at the default 0.3 m.
accuracy: install
	$(BIN)/python -m benchmarks.accuracy --gsd 0.3 --study lopo --jobs 2

# Retrain the bundled default gallery on every labelled place, with its model card.
gallery: install
	$(BIN)/python -m benchmarks.default_gallery --gsd $(GALLERY_GSD)

clean:
	rm -rf demo-output .pytest_cache
