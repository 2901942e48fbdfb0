"""The leak check: no test, and no session, leaves an IPC object or a key file behind.

Every test is compared before/after (no opt-in) — ``/dev/shm``, ``/proc/sysvipc/{shm,sem}``,
``qipc_*``/``tstshm_*``/``qsm-rs-*`` files in the temp dirs and everything in the Qt runtime
dir — and a test that leaves anything new fails at teardown (after all its fixtures cleaned
up). The session fails (exit status 1, list in the summary) if anything is left at the end that
was not there at the start. The machine may be shared with concurrent runs: objects tagged with
another live test process (``tstshm_<pid>-`` or the Rust tests' ``qsm-rs-<pid>-``) and objects
mapped/held by live processes outside this run are not counted; pytest sessions are serialised
by an flock on ``/tmp/qsharedmem-tests.lock``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.ipc import (
    DEV_SHM,
    KEY_PREFIX,
    describe_sysv,
    ftok_matches,
    runtime_dirs,
    sysv_objects,
    temp_dirs,
)


def _watched_files() -> list[Path]:
    found = []
    for d in temp_dirs():
        with contextlib.suppress(OSError):
            found += [
                d / n for n in os.listdir(d) if n.startswith(("qipc_", KEY_PREFIX + "_", "qsm-rs-"))
            ]
    for d in runtime_dirs():
        with contextlib.suppress(OSError):
            found += [d / n for n in os.listdir(d)]
    return found


def ipc_snapshot() -> dict[str, str]:
    """Every IPC object and key file on the machine: identity → description."""
    snapshot: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(DEV_SHM):
            snapshot[f"/dev/shm/{name}"] = f"/dev/shm/{name}"
    files = _watched_files()
    stats = {}
    for path in files:
        snapshot[str(path)] = str(path)
        with contextlib.suppress(OSError):
            stats[path] = path.stat()
    for obj in sysv_objects():
        owner = next((p for p, st in stats.items() if ftok_matches(obj.key, st)), None)
        snapshot[f"sysv-{obj.kind}-{obj.ident}-{obj.key}"] = describe_sysv(obj, owner)
    return snapshot


# Names tagged with the pid of the test process that made them: ours (``tstshm_<pid>-<seq>_``)
# and the Rust integration tests' (``qsm-rs-<pid>-<seq>-``, tests/lifecycle.rs).
_TAG = re.compile(r"(?:" + re.escape(KEY_PREFIX) + r"_|qsm-rs-)(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _belongs_to_other_session(description: str) -> bool:
    match = _TAG.search(description)
    if not match:
        return False
    pid = int(match.group(1))
    return pid != os.getpid() and _pid_alive(pid)


def _our_processes() -> set[int]:
    """This process and its live descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    ours = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return ours


def _foreign_holders(paths: set[str], ours: set[int]) -> set[str]:
    """The paths among ``paths`` that a live process outside this test run maps or has open."""
    held: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        with contextlib.suppress(OSError):
            maps = Path(f"/proc/{entry}/maps").read_text()
            held |= {p for p in paths if p in maps}
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{entry}/fd/{fd}")
                    if target in paths:
                        held.add(target)
    return held


_SYSV_IDENT = re.compile(r"^sysv-(shm|sem)-(\d+)-(\d+)$")


