//! [`SystemSemaphore`]: Qt's `QSystemSemaphore`, a counting semaphore that processes find by
//! key, on the very OS objects Qt 6 uses.
//!
//! A System V key (Qt's legacy default on Linux) names a one-element System V semaphore set
//! whose IPC key is `ftok(<key file>, <type>)`; every operation uses `SEM_UNDO`, so the kernel
//! takes back what a process acquired (and released) when it exits. A POSIX key names a
//! `sem_open` semaphore (`/dev/shm/sem.<name>`), which has no such undo. Opening, creating,
//! ownership and cleanup follow Qt 6.12 exactly (see `docs/qsystemsemaphore.md`).
//!
//! Beyond Qt: waits can time out ([`SystemSemaphore::acquire_timeout`]) or be tried
//! ([`SystemSemaphore::try_acquire`]); every wait is cut into slices of at most
//! [`WAIT_SLICE`](crate::wait::WAIT_SLICE) between which a caller-supplied interrupt check runs
//! ([`SystemSemaphore::acquire_with`]); and all operations take `&self`, so one semaphore can
//! be shared by threads (an `Arc<SystemSemaphore>`), one blocked in `acquire` while another
//! calls `release`.
//!
//! ```
//! use std::sync::Arc;
//! use qsharedmem::system_semaphore::AccessMode;
//! use qsharedmem::SystemSemaphore;
//!
//! // `QSystemSemaphore("jobs")` in Qt: a legacy key, System V on Linux
//! // ($TMPDIR/qipc_systemsem_jobs<sha1>).
//! # let name = format!("doc-jobs-{}", std::process::id());
//! let jobs = Arc::new(SystemSemaphore::with_legacy_key(&name, 0, AccessMode::Create));
//! assert_eq!(jobs.key().as_deref(), Some(name.as_str()));
//!
//! let worker = {
//!     let jobs = Arc::clone(&jobs);
//!     std::thread::spawn(move || jobs.acquire()) // waits for a job
//! };
//! jobs.release(1)?; // from another thread, or from any process with the same key
//! worker.join().unwrap()?;
//! # Ok::<(), qsharedmem::SemaphoreError>(())
//! ```

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::{SemaphoreError, SemaphoreErrorKind};
use crate::key::Backend;
use crate::key::{IpcObject, KeyType, NativeIpcKey};
use crate::lock::posix_sem::PosixSemaphore;
use crate::lock::sysv_sem::{SysVSemaphore, COUNTER_SET_SIZE};
use crate::lock::SemMode;
use crate::segment::Permissions;
use crate::sys::{process, Errno};
use crate::wait::{uninterrupted, wait_in_slices, Interrupt, Waited};

/// `QSystemSemaphore::AccessMode`: how [`SystemSemaphore::new`] and
/// [`set_native_key`](SystemSemaphore::set_native_key) treat an existing semaphore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AccessMode {
    /// `QSystemSemaphore::Open` (0): use the semaphore if it exists; otherwise create it with
    /// the initial value (and then own it).
    #[default]
    Open = 0,
    /// `QSystemSemaphore::Create` (1): take the semaphore over. An existing System V semaphore
    /// is reset to the initial value; an existing POSIX semaphore is unlinked and replaced by a
    /// new one. Either way this object owns it from then on and removes it when it is dropped.
    Create = 1,
}

impl AccessMode {
    /// The numeric value in Qt's `QSystemSemaphore::AccessMode`.
    #[must_use]
    pub const fn qt_value(self) -> u8 {
        self as u8
    }

    /// The mode for a Qt `AccessMode` value, `None` for other values.
    #[must_use]
    pub const fn from_qt_value(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Open),
            1 => Some(Self::Create),
            _ => None,
        }
    }
}

impl From<AccessMode> for SemMode {
    fn from(mode: AccessMode) -> Self {
        match mode {
            AccessMode::Open => Self::Open,
            AccessMode::Create => Self::Create,
        }
    }
}

