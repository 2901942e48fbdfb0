# qsharedmem — every command a developer or CI needs. `make help` lists them.
#
# Everything runs in a private virtualenv (.venv) that `make` creates on first use, so a fresh
# clone needs only Rust, CPython >= 3.11 with its headers, and network access to PyPI/crates.io.
# Each target installs only what it needs, one stamp per set of dependencies (the sets are the
# [dependency-groups] of pyproject.toml): `make demo` only maturin; `make test` adds the group
# `test`, `make lint` the group `lint`, `make wheel` the group `dist`.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip --quiet --disable-pip-version-check
VENV_STAMP  := $(VENV)/.venv-stamp
BUILD_STAMP := $(VENV)/.build-stamp
PIP_STAMP   := $(VENV)/.pip-stamp
TEST_STAMP  := $(VENV)/.test-stamp
LINT_STAMP  := $(VENV)/.lint-stamp
DIST_STAMP  := $(VENV)/.dist-stamp
EXT    := $(VENV)/.ext-stamp
# The build backend, as pyproject.toml's [build-system] requires it.
MATURIN := maturin>=1.9.4,<2
SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock pyproject.toml
# Python code that ruff checks
PY_DIRS := python tests tools $(wildcard benchmarks)
# The wheel and sdist (`make wheel`); manylinux_2_17 = glibc 2.17+ (RHEL 7+, Debian 8+, Ubuntu 14.04+).
DIST    := dist
WHEEL_COMPAT := manylinux_2_17

export QT_QPA_PLATFORM := offscreen

# One line per step, so that a slow first run says what it is doing.
step = @printf '==> %s\n' "$(1)"

.PHONY: help test test-rust test-python test-wheel demo develop wheel lint format bench \
        bench-quick bench-instr bench-notify clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(VENV_STAMP):
	$(call step,creating the virtualenv $(VENV))
	@$(PYTHON) -m venv $(VENV)
	@touch $@

$(BUILD_STAMP): $(VENV_STAMP)
	$(call step,installing the build tool ($(MATURIN)))
	@$(PIP) install "$(MATURIN)"
	@touch $@

# `pip install --group` needs pip 25.1; the demo does without.
$(PIP_STAMP): $(VENV_STAMP)
	$(call step,upgrading pip (dependency groups need pip >= 25.1))
	@$(PIP) install --upgrade "pip>=25.1"
	@touch $@

$(TEST_STAMP): $(PIP_STAMP) pyproject.toml
	$(call step,installing the test dependencies (pyproject.toml group 'test': PySide6 as the oracle, ...))
	@$(PIP) install --group test
	@touch $@

$(LINT_STAMP): $(PIP_STAMP) pyproject.toml
	$(call step,installing the developer tools (group 'lint': ruff, mypy))
	@$(PIP) install --group lint
	@touch $@

$(DIST_STAMP): $(PIP_STAMP) pyproject.toml
	$(call step,installing the packaging tools (group 'dist': zig for the manylinux link, auditwheel))
	@$(PIP) install --group dist
	@touch $@

# maturin's own progress lines go to a log, shown only if the build fails.
$(EXT): $(BUILD_STAMP) $(SOURCES)
	$(call step,building the extension into $(VENV) (cargo build --release; the first build is the slow one))
	@VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH \
	    $(VENV)/bin/maturin develop --release --quiet >$(VENV)/build.log 2>&1 \
	    || { cat $(VENV)/build.log; exit 1; }
	@touch $@

develop: $(EXT)  ## build the extension into .venv

test: test-rust test-python test-wheel  ## everything CI runs: cargo test, pytest, the installed wheel

test-rust:  ## Rust unit, integration and doc tests (no Python)
	cargo test --quiet

test-python: $(EXT) $(TEST_STAMP)  ## the Python test suite against the built extension
	$(PY) -m pytest -q

demo: $(EXT)  ## the multi-process demonstration (DEMO_ARGS="--key-type systemv" for System V)
	$(call step,running $(strip python -m qsharedmem.demo $(DEMO_ARGS)))
	@$(PY) -m qsharedmem.demo $(DEMO_ARGS)

# The release artefacts: an abi3 wheel for CPython 3.11+ on glibc 2.17+, linked by zig against
# glibc 2.17's symbols (no manylinux image or Docker needed), stripped (pyproject.toml
# [tool.maturin] strip), and the sdist. tools/check_dist.py then checks both archives: the
# platform tag that `auditwheel show` assigns, no glibc symbol newer than the tag (auditwheel
# does not see unversioned ones), the package files, stubs, licences and entry point.
wheel: $(DIST_STAMP)  ## build dist/: the manylinux_2_17 abi3 wheel and the sdist, and check both
	$(call step,building the wheel (maturin build --release --zig --compatibility $(WHEEL_COMPAT)))
	@rm -rf $(DIST)
	@PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/maturin build --release --quiet --zig \
	    --compatibility $(WHEEL_COMPAT) --out $(DIST) >$(VENV)/wheel.log 2>&1 \
	    || { cat $(VENV)/wheel.log; exit 1; }
	$(call step,building the sdist (maturin sdist))
	@$(VENV)/bin/maturin sdist --out $(DIST) >$(VENV)/sdist.log 2>&1 \
	    || { cat $(VENV)/sdist.log; exit 1; }
	$(call step,checking both archives (auditwheel show, glibc symbols, contents))
	@$(PY) tools/check_dist.py --compat $(WHEEL_COMPAT) $(DIST)

