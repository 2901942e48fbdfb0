//! `lock()` and `unlock()`: the hot paths (no mutex, one atomic read-modify-write each for the
//! robust mutex and Qt's semaphore) and the slow ones (waits, semaphores, dead holders).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::qt_errors::{internal_lock_error, lock_error};
use super::{Handle, State, Target, HOLDS_ALL};
use crate::error::{Error, ErrorKind};
use crate::key::Backend;
use crate::lock::paired::Partner;
use crate::lock::posix_sem::PosixSemaphore;
use crate::lock::robust_mutex::RobustLock;
use crate::lock::sysv_sem::SysVSemaphore;
use crate::lock::{held, Acquired, LockFailure};
use crate::segment::Attachment;
use crate::sys::published::Quiescence;
use crate::sys::{process, Errno};
use crate::testpoint;
use crate::wait::{wait_in_slices, Deadline, Interrupt, Waited};

/// What an acquisition got.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockOutcome {
    acquired: Acquired,
    /// `HOLDS_ALL` or `HOLDS_SEMAPHORE`.
    holds: u8,
    /// The thread token of the holder (semaphore locks).
    token: u64,
}

/// A lock taken for an internal operation (create/attach/detach/remove of a System V segment).
pub(super) struct Taken {
    pub(super) sem: Arc<SysVSemaphore>,
    /// The lock was taken from a holder that died, and no lock() has reported it yet.
    pub(super) unreported_death: bool,
}

#[inline(always)]
fn pid() -> u32 {
    u32::try_from(process::pid()).unwrap_or(0)
}

impl Handle {
    // -----------------------------------------------------------------------------------------
    // Hot paths.

    /// `lock()` without waiting and without the state mutex: `Some(owner_died)` if it took the
    /// lock, `None` if [`Self::lock_with`] must decide (busy, held already, a semaphore lock, a
    /// forked child, damaged memory, an error).
    #[inline]
    pub fn try_lock_now(&self, quiescent: &Quiescence) -> Option<bool> {
        let fast = &self.fast;
        if fast.generation.load(Ordering::Relaxed) != process::fork_generation_cached()
            || fast.held_by.load(Ordering::Relaxed) != 0
        {
            return None;
        }
        let target = fast.target.load(quiescent)?;
        let Target::Paired {
            attachment,
            control,
            semaphore,
        } = target
        else {
            return None;
        };
        if attachment.lost_pages() {
            return None;
        }
        let lock = &control.control().lock;
        let died = match lock.try_lock() {
            Ok(Some(Acquired::Locked)) => false,
            Ok(Some(Acquired::OwnerDied)) => {
                recover_partner(attachment, lock, semaphore.as_deref());
                true
            }
            _ => return None,
        };
        testpoint::step("lock:owned");
        match semaphore {
            Some(sem) => match lock.take_partner(sem.semaphore(), pid()) {
                Ok(true) => {}
                // A Qt process holds it, or it failed: the slow path waits, or reports.
                _ => return abandon(lock),
            },
            None => lock.note_holder(pid()),
        }
        if !fast
            .held_target
            .publish_same(&fast.target, target, quiescent)
        {
            // Replaced meanwhile by another thread: not this handle's lock any more.
            let _ = lock.release(semaphore.as_deref().map(PosixSemaphore::semaphore));
            return None;
        }
        fast.holds.store(HOLDS_ALL, Ordering::Relaxed);
        fast.holder_tid.store(lock.owner_tid(), Ordering::Relaxed);
        fast.owner_died.store(died, Ordering::Relaxed);
        fast.held_by
            .store(process::thread_self(), Ordering::Release);
        testpoint::step("lock:acquired");
        Some(died)
    }

