//! A robust, process-shared, error-checking pthread mutex living inside a shared mapping.
//!
//! * process-shared: every process that maps the segment can lock it;
//! * robust: if the holder dies, the next locker gets the mutex with `EOWNERDEAD` instead of
//!   waiting forever;
//! * error-checking: relocking from the thread that holds it is `EDEADLK` (not a hang), and
//!   unlocking from another thread is `EPERM`.
//!
//! Uncontended lock and unlock stay in user space (a futex word), about 30 ns each.

use std::mem::{align_of, size_of};
use std::time::Duration;

use super::cvt::{realtime_deadline, Errno, SysResult};
use super::mapping::Mapping;

/// Bytes reserved for the mutex in the control page (a `pthread_mutex_t` is 40 bytes on
/// x86_64 and 48 on aarch64 glibc).
pub const MUTEX_RESERVED: usize = 64;

const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= MUTEX_RESERVED);

/// How a lock attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The mutex is ours.
    Locked,
    /// The mutex is ours, and its previous holder died while holding it. Call
    /// [`mark_consistent`] before unlocking, or the mutex becomes unusable.
    OwnerDied,
}

fn mutex_ptr(map: &Mapping, offset: usize) -> SysResult<*mut libc::pthread_mutex_t> {
    let in_range = offset
        .checked_add(size_of::<libc::pthread_mutex_t>())
        .is_some_and(|end| end <= map.len());
    if !in_range || offset % align_of::<libc::pthread_mutex_t>() != 0 || !map.is_writable() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: `offset` plus the mutex size lies inside the mapping (checked above), so the
    // resulting pointer stays within the same allocation.
    Ok(unsafe { map.as_ptr().add(offset) }.cast::<libc::pthread_mutex_t>())
}

fn check(ret: libc::c_int) -> SysResult<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw(ret))
    }
}

/// Initialises a robust, process-shared, error-checking mutex at `offset` in `map`.
///
/// Only a segment's creator calls this, before anyone else can see the segment (it is
/// published afterwards), so no other process can be using the memory.
pub fn init(map: &Mapping, offset: usize) -> SysResult<()> {
    let mutex = mutex_ptr(map, offset)?;
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
        check(unsafe { libc::pthread_mutexattr_setrobust(attr_ptr, libc::PTHREAD_MUTEX_ROBUST) })?;
        // SAFETY: as above.
        check(unsafe {
            libc::pthread_mutexattr_settype(attr_ptr, libc::PTHREAD_MUTEX_ERRORCHECK)
        })?;
        // SAFETY: `mutex` points to writable, suitably aligned memory inside the mapping
        // (checked by `mutex_ptr`), not yet visible to any other process; `attr_ptr` is an
        // initialised attribute object.
        check(unsafe { libc::pthread_mutex_init(mutex, attr_ptr) })
    };
    let result = configure();
    // SAFETY: `attr_ptr` is initialised and no longer needed.
    unsafe { libc::pthread_mutexattr_destroy(attr_ptr) };
    result
}

fn outcome(ret: libc::c_int) -> SysResult<Acquired> {
    match ret {
        0 => Ok(Acquired::Locked),
        libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
        err => Err(Errno::from_raw(err)),
    }
}

/// Whether the mutex looks free at this moment: its futex word names no owner. It is only read,
/// so a waiter that polls it leaves the cache line to the holder instead of pulling it away
/// with a failing compare-and-swap each time. A hint: only a lock attempt decides.
///
/// glibc keeps the futex word (`__data.__lock`: the owner's TID plus flag bits, for a robust
/// mutex) as the first `int` of `pthread_mutex_t`; on other C libraries the mutex always looks
/// free, which makes a poller simply try to lock.
#[must_use]
pub fn looks_free(map: &Mapping, offset: usize) -> bool {
    /// The TID bits of a robust futex word (`FUTEX_TID_MASK`, linux/futex.h).
    const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
    if !cfg!(target_env = "gnu") || mutex_ptr(map, offset).is_err() {
        return true;
    }
    let word = map
        .atomic_u32(offset)
        .load(std::sync::atomic::Ordering::Relaxed);
    word & FUTEX_TID_MASK == 0
}

/// Tries to lock without waiting: `EBUSY` if another thread holds it, `EDEADLK` if the calling
/// thread does.
pub fn try_lock(map: &Mapping, offset: usize) -> SysResult<Acquired> {
    let mutex = mutex_ptr(map, offset)?;
    // SAFETY: `mutex` points into the live mapping at an initialised process-shared mutex (the
    // segment was validated before this mapping was used for locking).
    outcome(unsafe { libc::pthread_mutex_trylock(mutex) })
}

