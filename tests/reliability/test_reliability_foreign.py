"""Hostile surroundings: objects removed from outside, foreign or corrupt objects under our
names, and a segment that a peer truncates while we have it mapped.

* Removed from outside while attached (``rm /dev/shm/<name>``, ``ipcrm``, as systemd-logind's
  ``RemoveIPC=yes`` does at logout): existing attachments keep working and keep sharing the same
  memory; a new attach gets ``NotFound``; ``create()`` builds the key again, and the old
  attachments' last detach does not touch the new segment; nothing leaks once everyone detached.
* Foreign and corrupt objects: a 0-byte file, a file shorter than a page, a page without our
  magic, our magic with a wrong version, a header whose size does not fit the file. ``attach()``
  gives a clear error or treats the object as foreign (as Qt does), ``create()`` refuses to touch
  it, nothing is read out of bounds, and the process survives (the attaches run in child
  processes, whose exit status shows any crash). Where Qt defines the outcome, PySide6 is asked
  live and must agree.
* A peer truncates the file under a live attachment: the attached process reads and writes
  every byte of its ``memoryview`` without dying (src/sys/sigbus.rs), and its next ``lock()`` and
  ``detach()`` say that the segment was truncated by another process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import qsharedmem
from support.agent import start_agent
from support.impls import load_impl
from support.ipc import sysv_objects_for_file
from support.keys import KeyRegistry, new_key
from support.processes import ChildProcesses

S = qsharedmem.QSharedMemory
K = qsharedmem.QNativeIpcKey
PAGE = os.sysconf("SC_PAGE_SIZE")
DEV_SHM = Path("/dev/shm")


def shm_path(key) -> Path:
    return DEV_SHM / key.nativeKey().lstrip("/")


def sysv_key_file(key) -> Path:
    return Path(key.nativeKey())


def sysv_ids(key) -> dict[str, list[int]]:
    objects = sysv_objects_for_file(sysv_key_file(key))
    return {kind: sorted(o.ident for o in objects if o.kind == kind) for kind in ("shm", "sem")}


# ------------------------------------------------------------------------------------------------
# Removed from outside while attached


def remove_from_outside(backend: str, key, with_semaphores: bool) -> None:
    """What an administrator or systemd's RemoveIPC does, with the real tools."""
    if backend == "posix":
        subprocess.run(["rm", "-f", str(shm_path(key))], check=True)
        return
    ids = sysv_ids(key)
    assert len(ids["shm"]) == 1, ids
    subprocess.run(["ipcrm", "-m", str(ids["shm"][0])], check=True)
    if with_semaphores:
        for sem in ids["sem"]:
            subprocess.run(["ipcrm", "-s", str(sem)], check=True)


@pytest.mark.parametrize("recreate", [False, True], ids=["no-recreate", "recreate"])
@pytest.mark.parametrize(
    ("backend", "with_semaphores"),
    [("posix", False), ("sysv", False), ("sysv", True)],
    ids=["posix-rm", "sysv-ipcrm-m", "sysv-ipcrm-m-s"],
)
def test_removed_from_outside_while_attached(
    backend: str,
    with_semaphores: bool,
    recreate: bool,
    make_key: KeyRegistry,
    procs: ChildProcesses,
) -> None:
    name = "removed"
    key = new_key(qsharedmem, make_key, name, backend)
    owner = S(key)
    assert owner.create(4096), owner.errorString()
    owner.data()[:4] = b"old!"
    peer = start_agent(procs)
    assert peer.call("key", "h", key.toString()).r is True
    assert peer.call("attach", "h").r is True

    remove_from_outside(backend, key, with_semaphores)

    # The existing attachments keep working and share the same memory and lock.
    assert peer.call("read", "h", 0, 4).r == b"old!".hex()
    assert peer.call("lock", "h", 10).r is True
    assert peer.call("write", "h", 4, "2a").r is True
    assert peer.call("unlock", "h").r is True
    assert owner.lock(10), owner.errorString()
    assert bytes(owner.constData()[:5]) == b"old!*"
    assert owner.unlock()

    # A new attach finds nothing.
    late = S(key)
    assert not late.attach()
    assert late.error() == S.SharedMemoryError.NotFound, late.errorString()
    expected = {
        "posix": "QSharedMemory::attach (shm_open): doesn't exist",
        "sysv": "QSharedMemory::attach (shmget): doesn't exist",
    }[backend]
    assert late.errorString() == expected

    fresh = None
    if recreate:
        # create() builds the key again: a new, separate segment.
        fresh = S(key)
        assert fresh.create(4096), fresh.errorString()
        assert bytes(fresh.constData()[:5]) == bytes(5)
        fresh.data()[:4] = b"new!"
        assert fresh.lock(10) and fresh.unlock()

    # The old attachments leave; the last of them must not remove the new segment.
    assert peer.call("detach", "h").r is True
    assert owner.detach()
    if fresh is not None:
        reader = S(key)
        assert reader.attach(), reader.errorString()
        assert bytes(reader.constData()[:4]) == b"new!"
        assert reader.detach()
        assert fresh.lock(10) and fresh.unlock()
        assert fresh.detach()
    assert peer.exit() == 0
    del owner, late, fresh
    assert make_key.leftovers(make_key(name)) == []


