//! Error numbers and the small conversions every wrapper uses.

use std::ffi::{c_int, CString};
use std::fmt;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An OS error number (`errno`).
///
/// The number itself stays inside `sys`: the rest of the crate names errors by the constants
/// below (`Errno::EEXIST`), matches on them, and hands them back for Qt's texts.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

#[allow(missing_docs, dead_code)] // the full set the crate names; not every one is used
impl Errno {
    /// `EPERM`.
    pub const EPERM: Self = Self(libc::EPERM);
    /// `ENOENT`.
    pub const ENOENT: Self = Self(libc::ENOENT);
    /// `ESRCH`.
    pub const ESRCH: Self = Self(libc::ESRCH);
    /// `EINTR`.
    pub const EINTR: Self = Self(libc::EINTR);
    /// `EIO`.
    pub const EIO: Self = Self(libc::EIO);
    /// `EBADF`.
    pub const EBADF: Self = Self(libc::EBADF);
    /// `EAGAIN`.
    pub const EAGAIN: Self = Self(libc::EAGAIN);
    /// `ENOMEM`.
    pub const ENOMEM: Self = Self(libc::ENOMEM);
    /// `EACCES`.
    pub const EACCES: Self = Self(libc::EACCES);
    /// `EBUSY`.
    pub const EBUSY: Self = Self(libc::EBUSY);
    /// `EEXIST`.
    pub const EEXIST: Self = Self(libc::EEXIST);
    /// `EXDEV`.
    pub const EXDEV: Self = Self(libc::EXDEV);
    /// `EINVAL`.
    pub const EINVAL: Self = Self(libc::EINVAL);
    /// `EMFILE`.
    pub const EMFILE: Self = Self(libc::EMFILE);
    /// `ENOSPC`.
    pub const ENOSPC: Self = Self(libc::ENOSPC);
    /// `EFBIG`.
    pub const EFBIG: Self = Self(libc::EFBIG);
    /// `ERANGE`.
    pub const ERANGE: Self = Self(libc::ERANGE);
    /// `EDEADLK`.
    pub const EDEADLK: Self = Self(libc::EDEADLK);
    /// `ENAMETOOLONG`.
    pub const ENAMETOOLONG: Self = Self(libc::ENAMETOOLONG);
    /// `ENOSYS`.
    pub const ENOSYS: Self = Self(libc::ENOSYS);
    /// `ELOOP`.
    pub const ELOOP: Self = Self(libc::ELOOP);
    /// `EIDRM`.
    pub const EIDRM: Self = Self(libc::EIDRM);
    /// `EOVERFLOW`.
    pub const EOVERFLOW: Self = Self(libc::EOVERFLOW);
    /// `ETIMEDOUT`.
    pub const ETIMEDOUT: Self = Self(libc::ETIMEDOUT);
    /// `EOWNERDEAD`.
    pub const EOWNERDEAD: Self = Self(libc::EOWNERDEAD);
    /// `ENOTRECOVERABLE`.
    pub const ENOTRECOVERABLE: Self = Self(libc::ENOTRECOVERABLE);
    /// `EWOULDBLOCK`.
    pub const EWOULDBLOCK: Self = Self(libc::EWOULDBLOCK);
}

impl Errno {
    /// The calling thread's current `errno`.
    pub(crate) fn last() -> Self {
        Self(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    /// An error number as the C library returns it (`pthread_*`, `posix_fallocate`).
    pub(crate) const fn from_raw(errno: i32) -> Self {
        Self(errno)
    }

    /// The error of an `std::io` operation (`EIO` if it has no OS error number).
    pub(crate) fn from_io(error: &io::Error) -> Self {
        Self(error.raw_os_error().unwrap_or(libc::EIO))
    }

    /// The number, for Python's `OSError.errno` and for messages.
    #[must_use]
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// What `strerror` says about it (what Qt's `qt_error_string` prints).
    #[must_use]
    pub fn text(self) -> String {
        strerror(self.0)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({}: {})", self.0, strerror(self.0))
    }
}

/// Result of a system call wrapper.
pub type SysResult<T> = Result<T, Errno>;

/// Turns a `-1`-on-error return value into a `Result`.
pub(crate) fn cvt(ret: c_int) -> SysResult<c_int> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Turns the return value of a call that returns a count (`read`, `pwrite`, `syscall`), negative
/// on error, into a `Result`.
pub(crate) fn cvt_count<T: TryInto<usize>>(ret: T) -> SysResult<usize> {
    ret.try_into().map_err(|_| Errno::last())
}

/// Runs `f` again for as long as it fails with `EINTR`.
pub(crate) fn retry<T>(mut f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// The absolute `CLOCK_REALTIME` time `wait` from now, as the `*_timedwait`/`*_timedlock`
/// calls take it. Callers wait in slices of at most 100 ms, so a wall-clock step can distort
/// one slice, not a whole wait.
pub(crate) fn realtime_deadline(wait: Duration) -> libc::timespec {
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(wait);
    libc::timespec {
        tv_sec: libc::time_t::try_from(deadline.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(deadline.subsec_nanos() as i32),
    }
}

/// A C string for a path or name; an interior NUL byte is `EINVAL`, as the kernel would say for
/// a name it cannot represent.
pub(crate) fn c_string(bytes: impl Into<Vec<u8>>) -> SysResult<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// The text `strerror(errno)` gives (what Qt's `qt_error_string` prints).
#[must_use]
pub fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    // std formats "<strerror text> (os error N)"; Qt prints only the strerror text.
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_matches_libc_text() {
        assert_eq!(strerror(libc::EINVAL), "Invalid argument");
        assert_eq!(strerror(libc::ENOENT), "No such file or directory");
    }

    #[test]
    fn interior_nul_is_einval() {
        assert_eq!(c_string("a\0b").unwrap_err(), Errno::EINVAL);
    }
}
