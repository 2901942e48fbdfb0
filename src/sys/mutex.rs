//! A robust, process-shared, error-checking pthread mutex that lives in shared memory.
//!
//! * process-shared: every process that maps the memory can lock it;
//! * robust: if the holder dies, the next locker gets the mutex with `EOWNERDEAD` instead of
//!   waiting forever;
//! * error-checking: relocking from the thread that holds it is `EDEADLK` (not a hang), and
//!   unlocking from another thread is `EPERM`.
//!
//! Uncontended lock and unlock stay in user space (a futex word).

use std::cell::UnsafeCell;
use std::mem::size_of;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::cvt::{realtime_deadline, Errno, SysResult};
use super::mapping::CrossProcess;

/// Bytes a [`RawMutex`] takes in shared memory (a `pthread_mutex_t` is 40 bytes on x86_64 and
/// 48 on aarch64 glibc; the rest is reserved).
pub const RAW_MUTEX_SIZE: usize = 48;

/// The storage of one pthread mutex in shared memory.
///
/// Only ever used through a reference into a mapping ([`super::mapping::Mapping::shared`]): it is
/// never moved or copied, because the kernel and glibc know a robust mutex by its address (the
/// holder thread's robust list points to it).
#[repr(C, align(16))]
pub struct RawMutex {
    bytes: UnsafeCell<[u8; RAW_MUTEX_SIZE]>,
}

const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= RAW_MUTEX_SIZE);
const _: () = assert!(std::mem::align_of::<libc::pthread_mutex_t>() <= 16);

// SAFETY: the bytes are only touched through the pthread functions (which are thread-safe and
// process-safe for a process-shared mutex) and through atomic loads of the futex word.
unsafe impl Sync for RawMutex {}
// SAFETY: any bit pattern is a valid `[u8; N]` in an `UnsafeCell`; a mutex that another process
// scribbled over is refused or reported by the pthread calls, never read as a Rust value.
unsafe impl CrossProcess for RawMutex {}

/// How a lock attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The mutex is ours.
    Locked,
    /// The mutex is ours, and its previous holder died while holding it. Call
    /// [`RawMutex::mark_consistent`] before unlocking, or the mutex becomes unusable.
    OwnerDied,
}

fn check(ret: libc::c_int) -> SysResult<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(ret))
    }
}

/// The TID bits of a robust futex word (`FUTEX_TID_MASK`, linux/futex.h).
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

fn outcome(ret: libc::c_int) -> SysResult<Acquired> {
    match ret {
        0 => Ok(Acquired::Locked),
        libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
        err => Err(Errno::from_raw(err)),
    }
}

impl RawMutex {
    fn ptr(&self) -> *mut libc::pthread_mutex_t {
        self.bytes.get().cast()
    }

    /// glibc keeps the futex word (`__data.__lock`: the owner's TID plus flag bits, for a
    /// robust mutex) as the first `int` of `pthread_mutex_t`.
    fn futex_word(&self) -> &AtomicU32 {
        // SAFETY: the first 4 bytes of the cell are inside `self` and 16-byte aligned; an
        // `AtomicU32` has the layout of `u32`, every bit pattern is valid, and glibc itself
        // accesses this word atomically.
        unsafe { AtomicU32::from_ptr(self.bytes.get().cast::<u32>()) }
    }

