//! Futexes: sleeping in the kernel until a 32-bit word of (shared) memory changes, and waking
//! the sleepers of a word.
//!
//! Every call is a *shared* futex operation (no `FUTEX_PRIVATE_FLAG`): the kernel keys the
//! word by the page it lives in, not by this process's address space, so a process waiting on
//! a word of a `/dev/shm` file or a System V segment is woken by a `FUTEX_WAKE` from any other
//! process that maps the same page, at any address.
//!
//! [`FutexWord`] is the address of such a word with the lifetime of the memory it lives in. The
//! kernel only ever *reads* the word (it compares it with the expected value), so a word of a
//! read-only mapping can be waited on and woken as well.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::Duration;

use super::cvt::{cvt_count, Errno, SysResult};

/// The most words one [`wait_any`] can wait on (`FUTEX_WAITV_MAX`).
pub const WAIT_ANY_MAX: usize = 128;

/// The address of an aligned 32-bit word that stays mapped for `'a`.
#[derive(Clone, Copy, Debug)]
pub struct FutexWord<'a> {
    addr: NonNull<u32>,
    _memory: PhantomData<&'a AtomicU32>,
}

// SAFETY: a `FutexWord` is an address that this module only reads atomically or passes to the
// kernel; the memory behind it is shared by design (other processes write it), so using it
// from any thread is as sound as using the `&AtomicU32` it stands for.
unsafe impl Send for FutexWord<'_> {}
// SAFETY: see `Send`; every access is atomic.
unsafe impl Sync for FutexWord<'_> {}

impl<'a> FutexWord<'a> {
    /// The word of `atomic`.
    #[must_use]
    pub fn of(atomic: &'a AtomicU32) -> Self {
        Self {
            addr: NonNull::from(atomic).cast(),
            _memory: PhantomData,
        }
    }

    /// A word at `addr`, which the caller checked to be an aligned address inside memory that
    /// stays mapped for `'a` (see `Mapping::futex_word`).
    pub(super) fn at(addr: NonNull<u32>) -> Self {
        Self {
            addr,
            _memory: PhantomData,
        }
    }

    /// The word's value now, with acquire ordering. Sound for words of read-only mappings too:
    /// a relaxed atomic load no wider than a pointer never writes (Rust's rules for atomic
    /// accesses to read-only memory), and the fence gives it acquire ordering.
    #[must_use]
    pub fn load(self) -> u32 {
        // SAFETY: `addr` is aligned and inside memory that is mapped for `'a` (the type's
        // invariant); other processes may write it, which is what atomics are for.
        let value = unsafe { AtomicU32::from_ptr(self.addr.as_ptr()) }.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        value
    }

    /// The address as a number, to tell words apart.
    #[must_use]
    pub fn address(self) -> usize {
        self.addr.as_ptr() as usize
    }

    fn addr(self) -> *const u32 {
        self.addr.as_ptr()
    }
}

fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(duration.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(duration.subsec_nanos() as i32),
    }
}

