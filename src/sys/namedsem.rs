//! POSIX named semaphores (`sem_open`), the lock Qt uses for POSIX keys.

use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Duration;

use std::os::fd::AsFd;

use super::cvt::{c_string, cvt, realtime_deadline, retry, Errno, SysResult};
use super::posix;

/// An open named semaphore, closed (`sem_close`) when dropped.
#[derive(Debug)]
pub struct NamedSemaphore {
    sem: NonNull<libc::sem_t>,
}

// SAFETY: a `sem_t *` from `sem_open` names a process-wide object; every sem_* function is
// thread-safe, so the handle may move between and be shared by threads.
unsafe impl Send for NamedSemaphore {}
// SAFETY: see `Send`.
unsafe impl Sync for NamedSemaphore {}

/// How to open a semaphore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// `O_CREAT|O_EXCL`: create it, fail with `EEXIST` if it exists.
    CreateNew {
        /// Permission bits.
        mode: libc::mode_t,
        /// Initial value.
        value: u32,
    },
    /// No flags: open an existing one, `ENOENT` if there is none.
    Existing,
}

#[cfg(test)]
impl OpenMode {
    /// A new semaphore of value 1 that only its user may open: a free lock, for tests.
    pub(crate) const NEW_LOCK: Self = Self::CreateNew {
        mode: 0o600,
        value: 1,
    };
}

fn name_c(name: &str) -> SysResult<CString> {
    c_string(name)
}

impl NamedSemaphore {
    /// `sem_open(name, ...)`; `name` is passed to glibc as it is (Qt passes `"/<key>"`).
    ///
    /// `CreateNew` does not use glibc's way of creating: glibc writes a temporary
    /// `/dev/shm/sem.XXXXXX`, links it to the name and unlinks it, so a process killed in between
    /// leaves that temporary file behind for ever. We write the semaphore into an unnamed file
    /// and give it its name atomically (as for segments), so a kill at any instruction leaves
    /// either nothing or the finished semaphore; then glibc opens it by name.
    pub fn open(name: &str, how: OpenMode) -> SysResult<Self> {
        if let OpenMode::CreateNew { mode, value } = how {
            for _ in 0..8 {
                match create_named_file(name, mode, value) {
                    Ok(()) => {}
                    Err(CreateRoute::Glibc) => break,
                    Err(CreateRoute::Failed(errno)) => return Err(errno),
                }
                match Self::open(name, OpenMode::Existing) {
                    // unlinked again between our link and our open: make another one
                    Err(Errno::ENOENT) => continue,
                    opened => return opened,
                }
            }
        }
        Self::open_with_glibc(name, how)
    }

    fn open_with_glibc(name: &str, how: OpenMode) -> SysResult<Self> {
        let c_name = name_c(name)?;
        let sem = retry(|| {
            let sem = match how {
                OpenMode::CreateNew { mode, value } => {
                    // SAFETY: valid C string; with O_CREAT sem_open reads a mode_t and an
                    // unsigned int as its variadic arguments, which we pass.
                    unsafe {
                        libc::sem_open(
                            c_name.as_ptr(),
                            libc::O_CREAT | libc::O_EXCL,
                            libc::c_uint::from(mode),
                            value,
                        )
                    }
                }
                // SAFETY: valid C string; without O_CREAT no variadic arguments are read.
                OpenMode::Existing => unsafe { libc::sem_open(c_name.as_ptr(), 0) },
            };
            if sem == libc::SEM_FAILED {
                Err(Errno::last())
            } else {
                NonNull::new(sem).ok_or(Errno::EINVAL)
            }
        })?;
        Ok(Self { sem })
    }

    /// `sem_trywait`: `EAGAIN` if the value is 0.
    #[inline]
    pub fn try_wait(&self) -> SysResult<()> {
        // SAFETY: `sem` is an open semaphore for as long as `self` lives.
        if unsafe { libc::sem_trywait(self.sem.as_ptr()) } == 0 {
            return Ok(());
        }
        self.try_wait_failed()
    }

    /// A `sem_trywait` that failed: its `errno`, after retrying an interrupted one.
    #[cold]
    #[inline(never)]
    fn try_wait_failed(&self) -> SysResult<()> {
        match Errno::last() {
            Errno::EINTR => {
                // SAFETY: as in `try_wait`.
                retry(|| cvt(unsafe { libc::sem_trywait(self.sem.as_ptr()) })).map(drop)
            }
            other => Err(other),
        }
    }

    /// `sem_timedwait` for at most `wait`: `ETIMEDOUT` when it passes; `EINTR` is returned so
    /// that callers can look at signals.
    pub fn wait_for(&self, wait: Duration) -> SysResult<()> {
        let ts = realtime_deadline(wait);
        // SAFETY: `sem` is open; `ts` is a valid timespec that outlives the call.
        cvt(unsafe { libc::sem_timedwait(self.sem.as_ptr(), &ts) }).map(drop)
    }

    /// `sem_post`.
    #[inline]
    pub fn post(&self) -> SysResult<()> {
        // SAFETY: `sem` is an open semaphore.
        if unsafe { libc::sem_post(self.sem.as_ptr()) } == 0 {
            return Ok(());
        }
        Err(Errno::last())
    }

