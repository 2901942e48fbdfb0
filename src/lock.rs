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
/// error-checking mutex, do not know their holder).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Identity {
    SysV(String),
    Posix(String),
}

/// Semaphore locks held by threads of this process: (lock, thread id).
static HELD: Mutex<Vec<(Identity, i32)>> = Mutex::new(Vec::new());

fn held() -> std::sync::MutexGuard<'static, Vec<(Identity, i32)>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_held(id: &Identity) -> bool {
    let tid = process::thread_id();
    held()
        .iter()
        .any(|(held_id, holder)| held_id == id && *holder == tid)
}

fn mark_held(id: Identity) {
    held().push((id, process::thread_id()));
}

fn mark_released(id: &Identity) {
    let tid = process::thread_id();
    let mut list = held();
    let at = list
        .iter()
        .position(|(i, t)| i == id && *t == tid)
        // Released from another thread than the one that took it.
        .or_else(|| list.iter().position(|(i, _)| i == id));
    if let Some(at) = at {
        list.swap_remove(at);
    }
}

impl LockPrimitive {
    fn identity(&self) -> Option<Identity> {
        match self {
            Self::Mutex(_) => None,
            Self::SysV(sem) => Some(Identity::SysV(sem.native_key().to_owned())),
            Self::Posix(sem) => Some(Identity::Posix(sem.name().to_owned())),
        }
    }

    /// Whether the calling thread holds this lock (semaphores: through any handle of this
    /// process; the mutex answers for itself).
    pub(crate) fn held_by_current_thread(&self) -> bool {
        self.identity().is_some_and(|id| is_held(&id))
    }

    fn note_acquired(&self) {
        if let Some(id) = self.identity() {
            mark_held(id);
        }
    }

    fn note_released(&self) {
        if let Some(id) = self.identity() {
            mark_released(&id);
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
                Err(Errno(libc::EAGAIN)) => None,
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
        if let Some(got) = self.try_acquire()? {
            return Ok(got);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                None => WAIT_SLICE,
                Some(end) => {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(LockFailure::TimedOut);
                    }
                    left.min(WAIT_SLICE)
                }
            };
            let got = match self {
                Self::Mutex(att) => wait_mutex(att, slice)?,
                Self::SysV(sem) => wait_sysv(sem, slice)?,
                Self::Posix(sem) => match sem.semaphore().wait_for(slice) {
                    Ok(()) => Some(Acquired::Locked),
                    Err(Errno(libc::ETIMEDOUT | libc::EINTR)) => None,
                    Err(e) => return Err(LockFailure::Os(e)),
                },
            };
            if let Some(got) = got {
                self.note_acquired();
                return Ok(got);
            }
            if interrupt() {
                return Err(LockFailure::Interrupted);
            }
        }
    }

    /// Releases the lock. `recovered` says that this acquisition reported a dead owner, so the
    /// System V consistent token must be given back.
    pub(crate) fn release(&self, recovered: bool) -> Result<(), Errno> {
        let result = match self {
            Self::Mutex(att) => {
                let control = att.control().ok_or(Errno(libc::EINVAL))?;
                control.set_lock_owner(0);
                mutex::unlock(control.mapping(), control.mutex_offset())
            }
            Self::SysV(sem) => release_sysv(sem, recovered),
            Self::Posix(sem) => sem.semaphore().post(),
        };
        if result.is_ok() {
            self.note_released();
        }
        result
    }

    /// Forgets that the calling thread holds this lock without touching the OS object (used
    /// when the object was removed while held).
    pub(crate) fn forget_held(&self) {
        self.note_released();
    }
}

fn mutex_result(att: &Attachment, got: MutexAcquired) -> Result<Acquired, LockFailure> {
    let control = att.control().ok_or(LockFailure::Os(Errno(libc::EINVAL)))?;
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
    control.set_lock_owner(process::pid());
    Ok(acquired)
}

fn try_mutex(att: &Attachment) -> Result<Option<Acquired>, LockFailure> {
    let control = att.control().ok_or(LockFailure::Os(Errno(libc::EINVAL)))?;
    match mutex::try_lock(control.mapping(), control.mutex_offset()) {
        Ok(got) => mutex_result(att, got).map(Some),
        Err(Errno(libc::EBUSY)) => Ok(None),
        Err(Errno(libc::EDEADLK)) => Err(LockFailure::WouldDeadlock),
        Err(e) => Err(LockFailure::Os(e)),
    }
}

