"""Reliability, second round (issue 19, items 3 to 8): waits that are always bounded, lock
holders that are threads, System V segments of live processes, honest resource errors.

Each test fails on the code before the fix it checks:

* item 3: a POSIX ``attach()`` blocked in ``flock`` by a process that holds the segment
  exclusively (a stopped last detacher, ``flock -x``) returns within its bound, and Ctrl-C
  (SIGINT) gets through while it waits;
* item 4: a thread that ends while holding a handle's lock leaves neither the handle stuck
  (``detach()`` works, from another thread) nor the lock held: the next ``lock()`` reports the
  death, for both backends;
* item 5: ``create()`` never destroys a System V segment whose creator still lives;
* item 7: a full inode table is reported as that, not as missing bytes.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import qsharedmem
from support.keys import KeyRegistry
from support.processes import ChildProcesses

S = qsharedmem.QSharedMemory
K = qsharedmem.QNativeIpcKey
SV = K.Type.SystemV
POSIX = K.Type.PosixRealtime


def posix_key(make_key: KeyRegistry, tag: str) -> K:
    return S.platformSafeKey(make_key(tag))


# --------------------------------------------------------------------------------------------
# Item 3


def _child_holding_exclusively(procs: ChildProcesses, sidecar: Path):
    return procs.start_python(
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('HELD', flush=True)\n"
        "time.sleep(600)\n",
        str(sidecar),
    )


def test_an_attach_blocked_by_an_exclusive_flock_is_bounded_and_interruptible(
    procs: ChildProcesses, make_key: KeyRegistry
):
    key = posix_key(make_key, "blocked")
    owner = procs.start_python(
        "import sys\n"
        "from qsharedmem import QSharedMemory as S, QNativeIpcKey as K\n"
        "s = S(K.fromString(sys.argv[1]))\n"
        "assert s.create(64)\n"
        "print('CREATED', flush=True)\n"
        "sys.stdin.readline()\n"
        "import os; os._exit(0)\n",  # leaves an orphan: nobody counts any more
        key.toString(),
    )
    owner.wait_for_line("CREATED")
    owner.send("\n")
    owner.wait()
    sidecar = Path("/dev/shm") / (key.nativeKey().lstrip("/") + ".qsm")
    assert sidecar.exists(), "the orphan is left behind"
    blocker = _child_holding_exclusively(procs, sidecar)
    blocker.wait_for_line("HELD")
    # Bounded: without a timeout the wait for an exclusive holder is a few seconds at most.
    attacher = S(key)
    started = time.monotonic()
    assert not attacher.attach()
    assert attacher.error() == S.SharedMemoryError.LockError
    assert "held exclusively" in attacher.errorString()
    assert time.monotonic() - started < 30
    # Interruptible: SIGINT reaches a Python signal handler while the attach waits.
    waiter = procs.start_python(
        "import signal, sys\n"
        "from qsharedmem import QSharedMemory as S, QNativeIpcKey as K\n"
        "s = S(K.fromString(sys.argv[1]))\n"
        "print('ATTACHING', flush=True)\n"
        "try:\n"
        "    s.attach()\n"
        "    print('RETURNED', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('INTERRUPTED', flush=True)\n",
        key.toString(),
    )
    waiter.wait_for_line("ATTACHING")
    time.sleep(0.5)
    os.kill(waiter.pid, signal.SIGINT)
    assert waiter.wait_for_line(lambda line: line in ("INTERRUPTED", "RETURNED")) == "INTERRUPTED"
    blocker.kill()
    # With the blocker gone the orphan is reclaimed as usual.
    again = S(key)
    assert again.create(64), again.errorString()
    assert again.detach()


# --------------------------------------------------------------------------------------------
# Item 4


@pytest.mark.parametrize("family", ["posix", "sysv"])
def test_a_thread_that_ends_holding_the_lock_leaves_nothing_stuck(
    make_key: KeyRegistry, family: str
):
    name = make_key("threadend")
    key = S.platformSafeKey(name) if family == "posix" else S.legacyNativeKey(name)
    make_key.record(key)
    handle = S(key)
    assert handle.create(64), handle.errorString()
    thread = threading.Thread(target=handle.lock)
    thread.start()
    thread.join()
    # The holder thread is gone: its lock is nobody's, and the handle is not stuck.
    other = S(key)
    assert other.attach()
    assert other.lock(timeout=5), other.errorString()
    assert other.lockOwnerDied(), "the death of the holder thread is reported"
    assert other.unlock()
    assert other.detach()
    assert handle.detach(), handle.errorString()
    # And the handle itself locks again.
    assert handle.attach() or handle.create(64)
    assert handle.lock(timeout=5)
    assert handle.unlock()
    assert handle.detach()


def test_the_handle_whose_holder_thread_ended_reports_the_death_itself(
    make_key: KeyRegistry,
):
    key = S.legacyNativeKey(make_key("threadend2"))
    make_key.record(key)
    handle = S(key)
    assert handle.create(64)
    thread = threading.Thread(target=handle.lock)
    thread.start()
    thread.join()
    assert handle.lock(timeout=5), handle.errorString()
    assert handle.lockOwnerDied()
    assert handle.unlock()
    assert handle.detach()


# --------------------------------------------------------------------------------------------
# Item 5


def test_create_never_destroys_a_system_v_segment_whose_creator_lives(
    procs: ChildProcesses, make_key: KeyRegistry
):
    sysv_ipc = pytest.importorskip("sysv_ipc")
    name = make_key("livesysv")
    key = S.legacyNativeKey(name)
    make_key.record(key)
    key_file = Path(key.nativeKey())
    key_file.touch(mode=0o640)
    # Another program (alive) made a segment at the key file's ftok key and wrote into it.
    holder = procs.start_python(
        "import sys, sysv_ipc\n"
        "seg = sysv_ipc.SharedMemory(sysv_ipc.ftok(sys.argv[1], 0x51, silence_warning=True),\n"
        "                            sysv_ipc.IPC_CREX, size=4096)\n"
        "seg.write(b'precious')\n"
        "seg.detach()\n"  # nattch 0, creator alive
        "print('MADE', seg.id, flush=True)\n"
        "sys.stdin.readline()\n",
        str(key_file),
    )
    shmid = int(holder.wait_for_line(lambda line: line.startswith("MADE")).split()[1])
    intruder = S(name)
    assert not intruder.create(4096)
    assert intruder.error() == S.SharedMemoryError.AlreadyExists
    assert intruder.errorString() == "QSharedMemory::create: already exists"
    seg = sysv_ipc.SharedMemory(sysv_ipc.ftok(str(key_file), 0x51, silence_warning=True))
    assert seg.id == shmid, "the very segment is still there"
    assert seg.read(8) == b"precious"
    seg.detach()
    seg.remove()
    key_file.unlink()
    holder.finish()


# --------------------------------------------------------------------------------------------
# Item 7


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_inode_table_is_reported_as_such(tmp_path: Path):
    script = tmp_path / "inodes.py"
    script.write_text(
        "import os, sys\n"
        "from qsharedmem import QSharedMemory as S\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        os.close(os.open(f'/dev/shm/filler-{n}', os.O_CREAT | os.O_WRONLY, 0o600))\n"
        "    except OSError:\n"
        "        break\n"
        "    n += 1\n"
        "s = S(S.platformSafeKey('inode-test'))\n"
        "ok = s.create(64)\n"
        "print(ok, int(s.error()), s.errorString())\n"
    )
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount -t tmpfs -o size=64m,nr_inodes=64 tmpfs /dev/shm && {sys.executable} {script}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ok, code, text = result.stdout.strip().split(" ", 2)
    assert ok == "False"
    assert int(code) == int(S.SharedMemoryError.OutOfResources)
    assert "no inode left" in text, text
    assert "bytes free" not in text


# --------------------------------------------------------------------------------------------
# Kills while a named semaphore is being made (found by the churn test with kills)

GLIBC_TEMPORARY = re.compile(r"sem\.[A-Za-z0-9]{6}")  # glibc's sem_open(O_CREAT) scratch name


def glibc_temporaries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if GLIBC_TEMPORARY.fullmatch(n)}


def test_processes_killed_while_making_semaphores_leave_no_temporary_file(
    procs: ChildProcesses, make_key: KeyRegistry
):
    """glibc makes a named semaphore as ``/dev/shm/sem.XXXXXX`` and then links it to its name; a
    process killed in between left that file for ever. Every segment lock and QSystemSemaphore
    of a POSIX key makes one. Here children loop making and removing one and are SIGKILLed at
    random moments; no temporary file may remain."""
    before = glibc_temporaries()
    keys = []
    for n in range(3):
        key = qsharedmem.QSystemSemaphore.platformSafeKey(make_key(f"semkill{n}"))
        make_key.record(key)
        keys.append(key)
    loop = (
        "import sys, qsharedmem\n"
        "key = qsharedmem.QNativeIpcKey.fromString(sys.argv[1])\n"
        "S = qsharedmem.QSystemSemaphore\n"
        "print('LOOPING', flush=True)\n"
        "while True:\n"
        "    sem = S(key, 1, S.AccessMode.Create)\n"
        "    del sem\n"
    )
    rng = random.Random(19)
    for round_ in range(60):
        child = procs.start_python(loop, keys[round_ % len(keys)].toString())
        child.wait_for_line("LOOPING")
        time.sleep(rng.uniform(0.0, 0.02))
        child.kill()
    left = glibc_temporaries() - before
    for name in left:  # do not leave them to the next test
        os.unlink(f"/dev/shm/{name}")
    assert left == set()
