"""``make demo`` (``python -m qsharedmem.demo``) runs, tells its story and leaves nothing behind.

The demo is run as the Makefile runs it, in a child process, for both backends, with a key from
``make_key`` (so that whatever a failure leaves is cleaned up and the leak check sees the rest).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from qsharedmem import QNativeIpcKey, QSharedMemory
from support.keys import KeyRegistry

TIMEOUT = 300.0  # hang guard for the whole demo; nothing asserts a duration
KEY_TYPES = {"posix": QNativeIpcKey.Type.PosixRealtime, "systemv": QNativeIpcKey.Type.SystemV}


def run_demo(procs: Any, *args: str) -> Any:
    return procs.run(procs.python("-m", "qsharedmem.demo", *args), timeout=TIMEOUT)


@pytest.mark.parametrize("key_type", list(KEY_TYPES))
def test_demo_recovers_from_a_worker_killed_inside_the_lock(
    procs: Any, make_key: KeyRegistry, key_type: str
) -> None:
    name = make_key("demo")
    key = QSharedMemory.platformSafeKey(name, KEY_TYPES[key_type])
    result = run_demo(procs, "--key-type", key_type, "--key", name)
    assert result.returncode == 0, result
    out = result.stdout
    lines = out.splitlines()

    assert f"  key     {key.toString()}" in lines
    # the workers attach; the victim is killed mid-update while holding the lock
    assert len(re.findall(r"worker \d +attached to the segment", out)) == 4
    assert re.search(r"worker 3 +holds the lock; update #2001 is half done", out)
    assert re.search(r"the record now \(torn\): total 2001, .* checksum MISMATCH", out)
    assert re.search(r"coordinator +SIGKILL -> pid \d+ \(worker 3\), inside update #2001", out)
    # exactly one survivor is told, and repairs from the log
    told = re.findall(r"worker (\d) +lock\(\) -> True, lockOwnerDied\(\) -> True", out)
    assert len(told) == 1 and told[0] in "012"
    assert re.search(r"worker 3's log: update #2001 unfinished; before it, total was 2000", out)
    assert "rolled update #2001 back from that before-image" in out
    assert re.search(r"repaired: total 2000, .* checksum ok: consistent again", out)
    # the final state, checked and printed
    assert "  total 3500, sum of tallies 3500, checksum ok, repairs 1, " in out
    assert (
        "  [ok] totals are exact after the repair: tallies [1000, 1000, 1000, 500], total 3500"
        in lines
    )
    # the segment was listed while attached and is gone after the last detach
    listing = "/dev/shm" if key_type == "posix" else "ipcs and the key file"
    assert re.search(rf"before, in {re.escape(listing)}:", out)
    assert re.search(rf"after: nothing left for this key in {re.escape(listing)}", out)
    assert "[FAILED]" not in out
    assert lines[-1] == "RESULT: all 9 checks passed"
    assert make_key.leftovers() == []


def test_demo_exits_non_zero_when_a_check_fails(procs: Any, make_key: KeyRegistry) -> None:
    # The key is taken: the demo cannot create its segment, says so, and fails.
    name = make_key("demo-taken")
    squatter = QSharedMemory(QSharedMemory.platformSafeKey(name))
    assert squatter.create(64)
    result = run_demo(procs, "--key", name, "--workers", "2", "--updates", "10")
    assert result.returncode == 1, result
    assert "[FAILED] stopped early: create failed: " in result.stdout
    assert "The last detach" not in result.stdout  # no segment of its own to show going
    assert result.stdout.splitlines()[-1].startswith("RESULT: FAILED: ")
    assert squatter.detach()
    assert make_key.leftovers() == []


@pytest.mark.parametrize(
    "args", [["--workers", "1"], ["--updates", "0"], ["--key-type", "windows"]]
)
def test_demo_rejects_bad_options(procs: Any, args: list[str]) -> None:
    result = run_demo(procs, *args)
    assert result.returncode == 2, result
    assert "usage: python -m qsharedmem.demo" in result.stderr
