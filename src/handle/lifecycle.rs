//! Qt's `initKey`, `create`, `attach`, `detach`, `setNativeKey` and the destructor.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::locking::{unlock_internally, Taken};
use super::qt_errors::{segment_error, Family, Op};
use super::{Handle, Previous, Semaphore, State, Target, HOLDS_ALL, HOLDS_SEMAPHORE};
use crate::error::{Error, ErrorKind, SemaphoreError, SemaphoreErrorKind};
use crate::key::{Backend, IpcObject, KeyType, NativeIpcKey};
use crate::lock::posix_sem::PosixSemaphore;
use crate::lock::sysv_sem::{SysVSemaphore, LOCK_SET_SIZE};
use crate::lock::SemMode;
use crate::segment::posix::{self as posix_segment, SemaphoreFile};
use crate::segment::{
    registry, sysv as sysv_segment, AccessMode, Attachment, Failure, Permissions,
};
use crate::sys::{posix, process, Errno};
use crate::testpoint;
use crate::wait::Interrupt;

/// What `init_key` set up, for the rest of the operation.
/// Whether a System V detach waits for the key's lock (Qt's `detach()` does; a destructor must
/// not block, and leaves the check to the attachment's drop).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockWait {
    AsQt,
    Never,
}

enum Prepared {
    Posix {
        file_name: String,
        semaphore: Arc<PosixSemaphore>,
    },
    SysV {
        project_id: u8,
        semaphore: Arc<SysVSemaphore>,
        /// This very call made the lock set: no segment anyone made the Qt way belongs to it.
        lock_is_new: bool,
    },
}

/// Qt's semaphore name for a POSIX key: `/qipc_systemsem_…` for legacy keys, the segment's own
/// name otherwise.
fn posix_semaphore_name(key: &NativeIpcKey) -> String {
    match key.legacy_key() {
        Some(legacy) => {
            NativeIpcKey::legacy(legacy, IpcObject::SystemSemaphore, KeyType::POSIX_REALTIME)
                .native_key()
                .to_owned()
        }
        None => key.native_key().to_owned(),
    }
}

/// Qt's semaphore key for a System V key: the `qipc_systemsem_…` file for legacy keys, the
/// segment's own key file otherwise.
fn sysv_semaphore_key(key: &NativeIpcKey) -> String {
    match key.legacy_key() {
        Some(legacy) => NativeIpcKey::legacy(legacy, IpcObject::SystemSemaphore, key.key_type())
            .native_key()
            .to_owned(),
        None => key.native_key().to_owned(),
    }
}

impl Handle {
    /// `QSharedMemory::setNativeKey(key)`. Detaches first if attached, even when the key is the
    /// same (Qt does, although its documentation says otherwise); an empty key equal to the
    /// current one changes nothing. An unsupported type records `KeyError` and keeps the key.
    ///
    /// # Errors
    /// `KeyError` for an unsupported key type.
    pub fn set_native_key(&self, key: NativeIpcKey) -> Result<(), Error> {
        {
            let mut state = self.state();
            if key == state.key && key.is_empty() {
                return Ok(());
            }
            if !Self::is_key_type_supported(key.key_type()) {
                return Err(self.record(
                    &mut state,
                    Error::new(
                        ErrorKind::KeyError,
                        "QSharedMemory::setNativeKey: unsupported key type",
                    ),
                ));
            }
        }
        if self.is_attached() {
            let _ = self.detach_with(&mut crate::wait::uninterrupted);
        }
        let mut state = self.state();
        state.key = key;
        state.previous = None;
        Ok(())
    }