/// The warning Qt prints (`qWarning`) for `release(n)` with a negative `n`, and the text of
/// the error [`SystemSemaphore::release`] returns for it.
pub const NEGATIVE_RELEASE_WARNING: &str = "QSystemSemaphore::release: n is negative.";

/// The open OS semaphore of one key.
#[derive(Debug)]
enum OsSemaphore {
    SysV(SysVSemaphore),
    Posix(PosixSemaphore),
}

/// An open OS semaphore; Qt's `cleanHandle()` runs when the last reference goes (a thread
/// still waiting on it keeps it open after a key change).
#[derive(Debug)]
struct Handle {
    os: OsSemaphore,
    /// [`process::fork_generation`] when it was opened: a forked child's copy never removes
    /// the parent's semaphore.
    fork_generation: u64,
}

impl Handle {
    /// Qt's `handle(mode)`: opens or creates the semaphore `key` names.
    fn open(
        key: &NativeIpcKey,
        initial_value: i32,
        mode: AccessMode,
        permissions: Permissions,
    ) -> Result<Self, SemaphoreError> {
        let native = key.native_key();
        if native.contains('\0') {
            // As QSharedMemory: the OS takes names as C strings, and Qt passes the bytes up to
            // the NUL, so "/a\0b" would silently be the semaphore "/a". Refused instead.
            return Err(SemaphoreError::new(
                SemaphoreErrorKind::KeyError,
                "QSystemSemaphore::handle: key contains a NUL character (the OS would cut the \
                 name there, making it the same key as its first part)",
            ));
        }
        let os = match key.key_type().backend() {
            Some(Backend::SysV { project_id }) => {
                let sem = SysVSemaphore::open(
                    native,
                    project_id,
                    initial_value,
                    COUNTER_SET_SIZE,
                    mode.into(),
                    permissions.mode & 0o777,
                )?;
                // The group, and the key file's bits (made 0640, as Qt makes it).
                if (permissions.explicit || permissions.group.is_some()) && sem.owns_semaphore() {
                    let _ = sem.set_permissions(permissions.mode, permissions.group);
                }
                OsSemaphore::SysV(sem)
            }
            Some(Backend::Posix) => {
                // Qt passes the int to sem_open's unsigned parameter: a negative value becomes
                // a huge one, which glibc refuses with EINVAL, as it does for Qt.
                let value = initial_value as u32;
                let sem = PosixSemaphore::open_with_permissions(
                    native,
                    value,
                    mode.into(),
                    permissions.mode & 0o777,
                )?;
                // sem_open applies the umask; asked-for bits are set exactly.
                if (permissions.explicit || permissions.group.is_some()) && sem.owns_semaphore() {
                    let _ = sem.set_permissions(permissions.mode, permissions.group);
                }
                OsSemaphore::Posix(sem)
            }
            // Only the empty key a semaphore starts with can have an unsupported type
            // (set_native_key refuses the others); Qt on Linux hands it to the System V
            // backend, which reports the empty key.
            None => {
                return Err(SemaphoreError::new(
                    SemaphoreErrorKind::KeyError,
                    "QSystemSemaphore::handle:: key is empty",
                ))
            }
        };
        Ok(Self {
            os,
            fork_generation: process::fork_generation(),
        })
    }

    /// One attempt to take a token, waiting at most `wait` (`None`: not at all).
    fn acquire_for(&self, wait: Option<Duration>) -> Result<bool, SemaphoreError> {
        match &self.os {
            OsSemaphore::SysV(sem) => sem
                .acquire_for(wait)?
                .map_err(|e| SemaphoreError::from_errno("QSystemSemaphore::modifySemaphore", e)),
            OsSemaphore::Posix(sem) => {
                let result = match wait {
                    None => sem.semaphore().try_wait(),
                    Some(slice) => sem.semaphore().wait_for(slice),
                };
                match result {
                    Ok(()) => Ok(true),
                    Err(Errno::EAGAIN | Errno::ETIMEDOUT | Errno::EINTR) => Ok(false),
                    Err(e) => Err(SemaphoreError::from_errno(
                        "QSystemSemaphore::modifySemaphore (sem_wait)",
                        e,
                    )),
                }
            }
        }
    }

