//! The cross-process lock behind `QSharedMemory::lock()`.
//!
//! Which primitive a segment uses depends on who made it (SPEC §5):
//!
//! | segment | lock | holder dies |
//! |---|---|---|
//! | qsharedmem POSIX segment | robust process-shared mutex in the control page | next locker gets it, owner-died reported |
//! | System V (Qt's and ours) | Qt's semaphore, `SEM_UNDO` | kernel gives it back; owner-died reported when the dead holder was a qsharedmem process |
//! | foreign POSIX (Qt's, multiprocessing's) | Qt's named semaphore | stays held (Qt's limitation); `lock` with a timeout bounds the wait |
//!
//! Every wait is cut into slices of at most [`WAIT_SLICE`]; between slices the caller's
//! interrupt check runs (Python uses it to run signal handlers, so Ctrl-C works).
//!
//! The System V owner-died detection: sets that qsharedmem creates have a second semaphore, a
//! "consistent" token (value 1). A qsharedmem locker takes semaphore 0 *with* `SEM_UNDO` and the
//! token *without* it, atomically, and gives both back on unlock. If the holder dies, the kernel
//! returns semaphore 0 but the token stays taken; the next locker finds the lock free and the
//! token missing, takes the lock alone, reports that the owner died, and restores the token when
//! it unlocks. Qt only ever touches semaphore 0, so it interoperates unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::segment::Attachment;
use crate::semaphore::{PosixSemaphore, SysVSemaphore};
use crate::sys::mutex::{self, Acquired as MutexAcquired};
use crate::sys::process;
use crate::sys::sysv::SemOp;
use crate::sys::Errno;

/// The longest a lock wait blocks before it runs the interrupt check again.
pub const WAIT_SLICE: Duration = Duration::from_millis(100);

/// How [`wait_in_slices`] ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waited<T> {
    /// The attempt succeeded.
    Got(T),
    /// The timeout passed first.
    TimedOut,
    /// The interrupt check asked to stop waiting.
    Interrupted,
}

/// Waits by calling `attempt(slice)` with slices of at most [`WAIT_SLICE`] until it returns
/// `Some`, `timeout` passes (`None`: never) or `interrupt`, which runs between slices, returns
/// true. `attempt` blocks for at most its slice and returns `None` when the slice ends empty.
pub(crate) fn wait_in_slices<T, E>(
    timeout: Option<Duration>,
    interrupt: &mut dyn FnMut() -> bool,
    mut attempt: impl FnMut(Duration) -> Result<Option<T>, E>,
) -> Result<Waited<T>, E> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            None => WAIT_SLICE,
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Waited::TimedOut);
                }
                left.min(WAIT_SLICE)
            }
        };
        if let Some(got) = attempt(slice)? {
            return Ok(Waited::Got(got));
        }
        if interrupt() {
            return Ok(Waited::Interrupted);
        }
    }
}

/// How a successful acquisition went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Normally.
    Locked,
    /// The previous holder died while holding the lock.
    OwnerDied,
}

/// Why an acquisition failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockFailure {
    /// The timeout passed.
    TimedOut,
    /// The interrupt check asked to stop waiting.
    Interrupted,
    /// The calling thread already holds this lock (through another handle): waiting would
    /// never end.
    WouldDeadlock,
    /// The OS refused.
    Os(Errno),
}

/// The lock primitive of one segment.
#[derive(Clone, Debug)]
pub(crate) enum LockPrimitive {
    /// The robust mutex in a qsharedmem segment's control page.
    Mutex(Arc<Attachment>),
    /// A System V semaphore set (Qt's, or ours with the consistent token).
    SysV(Arc<SysVSemaphore>),
    /// A POSIX named semaphore (Qt's, for foreign POSIX segments).
    Posix(Arc<PosixSemaphore>),
}

