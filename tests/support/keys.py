"""Unique keys, and the removal of everything a key can leave behind.

``make_key`` — a :class:`KeyRegistry`: ``make_key("name")`` returns ``"tstshm_<pid>-<seq>_name"``
(Qt's ``mangleKey``; the same name gives the same string within one test, "" stays "") and
remembers it. At teardown it removes everything such a name can leave behind, for both
implementations and every key family: ``/dev/shm/<name>``, ``/dev/shm/sem.<name>``, the legacy
``qipc_sharedmemory_…``/``sem.qipc_systemsem_…`` variants, the key files (temp dir, Qt runtime
dir) and the System V segments and semaphore sets whose ftok key belongs to those files (any
project id). ``make_key.record(qkey)`` registers a key that is not built from a mangled name
(e.g. an absolute System V path). ``make_key.leftovers(make_key("name"))`` lists what is still
there without removing it: use it to assert that qsharedmem cleaned up by itself.

Also here: :func:`new_key` (a qsharedmem key of a backend, ``"posix"`` or ``"sysv"``) and the
keys of the permission tests (:data:`PERMISSION_KEYS`, :func:`permission_test_key`).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.impls import POSIX_TYPE, SYSV_TYPE, Impl, type_value
from support.ipc import (
    DEV_SHM,
    KEY_PREFIX,
    SysvObject,
    describe_sysv,
    legacy_suffix,
    runtime_dirs,
    sysv_objects,
    sysv_objects_for_file,
    sysv_remove,
    temp_dirs,
)

_SEQ = itertools.count()


class KeyRegistry:
    """Qt's mangleKey/rememberKey/remove, for every key family and both implementations."""

    def __init__(self, prefix: str = KEY_PREFIX) -> None:
        self.seq = next(_SEQ)
        self.prefix = f"{prefix}_{os.getpid()}-{self.seq}_"
        self.names: list[str] = []  # mangled names
        self.posix_names: list[str] = []  # /dev/shm entries (without the directory)
        self.files: list[Path] = []  # SysV key files (absolute)
        self.removed: list[str] = []  # what cleanup() had to remove

    # -- making keys
    def __call__(self, name: str) -> str:
        return self.name(name)

    def name(self, name: str) -> str:
        """Qt's mangleKey: ``tstshm_<pid>-<seq>_<name>``; the empty string stays empty."""
        if not name:
            return name
        mangled = self.prefix + name
        if mangled not in self.names:
            self.names.append(mangled)
        return mangled

    def record(self, key: Any) -> Any:
        """Remember a QNativeIpcKey of either implementation; returns it."""
        self.record_native(key.nativeKey(), type_value(key.type()))
        return key

    def record_native(self, native: str, typ: int) -> None:
        if not native:
            return
        if typ == POSIX_TYPE:
            base = native[1:] if native.startswith("/") else native
            if "/" not in base:
                self._add_posix(base, base + ".qsm", "sem." + base)
                if base.startswith("qipc_sharedmemory_"):
                    self._add_posix("sem.qipc_systemsem_" + base[len("qipc_sharedmemory_") :])
        elif 0 <= typ <= 0xFF:
            path = Path(native) if native.startswith("/") else Path.cwd() / native
            self._add_file(path)
            if path.name.startswith("qipc_sharedmemory_"):
                rest = path.name[len("qipc_sharedmemory_") :]
                self._add_file(path.with_name("qipc_systemsem_" + rest))

    def _add_posix(self, *names: str) -> None:
        for name in names:
            if name not in self.posix_names:
                self.posix_names.append(name)

    def _add_file(self, *paths: Path) -> None:
        for path in paths:
            if path not in self.files:
                self.files.append(path)

    # -- what a name can leave behind
    def _candidates(self, names: Iterable[str] = ()) -> tuple[list[Path], list[Path]]:
        names = list(names)
        if names:  # only what these mangled names can leave behind
            shm: list[str] = []
            files: list[Path] = []
        else:
            names = self.names
            shm = list(self.posix_names)
            files = list(self.files)
        for name in names:
            legacy = legacy_suffix(name)
            shm += [
                name,
                name + ".qsm",
                "sem." + name,
                "qipc_sharedmemory_" + legacy,
                "qipc_sharedmemory_" + legacy + ".qsm",
                "sem.qipc_systemsem_" + legacy,
            ]
            for d in runtime_dirs():
                files.append(d / name)
            for d in temp_dirs():
                files += [d / ("qipc_sharedmemory_" + legacy), d / ("qipc_systemsem_" + legacy)]
                files.append(d / name)
        shm_paths = [DEV_SHM / n for n in dict.fromkeys(shm) if "/" not in n]
        return shm_paths, list(dict.fromkeys(files))

    def leftovers(self, *names: str) -> list[str]:
        """Everything still present for the recorded keys (nothing is removed).

        With ``names`` (mangled names, as returned by ``make_key("x")``): only for those.
        """
        shm_paths, files = self._candidates(names)
        objects = sysv_objects()
        found = [str(p) for p in shm_paths if os.path.lexists(p)]
        for path in files:
            if os.path.lexists(path):
                found.append(str(path))
                for obj in sysv_objects_for_file(path, objects):
                    found.append(describe_sysv(obj, path))
                    block = sysv_notify_block(obj)
                    if block is not None and block.exists():
                        found.append(str(block))
        return found

    def cleanup(self) -> list[str]:
        """Remove everything the recorded keys left behind; returns what was removed."""
        shm_paths, files = self._candidates()
        removed: list[str] = []
        objects = sysv_objects()
        for path in files:
            for obj in sysv_objects_for_file(path, objects):
                sysv_remove(obj)
                removed.append(describe_sysv(obj, path))
                block = sysv_notify_block(obj)
                if block is not None:
                    with contextlib.suppress(FileNotFoundError):
                        block.unlink()
                        removed.append(str(block))
        for path in [*files, *shm_paths]:
            # OSError: also names that cannot exist (too long, a component is not a directory)
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(str(path))
        self.removed += removed
        return removed