    /// Gives `n` (> 0) tokens back.
    fn release(&self, n: u32) -> Result<(), SemaphoreError> {
        match &self.os {
            OsSemaphore::SysV(sem) => sem
                .release(n)?
                .map_err(|e| SemaphoreError::from_errno("QSystemSemaphore::modifySemaphore", e)),
            OsSemaphore::Posix(sem) => sem.release(n).map_err(|e| {
                SemaphoreError::from_errno("QSystemSemaphore::modifySemaphore (sem_post)", e)
            }),
        }
    }

    /// The semaphore's current value.
    #[cfg(test)]
    fn value(&self) -> Result<i32, Errno> {
        match &self.os {
            OsSemaphore::SysV(sem) => sem.value(),
            OsSemaphore::Posix(sem) => sem.value(),
        }
    }
}

impl Handle {
    /// Qt's `cleanHandle()`: removes the semaphore if this object created it. Runs once (the
    /// OS objects remember nothing of it; a second call finds nothing to do).
    fn clean(&self) -> Result<(), SemaphoreError> {
        if self.fork_generation != process::fork_generation() {
            // Inherited through fork(): the semaphore belongs to the parent.
            return Ok(());
        }
        match &self.os {
            OsSemaphore::SysV(sem) => sem.clean_handle(),
            OsSemaphore::Posix(sem) => sem.clean_handle(),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.clean();
    }
}

/// Qt's `QSystemSemaphorePrivate` state.
#[derive(Debug)]
struct State {
    key: NativeIpcKey,
    initial_value: i32,
    /// The open semaphore; `None` until an open succeeds (then every operation tries again).
    handle: Option<Arc<Handle>>,
    error: Option<SemaphoreError>,
    /// Who may use a semaphore this object creates (Qt's 0600 by default).
    permissions: Permissions,
}

/// `QSystemSemaphore`: a counting semaphore shared between processes by key, with Qt 6's API
/// and semantics on the same OS objects, so Rust, Python and Qt processes can signal each
/// other through it.
///
/// [`acquire`](Self::acquire) takes a token (waiting while there is none),
/// [`release`](Self::release) gives tokens back. The semaphore is opened (or created with its
/// initial value) as soon as it gets a key; [`AccessMode::Create`] takes an existing one over.
/// The object that created a semaphore (or took it over) removes it when it is dropped, as in
/// Qt — other users then transparently re-create a System V semaphore on their next operation.
///
/// Every fallible operation returns a `Result` *and* records Qt's error state
/// ([`error`](Self::error), [`error_string`](Self::error_string)) with Qt 6.12's rules: a
/// successful operation clears it, a failed one sets it, and the calls Qt documents as leaving
/// it alone (`set_native_key` with the same key in `Open` mode, `release(0)`, `release` of a
/// negative count) leave it alone.
///
/// All methods take `&self`: share one semaphore between threads with an `Arc`.
///
/// ```
/// use qsharedmem::system_semaphore::AccessMode;
/// use qsharedmem::{KeyType, SystemSemaphore};
/// use std::time::Duration;
///
/// let key = SystemSemaphore::platform_safe_key(
///     &format!("doc-sem-{}", std::process::id()),
///     KeyType::POSIX_REALTIME,
/// );
/// // One free token; this object creates the semaphore and removes it when dropped.
/// let sem = SystemSemaphore::new(key.clone(), 1, AccessMode::Create);
/// assert!(sem.error().is_none());
///
/// // Another handle (in this or any other process, Qt's included) opens the same semaphore.
/// let other = SystemSemaphore::new(key, 0, AccessMode::Open);
/// sem.acquire()?;
/// assert!(!other.try_acquire()?); // no token left
/// assert!(!other.acquire_timeout(Duration::from_millis(10))?);
/// sem.release(1)?;
/// assert!(other.try_acquire()?);
/// other.release(1)?;
/// # Ok::<(), qsharedmem::SemaphoreError>(())
/// ```
#[derive(Debug)]
pub struct SystemSemaphore {
    state: Mutex<State>,
}

impl SystemSemaphore {
    /// `QSystemSemaphore(const QNativeIpcKey &key, int initialValue, AccessMode mode)`: opens
    /// (`Open`) or takes over (`Create`) the semaphore `key` names, creating it with
    /// `initial_value` tokens if it does not exist. A failure is recorded in
    /// [`error`](Self::error) and the next operation tries to open it again.
    ///
    /// As in Qt, an empty key of the type the object starts with is accepted without an error
    /// in `Open` mode (the error shows up at the first `acquire`/`release`), and an
    /// unsupported key type records `KeyError` and leaves the key empty.
    #[doc(alias = "QSystemSemaphore::QSystemSemaphore")]
    #[must_use]
    pub fn new(key: NativeIpcKey, initial_value: i32, mode: AccessMode) -> Self {
        Self::with_permissions(key, initial_value, mode, Permissions::default())
    }

