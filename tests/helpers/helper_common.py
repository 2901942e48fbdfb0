"""What the helper processes (ports of Qt's test helpers) share: exit codes, the warning channel,
the ``--impl qsharedmem|pyside6`` option and loading the classes of that implementation."""

from __future__ import annotations

import importlib
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

EXIT_SUCCESS = 0
EXIT_FAILURE = 1

MODULES = {"pyside6": "PySide6.QtCore", "qsharedmem": "qsharedmem"}


def warn(*parts: object) -> None:
    """Qt's qWarning: a line on stderr."""
    print(*parts, file=sys.stderr, flush=True)


def pop_impl(args: list[str]) -> str:
    """Remove ``--impl NAME`` or ``--impl=NAME`` from ``args``; NAME, qsharedmem by default."""
    for i, arg in enumerate(args):
        if arg == "--impl" and i + 1 < len(args):
            impl = args[i + 1]
            del args[i : i + 2]
            return impl
        if arg.startswith("--impl="):
            del args[i]
            return arg.split("=", 1)[1]
    return "qsharedmem"


def load(impl: str, *names: str) -> tuple:
    """The classes ``names`` (e.g. "QSharedMemory") of the implementation ``impl``."""
    if impl not in MODULES:
        raise SystemExit(f"unknown implementation {impl!r}")
    module = importlib.import_module(MODULES[impl])
    return tuple(getattr(module, name) for name in names)
