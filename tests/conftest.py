"""Loads the test support package (``tests/support``, see its ``__init__``) for every test.

Fixtures (all function-scoped): ``impl`` and ``key_type`` (:mod:`support.impls`), ``make_key``
(:mod:`support.keys`), ``procs`` (:mod:`support.processes`); the leak check of every test and
of the session is automatic (:mod:`support.leaks`). Tests import helpers from the package
(``from support.keys import KeyRegistry``), never from this file. ``tests/README.md`` maps the
modules and promises to their tests.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# Before anything can import PySide6 (test modules are imported after conftest).
os.environ["QT_QPA_PLATFORM"] = "offscreen"

# PySide6 6.12 on CPython 3.11 drops one reference to None on every call of a method that
# returns nothing (QNativeIpcKey.setType, QSharedMemory.setKey, ...); after a few thousand such
# calls in one process the interpreter aborts in none_dealloc. The oracle runs in this process,
# so give None enough references to outlive the whole suite (None is immortal from 3.12 on).
if sys.version_info < (3, 12):
    ctypes.c_ssize_t.from_address(id(None)).value += 1 << 30

# A shell starts a background job (`make test &`, nohup, some CI runners) with SIGINT ignored,
# and an ignored signal stays ignored in every child, where Python then installs no
# KeyboardInterrupt handler: the Ctrl-C tests would test nothing but that. Python's own handler,
# as an interactive start would have it; forked children inherit it, exec'd ones get the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = ["support.impls", "support.keys", "support.leaks", "support.processes"]
