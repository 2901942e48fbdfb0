"""The benchmark runner, once, in its quick mode: it must keep working (``make test`` runs this)
and must leave nothing behind (the session's leak check watches the subprocess too).

Benchmarks measure; tests do not: nothing here looks at a duration or a ratio's value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

WORKLOADS = {"lock", "contention", "lifecycle", "data", "big", "scale"}


def run_quick(module: str, output: Path, timeout: float) -> None:
    """``python -m <module> --quick --output <output>``, which must succeed."""
    run = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-5000:]


@pytest.mark.timeout(900)
def test_quick_run_writes_results_for_every_workload(tmp_path: Path) -> None:
    run_quick("benchmarks", tmp_path, timeout=880)

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    assert set(results["workloads"]) == WORKLOADS
    measured = {m["workload"].split("-")[0] for m in results["measurements"]}
    assert measured == WORKLOADS
    for measurement in results["measurements"]:
        assert measurement["samples"], measurement
        assert all(sample > 0 for sample in measurement["samples"]), measurement
    # Every target found both of its rows (whether it is met is for the report to say).
    assert results["targets"]
    for target in results["targets"]:
        assert target["ratio"] is not None, target
    many = results["facts"]["segments in one process"]
    assert all(report["created"] > 0 for report in many.values()), many

    report = (tmp_path / "results.md").read_text()
    for heading in (
        "## Machine",
        "## Targets",
        "## 1. Uncontended lock()+unlock()",
        "## 2. Contention between processes",
        "## 3. attach/detach and create/detach",
        "## 4. data()",
        "## 5. A big segment",
        "## 6. Scale",
    ):
        assert heading in report, heading
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.timeout(300)
def test_quick_notify_latency_run_measures_every_waker(tmp_path: Path) -> None:
    run_quick("benchmarks.notify_latency", tmp_path, timeout=280)
    results = json.loads((tmp_path / "notify.json").read_text())
    assert results["quick"] is True
    wakers = results["results"]
    assert set(wakers) == {
        "qsharedmem wait_changed",
        "qsharedmem event",
        "multiprocessing.Event",
        "pipe",
        "posix_ipc.Semaphore",
        "busy-wait",
    }
    for name, row in wakers.items():
        modes = {"spinning"} if name == "busy-wait" else {"parked", "spinning"}
        assert modes <= set(row), (name, row)
        for mode in modes:
            assert row[mode]["rounds"] > 0 and row[mode]["p50_us"] > 0, (name, row)
        assert row["idle_cpu_percent"] >= 0, (name, row)
    assert "| qsharedmem wait_changed |" in (tmp_path / "notify.md").read_text()
