"""Interoperability with running Qt 6 applications, with PySide6 as the real peer (issue 3).

One side of every scenario is a real PySide6-Essentials process (the test agent,
``tests/helpers/agent.py --impl pyside6``), the other is qsharedmem — in this process, or in an
agent with ``--impl qsharedmem`` when it has to be a process of its own
(concurrent increments, SIGKILL). Key kinds, as a Qt application names a segment:

* ``legacy`` — ``QSharedMemory("name")`` (System V on Linux, with its own ``qipc_systemsem_`` lock);
* ``posix`` — ``platformSafeKey(name)`` (POSIX shm + POSIX named semaphore);
* ``systemv`` / ``systemv-T`` — ``platformSafeKey(name, SystemV)`` / ``Type(84)`` (one key file
  in the Qt runtime dir for the segment and its lock).

Each key is either derived by both sides from the same name (``derived``), or derived by the
creator and handed to the other side as ``toString()`` → ``fromString()`` (``toString``).

Scenarios (the numbers of the issue): 1. Qt creates, qsharedmem reads/writes (ReadWrite and
ReadOnly); 2. qsharedmem creates, Qt reads/writes (Qt sees exactly our size: a Qt program that
fills all of ``size()`` leaves our lock and size intact); 3. mutual exclusion, for every key
kind whoever creates the segment — concurrent locked increments by two Qt and two qsharedmem
processes add up exactly, ``lock(timeout=)`` times out while Qt holds the lock and Qt's
``lock()`` waits for ours (on POSIX we take Qt's named semaphore after our robust mutex); 4.
lifecycle — for System V whoever detaches last removes the segment, Qt's leaked POSIX segments
are usable and never unlinked by us; 5. a SIGKILLed lock holder: a dead Qt holder does not
block us on System V (``SEM_UNDO``) and keeps Qt's POSIX semaphore (Qt's limit: our timeout
bounds the wait); a dead qsharedmem holder lets a waiting Qt in at once on System V, and on
POSIX as soon as the next qsharedmem ``lock()`` has seen the death and given Qt's token back;
6. Qt's errors on segments qsharedmem owns are the ones Qt reports for its own.

Also here: regression tests of two core fixes found with these peers (re-attaching to a leaked
Qt POSIX segment kept a lock Qt could no longer find; a qsharedmem creator leaving before a Qt
last detacher left the System V lock semaphore behind).

Cleanup: every key comes from ``make_key``; its teardown removes what either side leaves (Qt
leaks POSIX segments by design). System V objects whose key file is already gone cannot be found
by name, so the ``peers`` fixture records their IPC keys while the files exist and removes
anything left under those keys at teardown.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import qsharedmem
from qsharedmem import QNativeIpcKey, QSharedMemory
from support.agent import Agent, Reply, start_agent
from support.ipc import DEV_SHM, sysv_objects, sysv_remove
from support.keys import KeyRegistry
from support.processes import ChildProcesses

POSIX, SYSV, SYSV_T = 0x100, 0x51, ord("T")
KIND_TYPES = {"posix": POSIX, "systemv": SYSV, "systemv-T": SYSV_T}
KINDS = ("legacy", "posix", "systemv", "systemv-T")
SYSV_KINDS = ("legacy", "systemv", "systemv-T")
PASSINGS = ("derived", "toString")
SIDES = ("qt", "qsharedmem")
MODES = ("ReadWrite", "ReadOnly")

SIZE = 1000  # not a multiple of the page size, on purpose
PATTERN = bytes(range(1, 251)) * 2  # 500 bytes, no zero byte: never mistaken for fresh memory
REPLY = b"written by the other side"
REPLY_AT = 600

# Every kind of key, whoever creates the segment: Qt's lock and ours exclude each other.
SHARED_LOCK = [(kind, creator) for kind in [*SYSV_KINDS, "posix"] for creator in SIDES]
SHARED_LOCK_IDS = [f"{kind}-{creator}-creates" for kind, creator in SHARED_LOCK]


# --------------------------------------------------------------------------------------------
# Keys


@dataclasses.dataclass
class Keying:
    """How both sides name one segment: the key kind and the (mangled) name."""

    kind: str
    name: str

    def native_key(self) -> QNativeIpcKey:
        if self.kind == "legacy":
            return QSharedMemory.legacyNativeKey(self.name)
        return QSharedMemory.platformSafeKey(self.name, QNativeIpcKey.Type(KIND_TYPES[self.kind]))

    def qsm(self, key_string: str | None = None) -> QSharedMemory:
        """A qsharedmem handle: from ``key_string`` (a peer's toString()) or derived."""
        if key_string is not None:
            return QSharedMemory(QNativeIpcKey.fromString(key_string))
        if self.kind == "legacy":
            return QSharedMemory(self.name)
        return QSharedMemory(self.native_key())

    def spec(self, key_string: str | None = None) -> str:
        """The peer's key spec: from ``key_string`` (our toString()) or derived by the peer."""
        if key_string is not None:
            return f"string:{key_string}"
        if self.kind == "legacy":
            return f"legacy:{self.name}"
        return f"safe:{KIND_TYPES[self.kind]}:{self.name}"

    def key_files(self) -> list[Path]:
        """System V key files: the segment's, and for legacy keys the lock's."""
        if self.kind == "posix":
            return []
        segment = Path(self.native_key().nativeKey())
        if self.kind == "legacy":
            return [
                segment,
                segment.with_name(segment.name.replace("qipc_sharedmemory_", "qipc_systemsem_", 1)),
            ]
        return [segment]

    def posix_path(self) -> Path:
        return DEV_SHM / self.native_key().nativeKey().lstrip("/")

    def project_id(self) -> int:
        return SYSV_T if self.kind == "systemv-T" else SYSV


def ftok_key(path: Path, project_id: int) -> int | None:
    """glibc's ftok() of an existing file, or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return ((project_id & 0xFF) << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF)


def sysv_ctimes() -> dict[tuple[str, int], int]:
    """(kind, id) → the last change time of every System V segment and semaphore set."""
    times = {}
    for kind in ("shm", "sem"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        header = lines[0].split()
        for line in lines[1:]:
            fields = dict(zip(header, line.split(), strict=False))
            times[(kind, int(fields["shmid" if kind == "shm" else "semid"]))] = int(fields["ctime"])
    return times


# --------------------------------------------------------------------------------------------
# Peers


class Peer:
    """An agent (``support.agent``) with one handle, ``shm``, made from a key spec: ``call("size")``
    runs a named operation on it and returns its result."""

    def __init__(self, agent: Agent, impl: str, spec: str) -> None:
        self.agent = agent
        self.child = agent.child
        self.impl = impl
        self.ok("key", spec)
        self.key_string = self.call("toString")

    def send(self, name: str, *args: Any) -> None:
        self.agent.send_op(name, "shm", *args)

    def reply(self) -> Reply:
        self.last = self.agent.result()
        return self.last

    def call(self, name: str, *args: Any) -> Any:
        """The operation's result (an error reply is returned, not raised: see ``error``)."""
        self.send(name, *args)
        return self.reply().r

    def ok(self, name: str, *args: Any) -> None:
        """Run an operation that must succeed."""
        result = self.call(name, *args)
        assert result is True, f"{self.impl} peer: {name} {args} -> {self.last}"

    def error(self) -> tuple[str, ...]:
        return tuple(self.last.e or ())

    def read(self, offset: int, count: int) -> bytes:
        return bytes.fromhex(self.call("read", offset, count))

    def write(self, offset: int, data: bytes) -> None:
        self.ok("write", offset, data.hex())

    def leave(self) -> int:
        """Destroy the handle (Qt's destructor: detach, clean up) and exit; the exit status."""
        self.ok("drop")
        result = self.agent.finish()
        return result.returncode


class Peers:
    """Starts peers, and cleans up what they leave (see the module docstring)."""

    def __init__(self, keys: KeyRegistry) -> None:
        self.keys = keys
        self.procs = ChildProcesses()
        self.sysv_keys: set[int] = set()
        self.started = int(time.time()) - 1  # /proc/sysvipc times are whole seconds

    def keying(self, kind: str, name: str) -> Keying:
        keying = Keying(kind, self.keys(name))
        self.keys.record(keying.native_key())
        return keying

    def start(self, spec: str, impl: str = "pyside6") -> Peer:
        return Peer(start_agent(self.procs, impl=impl), impl, spec)  # killed by close()

    def remember_sysv(self, keying: Keying) -> None:
        """Record the IPC keys of the key files (call while they exist)."""
        for path in keying.key_files():
            key = ftok_key(path, keying.project_id())
            if key is not None:
                self.sysv_keys.add(key)

    def sysv_leftovers(self) -> list[Any]:
        """System V objects under the recorded keys that changed since this test started.

        The time filter keeps us from touching another process's object whose key file got
        the inode (hence the IPC key) of one of ours after ours was deleted.
        """
        changed = sysv_ctimes()
        return [
            o
            for o in sysv_objects()
            if o.key in self.sysv_keys and changed.get((o.kind, o.ident), 0) >= self.started
        ]

    def close(self) -> None:
        self.procs.kill_all()
        gc.collect()
        for obj in self.sysv_leftovers():
            sysv_remove(obj)


@pytest.fixture
def peers(make_key: KeyRegistry) -> Iterator[Peers]:
    manager = Peers(make_key)
    try:
        yield manager
    finally:
        manager.close()


def with_lock(shm: QSharedMemory):
    """``shm.locked()`` with a generous bound, so that a broken lock fails instead of hanging."""
    return shm.locked(timeout=30)


def sysv_segment_ids(keying: Keying) -> list[int]:
    keys = {ftok_key(path, keying.project_id()) for path in keying.key_files()[:1]}
    return [o.ident for o in sysv_objects() if o.kind == "shm" and o.key in keys]


def sysv_segment_alive(ident: int) -> bool:
    return any(o.kind == "shm" and o.ident == ident for o in sysv_objects())


@dataclasses.dataclass
class Pair:
    """A segment shared by a PySide6 peer and a qsharedmem handle in this process."""

    keying: Keying
    qt: Peer
    shm: QSharedMemory


def make_pair(
    peers: Peers,
    kind: str,
    creator: str,
    passing: str = "derived",
    size: int = SIZE,
    qt_mode: str = "ReadWrite",
    qsm_mode: str = "ReadWrite",
) -> Pair:
    """``creator`` creates the segment and writes PATTERN under its lock, the other attaches."""
    keying = peers.keying(kind, "seg")
    if creator == "qt":
        qt = peers.start(keying.spec())
        qt.ok("create", size)
        qt.ok("lock")
        qt.write(0, PATTERN)
        qt.ok("unlock")
        peers.remember_sysv(keying)
        shm = keying.qsm(qt.key_string if passing == "toString" else None)
        assert shm.attach(getattr(QSharedMemory.AccessMode, qsm_mode)), shm.errorString()
    else:
        shm = keying.qsm()
        assert shm.create(size), shm.errorString()
        with with_lock(shm):
            shm.data()[: len(PATTERN)] = PATTERN
        peers.remember_sysv(keying)
        key_string = shm.nativeIpcKey().toString() if passing == "toString" else None
        qt = peers.start(keying.spec(key_string))
        qt.ok("attach", qt_mode)
    return Pair(keying, qt, shm)


# --------------------------------------------------------------------------------------------
# 1. Qt creates and writes; qsharedmem attaches (ReadWrite, ReadOnly), reads and writes back


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("passing", PASSINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_qt_creates_qsharedmem_attaches_and_shares_the_bytes(
    peers: Peers, kind: str, passing: str, mode: str
) -> None:
    pair = make_pair(peers, kind, "qt", passing, qsm_mode=mode)
    shm, qt = pair.shm, pair.qt
    assert shm.nativeIpcKey() == pair.keying.native_key()
    assert shm.size() == SIZE  # Qt's own segments have exactly the size Qt asked for
    assert qt.call("size") == SIZE
    with with_lock(shm):
        assert bytes(shm.constData()[: len(PATTERN)]) == PATTERN
        assert bytes(shm.data()[len(PATTERN) : SIZE]) == bytes(SIZE - len(PATTERN))
    if mode == "ReadOnly":
        view = shm.data()
        assert view.readonly
        with pytest.raises(TypeError):
            view[0] = 0
        assert bytes(shm.constData()[:1]) == PATTERN[:1]
        del view
    else:
        with with_lock(shm):
            shm.data()[REPLY_AT : REPLY_AT + len(REPLY)] = REPLY
        qt.ok("lock")
        assert qt.read(REPLY_AT, len(REPLY)) == REPLY
        qt.ok("unlock")
    assert shm.detach()
    assert qt.call("detach") is True


# --------------------------------------------------------------------------------------------
# 2. qsharedmem creates and writes; Qt attaches (ReadWrite, ReadOnly), reads and writes back


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("passing", PASSINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_qsharedmem_creates_qt_attaches_and_shares_the_bytes(
    peers: Peers, kind: str, passing: str, mode: str
) -> None:
    pair = make_pair(peers, kind, "qsharedmem", passing, qt_mode=mode)
    shm, qt = pair.shm, pair.qt
    assert shm.size() == SIZE
    # Qt sees our size exactly: on POSIX the data file holds the data and nothing else.
    assert qt.call("size") == SIZE
    if kind == "posix":
        assert pair.keying.posix_path().stat().st_size == SIZE
    assert qt.read(0, len(PATTERN)) == PATTERN
    assert qt.read(len(PATTERN), SIZE - len(PATTERN)) == bytes(SIZE - len(PATTERN))
    if mode == "ReadWrite":
        qt.ok("lock")
        qt.write(REPLY_AT, REPLY)
        qt.ok("unlock")
        with with_lock(shm):
            assert bytes(shm.constData()[REPLY_AT : REPLY_AT + len(REPLY)]) == REPLY
    assert qt.call("detach") is True
    assert shm.detach()


# --------------------------------------------------------------------------------------------
# 3. Mutual exclusion between Qt and qsharedmem processes

INCREMENTS = 5000  # per process: 20,000 locked increments by 4 processes in all


@pytest.mark.parametrize(("kind", "creator"), SHARED_LOCK, ids=SHARED_LOCK_IDS)
def test_concurrent_locked_increments_from_qt_and_qsharedmem_add_up(
    peers: Peers, kind: str, creator: str
) -> None:
    keying = peers.keying(kind, "counter")
    first = peers.start(keying.spec(), "pyside6" if creator == "qt" else "qsharedmem")
    first.ok("create", 64)
    peers.remember_sysv(keying)
    # Two of each implementation; two attachers derive the key, two get the creator's toString().
    others = [
        peers.start(keying.spec(), "pyside6"),
        peers.start(keying.spec(first.key_string), "qsharedmem"),
        peers.start(keying.spec(first.key_string), "pyside6" if creator != "qt" else "qsharedmem"),
    ]
    for peer in others:
        peer.ok("attach")
    everyone = [first, *others]
    assert {p.impl for p in everyone} == {"pyside6", "qsharedmem"}
    for peer in everyone:  # all at once: each yields to the others between read and write
        peer.send("incr32", 0, INCREMENTS)
    for peer in everyone:
        reply = peer.reply()
        assert reply.r is True, f"{peer.impl}: {reply}"
    first.ok("lock")
    total = int.from_bytes(first.read(0, 4), "little")
    first.ok("unlock")
    assert total == INCREMENTS * len(everyone)
    for peer in everyone:
        assert peer.leave() == 0


@pytest.mark.parametrize(("kind", "creator"), SHARED_LOCK, ids=SHARED_LOCK_IDS)
def test_lock_with_timeout_times_out_while_qt_holds_the_lock(
    peers: Peers, kind: str, creator: str
) -> None:
    pair = make_pair(peers, kind, creator)
    shm, qt = pair.shm, pair.qt
    qt.ok("lock")
    assert not shm.lock(timeout=0.2)
    assert shm.error() == QSharedMemory.SharedMemoryError.LockError
    assert "timed out" in shm.errorString()
    with pytest.raises(qsharedmem.LockTimeoutError), shm.locked(timeout=0.1):
        pass
    qt.ok("unlock")
    assert shm.lock(timeout=30), shm.errorString()
    assert shm.unlock()


@pytest.mark.parametrize(("kind", "creator"), SHARED_LOCK, ids=SHARED_LOCK_IDS)
def test_qt_lock_waits_until_qsharedmem_unlocks(peers: Peers, kind: str, creator: str) -> None:
    pair = make_pair(peers, kind, creator)
    shm, qt = pair.shm, pair.qt
    marker = b"set just before unlock"
    assert shm.lock(timeout=30)
    qt.send("lock")
    qt.send("read", 0, len(marker))
    qt.agent.wait_started("lock")
    assert qt.child.silent_for(0.3)  # Qt's lock() waits
    shm.data()[: len(marker)] = marker
    assert shm.unlock()
    assert qt.reply().r is True  # lock()
    assert bytes.fromhex(qt.reply().r) == marker  # read, under Qt's lock
    # And while Qt holds it, we wait for Qt.
    assert not shm.lock(timeout=0.1)
    qt.ok("unlock")
    assert shm.lock(timeout=30)
    assert shm.unlock()


# --------------------------------------------------------------------------------------------
# 4. Lifecycle interplay


@pytest.mark.parametrize("first_to_leave", SIDES)
@pytest.mark.parametrize("creator", SIDES)
@pytest.mark.parametrize("kind", SYSV_KINDS)
def test_sysv_segment_lives_until_the_last_side_detaches(
    peers: Peers, kind: str, creator: str, first_to_leave: str
) -> None:
    pair = make_pair(peers, kind, creator)
    shm, qt = pair.shm, pair.qt
    [segment] = sysv_segment_ids(pair.keying)
    segment_file = pair.keying.key_files()[0]

    if first_to_leave == "qt":
        assert qt.call("detach") is True
        assert qt.leave() == 0
        # Qt did not remove what we still use.
        assert sysv_segment_alive(segment)
        with with_lock(shm):
            assert bytes(shm.constData()[: len(PATTERN)]) == PATTERN
            shm.data()[:1] = b"!"
        assert shm.detach()
        del shm
        pair.shm = None
    else:
        assert shm.detach()
        del shm
        pair.shm = None
        gc.collect()
        assert sysv_segment_alive(segment)
        assert segment_file.exists()
        qt.ok("lock")
        assert qt.read(0, len(PATTERN)) == PATTERN
        qt.write(0, b"!")
        qt.ok("unlock")
        assert qt.call("detach") is True
        assert qt.leave() == 0
    # The last one out removed the segment and its key file.
    assert not sysv_segment_alive(segment)
    assert not segment_file.exists()


# Regression: a qsharedmem creator leaving before a Qt last detacher used to leave the lock
# semaphore behind (Qt removes only semaphores it created). The creator now removes the set it
# created when it goes, as Qt's objects do; users re-create it on demand.
@pytest.mark.parametrize("kind", SYSV_KINDS)
def test_sysv_nothing_is_left_when_qsharedmem_creator_leaves_before_qt(
    peers: Peers, kind: str
) -> None:
    pair = make_pair(peers, kind, "qsharedmem")
    assert pair.shm.detach()
    pair.shm = None
    gc.collect()
    assert pair.qt.call("detach") is True
    assert pair.qt.leave() == 0
    assert peers.keys.leftovers(pair.keying.name) == []
    assert peers.sysv_leftovers() == []


@pytest.mark.parametrize("passing", PASSINGS)
def test_qt_leaked_posix_segment_is_attachable_and_never_unlinked_by_us(
    peers: Peers, passing: str
) -> None:
    keying = peers.keying("posix", "leaked")
    qt = peers.start(keying.spec())
    qt.ok("create", SIZE)
    qt.write(0, PATTERN)
    qt.ok("detach")
    key_string = qt.key_string
    assert qt.leave() == 0
    # Qt never unlinks POSIX segments on Linux: the segment outlives every Qt user.
    assert keying.posix_path().exists()

    shm = keying.qsm(key_string if passing == "toString" else None)
    assert shm.attach(), shm.errorString()
    assert shm.size() == SIZE
    with with_lock(shm):
        assert bytes(shm.constData()[: len(PATTERN)]) == PATTERN
        shm.data()[:1] = b"!"
    assert shm.detach()
    # A foreign segment is never "orphan" for us: create() reports Qt's AlreadyExists.
    assert not shm.create(SIZE)
    assert shm.error() == QSharedMemory.SharedMemoryError.AlreadyExists
    assert shm.errorString() == "QSharedMemory::attach (shm_open): already exists"
    del shm
    gc.collect()
    # Still there, with our write: we did not unlink it. Our semaphore (Qt's name, created by
    # our attach) went with our handle, as Qt's own would.
    assert peers.keys.leftovers(keying.name) == [str(keying.posix_path())]
    assert keying.posix_path().read_bytes()[:1] == b"!"


def test_reattaching_to_a_leaked_qt_posix_segment_keeps_the_lock_shared_with_qt(
    peers: Peers,
) -> None:
    """Regression: a second attach() used to unlink the Qt semaphore the handle had created."""
    keying = peers.keying("posix", "reattach")
    creator = peers.start(keying.spec())
    creator.ok("create", 64)
    assert creator.leave() == 0  # Qt's semaphore goes with its creator, the segment stays
    shm = keying.qsm()
    assert shm.attach()
    assert shm.detach()
    assert shm.attach()
    qt = peers.start(keying.spec())
    qt.ok("attach")
    assert shm.lock(timeout=30)
    qt.send("lock")
    qt.send("read", 0, 1)
    qt.agent.wait_started("lock")
    assert qt.child.silent_for(0.3)  # Qt's lock() waits for ours: one semaphore
    shm.data()[:1] = b"Q"
    assert shm.unlock()
    assert qt.reply().r is True
    assert bytes.fromhex(qt.reply().r) == b"Q"
    qt.ok("unlock")


def test_our_posix_segment_is_removed_by_our_last_detach_even_with_qt_attached(
    peers: Peers,
) -> None:
    """Qt's attachments do not count for our refcount (Qt takes no flock); Qt keeps its mapping."""
    pair = make_pair(peers, "posix", "qsharedmem")
    path = pair.keying.posix_path()
    assert pair.shm.detach()
    assert not path.exists()
    # Qt's mapping is still the segment: it reads our bytes and can keep writing.
    assert pair.qt.read(0, len(PATTERN)) == PATTERN
    pair.qt.write(0, b"!")
    # Nobody new finds it any more.
    late = peers.start(pair.keying.spec())
    assert late.call("attach") is False
    assert late.error() == ("NotFound", "QSharedMemory::attach (shm_open): doesn't exist")
    assert late.leave() == 0
    assert pair.qt.call("detach") is True
    assert pair.qt.leave() == 0
    assert peers.keys.leftovers(pair.keying.name) == []


def test_our_posix_segment_with_qt_attached_leaves_nothing_when_qt_goes_first(
    peers: Peers,
) -> None:
    pair = make_pair(peers, "posix", "qsharedmem")
    assert pair.qt.call("detach") is True
    assert pair.qt.leave() == 0
    assert pair.keying.posix_path().exists()
    assert pair.shm.detach()
    assert peers.keys.leftovers(pair.keying.name) == []


# --------------------------------------------------------------------------------------------
# 5. A lock holder SIGKILLed (System V: the kernel undoes its semaphore operation)


@pytest.mark.parametrize("creator", SIDES)
@pytest.mark.parametrize("kind", SYSV_KINDS)
def test_qt_killed_holding_the_lock_does_not_block_qsharedmem(
    peers: Peers, kind: str, creator: str
) -> None:
    pair = make_pair(peers, kind, creator)
    pair.qt.ok("lock")
    pair.qt.child.kill()
    assert pair.shm.lock(timeout=30), pair.shm.errorString()
    # Only the death of a qsharedmem holder can be detected (Qt takes no "consistent" token).
    assert not pair.shm.lockOwnerDied()
    assert bytes(pair.shm.constData()[: len(PATTERN)]) == PATTERN
    assert pair.shm.unlock()
    assert pair.shm.detach()  # the last one: the dead Qt process's attachment is gone too


@pytest.mark.parametrize("creator", SIDES)
@pytest.mark.parametrize("kind", SYSV_KINDS)
def test_qsharedmem_killed_holding_the_lock_does_not_block_qt(
    peers: Peers, kind: str, creator: str
) -> None:
    pair = make_pair(peers, kind, creator)
    victim = peers.start(pair.keying.spec(), "qsharedmem")
    victim.ok("attach")
    victim.ok("lock")
    victim.child.kill()
    pair.qt.ok("lock")  # does not wait forever: the kernel gave the dead holder's token back
    pair.qt.write(0, b"Q")
    pair.qt.ok("unlock")
    assert pair.shm.lock(timeout=30)
    # Sets that qsharedmem created carry the "consistent" token the victim took without undo,
    # so we learn that a holder died (also after Qt locked in between); Qt's sets cannot tell.
    assert pair.shm.lockOwnerDied() == (creator == "qsharedmem")
    assert bytes(pair.shm.constData()[:1]) == b"Q"
    assert pair.shm.unlock()


@pytest.mark.parametrize("creator", SIDES)
@pytest.mark.parametrize("kind", SYSV_KINDS)
def test_qsharedmem_killed_holding_the_lock_while_qt_waits_lets_qt_in_at_once(
    peers: Peers, kind: str, creator: str
) -> None:
    """System V: the kernel undoes the dead holder's semop, and the waiting Qt process gets in
    without any other process doing anything."""
    pair = make_pair(peers, kind, creator)
    victim = peers.start(pair.keying.spec(), "qsharedmem")
    victim.ok("attach")
    victim.ok("lock")
    pair.qt.send("lock")
    pair.qt.agent.wait_started("lock")
    assert pair.qt.child.silent_for(0.3)  # Qt waits for the victim
    victim.child.kill()
    assert pair.qt.reply().r is True
    pair.qt.ok("unlock")


@pytest.mark.parametrize("creator", SIDES)
def test_qsharedmem_killed_holding_a_posix_lock_while_qt_waits_lets_qt_in_after_our_next_lock(
    peers: Peers, creator: str
) -> None:
    """POSIX: Qt's named semaphore has no undo, so the dead qsharedmem holder's token stays
    taken and Qt waits on; the next qsharedmem lock() sees the owner death in the robust mutex,
    gives the token back and takes it again. Qt gets in then (before or after us: we do not
    care which, only that both do)."""
    pair = make_pair(peers, "posix", creator)
    shm, qt = pair.shm, pair.qt
    victim = peers.start(pair.keying.spec(), "qsharedmem")
    victim.ok("attach")
    victim.ok("lock")
    qt.send("lock")
    qt.send("write", 0, b"Q".hex())
    qt.send("unlock")
    qt.agent.wait_started("lock")
    victim.child.kill()
    assert qt.child.silent_for(0.5)  # nothing gives the dead holder's token back to Qt yet
    assert shm.lock(timeout=30), shm.errorString()
    assert shm.lockOwnerDied()
    assert shm.unlock()
    assert [qt.reply().r for _ in range(3)] == [True, True, True]  # lock, write, unlock
    assert shm.lock(timeout=30), shm.errorString()
    assert not shm.lockOwnerDied()
    assert bytes(shm.constData()[:1]) == b"Q"
    assert shm.unlock()
    qt.ok("lock")  # and the token is back where it belongs: Qt can take it again
    qt.ok("unlock")


@pytest.mark.parametrize("passing", PASSINGS)
def test_qt_filling_all_of_size_of_our_posix_segment_leaves_our_lock_and_size_intact(
    peers: Peers, passing: str
) -> None:
    """Qt sees exactly the size we created (no control page after the data), so a Qt program
    that writes every byte of size() writes only the user's bytes: our lock still works, and a
    new attach, Qt's or ours, sees the same size."""
    pair = make_pair(peers, "posix", "qsharedmem", passing)
    shm, qt = pair.shm, pair.qt
    assert qt.call("size") == SIZE
    assert pair.keying.posix_path().stat().st_size == SIZE
    qt.ok("lock")
    assert qt.call("fill", 0xA5) == SIZE
    qt.ok("unlock")
    assert shm.lock(timeout=30), shm.errorString()
    assert not shm.lockOwnerDied()
    assert shm.size() == SIZE
    assert bytes(shm.constData()) == b"\xa5" * SIZE
    assert shm.unlock()
    newcomer = pair.keying.qsm(qt.key_string if passing == "toString" else None)
    assert newcomer.attach(), newcomer.errorString()
    assert newcomer.size() == SIZE
    with with_lock(newcomer):
        newcomer.data()[:1] = b"!"
    assert newcomer.detach()
    late_qt = peers.start(pair.keying.spec())
    late_qt.ok("attach")
    assert late_qt.call("size") == SIZE
    assert late_qt.read(0, 2) == b"!\xa5"
    assert late_qt.leave() == 0


def test_qt_killed_holding_a_posix_lock_keeps_it_and_lock_timeout_bounds_the_wait(
    peers: Peers,
) -> None:
    """Qt's POSIX semaphore has no undo: the lock stays taken (Qt's limitation, documented)."""
    pair = make_pair(peers, "posix", "qt")
    pair.qt.ok("lock")
    pair.qt.child.kill()
    assert not pair.shm.lock(timeout=0.3)
    assert "timed out" in pair.shm.errorString()


# --------------------------------------------------------------------------------------------
# 6. What a Qt user sees for segments that qsharedmem owns: Qt's own errors


def qt_observe(peers: Peers, spec: str, *commands: tuple[Any, ...]) -> list[Any]:
    """Run commands on a fresh Qt peer; each command's (result, error, errorString)."""
    peer = peers.start(spec)
    seen = []
    for command in commands:
        result = peer.call(*command)
        seen.append((result, *peer.error()))
    assert peer.leave() == 0
    return seen


@pytest.mark.parametrize("kind", KINDS)
def test_qt_sees_its_own_errors_for_segments_qsharedmem_owns(peers: Peers, kind: str) -> None:
    # The oracle is Qt on a segment that a Qt process owns ("theirs"). Both segments exist
    # before Qt's failed create() runs: for new System V keys, a Qt object whose create() failed
    # deletes the shared key file when it is destroyed (Qt's bug), and a key file made after
    # that can get the freed inode, hence the other segment's IPC key.
    theirs = peers.keying(kind, "theirs")
    owner = peers.start(theirs.spec())
    owner.ok("create", SIZE)
    peers.remember_sysv(theirs)
    ours = peers.keying(kind, "ours")
    shm = ours.qsm()
    assert shm.create(SIZE), shm.errorString()
    peers.remember_sysv(ours)

    calls = (("create", SIZE), ("attach", "ReadOnly"), ("detach",))
    expected = qt_observe(peers, theirs.spec(), *calls)
    assert expected[0][:2] == (False, "AlreadyExists")
    assert expected[1:] == [(True, "NoError", ""), (True, "NoError", "")]
    assert qt_observe(peers, ours.spec(), *calls) == expected
    # Our handle still works after Qt's failed create() and its destructor's cleanup.
    with with_lock(shm):
        shm.data()[:1] = b"!"

    # Gone is gone: for Qt, our destroyed segment is like one that never existed.
    owner.call("detach")  # may be False: Qt's destroyed failed creator took the key file along
    assert owner.leave() == 0
    assert shm.detach()
    del shm
    gc.collect()
    never = peers.keying(kind, "never")
    expected_missing = qt_observe(peers, never.spec(), ("attach",))
    assert expected_missing[0][:2] == (False, "NotFound")
    assert qt_observe(peers, ours.spec(), ("attach",)) == expected_missing
