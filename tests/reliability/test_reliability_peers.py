"""The same faults, for real, against the peers: PySide6 (Qt 6.12), multiprocessing.shared_memory
and posix_ipc — next to qsharedmem. The outcomes are the comparison in docs/reliability.md; each
is asserted, so the document stays true.

Every run happens in child processes; a peer that waits forever is killed after ``HANG`` seconds
and reported as ``"hangs"``, one that dies is reported by its signal (``"SIGBUS"``).

1. A lock holder is SIGKILLed while another process waits in its lock.
2. A creator is SIGKILLed; a restarted process creates the same key again.
3. A process creates a segment and exits normally, without removing it explicitly.
4. ``/dev/shm`` is 1 MiB (a private tmpfs, ``unshare -m``): create 8 MiB and write it.
5. Another process truncates the file while it is mapped, then the memory is read.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import qsharedmem
from support.ipc import sysv_objects_for_file, sysv_remove
from support.keys import KeyRegistry
from support.processes import Child, child_env, wait_until_blocked

HANG = 3.0  # seconds a peer may take before it counts as hanging
PAGE = os.sysconf("SC_PAGE_SIZE")

PRELUDE = r"""
import json, mmap, os, signal, sys, time
os.environ["QT_QPA_PLATFORM"] = "offscreen"
impl, name = sys.argv[1], sys.argv[2]
def say(*parts):
    print(*parts, flush=True)
if impl in ("pyside6-posix", "pyside6-sysv"):
    from PySide6.QtCore import QNativeIpcKey, QSharedMemory
    K = QNativeIpcKey.Type.PosixRealtime if impl == "pyside6-posix" else QNativeIpcKey.Type.SystemV
elif impl in ("qsharedmem-posix", "qsharedmem-sysv"):
    from qsharedmem import QNativeIpcKey, QSharedMemory
    K = QNativeIpcKey.Type.PosixRealtime if impl.endswith("posix") else QNativeIpcKey.Type.SystemV
if impl.startswith(("pyside6", "qsharedmem")):
    key = QSharedMemory.platformSafeKey(name, K)
def qt_view(sm):
    return memoryview(sm.data())