    /// Initialises a robust, process-shared, error-checking mutex here.
    ///
    /// Only for a mutex nobody uses yet (a segment's creator calls this before anyone else can
    /// see the memory): on one that a thread holds or waits for, it would break the lock. That
    /// is a broken lock, not unsound: like any write another process may make to shared
    /// memory, it only changes bytes behind an `UnsafeCell`.
    pub fn init(&self) -> SysResult<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is valid for writes of a pthread_mutexattr_t.
        check(unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) })?;
        let attr_ptr = attr.as_mut_ptr();
        let configure = || -> SysResult<()> {
            // SAFETY: `attr_ptr` was initialised by pthread_mutexattr_init above.
            check(unsafe {
                libc::pthread_mutexattr_setpshared(attr_ptr, libc::PTHREAD_PROCESS_SHARED)
            })?;
            // SAFETY: as above.
            check(unsafe {
                libc::pthread_mutexattr_setrobust(attr_ptr, libc::PTHREAD_MUTEX_ROBUST)
            })?;
            // SAFETY: as above.
            check(unsafe {
                libc::pthread_mutexattr_settype(attr_ptr, libc::PTHREAD_MUTEX_ERRORCHECK)
            })?;
            // SAFETY: `self.ptr()` is writable, suitably aligned storage for a
            // pthread_mutex_t inside live memory; glibc's init only writes the struct.
            check(unsafe { libc::pthread_mutex_init(self.ptr(), attr_ptr) })
        };
        let result = configure();
        // SAFETY: `attr_ptr` is initialised and no longer needed.
        unsafe { libc::pthread_mutexattr_destroy(attr_ptr) };
        result
    }

    /// Whether the mutex looks free at this moment: its futex word names no owner. Only read,
    /// so a waiter that polls it leaves the cache line to the holder. A hint: only a lock
    /// attempt decides. On other C libraries than glibc it always looks free.
    #[must_use]
    pub fn looks_free(&self) -> bool {
        !cfg!(target_env = "gnu") || self.futex_word().load(Ordering::Relaxed) & FUTEX_TID_MASK == 0
    }

    /// The kernel thread id that holds the mutex now (0: nobody). glibc only (elsewhere 0).
    /// A thread that took the mutex reads its own id here; once that id is gone, the thread
    /// no longer holds it (it unlocked, or it ended and the kernel released the mutex).
    #[must_use]
    #[inline]
    pub fn owner_tid(&self) -> u32 {
        if cfg!(target_env = "gnu") {
            self.futex_word().load(Ordering::Relaxed) & FUTEX_TID_MASK
        } else {
            0
        }
    }

    /// Tries to lock without waiting: `EBUSY` if another thread holds it, `EDEADLK` if the
    /// calling thread does.
    #[inline]
    pub fn try_lock(&self) -> SysResult<Acquired> {
        // SAFETY: `self` is an initialised process-shared mutex in live memory (a reference to
        // it exists only into a mapping of a validated control block).
        outcome(unsafe { libc::pthread_mutex_trylock(self.ptr()) })
    }

    /// Locks, waiting at most `wait`: `ETIMEDOUT` when it passes, `EDEADLK` if the calling
    /// thread already holds the mutex, `ENOTRECOVERABLE` if a previous owner-died recovery was
    /// abandoned.
    pub fn lock_for(&self, wait: Duration) -> SysResult<Acquired> {
        // pthread_mutex_timedlock takes an absolute CLOCK_REALTIME deadline.
        let ts = realtime_deadline(wait);
        // SAFETY: as in `try_lock`; `ts` is a valid timespec that outlives the call.
        outcome(unsafe { libc::pthread_mutex_timedlock(self.ptr(), &ts) })
    }

    /// Marks the state protected by a mutex acquired with [`Acquired::OwnerDied`] as consistent
    /// again, so that unlocking it keeps it usable.
    pub fn mark_consistent(&self) -> SysResult<()> {
        // SAFETY: as in `try_lock`; the caller holds the mutex after EOWNERDEAD.
        check(unsafe { libc::pthread_mutex_consistent(self.ptr()) })
    }

    /// Unlocks: `EPERM` if the calling thread does not hold the mutex (glibc checks the futex
    /// word's TID before it touches anything else).
    #[inline]
    pub fn unlock(&self) -> SysResult<()> {
        // SAFETY: as in `try_lock`.
        check(unsafe { libc::pthread_mutex_unlock(self.ptr()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mapping::Mapping;

    fn shared_page() -> Mapping {
        Mapping::anonymous_shared(4096).unwrap()
    }

    fn mutex_in(page: &Mapping) -> &RawMutex {
        let mutex = page.shared::<RawMutex>(0);
        mutex.init().unwrap();
        mutex
    }

    #[test]
    fn relock_from_the_same_thread_is_edeadlk_not_a_hang() {
        let page = shared_page();
        let mutex = mutex_in(&page);
        assert_eq!(mutex.try_lock(), Ok(Acquired::Locked));
        assert_eq!(
            mutex.lock_for(Duration::from_millis(10)),
            Err(Errno::EDEADLK)
        );
        mutex.unlock().unwrap();
        assert_eq!(mutex.unlock(), Err(Errno::EPERM));
    }

    #[test]
    fn dead_holder_is_reported_and_recovered() {
        let page = std::sync::Arc::new(shared_page());
        mutex_in(&page);
        let p = page.clone();
        // A thread that exits while holding a robust mutex counts as a dead owner.
        let holder_tid = std::thread::spawn(move || {
            let mutex = p.shared::<RawMutex>(0);
            assert_eq!(mutex.try_lock(), Ok(Acquired::Locked));
            mutex.owner_tid()
        })
        .join()
        .unwrap();
        let mutex = page.shared::<RawMutex>(0);
        assert_ne!(holder_tid, 0, "the holder reads its own thread id");
        assert_eq!(
            mutex.owner_tid(),
            0,
            "the kernel released it for the ended thread"
        );
        assert!(
            mutex.looks_free(),
            "a dead owner's mutex must look free, to be recovered"
        );
        assert_eq!(
            mutex.lock_for(Duration::from_secs(1)),
            Ok(Acquired::OwnerDied)
        );
        assert_ne!(mutex.owner_tid(), 0);
        mutex.mark_consistent().unwrap();
        mutex.unlock().unwrap();
        assert_eq!(mutex.try_lock(), Ok(Acquired::Locked));
        mutex.unlock().unwrap();
    }

    #[test]
    fn looks_free_follows_the_holder() {
        let page = std::sync::Arc::new(shared_page());
        let mutex = mutex_in(&page);
        assert!(mutex.looks_free());
        assert_eq!(mutex.try_lock(), Ok(Acquired::Locked));
        assert!(!mutex.looks_free(), "held by this thread");
        let p = page.clone();
        std::thread::spawn(move || assert!(!p.shared::<RawMutex>(0).looks_free()))
            .join()
            .unwrap();
        mutex.unlock().unwrap();
        assert!(mutex.looks_free());
    }
}
