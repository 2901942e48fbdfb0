//! Qt's `QSystemSemaphore` backend for POSIX keys: a named semaphore (`sem_open`,
//! `/dev/shm/sem.<name>`), opened, created, taken over and cleaned up exactly as Qt 6.12 does.
//! Not crash-safe (a holder that dies keeps its token): that is Qt's design, and why
//! qsharedmem's own segments pair it with a robust mutex ([`super::paired`]).

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use super::SemMode;
use crate::error::{SemaphoreError, SemaphoreErrorKind};
use crate::sys::namedsem::{self, NamedSemaphore, OpenMode};
use crate::sys::{posix, Errno};

fn sem_err(function: &str, errno: Errno) -> SemaphoreError {
    SemaphoreError::from_errno(function, errno)
}

/// glibc's `SEM_VALUE_MAX` (`INT_MAX`): `sem_post` fails with `EOVERFLOW` beyond it.
const SEM_VALUE_MAX: u32 = i32::MAX as u32;

/// Why Qt's open loop gave up: another process kept creating and unlinking the name
/// (worth another round), or a real error.
enum TryError {
    Raced(Errno),
    Failed(SemaphoreError),
}

/// A POSIX named semaphore used the way Qt's `QSystemSemaphorePrivate` (posix) uses it.
#[derive(Debug)]
pub(crate) struct PosixSemaphore {
    name: String,
    sem: NamedSemaphore,
    created: AtomicBool,
    /// The file `sem.<name>` right after the open: the one we opened, unless another process
    /// swapped it in that instant (then [`Self::still_named`] says no and it is opened again).
    file: Option<posix::FileStat>,
}

impl PosixSemaphore {
    /// Qt's `handle(mode)` for a POSIX key, with Qt's 0600 (the tests' shorthand).
    #[cfg(test)]
    pub(crate) fn open(
        name: &str,
        initial_value: u32,
        mode: SemMode,
    ) -> Result<Self, SemaphoreError> {
        Self::open_with_permissions(name, initial_value, mode, 0o600)
    }

    /// Qt's `handle(Open)` for a segment's lock, which a last detacher unlinks:
    /// where Qt gives up after two tries (`EEXIST`, then `ENOENT` because another process
    /// unlinked it in between), keep alternating, so that churning attachers never see a
    /// spurious `LockError`. Each round trip means another process made progress.
    pub(crate) fn open_for_lock(name: &str) -> Result<Self, SemaphoreError> {
        const ROUNDS: u32 = 1000;
        let mut last = None;
        for _ in 0..ROUNDS {
            match Self::open_with_tries(name, 1, SemMode::Open, 0o600, 2) {
                Ok(sem) => return Ok(sem),
                Err(TryError::Raced(errno)) => last = Some(errno),
                Err(TryError::Failed(e)) => return Err(e),
            }
        }
        Err(sem_err(
            "QSystemSemaphore::handle",
            last.unwrap_or(Errno::EEXIST),
        ))
    }

    /// Qt's `handle(mode)` for a POSIX key, creating the semaphore with `permissions` (Qt: 0600,
    /// less the umask) if it does not exist.
    pub(crate) fn open_with_permissions(
        name: &str,
        initial_value: u32,
        mode: SemMode,
        permissions: u32,
    ) -> Result<Self, SemaphoreError> {
        let max_tries = if mode == SemMode::Create { 3 } else { 2 };
        Self::open_with_tries(name, initial_value, mode, permissions, max_tries).map_err(
            |e| match e {
                TryError::Raced(errno) => sem_err("QSystemSemaphore::handle", errno),
                TryError::Failed(e) => e,
            },
        )
    }

    fn open_with_tries(
        name: &str,
        initial_value: u32,
        mode: SemMode,
        permissions: u32,
        max_tries: u32,
    ) -> Result<Self, TryError> {
        if name.is_empty() {
            return Err(TryError::Failed(SemaphoreError::new(
                SemaphoreErrorKind::KeyError,
                "QSystemSemaphore::handle: key is empty",
            )));
        }
        let mut exclusive = true;
        let mut last = Errno::EEXIST;
        for _ in 0..max_tries {
            let how = if exclusive {
                OpenMode::CreateNew {
                    mode: permissions,
                    value: initial_value,
                }
            } else {
                OpenMode::Existing
            };
            match NamedSemaphore::open(name, how) {
                Ok(sem) => {
                    let file = posix::shm_file_name(name, true)
                        .and_then(|file_name| posix::stat_name(&file_name))
                        .ok();
                    return Ok(Self {
                        name: name.to_owned(),
                        sem,
                        created: AtomicBool::new(exclusive),
                        file,
                    });
                }
                Err(Errno::EEXIST) if mode == SemMode::Create => {
                    if let Err(e) = namedsem::unlink(name) {
                        if e != Errno::ENOENT {
                            return Err(TryError::Failed(sem_err(
                                "QSystemSemaphore::handle (sem_unlink)",
                                e,
                            )));
                        }
                    }
                    last = Errno::EEXIST;
                }
                Err(Errno::EEXIST) => {
                    exclusive = false;
                    last = Errno::EEXIST;
                }
                Err(Errno::ENOENT) if !exclusive => {
                    // Unlinked between our two attempts: create it after all.
                    exclusive = true;
                    last = Errno::ENOENT;
                }
                Err(e) => return Err(TryError::Failed(sem_err("QSystemSemaphore::handle", e))),
            }
        }
        Err(TryError::Raced(last))
    }

