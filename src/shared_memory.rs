//! [`SharedMemory`]: `QSharedMemory` with Qt's state machine (key, error, lock ownership), built
//! on [`crate::segment`] and [`crate::lock`].

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::key::{IpcObject, KeyType, NativeIpcKey};
use crate::lock::{Acquired, LockFailure, LockGuard, LockPrimitive};
use crate::segment::{
    self, AccessMode, Attachment, PosixAttach, Removal, SegmentIdentity, SegmentKind,
};
use crate::semaphore::{PosixSemaphore, SemMode, SysVSemaphore, LOCK_SET_SIZE};
use crate::sys::process;
use crate::testpoint;

/// The backend a key type selects (for shared memory and system semaphores alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Posix,
    SysV { project_id: u8 },
}

pub(crate) fn backend(key_type: KeyType) -> Option<Backend> {
    let raw = key_type.raw();
    if raw <= 0xff {
        // Qt routes every value up to 0xff to System V, the invalid type 0 included (its ftok
        // project id is then 0, which works).
        Some(Backend::SysV {
            project_id: raw as u8,
        })
    } else if key_type == KeyType::POSIX_REALTIME {
        Some(Backend::Posix)
    } else {
        None
    }
}

/// The segment a handle was attached to last, remembered by [`SharedMemory::remove`] after a
/// detach.
#[derive(Clone, Debug)]
struct Previous {
    identity: SegmentIdentity,
    /// Whether its name had been removed when this handle let go (or this handle removed it).
    name_removed: bool,
}

/// Holding the lock: which thread took it.
#[derive(Clone, Copy, Debug)]
struct Held {
    thread: i32,
}

/// `QSharedMemory`: access to a shared memory segment by key, with Qt's semantics.
///
/// A handle has a key; [`create`](Self::create) makes the segment and attaches to it,
/// [`attach`](Self::attach) attaches to an existing one, [`detach`](Self::detach) lets go. The
/// segment is destroyed when the last handle in any process detaches, also when processes
/// crash. [`lock`](Self::lock) takes the segment's cross-process lock.
///
/// Every fallible operation returns a [`Result`](crate::Result) *and* records Qt's error state:
/// [`error`](Self::error) and [`error_string`](Self::error_string) follow Qt 6.12's rules
/// (which failures set them, which leave them alone).
///
/// ```
/// use qsharedmem::{AccessMode, KeyType, SharedMemory};
/// let key = SharedMemory::platform_safe_key(&format!("doc-{}", std::process::id()), KeyType::POSIX_REALTIME);
/// let mut writer = SharedMemory::with_key(key.clone());
/// writer.create(16, AccessMode::ReadWrite)?;
/// writer.lock()?.as_mut_slice().unwrap()[..5].copy_from_slice(b"hello");
///
/// let mut reader = SharedMemory::with_key(key);
/// reader.attach(AccessMode::ReadOnly)?;
/// assert_eq!(&reader.lock()?.as_slice().unwrap()[..5], b"hello");
/// assert_eq!(reader.size(), 16);
/// # Ok::<(), qsharedmem::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedMemory {
    key: NativeIpcKey,
    attachment: Option<Arc<Attachment>>,
    /// Qt's embedded semaphore: set up by create()/attach(), kept across detach() (except the
    /// mutex of a qsharedmem POSIX segment, which lives in the segment).
    lock: Option<LockPrimitive>,
    /// The key `lock` was set up for (after `set_native_key` it can differ from `key`).
    lock_key: NativeIpcKey,
    held: Option<Held>,
    owner_died: bool,
    last_error: Option<Error>,
    fork_generation: u64,
    previous: Option<Previous>,
    /// Qt's embedded lock semaphore keeps the error of a `create()` that failed on the empty
    /// POSIX key: re-keying it to that same key for an attach is a no-op, so the attach reports
    /// that error too (until another key is used).
    empty_posix_key_failed: bool,
}

impl Default for SharedMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// A wait that is never interrupted.
fn uninterrupted() -> bool {
    false
}

fn interrupted_error(function: &str) -> Error {
    Error::new(ErrorKind::LockError, format!("{function}: interrupted"))
}

impl SharedMemory {
    /// `QSharedMemory()`: a handle with an empty key (type `PosixRealtime`).
    #[doc(alias = "QSharedMemory::QSharedMemory")]
    #[must_use]
    pub fn new() -> Self {
        Self {
            key: NativeIpcKey::default(),
            attachment: None,
            lock: None,
            lock_key: NativeIpcKey::default(),
            held: None,
            owner_died: false,
            last_error: None,
            fork_generation: process::fork_generation(),
            previous: None,
            empty_posix_key_failed: false,
        }
    }

    /// `QSharedMemory(const QNativeIpcKey &key)`. An unsupported key type leaves the key empty
    /// (of that type, as in Qt, whose handle is built for the key's type) and records `KeyError`;
    /// create() and attach() then fail with Qt's `initKey` error.
    #[must_use]
    pub fn with_key(key: NativeIpcKey) -> Self {
        let mut shm = Self::new();
        let key_type = key.key_type();
        if shm.set_native_key(key).is_err() {
            shm.key = NativeIpcKey::new(String::new(), key_type);
        }
        shm
    }

    /// `QSharedMemory(const QString &key)`: a legacy key, derived with
    /// [`legacy_native_key`](Self::legacy_native_key) (System V on Linux, as in Qt).
    #[must_use]
    pub fn with_legacy_key(key: &str) -> Self {
        Self::with_key(Self::legacy_native_key(
            key,
            KeyType::legacy_default_for_os(),
        ))
    }

    /// `QSharedMemory::platformSafeKey(key, type)`.
    #[must_use]
    pub fn platform_safe_key(key: &str, key_type: KeyType) -> NativeIpcKey {
        NativeIpcKey::platform_safe(key, IpcObject::SharedMemory, key_type)
    }

