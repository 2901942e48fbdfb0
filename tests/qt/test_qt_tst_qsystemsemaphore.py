"""Port of Qt's autotest tst_qsystemsemaphore.cpp (qtbase tests/auto/corelib/ipc/qsystemsemaphore).

Every test body is written against Qt's Python API and runs unchanged against both
implementations (the ``impl`` fixture: ``qsharedmem`` and PySide6, the oracle) and for every key
type (the ``key_type`` fixture = Qt's global rows POSIX, SystemV-Q, SystemV-T). Qt's data rows are
``pytest.mark.parametrize`` rows with Qt's row names as ids. The helper processes run
``helpers/acquirerelease.py`` (the port of Qt's ``acquirerelease_helper``) with the same
implementation as the test.

Qt's fixture is the ``tst`` fixture: ``mangleKey`` (conftest's ``make_key``: ``tstshm_<pid>-<seq>_
<key>``), ``platformSafeKey``, ``init()`` (an "existing" semaphore, value 1, Create) and
``cleanup()`` (destroy it). On top of Qt, the teardown checks that the implementation itself
removed every semaphore and key file the test made (conftest's leak check then fails the test
if anything is left at all).

Where this port differs from Qt's test, it says so next to the code:

* Qt waits ``HELPERWAITTIME`` (10 s) and then checks that a helper is *still running*. Here the
  test waits until the helper is blocked in the kernel on that very semaphore (its waiter count,
  see ``sem_probe``), and checks the value is still 0 — no sleep decides anything.
* Keys Qt's test leaves unmangled (``legacyKey``'s keys, ``nativeKey``'s key of the next type)
  are mangled here, so that concurrent runs can never share them.
* Beyond Qt, the process tests also check the semaphore's value afterwards, which shows the
  System V ``SEM_UNDO`` bookkeeping (also of ``release()``) against POSIX's lack of it; and
  ``undo``, which Qt skips for POSIX, checks there that the token stays taken.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from support import sem_probe
from support.impls import Impl, type_value
from support.keys import KeyRegistry
from support.processes import ACQUIRE_RELEASE, ChildProcesses
from support.qt_tst import QtTst

HELPER_TIMEOUT = 60.0  # hang guards only; nothing asserts a duration


class Tst(QtTst):
    """The tst_QSystemSemaphore object: Qt's helpers and its init()/cleanup()."""

    def __init__(self, impl: Impl, key_type: Any, registry: KeyRegistry) -> None:
        sem = impl.QSystemSemaphore
        super().__init__(impl, sem, sem.SystemSemaphoreError, key_type, registry)
        self.existing_lock: Any = None

    def init(self) -> None:
        self.existing_lock = self.S(self.platform_safe_key("existing"), 1, self.S.Create)

    def cleanup(self) -> None:
        self.existing_lock = None
        gc.collect()


@pytest.fixture
def tst(impl: Impl, key_type: Any, make_key: KeyRegistry):
    yield from Tst(impl, key_type, make_key).around_test()
    # Beyond Qt: every semaphore was owned by an object of this test (Create, or Open on a new
    # key) or by nobody; the owners are gone, so nothing may be left.
    assert make_key.leftovers() == []


def helper(procs: ChildProcesses, impl: Impl, *args: str):
    return procs.start(procs.python(ACQUIRE_RELEASE, "--impl", impl.name, *args))


def finish(child: Any) -> tuple[int, str]:
    result = child.finish(HELPER_TIMEOUT)
    return result.returncode, result.stdout


# ----------------------------------------------------------------------------------------------
# keys

KEY_ROWS = [
    pytest.param("", "", id="null, null"),
    pytest.param("", "one", id="null, one"),
    pytest.param("one", "two", id="one, two"),
]