/// Locks, waiting at most `wait`: `ETIMEDOUT` when it passes, `EDEADLK` if the calling thread
/// already holds the mutex, `ENOTRECOVERABLE` if a previous owner-died recovery was abandoned.
pub fn lock_for(map: &Mapping, offset: usize, wait: Duration) -> SysResult<Acquired> {
    let mutex = mutex_ptr(map, offset)?;
    // pthread_mutex_timedlock takes an absolute CLOCK_REALTIME deadline.
    let ts = realtime_deadline(wait);
    // SAFETY: as in `try_lock`; `ts` is a valid timespec that outlives the call.
    outcome(unsafe { libc::pthread_mutex_timedlock(mutex, &ts) })
}

/// Marks the state protected by a mutex acquired with [`Acquired::OwnerDied`] as consistent
/// again, so that unlocking it keeps it usable.
pub fn mark_consistent(map: &Mapping, offset: usize) -> SysResult<()> {
    let mutex = mutex_ptr(map, offset)?;
    // SAFETY: as in `try_lock`; the caller holds the mutex after EOWNERDEAD.
    check(unsafe { libc::pthread_mutex_consistent(mutex) })
}

/// Unlocks: `EPERM` if the calling thread does not hold the mutex.
pub fn unlock(map: &Mapping, offset: usize) -> SysResult<()> {
    let mutex = mutex_ptr(map, offset)?;
    // SAFETY: as in `try_lock`.
    check(unsafe { libc::pthread_mutex_unlock(mutex) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    fn shared_page() -> Mapping {
        // SAFETY: memfd_create with a static name.
        let fd = unsafe { libc::memfd_create(c"qsm-mutex".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: valid descriptor.
        let ret = unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), 4096) };
        assert_eq!(ret, 0);
        Mapping::map_file(fd.as_fd(), 0, 4096, true).unwrap()
    }

    #[test]
    fn relock_from_the_same_thread_is_edeadlk_not_a_hang() {
        let page = shared_page();
        init(&page, 64).unwrap();
        assert_eq!(try_lock(&page, 64), Ok(Acquired::Locked));
        assert_eq!(
            lock_for(&page, 64, Duration::from_millis(10)),
            Err(Errno::EDEADLK)
        );
        unlock(&page, 64).unwrap();
        assert_eq!(unlock(&page, 64), Err(Errno::EPERM));
    }

    #[test]
    fn dead_holder_is_reported_and_recovered() {
        let page = std::sync::Arc::new(shared_page());
        init(&page, 0).unwrap();
        let p = page.clone();
        // A thread that exits while holding a robust mutex counts as a dead owner.
        std::thread::spawn(move || assert_eq!(try_lock(&p, 0), Ok(Acquired::Locked)))
            .join()
            .unwrap();
        assert_eq!(
            lock_for(&page, 0, Duration::from_secs(1)),
            Ok(Acquired::OwnerDied)
        );
        mark_consistent(&page, 0).unwrap();
        unlock(&page, 0).unwrap();
        assert_eq!(try_lock(&page, 0), Ok(Acquired::Locked));
        unlock(&page, 0).unwrap();
    }

    #[test]
    fn looks_free_follows_the_holder() {
        let page = std::sync::Arc::new(shared_page());
        init(&page, 0).unwrap();
        assert!(looks_free(&page, 0));
        assert_eq!(try_lock(&page, 0), Ok(Acquired::Locked));
        assert!(!looks_free(&page, 0), "held by this thread");
        let p = page.clone();
        std::thread::spawn(move || assert!(!looks_free(&p, 0), "held by another thread"))
            .join()
            .unwrap();
        unlock(&page, 0).unwrap();
        assert!(looks_free(&page, 0));
        // A dead holder: the mutex must look free, so that a poller goes on to recover it.
        let p = page.clone();
        std::thread::spawn(move || assert_eq!(try_lock(&p, 0), Ok(Acquired::Locked)))
            .join()
            .unwrap();
        assert!(looks_free(&page, 0), "a dead owner's mutex looks busy");
        assert_eq!(try_lock(&page, 0), Ok(Acquired::OwnerDied));
        mark_consistent(&page, 0).unwrap();
        unlock(&page, 0).unwrap();
    }

    #[test]
    fn misaligned_or_out_of_range_offsets_are_refused() {
        let page = shared_page();
        assert_eq!(init(&page, 3), Err(Errno::EINVAL));
        assert_eq!(init(&page, 4090), Err(Errno::EINVAL));
    }
}