# The wheel as a user gets it: installed into a fresh virtualenv, in a temporary directory
# outside the source tree, that has nothing else but the test dependencies; tested from a copy
# of tests/ (with README.md and docs/, which test_docs.py reads, and pyproject.toml for pytest's
# settings) in that directory, so that nothing can be imported from the source tree.
# tools/check_dist.py --installed and test_packaging.py check that the package in use is the
# installed wheel.
# The subset is what packaging or the manylinux link can break, about 60 s of the suite's 5
# min: test_packaging (metadata, licences, py.typed, .pyi, entry point), test_docs (the README
# examples), test_cli (console script, python -m, the demo), test_demo, test_python_api
# (every public name), test_multiprocess and test_mp_dropin (children that import the
# installed package), test_lock and test_qt_interop (the robust mutex and the POSIX
# semaphores, which the glibc 2.17 link takes from libpthread, against Qt itself). Left out:
# logic that is the same code in any build (keys, Qt's autotests, errors, fault injection),
# the benchmarks, and the tests that need the Rust examples or the source tree.
WHEEL_TESTS := project/test_packaging.py project/test_docs.py cli/test_cli.py cli/test_demo.py \
               api/test_python_api.py api/test_multiprocess.py mp/test_mp_dropin.py \
               api/test_lock.py qt/test_qt_interop.py
test-wheel: wheel  ## install dist/'s wheel into a clean virtualenv and test it outside the tree
	@tmp=$$(mktemp -d /tmp/qsharedmem-wheel-test.XXXXXX) && trap 'rm -rf "$$tmp"' EXIT \
	    && printf '==> %s\n' "installing the wheel and the test dependencies into a clean $$tmp/venv" \
	    && $(PYTHON) -m venv "$$tmp/venv" \
	    && "$$tmp/venv/bin/pip" --quiet --disable-pip-version-check install --upgrade "pip>=25.1" \
	    && "$$tmp/venv/bin/pip" --quiet --disable-pip-version-check install --group test \
	        $(DIST)/qsharedmem-*.whl \
	    && printf '==> %s\n' "testing the installed wheel in $$tmp ($(words $(WHEEL_TESTS)) test files)" \
	    && cp -r tests README.md docs pyproject.toml "$$tmp"/ \
	    && rm -rf "$$tmp"/tests/__pycache__ \
	    && cd "$$tmp" \
	    && export QSHAREDMEM_TEST_INSTALLED_WHEEL=$(CURDIR) \
	    && venv/bin/python $(CURDIR)/tools/check_dist.py --installed $(CURDIR) \
	    && venv/bin/python -m pytest -q -p no:cacheprovider $(addprefix tests/,$(WHEEL_TESTS))

bench: $(EXT) $(TEST_STAMP)  ## full benchmark run against PySide6, multiprocessing, posix_ipc, sysv_ipc
	$(PY) -m benchmarks

bench-quick: $(EXT) $(TEST_STAMP)  ## the benchmark runner in its quick mode (what `make test` also runs)
	$(PY) -m benchmarks --quick --output /tmp/qsharedmem-bench-quick

bench-instr: $(EXT) $(TEST_STAMP)  ## instructions per lock()+unlock() and data() under callgrind, vs the peers
	$(PY) -m benchmarks.instructions

bench-notify: $(EXT) $(TEST_STAMP)  ## notify-to-wake latency (parked, spinning) and idle CPU vs Event, pipe, posix_ipc
	$(PY) -m benchmarks.notify_latency

# stubtest compares the type stub with the built extension, hence $(EXT); mypy needs the test
# dependencies (numpy's types, pytest's) as well as the group 'lint'.
lint: $(EXT) $(TEST_STAMP) $(LINT_STAMP)  ## rustfmt, clippy, ruff, mypy --strict, stubtest
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	cargo clippy --all-targets --features python --quiet -- -D warnings
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)
	$(PY) -m mypy --strict python/qsharedmem tests/typecheck/typing_example.py
	$(PY) -m mypy.stubtest qsharedmem._qsharedmem --allowlist tests/typecheck/stubtest_allowlist.txt

format: $(LINT_STAMP)  ## apply rustfmt and ruff format
	cargo fmt
	$(VENV)/bin/ruff format $(PY_DIRS)
	$(VENV)/bin/ruff check --fix $(PY_DIRS)

clean:  ## remove build outputs and the virtualenv
	cargo clean
	rm -rf $(VENV) $(DIST) .pytest_cache .ruff_cache .mypy_cache .hypothesis
