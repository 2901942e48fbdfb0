"""System V exclusion under churn: one lock set per segment, and a lock set that is always usable.

* A process preempted inside the lock's ``ftok``/``semget`` while the last detacher removes the
  key files and the set, and a new creator makes new ones, must not come back with a lock set
  of its own (issue 19, item 1): it must wait for the new creator's lock.
* A creator killed between ``semget`` and the set's initialisation must not leave the key locked
  forever (issue 19, item 2), for qsharedmem's sets and for Qt's (one semaphore, initialised
  with ``SETVAL``).
* Six processes churning create-or-attach / locked whole-record write / detach on one key find
  no torn record that no owner death explains, with and without SIGKILLs, on both backends.
  ``QSHAREDMEM_CHURN_SECONDS`` sets how long each churn runs (default 8 s; docs/reliability.md
  records the 60-second runs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import qsharedmem
from support import HELPERS_DIR
from support.agent import start_agent
from support.ipc import sysv_objects, sysv_objects_for_file, sysv_remove
from support.keys import KeyRegistry
from support.processes import ChildProcesses, child_env

S = qsharedmem.QSharedMemory
CHURN_WORKER = HELPERS_DIR / "churn_worker.py"
CHURN_SECONDS = float(os.environ.get("QSHAREDMEM_CHURN_SECONDS", "8"))
STOP_MARK = "qsharedmem-test-stop "

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
IPC_CREAT, IPC_EXCL, IPC_RMID, GETVAL, GETNCNT, SETVAL = 0o1000, 0o2000, 0, 12, 14, 16
QT_PROJECT_ID = 0x51


def ftok(path: Path | str) -> int:
    key = _libc.ftok(os.fsencode(path), QT_PROJECT_ID)
    assert key != -1, f"ftok({path}) failed: {os.strerror(ctypes.get_errno())}"
    return key


def semaphore_sets() -> dict[int, int]:
    """{semid: key} of every System V semaphore set on the machine."""
    sets = {}
    lines = Path("/proc/sysvipc/sem").read_text().splitlines()[1:]
    for line in lines:
        key, semid = line.split()[:2]
        sets[int(semid)] = int(key)
    return sets


def sets_with_key(key: int) -> list[int]:
    # /proc shows keys as signed ints, ftok returns them the same way.
    return [semid for semid, k in semaphore_sets().items() if k == key]


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


def waiters(semid: int) -> int:
    return _libc.semctl(ctypes.c_int(semid), ctypes.c_int(0), ctypes.c_int(GETNCNT))


def lock_key_file(shm: S) -> Path:
    """The key file of a legacy key's lock semaphore (``qipc_systemsem_…`` beside the segment's)."""
    segment_file = Path(shm.nativeKey())
    return segment_file.with_name(
        "qipc_systemsem_" + segment_file.name[len("qipc_sharedmemory_") :]
    )


def wait_for(condition, what: str, child=None, timeout: float = 20.0) -> None:
    """Polls ``condition`` until it holds; fails at once if ``child`` printed something first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child is not None and child.proc.poll() is not None:
            pytest.fail(f"{what}: the child exited first: {child.finish()}")
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# Item 1: a lock set made under a key file that was replaced meanwhile