    /// [`Self::new`], giving a semaphore it creates (now, or again later: a System V semaphore
    /// removed by its owner is re-created by the next user) `permissions` instead of Qt's 0600
    /// (the mode exactly, not less the umask, and the group if one is given), so that other
    /// accounts may use it.
    #[must_use]
    pub fn with_permissions(
        key: NativeIpcKey,
        initial_value: i32,
        mode: AccessMode,
        permissions: Permissions,
    ) -> Self {
        let sem = Self {
            state: Mutex::new(State {
                key: NativeIpcKey::empty(key.key_type()),
                initial_value: 0,
                handle: None,
                error: None,
                permissions,
            }),
        };
        let _ = sem.set_native_key(key, initial_value, mode);
        sem
    }

    /// `QSystemSemaphore(const QString &key, int initialValue, AccessMode mode)`: a legacy key,
    /// derived with [`legacy_native_key`](Self::legacy_native_key) (System V on Linux, a
    /// `qipc_systemsem_…` key file in the temporary directory), as Qt 4.4–6.5 named it.
    #[must_use]
    pub fn with_legacy_key(key: &str, initial_value: i32, mode: AccessMode) -> Self {
        Self::new(
            Self::legacy_native_key(key, KeyType::legacy_default_for_os()),
            initial_value,
            mode,
        )
    }

    /// `QSystemSemaphore::platformSafeKey(key, type)`: POSIX `/key`; System V `key` if it is
    /// an absolute path, else a file `key` in the Qt runtime directory. The same names Qt
    /// derives for a shared memory segment (Qt's semaphores live in other OS namespaces).
    #[must_use]
    pub fn platform_safe_key(key: &str, key_type: KeyType) -> NativeIpcKey {
        NativeIpcKey::platform_safe(key, IpcObject::SystemSemaphore, key_type)
    }

    /// `QSystemSemaphore::legacyNativeKey(key, type)`: `qipc_systemsem_` + the ASCII letters of
    /// `key` + the SHA-1 of its UTF-8, as a file in the temporary directory (System V) or as
    /// `/name` (POSIX). The same semaphore is the lock of `QSharedMemory(key)`.
    #[must_use]
    pub fn legacy_native_key(key: &str, key_type: KeyType) -> NativeIpcKey {
        NativeIpcKey::legacy(key, IpcObject::SystemSemaphore, key_type)
    }