def sysv_notify_block(obj: SysvObject) -> Path | None:
    """The wait/notify block qsharedmem keeps for a System V segment (``qsm-sysv-<shmid>``)."""
    return DEV_SHM / f"qsm-sysv-{obj.ident}.qsm" if obj.kind == "shm" else None


@pytest.fixture
def make_key() -> Iterator[KeyRegistry]:
    registry = KeyRegistry()
    yield registry
    gc.collect()  # destroy unreachable PySide6/qsharedmem objects before removing their files
    registry.cleanup()


BACKENDS = {"posix": POSIX_TYPE, "sysv": SYSV_TYPE}


def new_key(qsm: Any, make_key: KeyRegistry, name: str, backend: str) -> Any:
    """A unique qsharedmem QNativeIpcKey for ``backend`` ("posix" or "sysv")."""
    S, K = qsm.QSharedMemory, qsm.QNativeIpcKey
    return S.platformSafeKey(make_key(name), K.Type(BACKENDS[backend]))


# --------------------------------------------------------------------------------------------
# Permission tests: root makes a 0600 object, a child interpreter that dropped to NOBODY (after
# its imports: the interpreter lives under /root) tries to use it.

NOBODY = 65534

# label: (key type, legacy); new System V keys get an absolute path in /tmp
PERMISSION_KEYS: dict[str, tuple[int, bool]] = {
    "POSIX": (POSIX_TYPE, False),
    "legacy POSIX": (POSIX_TYPE, True),
    "legacy SystemV-Q": (SYSV_TYPE, True),
    "legacy SystemV-T": (ord("T"), True),
    "new SystemV-Q in /tmp": (SYSV_TYPE, False),
    "new SystemV-T in /tmp": (ord("T"), False),
}


def as_nobody_child(ipc_class: str, arg: str) -> str:
    """The start of a child program for the permission tests: reads ``impl``, ``arg`` and the
    key string from ``sys.argv[1:4]``, imports ``QNativeIpcKey`` and ``ipc_class`` from that
    implementation, and becomes the uid in ``sys.argv[4]`` (``NOBODY``)."""
    return f"""
import json, os, sys
impl, {arg}, key = sys.argv[1:4]
if impl == "pyside6":
    from PySide6.QtCore import QNativeIpcKey, {ipc_class}
else:
    from qsharedmem import QNativeIpcKey, {ipc_class}
uid = int(sys.argv[4])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
"""


def permission_test_key(ipc_class: Any, impl: Impl, keys: KeyRegistry, label: str) -> Any:
    """The key of a ``PERMISSION_KEYS`` row for ``ipc_class`` (QSharedMemory/QSystemSemaphore)."""
    typ, legacy = PERMISSION_KEYS[label]
    if legacy:
        return ipc_class.legacyNativeKey(keys("perm"), impl.key_type(typ))
    if typ == POSIX_TYPE:
        return ipc_class.platformSafeKey(keys("perm"), impl.key_type(typ))
    # an absolute path: /tmp is searchable by everybody (the runtime dir is 0700)
    return keys.record(ipc_class.platformSafeKey(f"/tmp/{keys('perm')}", impl.key_type(typ)))
