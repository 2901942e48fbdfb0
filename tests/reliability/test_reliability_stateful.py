"""A Hypothesis state machine: random sequences of QSharedMemory calls against a model of Qt's
semantics.

Three handles in this process (``h0``..``h2``) and one in a child process (``c``, a
``helpers/agent.py``) run random sequences of ``setNativeKey``/``setKey``, ``create``,
``attach`` (ReadWrite or ReadOnly), ``detach``, ``lock``, ``unlock``, ``data()`` reads and
writes, and SIGKILLs of the child, over three keys (a POSIX key, a System V key, a legacy key).
A model of Qt's rules predicts every return value, the error code of every failure Qt defines,
whether each handle is attached and its size, and the bytes every attached handle sees.
Locks are taken with ``lock(0)``, so that a busy lock is a prediction (False) rather than a hang;
a lock held through another handle of this thread is the ``LockError`` qsharedmem gives instead
of Qt's deadlock. After a SIGKILL of the child while it held a lock, the next successful lock
reports ``lockOwnerDied()`` (once), also when a System V create/attach/detach took the dead
holder's lock internally in between.

After every example all handles detach and nothing may be left for its keys: no file, segment,
semaphore or key file (orphans of a killed child are reclaimed by a create()).

``max_examples`` is set explicitly (500), so CI runs that many.
"""

from __future__ import annotations

import dataclasses
import itertools

import qsharedmem
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support.agent import Agent, start_agent
from support.keys import KeyRegistry
from support.processes import ChildProcesses

S = qsharedmem.QSharedMemory
K = qsharedmem.QNativeIpcKey
HANDLES = ("h0", "h1", "h2")
ACTORS = (*HANDLES, "c")
KEYS = ("posix", "sysv", "legacy")
SIZES = (1, 100, 4096, 5000)
EXAMPLES = 500
STEPS = 60


@dataclasses.dataclass
class Segment:
    size: int
    attached: set[str]
    byte0: int = 0
    # The processes (PROCESS_SELF or a child's tag) that created it and that attached or
    # detached it last (System V's shm_cpid and shm_lpid).
    creator: str = ""
    last_user: str = ""
    orphan: bool = False  # every attacher died without detaching: it stays until reclaimed

    def reclaimable(self, which: str, live_child: str) -> bool | None:
        """Whether create() reclaims this orphan. POSIX: always. System V: never while its
        creator or last user is another live process (here: the running child); otherwise
        only if the key's lock set survived (src/segment/sysv.rs), which depends on which
        handle made the set and when it let go, history this model does not keep: None, either
        outcome is right (tests/reliability/test_reliability_round2.py and
        test_reliability_crash.py check those rules one by one)."""
        if not self.orphan:
            return False
        if which == "posix":
            return True
        if live_child in (self.creator, self.last_user):
            return False
        return None


PROCESS_SELF = "self"


@dataclasses.dataclass
class Handle:
    key: str | None = None
    attached: bool = False
    writable: bool = False
    locked: bool = False


SYSV_KEYS = ("sysv", "legacy")