/// Which lock a thread holds, for same-thread relock detection of semaphores (which, unlike the
/// error-checking mutex, do not know their holder): the kind and the semaphore's name. Looked
/// up by reference, so that only taking a lock allocates (once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Identity<'a> {
    SysV(&'a str),
    Posix(&'a str),
}

#[derive(Debug)]
enum HeldLock {
    SysV(String),
    Posix(String),
}

impl HeldLock {
    fn new(id: Identity<'_>) -> Self {
        match id {
            Identity::SysV(key) => Self::SysV(key.to_owned()),
            Identity::Posix(name) => Self::Posix(name.to_owned()),
        }
    }

    fn is(&self, id: Identity<'_>) -> bool {
        match (self, id) {
            (Self::SysV(held), Identity::SysV(key)) => held == key,
            (Self::Posix(held), Identity::Posix(name)) => held == name,
            _ => false,
        }
    }
}

/// Semaphore locks held by threads of this process: (lock, thread id).
static HELD: Mutex<Vec<(HeldLock, i32)>> = Mutex::new(Vec::new());
/// How many entries `HELD` has: a thread that holds no semaphore lock at all (the usual case
/// when it is about to take one) answers without the registry's mutex.
static HELD_COUNT: AtomicUsize = AtomicUsize::new(0);

fn held() -> std::sync::MutexGuard<'static, Vec<(HeldLock, i32)>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_held(id: Identity<'_>) -> bool {
    if HELD_COUNT.load(Ordering::Acquire) == 0 {
        return false;
    }
    let tid = process::thread_id();
    held()
        .iter()
        .any(|(held, holder)| held.is(id) && *holder == tid)
}

fn mark_held(id: Identity<'_>) {
    let mut list = held();
    list.push((HeldLock::new(id), process::thread_id()));
    HELD_COUNT.store(list.len(), Ordering::Release);
}

fn mark_released(id: Identity<'_>) {
    let tid = process::thread_id();
    let mut list = held();
    let at = list
        .iter()
        .position(|(held, t)| held.is(id) && *t == tid)
        // Released from another thread than the one that took it.
        .or_else(|| list.iter().position(|(held, _)| held.is(id)));
    if let Some(at) = at {
        list.swap_remove(at);
        HELD_COUNT.store(list.len(), Ordering::Release);
    }
}