"""

SYSV = qsharedmem.QNativeIpcKey.Type.SystemV


class Proc:
    """A child running PRELUDE + ``code`` with (impl, name), read line by line with timeouts."""

    def __init__(self, code: str, impl: str, name: str, env: dict | None = None, wrap=()):
        argv = [*wrap, sys.executable, "-c", PRELUDE + code, impl, name]
        self.child = Child(argv, env=env or child_env(), cwd=None)
        self.pid = self.child.pid
        self.err = ""

    def line(self) -> str | None:
        return self.child.readline()

    def expect(self, wanted: str) -> None:
        got = self.child.readline()
        assert got == wanted, (got, self.child.proc.poll(), self.child.stderr())

    def send(self, line: str) -> None:
        self.child.send(line + "\n")

    def outcome(self, timeout: float = HANG) -> str:
        """ "hangs", the signal that ended the child, or its last stdout line."""
        try:
            self.child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.child.kill()
            return "hangs"
        if self.child.proc.returncode < 0:
            return signal.Signals(-self.child.proc.returncode).name
        result = self.child.finish()
        self.err = result.stderr
        assert result.returncode == 0, result
        lines = result.stdout.strip().splitlines()
        return lines[-1] if lines else ""

    def kill(self) -> None:
        self.child.kill()

    def stderr(self) -> str:
        """What the child wrote on stderr (collected by :meth:`outcome`)."""
        return self.err


@pytest.fixture
def peers(make_key: KeyRegistry):
    """Starts Procs, kills them at teardown, and cleans what every peer may leave."""
    started: list[Proc] = []
    names: list[str] = []

    def start(code: str, impl: str, name: str, **kw) -> Proc:
        proc = Proc(code, impl, name, **kw)
        started.append(proc)
        return proc

    def name(tag: str) -> str:
        mangled = make_key(tag)
        names.append(mangled)
        return mangled

    start.name = name  # type: ignore[attr-defined]
    yield start
    for proc in started:
        proc.kill()
        proc.child._stderr.close()
    for mangled in names:  # posix_ipc and multiprocessing names ("/name"), no Qt suffixes
        for path in (Path("/dev/shm") / mangled, Path("/dev/shm") / f"sem.{mangled}"):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# 1. A lock holder is killed while another process waits

# Both attach before the holder locks: attach() takes the lock too (System V, and Qt's POSIX).
HOLD_QT = r"""
sm = QSharedMemory(key)
assert sm.create(64), sm.errorString()
say("ready")
sys.stdin.readline()
assert sm.lock()
say("locked")
sys.stdin.read()
"""
WAIT_QT = r"""
sm = QSharedMemory(key)
assert sm.attach(), sm.errorString()
say("ready")
sys.stdin.readline()
say("waiting")
ok = sm.lock()
died = sm.lockOwnerDied() if hasattr(sm, "lockOwnerDied") else None
say(json.dumps({"locked": ok, "owner_died": died}))
"""
HOLD_POSIX_IPC = r"""
import posix_ipc
sem = posix_ipc.Semaphore("/" + name, posix_ipc.O_CREAT, initial_value=1)
say("ready")
sys.stdin.readline()
sem.acquire()
say("locked")
sys.stdin.read()
"""
WAIT_POSIX_IPC = r"""
import posix_ipc
sem = posix_ipc.Semaphore("/" + name)
say("ready")
sys.stdin.readline()
say("waiting")
sem.acquire()
say(json.dumps({"locked": True, "owner_died": None}))
"""

DEAD_HOLDER = {
    "qsharedmem-posix": '{"locked": true, "owner_died": true}',
    "qsharedmem-sysv": '{"locked": true, "owner_died": true}',
    "pyside6-posix": "hangs",
    "pyside6-sysv": '{"locked": true, "owner_died": null}',
    "posix_ipc": "hangs",
}


@pytest.mark.parametrize("impl", list(DEAD_HOLDER))
def test_lock_holder_killed(impl: str, peers, make_key: KeyRegistry) -> None:
    name = peers.name("deadholder")
    hold, wait = (HOLD_POSIX_IPC, WAIT_POSIX_IPC) if impl == "posix_ipc" else (HOLD_QT, WAIT_QT)
    holder = peers(hold, impl, name)
    holder.expect("ready")
    waiter = peers(wait, impl, name)
    waiter.expect("ready")
    holder.send("lock")
    holder.expect("locked")
    waiter.send("lock")
    waiter.expect("waiting")
    wait_until_blocked(waiter.pid)
    # Qt's System V objects of the key, to remove what Qt leaves once the key file is gone.
    key_file = Path(qsharedmem.QSharedMemory.platformSafeKey(name, SYSV).nativeKey())
    objects = sysv_objects_for_file(key_file) if impl == "pyside6-sysv" else []
    holder.kill()
    assert waiter.outcome() == DEAD_HOLDER[impl]
    for obj in objects:  # PySide6 leaks the dead creator's semaphore (its key file removed)
        sysv_remove(obj)


# ------------------------------------------------------------------------------------------------
# 2. The creator is killed; a restarted process creates the key again

CREATE_QT = r"""
sm = QSharedMemory(key)
assert sm.create(4096), sm.errorString()
qt_view(sm)[:5] = b"stale"
say("created")
sys.stdin.read()
"""
RECREATE_QT = r"""
sm = QSharedMemory(key)
ok = sm.create(4096)
say(json.dumps([ok, sm.error().name]))
"""
CREATE_MP = r"""
from multiprocessing import resource_tracker, shared_memory
seg = shared_memory.SharedMemory(name=name, create=True, size=4096)
seg.buf[:5] = b"stale"
say("created")
say(resource_tracker._resource_tracker._pid)  # the tracker process it started
sys.stdin.read()
"""
RECREATE_MP = r"""
from multiprocessing import shared_memory
try:
    seg = shared_memory.SharedMemory(name=name, create=True, size=4096)
    seg.close(); seg.unlink()
    say(json.dumps([True, None]))