@pytest.mark.parametrize(
    ("backend", "with_semaphores"),
    [("posix", False), ("sysv", False), ("sysv", True)],
    ids=["posix-rm", "sysv-ipcrm-m", "sysv-ipcrm-m-s"],
)
def test_removed_from_outside_after_its_creator_crashed(
    backend: str, with_semaphores: bool, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    """Nobody left who created the lock: the last detacher still removes everything."""
    name = "removed-crashed"
    key = new_key(qsharedmem, make_key, name, backend)
    creator = start_agent(procs)
    assert creator.call("key", "h", key.toString()).r is True
    assert creator.call("create", "h", 4096).r is True
    assert creator.call("write", "h", 0, "c0ffee").r is True
    user = S(key)
    assert user.attach(), user.errorString()
    creator.kill()
    remove_from_outside(backend, key, with_semaphores)
    assert bytes(user.constData()[:3]) == bytes.fromhex("c0ffee")
    assert user.lock(10), user.errorString()
    assert user.unlock()
    assert user.detach()
    del user
    assert make_key.leftovers(make_key(name)) == []


# ------------------------------------------------------------------------------------------------
# Foreign and corrupt objects under our names

CHECK_CHILD = r"""
import json, os, sys
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
impl, key = sys.argv[1:3]
if impl == "pyside6":
    from PySide6.QtCore import QNativeIpcKey, QSharedMemory
else:
    from qsharedmem import QNativeIpcKey, QSharedMemory
sm = QSharedMemory(QNativeIpcKey.fromString(key))
ok = sm.attach()
seen = [ok, sm.error().name, sm.errorString(), sm.size()]
if ok:
    seen.append(sum(bytes(memoryview(sm.constData()))))  # every byte, no further
    sm.detach()
other = QSharedMemory(QNativeIpcKey.fromString(key))
seen += [other.create(64), other.error().name, other.errorString()]
print(json.dumps(seen), flush=True)
"""


def template_segment(size: int) -> tuple[bytes, bytes]:
    """The bytes of a real qsharedmem segment of ``size`` bytes: its data file and its control
    block (``<name>.qsm``), which describes that (now removed) data file."""
    key = K(f"/tstshm_{os.getpid()}_template", K.Type.PosixRealtime)
    template = S(key)
    assert template.create(size), template.errorString()
    try:
        path = shm_path(key)
        return path.read_bytes(), path.with_name(path.name + ".qsm").read_bytes()
    finally:
        assert template.detach()


def control_block(**fields: int) -> bytes:
    """A control block (of a segment that is gone) with fields overwritten."""
    image = bytearray(template_segment(100)[1])
    offsets = {"version": (8, "=I")}
    for field, value in fields.items():
        at, fmt = offsets[field]
        struct.pack_into(fmt, image, at, value)
    return bytes(image)


def old_layout_segment() -> bytes:
    """A segment of qsharedmem 0.1: the data, then a control page with the old magic."""
    return b"\x09" * PAGE + b"QSHMEM\x00\x01" + bytes(PAGE - 8)


ALREADY_EXISTS = "QSharedMemory::attach (shm_open): already exists"


def sidecar_taken(name: str) -> str:
    return (
        f"QSharedMemory::create: /dev/shm/{name}.qsm exists and is not a qsharedmem control block"
    )


@dataclasses.dataclass(frozen=True)
class Corrupt:
    data: bytes | Callable[[], bytes]
    # "foreign" (attached as someone else's segment) or the attach error text
    attach: str
    sidecar: bytes | Callable[[], bytes] | None = None
    # create()'s text, a function of the name (AlreadyExists in every case)
    create: Callable[[str], str] = lambda _: ALREADY_EXISTS
    # Whether the sidecar (someone else's, or ours of another version) must stay as it was;
    # a control block of ours that describes no file is removed as the leftover it is.
    sidecar_kept: bool = True
    # An orphan of ours (of qsharedmem 0.1, which nobody holds): create() reclaims it.
    reclaimed: bool = False

    @property
    def qt_defined(self) -> bool:
        """Qt looks at the data file only: where that alone decides, Qt must agree."""
        return self.sidecar is None and self.attach != OLD_LAYOUT_TEXT_START


OLD_LAYOUT_TEXT_START = "QSharedMemory::attach: /dev/shm/"

CORRUPT = {
    "0-byte file": Corrupt(b"", "QSharedMemory::attach (mmap): unknown error: Invalid argument"),
    "shorter than a page": Corrupt(b"x" * 100, "foreign"),
    "a page without our magic": Corrupt(b"\x07" * PAGE, "foreign"),
    "two pages, zeros": Corrupt(bytes(2 * PAGE), "foreign"),
    "an odd size": Corrupt(b"\x05" * (3 * PAGE + 123), "foreign"),
    "a segment of qsharedmem 0.1": Corrupt(
        old_layout_segment, OLD_LAYOUT_TEXT_START, reclaimed=True
    ),
    "a sidecar that is not a control block": Corrupt(
        b"\x03" * 100, "foreign", sidecar=b"\x07" * PAGE, create=sidecar_taken
    ),
    "a sidecar shorter than a control block": Corrupt(
        b"\x03" * 100, "foreign", sidecar=b"QSMSIDE\x02" + bytes(92), create=sidecar_taken
    ),
    "a control block of another layout version": Corrupt(
        b"\x03" * 100,
        "QSharedMemory::attach: unsupported qsharedmem control block layout version 7",
        sidecar=lambda: control_block(version=7),
        create=sidecar_taken,
    ),
    "a control block that describes another file": Corrupt(
        b"\x03" * 100,
        "foreign",
        sidecar=lambda: template_segment(100)[1],
        sidecar_kept=False,
    ),
}


@pytest.mark.parametrize("label", list(CORRUPT))
def test_foreign_or_corrupt_object_under_our_name(
    label: str, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    case = CORRUPT[label]
    data = case.data() if callable(case.data) else case.data
    sidecar = case.sidecar() if callable(case.sidecar) else case.sidecar
    key = new_key(qsharedmem, make_key, "corrupt", "posix")
    path = shm_path(key)
    side_path = path.with_name(path.name + ".qsm")
    path.write_bytes(data)
    os.chmod(path, 0o600)
    if sidecar is not None:
        side_path.write_bytes(sidecar)
        os.chmod(side_path, 0o600)

    result = procs.run_python(CHECK_CHILD, "qsharedmem", key.toString())
    assert result.returncode == 0, result  # no SIGBUS, no segfault
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    ok, error, text, size = seen[:4]
    if case.attach == "foreign":
        assert [ok, error, text, size] == [True, "NoError", "", len(data)]
        assert seen[4] == sum(data), "data() must be exactly the file"
    elif case.attach == OLD_LAYOUT_TEXT_START:
        assert [ok, error, size] == [False, "UnknownError", 0]
        assert text.startswith(OLD_LAYOUT_TEXT_START + path.name), text
        assert f"qsharedmem rm posix:/{path.name}" in text, "the error says how to remove it"
    else:
        assert [ok, error, text, size] == [False, "UnknownError", case.attach, 0]
    if case.reclaimed:
        # Nobody holds it (0.1's attachments held an flock on the data file): an orphan, which
        # create() replaces; the new segment went with the child.
        assert seen[-3:] == [True, "NoError", ""]
        assert make_key.leftovers(make_key("corrupt")) == []
        return
    # create() never removes or alters someone else's (or a damaged) object.
    assert seen[-3:] == [False, "AlreadyExists", case.create(path.name)]
    assert path.read_bytes() == data
    expected = [str(path)]
    if sidecar is not None and case.sidecar_kept:
        assert side_path.read_bytes() == sidecar
        expected.append(str(side_path))
    assert sorted(make_key.leftovers(make_key("corrupt"))) == sorted(expected), "nothing else"
    if sidecar is not None:
        side_path.unlink(missing_ok=True)

    if case.qt_defined:
        qt = procs.run_python(CHECK_CHILD, "pyside6", key.toString())
        assert qt.returncode == 0, qt
        assert json.loads(qt.stdout.strip().splitlines()[-1]) == seen


# ------------------------------------------------------------------------------------------------
# A peer truncates the file under a live attachment


@pytest.mark.parametrize("new_size", [0, 1, PAGE], ids=["to-0", "to-1", "to-a-page"])
@pytest.mark.parametrize("mode", [1, 0], ids=["ReadWrite", "ReadOnly"])
def test_peer_truncates_the_file_under_an_attachment(
    new_size: int, mode: int, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    size = 5 * PAGE + 10
    key = new_key(qsharedmem, make_key, "truncated", "posix")
    owner = S(key)
    assert owner.create(size), owner.errorString()
    owner.data()[:] = b"\x01" * size
    victim = start_agent(procs)
    assert victim.call("key", "h", key.toString()).r is True
    assert victim.call("attach", "h", mode).r is True
    assert victim.call("sum", "h").r == size

    # The peer (this process) shrinks the file under the victim's mapping.
    fd = os.open(shm_path(key), os.O_RDWR)
    try:
        os.ftruncate(fd, new_size)
    finally:
        os.close(fd)

    # Every byte past the new end reads as zero instead of killing the victim with SIGBUS.
    # (the bytes between the new end and the end of its page were zeroed by the truncation)
    assert victim.call("sum", "h").r == new_size
    if mode == 1:
        assert victim.call("fill", "h", 2).r == size
        assert victim.call("sum", "h").r == 2 * size
    truncated = "the segment was truncated by another process"
    reply = victim.call("lock", "h", 5)
    assert reply.r is False
    assert reply.e[0] == "LockError" and truncated in reply.e[1], reply
    reply = victim.call("detach", "h")
    assert reply.r is False, "detach() reports the damage"
    assert reply.e[0] == "UnknownError" and truncated in reply.e[1], reply
    assert victim.call("attached", "h").r is False, "... and detaches anyway"
    assert victim.exit() == 0

    # The owner's own mapping was truncated too; it survives and is told as well.
    assert sum(bytes(owner.constData())) <= size
    assert not owner.lock(5)
    assert truncated in owner.errorString()
    assert not owner.detach()
    assert not owner.isAttached()
    del owner
    assert make_key.leftovers(make_key("truncated")) == []


@pytest.mark.parametrize("mode", [1, 0], ids=["ReadWrite", "ReadOnly"])
def test_peer_truncates_the_file_while_the_victim_holds_the_lock(
    mode: int, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    """The victim holds the lock when a peer truncates the data file to nothing. The robust
    mutex is not in the data file (it is in the control block, which Qt and other peers never
    touch), so unlocking and locking again work; the data reads as zeros (no SIGBUS), and
    detach() reports the damage. The same thread's robust list stays sound: it locks another
    segment's mutex afterwards (with the mutex in the data file, that used to die of SIGSEGV)."""
    key = new_key(qsharedmem, make_key, "heldtrunc", "posix")
    other = new_key(qsharedmem, make_key, "heldother", "posix")
    owner = S(key)
    assert owner.create(64), owner.errorString()
    victim = start_agent(procs)
    assert victim.call("key", "h", key.toString()).r is True
    assert victim.call("attach", "h", mode).r is True
    assert victim.call("key", "o", other.toString()).r is True
    assert victim.call("create", "o", 64).r is True
    assert victim.call("lock", "h", 5).r is True

    fd = os.open(shm_path(key), os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)

    assert victim.call("unlock", "h").r is True, "the lock is out of the data file's reach"
    assert victim.call("sum", "h").r == 0, "the lost page reads as zeros"
    reply = victim.call("detach", "h")
    assert reply.r is False, "detach() reports the damage"
    assert "the segment was truncated by another process" in reply.e[1], reply
    for _ in range(3):  # the same thread locks another segment's robust mutex
        assert victim.call("lock", "o", 5).r is True
        assert victim.call("unlock", "o").r is True
    assert victim.call("detach", "o").r is True
    assert victim.exit() == 0

    owner.detach()
    del owner
    assert make_key.leftovers(make_key("heldtrunc"), make_key("heldother")) == []


@pytest.mark.parametrize("mode", [1, 0], ids=["ReadWrite", "ReadOnly"])
def test_peer_overwrites_every_byte_of_the_file_while_the_victim_holds_the_lock(
    mode: int, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    """A peer (Qt fills data() to its size(); a buggy writer fills the whole file) overwrites
    every byte of the data file, and more, while the victim holds the lock: nothing of the
    lock is there, so the victim unlocks and the next holder locks as always."""
    key = new_key(qsharedmem, make_key, "scribbled", "posix")
    owner = S(key)
    assert owner.create(5000), owner.errorString()
    victim = start_agent(procs)
    assert victim.call("key", "h", key.toString()).r is True
    assert victim.call("attach", "h", mode).r is True
    assert victim.call("lock", "h", 5).r is True

    path = shm_path(key)
    assert path.stat().st_size == 5000, "the data file is exactly the data"
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"\xa5" * (3 * PAGE), 0)  # past the end too: the file grows
    finally:
        os.close(fd)

    assert victim.call("unlock", "h").r is True
    assert owner.lock(timeout=5), owner.errorString()
    assert not owner.lockOwnerDied()
    assert bytes(owner.constData()[:8]) == b"\xa5" * 8
    assert owner.unlock()
    assert victim.call("detach", "h").r is True
    assert victim.finish().returncode == 0
    assert owner.detach()
    del owner
    assert make_key.leftovers(make_key("scribbled")) == []


def test_peer_truncates_a_foreign_segment(procs: ChildProcesses) -> None:
    """A multiprocessing.shared_memory segment (not ours) shrinking under a qsharedmem reader."""
    from multiprocessing import shared_memory

    segment = shared_memory.SharedMemory(create=True, size=4 * PAGE)
    try:
        segment.buf[:] = b"\x03" * (4 * PAGE)
        key = K("/" + segment.name.lstrip("/"), K.Type.PosixRealtime)
        victim = start_agent(procs)
        assert victim.call("key", "h", key.toString()).r is True
        assert victim.call("attach", "h").r is True
        assert victim.call("size", "h").r == 4 * PAGE
        os.ftruncate(segment._fd, PAGE)
        assert victim.call("sum", "h").r == 3 * PAGE
        assert victim.call("fill", "h", 1).r == 4 * PAGE
        reply = victim.call("detach", "h")
        assert reply.r is False and "truncated by another process" in reply.e[1]
        assert victim.exit() == 0
    finally:
        segment.close()
        segment.unlink()
        with_sem = DEV_SHM / ("sem." + segment.name.lstrip("/"))
        assert not with_sem.exists(), "qsharedmem removes Qt's semaphore it created"


def test_sigbus_outside_our_mappings_still_kills(procs: ChildProcesses) -> None:
    """The handler only answers for qsharedmem's mappings: any other SIGBUS keeps its default
    action (and Python's faulthandler still reports it)."""
    code = r"""
import faulthandler, mmap, os, sys
import qsharedmem
if sys.argv[1] == "faulthandler":
    faulthandler.enable()
k = qsharedmem.QSharedMemory.platformSafeKey(f"tstshm_{os.getpid()}_sigbus")
sm = qsharedmem.QSharedMemory(k)
assert sm.create(4096)   # installs the handler
sm.detach()
path = f"/dev/shm/tstshm_{os.getpid()}_plain"
with open(path, "w+b") as f:
    f.truncate(2 * 4096)
    m = mmap.mmap(f.fileno(), 2 * 4096)
    f.truncate(0)
os.unlink(path)
print("touching", flush=True)
m[5000]
print("survived", flush=True)
"""
    for mode in ("plain", "faulthandler"):
        result = procs.run_python(code, mode)
        assert result.returncode == -7, result  # SIGBUS
        assert "survived" not in result.stdout
        assert ("Fatal Python error: Bus error" in result.stderr) == (mode == "faulthandler")


SENT_SIGBUS_CHILD = r"""
import os, signal, sys
from qsharedmem import QNativeIpcKey, QSharedMemory
hits = []
signal.signal(signal.SIGBUS, lambda signum, frame: hits.append(signum))  # before qsharedmem's
sm = QSharedMemory(QNativeIpcKey.fromString(sys.argv[1]))
assert sm.create(64), sm.errorString()  # installs qsharedmem's handler on top
for n in (1, 2, 3):
    os.kill(os.getpid(), signal.SIGBUS)
    print("kill", n, "reached the handler", len(hits), "times", flush=True)
assert sm.detach()
"""


def test_every_sent_sigbus_reaches_the_handler_installed_before(
    make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    """A SIGBUS sent with kill() is not ours: it goes to the handler installed before
    qsharedmem's, every time, as it would without qsharedmem (the second one used to get the
    default action and kill the process)."""
    key = new_key(qsharedmem, make_key, "sentbus", "posix")
    result = procs.run_python(SENT_SIGBUS_CHILD, key.toString())
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == [
        f"kill {n} reached the handler {n} times" for n in (1, 2, 3)
    ], result
    assert make_key.leftovers(make_key("sentbus")) == []


FAULTHANDLER_ON_TOP_CHILD = r"""
import faulthandler, mmap, os, signal, sys
from qsharedmem import QNativeIpcKey, QSharedMemory
how, first, second, plain = sys.argv[1:5]
a = QSharedMemory(QNativeIpcKey.fromString(first))
assert a.create(64)  # installs qsharedmem's handler
faulthandler.enable()  # on top of it, with qsharedmem's as its predecessor
b = QSharedMemory(QNativeIpcKey.fromString(second))
assert b.create(64)  # qsharedmem's back on top, with faulthandler's as its predecessor
assert a.detach() and b.detach()
print("go", flush=True)
if how == "kill":
    os.kill(os.getpid(), signal.SIGBUS)
else:
    with open(plain, "w+b") as f:  # a mapping that is not qsharedmem's
        f.truncate(2 * 4096)
        m = mmap.mmap(f.fileno(), 2 * 4096)
        f.truncate(0)
    os.unlink(plain)
    m[5000]
print("survived", flush=True)
"""


@pytest.mark.parametrize("how", ["kill", "fault"])
def test_a_handler_that_gives_sigbus_back_to_ours_does_not_loop(
    how: str, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    """faulthandler enabled between two creates: qsharedmem's handler and faulthandler's each
    have the other as predecessor. faulthandler gives the signal back to ours (restores it and
    raises); it must then get the default action: one report, and death by SIGBUS, not an
    endless ping-pong of reports."""
    first = new_key(qsharedmem, make_key, "fhfirst", "posix")
    second = new_key(qsharedmem, make_key, "fhsecond", "posix")
    plain = DEV_SHM / make_key("fhplain")
    args = (how, first.toString(), second.toString(), str(plain))
    result = procs.run_python(FAULTHANDLER_ON_TOP_CHILD, *args, timeout=30)
    assert result.returncode == -7, result  # SIGBUS
    assert result.stdout.splitlines() == ["go"], result
    assert result.stderr.count("Fatal Python error: Bus error") == 1, result
    assert make_key.leftovers(*map(make_key, ("fhfirst", "fhsecond", "fhplain"))) == []


def test_a_pyside6_reader_dies_where_qsharedmem_survives(
    make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    """The same truncation of a Qt segment kills a PySide6 reader (SIGBUS)."""
    pyside = load_impl("pyside6")
    key = make_key.record(
        pyside.QSharedMemory.platformSafeKey(make_key("qtdies"), pyside.key_type("POSIX"))
    )
    path = DEV_SHM / key.nativeKey().lstrip("/")
    for impl in ("pyside6", "qsharedmem"):
        owner = pyside.QSharedMemory(key)
        assert owner.create(4 * PAGE), owner.errorString()
        memoryview(owner.data())[:] = b"\x01" * (4 * PAGE)
        victim = start_agent(procs, impl=impl)
        assert victim.call("key", "h", key.toString()).r is True
        assert victim.call("attach", "h").r is True
        fd = os.open(path, os.O_RDWR)
        os.ftruncate(fd, PAGE)
        os.close(fd)
        victim.send_op("sum", "h")
        if impl == "pyside6":
            assert victim.child.wait() == -7  # killed by SIGBUS
        else:
            assert victim.result().r == PAGE  # every byte read; the lost ones as zeros
            assert victim.exit() == 0
        owner.detach()
        del owner
        path.unlink()  # Qt leaks its POSIX segments
