"""What the OS holds for a key, seen from outside any handle (no attach, which would count).

* POSIX keys: the file ``/dev/shm/<name>``.
* System V keys: the segment whose ftok key is made from the key file and the key type (the
  ftok project id), as listed in ``/proc/sysvipc/shm``; ``nattch`` is its attach count.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from conftest import DEV_SHM, POSIX_TYPE, sysv_objects, type_value


def is_posix(key: Any) -> bool:
    return type_value(key.type()) == POSIX_TYPE


def posix_path(key: Any) -> Path:
    return DEV_SHM / key.nativeKey().lstrip("/")


def ftok(path: str, project_id: int) -> int | None:
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