    /// `QSharedMemory::legacyNativeKey(key, type)`.
    #[must_use]
    pub fn legacy_native_key(key: &str, key_type: KeyType) -> NativeIpcKey {
        NativeIpcKey::legacy(key, IpcObject::SharedMemory, key_type)
    }

    /// `QSharedMemory::isKeyTypeSupported(type)`: System V (1..=255, and the invalid type 0,
    /// which Qt routes to System V) and POSIX realtime on Linux. Unlike Qt, unknown values
    /// (0x102 and up) are reported as unsupported, because using them is undefined in Qt.
    #[must_use]
    pub fn is_key_type_supported(key_type: KeyType) -> bool {
        backend(key_type).is_some()
    }

    /// `QSharedMemory::key()`: the legacy key, if the native key was derived from one.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.key.legacy_key()
    }

    /// `QSharedMemory::nativeKey()`.
    #[must_use]
    pub fn native_key(&self) -> &str {
        self.key.native_key()
    }

    /// `QSharedMemory::nativeIpcKey()`.
    #[must_use]
    pub fn native_ipc_key(&self) -> &NativeIpcKey {
        &self.key
    }

    /// `QSharedMemory::setKey(key)`: `set_native_key(legacy_native_key(key))`.
    pub fn set_key(&mut self, key: &str) {
        let _ = self.set_native_key(Self::legacy_native_key(
            key,
            KeyType::legacy_default_for_os(),
        ));
    }

    /// `QSharedMemory::setNativeKey(key)`. Detaches first if attached, even when the key is the
    /// same (Qt does, although its documentation says otherwise); an empty key equal to the
    /// current one changes nothing. An unsupported type records `KeyError` and keeps the key.
    ///
    /// # Errors
    /// `KeyError` for an unsupported key type.
    pub fn set_native_key(&mut self, key: NativeIpcKey) -> crate::Result<()> {
        if key == self.key && key.is_empty() {
            return Ok(());
        }
        if !Self::is_key_type_supported(key.key_type()) {
            return Err(self.record(Error::new(
                ErrorKind::KeyError,
                "QSharedMemory::setNativeKey: unsupported key type",
            )));
        }
        if self.is_attached() {
            let _ = self.detach();
        }
        self.key = key;
        self.previous = None;
        Ok(())
    }

    /// `QSharedMemory::error()`: the last recorded error, `None` for `NoError`.
    #[must_use]
    pub fn error(&self) -> Option<&Error> {
        self.last_error.as_ref()
    }

    /// `QSharedMemory::errorString()`: the last recorded error's text, "" for `NoError`.
    #[must_use]
    pub fn error_string(&self) -> &str {
        self.last_error.as_ref().map_or("", Error::message)
    }

    /// `QSharedMemory::isAttached()`.
    #[must_use]
    pub fn is_attached(&self) -> bool {
        self.attachment.is_some()
    }

    /// `QSharedMemory::size()`: the segment's size, 0 when not attached.
    #[must_use]
    pub fn size(&self) -> usize {
        self.attachment.as_ref().map_or(0, |a| a.size())
    }

    /// Which kind of segment this handle is attached to.
    #[must_use]
    pub fn segment_kind(&self) -> Option<SegmentKind> {
        self.attachment.as_ref().map(|a| a.kind())
    }

    /// The attachment, shared with anything that must keep the memory mapped (the Python
    /// buffer exports); the mapping ends when the last reference goes.
    #[must_use]
    pub fn attachment(&self) -> Option<&Arc<Attachment>> {
        self.attachment.as_ref()
    }

    /// The first byte of the segment, or null when not attached. Reading or writing through it
    /// is only race-free while holding the lock; prefer [`lock`](Self::lock).
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.attachment
            .as_ref()
            .map_or(std::ptr::null_mut(), |a| a.as_ptr())
    }

    /// Whether this handle holds the lock.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        self.held.is_some() && self.fork_generation == process::fork_generation()
    }

    /// Whether the last successful [`lock`](Self::lock) found that the previous holder had
    /// died while holding it (the data it protected may be half-written).
    #[must_use]
    pub fn lock_owner_died(&self) -> bool {
        self.owner_died
    }

    /// The error for an operation on an attachment that lost part of its memory (the file
    /// behind it shrank, see [`Attachment::lost_pages`]), if it did.
    fn lost_memory_error(&self, function: &str, kind: ErrorKind) -> Option<Error> {
        let att = self.attachment.as_ref().filter(|a| a.lost_pages())?;
        Some(Error::new(kind, format!("{function}: {}", att.damage())))
    }

    fn record(&mut self, error: Error) -> Error {
        self.last_error = Some(error.clone());
        error
    }

    /// After `fork()`, a child's handle must neither use the parent's `flock` nor believe it
    /// holds the parent's lock.
    fn refresh_after_fork(&mut self) {
        let now = process::fork_generation();
        if now != self.fork_generation {
            self.fork_generation = now;
            if let Some(att) = &self.attachment {
                att.rehome_after_fork();
            }
            self.held = None;
            self.owner_died = false;
        }
    }

    /// Makes this handle independent of its parent after `fork()` (idempotent). Every
    /// operation does this by itself; calling it right after the fork also protects a segment
    /// the child keeps attached without touching it.
    pub fn after_fork(&mut self) {
        self.refresh_after_fork();
    }

    // -----------------------------------------------------------------------------------------
    // The lock.

    /// Releases a lock primitive this handle no longer needs. By Qt's rules the object that
    /// created a System V semaphore cleans it up; we only do so when no segment exists any
    /// more for the key (Qt removes it regardless, breaking other users' locks).
    fn drop_lock_primitive(&mut self) {
        if self.held.is_some() {
            let _ = self.unlock();
        }
        match self.lock.take() {
            Some(LockPrimitive::Posix(sem)) => sem.clean_handle(),
            Some(LockPrimitive::SysV(sem)) if sem.owns_semaphore() => {
                // Qt's rule: the object that created a semaphore removes it when it goes;
                // everyone else re-creates it on demand. Without this, a Qt process that is
                // the last user of a segment we created would leave our semaphore behind (Qt
                // removes only semaphores it created). The key file stays while the segment
                // exists: for new System V keys it is also the segment's key file.
                if let Some(Backend::SysV { project_id }) = backend(self.lock_key.key_type()) {
                    let segment_key = self.lock_key.native_key().to_owned();
                    segment::run_under_sysv_lock(
                        &sem,
                        Box::new(move |sem| {
                            if segment::sysv_segment_exists(&segment_key, project_id) {
                                sem.remove_set();
                            } else {
                                sem.remove();
                            }
                        }),
                    );
                }
            }
            _ => {}
        }
    }

    /// Qt's `initKey()`: sets up the lock for the current key, clearing the error on success.
    /// `creating` is Qt's semaphore mode (Create for create(), Open for attach()).
    fn init_key(&mut self, creating: bool) -> crate::Result<Backend> {
        let Some(found) = backend(self.key.key_type()) else {
            // Only a handle constructed with an unsupported key has one (setNativeKey refuses
            // them): Qt's embedded semaphore was built for that type and refuses it too.
            return Err(self.record(Error::new(
                ErrorKind::KeyError,
                "QSharedMemoryPrivate::initKey: unable to set key on lock \
                 (QSystemSemaphore::setNativeKey: unsupported key type)",
            )));
        };
        if self.key.native_key().contains('\0') {
            // The OS takes names as C strings: Qt passes the bytes up to the NUL, so "a\0b"
            // silently names the same object as "a". Refuse instead of aliasing two keys.
            return Err(self.record(Error::new(
                ErrorKind::KeyError,
                "QSharedMemory::handle: key contains a NUL character (the OS would cut the name \
                 there, making it the same key as its first part)",
            )));
        }
        if !(self.key.is_empty() && found == Backend::Posix) {
            // Qt's semaphore gets another key: the old error goes with it.
            self.empty_posix_key_failed = false;
        }
        match found {
            Backend::SysV { project_id } => {
                let sem_key = match self.key.legacy_key() {
                    Some(legacy) => NativeIpcKey::legacy(
                        legacy,
                        IpcObject::SystemSemaphore,
                        self.key.key_type(),
                    )
                    .native_key()
                    .to_owned(),
                    None => self.key.native_key().to_owned(),
                };
                let reusable = matches!(&self.lock, Some(LockPrimitive::SysV(s)) if s.native_key() == sem_key && !sem_key.is_empty());
                if !reusable {
                    self.drop_lock_primitive();
                    match SysVSemaphore::open(&sem_key, project_id, 1, LOCK_SET_SIZE, SemMode::Open)
                    {
                        Ok(sem) => {
                            self.lock = Some(LockPrimitive::SysV(Arc::new(sem)));
                            self.lock_key = self.key.clone();
                        }
                        Err(e) => return Err(self.record(Error::from_init_key(&e))),
                    }
                }
            }
            Backend::Posix => {
                if self.key.is_empty() && !creating && !self.empty_posix_key_failed {
                    // Qt's embedded semaphore starts with this very key (empty, POSIX), and
                    // re-keying it in Open mode to the same key is a no-op: the error comes from
                    // the segment backend instead.
                    return Err(self.record(Error::new(
                        ErrorKind::KeyError,
                        "QSharedMemory::handle: key is empty",
                    )));
                }
                if let Err(e) = segment::posix_file_name(self.key.native_key()) {
                    self.empty_posix_key_failed = self.key.is_empty();
                    return Err(self.record(e));
                }
            }
        }
        self.last_error = None;
        Ok(found)
    }

    /// Takes the lock for an internal operation (create/attach/detach) unless this thread
    /// already holds it (through this handle or another). Returns the lock to release
    /// afterwards, if it was taken here.
    fn lock_internally(
        &mut self,
        function: &str,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> crate::Result<Option<Taken>> {
        if self.held.is_some() {
            return Ok(None);
        }
        let Some(primitive) = self.lock.clone() else {
            return Ok(None);
        };
        if primitive.held_by_current_thread() {
            // This thread holds the lock through another handle: the operation is already
            // exclusive (waiting would deadlock; Qt's does), as the last-detacher check of a
            // System V attachment also assumes.
            return Ok(None);
        }
        match primitive.acquire(None, interrupt) {
            Ok(got) => Ok(Some(Taken {
                primitive,
                unreported_death: got == Acquired::OwnerDied,
            })),
            Err(LockFailure::Interrupted) => Err(interrupted_error(function)),
            Err(_) => Err(self.record(Error::new(
                ErrorKind::LockError,
                format!("{function}: unable to lock"),
            ))),
        }
    }

    fn unlock_internally(taken: Option<Taken>) {
        if let Some(Taken {
            primitive,
            unreported_death,
        }) = taken
        {
            if let LockPrimitive::SysV(sem) = &primitive {
                if !sem.is_open() {
                    // The semaphore was removed with the segment (we were the last user).
                    primitive.forget_held();
                    return;
                }
            }
            let _ = primitive.release_unreported(unreported_death);
        }
    }

    /// `QSharedMemory::lock()` with a timeout and an interrupt check: waits at most `timeout`
    /// (`None`: as long as it takes), running `interrupt` between wait slices (at least every
    /// 100 ms); if it returns true, the wait ends with a `LockError` "interrupted" that is not
    /// recorded. Returns whether the previous holder died while holding the lock.
    ///
    /// As in Qt: locking a handle that already holds the lock returns `Ok` at once; `lock()`
    /// works without being attached once a create()/attach() set up the lock (System V and
    /// foreign POSIX segments). Unlike Qt, locking through a second handle on the thread that
    /// holds the lock fails instead of waiting forever, and a dead holder is detected.
    ///
    /// # Errors
    /// `LockError`: no lock set up yet, timed out, would deadlock, interrupted, or an OS error.
    pub fn lock_with(
        &mut self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> crate::Result<bool> {
        match self.lock_start()? {
            LockStart::Done(owner_died) => Ok(owner_died),
            LockStart::Wait(wait) => {
                let outcome = wait.wait(timeout, interrupt);
                self.lock_finish(&wait, outcome)
            }
        }
    }

    /// The first half of [`lock_with`](Self::lock_with): either the answer, or the wait to run.
    /// A caller that shares the handle between threads runs the wait without holding the
    /// handle (the Python binding does: a handle's mutex held through a long wait would stay
    /// locked forever in a child forked meanwhile), then calls [`lock_finish`](Self::lock_finish).
    pub(crate) fn lock_start(&mut self) -> crate::Result<LockStart> {
        self.refresh_after_fork();
        if self.held.is_some() {
            return Ok(LockStart::Done(self.owner_died));
        }
        let Some(primitive) = self.lock.clone() else {
            return Err(self.record(Error::new(
                ErrorKind::LockError,
                "QSharedMemory::lock: unable to lock",
            )));
        };
        self.refuse_lost_memory()?;
        Ok(LockStart::Wait(LockWait {
            primitive,
            fork_generation: process::fork_generation(),
        }))
    }

    /// The second half of [`lock_with`](Self::lock_with): records what the wait got. If the
    /// handle changed meanwhile (another thread detached it, gave it another key, or locked
    /// through it), the lock that was taken is not this handle's any more: it is given back.
    pub(crate) fn lock_finish(
        &mut self,
        wait: &LockWait,
        outcome: Result<Acquired, LockFailure>,
    ) -> crate::Result<bool> {
        let got = match outcome {
            Ok(got) => got,
            Err(failure) => return Err(self.lock_failure(failure)),
        };
        self.refresh_after_fork();
        let unchanged = wait.fork_generation == process::fork_generation()
            && self.held.is_none()
            && self
                .lock
                .as_ref()
                .is_some_and(|current| current.same_as(&wait.primitive));
        if !unchanged {
            wait.give_back(got);
            return Err(self.record(Error::new(
                ErrorKind::LockError,
                "QSharedMemory::lock: unable to lock (the handle changed while waiting)",
            )));
        }
        self.release_if_lost(got)?;
        Ok(self.note_locked(got))
    }

    /// A lock on memory that is no longer shared protects nothing: refuse it.
    fn refuse_lost_memory(&mut self) -> crate::Result<()> {
        match self.lost_memory_error("QSharedMemory::lock", ErrorKind::LockError) {
            Some(error) => Err(self.record(error)),
            None => Ok(()),
        }
    }

    /// The memory may have been lost while the lock was being taken (the mutex itself lives in
    /// the file): then give the lock back and refuse.
    fn release_if_lost(&mut self, got: Acquired) -> crate::Result<()> {
        if self.attachment.as_ref().is_some_and(|a| a.lost_pages()) {
            if let Some(primitive) = &self.lock {
                let _ = primitive.release_unreported(got == Acquired::OwnerDied);
            }
            return self.refuse_lost_memory();
        }
        Ok(())
    }

    /// One attempt to lock without waiting: `Ok(None)` if another holder has it.
    ///
    /// # Errors
    /// As [`lock_with`](Self::lock_with), except that a busy lock is `Ok(None)`.
    pub fn try_lock_raw(&mut self) -> crate::Result<Option<bool>> {
        self.refresh_after_fork();
        if self.held.is_some() {
            return Ok(Some(self.owner_died));
        }
        if self.lock.is_none() {
            return Err(self.record(Error::new(
                ErrorKind::LockError,
                "QSharedMemory::lock: unable to lock",
            )));
        }
        self.refuse_lost_memory()?;
        // Borrowed, not cloned, as in `unlock`: this is the uncontended lock()'s whole path.
        let attempt = self.lock.as_ref().map(LockPrimitive::try_acquire);
        match attempt {
            Some(Ok(Some(got))) => {
                self.release_if_lost(got)?;
                Ok(Some(self.note_locked(got)))
            }
            Some(Ok(None)) | None => Ok(None),
            Some(Err(failure)) => Err(self.lock_failure(failure)),
        }
    }

    fn note_locked(&mut self, got: Acquired) -> bool {
        let recovered = got == Acquired::OwnerDied;
        self.held = Some(Held {
            thread: process::thread_id(),
        });
        self.owner_died = recovered;
        testpoint::step("lock:acquired");
        recovered
    }

    fn lock_failure(&mut self, failure: LockFailure) -> Error {
        let error = match failure {
            LockFailure::Interrupted => return interrupted_error("QSharedMemory::lock"),
            LockFailure::TimedOut => {
                Error::with_errno(ErrorKind::LockError, "QSharedMemory::lock: unable to lock (timed out)", libc::ETIMEDOUT)
            }
            LockFailure::WouldDeadlock => Error::with_errno(
                ErrorKind::LockError,
                "QSharedMemory::lock: unable to lock (this thread already holds the lock through another handle)",
                libc::EDEADLK,
            ),
            LockFailure::Os(e) => Error::with_errno(ErrorKind::LockError, "QSharedMemory::lock: unable to lock", e.raw()),
        };
        self.record(error)
    }

    /// `QSharedMemory::lock()`: waits as long as it takes; returns a guard that unlocks when
    /// dropped.
    ///
    /// # Errors
    /// `LockError` (see [`lock_with`](Self::lock_with)).
    pub fn lock(&mut self) -> crate::Result<LockGuard<'_>> {
        let owner_died = self.lock_with(None, &mut uninterrupted)?;
        Ok(LockGuard::new(self, owner_died))
    }

    /// Locks, waiting at most `timeout`.
    ///
    /// # Errors
    /// `LockError`, also when the timeout passes.
    pub fn lock_timeout(&mut self, timeout: Duration) -> crate::Result<LockGuard<'_>> {
        let owner_died = self.lock_with(Some(timeout), &mut uninterrupted)?;
        Ok(LockGuard::new(self, owner_died))
    }

    /// Locks if nobody else holds the lock right now; `Ok(None)` otherwise.
    ///
    /// # Errors
    /// `LockError` if there is no lock to take or the OS refused.
    pub fn try_lock(&mut self) -> crate::Result<Option<LockGuard<'_>>> {
        match self.try_lock_raw()? {
            Some(owner_died) => Ok(Some(LockGuard::new(self, owner_died))),
            None => Ok(None),
        }
    }

    /// `QSharedMemory::unlock()`. Not holding the lock is an error that Qt does not record.
    ///
    /// # Errors
    /// `LockError`: not locked, locked by another thread (the robust mutex can only be
    /// released by its holder, so this is refused for every backend alike), or an OS error.
    pub fn unlock(&mut self) -> crate::Result<()> {
        self.refresh_after_fork();
        let Some(held) = self.held else {
            return Err(Error::new(
                ErrorKind::LockError,
                "QSharedMemory::unlock: not locked",
            ));
        };
        let same_thread = held.thread == process::thread_id();
        // The primitive is borrowed, not cloned: an Arc clone and drop are two atomic
        // read-modify-writes, a noticeable share of an uncontended unlock.
        match &self.lock {
            None => {
                self.held = None;
                Err(self.record(Error::new(
                    ErrorKind::LockError,
                    "QSharedMemory::unlock: unable to unlock",
                )))
            }
            Some(_) if !same_thread => Err(self.record(Error::with_errno(
                ErrorKind::LockError,
                "QSharedMemory::unlock: unable to unlock (locked by another thread)",
                libc::EPERM,
            ))),
            Some(primitive) => {
                testpoint::step("unlock:begin");
                let released = primitive.release();
                self.held = None;
                released
                    .map(|()| testpoint::step("unlock:released"))
                    .map_err(|e| {
                        self.record(Error::with_errno(
                            ErrorKind::LockError,
                            "QSharedMemory::unlock: unable to unlock",
                            e.raw(),
                        ))
                    })
            }
        }
    }

    pub(crate) fn locked_slice(&self) -> Option<&[u8]> {
        self.attachment
            .as_ref()
            .map(|att| crate::lock::guarded_slice(att))
    }

    pub(crate) fn locked_slice_mut(&mut self) -> Option<&mut [u8]> {
        let att = self.attachment.as_ref()?;
        if !att.is_writable() {
            return None;
        }
        Some(crate::lock::guarded_slice_mut(att))
    }

    // -----------------------------------------------------------------------------------------
    // create / attach / detach.

    /// `QSharedMemory::create(size, mode)`.
    ///
    /// # Errors
    /// Qt's: `KeyError` (empty or bad key), `InvalidSize` (0), `AlreadyExists`,
    /// `OutOfResources` (with the bytes needed and free), `PermissionDenied`, `LockError`...
    pub fn create(&mut self, size: usize, mode: AccessMode) -> crate::Result<()> {
        self.create_with(size, mode, &mut uninterrupted)
    }

    /// [`create`](Self::create) with an interrupt check for the wait on the lock (System V).
    ///
    /// # Errors
    /// As [`create`](Self::create).
    pub fn create_with(
        &mut self,
        size: usize,
        mode: AccessMode,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> crate::Result<()> {
        self.refresh_after_fork();
        let backend = self.init_key(true)?;
        let too_small = || {
            Error::new(
                ErrorKind::InvalidSize,
                "QSharedMemory::create: create size is less then 0",
            )
        };
        match backend {
            Backend::SysV { project_id } => {
                let mut taken = self.lock_internally("QSharedMemory::create", interrupt)?;
                testpoint::step("create:locked");
                let result = if size == 0 {
                    Err(too_small())
                } else if let Some(LockPrimitive::SysV(sem)) = &self.lock {
                    segment::create_sysv(self.key.native_key(), project_id, size, mode, sem)
                        .inspect(|_| testpoint::step("create:attached"))
                } else {
                    Err(Error::new(
                        ErrorKind::LockError,
                        "QSharedMemory::create: unable to lock",
                    ))
                };
                if let (Ok(_), Some(taken)) = (&result, &mut taken) {
                    // A new segment (in place of a dead holder's orphan, if any): there is no
                    // data the death could have left inconsistent, so it is not reported.
                    taken.unreported_death = false;
                }
                Self::unlock_internally(taken);
                let att = result.map_err(|e| self.record(e))?;
                self.attachment = Some(Arc::new(att));
            }
            Backend::Posix => {
                if size == 0 {
                    return Err(self.record(too_small()));
                }
                let file_name =
                    segment::posix_file_name(self.key.native_key()).map_err(|e| self.record(e))?;
                if self.is_attached() {
                    // Qt does not check isAttached() in create(); the name is ours and taken.
                    return Err(self.record(Error::from_errno(
                        "QSharedMemory::attach (shm_open)",
                        libc::EEXIST,
                    )));
                }
                let att = segment::create_posix(
                    &file_name,
                    self.key.native_key(),
                    self.key.legacy_key(),
                    size,
                    mode,
                )
                .map_err(|e| self.record(e))?;
                let att = Arc::new(att);
                segment::track(&att);
                self.drop_lock_primitive();
                self.lock = Some(LockPrimitive::Mutex(att.clone()));
                self.attachment = Some(att);
            }
        }
        Ok(())
    }

    /// `QSharedMemory::attach(mode)`. Attaching an attached handle is an error Qt does not
    /// record.
    ///
    /// # Errors
    /// Qt's: `KeyError`, `NotFound`, `PermissionDenied`, `LockError`...
    pub fn attach(&mut self, mode: AccessMode) -> crate::Result<()> {
        self.attach_with(mode, &mut uninterrupted)
    }

    /// [`attach`](Self::attach) with an interrupt check for the wait on the lock (System V).
    ///
    /// # Errors
    /// As [`attach`](Self::attach).
    pub fn attach_with(
        &mut self,
        mode: AccessMode,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> crate::Result<()> {
        self.refresh_after_fork();
        if self.is_attached() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "QSharedMemory::attach: already attached",
            ));
        }
        match self.init_key(false)? {
            Backend::SysV { project_id } => {
                let taken = self.lock_internally("QSharedMemory::attach", interrupt)?;
                testpoint::step("attach:locked");
                let result = match &self.lock {
                    Some(LockPrimitive::SysV(sem)) => {
                        let result =
                            segment::attach_sysv(self.key.native_key(), project_id, mode, sem)
                                .inspect(|_| testpoint::step("attach:attached"));
                        if result.is_err()
                            && sem.owns_semaphore()
                            && !segment::sysv_segment_exists(self.key.native_key(), project_id)
                        {
                            // We made the lock for a segment that does not exist: take it away
                            // again (we hold it, so nobody is inside).
                            sem.remove();
                        }
                        result
                    }
                    _ => Err(Error::new(
                        ErrorKind::LockError,
                        "QSharedMemory::attach: unable to lock",
                    )),
                };
                Self::unlock_internally(taken);
                if matches!(&self.lock, Some(LockPrimitive::SysV(sem)) if !sem.is_open()) {
                    self.lock = None;
                }
                let att = result.map_err(|e| self.record(e))?;
                self.attachment = Some(Arc::new(att));
            }
            Backend::Posix => {
                let file_name =
                    segment::posix_file_name(self.key.native_key()).map_err(|e| self.record(e))?;
                match segment::attach_posix(&file_name, mode, &mut || self.settle_foreign()) {
                    Ok(PosixAttach::Ours(att)) => {
                        let att = Arc::new(att);
                        segment::track(&att);
                        self.drop_lock_primitive();
                        self.lock = Some(LockPrimitive::Mutex(att.clone()));
                        self.attachment = Some(att);
                    }
                    Ok(PosixAttach::Foreign(att)) => {
                        let sem = self.open_qt_posix_semaphore().map_err(|e| self.record(e))?;
                        // Re-attaching keeps the semaphore this handle already has: dropping it
                        // would unlink its name if this handle created it, and the next Qt
                        // attacher would make a new one (two locks for one segment).
                        if !self.is_current_posix_lock(&sem) {
                            self.drop_lock_primitive();
                            self.lock = Some(LockPrimitive::Posix(sem));
                        }
                        self.attachment = Some(Arc::new(att));
                    }
                    Err(e) => return Err(self.record(e)),
                }
            }
        }
        Ok(())
    }

    /// Qt's semaphore for the current POSIX key: `/qipc_systemsem_…` for legacy keys, the
    /// segment's own name otherwise.
    fn qt_posix_semaphore_name(&self) -> String {
        match self.key.legacy_key() {
            Some(legacy) => {
                NativeIpcKey::legacy(legacy, IpcObject::SystemSemaphore, KeyType::POSIX_REALTIME)
                    .native_key()
                    .to_owned()
            }
            None => self.key.native_key().to_owned(),
        }
    }

    fn open_qt_posix_semaphore(&self) -> crate::Result<Arc<PosixSemaphore>> {
        let name = self.qt_posix_semaphore_name();
        if let Some(LockPrimitive::Posix(sem)) = &self.lock {
            if sem.name() == name {
                return Ok(sem.clone());
            }
        }
        PosixSemaphore::open(&name, 1, SemMode::Open)
            .map(Arc::new)
            .map_err(|e| Error::from_init_key(&e))
    }

    /// A foreign segment of size 0 is most likely being created by Qt right now (it sizes the
    /// object under its semaphore): wait for that semaphore, briefly.
    fn settle_foreign(&self) {
        if let Ok(sem) = self.open_qt_posix_semaphore() {
            segment::settle_foreign_size(&LockPrimitive::Posix(sem.clone()));
            // Only a semaphore opened just for this wait is cleaned up; the handle's own lock
            // (kept from an earlier attachment) must keep its name.
            if !sem.owns_semaphore() || self.is_current_posix_lock(&sem) {
                return;
            }
            sem.clean_handle();
        }
    }

    /// Whether this handle holds the lock, taken by another thread than the calling one.
    fn held_by_another_thread(&self) -> bool {
        self.held
            .is_some_and(|held| held.thread != process::thread_id())
    }

    /// Whether `sem` is the very semaphore this handle already uses as its lock.
    fn is_current_posix_lock(&self, sem: &Arc<PosixSemaphore>) -> bool {
        matches!(&self.lock, Some(LockPrimitive::Posix(current)) if Arc::ptr_eq(current, sem))
    }

    /// `QSharedMemory::detach()`: always lets go of the memory; buffers taken from it stay
    /// valid until they are released. If this handle holds the lock, the lock is released
    /// (as in Qt). The last detacher of a segment destroys it.
    ///
    /// # Errors
    /// Not attached (not recorded, as in Qt); `LockError` if the System V lock could not be
    /// taken for the last-detacher check, or if another thread holds this handle's lock (it
    /// must unlock first: the lock cannot be released for it, as [`unlock`](Self::unlock)
    /// from another thread cannot).
    pub fn detach(&mut self) -> crate::Result<()> {
        self.detach_with(&mut uninterrupted)
    }

    /// [`detach`](Self::detach) with an interrupt check for the wait on the lock (System V).
    ///
    /// # Errors
    /// As [`detach`](Self::detach).
    pub fn detach_with(&mut self, interrupt: &mut dyn FnMut() -> bool) -> crate::Result<()> {
        self.refresh_after_fork();
        let Some(kind) = self.segment_kind() else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "QSharedMemory::detach: not attached",
            ));
        };
        if self.held_by_another_thread() {
            // Unmapping the segment under another thread that holds its robust mutex would
            // leave that thread's robust list pointing into unmapped memory: its next lock of
            // any mutex would crash, and its death would never be reported.
            return Err(self.record(Error::with_errno(
                ErrorKind::LockError,
                "QSharedMemory::detach: unable to detach (locked by another thread)",
                libc::EPERM,
            )));
        }
        testpoint::step("detach:begin");
        let lost = self.lost_memory_error("QSharedMemory::detach", ErrorKind::UnknownError);
        self.previous = self.attachment.as_ref().map(|att| Previous {
            identity: att.identity(),
            name_removed: att.name_removed(),
        });
        match kind {
            SegmentKind::SystemV => {
                let was_held = self.held.take();
                let taken = if was_held.is_some() {
                    self.lock.clone().map(|primitive| Taken {
                        primitive,
                        unreported_death: false,
                    })
                } else {
                    self.lock_internally("QSharedMemory::detach", interrupt)?
                };
                testpoint::step("detach:locked");
                // Dropping the last reference detaches and, if nobody else is attached, removes
                // the segment and its lock; the check sees that this thread holds the lock.
                self.attachment = None;
                Self::unlock_internally(taken);
                if matches!(&self.lock, Some(LockPrimitive::SysV(sem)) if !sem.is_open()) {
                    self.lock = None;
                }
            }
            SegmentKind::Posix => {
                if self.held.is_some() {
                    let _ = self.unlock();
                }
                self.held = None;
                self.lock = None;
                self.attachment = None;
            }
            SegmentKind::ForeignPosix => {
                if self.held.is_some() {
                    let _ = self.unlock();
                }
                self.attachment = None;
            }
        }
        // The handle is detached either way; a segment that lost memory while attached is
        // reported, so that the damage does not go unnoticed.
        match lost {
            Some(error) => Err(self.record(error)),
            None => Ok(()),
        }
    }
}