def test_a_process_preempted_in_semget_while_the_key_is_recreated_waits_for_the_new_lock(
    procs: ChildProcesses, make_key: KeyRegistry, tmp_path: Path
):
    name = make_key("preempted")
    first = S(name)
    assert first.create(64), first.errorString()
    lock_file = lock_key_file(first)
    old_key = ftok(lock_file)
    # P stops right after the ftok of the lock's key file, before its semget.
    p = procs.start_python(
        "import sys; from qsharedmem import QSharedMemory as S\n"
        "s = S(sys.argv[1])\n"
        "print('ATTACHED', s.attach(), flush=True)\n"
        "print('LOCKED', s.lock(timeout=1), flush=True)\n"
        "s.unlock(); s.detach()\n",
        name,
        env=child_env(QSHAREDMEM_TEST_STOP_AT="lock-set:keyed"),
    )
    marker = p.wait_for_line(lambda line: line.startswith(STOP_MARK))
    assert marker == f"{STOP_MARK}lock-set:keyed {p.pid}"
    # It prints the marker, then stops itself: a SIGCONT sent in between would be lost.
    wait_for(lambda: stopped(p.pid), "P stops at the test point", child=p)
    # Keep the old key file's inode alive, so that the new key file cannot get it back (and
    # with it the same IPC key): then P's key belongs to a file that no longer exists.
    os.link(lock_file, tmp_path / "old-lock-key-file")
    assert first.detach(), first.errorString()
    assert not lock_file.exists(), "the last detacher removes the lock's key file"
    assert sets_with_key(old_key) == [], f"a set with the old key {old_key:#x} is left"
    creator = S(name)
    assert creator.create(64), creator.errorString()
    new_key = ftok(lock_file)
    assert new_key != old_key, "the new key file has the old IPC key"
    assert creator.lock()
    (current,) = sets_with_key(new_key)
    os.kill(p.pid, signal.SIGCONT)
    # P must end up waiting for the creator's lock (its attach runs under the lock), never
    # come back with a lock of its own.
    wait_for(lambda: waiters(current) == 1, "P waits on the creator's lock set", child=p)
    assert sets_with_key(old_key) == [], "P made a second lock set under the dead key"
    assert creator.unlock()
    assert p.wait_for_line(lambda line: line.startswith("ATTACHED")) == "ATTACHED True"
    assert p.wait_for_line(lambda line: line.startswith("LOCKED")) == "LOCKED True"
    assert p.finish().returncode == 0
    assert sets_with_key(old_key) == []
    assert creator.detach()


def test_the_last_detach_of_a_segment_whose_key_file_was_made_again_leaves_the_new_one_alone(
    make_key: KeyRegistry, tmp_path: Path
):
    """Someone removes a System V key file while A is attached, and B creates a new segment
    under the same name (a new file, so a new IPC key). A's last detach removes A's segment and
    A's lock set, but not the key file: it is B's now, and without it nobody can attach to B."""
    key_file = tmp_path / make_key("remade")
    key = qsharedmem.QNativeIpcKey(str(key_file), qsharedmem.QNativeIpcKey.Type.SystemV)
    a = S(key)
    assert a.create(64), a.errorString()
    a.data()[:4] = b"old!"
    # Keep the old inode alive, so that the new key file gets another one (another IPC key).
    old_inode = tmp_path / "old-key-file"
    os.link(key_file, old_inode)
    key_file.unlink()
    b = S(key)
    assert b.create(64), b.errorString()
    b.data()[:4] = b"new!"
    assert sysv_objects_for_file(old_inode) != [], "A's segment and lock set exist"
    assert a.detach(), a.errorString()
    assert key_file.exists(), "A's last detach removed the key file of B's segment"
    assert sysv_objects_for_file(old_inode) == [], "A's segment or lock set is left behind"
    c = S(key)
    assert c.attach(), c.errorString()
    assert bytes(c.data()[:4]) == b"new!"
    assert c.lock(), c.errorString()
    assert c.unlock()
    assert c.detach() and b.detach()
    assert not key_file.exists()
    old_inode.unlink()


def test_a_lock_whose_unlock_failed_can_be_taken_again(make_key: KeyRegistry, tmp_path: Path):
    """Issue 13, item 5: a failed unlock() must not leave this thread registered as the holder.
    The lock set is removed from outside while held and its key file's directory is moved away,
    so unlock() cannot re-create it and fails; once the directory is back, the same thread's
    lock() works (it used to say that this thread already held the lock)."""
    directory = tmp_path / make_key("unlockfail")
    directory.mkdir()
    key_file = directory / "key"
    handle = S(qsharedmem.QNativeIpcKey(str(key_file), qsharedmem.QNativeIpcKey.Type.SystemV))
    assert handle.create(64), handle.errorString()
    assert handle.lock()
    (semid,) = sets_with_key(ftok(key_file))
    assert _libc.semctl(ctypes.c_int(semid), ctypes.c_int(0), ctypes.c_int(IPC_RMID)) == 0
    away = directory.with_name(directory.name + ".away")
    directory.rename(away)
    try:
        assert not handle.unlock()
        assert handle.error() == S.SharedMemoryError.LockError
    finally:
        away.rename(directory)
    assert handle.lock(timeout=5), handle.errorString()
    assert handle.unlock()
    assert handle.detach()
    del handle
    assert not key_file.exists()
    directory.rmdir()


