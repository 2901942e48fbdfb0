"""Qt's enums, with Qt's names and values.

They are ``IntEnum``s: a member compares equal to its Qt integer value (as in C++), and
``str()`` prints ``Class.Member`` like PySide6's. ``QNativeIpcKey.Type`` also accepts the
System V variants 1..255 that Qt allows (``QNativeIpcKey.Type(84)`` is the key type Qt's own
tests call ``'T'``), just as PySide6 does.
"""

from __future__ import annotations

import enum
from typing import cast

__all__ = [
    "AccessMode",
    "KeyType",
    "SharedMemoryError",
    "SystemSemaphoreAccessMode",
    "SystemSemaphoreError",
]


class _QtEnum(enum.IntEnum):
    """An IntEnum that prints like PySide6's enums (``Type.SystemV``, not ``81``)."""

    __str__ = enum.Enum.__str__
    __format__ = enum.Enum.__format__

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        # pickle finds a class by module and qualified name, and these classes live on the
        # extension's classes (``QSharedMemory.SharedMemoryError``), not in this module.
        # Pickling matters for multiprocessing, which pickles every exception a worker
        # raises (ours carry ``qt_error``).
        return (_member, (type(self).__qualname__, self._value_))


class KeyType(_QtEnum):
    """``QNativeIpcKey::Type``."""

    SystemV = 0x51
    PosixRealtime = 0x100
    Windows = 0x101

    @classmethod
    def _missing_(cls, value: object) -> KeyType | None:
        # Qt keeps 0 (the invalid type) and 1..255 (System V keys whose ftok project id is the
        # value) as valid enum values; PySide6 shows them as "Type.84".
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
            member = int.__new__(cls, value)
            member._name_ = str(value)
            member._value_ = value
            # The map is typed as holding any Enum; for this class it holds KeyType members.
            return cast("KeyType", cls._value2member_map_.setdefault(value, member))
        return None


KeyType.__qualname__ = "QNativeIpcKey.Type"
KeyType.__name__ = "Type"


class AccessMode(_QtEnum):
    """``QSharedMemory::AccessMode``."""

    ReadOnly = 0
    ReadWrite = 1


AccessMode.__qualname__ = "QSharedMemory.AccessMode"


class SharedMemoryError(_QtEnum):
    """``QSharedMemory::SharedMemoryError``."""

    NoError = 0
    PermissionDenied = 1
    InvalidSize = 2
    KeyError = 3
    AlreadyExists = 4
    NotFound = 5
    LockError = 6
    OutOfResources = 7
    UnknownError = 8


SharedMemoryError.__qualname__ = "QSharedMemory.SharedMemoryError"


class SystemSemaphoreAccessMode(_QtEnum):
    """``QSystemSemaphore::AccessMode``."""

    Open = 0
    Create = 1


SystemSemaphoreAccessMode.__qualname__ = "QSystemSemaphore.AccessMode"
SystemSemaphoreAccessMode.__name__ = "AccessMode"


class SystemSemaphoreError(_QtEnum):
    """``QSystemSemaphore::SystemSemaphoreError``."""

    NoError = 0
    PermissionDenied = 1
    KeyError = 2
    AlreadyExists = 3
    NotFound = 4
    OutOfResources = 5
    UnknownError = 6


SystemSemaphoreError.__qualname__ = "QSystemSemaphore.SystemSemaphoreError"
SystemSemaphoreError.__name__ = "SystemSemaphoreError"


_BY_QUALNAME: dict[str, type[_QtEnum]] = {
    enum_class.__qualname__: enum_class
    for enum_class in (
        KeyType,
        AccessMode,
        SharedMemoryError,
        SystemSemaphoreAccessMode,
        SystemSemaphoreError,
    )
}


def _member(qualname: str, value: int) -> _QtEnum:
    """Unpickles a member (see ``_QtEnum.__reduce_ex__``)."""
    return _BY_QUALNAME[qualname](value)
