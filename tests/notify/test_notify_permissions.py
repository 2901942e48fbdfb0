"""Sharing a segment with another account: ``create(size, mode, permissions=, group=)``,
``SharedMemory(..., permissions=, group=)`` and ``QSystemSemaphore(..., permissions=, group=)``
(issue 18).

Every object a create makes gets the permissions: the data, its control block, Qt's lock
semaphore (``/dev/shm/sem.<name>``, or the System V set) and the System V key files; a System V
segment's notify block gets the segment's. Then a process of another account (a child that
drops to another uid after its imports) attaches, takes the lock, waits for a notification,
sets an event and stores into an atomic word; the default stays Qt's 0600.
"""

from __future__ import annotations

import grp
import stat
import struct
from pathlib import Path
from typing import Any

import pytest
from qsharedmem import QNativeIpcKey, QSharedMemory, QSystemSemaphore, SharedMemory
from support.ipc import DEV_SHM
from support.keys import KeyRegistry
from support.notify import TIMEOUT, notify_block

GROUP = 65534  # nogroup: root may give a file any group
OTHER_UID = 12345  # an account of its own, in GROUP only


def mode_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_gid


def sysv_perms(kind: str, ident: int) -> tuple[int, int]:
    lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        fields = dict(zip(header, line.split(), strict=False))
        if int(fields["shmid" if kind == "shm" else "semid"]) == ident:
            return int(fields["perms"], 8) & 0o777, int(fields["gid"])
    raise AssertionError(f"no System V {kind} {ident}")


def sysv_ids(path: str, kind: str) -> list[int]:
    """The ids of the System V objects of ``kind`` whose ftok key is made from ``path``."""
    from support.ipc import sysv_objects_for_file

    return [o.ident for o in sysv_objects_for_file(Path(path)) if o.kind == kind]


def posix_key(make_key: KeyRegistry, name: str) -> Any:
    return QSharedMemory.platformSafeKey(make_key(name), QNativeIpcKey.Type.PosixRealtime)


def sysv_key(make_key: KeyRegistry, name: str) -> Any:
    # A key file in /tmp: another account can reach it (Qt's runtime directory is 0700).
    path = f"/tmp/{make_key(name)}"
    return make_key.record(QSharedMemory.platformSafeKey(path, QNativeIpcKey.Type.SystemV))


def test_a_posix_segment_gives_its_permissions_to_everything_it_makes(
    make_key: KeyRegistry,
) -> None:
    key = posix_key(make_key, "perm")
    shm = QSharedMemory(key)
    assert shm.create(64, permissions=0o660, group=GROUP), shm.errorString()
    name = key.nativeKey().lstrip("/")
    for path in (DEV_SHM / name, DEV_SHM / (name + ".qsm"), DEV_SHM / ("sem." + name)):
        assert mode_of(path) == (0o660, GROUP), path
    assert shm.detach()
    default = QSharedMemory(key)
    assert default.create(64)
    assert stat.S_IMODE((DEV_SHM / name).stat().st_mode) & 0o077 == 0, "Qt's 0600"
    assert default.detach()
    assert make_key.leftovers() == []


def test_a_system_v_segment_gives_its_permissions_to_everything_it_makes(
    make_key: KeyRegistry,
) -> None:
    key = sysv_key(make_key, "perm")
    shm = QSharedMemory(key)
    group = grp.getgrgid(GROUP).gr_name
    assert shm.create(64, permissions=0o660, group=group), shm.errorString()
    (shmid,) = sysv_ids(key.nativeKey(), "shm")
    assert sysv_perms("shm", shmid) == (0o660, GROUP)
    for semid in sysv_ids(key.nativeKey(), "sem"):
        assert sysv_perms("sem", semid) == (0o660, GROUP), "the lock"
    assert mode_of(Path(key.nativeKey())) == (0o660, GROUP), "the key file"
    shm.notify()
    block = notify_block(key)
    assert block is not None and mode_of(block) == (0o660, GROUP), "the notify block"
    assert shm.detach()
    assert make_key.leftovers() == []