# --------------------------------------------------------------------------------------------
# Item 2: a creator killed before it initialised the set


def _make_uninitialised_set(key_file: Path, count: int) -> int:
    """What a creator killed between ``semget`` and its initialisation leaves behind."""
    fd = os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
    os.close(fd)
    semid = _libc.semget(ftok(key_file), count, IPC_CREAT | IPC_EXCL | 0o600)
    assert semid >= 0, os.strerror(ctypes.get_errno())
    return semid


def assert_usable_once_more(procs: ChildProcesses, name: str, then: str = "") -> None:
    """A new process creates the segment ``name`` and locks it at once (no owner died), unlocks
    and detaches; then runs ``then``."""
    result = procs.run_python(
        "import sys; from qsharedmem import QSharedMemory as S\n"
        "s = S(sys.argv[1])\n"
        "assert s.create(64), s.errorString()\n"
        "assert s.lock(timeout=5) and not s.lockOwnerDied()\n"
        "assert s.unlock() and s.detach()\n" + then,
        name,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "count",
    [
        pytest.param(3, id="qsharedmem-set"),
        # Qt's creator does semget and then SETVAL 1: killed in between, the lock is 0 and no
        # semop ever succeeded on it (sem_otime 0).
        pytest.param(1, id="qt-set"),
    ],
)
def test_a_set_whose_creator_died_before_initialising_it_is_initialised_by_the_next_user(
    procs: ChildProcesses, make_key: KeyRegistry, count: int
):
    name = make_key("uninitialised")
    probe = S(name)
    lock_file = lock_key_file(probe)
    _make_uninitialised_set(lock_file, count)
    if count == 1:
        # Qt's own creator would have set the value by now (it does so right after semget):
        # a set this old with the lock taken and no semop ever done was left behind.
        time.sleep(2.1)
    assert_usable_once_more(
        procs,
        name,
        "t = S(sys.argv[1])\n"
        "assert t.create(64), t.errorString()\n"
        "assert t.lock(timeout=5) and t.unlock() and t.detach()\n",
    )
    assert make_key.leftovers(name) == []


def test_a_creator_killed_between_semget_and_initialisation_does_not_lock_the_key(
    procs: ChildProcesses, make_key: KeyRegistry
):
    name = make_key("killedcreator")
    victim = procs.start_python(
        "import sys; from qsharedmem import QSharedMemory as S\nS(sys.argv[1]).create(64)\n",
        name,
        env=child_env(QSHAREDMEM_TEST_STOP_AT="lock-set:created"),
    )
    marker = victim.wait_for_line(lambda line: line.startswith(STOP_MARK))
    assert marker == f"{STOP_MARK}lock-set:created {victim.pid}"
    victim.kill()
    assert_usable_once_more(procs, name)
    assert make_key.leftovers(name) == []


