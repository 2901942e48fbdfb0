"""The test suite's support package: what every test file may import, and the fixtures.

``tests/conftest.py`` loads the modules that define fixtures and hooks as pytest plugins:

* :mod:`support.impls` — the implementations under test (``impl``: qsharedmem or PySide6, the
  Qt oracle), Qt's key-type rows (``key_type``), and ``-k pyside6`` / ``-k qsharedmem``.
* :mod:`support.keys` — unique keys (``make_key``) and the removal of everything a key can
  leave behind.
* :mod:`support.leaks` — the leak check of every test and of the session (``/dev/shm``,
  System V IPC, key files).
* :mod:`support.processes` — child processes that are always killed and reaped (``procs``).

Plain modules, imported by tests: :mod:`support.ipc` (where Qt puts things; System V objects
read from ``/proc``; what the OS holds for a key), :mod:`support.agent` (the one child-agent
protocol, parent side; the child is ``helpers/agent.py``) and :mod:`support.sem_probe`
(a system semaphore seen from outside).
"""

from __future__ import annotations

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
ROOT = TESTS_DIR.parent  # the repository
HELPERS_DIR = TESTS_DIR / "helpers"  # programs that tests run as child processes
DATA_DIR = TESTS_DIR / "data"  # test data shared with the Rust tests
