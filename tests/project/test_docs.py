"""The code in the README runs: the Python quick start, and the package's doctest."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import qsharedmem
from support import ROOT


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.S)


def test_readme_python_quick_start_runs(make_key):
    block = python_blocks(ROOT / "README.md")[0]
    # A unique key for this run instead of the README's fixed one.
    code = block.replace('"sensor-frame"', repr(make_key("readme")))
    assert '"sensor-frame"' not in code
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b'hello' 4096"


def test_package_docstring_example(make_key):
    # The doctest uses a fixed key; make_key's cleanup does not know it, so check by hand.
    failures, _ = doctest.testmod(qsharedmem, raise_on_error=False, verbose=False)
    assert failures == 0
    assert not Path("/dev/shm/doctest-demo").exists()


def test_readme_multiprocessing_example_runs():
    block = python_blocks(ROOT / "README.md")[1]
    code = block + "\nprint(shm.name)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    name = result.stdout.strip()
    assert name.startswith("psm_")  # as CPython reports it: without the leading slash
    # Random name, removed by the last close (the with block).
    assert not Path("/dev/shm", name).exists()