except FileExistsError:
    say(json.dumps([False, "FileExistsError"]))
"""
CREATE_POSIX_IPC = r"""
import posix_ipc
seg = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, size=4096)
say("created")
sys.stdin.read()
"""
RECREATE_POSIX_IPC = r"""
import posix_ipc
try:
    seg = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, size=4096)
    seg.unlink()
    say(json.dumps([True, None]))
except posix_ipc.ExistentialError:
    say(json.dumps([False, "ExistentialError"]))
"""

RESTART = {
    "qsharedmem-posix": '[true, "NoError"]',
    "qsharedmem-sysv": '[true, "NoError"]',
    "pyside6-posix": '[false, "AlreadyExists"]',
    "pyside6-sysv": '[false, "AlreadyExists"]',
    # Its resource tracker, a separate process, removes the segment when the creator dies
    # (printing a "leaked" warning) - as it also does while other processes still use it.
    "multiprocessing": "[true, null]",
    "posix_ipc": '[false, "ExistentialError"]',
}


@pytest.mark.parametrize("impl", list(RESTART))
def test_creator_killed_then_restarted(impl: str, peers, make_key: KeyRegistry) -> None:
    name = peers.name("restart")
    create, recreate = {
        "multiprocessing": (CREATE_MP, RECREATE_MP),
        "posix_ipc": (CREATE_POSIX_IPC, RECREATE_POSIX_IPC),
    }.get(impl, (CREATE_QT, RECREATE_QT))
    creator = peers(create, impl, name)
    creator.expect("created")
    tracker = int(creator.line()) if impl == "multiprocessing" else None
    creator.kill()
    if tracker is not None:
        wait_for_exit(tracker)  # it cleans up when it sees its creator gone, then exits
    assert peers(recreate, impl, name).outcome(timeout=60) == RESTART[impl]


def wait_for_exit(pid: int, timeout: float = 30.0) -> None:
    """Wait until process ``pid`` (not our child) is gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ") Z " in Path(f"/proc/{pid}/stat").read_text():
                return  # a zombie: it did everything it will do
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------
# 3. Created, then a normal exit without removing it

EXIT_QT = r"""
sm = QSharedMemory(key)
assert sm.create(4096), sm.errorString()
say("done")
"""
EXIT_MP = r"""
from multiprocessing import shared_memory
seg = shared_memory.SharedMemory(name=name, create=True, size=4096)
seg.close()
say("done")
"""
EXIT_POSIX_IPC = r"""
import posix_ipc
posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, size=4096).close_fd()
say("done")
"""

LEFT_AFTER_EXIT = {
    "qsharedmem-posix": [],
    "qsharedmem-sysv": [],
    "pyside6-posix": ["segment"],
    "pyside6-sysv": [],
    "multiprocessing": [],  # removed by its resource tracker, with a "leaked" warning
    "posix_ipc": ["segment"],
}


@pytest.mark.parametrize("impl", list(LEFT_AFTER_EXIT))
def test_normal_exit_without_cleanup(impl: str, peers, make_key: KeyRegistry) -> None:
    name = peers.name("exit")
    code = {"multiprocessing": EXIT_MP, "posix_ipc": EXIT_POSIX_IPC}.get(impl, EXIT_QT)
    proc = peers(code, impl, name)
    assert proc.outcome(timeout=60) == "done"
    left = []
    if impl.endswith("-sysv"):
        leftovers = make_key.leftovers(name)
        left = ["segment"] if any("System V shm" in item for item in leftovers) else []
    elif (Path("/dev/shm") / name).exists():
        left = ["segment"]
    assert left == LEFT_AFTER_EXIT[impl]
    if impl == "multiprocessing":
        assert "leaked shared_memory objects" in proc.stderr()