impl LockPrimitive {
    fn identity(&self) -> Option<Identity<'_>> {
        match self {
            Self::Mutex(_) => None,
            Self::SysV(sem) => Some(Identity::SysV(sem.native_key())),
            Self::Posix(sem) => Some(Identity::Posix(sem.name())),
        }
    }

    /// Whether the calling thread holds this lock (semaphores: through any handle of this
    /// process; the mutex answers for itself).
    pub(crate) fn held_by_current_thread(&self) -> bool {
        self.identity().is_some_and(is_held)
    }

    fn note_acquired(&self) {
        if let Some(id) = self.identity() {
            mark_held(id);
        }
    }

    fn note_released(&self) {
        if let Some(id) = self.identity() {
            mark_released(id);
        }
    }

    /// Whether both are the very same lock object of this process.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Mutex(a), Self::Mutex(b)) => Arc::ptr_eq(a, b),
            (Self::SysV(a), Self::SysV(b)) => Arc::ptr_eq(a, b),
            (Self::Posix(a), Self::Posix(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// One attempt without waiting: `Ok(None)` if someone else holds the lock.
    pub(crate) fn try_acquire(&self) -> Result<Option<Acquired>, LockFailure> {
        if self.held_by_current_thread() {
            return Err(LockFailure::WouldDeadlock);
        }
        let got = match self {
            Self::Mutex(att) => try_mutex(att)?,
            Self::SysV(sem) => try_sysv(sem)?,
            Self::Posix(sem) => match sem.semaphore().try_wait() {
                Ok(()) => Some(Acquired::Locked),
                Err(Errno::EAGAIN) => None,
                Err(e) => return Err(LockFailure::Os(e)),
            },
        };
        if got.is_some() {
            self.note_acquired();
        }
        Ok(got)
    }

    /// Acquires the lock, waiting at most `timeout` (`None`: for as long as it takes). Between
    /// wait slices `interrupt` runs; if it returns true, the wait ends with `Interrupted`.
    pub(crate) fn acquire(
        &self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<Acquired, LockFailure> {
        match self {
            // A semaphore's wait takes a free semaphore at once, so when the wait is unbounded
            // (lock() without a timeout; create, attach and detach) the separate attempt
            // first, a system call for System V and two when the lock is busy, is skipped.
            Self::SysV(_) | Self::Posix(_) if timeout.is_none() => {
                if self.held_by_current_thread() {
                    return Err(LockFailure::WouldDeadlock);
                }
            }
            _ => {
                if let Some(got) = self.try_acquire()? {
                    return Ok(got);
                }
                if let Self::Mutex(att) = self {
                    if timeout != Some(Duration::ZERO) {
                        if let Some(got) = spin_for_mutex(att)? {
                            self.note_acquired();
                            return Ok(got);
                        }
                    }
                }
            }
        }
        let got = wait_in_slices(timeout, interrupt, |slice| match self {
            Self::Mutex(att) => wait_mutex(att, slice),
            Self::SysV(sem) => wait_sysv(sem, slice),
            Self::Posix(sem) => match sem.semaphore().wait_for(slice) {
                Ok(()) => Ok(Some(Acquired::Locked)),
                Err(Errno::ETIMEDOUT | Errno::EINTR) => Ok(None),
                Err(e) => Err(LockFailure::Os(e)),
            },
        })?;
        match got {
            Waited::Got(got) => {
                self.note_acquired();
                Ok(got)
            }
            Waited::TimedOut => Err(LockFailure::TimedOut),
            Waited::Interrupted => Err(LockFailure::Interrupted),
        }
    }

    /// Releases the lock (for System V with the consistent token, also after a recovery: the
    /// death was reported, and the lock is consistent again).
    pub(crate) fn release(&self) -> Result<(), Errno> {
        let result = match self {
            Self::Mutex(att) => {
                let control = att.control().ok_or(Errno::EINVAL)?;
                control.set_lock_owner(0);
                crate::testpoint::step("unlock:owner-cleared");
                mutex::unlock(control.mapping(), control.mutex_offset())
            }
            Self::SysV(sem) => release_sysv(sem),
            Self::Posix(sem) => sem.semaphore().post(),
        };
        if result.is_ok() {
            self.note_released();
        }
        result
    }

    /// Releases a lock that nobody was told of (taken for an internal operation, or by a wait
    /// whose handle went away). If it was taken from a dead holder (`death_unreported`), the
    /// System V consistent token stays missing, so that the next lock() reports the death.
    pub(crate) fn release_unreported(&self, death_unreported: bool) -> Result<(), Errno> {
        match self {
            Self::SysV(sem) if death_unreported => {
                let result = sem.operate(give_back_ops(sem, true), None);
                if result.is_ok() {
                    self.note_released();
                }
                result
            }
            _ => self.release(),
        }
    }

    /// Forgets that the calling thread holds this lock without touching the OS object (used
    /// when the object was removed while held).
    pub(crate) fn forget_held(&self) {
        self.note_released();
    }
}

fn mutex_result(att: &Attachment, got: MutexAcquired) -> Result<Acquired, LockFailure> {
    let control = att.control().ok_or(LockFailure::Os(Errno::EINVAL))?;
    let acquired = match got {
        MutexAcquired::Locked => Acquired::Locked,
        MutexAcquired::OwnerDied => {
            // We cannot know whether the caller can repair the data; we report the death and
            // keep the mutex usable (otherwise unlocking would make it unrecoverable forever).
            mutex::mark_consistent(control.mapping(), control.mutex_offset())
                .map_err(LockFailure::Os)?;
            control.count_owner_death();
            Acquired::OwnerDied
        }
    };
    crate::testpoint::step("lock:owned");
    control.set_lock_owner(process::pid());
    Ok(acquired)
}

fn try_mutex(att: &Attachment) -> Result<Option<Acquired>, LockFailure> {
    let control = att.control().ok_or(LockFailure::Os(Errno::EINVAL))?;
    match mutex::try_lock(control.mapping(), control.mutex_offset()) {
        Ok(got) => mutex_result(att, got).map(Some),
        Err(Errno::EBUSY) => Ok(None),
        Err(Errno::EDEADLK) => Err(LockFailure::WouldDeadlock),
        Err(e) => Err(LockFailure::Os(e)),
    }
}

/// How many times a waiter polls a busy mutex before it sleeps in the kernel, with a pause
/// instruction between polls: 2.3 µs on this project's AMD EPYC machine (pause is slower on
/// recent Intel cores), as many polls as glibc's adaptive mutexes spin. 30 polls already
/// gave the same hand-off rates in `benchmarks/`; 1000 gave nothing more.
const SPIN_POLLS: u32 = 100;

/// Polls a busy mutex for a few microseconds before sleeping on it. Critical sections are
/// usually far shorter than a futex sleep and wake-up (each a system call, plus a context
/// switch for the sleeper), so a waiter that spins briefly takes the lock over without either.
/// It polls by reading (see [`mutex::looks_free`]) and only tries to lock when the mutex looks
/// free. The spin is bounded, so a holder that was descheduled costs a waiter microseconds.
fn spin_for_mutex(att: &Attachment) -> Result<Option<Acquired>, LockFailure> {
    for _ in 0..SPIN_POLLS {
        std::hint::spin_loop();
        if mutex_looks_free(att) {
            if let Some(got) = try_mutex(att)? {
                return Ok(Some(got));
            }
        }
    }
    Ok(None)
}

fn mutex_looks_free(att: &Attachment) -> bool {
    att.control()
        .is_none_or(|control| mutex::looks_free(control.mapping(), control.mutex_offset()))
}

fn wait_mutex(att: &Attachment, slice: Duration) -> Result<Option<Acquired>, LockFailure> {
    let control = att.control().ok_or(LockFailure::Os(Errno::EINVAL))?;
    match mutex::lock_for(control.mapping(), control.mutex_offset(), slice) {
        Ok(got) => mutex_result(att, got).map(Some),
        Err(Errno::ETIMEDOUT | Errno::EINTR) => Ok(None),
        Err(Errno::EDEADLK) => Err(LockFailure::WouldDeadlock),
        Err(e) => Err(LockFailure::Os(e)),
    }
}

const TAKE_LOCK: SemOp = SemOp {
    num: 0,
    delta: -1,
    undo: true,
    no_wait: false,
};
const TAKE_TOKEN: SemOp = SemOp {
    num: 1,
    delta: -1,
    undo: false,
    no_wait: true,
};
const TOKEN_MISSING: SemOp = SemOp {
    num: 1,
    delta: 0,
    undo: false,
    no_wait: true,
};
const GIVE_TOKEN: SemOp = SemOp {
    num: 1,
    delta: 1,
    undo: false,
    no_wait: false,
};
const GIVE_LOCK: SemOp = SemOp {
    num: 0,
    delta: 1,
    undo: true,
    no_wait: false,
};

fn nowait(op: SemOp) -> SemOp {
    SemOp {
        no_wait: true,
        ..op
    }
}

/// Errors of a System V lock attempt that mean "not this time": the lock is busy (`EAGAIN`),
/// a signal arrived (`EINTR`), the set was replaced by one without a token (`EFBIG`), or it was
/// removed under us again and again while we waited (`EIDRM`, `EINVAL`: the last user of a
/// segment removes its lock, and the next attempt re-creates it, as Qt does). The caller tries
/// again in its next wait slice, where its timeout and interrupt checks run.
fn retry_later(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EAGAIN | Errno::EINTR | Errno::EFBIG | Errno::EIDRM | Errno::EINVAL
    )
}

/// Takes the lock whose holder died: semaphore 0 is free and the token is missing.
fn try_recover_sysv(sem: &SysVSemaphore) -> Result<Option<Acquired>, LockFailure> {
    match sem.operate(&[nowait(TAKE_LOCK), TOKEN_MISSING], None) {
        Ok(()) => Ok(Some(Acquired::OwnerDied)),
        Err(e) if retry_later(e) => Ok(None),
        Err(e) => Err(LockFailure::Os(e)),
    }
}

fn sysv_attempt(
    sem: &SysVSemaphore,
    wait: Option<Duration>,
) -> Result<Option<Acquired>, LockFailure> {
    let take = if wait.is_some() {
        TAKE_LOCK
    } else {
        nowait(TAKE_LOCK)
    };
    if sem.has_consistency_token() {
        match sem.operate(&[take, TAKE_TOKEN], wait) {
            Ok(()) => return Ok(Some(Acquired::Locked)),
            // EAGAIN: timed out, lock busy, or the token is missing; EFBIG: the set was
            // replaced by one without a token. Either way, look for a dead holder next.
            Err(e) if retry_later(e) => {}
            Err(e) => return Err(LockFailure::Os(e)),
        }
        return try_recover_sysv(sem);
    }
    match sem.operate(&[take], wait) {
        Ok(()) => Ok(Some(Acquired::Locked)),
        Err(e) if retry_later(e) => Ok(None),
        Err(e) => Err(LockFailure::Os(e)),
    }
}

/// Takes a System V lock for a cleanup decision (is this the last detacher?), waiting at most
/// `wait`: `Ok(None)` if it stayed busy; otherwise whether the previous holder died. Like every
/// user of the lock it re-creates a semaphore that was removed (its creator may have gone while
/// the segment lives on); the caller removes what it re-created if the segment turns out to be
/// gone. Release it with [`release_after_cleanup`].
pub(crate) fn acquire_for_cleanup(
    sem: &SysVSemaphore,
    wait: Duration,
) -> Result<Option<bool>, Errno> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE);
        let attempt = if left.is_zero() {
            try_sysv(sem)
        } else {
            wait_sysv(sem, left)
        };
        match attempt {
            Ok(Some(got)) => {
                mark_held(Identity::SysV(sem.native_key()));
                return Ok(Some(got == Acquired::OwnerDied));
            }
            Ok(None) if Instant::now() >= deadline => return Ok(None),
            Ok(None) => {}
            Err(LockFailure::Os(e)) => return Err(e),
            Err(_) => return Ok(None),
        }
    }
}

