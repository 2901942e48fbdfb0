"""Permissions and the file system as an attack surface.

* Every object is created with Qt's modes: segments and semaphores 0600, key files 0640
  (checked against PySide6 creating the same kind of key).
* Another user (a child that drops to uid/gid 65534 after its imports) gets
  ``PermissionDenied`` — not a crash — when it attaches, creates, or tries to reclaim a crashed
  root process's orphan, and the orphan stays for its owner to reclaim.
* Key files are created with ``O_EXCL`` and never followed through a symbolic link planted in
  ``/tmp`` (by root or by another user): create() fails with Qt's "unable to make key" and the
  link's target is neither read as a key, nor created, nor changed. (Qt follows such a link: its
  key then is the target's inode.)
* A POSIX key cannot name anything outside ``/dev/shm``: ``..`` and ``/`` are refused and no
  file appears elsewhere.
"""

from __future__ import annotations

import json
import os
import stat
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
NOBODY = 65534


def perms_from_proc(kind: str, ident: int) -> int:
    lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        fields = dict(zip(header, line.split(), strict=False))
        if int(fields["shmid" if kind == "shm" else "semid"]) == ident:
            return int(fields["perms"], 8) & 0o777
    raise AssertionError(f"no System V {kind} {ident}")


def modes_of(impl_name: str, make_key: KeyRegistry, backend: str, legacy: bool) -> dict:
    """Create a segment with one implementation; return the modes of everything it made."""
    impl = load_impl(impl_name)
    Sx = impl.QSharedMemory
    name = make_key(f"modes-{impl_name}-{backend}-{legacy}")
    row = "POSIX" if backend == "posix" else "SystemV-Q"
    if legacy:
        key = Sx.legacyNativeKey(name, impl.key_type(row))
    else:
        key = Sx.platformSafeKey(name, impl.key_type(row))
    make_key.record(key)
    sm = Sx(key)
    assert sm.create(64), sm.errorString()
    native = key.nativeKey()
    modes: dict[str, int] = {}
    if backend == "posix":
        modes["segment"] = stat.S_IMODE(os.stat("/dev/shm/" + native.lstrip("/")).st_mode)
    else:
        files = {"key file": Path(native)}
        if legacy:
            files["lock key file"] = Path(native.replace("qipc_sharedmemory_", "qipc_systemsem_"))
        for label, path in files.items():
            modes[label] = stat.S_IMODE(path.lstat().st_mode)
            for obj in sysv_objects_for_file(path):
                modes[f"{label}: System V {obj.kind}"] = perms_from_proc(obj.kind, obj.ident)
    sm.detach()
    return modes


@pytest.mark.parametrize(
    ("backend", "legacy"),
    [("posix", False), ("posix", True), ("sysv", False), ("sysv", True)],
    ids=["posix", "legacy-posix", "sysv", "legacy-sysv"],
)
def test_objects_are_created_with_qts_modes(
    backend: str, legacy: bool, make_key: KeyRegistry
) -> None:
    ours = modes_of("qsharedmem", make_key, backend, legacy)
    if backend == "posix":
        assert ours == {"segment": 0o600}
    elif legacy:
        assert ours == {
            "key file": 0o640,
            "key file: System V shm": 0o600,
            "lock key file": 0o640,
            "lock key file: System V sem": 0o600,
        }
    else:
        assert ours == {
            "key file": 0o640,
            "key file: System V shm": 0o600,
            "key file: System V sem": 0o600,
        }
    assert modes_of("pyside6", make_key, backend, legacy) == ours


# ------------------------------------------------------------------------------------------------
# Another user

OTHER_USER = r"""
import json, os, sys
import qsharedmem
key = qsharedmem.QNativeIpcKey.fromString(sys.argv[1])
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
seen = {}
for op in ("attach-rw", "attach-ro", "create", "lock"):
    sm = qsharedmem.QSharedMemory(key)
    if op == "attach-rw":
        ok = sm.attach()
    elif op == "attach-ro":
        ok = sm.attach(qsharedmem.QSharedMemory.AccessMode.ReadOnly)
    elif op == "create":
        ok = sm.create(64)
    else:
        ok = sm.lock()
    seen[op] = [ok, sm.error().name, sm.isAttached()]
print(json.dumps([os.geteuid(), seen]), flush=True)
"""