@pytest.mark.parametrize(("constructor_key", "set_key"), KEY_ROWS)
def test_nativeKey(tst: Tst, constructor_key: str, set_key: str) -> None:
    constructor_ipc_key = tst.platform_safe_key(constructor_key)
    set_ipc_key = tst.platform_safe_key(set_key)

    sem = tst.S(constructor_ipc_key)
    assert sem.nativeIpcKey() == constructor_ipc_key
    tst.assert_no_error(sem)

    sem.setNativeKey(set_ipc_key)
    assert sem.nativeIpcKey() == set_ipc_key
    tst.assert_no_error(sem)

    # change the key type
    next_key_type = tst.impl.next_key_type(set_ipc_key.type())
    if type_value(next_key_type) != type_value(set_ipc_key.type()):
        # Qt passes the unmangled setKey here; mangled, so that concurrent runs cannot collide.
        set_ipc_key2 = tst.S.platformSafeKey(tst.mangle(set_key), next_key_type)
        sem.setNativeKey(set_ipc_key2)
        assert sem.nativeIpcKey() == set_ipc_key2


@pytest.mark.parametrize(("constructor_key", "set_key"), KEY_ROWS)
def test_legacyKey(tst: Tst, constructor_key: str, set_key: str) -> None:
    # Qt uses the keys unmangled; mangled here (see the module docstring).
    constructor_key = tst.mangle(constructor_key)
    set_key = tst.mangle(set_key)

    sem = tst.S(constructor_key)
    assert sem.key() == constructor_key
    tst.assert_no_error(sem)

    sem.setKey(set_key)
    assert sem.key() == set_key
    tst.assert_no_error(sem)


def test_changeKeyType(tst: Tst) -> None:
    key_name = "changeKeyType"
    key = tst.platform_safe_key(key_name)
    other_key = tst.S.platformSafeKey(tst.mangle(key_name), tst.impl.next_key_type(key.type()))
    assert key != other_key  # Linux supports every row's type

    sem1 = tst.S(key, 1, tst.S.Create)
    sem2 = tst.S(other_key)
    sem1.setNativeKey(other_key)
    sem2.setNativeKey(key)
    # Qt only checks that this neither crashes nor hangs. Beyond Qt: both are usable.
    for sem in (sem1, sem2):
        assert sem.error() == tst.E.NoError, sem.errorString()


# ----------------------------------------------------------------------------------------------
# acquire and release in one process


def test_basicacquire(tst: Tst) -> None:
    key = tst.platform_safe_key("basicacquire")
    sem = tst.S(key, 1, tst.S.Create)
    assert sem.acquire()
    assert sem.error() == tst.E.NoError
    assert sem.release()
    tst.assert_no_error(sem)


def test_complexacquire(tst: Tst) -> None:
    key = tst.platform_safe_key("complexacquire")
    sem = tst.S(key, 2, tst.S.Create)
    for op in ("acquire", "release", "acquire", "release", "acquire", "acquire"):
        assert getattr(sem, op)()
        assert sem.error() == tst.E.NoError
    assert sem_probe.value(key) == 0  # beyond Qt: both tokens are taken
    for _ in range(2):
        assert sem.release()
        tst.assert_no_error(sem)


def test_release(tst: Tst) -> None:
    key = tst.platform_safe_key("release")
    sem = tst.S(key, 0, tst.S.Create)
    for op in ("release", "release", "acquire", "acquire", "release", "release"):
        assert getattr(sem, op)()
        tst.assert_no_error(sem)
    assert sem_probe.value(key) == 2  # beyond Qt


def test_twoSemaphores(tst: Tst) -> None:
    key = tst.platform_safe_key("twoSemaphores")
    sem1 = tst.S(key, 1, tst.S.Create)
    sem2 = tst.S(key)
    assert sem1.acquire()
    assert sem2.release()
    assert sem1.acquire()
    assert sem2.release()


# ----------------------------------------------------------------------------------------------
# helper processes