    /// The open semaphore.
    pub(crate) fn semaphore(&self) -> &NamedSemaphore {
        &self.sem
    }

    /// Whether `sem.<name>` is still the file this semaphore was opened from. A last detacher
    /// unlinks a segment's semaphore with the segment; a handle that kept the unlinked one
    /// would lock a semaphore nobody else sees (and one a dead holder left at 0 for ever).
    pub(crate) fn still_named(&self) -> bool {
        let now = posix::shm_file_name(&self.name, true).and_then(|f| posix::stat_name(&f));
        matches!((&self.file, now), (Some(then), Ok(now)) if then.same_file(&now))
    }

    /// The name passed to `sem_open`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether this object created the named semaphore (then, by Qt's rules, it unlinks it).
    pub(crate) fn owns_semaphore(&self) -> bool {
        self.created.load(Ordering::Relaxed)
    }

    /// Gives the semaphore's file (`/dev/shm/sem.<name>`) exactly the permission bits `mode`
    /// (`sem_open` applies the umask) and, if given, the group `group`.
    pub(crate) fn set_permissions(&self, mode: u32, group: Option<u32>) -> Result<(), Errno> {
        let file = posix::shm_file_name(&self.name, true)?;
        let fd = posix::open_existing(&file, false)?;
        posix::set_mode(fd.as_fd(), mode & 0o666)?;
        if let Some(group) = group {
            posix::set_group(fd.as_fd(), group)?;
        }
        Ok(())
    }

    /// Qt's `release(n)` for POSIX (`modifySemaphore(n)`): `sem_post` `n` times; if one fails,
    /// the posts already done are taken back and the error returned (Qt takes them back with
    /// a blocking `sem_wait`; here `sem_trywait`, so that a rollback racing with other
    /// processes' acquires cannot hang). A release
    /// that would take the value past `SEM_VALUE_MAX` is refused up front with `EOVERFLOW`
    /// (Qt gets there by posting up to the maximum and rolling back: the same outcome, without
    /// billions of system calls).
    pub(crate) fn release(&self, n: u32) -> Result<(), Errno> {
        let current = u32::try_from(self.sem.value()?).unwrap_or(0);
        if u64::from(current) + u64::from(n) > u64::from(SEM_VALUE_MAX) {
            return Err(Errno::EOVERFLOW);
        }
        for done in 0..n {
            if let Err(e) = self.sem.post() {
                for _ in 0..done {
                    let _ = self.sem.try_wait();
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The current value (`sem_getvalue`).
    #[cfg(test)]
    pub(crate) fn value(&self) -> Result<i32, Errno> {
        self.sem.value()
    }

    /// Qt's `cleanHandle()` on the name: unlinks it if this object created it. An unlink
    /// that fails for another reason than the name being gone already is Qt's error.
    pub(crate) fn clean_handle(&self) -> Result<(), SemaphoreError> {
        if self.created.swap(false, Ordering::Relaxed) {
            match namedsem::unlink(&self.name) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(sem_err("QSystemSemaphore::cleanHandle (sem_unlink)", e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_open_and_create_follow_qt() {
        let name = format!("/qsm-semaphore-test-{}", std::process::id());
        let first = PosixSemaphore::open(&name, 1, SemMode::Open).unwrap();
        assert!(first.owns_semaphore());
        let second = PosixSemaphore::open(&name, 1, SemMode::Open).unwrap();
        assert!(!second.owns_semaphore());
        first.semaphore().try_wait().unwrap();
        assert_eq!(second.semaphore().value().unwrap(), 0);
        first.clean_handle().unwrap();
        drop(second);
        assert_eq!(namedsem::unlink(&name), Err(Errno::ENOENT));
        let e = PosixSemaphore::open("/a/b", 1, SemMode::Open).unwrap_err();
        assert_eq!(
            e.message(),
            "QSystemSemaphore::handle: unknown error: Invalid argument"
        );
        let e = PosixSemaphore::open("", 1, SemMode::Open).unwrap_err();
        assert_eq!(e.message(), "QSystemSemaphore::handle: key is empty");
    }
}
