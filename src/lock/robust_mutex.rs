//! The robust mutex of a qsharedmem POSIX segment, in the segment's control block, with the
//! bookkeeping that lives next to it: who holds it, how often a holder died, and whether the
//! holder also holds Qt's semaphore (see [`super::paired`]).
//!
//! If the holder dies (its process, or just its thread), the kernel marks the mutex and the
//! next locker gets it with the owner-died flag: the death is reported, the mutex made
//! consistent again and counted in [`RobustLock::owner_deaths`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{Acquired, LockFailure};
use crate::sys::mapping::cross_process;
use crate::sys::mutex::{Acquired as MutexAcquired, RawMutex};
use crate::sys::Errno;

cross_process! {
    /// The lock block: 128 bytes in a segment's control block.
    ///
    /// Everything a lock or an unlock writes (the mutex and `state`) is in the first 64 bytes,
    /// one cache line (the block starts at offset 64 of the control block): a hand-off between
    /// two processes moves that line, Qt's semaphore and the data, nothing else. With `state`
    /// on a line of its own the 2-process hand-off ran at 0.75–0.9 × the rate (measured in
    /// `benchmarks/README.md`).
    ///
    /// | offset | field |
    /// |---:|---|
    /// | 0 | the pthread mutex (48 bytes reserved) |
    /// | 48 | `state`: the holder's pid << 2, and the state of Qt's semaphore for it (2 bits) |
    /// | 52 | `owner_deaths`: how often a holder died holding the lock |
    /// | 56 | `doubt`: pid of a dead holder that may still have Qt's semaphore (0: none) |
    /// | 60 | reserved (zero) |
    pub(crate) struct RobustLock {
        mutex: RawMutex,
        pub(super) state: AtomicU32,
        owner_deaths: AtomicU32,
        pub(super) doubt: AtomicU32,
        _reserved: [AtomicU32; 17],
    }
}

const _: () = assert!(std::mem::size_of::<RobustLock>() == 128);
const _: () = assert!(std::mem::offset_of!(RobustLock, state) == 48);
const _: () = assert!(std::mem::offset_of!(RobustLock, owner_deaths) == 52);
const _: () = assert!(std::mem::offset_of!(RobustLock, doubt) == 56);

/// How many times a waiter polls a busy mutex before it sleeps in the kernel, with a pause
/// instruction between polls: 2.3 µs on this project's AMD EPYC machine (pause is slower on
/// recent Intel cores), as many polls as glibc's adaptive mutexes spin. 30 polls already
/// gave the same hand-off rates in `benchmarks/`; 1000 gave nothing more.
const SPIN_POLLS: u32 = 100;

impl RobustLock {
    /// Initialises the mutex. A creator calls this before it publishes the block: on a mutex
    /// that someone uses it would break the lock (see [`RawMutex::init`]).
    pub(crate) fn init(&self) -> Result<(), Errno> {
        self.mutex.init()
    }

    fn acquired(&self, got: MutexAcquired) -> Result<Acquired, LockFailure> {
        match got {
            MutexAcquired::Locked => Ok(Acquired::Locked),
            MutexAcquired::OwnerDied => {
                // We cannot know whether the caller can repair the data; we report the death
                // and keep the mutex usable (otherwise unlocking would make it unrecoverable).
                self.mutex.mark_consistent().map_err(LockFailure::Os)?;
                self.owner_deaths.fetch_add(1, Ordering::Relaxed);
                Ok(Acquired::OwnerDied)
            }
        }
    }

    /// One attempt without waiting: `Ok(None)` if another thread holds the mutex.
    #[inline]
    pub(crate) fn try_lock(&self) -> Result<Option<Acquired>, LockFailure> {
        match self.mutex.try_lock() {
            Ok(MutexAcquired::Locked) => Ok(Some(Acquired::Locked)),
            Ok(got) => self.acquired(got).map(Some),
            Err(Errno::EBUSY) => Ok(None),
            Err(Errno::EDEADLK) => Err(LockFailure::WouldDeadlock),
            Err(e) => Err(LockFailure::Os(e)),
        }
    }

    /// Polls a busy mutex for a few microseconds before the caller sleeps on it. Critical
    /// sections are usually far shorter than a futex sleep and wake-up (each a system call,
    /// plus a context switch for the sleeper), so a waiter that spins briefly takes the lock
    /// over without either. It polls by reading and only tries to lock when the mutex looks
    /// free. The spin is bounded, so a holder that was descheduled costs a waiter microseconds.
    pub(crate) fn spin(&self) -> Result<Option<Acquired>, LockFailure> {
        for _ in 0..SPIN_POLLS {
            std::hint::spin_loop();
            if self.mutex.looks_free() {
                if let Some(got) = self.try_lock()? {
                    return Ok(Some(got));
                }
            }
        }
        Ok(None)
    }

    /// Waits for the mutex for at most `slice`: `Ok(None)` if it stayed busy.
    pub(crate) fn lock_slice(&self, slice: Duration) -> Result<Option<Acquired>, LockFailure> {
        match self.mutex.lock_for(slice) {
            Ok(got) => self.acquired(got).map(Some),
            Err(Errno::ETIMEDOUT | Errno::EINTR) => Ok(None),
            Err(Errno::EDEADLK) => Err(LockFailure::WouldDeadlock),
            Err(e) => Err(LockFailure::Os(e)),
        }
    }

    /// Unlocks the mutex (the caller has put the state back first).
    #[inline]
    pub(crate) fn unlock_mutex(&self) -> Result<(), Errno> {
        self.mutex.unlock()
    }

    /// The kernel thread id that holds the mutex (0: nobody): see [`RawMutex::owner_tid`].
    #[inline]
    pub(crate) fn owner_tid(&self) -> u32 {
        self.mutex.owner_tid()
    }

    /// The pid recorded as holding the lock (0: nobody), for inspection.
    pub(crate) fn holder(&self) -> i32 {
        i32::try_from(self.state.load(Ordering::Relaxed) >> 2).unwrap_or(0)
    }

    /// How many times a holder died while holding the lock.
    pub(crate) fn owner_deaths(&self) -> u32 {
        self.owner_deaths.load(Ordering::Relaxed)
    }
}