@pytest.mark.parametrize("orphan", [False, True], ids=["live", "orphan-of-a-crash"])
@pytest.mark.parametrize("backend", ["posix", "sysv"])
def test_another_user_gets_permission_denied(
    backend: str, orphan: bool, make_key: KeyRegistry, procs: ChildProcesses
) -> None:
    name = "otheruser"
    if backend == "posix":
        key = new_key(qsharedmem, make_key, name, backend)
    else:  # a key file in /tmp: uid 65534 can reach it (the runtime directory is 0700)
        key = make_key.record(S.platformSafeKey(f"/tmp/{make_key(name)}", K.Type.SystemV))
    owner = None
    if orphan:
        # root creates it and is killed: nobody holds the segment any more.
        creator = start_agent(procs)
        assert creator.call("key", "h", key.toString()).r is True
        assert creator.call("create", "h", 64).r is True
        assert creator.call("write", "h", 0, "0a0b").r is True
        creator.kill()
    else:
        owner = S(key)
        assert owner.create(64), owner.errorString()
        owner.data()[:2] = b"\x0a\x0b"

    result = procs.run_python(OTHER_USER, key.toString())
    assert result.returncode == 0, result  # no crash
    euid, seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert euid == NOBODY
    assert seen == {
        "attach-rw": [False, "PermissionDenied", False],
        "attach-ro": [False, "PermissionDenied", False],
        "create": [False, "PermissionDenied", False],
        "lock": [False, "LockError", False],
    }

    # The other user changed nothing: the owner (or, for an orphan, root's next create(),
    # which reclaims it) still finds its segment as it was.
    if owner is None:
        owner = S(key)
        assert owner.attach(), owner.errorString()
        assert bytes(owner.constData()[:2]) == b"\x0a\x0b", "the orphan is intact"
        assert owner.detach()
        owner = S(key)
        assert owner.create(64), owner.errorString()
    else:
        assert bytes(owner.constData()[:2]) == b"\x0a\x0b"
    assert owner.detach()
    del owner
    assert make_key.leftovers(make_key(name)) == []


# ------------------------------------------------------------------------------------------------
# Symbolic links planted where a key file goes


PLANT_AS_NOBODY = r"""
import os, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
os.symlink(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("planted_by", ["root", "nobody"])
@pytest.mark.parametrize("target", ["existing", "dangling"])
@pytest.mark.parametrize("which", ["segment key file", "lock key file"])
def test_a_symlink_planted_at_a_key_file_is_never_followed(
    which: str,
    target: str,
    planted_by: str,
    make_key: KeyRegistry,
    procs: ChildProcesses,
    tmp_path: Path,
) -> None:
    name = make_key("symlink")
    key = make_key.record(S.legacyNativeKey(name))  # System V, key files in /tmp
    segment_file = Path(key.nativeKey())
    lock_file = segment_file.with_name(
        segment_file.name.replace("qipc_sharedmemory_", "qipc_systemsem_")
    )
    link = segment_file if which == "segment key file" else lock_file
    victim = Path("/tmp") / f"{name}-victim"
    if target == "existing":
        victim.write_text("precious")
        victim.chmod(0o644)
    if planted_by == "root":
        link.symlink_to(victim)
    else:
        result = procs.run_python(PLANT_AS_NOBODY, str(victim), str(link))
        assert result.returncode == 0, result
    assert link.is_symlink()

    try:
        sm = S(key)
        assert not sm.create(64)
        assert sm.error() == S.SharedMemoryError.KeyError
        assert sm.errorString() == (
            "QSharedMemoryPrivate::initKey: unable to set key on lock "
            "(QSystemSemaphore::handle:: unable to make key)"
            if link == lock_file
            else "QSharedMemory::handle:: unable to make key"
        )
        assert not sm.attach()
        assert sm.error() in (S.SharedMemoryError.KeyError, S.SharedMemoryError.NotFound)
        del sm
        # The target was neither created, nor changed, nor used as a key.
        if target == "existing":
            assert victim.read_text() == "precious"
            assert stat.S_IMODE(victim.stat().st_mode) == 0o644
            assert sysv_objects_for_file(victim) == []
        else:
            assert not victim.exists()
        assert link.is_symlink(), "the planted link is left alone (it is not ours)"
    finally:
        link.unlink()
        victim.unlink(missing_ok=True)
    assert make_key.leftovers(name) == []


def test_qt_follows_a_planted_symlink(make_key: KeyRegistry) -> None:
    """For docs/reliability.md: PySide6 creates its segment keyed by the link's target."""
    qt = load_impl("pyside6")
    name = make_key("qtsymlink")
    key = make_key.record(qt.QSharedMemory.legacyNativeKey(name))
    link = Path(key.nativeKey())
    victim = Path("/tmp") / f"{name}-victim"
    victim.write_text("precious")
    link.symlink_to(victim)
    try:
        sm = qt.QSharedMemory(key)
        assert sm.create(64), sm.errorString()
        assert [o.kind for o in sysv_objects_for_file(victim)] == ["shm"], "keyed by the target"
        sm.detach()
        del sm
    finally:
        link.unlink(missing_ok=True)
        victim.unlink()


# ------------------------------------------------------------------------------------------------
# POSIX names cannot leave /dev/shm


@pytest.mark.parametrize(
    "pattern",
    ["/../tmp/{n}", "../tmp/{n}", "/./{n}", "/{n}/..", "//../{n}", "/..", "/.", "..", "."],
)
def test_a_posix_key_cannot_escape_dev_shm(pattern: str, make_key: KeyRegistry) -> None:
    name = make_key("escape")
    native = pattern.format(n=name)
    outside = [Path("/tmp") / name, Path("/dev") / name, Path("/") / name]
    sm = S(K(native, K.Type.PosixRealtime))
    assert not sm.create(64)
    assert sm.error() in (S.SharedMemoryError.KeyError, S.SharedMemoryError.UnknownError)
    assert not sm.attach()
    assert [p for p in outside if p.exists()] == []
    assert sorted(p.name for p in Path("/dev/shm").iterdir() if name in p.name) == []
