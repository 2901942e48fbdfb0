//! Descriptors that wake a waiter up: an `eventfd` (another thread says "look now", e.g. to an
//! asyncio event loop, which watches the descriptor), and `inotify` on `/dev/shm` (a name
//! appeared there: a segment that someone is waiting for may have been created).

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::cvt::{c_string, cvt, cvt_count, retry, Errno, SysResult};

/// A non-blocking `eventfd`: [`EventFd::signal`] makes it readable until [`EventFd::drain`].
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`.
    pub fn new() -> SysResult<Self> {
        // SAFETY: plain integer arguments; a new descriptor or -1.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `eventfd` returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The descriptor number, for an event loop to watch (it stays owned by `self`).
    #[must_use]
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Makes the descriptor readable (adds 1 to its counter).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to a descriptor `self` owns. It can only fail
        // when the counter would overflow (2^64 - 2 unread signals), which leaves it readable
        // anyway, so the result is not needed.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Reads the counter back to 0 (the descriptor is not readable until the next signal).
    pub fn drain(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64 from a descriptor `self` owns;
        // EAGAIN (nothing signalled) is the only expected failure and needs no handling.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut count).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits until `fd` is readable, at most `timeout`: true if it is.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> SysResult<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd that lives for the call.
    let ready = cvt(unsafe { libc::poll(&mut pollfd, 1, ms) })?;
    Ok(ready > 0)
}

/// `inotify` watching one directory for names that appear in it.
#[derive(Debug)]
pub struct DirectoryWatch {
    fd: OwnedFd,
}

impl DirectoryWatch {
    /// Watches `dir` for names created or moved into it (`IN_CREATE | IN_MOVED_TO`; a `linkat`
    /// of an unnamed file is a create). `ENOSPC`/`EMFILE` when the user's inotify limits are
    /// reached: the caller polls instead.
    pub fn new(dir: &str) -> SysResult<Self> {
        // SAFETY: plain integer flags; a new descriptor or -1.
        let fd = cvt(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
        // SAFETY: `inotify_init1` returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = c_string(dir)?;
        // SAFETY: valid descriptor and NUL-terminated path.
        cvt(unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        })?;
        Ok(Self { fd })
    }

    /// Waits at most `timeout` for names to appear; returns the names that did (empty after a
    /// timeout). An overflowing queue (`IN_Q_OVERFLOW`) is reported as the name "" so that the
    /// caller looks anyway.
    pub fn wait(&self, timeout: Duration) -> SysResult<Vec<String>> {
        if !wait_readable(self.fd.as_fd(), timeout)? {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; 16 * 1024];
        let read = retry(|| {
            // SAFETY: reads at most `buf.len()` bytes into `buf`, which lives for the call.
            cvt_count(unsafe {
                libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            })
        });
        let len = match read {
            Ok(len) => len,
            Err(Errno::EAGAIN) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(parse_events(&buf[..len]))
    }
}

/// The names in a buffer of `struct inotify_event`s (`wd`, `mask`, `cookie`, `len`, then `len`
/// bytes of NUL-padded name).
fn parse_events(mut bytes: &[u8]) -> Vec<String> {
    const HEADER: usize = 16;
    let mut names = Vec::new();
    while bytes.len() >= HEADER {
        let field = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let mask = field(4);
        let len = field(12) as usize;
        let end = (HEADER + len).min(bytes.len());
        let raw = &bytes[HEADER..end];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        if mask & libc::IN_Q_OVERFLOW != 0 {
            names.push(String::new());
        } else {
            names.push(OsStr::from_bytes(name).to_string_lossy().into_owned());
        }
        bytes = &bytes[end..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_is_readable_after_a_signal_until_drained() {
        let fd = EventFd::new().unwrap();
        let borrowed = || fd.as_fd();
        assert!(!wait_readable(borrowed(), Duration::from_millis(1)).unwrap());
        fd.signal();
        fd.signal();
        assert!(wait_readable(borrowed(), Duration::from_millis(1)).unwrap());
        fd.drain();
        assert!(!wait_readable(borrowed(), Duration::from_millis(1)).unwrap());
    }

    #[test]
    fn a_directory_watch_reports_new_names() {
        let dir = std::env::temp_dir().join(format!("qsm-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let watch = DirectoryWatch::new(dir.to_str().unwrap()).unwrap();
        assert!(watch.wait(Duration::from_millis(1)).unwrap().is_empty());
        std::fs::write(dir.join("appeared"), b"x").unwrap();
        let names = watch.wait(Duration::from_secs(5)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["appeared"]);
    }
}