def make_machine(make_key: KeyRegistry, procs: ChildProcesses) -> type:
    counter = itertools.count()
    shared: dict[str, Agent | None] = {"child": None}  # one child for all examples
    child_runs = [0]  # how many children were started: the tag of the running one

    class QtModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            n = next(counter)
            self.names = {k: make_key(f"sm{n}-{k}") for k in KEYS}
            self.keys = {
                "posix": S.platformSafeKey(self.names["posix"], K.Type.PosixRealtime),
                "sysv": S.platformSafeKey(self.names["sysv"], K.Type.SystemV),
                "legacy": S.legacyNativeKey(self.names["legacy"]),
            }
            self.objects = {h: S() for h in HANDLES}
            self.model = {a: Handle() for a in ACTORS}
            self.segments: dict[str, Segment] = {}
            self.holder: dict[str, str | None] = {k: None for k in KEYS}
            self.owner_died: dict[str, bool] = {k: False for k in KEYS}
            self.child_used = False  # in this example (preconditions may not look further)

        # -- the child
        def agent(self) -> Agent:
            if shared["child"] is None:
                shared["child"] = start_agent(procs)
                child_runs[0] += 1
            if not self.child_used:
                self.child_used = True
                assert shared["child"].call("new", "c").r is True  # QSharedMemory()
            return shared["child"]

        def call(self, actor: str, *command):
            """Run a command on an actor: a local handle or the child; returns (result, error)."""
            if actor == "c":
                reply = self.agent().call(command[0], "c", *command[1:])
                return reply.r, (reply.e or ["NoError", ""])[0]
            sm = self.objects[actor]
            name, *args = command
            if name == "attach":
                result = sm.attach(S.AccessMode(args[0]))
            elif name == "create":
                result = sm.create(args[0])
            elif name == "lock":
                result = sm.lock(0)
            elif name == "died":
                result = sm.lockOwnerDied()
            else:
                result = getattr(sm, name)(*args)
            return result, sm.error().name

        # -- model helpers
        def blocks(self, actor: str, key: str | None) -> bool:
            """Whether the System V lock of ``key``, which create/attach/detach take, is held by
            another process than ``actor``'s (it would wait for it forever). Handles of this
            process share its one thread: for them the lock is already theirs."""
            holder = self.holder.get(key) if key in SYSV_KEYS else None
            return holder is not None and (holder == "c") != (actor == "c")

        def release(self, actor: str) -> None:
            handle = self.model[actor]
            if handle.locked:
                self.holder[handle.key] = None
                handle.locked = False

        def child_tag(self) -> str:
            """The running child's process tag (none runs: a tag no segment has)."""
            return f"child{child_runs[0]}" if shared["child"] is not None else "none"

        def process_of(self, actor: str) -> str:
            return self.child_tag() if actor == "c" else PROCESS_SELF

        def forget(self, actor: str) -> None:
            """The actor's attachment ends (detach, or re-key)."""
            handle = self.model[actor]
            self.release(actor)
            if handle.attached:
                # (A System V detach takes the lock internally; a dead holder's death is left
                # for the next lock() to report.)
                segment = self.segments[handle.key]
                segment.attached.discard(actor)
                segment.last_user = self.process_of(actor)
                if not segment.attached:
                    # The last detach removes the segment and, for System V, its lock: a
                    # death nobody was told of goes with it.
                    del self.segments[handle.key]
                    self.owner_died[handle.key] = False
                handle.attached = False

        # -- rules
        @initialize(which=st.lists(st.sampled_from(KEYS), min_size=4, max_size=4))
        def give_keys(self, which: list[str]) -> None:
            """Every actor starts with a key (re-keying is a rule of its own)."""
            for actor, key in zip(ACTORS, which, strict=True):
                self.set_key(actor, key)

        @rule(actor=st.sampled_from(ACTORS), which=st.sampled_from(KEYS))
        def set_key(self, actor: str, which: str) -> None:
            handle = self.model[actor]
            if handle.attached and self.blocks(actor, handle.key):
                return  # it detaches first
            if actor == "c":
                assert self.agent().call("key", "c", self.keys[which].toString()).r is True
            elif which == "legacy":
                self.objects[actor].setKey(self.names["legacy"])
            else:
                self.objects[actor].setNativeKey(self.keys[which])
            self.forget(actor)
            handle.key = which

        @rule(actor=st.sampled_from(ACTORS), size=st.sampled_from(SIZES))
        def create(self, actor: str, size: int) -> None:
            handle = self.model[actor]
            if handle.key is None or self.blocks(actor, handle.key):
                return
            segment = self.segments.get(handle.key)
            result, error = self.call(actor, "create", size)
            reclaimable = segment is not None and segment.reclaimable(handle.key, self.child_tag())
            if reclaimable is None:
                reclaimable = error != "AlreadyExists"
            if handle.attached or (segment is not None and not reclaimable):
                assert (result, error) == (False, "AlreadyExists")
                return
            assert result is True, error
            if segment is not None:
                # The orphan of a killed child was reclaimed: a new segment, a new lock.
                self.owner_died[handle.key] = False
            me = self.process_of(actor)
            self.segments[handle.key] = Segment(size, {actor}, creator=me, last_user=me)
            handle.attached, handle.writable = True, True

        @rule(actor=st.sampled_from(ACTORS), writable=st.booleans())
        def attach(self, actor: str, writable: bool) -> None:
            handle = self.model[actor]
            if handle.key is None or (not handle.attached and self.blocks(actor, handle.key)):
                return
            segment = self.segments.get(handle.key)
            result, error = self.call(actor, "attach", int(writable))
            if handle.attached:
                assert result is False
                return
            if segment is None:
                assert (result, error) == (False, "NotFound")
                return
            assert result is True, error
            segment.attached.add(actor)
            segment.last_user = self.process_of(actor)
            segment.orphan = False
            handle.attached, handle.writable = True, writable

        @rule(actor=st.sampled_from(ACTORS))
        def detach(self, actor: str) -> None:
            handle = self.model[actor]
            if handle.attached and self.blocks(actor, handle.key):
                return
            result, _ = self.call(actor, "detach")
            assert result is handle.attached
            self.forget(actor)

        @rule(actor=st.sampled_from(ACTORS))
        def lock(self, actor: str) -> None:
            handle = self.model[actor]
            if not handle.attached:
                return  # the lock of an unattached handle depends on its history (Qt too)
            key = handle.key
            result, error = self.call(actor, "lock", 0)
            if handle.locked:
                assert result is True
                return
            if self.holder[key] is not None:
                # Another local handle (same thread: LockError instead of Qt's deadlock), or
                # the child (busy: lock(0) gives up).
                assert (result, error) == (False, "LockError")
                return
            assert result is True, error
            assert self.call(actor, "died")[0] is self.owner_died[key]
            self.owner_died[key] = False
            self.holder[key] = actor
            handle.locked = True

        @rule(actor=st.sampled_from(ACTORS))
        def unlock(self, actor: str) -> None:
            handle = self.model[actor]
            result, _ = self.call(actor, "unlock")
            assert result is handle.locked
            self.release(actor)

        @rule(actor=st.sampled_from(ACTORS), value=st.integers(1, 255))
        def write(self, actor: str, value: int) -> None:
            handle = self.model[actor]
            if not (handle.attached and handle.writable and handle.locked):
                return
            if actor == "c":
                assert self.agent().call("write", "c", 0, f"{value:02x}").r is True
            else:
                self.objects[actor].data()[0] = value
            self.segments[handle.key].byte0 = value

        @rule(actor=st.sampled_from(ACTORS))
        def read(self, actor: str) -> None:
            handle = self.model[actor]
            if actor == "c":
                if handle.attached:
                    seen = self.agent().call("read", "c", 0, 1).r
                    assert seen == f"{self.segments[handle.key].byte0:02x}"
                return
            data = self.objects[actor].constData()
            if handle.attached:
                assert data[0] == self.segments[handle.key].byte0
            else:
                assert data is None

        @precondition(lambda self: self.model["c"].attached)
        @rule(holding=st.booleans())
        def kill_child(self, holding: bool) -> None:
            """SIGKILL the child, after it took the lock if ``holding`` (and it was free)."""
            if holding:
                self.lock("c")
            self.agent().kill()
            shared["child"] = None
            self.child_used = False
            handle = self.model["c"]
            if handle.locked:
                self.owner_died[handle.key] = True
                self.holder[handle.key] = None
            if handle.attached:
                segment = self.segments[handle.key]
                segment.attached.discard("c")
                if not segment.attached:
                    segment.orphan = True  # nobody detached it: it stays until reclaimed
            self.model["c"] = Handle()

        # -- invariants
        @invariant()
        def every_handle_sees_the_model(self) -> None:
            for actor in HANDLES:
                sm, handle = self.objects[actor], self.model[actor]
                assert sm.isAttached() is handle.attached
                if handle.attached:
                    segment = self.segments[handle.key]
                    assert sm.size() == segment.size
                    assert sm.constData()[0] == segment.byte0
                    assert sm.data().readonly is not handle.writable
                else:
                    assert sm.size() == 0
                    assert sm.data() is None

        def teardown(self) -> None:
            for actor in ACTORS:  # unlock everything first: then no detach can wait
                if self.model[actor].locked:
                    assert self.call(actor, "unlock")[0] is True
                    self.release(actor)
                elif actor == "c" and self.child_used:
                    # Also what the model does not know of: after a failed assertion in a rule,
                    # the child may hold a lock, and a detach here would wait for it forever
                    # instead of letting Hypothesis report the failure.
                    self.call(actor, "unlock")
            for actor in ACTORS:
                if self.model[actor].attached:
                    assert self.call(actor, "detach")[0] is True
                    self.forget(actor)
            if self.child_used:
                assert shared["child"].call("drop", "c").r is True
            self.objects.clear()
            for which, segment in self.segments.items():
                assert segment.orphan and not segment.attached, (which, segment)
                reclaim = S(self.keys[which])
                # An orphan goes by being reclaimed, or by its last detach when create()
                # leaves it to a live process (System V).
                if not reclaim.create(1):
                    assert segment.reclaimable(which, self.child_tag()) is not True
                    assert reclaim.error() == S.SharedMemoryError.AlreadyExists
                    assert reclaim.attach(), reclaim.errorString()
                assert reclaim.detach()
            for which in KEYS:
                assert make_key.leftovers(self.names[which]) == [], which

    return QtModel


def test_random_sequences_follow_qt_semantics(make_key: KeyRegistry, procs: ChildProcesses) -> None:
    machine = make_machine(make_key, procs)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            # No explain phase: it traces every line and takes minutes, hiding the failure.
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        ),
    )
