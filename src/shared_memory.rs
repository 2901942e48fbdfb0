//! [`SharedMemory`]: `QSharedMemory` for Rust, and [`LockGuard`], the lock as a scope.
//!
//! A thin owner of a [`Handle`] (`crate::handle`), which has Qt's state machine and the
//! concurrency protocol: owned and borrowed mutably, a `SharedMemory` needs none of that
//! protocol's care, and its lock guard can hand out the segment's bytes as slices.

use std::time::Duration;

use crate::error::Error;
use crate::handle::Handle;
use crate::key::{IpcObject, KeyType, NativeIpcKey};
use crate::notify::{AtomicWord, Event, EventId, Notifier, NotifyError};
use crate::segment::{AccessMode, Attachment, Permissions, SegmentKind};
use crate::wait::{uninterrupted, Interrupt};

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
#[derive(Debug, Default)]
pub struct SharedMemory {
    handle: Handle,
}

impl SharedMemory {
    /// `QSharedMemory()`: a handle with an empty key (type `PosixRealtime`).
    #[doc(alias = "QSharedMemory::QSharedMemory")]
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `QSharedMemory(const QNativeIpcKey &key)`. An unsupported key type leaves the key empty
    /// (of that type, as in Qt) and records `KeyError`; create() and attach() then fail with
    /// Qt's `initKey` error.
    #[must_use]
    pub fn with_key(key: NativeIpcKey) -> Self {
        Self {
            handle: Handle::with_key(key),
        }
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
        Handle::is_key_type_supported(key_type)
    }

    /// The handle, for sharing between threads (`&self` methods).
    #[must_use]
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Everything a state change retired can go at once: this handle is borrowed mutably, so
    /// no other thread is reading it.
    fn settle<T>(&mut self, result: T) -> T {
        self.handle.reclaim_exclusive();
        result
    }

    /// `QSharedMemory::key()`: the legacy key, if the native key was derived from one.
    #[must_use]
    pub fn key(&self) -> Option<String> {
        self.handle.key()
    }

    /// `QSharedMemory::nativeKey()`.
    #[must_use]
    pub fn native_key(&self) -> String {
        self.handle.native_key()
    }

    /// `QSharedMemory::nativeIpcKey()`.
    #[must_use]
    pub fn native_ipc_key(&self) -> NativeIpcKey {
        self.handle.native_ipc_key()
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
        let result = self.handle.set_native_key(key);
        self.settle(result)
    }

    /// `QSharedMemory::error()`: the last recorded error, `None` for `NoError`.
    #[must_use]
    pub fn error(&self) -> Option<Error> {
        self.handle.error()
    }

    /// `QSharedMemory::errorString()`: the last recorded error's text, "" for `NoError`.
    #[must_use]
    pub fn error_string(&self) -> String {
        self.handle.error_string()
    }

    /// `QSharedMemory::isAttached()`.
    #[must_use]
    pub fn is_attached(&self) -> bool {
        self.handle.is_attached()
    }

    /// `QSharedMemory::size()`: the segment's size, 0 when not attached.
    #[must_use]
    pub fn size(&self) -> usize {
        self.handle.size()
    }

    /// Which kind of segment this handle is attached to.
    #[must_use]
    pub fn segment_kind(&self) -> Option<SegmentKind> {
        self.handle.segment_kind()
    }

    /// The attachment, shared with anything that must keep the memory mapped; the mapping
    /// ends when the last reference goes.
    #[must_use]
    pub fn attachment(&self) -> Option<std::sync::Arc<Attachment>> {
        self.handle.attachment()
    }