def test_creators_killed_at_random_moments_never_leave_the_key_locked(
    procs: ChildProcesses, make_key: KeyRegistry
):
    name = make_key("killstorm")
    rng = random.Random(1912)
    loop = (
        "import sys; from qsharedmem import QSharedMemory as S\n"
        "print('GO', flush=True)\n"
        "while True:\n"
        "    s = S(sys.argv[1])\n"
        "    if s.create(64) or s.attach():\n"
        "        s.detach()\n"
    )
    for _ in range(30):
        victim = procs.start_python(loop, name)
        victim.wait_for_line("GO")
        time.sleep(rng.uniform(0, 0.02))
        victim.kill()
    result = procs.run_python(
        "import sys; from qsharedmem import QSharedMemory as S\n"
        "s = S(sys.argv[1])\n"
        "assert s.create(64) or s.attach(), s.errorString()\n"
        "assert s.lock(timeout=5), s.errorString()\n"
        "assert s.unlock() and s.detach()\n",
        name,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Churn: six processes, one key, whole records under the lock


def _churn(
    procs: ChildProcesses,
    spec: str,
    tmp_path: Path,
    kills: bool,
    seconds: float,
    env: dict[str, str],
) -> tuple[list[str], int]:
    stop_file, report_file = tmp_path / "stop", tmp_path / "torn"
    argv = procs.python(CHURN_WORKER, spec, str(stop_file), str(report_file))
    workers = [procs.start_ready(argv, "READY", env=env) for _ in range(6)]
    rng = random.Random(19)
    killed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if kills:
            time.sleep(rng.uniform(0.02, 0.15))
            victim = workers.pop(rng.randrange(len(workers)))
            victim.kill()
            killed += 1
            workers.append(procs.start_ready(argv, "READY", env=env))
        else:
            time.sleep(0.1)
    stop_file.touch()
    locked = 0
    for worker in workers:
        result = worker.finish(timeout=60)
        assert result.returncode == 0, result.stderr
        locked += int(result.stdout.split("DONE ")[1].split()[0])
    assert locked > 0, "nobody ever got the lock"
    torn = report_file.read_text().splitlines() if report_file.exists() else []
    return [line for line in torn if "unreported" in line], killed


@pytest.fixture
def tmpfs_tmpdir(make_key: KeyRegistry) -> Iterator[Path]:
    """A ``TMPDIR`` on tmpfs (a directory in /dev/shm), for Qt's legacy key files.

    On tmpfs a new file never gets the inode number of one just removed, so a key file that is
    removed and made again gets a new IPC key: the churn that breaks exclusion when a lock set
    outlives its key file (on ext4 the number usually comes back, and hides it). Many systems
    have /tmp on tmpfs.
    """
    directory = Path("/dev/shm") / make_key("tmpdir")
    directory.mkdir()
    try:
        yield directory
    finally:
        objects = sysv_objects()
        for path in directory.iterdir():
            for obj in sysv_objects_for_file(path, objects):
                sysv_remove(obj)
            path.unlink()
        directory.rmdir()


@pytest.mark.parametrize("kills", [False, True], ids=["no-kills", "kills"])
@pytest.mark.parametrize("backend", ["sysv-legacy", "posix"])
def test_six_churning_processes_never_see_a_torn_record_that_no_death_explains(
    procs: ChildProcesses,
    make_key: KeyRegistry,
    tmp_path: Path,
    tmpfs_tmpdir: Path,
    backend: str,
    kills: bool,
):
    env = child_env(TMPDIR=str(tmpfs_tmpdir))
    name = make_key("churn")
    spec = "legacy:" + name if backend == "sysv-legacy" else S.platformSafeKey(name).toString()
    unexplained, killed = _churn(procs, spec, tmp_path, kills, CHURN_SECONDS, env)
    assert unexplained == [], f"{len(unexplained)} torn records without an owner death"
    assert killed > 0 or not kills
    # Whatever the kills left (an orphan nobody holds) is reclaimed by the next user, and its
    # last detach leaves nothing behind.
    result = procs.run_python(
        "import sys\n"
        "from qsharedmem import QNativeIpcKey, QSharedMemory as S\n"
        "spec = sys.argv[1]\n"
        "s = S(spec[7:]) if spec.startswith('legacy:') else S(QNativeIpcKey.fromString(spec))\n"
        "assert s.create(64) or s.attach(), s.errorString()\n"
        "assert s.detach()\n",
        spec,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert list(tmpfs_tmpdir.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The churn found it: the death recorded in a lock set must outlive the set's creator


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "systemv"])
def test_a_holder_death_survives_the_lock_sets_creator_going_away(
    procs: ChildProcesses, make_key: KeyRegistry, legacy: bool
):
    """A's handle made the lock set; B dies holding the lock (its record half-written); then
    A's handle goes, which by Qt's rule removes the set it created. The death is recorded only
    in the set (its missing token): C's next lock() must still report it, so the set stays
    while the segment lives (it used to be removed, and C's lock came from a fresh set)."""
    name = make_key("deathkept")
    K = qsharedmem.QNativeIpcKey
    key = S(name).nativeIpcKey() if legacy else S.platformSafeKey(name, K.Type.SystemV)
    make_key.record(key)
    a = S(key)
    assert a.create(64), a.errorString()
    c = S(key)
    assert c.attach(), c.errorString()
    b = start_agent(procs)
    assert b.call("key", "h", key.toString()).r is True
    assert b.call("attach", "h").r is True
    assert b.call("lock", "h", 5).r is True
    assert b.call("write", "h", 0, "aa" * 8).r is True  # half a record
    b.kill()
    assert a.detach()
    del a  # the set's creator goes
    assert c.lock(timeout=5), c.errorString()
    assert c.lockOwnerDied(), "the death recorded in the set was lost with the set"
    assert c.unlock()
    assert c.detach()
    del c
