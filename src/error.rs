//! Errors with Qt's error codes and Qt's `errorString()` texts.
//!
//! One shape for both classes: [`QtError<K>`] is a Qt error code `K`, Qt's exact text and the OS
//! error behind it, if any. [`Error`] (`QtError<ErrorKind>`) is what every fallible operation of
//! [`SharedMemory`](crate::SharedMemory) returns; [`SemaphoreError`]
//! (`QtError<SemaphoreErrorKind>`) is `QSystemSemaphore`'s, whose codes and texts differ
//! slightly (`ENOENT` reads "does not exist" there, "doesn't exist" here).
//!
//! The layers below the façades (`segment`, `lock`) fail with their own, smaller types: what
//! happened, not how Qt words it. The façades turn those into these errors (see
//! `handle::qt_errors`), so every Qt text is written in one place.

use std::fmt;

use crate::sys::Errno;

/// A class of Qt error codes: `QSharedMemory::SharedMemoryError` or
/// `QSystemSemaphore::SystemSemaphoreError`, without `NoError`.
pub trait QtErrorKind: Copy + fmt::Debug + PartialEq + Eq + Send + Sync + 'static {
    /// The numeric value of this code in Qt's enum.
    fn qt_value(self) -> u8;

    /// Qt's `setUnixErrorString()` mapping of this class: the code and the reason text for an
    /// OS error.
    fn from_errno(errno: Errno) -> (Self, String);
}

/// Defines a class of Qt error codes: the enum, whose discriminants are Qt's values (each
/// variant documented with its Qt name), `qt_value()` and `from_qt_value()`, and its
/// [`QtErrorKind`] impl around Qt's `setUnixErrorString()` mapping for the class.
macro_rules! qt_error_kind {
    (
        $(#[$meta:meta])*
        pub enum $kind:ident in $class:ident::$qt_enum:ident {
            $($variant:ident = $value:literal,)+
        }
        $(#[$from_meta:meta])*
        fn from_errno($errno:ident) $from_errno:block
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $kind {
            $(
                #[doc = concat!("`", stringify!($class), "::", stringify!($variant), "` (", $value, ").")]
                $variant = $value,
            )+
        }

        impl $kind {
            #[doc = concat!(
                "The numeric value of this kind in Qt's `",
                stringify!($class), "::", stringify!($qt_enum), "`."
            )]
            #[must_use]
            pub const fn qt_value(self) -> u8 {
                self as u8
            }

            #[doc = concat!(
                "The kind for a Qt `", stringify!($qt_enum),
                "` value; `None` for `NoError` (0) and unknown values."
            )]
            #[must_use]
            pub const fn from_qt_value(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl QtErrorKind for $kind {
            fn qt_value(self) -> u8 {
                self as u8
            }

            $(#[$from_meta])*
            fn from_errno($errno: Errno) -> (Self, String) $from_errno
        }
    };
}

qt_error_kind! {
    /// `QSharedMemory::SharedMemoryError`, without `NoError` (that is `Ok`).
    ///
    /// The discriminants are Qt's values, see [`ErrorKind::qt_value`].
    pub enum ErrorKind in QSharedMemory::SharedMemoryError {
        PermissionDenied = 1,
        InvalidSize = 2,
        KeyError = 3,
        AlreadyExists = 4,
        NotFound = 5,
        LockError = 6,
        OutOfResources = 7,
        UnknownError = 8,
    }

    /// `QSharedMemoryPrivate::setUnixErrorString()`.
    fn from_errno(errno) {
        match errno {
            Errno::EACCES => (Self::PermissionDenied, "permission denied".to_owned()),
            Errno::EEXIST => (Self::AlreadyExists, "already exists".to_owned()),
            Errno::ENOENT => (Self::NotFound, "doesn't exist".to_owned()),
            Errno::EMFILE | Errno::ENOMEM | Errno::ENOSPC => {
                (Self::OutOfResources, "out of resources".to_owned())
            }
            other => (
                Self::UnknownError,
                format!("unknown error: {}", other.text()),
            ),
        }
    }
}

qt_error_kind! {
    /// `QSystemSemaphore::SystemSemaphoreError`, without `NoError`.
    pub enum SemaphoreErrorKind in QSystemSemaphore::SystemSemaphoreError {
        PermissionDenied = 1,
        KeyError = 2,
        AlreadyExists = 3,
        NotFound = 4,
        OutOfResources = 5,
        UnknownError = 6,
    }

    /// `QSystemSemaphorePrivate::setUnixErrorString()`.
    fn from_errno(errno) {
        match errno {
            Errno::EPERM | Errno::EACCES => {
                (Self::PermissionDenied, "permission denied".to_owned())
            }
            Errno::EEXIST => (Self::AlreadyExists, "already exists".to_owned()),
            Errno::ENOENT => (Self::NotFound, "does not exist".to_owned()),
            Errno::ERANGE | Errno::ENOSPC | Errno::EMFILE => {
                (Self::OutOfResources, "out of resources".to_owned())
            }
            Errno::ENAMETOOLONG => (Self::KeyError, "key too long".to_owned()),
            other => (
                Self::UnknownError,
                format!("unknown error: {}", other.text()),
            ),
        }
    }
}

/// A failed Qt operation: Qt's error code, Qt's error text, and the OS error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QtError<K> {
    kind: K,
    message: String,
    errno: Option<Errno>,
}

