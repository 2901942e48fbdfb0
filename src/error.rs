//! Errors with Qt's error codes and Qt's `errorString()` texts.
//!
//! [`Error`] is what every fallible operation of [`SharedMemory`](crate::SharedMemory) returns.
//! Its [`kind`](Error::kind) is `QSharedMemory::SharedMemoryError` (same names, same numbers),
//! its [`Display`](std::fmt::Display) text is exactly the `errorString()` Qt 6.12 produces for the
//! same failure, and the OS error number is kept when there is one.
//!
//! [`SemaphoreError`] is the same for `QSystemSemaphore`, whose codes and texts differ slightly
//! from QSharedMemory's (for example `ENOENT` reads "does not exist" there, "doesn't exist" here).

use std::fmt;

use crate::sys;

/// `QSharedMemory::SharedMemoryError`, without `NoError` (that is `Ok`).
///
/// The discriminants are Qt's values, see [`ErrorKind::qt_value`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `QSharedMemory::PermissionDenied` (1).
    PermissionDenied = 1,
    /// `QSharedMemory::InvalidSize` (2).
    InvalidSize = 2,
    /// `QSharedMemory::KeyError` (3).
    KeyError = 3,
    /// `QSharedMemory::AlreadyExists` (4).
    AlreadyExists = 4,
    /// `QSharedMemory::NotFound` (5).
    NotFound = 5,
    /// `QSharedMemory::LockError` (6).
    LockError = 6,
    /// `QSharedMemory::OutOfResources` (7).
    OutOfResources = 7,
    /// `QSharedMemory::UnknownError` (8).
    UnknownError = 8,
}

impl ErrorKind {
    /// The numeric value of this kind in Qt's `QSharedMemory::SharedMemoryError`.
    #[must_use]
    pub const fn qt_value(self) -> u8 {
        self as u8
    }

    /// The kind for a Qt `SharedMemoryError` value; `None` for `NoError` (0) and unknown values.
    #[must_use]
    pub const fn from_qt_value(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::PermissionDenied,
            2 => Self::InvalidSize,
            3 => Self::KeyError,
            4 => Self::AlreadyExists,
            5 => Self::NotFound,
            6 => Self::LockError,
            7 => Self::OutOfResources,
            8 => Self::UnknownError,
            _ => return None,
        })
    }
}

/// A failed shared memory operation: Qt's error code, Qt's error text, and the OS error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    errno: Option<i32>,
}

impl Error {
    /// An error with a fixed Qt text and no OS error behind it.
    #[must_use]
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            errno: None,
        }
    }

    /// An error with a text of our own, for a failure Qt has no text for, carrying the OS error.
    #[must_use]
    pub fn with_errno(kind: ErrorKind, message: impl Into<String>, errno: i32) -> Self {
        Self {
            kind,
            message: message.into(),
            errno: Some(errno),
        }
    }

    /// Qt's `setUnixErrorString(function)`: maps `errno` to a kind and the text
    /// `"<function>: <reason>"` exactly as Qt does.
    #[must_use]
    pub fn from_errno(function: &str, errno: i32) -> Self {
        let (kind, reason) = match errno {
            libc::EACCES => (ErrorKind::PermissionDenied, "permission denied".to_owned()),
            libc::EEXIST => (ErrorKind::AlreadyExists, "already exists".to_owned()),
            libc::ENOENT => (ErrorKind::NotFound, "doesn't exist".to_owned()),
            libc::EMFILE | libc::ENOMEM | libc::ENOSPC => {
                (ErrorKind::OutOfResources, "out of resources".to_owned())
            }
            other => (
                ErrorKind::UnknownError,
                format!("unknown error: {}", sys::strerror(other)),
            ),
        };
        Self {
            kind,
            message: format!("{function}: {reason}"),
            errno: Some(errno),
        }
    }

    /// The error `QSharedMemoryPrivate::initKey` reports when setting up the lock failed:
    /// the semaphore's kind mapped 1:1 and its text wrapped in Qt's sentence.
    #[must_use]
    pub fn from_init_key(lock_error: &SemaphoreError) -> Self {
        let kind = match lock_error.kind {
            SemaphoreErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            SemaphoreErrorKind::KeyError => ErrorKind::KeyError,
            SemaphoreErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            SemaphoreErrorKind::NotFound => ErrorKind::NotFound,
            SemaphoreErrorKind::OutOfResources => ErrorKind::OutOfResources,
            SemaphoreErrorKind::UnknownError => ErrorKind::UnknownError,
        };
        Self {
            kind,
            message: format!(
                "QSharedMemoryPrivate::initKey: unable to set key on lock ({})",
                lock_error.message
            ),
            errno: lock_error.errno,
        }
    }

    /// Qt's error code for this error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Qt's `errorString()` for this error.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The OS error number behind this error, if there is one.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `QSystemSemaphore::SystemSemaphoreError`, without `NoError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SemaphoreErrorKind {
    /// `QSystemSemaphore::PermissionDenied` (1).
    PermissionDenied = 1,
    /// `QSystemSemaphore::KeyError` (2).
    KeyError = 2,
    /// `QSystemSemaphore::AlreadyExists` (3).
    AlreadyExists = 3,
    /// `QSystemSemaphore::NotFound` (4).
    NotFound = 4,
    /// `QSystemSemaphore::OutOfResources` (5).
    OutOfResources = 5,
    /// `QSystemSemaphore::UnknownError` (6).
    UnknownError = 6,
}