    /// The lock target for the state as it is: the attachment's robust lock (with Qt's
    /// semaphore) if it has a control block, else Qt's semaphore.
    pub(super) fn refresh_target(&self, state: &mut State) {
        let same_as = |current: Option<&Arc<Target>>, wanted: &Target| -> bool {
            let Some(current) = current else { return false };
            match (&**current, wanted) {
                (
                    Target::Paired {
                        attachment: a,
                        semaphore: s,
                        ..
                    },
                    Target::Paired {
                        attachment: b,
                        semaphore: t,
                        ..
                    },
                ) => {
                    Arc::ptr_eq(a, b)
                        && match (s, t) {
                            (Some(s), Some(t)) => Arc::ptr_eq(s, t),
                            (None, None) => true,
                            _ => false,
                        }
                }
                (Target::Semaphore(a), Target::Semaphore(b)) => Arc::ptr_eq(a, b),
                (Target::SysV(a), Target::SysV(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        };
        let posix_semaphore = match &state.semaphore {
            Some(Semaphore::Posix(sem)) => Some(Arc::clone(sem)),
            _ => None,
        };
        let wanted = match (&state.attachment, &state.semaphore) {
            (Some(att), _) if att.control().is_some() => Some(Target::Paired {
                attachment: Arc::clone(att),
                control: Arc::clone(att.control().expect("checked")),
                semaphore: posix_semaphore,
            }),
            (_, Some(Semaphore::Posix(sem))) => Some(Target::Semaphore(Arc::clone(sem))),
            (_, Some(Semaphore::SysV(sem))) => Some(Target::SysV(Arc::clone(sem))),
            _ => None,
        };
        match wanted {
            Some(wanted) if same_as(state.target.as_ref(), &wanted) => {}
            wanted => self.set_target(state, wanted),
        }
    }

    /// Takes Qt's embedded semaphore out of the state, for [`cleanup_semaphore`] outside the
    /// mutex.
    fn take_semaphore(&self, state: &mut State) -> Option<(Semaphore, NativeIpcKey)> {
        let semaphore = state.semaphore.take()?;
        let key = std::mem::take(&mut state.semaphore_key);
        self.refresh_target(state);
        Some((semaphore, key))
    }

    /// Qt's `initKey()`: sets up the lock semaphore for the current key, clearing the error on
    /// success. `creating` is Qt's semaphore mode (Create for create(), Open for attach()).
    /// Forgets a kept POSIX semaphore whose name now refers to another file (or none), without
    /// the creator's cleanup, which would unlink that other file.
    fn drop_unnamed_semaphore(&self, state: &mut State) {
        if let Some(Semaphore::Posix(sem)) = &state.semaphore {
            if !sem.still_named() {
                sem.disown();
                drop(self.take_semaphore(state));
            }
        }
    }

    /// Opens Qt's semaphore of the key again (the kept one lost its name), for a handle that
    /// is not attached and does not hold it; returns the new lock target.
    pub(super) fn reopen_posix_semaphore(&self, state: &mut State) -> Result<Arc<Target>, Error> {
        let name = posix_semaphore_name(&state.key);
        let sem = PosixSemaphore::open_for_lock(&name).map_err(|e| Error::from_init_key(&e))?;
        self.drop_unnamed_semaphore(state);
        state.semaphore = Some(Semaphore::Posix(Arc::new(sem)));
        state.semaphore_key = state.key.clone();
        self.refresh_target(state);
        state
            .target
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::LockError, "QSharedMemory::lock: unable to lock"))
    }

    fn init_key(&self, state: &mut State, creating: bool) -> Result<Prepared, Error> {
        let Some(found) = state.key.key_type().backend() else {
            // Only a handle constructed with an unsupported key has one (setNativeKey refuses
            // them): Qt's embedded semaphore was built for that type and refuses it too.
            return Err(self.record(
                state,
                Error::new(
                    ErrorKind::KeyError,
                    "QSharedMemoryPrivate::initKey: unable to set key on lock \
                     (QSystemSemaphore::setNativeKey: unsupported key type)",
                ),
            ));
        };
        if state.key.native_key().contains('\0') {
            // The OS takes names as C strings: Qt passes the bytes up to the NUL, so "a\0b"
            // silently names the same object as "a". Refuse instead of aliasing two keys.
            return Err(self.record(
                state,
                Error::new(
                    ErrorKind::KeyError,
                    "QSharedMemory::handle: key contains a NUL character (the OS would cut the \
                     name there, making it the same key as its first part)",
                ),
            ));
        }
        if !(state.key.is_empty() && found == Backend::Posix) {
            // Qt's semaphore gets another key: the old error goes with it.
            state.empty_posix_key_failed = false;
        }
        let prepared = match found {
            Backend::SysV { project_id } => {
                let sem_key = sysv_semaphore_key(&state.key);
                let reusable = matches!(&state.semaphore, Some(Semaphore::SysV(s))
                    if s.native_key() == sem_key && !sem_key.is_empty());
                let mut lock_is_new = false;
                if !reusable {
                    let old = self.take_semaphore(state);
                    cleanup_semaphore(old);
                    let opened = SysVSemaphore::open(
                        &sem_key,
                        project_id,
                        1,
                        LOCK_SET_SIZE,
                        SemMode::Open,
                        0o600,
                    )
                    .map_err(|e| Error::from_init_key(&e));
                    match opened {
                        Ok(sem) => {
                            lock_is_new = sem.owns_semaphore();
                            state.semaphore = Some(Semaphore::SysV(Arc::new(sem)));
                            state.semaphore_key = state.key.clone();
                        }
                        Err(e) => return Err(self.record(state, e)),
                    }
                }
                let Some(Semaphore::SysV(semaphore)) = &state.semaphore else {
                    unreachable!("set up above")
                };
                Prepared::SysV {
                    project_id,
                    semaphore: Arc::clone(semaphore),
                    lock_is_new,
                }
            }
            Backend::Posix => {
                if state.key.is_empty() && !creating && !state.empty_posix_key_failed {
                    // Qt's embedded semaphore starts with this very key (empty, POSIX), and
                    // re-keying it in Open mode to the same key is a no-op: the error comes from
                    // the segment backend instead.
                    return Err(self.record(
                        state,
                        segment_error(Op::Attach, Family::Posix, Failure::EmptyKey),
                    ));
                }
                let name = posix_semaphore_name(&state.key);
                // A semaphore this handle holds stays, whatever happened to its name.
                let holding = self.fast.held_by.load(Ordering::Acquire) != 0;
                let reusable = matches!(&state.semaphore,
                    Some(Semaphore::Posix(s)) if s.name() == name && (holding || s.still_named()));
                if !reusable {
                    self.drop_unnamed_semaphore(state);
                    let old = self.take_semaphore(state);
                    cleanup_semaphore(old);
                    match PosixSemaphore::open_for_lock(&name) {
                        Ok(sem) => {
                            state.semaphore = Some(Semaphore::Posix(Arc::new(sem)));
                            state.semaphore_key = state.key.clone();
                        }
                        Err(e) => {
                            state.empty_posix_key_failed = state.key.is_empty();
                            // Qt's create() opens the semaphore in Create mode: an existing one
                            // it may not touch fails its `sem_unlink` (ours opens it instead,
                            // which fails the same way, but later).
                            let e = match e.os_error() {
                                Some(Errno::EACCES) if creating => SemaphoreError::from_errno(
                                    "QSystemSemaphore::handle (sem_unlink)",
                                    Errno::EACCES,
                                ),
                                // The semaphore is the first file a create() makes: say why
                                // there is no room, when it is the inode table.
                                Some(Errno::ENOSPC) if posix::shm_out_of_inodes() => {
                                    SemaphoreError::with_errno(
                                        SemaphoreErrorKind::OutOfResources,
                                        format!(
                                            "QSystemSemaphore::handle: out of resources (no \
                                             inode left in {}: too many files)",
                                            posix::SHM_DIR
                                        ),
                                        Errno::ENOSPC,
                                    )
                                }
                                _ => e,
                            };
                            return Err(self.record(state, Error::from_init_key(&e)));
                        }
                    }
                }
                let file_name = match posix_segment::file_name(state.key.native_key()) {
                    Ok(name) => name,
                    Err(f) => {
                        return Err(self.record(state, segment_error(Op::Attach, Family::Posix, f)))
                    }
                };
                let Some(Semaphore::Posix(semaphore)) = &state.semaphore else {
                    unreachable!("set up above")
                };
                Prepared::Posix {
                    file_name,
                    semaphore: Arc::clone(semaphore),
                }
            }
        };
        self.refresh_target(state);
        state.last_error = None;
        Ok(prepared)
    }

    /// `QSharedMemory::create(size, mode)`, with the permissions of the OS objects.
    ///
    /// # Errors
    /// Qt's: `KeyError` (empty or bad key), `InvalidSize` (0), `AlreadyExists`,
    /// `OutOfResources` (with the bytes needed and free), `PermissionDenied`, `LockError`...
    pub fn create_with(
        &self,
        size: usize,
        mode: AccessMode,
        permissions: Permissions,
        interrupt: Interrupt<'_>,
    ) -> Result<(), Error> {
        let too_small = || {
            Error::new(
                ErrorKind::InvalidSize,
                "QSharedMemory::create: create size is less then 0",
            )
        };
        let mut state = self.state();
        match self.init_key(&mut state, true)? {
            Prepared::SysV {
                project_id,
                semaphore,
                lock_is_new,
            } => {
                drop(state);
                let mut taken =
                    self.lock_internally(&semaphore, "QSharedMemory::create", &mut *interrupt)?;
                testpoint::step("create:locked");
                let mut state = self.state();
                let result = if size == 0 {
                    Err(too_small())
                } else {
                    let spec = sysv_segment::CreateSpec {
                        size,
                        mode,
                        permissions,
                        lock: &semaphore,
                        lock_preexisted: !lock_is_new,
                    };
                    sysv_segment::create(state.key.native_key(), project_id, &spec)
                        .inspect(|_| testpoint::step("create:attached"))
                        .map_err(|f| segment_error(Op::Create, Family::SysV, f))
                };
                if let (Ok(_), Some(taken)) = (&result, &mut taken) {
                    // A new segment (in place of a dead holder's orphan, if any): there is no
                    // data the death could have left inconsistent, so it is not reported.
                    taken.unreported_death = false;
                }
                unlock_internally(taken);
                let att = result.map_err(|e| self.record(&mut state, e))?;
                self.install(&mut state, Arc::new(att));
                if shares_permissions(permissions) {
                    // The lock too: another account that may use the segment must take it.
                    let _ = semaphore.set_permissions(permissions.mode, permissions.group);
                    if let Ok(key_file) = crate::sys::sysv::key_path(state.key.native_key()) {
                        let _ = crate::sys::sysv::set_key_file_permissions(
                            &key_file,
                            permissions.mode & 0o666,
                            permissions.group,
                        );
                    }
                }
                Ok(())
            }
            Prepared::Posix {
                file_name,
                semaphore,
            } => {
                if size == 0 {
                    return Err(self.record(&mut state, too_small()));
                }
                if state.attachment.is_some() {
                    // Qt does not check isAttached() in create(); the name is ours and taken.
                    return Err(self.record(
                        &mut state,
                        Error::from_errno("QSharedMemory::attach (shm_open)", Errno::EEXIST),
                    ));
                }
                // A holder of Qt's semaphore alone (lock() before create(), as Qt programs do)
                // gets the new segment's whole lock.
                let holding_semaphore = self.fast.held_by.load(Ordering::Acquire)
                    == process::thread_self()
                    && matches!(state.target.as_deref(), Some(Target::Semaphore(_)));
                let spec = posix_segment::CreateSpec {
                    size,
                    mode,
                    permissions,
                    native_key: state.key.native_key(),
                    legacy_key: state.key.legacy_key(),
                    semaphore: SemaphoreFile::of(semaphore.name()),
                    lock_now: holding_semaphore,
                    // Holding the semaphore, the creator knows no dead holder has it.
                    partner: (!holding_semaphore).then(|| semaphore.semaphore()),
                };
                let att = posix_segment::create(&file_name, &spec)
                    .map_err(|f| segment_error(Op::Create, Family::Posix, f))
                    .map_err(|e| self.record(&mut state, e))?;
                self.install(&mut state, Arc::new(att));
                if shares_permissions(permissions) {
                    // Qt's semaphore is part of the lock: the same permissions.
                    let _ = semaphore.set_permissions(permissions.mode, permissions.group);
                }
                if holding_semaphore {
                    // The creator took the new mutex before publishing: it holds all of it,
                    // and the mutex knows its holder thread from now on.
                    self.rebase_held(&state, HOLDS_ALL);
                    crate::lock::held::mark_released(crate::lock::held::Identity::Posix(
                        semaphore.name(),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Makes `att` the handle's attachment.
    fn install(&self, state: &mut State, att: Arc<Attachment>) {
        registry::track(&att);
        self.set_attachment(state, Some(att));
        self.refresh_target(state);
    }

    /// A lock held across a change of target (Qt's semaphore taken before create() or
    /// attach()) is held on the new target: all of it (`HOLDS_ALL`, a creator that took the new
    /// segment's mutex too) or its semaphore only.
    fn rebase_held(&self, state: &State, holds: u8) {
        if self.fast.held_by.load(Ordering::Acquire) != 0 {
            self.fast.held_target.publish(state.target.as_ref());
            self.fast.holds.store(holds, Ordering::Relaxed);
        }
    }

    /// `QSharedMemory::attach(mode)` with a bound on its waits (for a POSIX segment held
    /// exclusively, for a System V key's lock; `None`: Qt's, as long as it takes) and an
    /// interrupt check. Attaching an attached handle is an error Qt does not record. To wait
    /// for a segment that does not exist yet, see [`Handle::attach_when_created`].
    ///
    /// # Errors
    /// Qt's: `KeyError`, `NotFound`, `PermissionDenied`, `LockError`...
    pub fn attach_with(
        &self,
        mode: AccessMode,
        timeout: Option<Duration>,
        interrupt: Interrupt<'_>,
    ) -> Result<(), Error> {
        let mut state = self.state();
        if state.attachment.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "QSharedMemory::attach: already attached",
            ));
        }
        match self.init_key(&mut state, false)? {
            Prepared::SysV {
                project_id,
                semaphore,
                ..
            } => {
                drop(state);
                let taken = self.lock_internally_within(
                    &semaphore,
                    "QSharedMemory::attach",
                    timeout,
                    &mut *interrupt,
                )?;
                testpoint::step("attach:locked");
                let mut state = self.state();
                let native_key = state.key.native_key().to_owned();
                let result = sysv_segment::attach(&native_key, project_id, mode, &semaphore)
                    .inspect(|_| testpoint::step("attach:attached"));
                if result.is_err()
                    && semaphore.owns_semaphore()
                    && !sysv_segment::segment_exists(&native_key, project_id)
                {
                    // We made the lock for a segment that does not exist: take it away
                    // again (we hold it, so nobody is inside).
                    semaphore.remove();
                }
                unlock_internally(taken);
                if !semaphore.is_open() {
                    state.semaphore = None;
                    self.refresh_target(&mut state);
                }
                let att = result
                    .map_err(|f| segment_error(Op::Attach, Family::SysV, f))
                    .map_err(|e| self.record(&mut state, e))?;
                self.install(&mut state, Arc::new(att));
                Ok(())
            }
            Prepared::Posix {
                file_name,
                semaphore,
            } => {
                let key = state.key.clone();
                drop(state);
                let mut settle = || settle_foreign_size(&semaphore);
                let mut spec = posix_segment::AttachSpec {
                    mode,
                    settle: &mut settle,
                    semaphore: SemaphoreFile::of(semaphore.name()),
                    native_key: key.native_key(),
                    legacy_key: key.legacy_key(),
                    timeout,
                    interrupt,
                };
                let result = posix_segment::attach(&file_name, &mut spec);
                let mut state = self.state();
                match result {
                    Ok(att) => {
                        let att = Arc::new(att);
                        if state.attachment.is_some() || state.key != key {
                            // Another thread attached or re-keyed the handle meanwhile.
                            state.retired_attachments.push(att);
                            return Err(self.record(
                                &mut state,
                                Error::new(
                                    ErrorKind::LockError,
                                    "QSharedMemory::attach: the handle changed while attaching",
                                ),
                            ));
                        }
                        let held_semaphore =
                            matches!(state.target.as_deref(), Some(Target::Semaphore(_)));
                        self.install(&mut state, att);
                        if held_semaphore
                            && matches!(state.target.as_deref(), Some(Target::Paired { .. }))
                        {
                            self.rebase_held(&state, HOLDS_SEMAPHORE);
                        }
                        Ok(())
                    }
                    Err(Failure::Interrupted) => Err(segment_error(
                        Op::Attach,
                        Family::Posix,
                        Failure::Interrupted,
                    )),
                    Err(f) => {
                        Err(self.record(&mut state, segment_error(Op::Attach, Family::Posix, f)))
                    }
                }
            }
        }
    }

    /// `QSharedMemory::detach()`: always lets go of the memory; buffers taken from it stay
    /// valid until they are released. If this handle holds the lock, the lock is released
    /// (as in Qt). The last detacher of a segment destroys it.
    ///
    /// # Errors
    /// Not attached (not recorded, as in Qt); `LockError` if the System V lock could not be
    /// taken for the last-detacher check, or if another thread holds this handle's lock (it
    /// must unlock first).
    pub fn detach_with(&self, interrupt: Interrupt<'_>) -> Result<(), Error> {
        self.detach_inner(interrupt, LockWait::AsQt)
    }

    fn detach_inner(&self, interrupt: Interrupt<'_>, wait: LockWait) -> Result<(), Error> {
        self.let_ending_holder_finish();
        let mut state = self.state();
        let Some(att) = state.attachment.clone() else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "QSharedMemory::detach: not attached",
            ));
        };
        let holder = self.fast.held_by.load(Ordering::Acquire);
        if holder != 0 && holder != process::thread_self() {
            if self.holder_ended(&state) {
                self.settle_ended_holder(&mut state);
            } else {
                // Unmapping the segment under another thread that holds its robust mutex would
                // leave that thread's robust list pointing into unmapped memory: its next lock
                // of any mutex would crash, and its death would never be reported.
                return Err(self.record(
                    &mut state,
                    Error::with_errno(
                        ErrorKind::LockError,
                        "QSharedMemory::detach: unable to detach (locked by another thread)",
                        Errno::EPERM,
                    ),
                ));
            }
        }
        testpoint::step("detach:begin");
        let lost =
            Self::lost_memory_error(&state, "QSharedMemory::detach", ErrorKind::UnknownError);
        state.previous = Some(Previous {
            identity: att.identity(),
            name_removed: att.name_removed(),
        });
        let held_here = self.fast.held_by.load(Ordering::Acquire) == process::thread_self();
        match (att.sysv(), &state.semaphore) {
            (Some(_), Some(Semaphore::SysV(sem))) => {
                let sem = Arc::clone(sem);
                let taken = if held_here {
                    // Qt's detach releases a lock the handle holds: that lock covers the check.
                    self.clear_held();
                    Some(Taken {
                        sem: Arc::clone(&sem),
                        unreported_death: false,
                    })
                } else if wait == LockWait::Never {
                    // A destructor: the attachment's own drop makes the last-detacher check
                    // under the lock, or hands it to the reaper if the lock is busy.
                    None
                } else {
                    drop(state);
                    let taken = self.lock_internally(&sem, "QSharedMemory::detach", interrupt)?;
                    state = self.state();
                    taken
                };
                testpoint::step("detach:locked");
                // The attachment is retired; its last reference (the binding reclaims it right
                // after this call, the Rust façade at once) decides, under the lock, whether it
                // was the last one.
                self.set_attachment(&mut state, None);
                drop(att);
                unlock_internally(taken);
                if !sem.is_open() {
                    state.semaphore = None;
                }
                self.refresh_target(&mut state);
            }
            _ => {
                if held_here {
                    drop(state);
                    let _ = self.unlock();
                    state = self.state();
                }
                self.set_attachment(&mut state, None);
                self.refresh_target(&mut state);
            }
        }
        // The handle is detached either way; a segment that lost memory while attached is
        // reported, so that the damage does not go unnoticed.
        match lost {
            Some(error) => Err(self.record(&mut state, error)),
            None => Ok(()),
        }
    }

    /// Makes the handle what `Handle::with_key(key)` (or `Handle::new()`) makes, after doing
    /// what the destructor does to the current one (Python's `__init__` on a live object).
    pub fn reset(&self, key: Option<NativeIpcKey>) {
        self.teardown();
        {
            let mut state = self.state();
            state.key = NativeIpcKey::default();
            state.last_error = None;
            state.previous = None;
            state.empty_posix_key_failed = false;
            state.unreported_death = false;
            self.fast.owner_died.store(false, Ordering::Relaxed);
        }
        if let Some(key) = key {
            let key_type = key.key_type();
            if self.set_native_key(key).is_err() {
                self.state().key = NativeIpcKey::new(String::new(), key_type);
            }
        }
    }

    /// The destructor's work: detach if attached, release the lock, and clean up Qt's
    /// semaphore if this handle made it and no segment needs it. What it retires stays for
    /// the next reclaim.
    pub(super) fn teardown(&self) {
        self.let_ending_holder_finish();
        let me = process::thread_self();
        let mut state = self.state();
        let holder = self.fast.held_by.load(Ordering::Acquire);
        if holder != 0 && holder != me && !self.holder_ended(&state) {
            if let Some(target) = self.held_arc(&state) {
                match &*target {
                    Target::Paired { attachment, .. }
                        if self.fast.holds.load(Ordering::Relaxed) == HOLDS_ALL =>
                    {
                        // The holding thread's robust list points into the control block, and
                        // only that thread can unlock: keep the segment mapped (and counted)
                        // for the rest of the process, so that its next lock does not write
                        // into unmapped memory and its death still releases the mutex for the
                        // other processes.
                        std::mem::forget(Arc::clone(attachment));
                    }
                    _ => {
                        // A semaphore has no owner: give it back for the thread that can no
                        // longer.
                        self.settle_ended_holder(&mut state);
                    }
                }
            }
            self.clear_held();
        } else if holder != 0 {
            drop(state);
            if holder == me {
                let _ = self.unlock();
            } else {
                let mut state = self.state();
                self.settle_ended_holder(&mut state);
            }
            state = self.state();
        }
        if state.attachment.is_some() {
            drop(state);
            let _ = self.detach_inner(&mut crate::wait::uninterrupted, LockWait::Never);
            state = self.state();
        }
        let semaphore = self.take_semaphore(&mut state);
        self.set_target(&mut state, None);
        drop(state);
        cleanup_semaphore(semaphore);
    }
}

/// Whether a create() asked for permissions other than Qt's default, which the lock semaphore
/// and key files then get as well.
fn shares_permissions(permissions: Permissions) -> bool {
    permissions.explicit || permissions.group.is_some()
}

/// A foreign segment of size 0 is most likely being created by Qt right now (it sizes the
/// object under its semaphore): wait for that semaphore, briefly.
fn settle_foreign_size(sem: &PosixSemaphore) {
    if sem.semaphore().wait_for(Duration::from_secs(1)).is_ok() {
        let _ = sem.semaphore().post();
    }
}

/// Qt's `cleanHandle()` of the embedded semaphore: the object that created a semaphore removes
/// it when it goes. Only when no segment exists any more for the key, unlike Qt (which removes
/// it regardless, breaking other users' locks).
fn cleanup_semaphore(semaphore: Option<(Semaphore, NativeIpcKey)>) {
    let Some((semaphore, key)) = semaphore else {
        return;
    };
    match semaphore {
        Semaphore::Posix(sem) if sem.owns_semaphore() => {
            match posix_segment::file_name(key.native_key()) {
                Ok(file_name) => posix_segment::remove_semaphore_if_unused(&file_name, sem.name()),
                // No segment can have this name ("/.", a name too long...): nothing needs it.
                Err(_) => posix_segment::remove_semaphore(sem.name()),
            }
        }
        Semaphore::SysV(sem) if sem.owns_semaphore() => {
            // Without this, a Qt process that is the last user of a segment we created would
            // leave our semaphore behind (Qt removes only semaphores it created). The key file
            // stays while the segment exists: for new System V keys it is also the segment's.
            if let Some(Backend::SysV { project_id }) = key.key_type().backend() {
                let segment_key = key.native_key().to_owned();
                sysv_segment::run_under_lock(
                    &sem,
                    Box::new(move |sem, died| {
                        if !sysv_segment::segment_exists(&segment_key, project_id) {
                            sem.remove();
                        } else if died == sysv_segment::HolderDied(false) {
                            sem.remove_set();
                        }
                        // A set whose holder died while a segment lives on keeps the death
                        // for the next lock() to report (a new set would not know of it,
                        // and the data may be half-written); the last detacher removes it.
                    }),
                );
            }
        }
        _ => {}
    }
}
