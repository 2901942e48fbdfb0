//! The lock primitives behind `QSharedMemory::lock()` and `QSystemSemaphore`.
//!
//! | segment | lock | holder dies |
//! |---|---|---|
//! | POSIX (ours, Qt's, anyone's) | [`robust_mutex`] in the control block, then Qt's named semaphore ([`paired`]) | next locker gets it, owner-died reported, Qt's semaphore given back |
//! | POSIX without a control block | Qt's named semaphore alone ([`posix_sem`]) | stays held (Qt's design); a timeout bounds the wait |
//! | System V | Qt's semaphore set, `SEM_UNDO` ([`sysv_sem`]) | kernel gives it back; owner-died reported through qsharedmem's token |
//!
//! The primitives know nothing about segments: the segment layer hands them the memory they
//! live in. Which primitive a handle uses, and the guard around it, are the handle's business
//! (`crate::handle`). Semaphore locks are registered per thread while held ([`held`]), because
//! a semaphore cannot tell which thread took it.

pub(crate) mod held;
pub(crate) mod paired;
pub(crate) mod posix_sem;
pub(crate) mod robust_mutex;
pub(crate) mod sysv_sem;

use crate::sys::Errno;

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

/// How to open a semaphore, as `QSystemSemaphore::AccessMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SemMode {
    /// `QSystemSemaphore::Open`: use an existing semaphore, or create one with the initial value.
    Open,
    /// `QSystemSemaphore::Create`: take ownership; an existing System V semaphore is reset to the
    /// initial value, an existing POSIX one is unlinked and replaced (Qt's takeover).
    Create,
}