/// A failed shared memory operation (`QSharedMemory`'s codes and texts).
pub type Error = QtError<ErrorKind>;

/// A failed `QSystemSemaphore` operation (its codes and texts).
pub type SemaphoreError = QtError<SemaphoreErrorKind>;

impl<K: QtErrorKind> QtError<K> {
    /// An error with a fixed Qt text and no OS error behind it.
    #[must_use]
    pub fn new(kind: K, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            errno: None,
        }
    }

    /// An error with a text of our own, for a failure Qt has no text for, carrying the OS error.
    #[must_use]
    pub(crate) fn with_errno(kind: K, message: impl Into<String>, errno: Errno) -> Self {
        Self {
            kind,
            message: message.into(),
            errno: Some(errno),
        }
    }

    /// Qt's `setUnixErrorString(function)`: maps `errno` to a kind and the text
    /// `"<function>: <reason>"` exactly as Qt does.
    #[must_use]
    pub(crate) fn from_errno(function: &str, errno: Errno) -> Self {
        let (kind, reason) = K::from_errno(errno);
        Self {
            kind,
            message: format!("{function}: {reason}"),
            errno: Some(errno),
        }
    }

    /// Qt's error code for this error.
    #[must_use]
    pub fn kind(&self) -> K {
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
        self.errno.map(Errno::raw)
    }

    /// The OS error behind this error, for the crate's own matching.
    pub(crate) fn os_error(&self) -> Option<Errno> {
        self.errno
    }
}

impl Error {
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
}

impl<K> fmt::Display for QtError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<K: fmt::Debug> std::error::Error for QtError<K> {}

/// Shorthand for results of shared memory operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_texts_are_qts() {
        let e = Error::from_errno("QSharedMemory::attach (shm_open)", Errno::ENOENT);
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "QSharedMemory::attach (shm_open): doesn't exist"
        );
        assert_eq!(e.errno(), Some(Errno::ENOENT.raw()));
        let e = Error::from_errno("QSharedMemory::create", Errno::EINVAL);
        assert_eq!(e.kind(), ErrorKind::UnknownError);
        assert_eq!(
            e.message(),
            "QSharedMemory::create: unknown error: Invalid argument"
        );
        assert_eq!(
            Error::from_errno("f", Errno::ENOSPC).kind(),
            ErrorKind::OutOfResources
        );
    }

    #[test]
    fn semaphore_texts_differ_where_qt_differs() {
        let e = SemaphoreError::from_errno("QSystemSemaphore::handle", Errno::ENOENT);
        assert_eq!(e.message(), "QSystemSemaphore::handle: does not exist");
        assert_eq!(e.kind(), SemaphoreErrorKind::NotFound);
        let e = SemaphoreError::from_errno("QSystemSemaphore::handle", Errno::ENOMEM);
        assert_eq!(e.kind(), SemaphoreErrorKind::UnknownError);
        let wrapped = Error::from_init_key(&SemaphoreError::from_errno(
            "QSystemSemaphore::handle",
            Errno::EACCES,
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