/// A lock taken for an internal operation (see [`SharedMemory::lock_internally`]).
struct Taken {
    primitive: LockPrimitive,
    /// The lock was taken from a holder that died, and no lock() has reported it yet.
    unreported_death: bool,
}

/// What [`SharedMemory::lock_start`] found.
pub(crate) enum LockStart {
    /// This handle holds the lock already: whether its holder before had died.
    Done(bool),
    /// The lock has to be waited for.
    Wait(LockWait),
}

/// A lock wait taken out of its handle (see [`SharedMemory::lock_start`]). It keeps the lock's
/// primitive, and through it the segment's memory, alive while it runs.
pub(crate) struct LockWait {
    primitive: LockPrimitive,
    fork_generation: u64,
}

impl LockWait {
    /// Gives back a lock that [`wait`](Self::wait) got, without recording it anywhere (the
    /// caller could not get to its handle in time, or the handle changed). A death it found
    /// stays for the next lock() to report.
    pub(crate) fn give_back(&self, got: Acquired) {
        let _ = self
            .primitive
            .release_unreported(got == Acquired::OwnerDied);
    }

    /// Waits at most `timeout` (`None`: as long as it takes), checking `interrupt` between
    /// wait slices.
    pub(crate) fn wait(
        &self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<Acquired, LockFailure> {
        self.primitive.acquire(timeout, interrupt)
    }
}

impl SharedMemory {
    /// Removes the segment's key now (`shm_unlink` for POSIX, `IPC_RMID` for System V): from
    /// then on nobody can attach to it by key, and `create()` with the key makes a new segment.
    /// Attachments, this handle's included, keep working; the memory is freed when the last of
    /// them detaches, as always. Not in Qt; this is `multiprocessing.shared_memory`'s
    /// `unlink()`.
    ///
    /// * Attached: removes the key of the attached segment, if it still has it.
    /// * Detached: removes the key of the segment this handle was attached to last, if it
    ///   still has it. If that segment is gone already because the last detach destroyed it
    ///   (qsharedmem and System V segments), there is nothing left to remove: `Ok`. A key that
    ///   meanwhile belongs to a new segment is never removed.
    /// * Never attached (since its key was set): removes whatever segment has the key now.
    ///
    /// A qsharedmem POSIX segment records the removal in its control page, so that of several
    /// concurrent removers exactly one succeeds. For System V the key file and the lock
    /// semaphore stay until the last detach, which removes them (a new segment created with the
    /// same key meanwhile shares them). A foreign POSIX segment (Qt, multiprocessing) is simply
    /// unlinked, as `shm_unlink` would; Qt's semaphore for it is left alone.
    ///
    /// # Errors
    /// `NotFound` if the key has no segment (or it was removed already), `PermissionDenied` if
    /// the segment belongs to another user, `KeyError` for a bad key, `LockError` if the System
    /// V lock could not be taken.
    pub fn remove(&mut self) -> crate::Result<()> {
        self.remove_with(&mut uninterrupted)
    }