/// Releases a lock taken by [`acquire_for_cleanup`] (unless the cleanup removed it).
pub(crate) fn release_after_cleanup(sem: &SysVSemaphore, recovered: bool) {
    if sem.is_open() {
        let _ = sem.operate_existing(give_back_ops(sem, recovered), None);
    }
    mark_released(Identity::SysV(sem.native_key()));
}

/// Whether the calling thread holds the System V lock `sem` (through any handle).
pub(crate) fn sysv_held_by_current_thread(sem: &SysVSemaphore) -> bool {
    is_held(Identity::SysV(sem.native_key()))
}

fn try_sysv(sem: &SysVSemaphore) -> Result<Option<Acquired>, LockFailure> {
    sysv_attempt(sem, None)
}

fn wait_sysv(sem: &SysVSemaphore, slice: Duration) -> Result<Option<Acquired>, LockFailure> {
    let got = sysv_attempt(sem, Some(slice));
    if matches!(got, Ok(None)) {
        // Held for a whole slice: perhaps by nobody, in a set whose creator died.
        sem.repair_if_left_uninitialised();
    }
    got
}

/// What gives a System V lock back: the lock and the consistent token (the one taken, or the
/// one a dead holder's recovery restores), or the lock alone if the set has no token or a
/// death taken over (`keep_death`) must stay for the next lock() to report.
fn give_back_ops(sem: &SysVSemaphore, keep_death: bool) -> &'static [SemOp] {
    if sem.has_consistency_token() && !keep_death {
        &[GIVE_TOKEN, GIVE_LOCK]
    } else {
        &[GIVE_LOCK]
    }
}

