"""Scenarios of the error-comparison tests (tests/qt/test_*_vs_pyside6.py): a named function that
runs against one implementation and returns what it observed, with what PySide6 observes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from support.impls import Impl
from support.keys import KeyRegistry
from support.processes import ChildProcesses

Observation = list[Any]
Runner = Callable[[Impl, KeyRegistry, ChildProcesses], Observation]


@dataclasses.dataclass(frozen=True)
class Scenario:
    id: str
    run: Runner
    expected: Observation  # what PySide6-Essentials 6.12.0 observes (a check of the oracle)

    def __str__(self) -> str:
        return self.id


class Scenarios(list[Scenario]):
    """A module's scenarios, in definition order; ``register(id, expected)`` decorates one."""

    def register(self, id: str, expected: Observation) -> Callable[[Runner], Runner]:
        def add(run: Runner) -> Runner:
            self.append(Scenario(id, run, expected))
            return run

        return add