    /// [`remove`](Self::remove) with an interrupt check for the wait on the lock (System V).
    ///
    /// # Errors
    /// As [`remove`](Self::remove).
    pub fn remove_with(&mut self, interrupt: &mut dyn FnMut() -> bool) -> crate::Result<()> {
        self.refresh_after_fork();
        let not_found = || Error::from_errno("QSharedMemory::remove", libc::ENOENT);
        if let Some(att) = self.attachment.clone() {
            let removed = match att.identity() {
                SegmentIdentity::Posix {
                    file_name, file, ..
                } => segment::remove_posix_name(&file_name, Some(file))
                    .map(|found| found == Removal::Removed),
                SegmentIdentity::SysV { .. } => {
                    let taken = self.lock_internally("QSharedMemory::remove", interrupt)?;
                    let result = att.remove_sysv();
                    Self::unlock_internally(taken);
                    result
                }
            };
            return match removed {
                Ok(true) => {
                    removed_here::note(att.identity());
                    self.last_error = None;
                    Ok(())
                }
                Ok(false) => Err(self.record(not_found())),
                Err(e) => Err(self.record(e)),
            };
        }
        let previous = self.previous.clone();
        let found = match &previous {
            Some(Previous {
                identity:
                    SegmentIdentity::Posix {
                        file_name, file, ..
                    },
                ..
            }) => segment::remove_posix_name(file_name, Some(*file)),
            Some(Previous {
                identity: SegmentIdentity::SysV { shmid },
                ..
            }) => self.remove_sysv_by_key(Some(*shmid), interrupt),
            None => match self.init_key(false)? {
                Backend::Posix => segment::posix_file_name(self.key.native_key())
                    .and_then(|file_name| segment::remove_posix_name(&file_name, None)),
                Backend::SysV { .. } => self.remove_sysv_by_key(None, interrupt),
            },
        };
        let removed = match found {
            Ok(Removal::Removed) => true,
            // The segment went with its last detach (ours or another process's), and its name
            // with it: that is what the caller asked for. Not so for a foreign segment (nobody
            // but a remover takes its name away) or one whose name was removed already.
            // As far as this process can tell: after a segment is gone, nothing says whether
            // the last detach took its name or another process's remove() did. A remove() in
            // this process is remembered, so that a second one is NotFound, as a second
            // `unlink()` is in multiprocessing.
            Ok(Removal::Missing) => previous.as_ref().is_some_and(|p| {
                !p.name_removed
                    && !removed_here::contains(&p.identity)
                    && matches!(
                        p.identity,
                        SegmentIdentity::SysV { .. } | SegmentIdentity::Posix { ours: true, .. }
                    )
            }),
            Ok(Removal::AlreadyRemoved) => false,
            Err(e) => return Err(self.record(e)),
        };
        if !removed {
            return Err(self.record(not_found()));
        }
        if let Some(previous) = &mut self.previous {
            previous.name_removed = true;
            if found == Ok(Removal::Removed) {
                removed_here::note(previous.identity.clone());
            }
        }
        self.last_error = None;
        Ok(())
    }