def test_basicProcesses(tst: Tst, procs: ChildProcesses) -> None:
    key = tst.platform_safe_key("store")
    sem = tst.S(key, 0, tst.S.Create)

    acquire = helper(procs, tst.impl, "acquire", key.toString())
    # Qt: waitForFinished(10 s), then the helper must still be running.
    sem_probe.wait_until_waiting(key, acquire)
    assert acquire.proc.poll() is None
    assert sem_probe.value(key) == 0
    acquire.kill()

    release = helper(procs, tst.impl, "release", key.toString())
    assert finish(release) == (0, "done releasing\n")
    assert acquire.proc.poll() is not None
    # Beyond Qt: System V undoes the helper's release when it exits (SEM_UNDO); POSIX keeps it.
    assert sem_probe.value(key) == (1 if tst.is_posix else 0)
    del sem


PROCESS_ROWS = [pytest.param(n, id=f"{n} process ({i})") for i in range(5) for n in (1, 3, 10)]


@pytest.mark.parametrize("processes", PROCESS_ROWS)
def test_processes(tst: Tst, procs: ChildProcesses, processes: int) -> None:
    key = tst.platform_safe_key("store")
    sem = tst.S(key, 1, tst.S.Create)

    consumers = [
        helper(procs, tst.impl, "acquirerelease", key.toString()) for _ in range(processes)
    ]
    for consumer in consumers:
        result = consumer.finish(HELPER_TIMEOUT)
        assert result.returncode == 0, result.stderr
    assert sem_probe.value(key) == 1  # beyond Qt: every token came back
    del sem


def test_undo(tst: Tst, procs: ChildProcesses) -> None:
    key = tst.platform_safe_key("store")
    sem = tst.S(key, 1, tst.S.Create)
    assert finish(helper(procs, tst.impl, "acquire", key.toString())) == (0, "done aquiring\n")

    if tst.is_posix:
        # Qt: QSKIP("This test only checks a System V behavior."). Checked instead: POSIX has
        # no undo, the token stays taken and the next acquirer waits.
        assert sem_probe.value(key) == 0
        second = helper(procs, tst.impl, "acquire", key.toString())
        sem_probe.wait_until_waiting(key, second)
        second.kill()
        return

    # At process exit the kernel should auto undo
    assert sem_probe.value(key) == 1  # beyond Qt

    assert finish(helper(procs, tst.impl, "acquire", key.toString())) == (0, "done aquiring\n")
    del sem


def test_initialValue(tst: Tst, procs: ChildProcesses) -> None:
    key = tst.platform_safe_key("store")
    sem = tst.S(key, 1, tst.S.Create)

    assert finish(helper(procs, tst.impl, "acquire", key.toString())) == (0, "done aquiring\n")
    # Beyond Qt: System V gave the token back at exit, POSIX did not.
    assert sem_probe.value(key) == (0 if tst.is_posix else 1)

    acquire = helper(procs, tst.impl, "acquire", key.toString(), "2")
    # Qt: waitForFinished(10 s), then the helper must still be running.
    sem_probe.wait_until_waiting(key, acquire)
    assert acquire.proc.poll() is None
    assert sem_probe.value(key) == 0
    acquire.kill()

    release = helper(procs, tst.impl, "release", key.toString())
    assert finish(release) == (0, "done releasing\n")
    assert acquire.proc.poll() is not None
    del sem


def test_helper_usage(procs: ChildProcesses, impl: Impl) -> None:
    """The helper keeps Qt's protocol: usage error → 1, unknown function → warning and 0."""
    result = procs.run(procs.python(ACQUIRE_RELEASE, "--impl", impl.name, "acquire"))
    assert result.returncode == 1
    assert "Please call the helper" in result.stderr
    result = procs.run(procs.python(ACQUIRE_RELEASE, "--impl", impl.name, "frobnicate", "posix:"))
    assert result.returncode == 0
    assert "Unknown function frobnicate" in result.stderr