impl SemaphoreErrorKind {
    /// The numeric value of this kind in Qt's `QSystemSemaphore::SystemSemaphoreError`.
    #[must_use]
    pub const fn qt_value(self) -> u8 {
        self as u8
    }
}

/// A failed `QSystemSemaphore` operation, with Qt's code and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemaphoreError {
    kind: SemaphoreErrorKind,
    message: String,
    errno: Option<i32>,
}

impl SemaphoreError {
    /// An error with a fixed Qt text.
    #[must_use]
    pub fn new(kind: SemaphoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            errno: None,
        }
    }

    /// `QSystemSemaphorePrivate::setUnixErrorString(function)`: Qt's errno mapping for
    /// semaphores.
    #[must_use]
    pub fn from_errno(function: &str, errno: i32) -> Self {
        let (kind, reason) = match errno {
            libc::EPERM | libc::EACCES => (
                SemaphoreErrorKind::PermissionDenied,
                "permission denied".to_owned(),
            ),
            libc::EEXIST => (
                SemaphoreErrorKind::AlreadyExists,
                "already exists".to_owned(),
            ),
            libc::ENOENT => (SemaphoreErrorKind::NotFound, "does not exist".to_owned()),
            libc::ERANGE | libc::ENOSPC | libc::EMFILE => (
                SemaphoreErrorKind::OutOfResources,
                "out of resources".to_owned(),
            ),
            libc::ENAMETOOLONG => (SemaphoreErrorKind::KeyError, "key too long".to_owned()),
            other => (
                SemaphoreErrorKind::UnknownError,
                format!("unknown error: {}", sys::strerror(other)),
            ),
        };
        Self {
            kind,
            message: format!("{function}: {reason}"),
            errno: Some(errno),
        }
    }

    /// Qt's error code for this error.
    #[must_use]
    pub fn kind(&self) -> SemaphoreErrorKind {
        self.kind
    }

    /// Qt's `errorString()` for this error.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The OS error number behind this error, if there is one.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }
}

impl fmt::Display for SemaphoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SemaphoreError {}

/// Shorthand for results of shared memory operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_texts_are_qts() {
        let e = Error::from_errno("QSharedMemory::attach (shm_open)", libc::ENOENT);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "QSharedMemory::attach (shm_open): doesn't exist"
        );
        assert_eq!(e.errno(), Some(libc::ENOENT));
        let e = Error::from_errno("QSharedMemory::create", libc::EINVAL);
        assert_eq!(e.kind(), ErrorKind::UnknownError);
        assert_eq!(
            e.message(),
            "QSharedMemory::create: unknown error: Invalid argument"
        );
        assert_eq!(
            Error::from_errno("f", libc::ENOSPC).kind(),
            ErrorKind::OutOfResources
        );
    }

    #[test]
    fn semaphore_texts_differ_where_qt_differs() {
        let e = SemaphoreError::from_errno("QSystemSemaphore::handle", libc::ENOENT);
        assert_eq!(e.message(), "QSystemSemaphore::handle: does not exist");
        assert_eq!(e.kind(), SemaphoreErrorKind::NotFound);
        let e = SemaphoreError::from_errno("QSystemSemaphore::handle", libc::ENOMEM);
        assert_eq!(e.kind(), SemaphoreErrorKind::UnknownError);
        let wrapped = Error::from_init_key(&SemaphoreError::from_errno(
            "QSystemSemaphore::handle",
            libc::EACCES,
        ));
        assert_eq!(wrapped.kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            wrapped.message(),
            "QSharedMemoryPrivate::initKey: unable to set key on lock \
             (QSystemSemaphore::handle: permission denied)"
        );
    }

    #[test]
    fn qt_values_round_trip() {
        for v in 1..=8 {
            assert_eq!(ErrorKind::from_qt_value(v).unwrap().qt_value(), v);
        }
        assert_eq!(ErrorKind::from_qt_value(0), None);
    }
}