    /// Removes the System V segment of the current key (only if it is the segment `expected`,
    /// when given): attaches (read-only), removes, and detaches again, so that the
    /// last-detacher rules clean up the key file and the lock.
    fn remove_sysv_by_key(
        &mut self,
        expected: Option<i32>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> crate::Result<Removal> {
        let previous = self.previous.take();
        let found = match self.attach_with(AccessMode::ReadOnly, interrupt) {
            Ok(()) => {
                let found = match self.attachment.clone() {
                    // The key belongs to another segment now: leave that one alone.
                    Some(att) if expected.is_some_and(|id| att.sysv_id() != Some(id)) => {
                        Ok(Removal::Missing)
                    }
                    Some(att) => self
                        .lock_internally("QSharedMemory::remove", interrupt)
                        .and_then(|taken| {
                            let result = att.remove_sysv();
                            Self::unlock_internally(taken);
                            result
                        })
                        .map(|done| {
                            if done {
                                Removal::Removed
                            } else {
                                Removal::AlreadyRemoved
                            }
                        }),
                    None => Ok(Removal::Missing),
                };
                let _ = self.detach_with(interrupt);
                found
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Removal::Missing),
            Err(e) => Err(e),
        };
        self.previous = previous;
        found
    }
}

/// The segments that a `remove()` in this process took the name of (the most recent ones).
mod removed_here {
    use std::sync::{Mutex, PoisonError};