    /// `unlock()` of a lock this thread took through a hot path or a slow one, without the state
    /// mutex: `Some(true)` if it unlocked, `None` if [`Self::unlock`] must decide.
    #[inline]
    pub fn unlock_now(&self, quiescent: &Quiescence) -> Option<bool> {
        let fast = &self.fast;
        if fast.generation.load(Ordering::Relaxed) != process::fork_generation_cached()
            || fast.held_by.load(Ordering::Relaxed) != process::thread_self()
            || fast.holds.load(Ordering::Relaxed) != HOLDS_ALL
        {
            return None;
        }
        let Target::Paired {
            control, semaphore, ..
        } = fast.held_target.load(quiescent)?
        else {
            return None;
        };
        testpoint::step("unlock:begin");
        control
            .control()
            .lock
            .release(semaphore.as_deref().map(PosixSemaphore::semaphore))
            .ok()?;
        fast.held_by.store(0, Ordering::Release);
        fast.held_target.publish(None);
        testpoint::step("unlock:released");
        Some(true)
    }

    // -----------------------------------------------------------------------------------------
    // Slow paths.

    /// If this handle holds the lock: whether its holder before had died (`Some`). A lock
    /// whose holder thread ended without unlocking is nobody's: it is settled (given back,
    /// its death kept for the next lock() to report) and `None` returned.
    /// When another thread holds the lock through this handle: gives that thread a moment to
    /// be seen as ended if it is ending. A thread that returned from its work (Python's
    /// `join()` returns then) still runs its C library exit for a moment: its thread-local
    /// destructors, and the kernel's release of a robust mutex it held. A decision that the
    /// holder is alive, taken in that moment, would stick; so it waits for the end to show,
    /// at most [`HOLDER_END_WAIT`], and only while the holder is another thread.
    pub(super) fn let_ending_holder_finish(&self) {
        let me = process::thread_self();
        let started = std::time::Instant::now();
        loop {
            let holder = self.fast.held_by.load(Ordering::Acquire);
            if holder == 0 || holder == me || self.holder_ended(&self.state()) {
                return;
            }
            if started.elapsed() >= HOLDER_END_WAIT {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn already_held(&self, state: &mut State) -> Option<bool> {
        if self.fast.held_by.load(Ordering::Acquire) == 0 {
            return None;
        }
        if self.holder_ended(state) {
            self.settle_ended_holder(state);
            return None;
        }
        Some(self.fast.owner_died.load(Ordering::Relaxed))
    }

    /// The `Arc` of the target this handle holds.
    pub(super) fn held_arc(&self, state: &State) -> Option<Arc<Target>> {
        let held = &self.fast.held_target;
        state
            .target
            .iter()
            .chain(state.retired_targets.iter())
            .find(|t| held.is(t))
            .cloned()
    }

    /// Whether the thread that holds this handle's lock has ended.
    pub(super) fn holder_ended(&self, state: &State) -> bool {
        let Some(target) = self.held_arc(state) else {
            return false;
        };
        match &*target {
            Target::Paired { control, .. }
                if self.fast.holds.load(Ordering::Relaxed) == HOLDS_ALL =>
            {
                // Only the holder thread can unlock the robust mutex, and it takes the handle's
                // "held" mark off right after: a mutex that no longer names the holder thread
                // was released by the kernel, for a thread that ended (and may have been taken
                // by someone else since).
                control.control().lock.owner_tid() != self.fast.holder_tid.load(Ordering::Relaxed)
            }
            _ => held::thread_has_ended(self.fast.holder_token.load(Ordering::Relaxed)),
        }
    }

    /// Settles a lock whose holder thread ended: a robust mutex was released by the kernel (the
    /// next locker reports the death and gives Qt's semaphore back); a semaphore is given back
    /// here, its death kept for the next lock() to report.
    pub(super) fn settle_ended_holder(&self, state: &mut State) {
        if let Some(target) = self.held_arc(state) {
            let holds = self.fast.holds.load(Ordering::Relaxed);
            let token = self.fast.holder_token.load(Ordering::Relaxed);
            match &*target {
                Target::Paired { .. } if holds == HOLDS_ALL => {}
                Target::Paired {
                    semaphore: Some(sem),
                    ..
                }
                | Target::Semaphore(sem) => {
                    // Unless a waiter of this process took it over from the ended thread.
                    if held::release_for_ended(held::Identity::Posix(sem.name()), token) {
                        let _ = sem.semaphore().post();
                        state.unreported_death = true;
                    }
                }
                Target::Paired { .. } => {}
                Target::SysV(sem) => {
                    if held::release_for_ended(held::Identity::SysV(sem.native_key()), token) {
                        let _ = sem.unlock(true);
                    }
                }
            }
        }
        self.clear_held();
    }

    pub(super) fn clear_held(&self) {
        self.fast.held_by.store(0, Ordering::Release);
        self.fast.held_target.publish(None);
    }

    /// `QSharedMemory::lock()` with a timeout and an interrupt check: waits at most `timeout`
    /// (`None`: as long as it takes), running `interrupt` between wait slices (at least every
    /// 100 ms); if it returns true, the wait ends with a `LockError` "interrupted" that is not
    /// recorded. Returns whether the previous holder died while holding the lock.
    ///
    /// # Errors
    /// `LockError`: no lock set up yet, timed out, would deadlock, interrupted, or an OS error.
    pub fn lock_with(
        &self,
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> Result<bool, Error> {
        self.let_ending_holder_finish();
        let target = {
            let mut state = self.state();
            if let Some(owner_died) = self.already_held(&mut state) {
                return Ok(owner_died);
            }
            let Some(target) = state.target.clone() else {
                if state.key.is_empty() && state.key.key_type().backend() == Some(Backend::Posix) {
                    // Qt's semaphore tried its (empty) key and kept the error, which the next
                    // attach() reports as its initKey failure.
                    state.empty_posix_key_failed = true;
                }
                return Err(self.record(
                    &mut state,
                    Error::new(ErrorKind::LockError, "QSharedMemory::lock: unable to lock"),
                ));
            };
            if let Some(error) =
                Self::lost_memory_error(&state, "QSharedMemory::lock", ErrorKind::LockError)
            {
                return Err(self.record(&mut state, error));
            }
            match &*target {
                // Locked before create(), with Qt's semaphore alone: the one this handle kept
                // may have been unlinked with the segment it last used (by its last detacher);
                // lock the one that has the name, which every other process locks.
                Target::Semaphore(sem) if !sem.still_named() => {
                    match self.reopen_posix_semaphore(&mut state) {
                        Ok(target) => target,
                        Err(e) => return Err(self.record(&mut state, e)),
                    }
                }
                _ => target,
            }
        };
        let outcome = acquire(&target, Deadline::after(timeout), interrupt);
        self.finish_lock(&target, outcome)
    }

    /// One attempt without waiting: `Ok(None)` if another holder has the lock (not an error).
    ///
    /// # Errors
    /// As [`Self::lock_with`], except that a busy lock is `Ok(None)`.
    pub fn try_lock(&self) -> Result<Option<bool>, Error> {
        match self.lock_with(Some(Duration::ZERO), &mut crate::wait::uninterrupted) {
            Ok(died) => Ok(Some(died)),
            Err(e) if e.os_error() == Some(Errno::ETIMEDOUT) => {
                // Busy is no error here: put back what the attempt recorded.
                let mut state = self.state();
                if state.last_error.as_ref() == Some(&e) {
                    state.last_error = None;
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Records what a lock wait got, if the handle is still what it was when the wait began
    /// (another thread may have detached it, given it another key, or locked it meanwhile);
    /// otherwise the lock is given back.
    fn finish_lock(
        &self,
        target: &Arc<Target>,
        outcome: Result<LockOutcome, LockFailure>,
    ) -> Result<bool, Error> {
        let mut state = self.state();
        let got = match outcome {
            Ok(got) => got,
            Err(LockFailure::Interrupted) => return Err(lock_error(LockFailure::Interrupted)),
            Err(failure) => return Err(self.record(&mut state, lock_error(failure))),
        };
        let unchanged = state
            .target
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, target))
            && self.fast.held_by.load(Ordering::Acquire) == 0;
        if !unchanged {
            give_back(target, got);
            return Err(self.record(
                &mut state,
                Error::new(
                    ErrorKind::LockError,
                    "QSharedMemory::lock: unable to lock (the handle changed while waiting)",
                ),
            ));
        }
        // The memory may have been lost while the lock was being taken (the mutex itself lives
        // in a file): then give the lock back and refuse.
        if let Some(error) =
            Self::lost_memory_error(&state, "QSharedMemory::lock", ErrorKind::LockError)
        {
            give_back(target, got);
            return Err(self.record(&mut state, error));
        }
        let died =
            got.acquired == Acquired::OwnerDied || std::mem::take(&mut state.unreported_death);
        self.fast.held_target.publish(Some(target));
        self.fast.holds.store(got.holds, Ordering::Relaxed);
        self.fast.holder_token.store(got.token, Ordering::Relaxed);
        let tid = match &**target {
            Target::Paired { control, .. } => control.control().lock.owner_tid(),
            _ => 0,
        };
        self.fast.holder_tid.store(tid, Ordering::Relaxed);
        self.fast.owner_died.store(died, Ordering::Relaxed);
        self.fast
            .held_by
            .store(process::thread_self(), Ordering::Release);
        testpoint::step("lock:acquired");
        Ok(died)
    }

    /// `QSharedMemory::unlock()`. Not holding the lock is an error that Qt does not record.
    ///
    /// # Errors
    /// `LockError`: not locked, locked by another thread (the robust mutex can only be
    /// released by its holder, so this is refused for every backend alike), or an OS error.
    pub fn unlock(&self) -> Result<(), Error> {
        self.let_ending_holder_finish();
        let mut state = self.state();
        let not_locked = || Error::new(ErrorKind::LockError, "QSharedMemory::unlock: not locked");
        let holder = self.fast.held_by.load(Ordering::Acquire);
        if holder == 0 {
            return Err(not_locked());
        }
        if holder != process::thread_self() {
            if self.holder_ended(&state) {
                self.settle_ended_holder(&mut state);
                return Err(not_locked());
            }
            return Err(self.record(
                &mut state,
                Error::with_errno(
                    ErrorKind::LockError,
                    "QSharedMemory::unlock: unable to unlock (locked by another thread)",
                    Errno::EPERM,
                ),
            ));
        }
        let target = self.held_arc(&state);
        testpoint::step("unlock:begin");
        let released = match &target {
            Some(target) => release(target, self.fast.holds.load(Ordering::Relaxed)),
            None => Err(Errno::EINVAL),
        };
        self.clear_held();
        match released {
            Ok(()) => {
                testpoint::step("unlock:released");
                Ok(())
            }
            Err(e) => Err(self.record(
                &mut state,
                Error::with_errno(
                    ErrorKind::LockError,
                    "QSharedMemory::unlock: unable to unlock",
                    e,
                ),
            )),
        }
    }

    /// Takes the System V lock `sem` for an internal operation unless this thread already
    /// holds it (through this handle or another). Call without the state mutex: it may wait.
    pub(super) fn lock_internally(
        &self,
        sem: &Arc<SysVSemaphore>,
        function: &str,
        interrupt: Interrupt<'_>,
    ) -> Result<Option<Taken>, Error> {
        self.lock_internally_within(sem, function, None, interrupt)
    }

    /// [`Self::lock_internally`], waiting at most `timeout` (`None`: as long as it takes).
    pub(super) fn lock_internally_within(
        &self,
        sem: &Arc<SysVSemaphore>,
        function: &str,
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> Result<Option<Taken>, Error> {
        if self.fast.held_by.load(Ordering::Acquire) == process::thread_self()
            || sem.held_by_current_thread()
        {
            // The operation is already exclusive (waiting would deadlock; Qt's does), as the
            // last-detacher check of a System V attachment also assumes.
            return Ok(None);
        }
        let target = Target::SysV(Arc::clone(sem));
        match acquire(&Arc::new(target), Deadline::after(timeout), interrupt) {
            Ok(got) => Ok(Some(Taken {
                sem: Arc::clone(sem),
                unreported_death: got.acquired == Acquired::OwnerDied,
            })),
            Err(failure) => {
                let error = internal_lock_error(function, failure);
                if failure != LockFailure::Interrupted {
                    let mut state = self.state();
                    return Err(self.record(&mut state, error));
                }
                Err(error)
            }
        }
    }
}

/// How long [`Handle::let_ending_holder_finish`] waits for a holder thread's end to show.
const HOLDER_END_WAIT: Duration = Duration::from_millis(200);

/// Gives back an internal lock (a death taken over stays for the next lock() to report).
pub(super) fn unlock_internally(taken: Option<Taken>) {
    if let Some(Taken {
        sem,
        unreported_death,
    }) = taken
    {
        if sem.is_open() {
            let _ = sem.unlock(unreported_death);
        }
        held::mark_released(held::Identity::SysV(sem.native_key()));
    }
}

/// The hot path took the mutex but not Qt's semaphore: give the mutex back (the slow path
/// waits for the semaphore, or reports).
#[cold]
#[inline(never)]
fn abandon(lock: &RobustLock) -> Option<bool> {
    let _ = lock.abandon();
    None
}

/// After taking a paired lock's mutex from a dead holder: settles the dead holder's share of
/// Qt's semaphore (see `lock::paired`).
#[cold]
fn recover_partner(attachment: &Attachment, lock: &RobustLock, semaphore: Option<&PosixSemaphore>) {
    if let Some(sem) = semaphore {
        let others = || {
            attachment
                .posix()
                .is_some_and(|p| p.semaphore_has_other_users())
        };
        lock.recover_partner(&Partner {
            sem: sem.semaphore(),
            others_may_hold: &others,
        });
    }
}

/// Acquires `target`, waiting until `deadline`.
fn acquire(
    target: &Arc<Target>,
    deadline: Deadline,
    interrupt: Interrupt<'_>,
) -> Result<LockOutcome, LockFailure> {
    match &**target {
        Target::Paired {
            attachment,
            control,
            semaphore,
        } => acquire_paired(
            attachment,
            &control.control().lock,
            semaphore.as_deref(),
            deadline,
            interrupt,
        ),
        Target::Semaphore(sem) => {
            let id = held::Identity::Posix(sem.name());
            if held::is_held(id) {
                return Err(LockFailure::WouldDeadlock);
            }
            let got = match sem.semaphore().try_wait() {
                Ok(()) => Waited::Got(Acquired::Locked),
                Err(Errno::EAGAIN) => wait_in_slices(deadline.left(), interrupt, |slice| {
                    if held::take_over_ended(id) {
                        return Ok(Some(Acquired::OwnerDied));
                    }
                    match sem.semaphore().wait_for(slice) {
                        Ok(()) => Ok(Some(Acquired::Locked)),
                        Err(Errno::ETIMEDOUT | Errno::EINTR) => Ok(None),
                        Err(e) => Err(LockFailure::Os(e)),
                    }
                })?,
                Err(e) => return Err(LockFailure::Os(e)),
            };
            let acquired = waited(got)?;
            Ok(LockOutcome {
                acquired,
                holds: HOLDS_ALL,
                token: registered(id, acquired),
            })
        }
        Target::SysV(sem) => {
            if sem.held_by_current_thread() {
                return Err(LockFailure::WouldDeadlock);
            }
            let id = held::Identity::SysV(sem.native_key());
            let first = if deadline.left().is_none() {
                // A semaphore's wait takes a free semaphore at once: without a timeout the
                // separate attempt first (a system call) is skipped.
                None
            } else {
                sem.lock_attempt(None)?
            };
            let acquired = match first {
                Some(got) => got,
                None => waited(wait_in_slices(deadline.left(), interrupt, |slice| {
                    if held::take_over_ended(id) {
                        return Ok(Some(Acquired::OwnerDied));
                    }
                    sem.lock_attempt(Some(slice))
                })?)?,
            };
            Ok(LockOutcome {
                acquired,
                holds: HOLDS_ALL,
                token: registered(id, acquired),
            })
        }
    }
}

/// Registers a semaphore lock just taken as the calling thread's, unless it was taken over from
/// an ended thread of this process (`OwnerDied` here: the registry moved it already). Returns
/// the thread token.
fn registered(id: held::Identity<'_>, acquired: Acquired) -> u64 {
    if acquired == Acquired::OwnerDied && held::is_held(id) {
        process::thread_token()
    } else {
        held::mark_held(id)
    }
}

fn waited<T>(waited: Waited<T>) -> Result<T, LockFailure> {
    match waited {
        Waited::Got(got) => Ok(got),
        Waited::TimedOut => Err(LockFailure::TimedOut),
        Waited::Interrupted => Err(LockFailure::Interrupted),
    }
}

/// The robust mutex, then Qt's semaphore, each within what is left of the deadline.
fn acquire_paired(
    attachment: &Attachment,
    lock: &RobustLock,
    semaphore: Option<&PosixSemaphore>,
    deadline: Deadline,
    interrupt: Interrupt<'_>,
) -> Result<LockOutcome, LockFailure> {
    let mut acquired = lock.try_lock()?;
    if acquired.is_none() && deadline.left() != Some(Duration::ZERO) {
        acquired = lock.spin()?;
    }
    let acquired = match acquired {
        Some(got) => got,
        None => waited(wait_in_slices(deadline.left(), &mut *interrupt, |slice| {
            lock.lock_slice(slice)
        })?)?,
    };
    if acquired == Acquired::OwnerDied {
        recover_partner(attachment, lock, semaphore);
    }
    testpoint::step("lock:owned");
    let Some(sem) = semaphore else {
        lock.note_holder(pid());
        return Ok(LockOutcome {
            acquired,
            holds: HOLDS_ALL,
            token: 0,
        });
    };
    let others = || {
        attachment
            .posix()
            .is_some_and(|p| p.semaphore_has_other_users())
    };
    let partner = Partner {
        sem: sem.semaphore(),
        others_may_hold: &others,
    };
    let took = match lock.take_partner(sem.semaphore(), pid()) {
        Ok(true) => Ok(Waited::Got(())),
        Ok(false) => wait_in_slices(deadline.left(), interrupt, |slice| {
            lock.wait_partner(&partner, pid(), slice)
                .map(|got| got.then_some(()))
        }),
        Err(e) => Err(e),
    };
    match took {
        Ok(Waited::Got(())) => Ok(LockOutcome {
            acquired,
            holds: HOLDS_ALL,
            token: 0,
        }),
        other => {
            let _ = lock.abandon();
            match other {
                Ok(Waited::TimedOut) => Err(LockFailure::TimedOut),
                Ok(_) => Err(LockFailure::Interrupted),
                Err(e) => Err(LockFailure::Os(e)),
            }
        }
    }
}

/// Releases what a holder holds of `target`.
fn release(target: &Target, holds: u8) -> Result<(), Errno> {
    match target {
        Target::Paired {
            control, semaphore, ..
        } if holds == HOLDS_ALL => control
            .control()
            .lock
            .release(semaphore.as_deref().map(PosixSemaphore::semaphore)),
        Target::Paired {
            semaphore: Some(sem),
            ..
        }
        | Target::Semaphore(sem) => {
            let result = sem.semaphore().post();
            held::mark_released(held::Identity::Posix(sem.name()));
            result
        }
        Target::Paired { .. } => Err(Errno::EINVAL),
        Target::SysV(sem) => {
            let result = sem.unlock(false);
            held::mark_released(held::Identity::SysV(sem.native_key()));
            result
        }
    }
}

/// Gives back a lock that a wait got but nobody was told of. A System V death taken over stays
/// for the next lock() to report.
fn give_back(target: &Target, got: LockOutcome) {
    match target {
        Target::SysV(sem) => {
            let _ = sem.unlock(got.acquired == Acquired::OwnerDied);
            held::mark_released(held::Identity::SysV(sem.native_key()));
        }
        _ => {
            let _ = release(target, got.holds);
        }
    }
}