@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_a_system_semaphore_gets_its_permissions(make_key: KeyRegistry, backend: str) -> None:
    name = make_key("permsem")
    if backend == "posix":
        key = QSystemSemaphore.platformSafeKey(name, QNativeIpcKey.Type.PosixRealtime)
    else:
        key = QSystemSemaphore.platformSafeKey(f"/tmp/{name}", QNativeIpcKey.Type.SystemV)
    make_key.record(key)
    sem = QSystemSemaphore(key, 1, QSystemSemaphore.Create, permissions=0o666, group=GROUP)
    assert sem.error() == QSystemSemaphore.NoError, sem.errorString()
    if backend == "posix":
        assert mode_of(DEV_SHM / ("sem." + name)) == (0o666, GROUP)
    else:
        (semid,) = sysv_ids(key.nativeKey(), "sem")
        assert sysv_perms("sem", semid) == (0o666, GROUP)
        assert mode_of(Path(key.nativeKey())) == (0o666, GROUP)
    del sem
    with pytest.raises(ValueError):
        QSystemSemaphore(key, 1, permissions=0o1777)


def test_multiprocessing_style_shared_memory_takes_permissions(make_key: KeyRegistry) -> None:
    name = make_key("permmp")
    make_key.record(QNativeIpcKey("/" + name))
    with SharedMemory(name, create=True, size=64, permissions=0o644, group=GROUP) as shm:
        assert mode_of(DEV_SHM / name) == (0o644, GROUP)
        assert mode_of(DEV_SHM / (name + ".qsm")) == (0o644, GROUP)
        shm.unlink()
    assert make_key.leftovers() == []


OTHER_ACCOUNT = r"""
import os, struct, sys
from qsharedmem import QNativeIpcKey, QSharedMemory, _qsharedmem
os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[3]))
shm = QSharedMemory(QNativeIpcKey.fromString(sys.argv[1]))
assert shm.attach(), shm.errorString()
assert shm.lock(timeout=30), shm.errorString()
struct.pack_into("<I", shm.data(), 0, os.geteuid())
assert shm.unlock()
g = shm.generation()
print("READY", flush=True)
assert shm.wait_changed(g, 60), "no notification"
shm.event("answer").set()
word = shm.atomic_u32(4)
word.store(7)
word.wake()
assert shm.detach()
print("DONE", flush=True)
"""


@pytest.mark.parametrize(
    ("permissions", "group", "uid"),
    [(0o666, None, OTHER_UID), (0o660, GROUP, OTHER_UID)],
    ids=["others", "group"],
)
@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_another_account_locks_waits_and_notifies(
    make_key: KeyRegistry,
    procs: Any,
    backend: str,
    permissions: int,
    group: int | None,
    uid: int,
) -> None:
    key = posix_key(make_key, "shared") if backend == "posix" else sysv_key(make_key, "shared")
    shm = QSharedMemory(key)
    assert shm.create(64, permissions=permissions, group=group), shm.errorString()
    other_gid = GROUP if group is not None else 54321  # "others" is in no group of ours
    child = procs.start_ready(
        procs.python("-c", OTHER_ACCOUNT, key.toString(), str(other_gid), str(uid)), "READY"
    )
    with shm.locked(timeout=TIMEOUT):
        assert struct.unpack_from("<I", shm.constData(), 0)[0] == uid, "it wrote under the lock"
    event = shm.event("answer")
    shm.notify_all()
    assert event.wait(TIMEOUT) is True
    assert shm.atomic_u32(4).wait(0, TIMEOUT) is True
    assert child.wait_for_line(timeout=TIMEOUT) == "DONE"
    assert child.finish().returncode == 0
    del event
    assert shm.detach()
    assert make_key.leftovers() == []