fn wait_mutex(att: &Attachment, slice: Duration) -> Result<Option<Acquired>, LockFailure> {
    let control = att.control().ok_or(LockFailure::Os(Errno(libc::EINVAL)))?;
    match mutex::lock_for(control.mapping(), control.mutex_offset(), slice) {
        Ok(got) => mutex_result(att, got).map(Some),
        Err(Errno(libc::ETIMEDOUT | libc::EINTR)) => Ok(None),
        Err(Errno(libc::EDEADLK)) => Err(LockFailure::WouldDeadlock),
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

/// Takes the lock whose holder died: semaphore 0 is free and the token is missing.
fn try_recover_sysv(sem: &SysVSemaphore) -> Result<Option<Acquired>, LockFailure> {
    match sem.operate(&[nowait(TAKE_LOCK), TOKEN_MISSING], None) {
        Ok(()) => Ok(Some(Acquired::OwnerDied)),
        Err(Errno(libc::EAGAIN | libc::EINTR | libc::EFBIG)) => Ok(None),
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
            Err(Errno(libc::EAGAIN | libc::EINTR | libc::EFBIG)) => {}
            Err(e) => return Err(LockFailure::Os(e)),
        }
        return try_recover_sysv(sem);
    }
    match sem.operate(&[take], wait) {
        Ok(()) => Ok(Some(Acquired::Locked)),
        Err(Errno(libc::EAGAIN | libc::EINTR)) => Ok(None),
        Err(e) => Err(LockFailure::Os(e)),
    }
}

/// Takes a System V lock for a cleanup decision (is this the last detacher?), waiting at most
/// `wait`, without ever re-creating a removed semaphore (that would leave it behind): `Ok(None)`
/// if it was removed (then the segment is gone too) or stayed busy; otherwise whether the
/// previous holder died. The caller releases it with [`release_after_cleanup`].
pub(crate) fn acquire_for_cleanup(
    sem: &SysVSemaphore,
    wait: Duration,
) -> Result<Option<bool>, Errno> {
    let with_token = sem.has_consistency_token();
    let ops: &[SemOp] = if with_token {
        &[TAKE_LOCK, TAKE_TOKEN]
    } else {
        &[TAKE_LOCK]
    };
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE);
        match sem.operate_existing(ops, Some(left.max(Duration::from_millis(1)))) {
            Ok(()) => {
                mark_held(Identity::SysV(sem.native_key().to_owned()));
                return Ok(Some(false));
            }
            Err(Errno(libc::EAGAIN | libc::EINTR | libc::EFBIG)) => {
                if with_token
                    && sem
                        .operate_existing(&[nowait(TAKE_LOCK), TOKEN_MISSING], None)
                        .is_ok()
                {
                    mark_held(Identity::SysV(sem.native_key().to_owned()));
                    return Ok(Some(true));
                }
                if Instant::now() >= deadline {
                    return Ok(None);
                }
            }
            Err(Errno(libc::EIDRM | libc::EINVAL)) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Releases a lock taken by [`acquire_for_cleanup`] (unless the cleanup removed it).
pub(crate) fn release_after_cleanup(sem: &SysVSemaphore, recovered: bool) {
    if sem.is_open() {
        let ops: &[SemOp] = if sem.has_consistency_token() {
            &[GIVE_TOKEN, GIVE_LOCK]
        } else {
            &[GIVE_LOCK]
        };
        let _ = recovered;
        let _ = sem.operate_existing(ops, None);
    }
    mark_released(&Identity::SysV(sem.native_key().to_owned()));
}

/// Whether the calling thread holds the System V lock `sem` (through any handle).
pub(crate) fn sysv_held_by_current_thread(sem: &SysVSemaphore) -> bool {
    is_held(&Identity::SysV(sem.native_key().to_owned()))
}

fn try_sysv(sem: &SysVSemaphore) -> Result<Option<Acquired>, LockFailure> {
    sysv_attempt(sem, None)
}

fn wait_sysv(sem: &SysVSemaphore, slice: Duration) -> Result<Option<Acquired>, LockFailure> {
    sysv_attempt(sem, Some(slice))
}

fn release_sysv(sem: &SysVSemaphore, recovered: bool) -> Result<(), Errno> {
    if sem.has_consistency_token() {
        // Normal unlock gives back the token we took; after a recovery the token was missing
        // and giving it back makes the lock consistent again. Both are the same operation.
        let _ = recovered;
        match sem.operate(&[GIVE_TOKEN, GIVE_LOCK], None) {
            Err(Errno(libc::EFBIG)) => sem.operate(&[GIVE_LOCK], None),
            other => other,
        }
    } else {
        sem.operate(&[GIVE_LOCK], None)
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
#[derive(Debug)]
pub struct LockGuard<'a> {
    pub(crate) shm: &'a mut crate::SharedMemory,
    pub(crate) owner_died: bool,
}

impl LockGuard<'_> {
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
#[allow(clippy::mut_from_ref)] // the exclusivity comes from the lock, see the SAFETY comment
pub(crate) fn guarded_slice_mut(att: &Attachment) -> &mut [u8] {
    // SAFETY: as in `guarded_slice`, plus: the caller borrows the guard (and through it the
    // handle) mutably for the slice's lifetime, so no other slice from this handle exists; other
    // handles and processes do not touch the data while the lock is held. The mapping is
    // writable (checked by the caller, and asserted by `slice_mut`).
    unsafe { att.data_mapping().slice_mut(0, att.size()) }
}