    /// `sem_getvalue`.
    pub fn value(&self) -> SysResult<i32> {
        let mut value = 0;
        // SAFETY: `sem` is open and `value` is a valid int to write.
        cvt(unsafe { libc::sem_getvalue(self.sem.as_ptr(), &mut value) })?;
        Ok(value)
    }
}

impl Drop for NamedSemaphore {
    fn drop(&mut self) {
        // sem_close only fails for an invalid handle, which cannot happen here; a destructor has
        // nothing useful to do with an error, so it is ignored.
        // SAFETY: `sem` came from a successful sem_open and is closed exactly once.
        let _ = unsafe { libc::sem_close(self.sem.as_ptr()) };
    }
}

/// Why [`create_named_file`] did not make the semaphore.
enum CreateRoute {
    /// This name or this system needs glibc's own way (which then reports any error itself).
    Glibc,
    /// The name exists (`EEXIST`), or another definite error.
    Failed(Errno),
}

/// Writes a semaphore of `value` into an unnamed file in `/dev/shm` and links it as the file
/// that `sem_open(name)` opens. The bytes are glibc's own: `sem_init(pshared = 1)` lays out a
/// zeroed `sem_t` exactly as `sem_open` does for a new semaphore (the value, no waiters, the
/// shared-futex flag).
fn create_named_file(name: &str, mode: libc::mode_t, value: u32) -> Result<(), CreateRoute> {
    let file_name = posix::shm_file_name(name, true).map_err(|_| CreateRoute::Glibc)?;
    // SAFETY: an all-zero sem_t is a valid bit pattern for a plain C struct of integers.
    let mut image: libc::sem_t = unsafe { std::mem::zeroed() };
    // SAFETY: `image` is a valid, writable sem_t; it is only copied as bytes afterwards, never
    // used as a semaphore, so it needs no sem_destroy.
    if unsafe { libc::sem_init(&mut image, 1, value) } != 0 {
        return Err(CreateRoute::Failed(Errno::last())); // EINVAL: value > SEM_VALUE_MAX
    }
    // SAFETY: `image` is initialised, and any initialised memory may be read as bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const image).cast::<u8>(),
            std::mem::size_of::<libc::sem_t>(),
        )
    };
    // No O_TMPFILE (an old kernel, another file system): glibc's way.
    let file = posix::create_unnamed(bytes.len() as u64, mode).map_err(|_| CreateRoute::Glibc)?;
    posix::write_all_at(file.as_fd(), 0, bytes).map_err(CreateRoute::Failed)?;
    match posix::publish(file.as_fd(), &file_name) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => Err(CreateRoute::Failed(Errno::EEXIST)),
        Err(_) => Err(CreateRoute::Glibc),
    }
}

/// `sem_unlink(name)`.
pub fn unlink(name: &str) -> SysResult<()> {
    let c_name = name_c(name)?;
    // SAFETY: valid NUL-terminated string.
    cvt(unsafe { libc::sem_unlink(c_name.as_ptr()) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_wait_post_unlink() {
        let name = format!("/qsm-namedsem-test-{}", std::process::id());
        let sem = NamedSemaphore::open(&name, OpenMode::NEW_LOCK).unwrap();
        assert_eq!(
            NamedSemaphore::open(&name, OpenMode::NEW_LOCK).unwrap_err(),
            Errno::EEXIST
        );
        let again = NamedSemaphore::open(&name, OpenMode::Existing).unwrap();
        sem.try_wait().unwrap();
        assert_eq!(again.try_wait(), Err(Errno::EAGAIN));
        assert_eq!(
            again.wait_for(Duration::from_millis(5)),
            Err(Errno::ETIMEDOUT)
        );
        again.post().unwrap();
        assert_eq!(sem.value().unwrap(), 1);
        unlink(&name).unwrap();
        assert_eq!(unlink(&name), Err(Errno::ENOENT));
        assert_eq!(
            NamedSemaphore::open("/a/b", OpenMode::Existing).unwrap_err(),
            Errno::EINVAL
        );
    }

    #[test]
    fn a_created_semaphore_has_the_bytes_glibc_gives_it() {
        let ours = format!("/qsm-namedsem-ours-{}", std::process::id());
        let glibcs = format!("/qsm-namedsem-glibc-{}", std::process::id());
        let how = OpenMode::CreateNew {
            mode: 0o640,
            value: 3,
        };
        let a = NamedSemaphore::open(&ours, how).unwrap();
        let b = NamedSemaphore::open_with_glibc(&glibcs, how).unwrap();
        let read = |name: &str| std::fs::read(format!("/dev/shm/sem.{}", &name[1..])).unwrap();
        assert_eq!(read(&ours), read(&glibcs));
        assert_eq!((a.value().unwrap(), b.value().unwrap()), (3, 3));
        a.try_wait().unwrap();
        assert_eq!(
            NamedSemaphore::open(&ours, OpenMode::Existing)
                .unwrap()
                .value(),
            Ok(2)
        );
        assert_eq!(NamedSemaphore::open(&ours, how).unwrap_err(), Errno::EEXIST);
        unlink(&ours).unwrap();
        unlink(&glibcs).unwrap();
    }
}