    use crate::segment::SegmentIdentity;

    /// Enough for any sane program; the oldest are forgotten first.
    const KEPT: usize = 1024;

    static REMOVED: Mutex<Vec<SegmentIdentity>> = Mutex::new(Vec::new());

    pub(super) fn note(identity: SegmentIdentity) {
        let mut removed = REMOVED.lock().unwrap_or_else(PoisonError::into_inner);
        if removed.len() == KEPT {
            removed.remove(0);
        }
        removed.push(identity);
    }

    pub(super) fn contains(identity: &SegmentIdentity) -> bool {
        REMOVED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(identity)
    }
}

impl Drop for SharedMemory {
    /// Qt's destructor: detach if attached, release the lock. Never blocks: the System V
    /// last-detacher check is deferred to a background thread when the lock is busy.
    fn drop(&mut self) {
        self.refresh_after_fork();
        if self.held_by_another_thread() {
            if let Some(LockPrimitive::Mutex(attachment)) = &self.lock {
                // The holding thread's robust list points into the control page, and only
                // that thread can unlock: keep the segment mapped (and counted) for the rest
                // of the process, so that its next lock does not write into unmapped memory
                // and its death still releases the mutex for the other processes.
                std::mem::forget(Arc::clone(attachment));
            } else if let Some(primitive) = &self.lock {
                // A semaphore has no owner: give it back for the thread that can no longer.
                let _ = primitive.release();
            }
            self.held = None;
        }
        if self.held.is_some() {
            let _ = self.unlock();
        }
        self.attachment = None;
        self.drop_lock_primitive();
    }
}