    /// The first byte of the segment, or null when not attached. Reading or writing through it
    /// is only race-free while holding the lock; prefer [`lock`](Self::lock).
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.handle
            .attachment()
            .map_or(std::ptr::null_mut(), |a| a.as_ptr())
    }

    /// Whether this handle holds the lock.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        self.handle.is_locked()
    }

    /// Whether the last successful [`lock`](Self::lock) found that the previous holder had
    /// died while holding it (the data it protected may be half-written).
    #[must_use]
    pub fn lock_owner_died(&self) -> bool {
        self.handle.lock_owner_died()
    }

    /// Makes this handle independent of its parent after `fork()` (idempotent). Every
    /// operation does this by itself; calling it right after the fork also protects a segment
    /// the child keeps attached without touching it.
    pub fn after_fork(&mut self) {
        self.handle.after_fork();
    }

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
        interrupt: Interrupt<'_>,
    ) -> crate::Result<()> {
        self.create_with_permissions(size, mode, Permissions::default(), interrupt)
    }

    /// [`create`](Self::create) with the permissions (and group) of the OS objects it makes:
    /// the segment, its control block, its key file; Qt's default is 0600 (less the umask).
    ///
    /// # Errors
    /// As [`create`](Self::create); `PermissionDenied` for a group the process is not in.
    pub fn create_with_permissions(
        &mut self,
        size: usize,
        mode: AccessMode,
        permissions: Permissions,
        interrupt: Interrupt<'_>,
    ) -> crate::Result<()> {
        let result = self.handle.create_with(size, mode, permissions, interrupt);
        self.settle(result)
    }

    /// `QSharedMemory::attach(mode)`. Attaching an attached handle is an error Qt does not
    /// record.
    ///
    /// # Errors
    /// Qt's: `KeyError`, `NotFound`, `PermissionDenied`, `LockError`...
    pub fn attach(&mut self, mode: AccessMode) -> crate::Result<()> {
        self.attach_with(mode, &mut uninterrupted)
    }

    /// [`attach`](Self::attach) with an interrupt check for its waits.
    ///
    /// # Errors
    /// As [`attach`](Self::attach).
    pub fn attach_with(&mut self, mode: AccessMode, interrupt: Interrupt<'_>) -> crate::Result<()> {
        let result = self.handle.attach_with(mode, None, interrupt);
        self.settle(result)
    }

    /// [`attach`](Self::attach), waiting at most `timeout` for the segment to be created if it
    /// does not exist yet (`Duration::MAX`: as long as it takes), so that programs can start in
    /// any order: `inotify` on `/dev/shm` for POSIX keys, polling with a backoff for System V.
    ///
    /// # Errors
    /// As [`attach`](Self::attach); `NotFound` if the segment did not appear in time.
    pub fn attach_timeout(&mut self, mode: AccessMode, timeout: Duration) -> crate::Result<()> {
        let result = self
            .handle
            .attach_when_created(mode, timeout, &mut uninterrupted);
        self.settle(result)
    }

    /// The segment's notify generation: [`Notifier::notify`], [`Notifier::wait_changed`].
    ///
    /// # Errors
    /// Not attached; a foreign segment whose control block this process may not write.
    pub fn notifier(&self) -> Result<Notifier, NotifyError> {
        self.handle.notifier()
    }

    /// The segment's generation now (see [`Notifier`]).
    ///
    /// # Errors
    /// As [`notifier`](Self::notifier).
    pub fn generation(&self) -> Result<u32, NotifyError> {
        Ok(self.notifier()?.generation())
    }

    /// Waits until another process notified since `generation`, at most `timeout` (`None`: as
    /// long as it takes): `Ok(true)` then, `Ok(false)` on timeout (see [`Notifier`]).
    ///
    /// # Errors
    /// As [`notifier`](Self::notifier).
    pub fn wait_changed(
        &self,
        generation: u32,
        timeout: Option<Duration>,
    ) -> Result<bool, NotifyError> {
        Ok(self.notifier()?.wait_changed(generation, timeout))
    }

    /// Bumps the generation and wakes one waiter; returns how many it woke.
    ///
    /// # Errors
    /// As [`notifier`](Self::notifier).
    pub fn notify(&self) -> Result<u32, NotifyError> {
        Ok(self.notifier()?.notify())
    }

    /// Bumps the generation and wakes every waiter; returns how many it woke.
    ///
    /// # Errors
    /// As [`notifier`](Self::notifier).
    pub fn notify_all(&self) -> Result<u32, NotifyError> {
        Ok(self.notifier()?.notify_all())
    }

    /// One of the segment's 32 events, by name (named now if new) or by slot number.
    ///
    /// # Errors
    /// As [`notifier`](Self::notifier); a bad index or name; all 32 in use.
    pub fn event(&self, id: EventId<'_>) -> Result<Event, NotifyError> {
        self.handle.event(id)
    }

    /// The aligned 32-bit word at `offset` of the data, for atomics, waits and wake-ups.
    ///
    /// # Errors
    /// Not attached; `offset` misaligned or past the end.
    pub fn atomic_u32(&self, offset: usize) -> Result<AtomicWord<u32>, NotifyError> {
        self.handle.atomic_word(offset)
    }

    /// The aligned 64-bit word at `offset` of the data (see [`atomic_u32`](Self::atomic_u32)).
    ///
    /// # Errors
    /// As [`atomic_u32`](Self::atomic_u32).
    pub fn atomic_u64(&self, offset: usize) -> Result<AtomicWord<u64>, NotifyError> {
        self.handle.atomic_word(offset)
    }

    /// `QSharedMemory::detach()`: always lets go of the memory. If this handle holds the lock,
    /// the lock is released (as in Qt). The last detacher of a segment destroys it.
    ///
    /// # Errors
    /// Not attached (not recorded, as in Qt); `LockError` if the System V lock could not be
    /// taken for the last-detacher check.
    pub fn detach(&mut self) -> crate::Result<()> {
        self.detach_with(&mut uninterrupted)
    }

    /// [`detach`](Self::detach) with an interrupt check for the wait on the lock (System V).
    ///
    /// # Errors
    /// As [`detach`](Self::detach).
    pub fn detach_with(&mut self, interrupt: Interrupt<'_>) -> crate::Result<()> {
        let result = self.handle.detach_with(interrupt);
        self.settle(result)
    }

    /// Removes the segment's key now (see [`Handle::remove_with`]); multiprocessing's
    /// `unlink()`.
    ///
    /// # Errors
    /// `NotFound`, `PermissionDenied`, `KeyError`, `LockError`.
    pub fn remove(&mut self) -> crate::Result<()> {
        self.remove_with(&mut uninterrupted)
    }

    /// [`remove`](Self::remove) with an interrupt check for the wait on the lock (System V).
    ///
    /// # Errors
    /// As [`remove`](Self::remove).
    pub fn remove_with(&mut self, interrupt: Interrupt<'_>) -> crate::Result<()> {
        let result = self.handle.remove_with(interrupt);
        self.settle(result)
    }

    /// `QSharedMemory::lock()` with a timeout and an interrupt check; returns whether the
    /// previous holder died while holding the lock. See [`Handle::lock_with`].
    ///
    /// # Errors
    /// `LockError`: no lock set up yet, timed out, would deadlock, interrupted, or an OS error.
    pub fn lock_with(
        &mut self,
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> crate::Result<bool> {
        self.handle.lock_with(timeout, interrupt)
    }

    /// One attempt to lock without waiting: `Ok(None)` if another holder has it.
    ///
    /// # Errors
    /// As [`lock_with`](Self::lock_with), except that a busy lock is `Ok(None)`.
    pub fn try_lock_raw(&mut self) -> crate::Result<Option<bool>> {
        self.handle.try_lock()
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
    /// `LockError`: not locked, locked by another thread, or an OS error.
    pub fn unlock(&mut self) -> crate::Result<()> {
        self.handle.unlock()
    }
}

/// Exclusive access to a segment's memory for as long as it lives; unlocks when dropped.
///
/// Returned by [`SharedMemory::lock`] and friends. It gives the segment's bytes (`&[u8]`, and
/// `&mut [u8]` for read-write attachments): every cooperating process (Qt's included) writes
/// only while it holds the lock, so access through the guard never races with them.
///
/// ```no_run
/// use qsharedmem::{AccessMode, KeyType, SharedMemory};
/// let mut shm = SharedMemory::with_key(SharedMemory::platform_safe_key("guard-doc", KeyType::POSIX_REALTIME));
/// shm.create(64, AccessMode::ReadWrite)?;
/// {
///     let mut guard = shm.lock()?;
///     guard.as_mut_slice().expect("read-write")[0] += 1;
///     assert!(!guard.owner_died());
/// } // unlocked here
/// # Ok::<(), qsharedmem::Error>(())
/// ```
///
/// A guard is not `Send`: the lock belongs to the thread that took it (the robust mutex can
/// only be released by its owner thread), so the guard must be dropped on that thread.
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// let mut shm = qsharedmem::SharedMemory::new();
/// send(shm.lock().unwrap());
/// ```
#[derive(Debug)]
pub struct LockGuard<'a> {
    shm: &'a mut SharedMemory,
    owner_died: bool,
    /// The attachment when the lock was taken (the guard's borrow keeps it).
    attachment: Option<std::sync::Arc<Attachment>>,
    /// Makes the guard `!Send` (and `!Sync`).
    _not_send: std::marker::PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    fn new(shm: &'a mut SharedMemory, owner_died: bool) -> Self {
        let attachment = shm.handle.attachment();
        Self {
            shm,
            owner_died,
            attachment,
            _not_send: std::marker::PhantomData,
        }
    }

    /// True if the previous holder died while holding the lock: the data it protected may be
    /// half-written, and the caller decides whether it can be used.
    #[must_use]
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// The segment's bytes, or `None` if the handle is not attached (a System V or Qt
    /// semaphore lock can be held without an attachment, as in Qt).
    #[must_use]
    #[allow(unsafe_code)] // the lock protocol makes the slice sound, see SAFETY
    pub fn as_slice(&self) -> Option<&[u8]> {
        let att = self.attachment.as_ref()?;
        // SAFETY: the guard exists only while its handle holds the segment's cross-process
        // lock, and every cooperating writer (qsharedmem, Qt) writes only while holding it, so
        // nobody writes these bytes while the shared borrow lives. The range is the
        // attachment's data, inside its mapping, which the guard's `Arc` keeps alive.
        Some(unsafe { att.data_mapping().slice(0, att.size()) })
    }

    /// The segment's bytes for writing, or `None` if not attached or attached `ReadOnly`.
    #[must_use]
    #[allow(unsafe_code)] // see `as_slice`
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        let att = self.attachment.as_ref().filter(|a| a.is_writable())?;
        // SAFETY: as in `as_slice`, plus: the guard is borrowed mutably for the slice's
        // lifetime, and it borrows its handle mutably, so no other slice of this memory exists
        // in this process; other processes do not touch it while the lock is held. The mapping
        // is writable (checked above).
        Some(unsafe { att.data_mapping().slice_mut(0, att.size()) })
    }

    /// Unlocks now, reporting a failure to unlock (dropping the guard ignores it).
    ///
    /// # Errors
    /// `LockError` if the OS refused to release the lock.
    pub fn unlock(self) -> crate::Result<()> {
        let mut this = std::mem::ManuallyDrop::new(self);
        drop(this.attachment.take());
        this.shm.unlock()
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Unlocking can only fail if the lock vanished under us; nothing to do about it here.
        let _ = self.shm.unlock();
    }
}