/// `FUTEX_WAIT`: sleeps while the word holds `expected`, at most `timeout` (`None`: until
/// woken). `Ok(())` when woken (or spuriously); `EAGAIN` if the word did not hold `expected`
/// when the kernel looked, `ETIMEDOUT`, `EINTR` (a signal arrived: the caller decides whether
/// to wait again).
pub fn wait(word: FutexWord<'_>, expected: u32, timeout: Option<Duration>) -> SysResult<()> {
    let relative = timeout.map(timespec);
    let timeout_ptr = relative
        .as_ref()
        .map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: FUTEX_WAIT only reads the word at `addr` (the kernel checks that the address is
    // mapped and aligned; a bad one is EFAULT, not undefined behaviour) and the timespec, which
    // lives on this stack frame for the whole call. The unused arguments are ignored by the
    // kernel for this operation.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.addr(),
            libc::FUTEX_WAIT,
            expected,
            timeout_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    cvt_count(ret).map(drop)
}

/// `FUTEX_WAKE`: wakes up to `count` processes or threads sleeping on the word (any number
/// above `i32::MAX` is `i32::MAX`, which means all of them); returns how many it woke.
pub fn wake(word: FutexWord<'_>, count: u32) -> SysResult<u32> {
    let count = i32::try_from(count).unwrap_or(i32::MAX);
    // SAFETY: FUTEX_WAKE does not access the word's memory at all; it looks the word's page up
    // (EFAULT for an unmapped address) and wakes its sleepers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.addr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    cvt_count(ret).map(|woken| u32::try_from(woken).unwrap_or(0))
}

/// One entry of `futex_waitv` (`struct futex_waitv`, linux/futex.h).
#[repr(C)]
struct WaitvEntry {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// `CLOCK_MONOTONIC` now, as `futex_waitv`'s absolute timeout is given.
fn monotonic_now() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// `futex_waitv` (Linux 5.16+): sleeps until any of `words` is woken, at most `timeout`
/// (`None`: until woken). Each entry is a word and the value it is expected to hold: if one
/// holds another value already, the call returns at once (`EAGAIN`). `Ok(index)`: the entry
/// that was woken. `ENOSYS` on older kernels, `ETIMEDOUT`, `EINTR`; `EINVAL` for more than
/// [`WAIT_ANY_MAX`] words or none.
pub fn wait_any(words: &[(FutexWord<'_>, u32)], timeout: Option<Duration>) -> SysResult<usize> {
    if words.is_empty() || words.len() > WAIT_ANY_MAX {
        return Err(Errno::EINVAL);
    }
    let entries: Vec<WaitvEntry> = words
        .iter()
        .map(|(word, expected)| WaitvEntry {
            val: u64::from(*expected),
            uaddr: word.addr() as u64,
            // A shared futex of 32 bits (no FUTEX2_PRIVATE).
            flags: libc::FUTEX2_SIZE_U32 as u32,
            reserved: 0,
        })
        .collect();
    let deadline = timeout.map(|t| timespec(monotonic_now().saturating_add(t)));
    let deadline_ptr = deadline
        .as_ref()
        .map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `entries` is an array of `entries.len()` valid `struct futex_waitv` (same layout:
    // repr(C), u64 u64 u32 u32) that lives for the whole call; the kernel only reads it and the
    // words it names (EFAULT for an unmapped address), and the absolute deadline, on this stack
    // frame. Flags 0 and CLOCK_MONOTONIC are what the call requires.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            entries.as_ptr(),
            entries.len() as libc::c_uint,
            0u32,
            deadline_ptr,
            libc::CLOCK_MONOTONIC,
        )
    };
    cvt_count(ret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_wait_on_a_changed_word_returns_at_once_and_a_timeout_ends_it() {
        let word = AtomicU32::new(5);
        assert_eq!(wait(FutexWord::of(&word), 4, None), Err(Errno::EAGAIN));
        let start = Instant::now();
        assert_eq!(
            wait(FutexWord::of(&word), 5, Some(Duration::from_millis(20))),
            Err(Errno::ETIMEDOUT)
        );
        assert!(start.elapsed() >= Duration::from_millis(19));
        assert_eq!(wake(FutexWord::of(&word), 1), Ok(0), "nobody sleeps");
        assert_eq!(FutexWord::of(&word).load(), 5);
    }

    #[test]
    fn a_wake_ends_a_wait_and_a_wait_any_names_the_word() {
        let words = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let sleeper = {
            let words = Arc::clone(&words);
            std::thread::spawn(move || {
                let list = [(FutexWord::of(&words[0]), 0), (FutexWord::of(&words[1]), 0)];
                loop {
                    match wait_any(&list, Some(Duration::from_secs(10))) {
                        Ok(index) if words[index].load(Ordering::SeqCst) != 0 => return index,
                        Err(Errno::ENOSYS) => return usize::MAX,
                        Err(Errno::EAGAIN) => return 1,
                        _ => {}
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        words[1].store(1, Ordering::SeqCst);
        let _ = wake(FutexWord::of(&words[1]), u32::MAX);
        let index = sleeper.join().unwrap();
        assert!(index == 1 || index == usize::MAX, "woke {index}");
    }
}
