"""What the ports of Qt's ``tst_QSharedMemory`` and ``tst_QSystemSemaphore`` share: the object
of Qt's test class (the class under test, its error enum, ``mangleKey``, ``platformSafeKey``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from support.impls import POSIX_TYPE, Impl, type_value
from support.keys import KeyRegistry


class QtTst:
    """The part of Qt's test object that both ports have; ``cls`` is the class under test."""

    def __init__(
        self, impl: Impl, cls: Any, errors: Any, key_type: Any, registry: KeyRegistry
    ) -> None:
        self.impl = impl
        self.S = cls
        self.E = errors  # the class's error enum
        self.key_type = key_type
        self.registry = registry

    @property
    def is_posix(self) -> bool:
        return type_value(self.key_type) == POSIX_TYPE

    def mangle(self, key: str) -> str:
        return self.registry.name(key)

    def platform_safe_key(self, key: str) -> Any:
        return self.S.platformSafeKey(self.mangle(key), self.key_type)

    def assert_no_error(self, obj: Any) -> None:
        """``error()`` is ``NoError`` and ``errorString()`` empty (Qt's QCOMPARE pair)."""
        assert obj.error() == self.E.NoError, obj.errorString()
        assert obj.errorString() == "", obj.errorString()

    def init(self) -> None:
        """Qt's ``init()``, before each test."""

    def cleanup(self) -> None:
        """Qt's ``cleanup()``, after each test."""

    def around_test(self) -> Iterator[QtTst]:
        """The body of the ``tst`` fixture: ``init()``, the test, ``cleanup()``."""
        self.init()
        yield self
        self.cleanup()