# ------------------------------------------------------------------------------------------------
# 4. /dev/shm full

FULL_QT = r"""
sm = QSharedMemory(key)
ok = sm.create(8 << 20)
if not ok:
    say(json.dumps([False, sm.error().name])); sys.exit(0)
view = qt_view(sm)
view[:] = b"\x01" * len(view)
say(json.dumps([True, "wrote 8 MiB"]))
"""
FULL_MP = r"""
from multiprocessing import shared_memory
seg = shared_memory.SharedMemory(name=name, create=True, size=8 << 20)
seg.buf[:] = b"\x01" * (8 << 20)
say(json.dumps([True, "wrote 8 MiB"]))
"""
FULL_POSIX_IPC = r"""
import posix_ipc
seg = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, size=8 << 20)
m = mmap.mmap(seg.fd, 8 << 20)
m[:] = b"\x01" * (8 << 20)
say(json.dumps([True, "wrote 8 MiB"]))
"""

FULL = {
    "qsharedmem-posix": '[false, "OutOfResources"]',
    "pyside6-posix": "SIGBUS",
    "multiprocessing": "SIGBUS",
    "posix_ipc": "SIGBUS",
}


@pytest.mark.parametrize("impl", list(FULL))
def test_dev_shm_full(impl: str, peers) -> None:
    assert os.geteuid() == 0, "mounting a private tmpfs needs root"
    code = {"multiprocessing": FULL_MP, "posix_ipc": FULL_POSIX_IPC}.get(impl, FULL_QT)
    shell = 'mount -t tmpfs -o size=1m,mode=1777 tmpfs /dev/shm && exec "$@"'
    wrap = [shutil.which("unshare"), "-m", "sh", "-c", shell, "sh"]
    assert peers(code, impl, peers.name("full"), wrap=wrap).outcome(timeout=60) == FULL[impl]


# ------------------------------------------------------------------------------------------------
# 5. Truncated by another process while mapped

READER_QT = r"""
sm = QSharedMemory(key)
assert sm.attach(), sm.errorString()
view = qt_view(sm)
say("attached")
sys.stdin.readline()
say(json.dumps(["read", sum(bytes(view))]))
"""
READER_MP = r"""
from multiprocessing import shared_memory
seg = shared_memory.SharedMemory(name=name)
say("attached")
sys.stdin.readline()
say(json.dumps(["read", sum(bytes(seg.buf))]))
"""
READER_POSIX_IPC = r"""
import posix_ipc
seg = posix_ipc.SharedMemory("/" + name)
m = mmap.mmap(seg.fd, seg.size)
say("attached")
sys.stdin.readline()
say(json.dumps(["read", sum(m[:])]))
"""

TRUNCATED = {
    "qsharedmem-posix": '["read", 0]',
    "pyside6-posix": "SIGBUS",
    "multiprocessing": "SIGBUS",
    "posix_ipc": "SIGBUS",
}


@pytest.mark.parametrize("impl", list(TRUNCATED))
def test_truncated_while_mapped(impl: str, peers, make_key: KeyRegistry) -> None:
    name = peers.name("truncated")
    if impl.endswith("-posix"):
        creator = peers(CREATE_QT, impl, name)
    else:
        creator = peers(CREATE_MP if impl == "multiprocessing" else CREATE_POSIX_IPC, impl, name)
    creator.expect("created")
    code = {"multiprocessing": READER_MP, "posix_ipc": READER_POSIX_IPC}.get(impl, READER_QT)
    reader = peers(code, impl, name)
    reader.expect("attached")
    os.truncate(Path("/dev/shm") / name, 0)
    reader.send("go")
    assert reader.outcome(timeout=60) == TRUNCATED[impl]