    /// `QSystemSemaphore::isKeyTypeSupported(type)`: System V (1..=255, and the invalid type 0,
    /// which Qt routes to System V) and POSIX realtime on Linux. Unlike Qt, unknown values
    /// (0x102 and up) are reported as unsupported, as for
    /// [`SharedMemory`](crate::SharedMemory).
    #[must_use]
    pub fn is_key_type_supported(key_type: KeyType) -> bool {
        key_type.backend().is_some()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement, so a panic elsewhere cannot leave it
        // half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `QSystemSemaphore::key()`: the legacy key, if the native key was derived from one.
    #[must_use]
    pub fn key(&self) -> Option<String> {
        self.state().key.legacy_key().map(str::to_owned)
    }

    /// `QSystemSemaphore::nativeIpcKey()`.
    #[must_use]
    pub fn native_ipc_key(&self) -> NativeIpcKey {
        self.state().key.clone()
    }

    /// `QSystemSemaphore::setKey(key, initialValue, mode)`:
    /// `set_native_key(legacy_native_key(key), initial_value, mode)`.
    ///
    /// # Errors
    /// As [`set_native_key`](Self::set_native_key).
    pub fn set_key(
        &self,
        key: &str,
        initial_value: i32,
        mode: AccessMode,
    ) -> Result<(), SemaphoreError> {
        self.set_native_key(
            Self::legacy_native_key(key, KeyType::legacy_default_for_os()),
            initial_value,
            mode,
        )
    }

    /// `QSystemSemaphore::setNativeKey(const QNativeIpcKey &key, int initialValue, AccessMode)`.
    ///
    /// Qt's sequence: the same key in `Open` mode changes nothing (not even the error state);
    /// an unsupported key type records `KeyError` and keeps the current key. Otherwise the
    /// error is cleared, the current semaphore is let go (and removed, if this object owns it),
    /// and the new one is opened or taken over at once.
    ///
    /// # Errors
    /// `KeyError` for an unsupported key type, or what opening the new semaphore reported (it
    /// is also recorded, and the next operation tries again).
    pub fn set_native_key(
        &self,
        key: NativeIpcKey,
        initial_value: i32,
        mode: AccessMode,
    ) -> Result<(), SemaphoreError> {
        let mut state = self.state();
        if key == state.key && mode == AccessMode::Open {
            return Ok(());
        }
        if !Self::is_key_type_supported(key.key_type()) {
            let error = SemaphoreError::new(
                SemaphoreErrorKind::KeyError,
                "QSystemSemaphore::setNativeKey: unsupported key type",
            );
            state.error = Some(error.clone());
            return Err(error);
        }
        state.error = None;
        // Qt's cleanHandle() of the old key comes first: with the same key in Create mode it
        // removes the semaphore this object owned, and the new handle creates it afresh. Its
        // failure (the set was removed by another of its creators) is recorded, as in Qt, and
        // the new key is set all the same. (A thread still waiting on the old semaphore keeps
        // it open; its cleanup then runs when that wait ends.)
        if let Some(old) = state.handle.take().and_then(Arc::into_inner) {
            if let Err(e) = old.clean() {
                state.error = Some(e);
            }
        }
        state.key = key;
        state.initial_value = initial_value;
        match Handle::open(&state.key, initial_value, mode, state.permissions) {
            Ok(handle) => {
                state.handle = Some(Arc::new(handle));
                Ok(())
            }
            Err(error) => {
                state.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// `QSystemSemaphore::setNativeKey(const QString &key, int initialValue, AccessMode, Type)`:
    /// the native key `key` taken verbatim, of type `key_type` (Qt's default, for `None`:
    /// [`KeyType::legacy_default_for_os`], System V on Linux).
    ///
    /// # Errors
    /// As [`set_native_key`](Self::set_native_key).
    pub fn set_native_key_str(
        &self,
        key: &str,
        initial_value: i32,
        mode: AccessMode,
        key_type: Option<KeyType>,
    ) -> Result<(), SemaphoreError> {
        let key_type = key_type.unwrap_or(KeyType::legacy_default_for_os());
        self.set_native_key(NativeIpcKey::new(key, key_type), initial_value, mode)
    }

    /// `QSystemSemaphore::error()`: the last recorded error, `None` for `NoError`.
    #[must_use]
    pub fn error(&self) -> Option<SemaphoreError> {
        self.state().error.clone()
    }

    /// `QSystemSemaphore::errorString()`: the last recorded error's text, "" for `NoError`.
    #[must_use]
    pub fn error_string(&self) -> String {
        self.state()
            .error
            .as_ref()
            .map_or_else(String::new, |e| e.message().to_owned())
    }

    fn record<T>(&self, result: Result<T, SemaphoreError>) -> Result<T, SemaphoreError> {
        self.state().error = result.as_ref().err().cloned();
        result
    }

    /// Qt's `handle(Open)` at the start of every operation: the open semaphore, opening (or
    /// re-creating) it if an earlier attempt failed.
    fn handle(&self) -> Result<Arc<Handle>, SemaphoreError> {
        let mut state = self.state();
        if let Some(handle) = &state.handle {
            return Ok(Arc::clone(handle));
        }
        match Handle::open(
            &state.key,
            state.initial_value,
            AccessMode::Open,
            state.permissions,
        ) {
            Ok(handle) => {
                let handle = Arc::new(handle);
                state.handle = Some(Arc::clone(&handle));
                Ok(handle)
            }
            Err(error) => {
                state.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// `QSystemSemaphore::acquire()`: takes a token, waiting for as long as it takes.
    ///
    /// System V: the kernel gives the token back when this process exits (`SEM_UNDO`).
    ///
    /// # Errors
    /// The semaphore could not be opened, or the OS refused (Qt's codes and texts).
    pub fn acquire(&self) -> Result<(), SemaphoreError> {
        self.acquire_with(None, &mut uninterrupted).map(drop)
    }

    /// Takes a token, waiting at most `timeout`: `Ok(false)` if none became free in time.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, SemaphoreError> {
        self.acquire_with(Some(timeout), &mut uninterrupted)
    }

    /// Takes a token if one is free right now: `Ok(false)` otherwise.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn try_acquire(&self) -> Result<bool, SemaphoreError> {
        let handle = self.handle()?;
        self.record(handle.acquire_for(None))
    }

    /// Takes a token, waiting at most `timeout` (`None`: as long as it takes) and running
    /// `interrupt` between wait slices (at least every
    /// [`WAIT_SLICE`](crate::wait::WAIT_SLICE)); if it returns true, the wait ends.
    ///
    /// `Ok(true)`: acquired (the error state is cleared, as by Qt's `acquire()`). `Ok(false)`:
    /// the timeout passed (a timeout is not an error: the error state is cleared too) or
    /// `interrupt` stopped the wait (the error state is left alone).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn acquire_with(
        &self,
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> Result<bool, SemaphoreError> {
        let handle = self.handle()?;
        // The state lock is not held while waiting: release() from another thread must get
        // through, and `interrupt` may need locks of its own (Python's GIL).
        let waited = match handle.acquire_for(None) {
            Ok(true) => Ok(Waited::Got(())),
            Ok(false) if timeout == Some(Duration::ZERO) => Ok(Waited::TimedOut),
            Ok(false) => wait_in_slices(timeout, interrupt, |slice| {
                handle.acquire_for(Some(slice)).map(|got| got.then_some(()))
            }),
            Err(error) => Err(error),
        };
        match waited {
            Ok(Waited::Got(())) => self.record(Ok(true)),
            Ok(Waited::TimedOut) => self.record(Ok(false)),
            Ok(Waited::Interrupted) => Ok(false),
            Err(error) => self.record(Err(error)),
        }
    }

    /// `QSystemSemaphore::release(n)`: gives `n` tokens back.
    ///
    /// As in Qt: `n == 0` does nothing and succeeds; a negative `n` fails with Qt's warning
    /// text ([`NEGATIVE_RELEASE_WARNING`], kind `UnknownError`) *without* recording it (Qt only
    /// prints the warning and returns false). System V: the kernel takes the tokens back when
    /// this process exits (`SEM_UNDO`, as in Qt).
    ///
    /// # Errors
    /// A negative `n`; the semaphore could not be opened; the value would exceed the maximum
    /// (32767 for System V: `OutOfResources`; `i32::MAX` for POSIX: `UnknownError`, "Value too
    /// large"), in which case nothing is released.
    pub fn release(&self, n: i32) -> Result<(), SemaphoreError> {
        let Ok(count) = u32::try_from(n) else {
            return Err(SemaphoreError::new(
                SemaphoreErrorKind::UnknownError,
                NEGATIVE_RELEASE_WARNING,
            ));
        };
        if count == 0 {
            return Ok(());
        }
        let handle = self.handle()?;
        self.record(handle.release(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(tag: &str) -> String {
        format!("qsm-rs-{}-sysem-{tag}", std::process::id())
    }

    fn value(sem: &SystemSemaphore) -> i32 {
        sem.handle().unwrap().value().unwrap()
    }

    fn key_types() -> [KeyType; 3] {
        [
            KeyType::POSIX_REALTIME,
            KeyType::SYSTEM_V,
            KeyType::from_raw(u16::from(b'T')),
        ]
    }

    fn safe_key(tag: &str, key_type: KeyType) -> NativeIpcKey {
        let name = unique(tag);
        if key_type.is_posix() {
            SystemSemaphore::platform_safe_key(&name, key_type)
        } else {
            // An absolute path in the temp dir: the runtime dir may not be usable in CI.
            let path = std::env::temp_dir().join(name);
            NativeIpcKey::new(path.to_string_lossy(), key_type)
        }
    }

    #[test]
    fn counts_like_qt_for_every_key_type() {
        for key_type in key_types() {
            let sem = SystemSemaphore::new(safe_key("count", key_type), 2, AccessMode::Create);
            assert!(sem.error().is_none(), "{:?}", sem.error());
            assert_eq!(value(&sem), 2);
            sem.acquire().unwrap();
            sem.acquire().unwrap();
            assert!(!sem.try_acquire().unwrap());
            assert!(!sem.acquire_timeout(Duration::from_millis(5)).unwrap());
            sem.release(3).unwrap();
            assert_eq!(value(&sem), 3);
            sem.release(0).unwrap();
            assert_eq!(value(&sem), 3);
        }
    }

    #[test]
    fn open_sets_the_value_only_when_it_creates() {
        for key_type in key_types() {
            let key = safe_key("open", key_type);
            let first = SystemSemaphore::new(key.clone(), 3, AccessMode::Create);
            first.acquire().unwrap();
            let opened = SystemSemaphore::new(key.clone(), 7, AccessMode::Open);
            assert_eq!(value(&opened), 2);
            let taken_over = SystemSemaphore::new(key, 9, AccessMode::Create);
            assert_eq!(value(&taken_over), 9);
        }
    }

    #[test]
    fn dropping_the_owner_removes_the_semaphore() {
        for key_type in key_types() {
            let key = safe_key("owner", key_type);
            let owner = SystemSemaphore::new(key.clone(), 1, AccessMode::Open);
            let user = SystemSemaphore::new(key.clone(), 1, AccessMode::Open);
            drop(owner);
            if key_type.is_posix() {
                assert_eq!(
                    crate::sys::namedsem::unlink(key.native_key()),
                    Err(Errno::ENOENT)
                );
            } else {
                assert!(!std::path::Path::new(key.native_key()).exists());
                // System V: the next operation re-creates it (Qt's recovery), and the user
                // now owns it.
                user.acquire().unwrap();
                assert!(std::path::Path::new(key.native_key()).exists());
                drop(user);
                assert!(!std::path::Path::new(key.native_key()).exists());
            }
        }
    }

    #[test]
    fn release_limits_and_negative_counts() {
        for key_type in key_types() {
            let sem = SystemSemaphore::new(safe_key("limits", key_type), 0, AccessMode::Create);
            let e = sem.release(-1).unwrap_err();
            assert_eq!(e.message(), NEGATIVE_RELEASE_WARNING);
            assert!(sem.error().is_none());
            let too_many = if key_type.is_posix() { i32::MAX } else { 32768 };
            sem.release(1).unwrap();
            let e = sem.release(too_many).unwrap_err();
            assert_eq!(sem.error().as_ref(), Some(&e));
            assert_eq!(value(&sem), 1);
            if key_type.is_posix() {
                assert_eq!(
                    e.message(),
                    "QSystemSemaphore::modifySemaphore (sem_post): unknown error: \
                     Value too large for defined data type"
                );
            } else {
                assert_eq!(e.kind(), SemaphoreErrorKind::OutOfResources);
                assert_eq!(
                    e.message(),
                    "QSystemSemaphore::modifySemaphore: out of resources"
                );
            }
            // A success clears the error.
            sem.release(1).unwrap();
            assert!(sem.error().is_none());
        }
    }

    #[test]
    fn same_key_in_open_mode_changes_nothing() {
        let key = safe_key("same", KeyType::SYSTEM_V);
        let sem = SystemSemaphore::new(key.clone(), 1, AccessMode::Create);
        sem.acquire().unwrap();
        let _ = sem.release(32768);
        assert!(sem.error().is_some());
        sem.set_native_key(key.clone(), 5, AccessMode::Open)
            .unwrap();
        assert!(sem.error().is_some());
        assert_eq!(value(&sem), 0);
        sem.set_native_key(key, 5, AccessMode::Create).unwrap();
        assert!(sem.error().is_none());
        assert_eq!(value(&sem), 5);
    }

    #[test]
    fn errors_are_qts() {
        let sem = SystemSemaphore::new(NativeIpcKey::empty(KeyType::SYSTEM_V), 0, AccessMode::Open);
        assert!(sem.error().is_none());
        let e = sem.acquire().unwrap_err();
        assert_eq!(e.message(), "QSystemSemaphore::handle:: key is empty");
        assert_eq!(sem.error_string(), e.message());
        sem.set_native_key(
            NativeIpcKey::new("x", KeyType::WINDOWS),
            0,
            AccessMode::Open,
        )
        .unwrap_err();
        assert_eq!(
            sem.error_string(),
            "QSystemSemaphore::setNativeKey: unsupported key type"
        );
        assert_eq!(sem.native_ipc_key(), NativeIpcKey::empty(KeyType::SYSTEM_V));
        let windows = SystemSemaphore::new(
            NativeIpcKey::new("x", KeyType::WINDOWS),
            0,
            AccessMode::Open,
        );
        assert_eq!(
            windows.native_ipc_key(),
            NativeIpcKey::empty(KeyType::WINDOWS)
        );
        assert_eq!(
            windows.acquire().unwrap_err().message(),
            "QSystemSemaphore::handle:: key is empty"
        );
        let posix = SystemSemaphore::new(
            NativeIpcKey::new("/a/b", KeyType::POSIX_REALTIME),
            0,
            AccessMode::Open,
        );
        assert_eq!(
            posix.error_string(),
            "QSystemSemaphore::handle: unknown error: Invalid argument"
        );
    }

    #[test]
    fn legacy_keys_and_key() {
        let name = unique("legacy");
        let sem = SystemSemaphore::with_legacy_key(&name, 1, AccessMode::Open);
        assert_eq!(sem.key().as_deref(), Some(name.as_str()));
        assert!(sem
            .native_ipc_key()
            .native_key()
            .contains("/qipc_systemsem_qsmrssysemlegacy"));
        let plain = std::env::temp_dir().join(unique("plain"));
        sem.set_native_key_str(&plain.to_string_lossy(), 0, AccessMode::Open, None)
            .unwrap();
        assert_eq!(sem.key(), None);
        assert_eq!(sem.native_ipc_key().key_type(), KeyType::SYSTEM_V);
        sem.set_native_key(NativeIpcKey::empty(KeyType::SYSTEM_V), 0, AccessMode::Open)
            .unwrap_err();
    }

    #[test]
    fn a_waiter_and_a_releaser_share_one_object() {
        for key_type in key_types() {
            let sem = Arc::new(SystemSemaphore::new(
                safe_key("threads", key_type),
                0,
                AccessMode::Create,
            ));
            let waiter = {
                let sem = Arc::clone(&sem);
                std::thread::spawn(move || sem.acquire())
            };
            sem.release(1).unwrap();
            waiter.join().unwrap().unwrap();
        }
    }

    #[test]
    fn an_interrupt_ends_the_wait_without_an_error() {
        let sem = SystemSemaphore::new(
            safe_key("interrupt", KeyType::SYSTEM_V),
            0,
            AccessMode::Create,
        );
        let mut calls = 0;
        let got = sem
            .acquire_with(None, &mut || {
                calls += 1;
                calls == 2
            })
            .unwrap();
        assert!(!got);
        assert_eq!(calls, 2);
    }
}