fn release_sysv(sem: &SysVSemaphore) -> Result<(), Errno> {
    match sem.operate(give_back_ops(sem, false), None) {
        // The set was replaced by one without a token meanwhile.
        Err(Errno::EFBIG) => sem.operate(&[GIVE_LOCK], None),
        other => other,
    }
}

/// Exclusive access to a segment's memory for as long as it lives; unlocks when dropped.
///
/// Returned by [`SharedMemory::lock`](crate::SharedMemory::lock) and friends. It dereferences
/// to the segment's bytes (`&[u8]`, and `&mut [u8]` for read-write attachments): every
/// cooperating process (Qt's included) writes only while it holds the lock, so access through
/// the guard never races with them.
///
/// ```no_run
/// use qsharedmem::{AccessMode, SharedMemory};
/// use qsharedmem::KeyType;
/// let mut shm = SharedMemory::with_key(SharedMemory::platform_safe_key("guard-doc", KeyType::POSIX_REALTIME));
/// shm.create(64, AccessMode::ReadWrite)?;
/// {
///     let mut guard = shm.lock()?;
///     guard.as_mut_slice().expect("read-write")[0] += 1;
///     assert!(!guard.owner_died());
/// } // unlocked here
/// # Ok::<(), qsharedmem::Error>(())
/// ```
///
/// A guard is not `Send`: the lock belongs to the thread that took it (the robust mutex can
/// only be released by its owner thread), so the guard must be dropped on that thread.
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// let mut shm = qsharedmem::SharedMemory::new();
/// send(shm.lock().unwrap());
/// ```
#[derive(Debug)]
pub struct LockGuard<'a> {
    pub(crate) shm: &'a mut crate::SharedMemory,
    pub(crate) owner_died: bool,
    /// Makes the guard `!Send` (and `!Sync`).
    pub(crate) _not_send: std::marker::PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    pub(crate) fn new(shm: &'a mut crate::SharedMemory, owner_died: bool) -> Self {
        Self {
            shm,
            owner_died,
            _not_send: std::marker::PhantomData,
        }
    }

    /// True if the previous holder died while holding the lock: the data it protected may be
    /// half-written, and the caller decides whether it can be used.
    #[must_use]
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// The segment's bytes, or `None` if the handle is not attached (a System V or foreign
    /// POSIX lock can be held without an attachment, as in Qt).
    #[must_use]
    pub fn as_slice(&self) -> Option<&[u8]> {
        self.shm.locked_slice()
    }

    /// The segment's bytes for writing, or `None` if not attached or attached `ReadOnly`.
    #[must_use]
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        self.shm.locked_slice_mut()
    }

    /// Unlocks now, reporting a failure to unlock (dropping the guard ignores it).
    ///
    /// # Errors
    /// `LockError` if the OS refused to release the lock.
    pub fn unlock(self) -> crate::Result<()> {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.shm.unlock().map(drop)
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Unlocking can only fail if the lock vanished under us; nothing to do about it here.
        let _ = self.shm.unlock();
    }
}

