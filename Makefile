# qsharedmem — every command a developer or CI needs. `make help` lists them.
#
# Everything runs in a private virtualenv (.venv) that `make` creates on first use, so a fresh
# clone needs only Rust, CPython >= 3.11 with its headers, and network access to PyPI/crates.io.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp
EXT    := $(VENV)/.ext-stamp
SOURCES := $(shell find src -name '*.rs') Cargo.toml pyproject.toml
# Python code that ruff checks (benchmarks/ only once it exists)
PY_DIRS := python tests $(wildcard benchmarks)

export QT_QPA_PLATFORM := offscreen

.PHONY: help test test-rust test-python demo develop lint format bench bench-quick clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "maturin>=1.9.4,<2" ruff "mypy>=1.18" \
	    "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100" \
	    "PySide6-Essentials==6.12.0" "posix_ipc>=1.1" "sysv_ipc>=1.1" "numpy>=1.26" \
	    "matplotlib>=3.8"
	touch $@

$(EXT): $(STAMP) $(SOURCES)
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
	    $(VENV)/bin/maturin develop --release --quiet
	touch $@

develop: $(EXT)  ## build the extension into .venv

test: test-rust test-python  ## everything CI runs: cargo test, then pytest

test-rust:  ## Rust unit, integration and doc tests (no Python)
	cargo test --quiet

test-python: $(EXT)  ## the Python test suite against the built extension
	$(PY) -m pytest -q

demo: $(EXT)  ## the multi-process demonstration (DEMO_ARGS="--key-type systemv" for System V)
	$(PY) -m qsharedmem.demo $(DEMO_ARGS)

bench: $(EXT)  ## full benchmark run against PySide6, multiprocessing, posix_ipc, sysv_ipc
	$(PY) -m benchmarks

bench-quick: $(EXT)  ## the benchmark runner in its quick mode (what `make test` also runs)
	$(PY) -m benchmarks --quick --output /tmp/qsharedmem-bench-quick

# stubtest compares the type stub with the built extension, hence $(EXT).
lint: $(EXT)  ## rustfmt, clippy, ruff, mypy --strict, stubtest
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	cargo clippy --all-targets --features python --quiet -- -D warnings
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)
	$(PY) -m mypy --strict python/qsharedmem tests/typecheck/typing_example.py
	$(PY) -m mypy.stubtest qsharedmem._qsharedmem --allowlist tests/typecheck/stubtest_allowlist.txt

format:  ## apply rustfmt and ruff format
	cargo fmt
	$(VENV)/bin/ruff format $(PY_DIRS)
	$(VENV)/bin/ruff check --fix $(PY_DIRS)

clean:  ## remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
