//! Qt's words for what went wrong: every `errorString()` text of `QSharedMemory` that comes from
//! a segment or lock failure is made here, from the layers' own failure types.

use crate::error::{Error, ErrorKind};
use crate::lock::LockFailure;
use crate::segment::{Failure, Step};
use crate::sys::{posix, Errno};

/// Which operation failed (Qt's labels depend on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Attach,
    Remove,
}

/// The backend a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Posix,
    SysV,
}

fn removal(function: &str, errno: Errno) -> Error {
    // EPERM (not the owner of the object, or of a sticky directory entry) is PermissionDenied
    // as EACCES is.
    if errno == Errno::EPERM {
        return Error::with_errno(
            ErrorKind::PermissionDenied,
            format!("{function}: permission denied"),
            errno,
        );
    }
    Error::from_errno(function, errno)
}

/// `QSharedMemory`'s error for a failed segment operation.
pub(crate) fn segment_error(op: Op, family: Family, failure: Failure) -> Error {
    let attach = |label: &str, e| Error::from_errno(&format!("QSharedMemory::attach ({label})"), e);
    match failure {
        Failure::EmptyKey => match family {
            Family::Posix => Error::new(ErrorKind::KeyError, "QSharedMemory::handle: key is empty"),
            Family::SysV => Error::new(ErrorKind::KeyError, "QSharedMemory::handle:: key is empty"),
        },
        Failure::KeyFile => Error::new(
            ErrorKind::KeyError,
            "QSharedMemory::handle:: unable to make key",
        ),
        Failure::BadName => Error::with_errno(
            ErrorKind::KeyError,
            "QSharedMemory::attach (shm_open): bad name",
            Errno::EINVAL,
        ),
        Failure::TooLarge => Error::with_errno(
            ErrorKind::InvalidSize,
            "QSharedMemory::create: size too large",
            Errno::EFBIG,
        ),
        Failure::SizeRestrictions => Error::with_errno(
            ErrorKind::InvalidSize,
            "QSharedMemory::handle: system-imposed size restrictions",
            Errno::EINVAL,
        ),
        Failure::OutOfSpace {
            needed,
            free,
            no_inodes,
        } => {
            let text = if no_inodes {
                format!(
                    "QSharedMemory::create (open): out of resources (no inode left in {}: \
                     too many files)",
                    posix::SHM_DIR
                )
            } else {
                format!(
                    "QSharedMemory::create (posix_fallocate): out of resources (needed \
                     {needed} bytes, {free} bytes free in {})",
                    posix::SHM_DIR
                )
            };
            Error::with_errno(ErrorKind::OutOfResources, text, Errno::ENOSPC)
        }
        Failure::OldLayout { file_name } => Error::new(
            ErrorKind::UnknownError,
            format!(
                "QSharedMemory::attach: {}/{file_name} is a segment of qsharedmem 0.1's layout \
                 (its control page at the end), which this version does not use; remove it \
                 with `qsharedmem rm posix:/{file_name}` once its users are gone",
                posix::SHM_DIR
            ),
        ),
        Failure::UnknownVersion { version } => Error::new(
            ErrorKind::UnknownError,
            format!(
                "QSharedMemory::attach: unsupported qsharedmem control block layout version \
                 {version}"
            ),
        ),
        Failure::SidecarTaken { file_name } => Error::with_errno(
            ErrorKind::AlreadyExists,
            format!(
                "QSharedMemory::create: {}/{file_name} exists and is not a qsharedmem control \
                 block",
                posix::SHM_DIR
            ),
            Errno::EEXIST,
        ),
        Failure::Busy => Error::with_errno(
            ErrorKind::LockError,
            "QSharedMemory::attach (flock): the segment is held exclusively (by a process \
             destroying it, or one stopped while doing so)",
            Errno::EWOULDBLOCK,
        ),
        Failure::Interrupted => interrupted("QSharedMemory::attach"),
        Failure::Os(step, e) => match step {
            Step::Open => attach("shm_open", e),
            Step::Reserve => match e {
                // What ftruncate says for these sizes (posix_fallocate sizes the file).
                Errno::EFBIG | Errno::EINVAL => {
                    Error::from_errno("QSharedMemory::create (ftruncate)", e)
                }
                _ => Error::from_errno("QSharedMemory::create", e),
            },
            Step::Stat => attach("fstat", e),
            Step::Map => attach("mmap", e),
            Step::Count => attach("flock", e),
            Step::Control => attach("control block", e),
            Step::MutexInit => Error::from_errno("QSharedMemory::create (pthread_mutex_init)", e),
            Step::Permissions => Error::from_errno("QSharedMemory::create (fchmod)", e),
            Step::Unlink => removal("QSharedMemory::remove (shm_unlink)", e),
            Step::Ftok => Error::from_errno("QSharedMemory::handle", e),
            Step::SysVCreate => Error::from_errno("QSharedMemory::create", e),
            Step::SysVGet => attach("shmget", e),
            Step::SysVAttach => attach("shmat", e),
            Step::SysVStat => attach("shmctl", e),
            Step::SysVRemove => match op {
                Op::Remove => removal("QSharedMemory::remove (shmctl)", e),
                _ => Error::from_errno("QSharedMemory::remove", e),
            },
        },
    }
}

/// The error of a wait that the caller's interrupt check ended (not recorded, as it is the
/// caller's own doing).
pub(crate) fn interrupted(function: &str) -> Error {
    Error::new(ErrorKind::LockError, format!("{function}: interrupted"))
}

/// `QSharedMemory::lock()`'s error for a failed acquisition.
pub(crate) fn lock_error(failure: LockFailure) -> Error {
    match failure {
        LockFailure::Interrupted => interrupted("QSharedMemory::lock"),
        LockFailure::TimedOut => Error::with_errno(
            ErrorKind::LockError,
            "QSharedMemory::lock: unable to lock (timed out)",
            Errno::ETIMEDOUT,
        ),
        LockFailure::WouldDeadlock => Error::with_errno(
            ErrorKind::LockError,
            "QSharedMemory::lock: unable to lock (this thread already holds the lock through \
             another handle)",
            Errno::EDEADLK,
        ),
        LockFailure::Os(e) => Error::with_errno(
            ErrorKind::LockError,
            "QSharedMemory::lock: unable to lock",
            e,
        ),
    }
}

/// The error of an internal lock (create, attach, detach, remove) that could not be taken.
pub(crate) fn internal_lock_error(function: &str, failure: LockFailure) -> Error {
    match failure {
        LockFailure::Interrupted => interrupted(function),
        LockFailure::TimedOut => Error::with_errno(
            ErrorKind::LockError,
            format!("{function}: unable to lock (timed out)"),
            Errno::ETIMEDOUT,
        ),
        _ => Error::new(ErrorKind::LockError, format!("{function}: unable to lock")),
    }
}
