"""The implementations under test: qsharedmem and PySide6 (the Qt oracle), and Qt's key types.

* ``impl`` — parametrized over ``"qsharedmem"`` and ``"pyside6"`` (PySide6 6.12 = the Qt oracle).
  The value is an :class:`Impl`: ``QSharedMemory``, ``QNativeIpcKey``, ``QSystemSemaphore``,
  ``name``, ``is_qt``, ``key_type(value_or_row)``, ``next_key_type(t)``. qsharedmem is imported
  lazily, inside the fixture. ``-k pyside6`` / ``-k qsharedmem`` select one implementation (also
  in modules whose file name contains one of these words, see ``pytest_collection_modifyitems``).
* ``key_type`` — parametrized like Qt's ``addGlobalTestRows``: ``POSIX`` (PosixRealtime),
  ``SystemV-Q`` (SystemV, ftok id 0x51), ``SystemV-T`` (``Type(84)``), as the *impl's* enum member.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

IMPLS = ("qsharedmem", "pyside6")

# Qt's addGlobalTestRows order on Linux (Windows is unsupported there): the row name and the
# QNativeIpcKey::Type value.
KEY_TYPES: dict[str, int] = {"POSIX": 0x100, "SystemV-Q": 0x51, "SystemV-T": ord("T")}
POSIX_TYPE = 0x100
SYSV_TYPE = 0x51
WINDOWS_TYPE = 0x101


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation of Qt's Python API: ``qsharedmem`` or PySide6."""

    name: str
    QSharedMemory: Any
    QNativeIpcKey: Any
    QSystemSemaphore: Any = None

    @property
    def is_qt(self) -> bool:
        return self.name == "pyside6"

    def key_type(self, value: int | str) -> Any:
        """The impl's ``QNativeIpcKey.Type`` member for a value or a ``KEY_TYPES`` row name."""
        if isinstance(value, str):
            value = KEY_TYPES[value]
        return self.QNativeIpcKey.Type(value)

    def next_key_type(self, key_type: Any) -> Any:
        """Qt's ``IpcTestCommon::nextKeyType``: rotate through the supported rows."""
        values = list(KEY_TYPES.values())
        index = values.index(type_value(key_type))
        return self.key_type(values[(index + 1) % len(values)])

    def __repr__(self) -> str:
        return f"<Impl {self.name}>"


def load_impl(name: str) -> Impl:
    if name == "pyside6":
        from PySide6 import QtCore

        return Impl(name, QtCore.QSharedMemory, QtCore.QNativeIpcKey, QtCore.QSystemSemaphore)
    if name == "qsharedmem":
        import qsharedmem

        return Impl(
            name, qsharedmem.QSharedMemory, qsharedmem.QNativeIpcKey, qsharedmem.QSystemSemaphore
        )
    raise ValueError(f"unknown implementation {name!r}")


def type_value(key_type: Any) -> int:
    """The integer value of a key type of either implementation (IntEnum or PySide6 Enum)."""
    return int(getattr(key_type, "value", key_type))


def error_of(sm: Any) -> tuple[str, str]:
    """``(error().name, errorString())`` — comparable across implementations."""
    return sm.error().name, sm.errorString()


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Impl:
    return load_impl(request.param)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``-k pyside6`` / ``-k qsharedmem`` select an *implementation*.

    ``-k`` also matches file names, and ``test_errors_vs_pyside6.py`` /
    ``test_qt_tst_qsharedmemory.py`` contain the implementation names, so plain ``-k pyside6``
    would keep the qsharedmem rows of those modules. For items parametrized by ``impl``, the
    ``-k`` expression is evaluated again without the file/directory names.
    """
    text = (config.option.keyword or "").strip()
    if not text or not any(name in text.lower() for name in IMPLS):
        return
    try:
        from _pytest.mark import KeywordMatcher
        from _pytest.mark.expression import Expression
    except ImportError:  # private API moved: fall back to pytest's own -k semantics
        return
    expression = Expression.compile(text)
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or "impl" not in callspec.params:
            keep.append(item)
            continue
        files = {
            node.name
            for node in item.listchain()
            if isinstance(node, pytest.Module | pytest.Package | pytest.Directory)
        }
        names = set(KeywordMatcher.from_item(item)._names) - files
        (keep if expression.evaluate(KeywordMatcher(names)) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=list(KEY_TYPES))
def key_type(request: pytest.FixtureRequest, impl: Impl) -> Any:
    return impl.key_type(request.param)


def qsharedmem_only(key_prefix: str) -> tuple[Any, Any]:
    """The ``impl`` and ``key`` fixtures of a module that tests qsharedmem alone (with every key
    type): ``impl`` overrides the two-implementation fixture (so ``key_type`` gives qsharedmem's
    members), ``key`` is a platform-safe key of the test's key type, named after ``key_prefix``.

    In the module: ``impl, key = qsharedmem_only("api")``."""

    @pytest.fixture
    def impl() -> Impl:
        return load_impl("qsharedmem")

    @pytest.fixture
    def key(impl: Impl, key_type: Any, make_key: Any) -> Any:
        return impl.QSharedMemory.platformSafeKey(make_key(key_prefix), key_type)

    return impl, key