def new_objects(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What is in ``after`` but not in ``before`` and does not belong to somebody else.

    The machine is shared with concurrent test runs (other pytest sessions, ``cargo test``), so
    an object is not counted if its name carries another live session's ``tstshm_<pid>-`` tag,
    if it is a /dev/shm file that a live process outside this run maps or has open, or if it is
    a System V segment whose creator or last user is such a process.
    """
    new = {
        ident: desc
        for ident, desc in after.items()
        if ident not in before and not _belongs_to_other_session(desc)
    }
    if not new:
        return []
    ours = _our_processes()
    shm_objects = {o.ident: o for o in sysv_objects() if o.kind == "shm"}
    files = {ident for ident in new if ident.startswith("/dev/shm/")}
    foreign = _foreign_holders(files, ours) if files else set()
    foreign_shm = {
        o.ident: o.key
        for o in shm_objects.values()
        if any(p and p not in ours and _pid_alive(p) for p in (o.cpid, o.lpid))
    }
    foreign_keys = {key for key in foreign_shm.values() if key}
    for ident in list(new):
        match = _SYSV_IDENT.match(ident)
        if match is None:
            continue
        kind, ident_number, key = match.group(1), int(match.group(2)), int(match.group(3))
        # A semaphore set has no creator pid; one with the key of a foreign segment (Qt's new
        # System V keys use one key file for both) is taken to be foreign too.
        if (kind == "shm" and ident_number in foreign_shm) or (
            kind == "sem" and key in foreign_keys
        ):
            foreign.add(ident)
    return sorted(desc for ident, desc in new.items() if ident not in foreign)


_SESSION_BASELINE = pytest.StashKey[dict[str, str]]()
_SESSION_LEAKS = pytest.StashKey[list[str]]()


SESSION_LOCK = Path("/tmp/qsharedmem-tests.lock")
_SESSION_LOCK_FD = pytest.StashKey[int]()


def _take_session_lock(config: pytest.Config) -> None:
    """Serialise test sessions on this machine.

    System V and /dev/shm are machine-wide, and ftok() keys of different key files can collide;
    two concurrent sessions would see (and count as leaks) each other's objects. A session
    therefore holds an exclusive flock on ``SESSION_LOCK`` from its start to its end (the
    kernel releases it if the process dies). Other test drivers (e.g. ``cargo test``) can take
    the same lock to stay out of the way.
    """
    import fcntl

    fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.stderr.write(f"waiting for another test session to release {SESSION_LOCK} ...\n")
        sys.stderr.flush()
        fcntl.flock(fd, fcntl.LOCK_EX)
    config.stash[_SESSION_LOCK_FD] = fd


def pytest_sessionstart(session: pytest.Session) -> None:
    _take_session_lock(session.config)
    session.config.stash[_SESSION_BASELINE] = ipc_snapshot()


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_SESSION_LOCK_FD, None)
    if fd is not None:
        os.close(fd)  # releases the flock


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    baseline = session.config.stash.get(_SESSION_BASELINE, None)
    if baseline is None:
        return
    gc.collect()
    leaks = new_objects(baseline, ipc_snapshot())
    session.config.stash[_SESSION_LEAKS] = leaks
    if leaks and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config):
    leaks = config.stash.get(_SESSION_LEAKS, [])
    if leaks:
        terminalreporter.section("IPC leak check", sep="=", red=True, bold=True)
        terminalreporter.line(
            "FAILED: these IPC objects / key files were created during the session "
            "and are still there:",
            red=True,
        )
        for leak in leaks:
            terminalreporter.line(f"  {leak}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Destroy the objects of a failed test before its fixtures clean up.

    pytest keeps the last failure's traceback (``sys.last_traceback``, for post-mortem
    debugging), and with it the test's locals — e.g. PySide6 objects whose destructors would
    recreate a System V semaphore long after ``make_key`` removed it, and so show up as a leak
    of some later test. Clearing those frames runs the destructors now.
    """
    tb = getattr(sys, "last_traceback", None)
    while tb is not None:
        frame = tb.tb_frame
        with contextlib.suppress(RuntimeError):  # a frame that is still executing
            frame.clear()
            # pytest's traceback formatting made a f_locals snapshot; re-syncing it with the
            # cleared frame drops the stale references
            frame.f_locals.clear()
        tb = tb.tb_next
    gc.collect()


@pytest.fixture(autouse=True)
def _ipc_leak_check() -> Iterator[None]:
    """Fail the test (at teardown) that left IPC objects behind.

    Autouse and defined here, so it is set up before and torn down after every other fixture
    of the test — in particular after ``make_key``'s cleanup.
    """
    before = ipc_snapshot()
    yield
    gc.collect()
    leaks = new_objects(before, ipc_snapshot())
    if leaks:
        pytest.fail("test left IPC objects behind:\n  " + "\n  ".join(leaks), pytrace=False)