/// The attachment's bytes for reading, for a [`LockGuard`].
#[allow(unsafe_code)] // the one place outside `sys` where the lock protocol makes a slice sound
pub(crate) fn guarded_slice(att: &Attachment) -> &[u8] {
    // SAFETY: only called through a `LockGuard`, which exists only while its handle holds the
    // segment's cross-process lock; every cooperating writer (qsharedmem, Qt) writes only while
    // holding that lock, so nobody writes these bytes while the shared borrow lives. The range
    // is the attachment's data, inside its mapping, which the borrow of `att` keeps alive.
    unsafe { att.data_mapping().slice(0, att.size()) }
}

/// The attachment's bytes for writing, for a [`LockGuard`] borrowed mutably.
#[allow(unsafe_code)] // see `guarded_slice`
#[allow(clippy::mut_from_ref)] // exclusivity comes from the cross-process lock, see SAFETY
pub(crate) fn guarded_slice_mut(att: &Attachment) -> &mut [u8] {
    // SAFETY: as in `guarded_slice`, plus: the caller borrows the guard (and through it the
    // handle) mutably for the slice's lifetime, so no other slice from this handle exists; other
    // handles and processes do not touch the data while the lock is held. The mapping is
    // writable (checked by the caller, and asserted by `slice_mut`).
    unsafe { att.data_mapping().slice_mut(0, att.size()) }
}
