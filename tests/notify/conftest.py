"""The wait/notify tests' shared fixture: ``shm``, a created 4096-byte segment of the module's
``key`` fixture, detached after the test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from qsharedmem import QSharedMemory


@pytest.fixture
def shm(key: Any) -> Iterator[Any]:
    shm = QSharedMemory(key)
    assert shm.create(4096), shm.errorString()
    yield shm
    shm.detach()
