"""Where Qt puts things, and what the OS holds: /dev/shm, key files, System V objects.

Everything here looks from outside any handle (no attach, which would count):

* the directories of Qt's key derivation (qt-semantics §2.4): :func:`temp_dirs`,
  :func:`runtime_dirs`, :func:`legacy_suffix`;
* System V segments and semaphore sets, read from ``/proc/sysvipc`` and removed with ctypes
  (no dependency on ipcrm/sysv_ipc): :func:`sysv_objects`, :func:`sysv_remove`, and which of
  them glibc's ``ftok()`` made from a key file (:func:`ftok_matches`,
  :func:`sysv_objects_for_file`);
* what a key has: for POSIX keys the file ``/dev/shm/<name>``, for System V keys the segment
  whose ftok key is made from the key file and the key type (the ftok project id), as listed in
  ``/proc/sysvipc/shm`` (``nattch`` is its attach count): :func:`segment_exists`,
  :func:`sysv_segment`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import pwd
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from support.impls import POSIX_TYPE, type_value

DEV_SHM = Path("/dev/shm")
KEY_PREFIX = "tstshm"  # the prefix of make_key's names (Qt's mangleKey uses "tstshm" too)


# --------------------------------------------------------------------------------------------
# Where Qt puts things (qt-semantics §2.4)


def clean_path(path: str) -> str:
    """QDir::cleanPath for absolute paths: collapse //, resolve . and .. lexically."""
    return os.path.normpath(path).replace("//", "/") if path else path


def temp_dirs() -> list[Path]:
    """QDir::tempPath() (cleaned $TMPDIR or /tmp), plus /tmp itself."""
    dirs = [Path("/tmp")]
    tmpdir = os.environ.get("TMPDIR")
    if tmpdir:
        dirs.insert(0, Path(clean_path(tmpdir)))
    return list(dict.fromkeys(dirs))


def runtime_dirs() -> list[Path]:
    """Candidates for QStandardPaths::RuntimeLocation: $XDG_RUNTIME_DIR, <temp>/runtime-<user>."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    dirs = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and xdg.startswith("/"):
        dirs.append(Path(xdg))
    dirs.extend(d / f"runtime-{user}" for d in temp_dirs())
    return list(dict.fromkeys(dirs))


def _letters(key: str) -> str:
    return "".join(c for c in key if "a" <= c <= "z" or "A" <= c <= "Z")


def legacy_suffix(key: str) -> str:
    """<ASCII letters of key><sha1 hex of utf-8 key> (qt-semantics §2.2)."""
    return _letters(key) + hashlib.sha1(key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# System V objects, read from /proc and removed with ctypes (no dependency on ipcrm/sysv_ipc)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
IPC_RMID = 0


class SysvObject(NamedTuple):
    kind: str  # "shm" | "sem"
    ident: int
    key: int  # as unsigned 32-bit
    cpid: int  # creator pid (shm only, 0 for sem)
    lpid: int  # pid of the last shmat/shmdt (shm only, 0 for sem)


def sysv_objects() -> list[SysvObject]:
    objects = []
    for kind in ("shm", "sem"):
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        header = lines[0].split()
        for line in lines[1:]:
            fields = dict(zip(header, line.split(), strict=False))
            ident = int(fields["shmid" if kind == "shm" else "semid"])
            key = int(fields["key"]) & 0xFFFFFFFF
            objects.append(
                SysvObject(kind, ident, key, int(fields.get("cpid", 0)), int(fields.get("lpid", 0)))
            )
    return objects


def sysv_remove(obj: SysvObject) -> None:
    if obj.kind == "shm":
        rc = _libc.shmctl(ctypes.c_int(obj.ident), ctypes.c_int(IPC_RMID), None)
    else:
        rc = _libc.semctl(ctypes.c_int(obj.ident), ctypes.c_int(0), ctypes.c_int(IPC_RMID))
    if rc == -1:
        err = ctypes.get_errno()
        if err not in (0, 22, 43):  # EINVAL / EIDRM: already gone
            raise OSError(err, f"IPC_RMID {obj}: {os.strerror(err)}")


def ftok_matches(key: int, st: os.stat_result) -> bool:
    """Whether a SysV key was made by glibc's ftok() from this file (any project id)."""
    return (
        key != 0
        and (key & 0xFFFF) == (st.st_ino & 0xFFFF)
        and ((key >> 16) & 0xFF) == (st.st_dev & 0xFF)
    )


def sysv_objects_for_file(path: Path, objects: Iterable[SysvObject] | None = None):
    try:
        st = path.stat()
    except OSError:
        return []
    if objects is None:
        objects = sysv_objects()
    return [o for o in objects if ftok_matches(o.key, st)]


def describe_sysv(obj: SysvObject, path: Path | str | None = None) -> str:
    text = f"System V {obj.kind} id={obj.ident} key=0x{obj.key:08x}"
    if obj.cpid:
        text += f" cpid={obj.cpid}"
    if path is not None:
        text += f" (key file {path})"
    return text


# --------------------------------------------------------------------------------------------
# What the OS holds for a key


def is_posix(key: Any) -> bool:
    return type_value(key.type()) == POSIX_TYPE


def posix_path(key: Any) -> Path:
    return DEV_SHM / key.nativeKey().lstrip("/")


def ftok(path: str | os.PathLike[str], project_id: int) -> int | None:
    """glibc's ftok(): None if the file does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return ((project_id & 0xFF) << 24) | ((st.st_dev & 0xFF) << 16) | (st.st_ino & 0xFFFF)


def sysv_segment(key: Any) -> dict[str, int] | None:
    """The System V segment of a key: {"shmid", "size", "nattch"}, or None."""
    unix_key = ftok(key.nativeKey(), type_value(key.type()))
    if unix_key is None:
        return None
    if not any(o.kind == "shm" and o.key == unix_key for o in sysv_objects()):
        return None
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        fields = dict(zip(header, line.split(), strict=False))
        if int(fields["key"]) & 0xFFFFFFFF == unix_key:
            return {
                "shmid": int(fields["shmid"]),
                "size": int(fields["size"]),
                "nattch": int(fields["nattch"]),
            }
    return None


def segment_exists(key: Any) -> bool:
    """Whether the segment of ``key`` exists (whoever is or is not attached)."""
    if is_posix(key):
        return posix_path(key).exists()
    return sysv_segment(key) is not None
