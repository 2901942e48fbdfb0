//! Qt's `setNativeKey` and `initKey`: the lock semaphore of the handle's key, opened, kept
//! while its name is its own, opened again when it lost it, and cleaned up by its creator; and
//! the lock target that follows from it and the attachment.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::qt_errors::{segment_error, Family, Op};
use super::{Handle, Semaphore, State, Target};
use crate::error::{Error, ErrorKind, SemaphoreError, SemaphoreErrorKind};
use crate::key::{Backend, IpcObject, KeyType, NativeIpcKey};
use crate::lock::posix_sem::PosixSemaphore;
use crate::lock::sysv_sem::{SysVSemaphore, LOCK_SET_SIZE};
use crate::lock::SemMode;
use crate::segment::posix as posix_segment;
use crate::segment::{sysv as sysv_segment, Failure};
use crate::sys::{posix, sysv, Errno};

/// What `init_key` set up, for the rest of the operation.
pub(super) enum Prepared {
    Posix {
        file_name: String,
        semaphore: Arc<PosixSemaphore>,
    },
    SysV {
        project_id: u8,
        semaphore: Arc<SysVSemaphore>,
        /// This very call made the lock set: no segment anyone made the Qt way belongs to it.
        lock_is_new: bool,
        /// The key file was gone before this call made it again for the lock: `attach()` then
        /// fails as Qt's does (see the comment where it is decided). Always false for
        /// `create()`.
        key_file_was_gone: bool,
    },
}

/// What becomes of the POSIX semaphore a handle kept when `init_key` sets one up, decided with
/// at most one look at its name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// It is the key's semaphore, and has its name (or the handle holds it: then it stays,
    /// whatever happened to its name).
    Reuse,
    /// Its name refers to another file now, or none: forgotten without the creator's cleanup,
    /// which would unlink that other file.
    NameLost,
    /// Let go with the creator's cleanup (another key's, or no POSIX semaphore kept).
    Replace,
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
    pub(super) fn take_semaphore(&self, state: &mut State) -> Option<(Semaphore, NativeIpcKey)> {
        let semaphore = state.semaphore.take()?;
        let key = std::mem::take(&mut state.semaphore_key);
        self.refresh_target(state);
        Some((semaphore, key))
    }

    /// Opens Qt's semaphore of the key again, for a handle that is not attached and does not
    /// hold it, whose kept semaphore the caller found unnamed; returns the new lock target.
    /// The kept one is forgotten without the creator's cleanup: its name refers to another
    /// file now (or none), which that cleanup would unlink.
    pub(super) fn reopen_posix_semaphore(&self, state: &mut State) -> Result<Arc<Target>, Error> {
        let name = posix_semaphore_name(&state.key);
        let sem = PosixSemaphore::open_for_lock(&name).map_err(|e| Error::from_init_key(&e))?;
        state.semaphore = Some(Semaphore::Posix(Arc::new(sem)));
        state.semaphore_key = state.key.clone();
        self.refresh_target(state);
        state
            .target
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::LockError, "QSharedMemory::lock: unable to lock"))
    }

    /// Qt's `initKey()`: sets up the lock semaphore for the current key, clearing the error on
    /// success. `creating` is Qt's semaphore mode (Create for create(), Open for attach()).
    pub(super) fn init_key(&self, state: &mut State, creating: bool) -> Result<Prepared, Error> {
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
                // Qt keeps the lock set of a key once it has one: its last detach removes the
                // segment and the key file, not the set, and neither does a key file removed
                // by someone else. Its next attach() then finds no key file ("handle: doesn't
                // exist"), whereas ours, whose set went with the segment, would make the file
                // again for a new set (new System V keys share one file). The error stays
                // Qt's; lock() still works, as with Qt's kept set. Only attach() asks (create()
                // makes the file again either way), so create() spends no lstat on it.
                let key_file_was_gone = !creating
                    && (reusable || state.previous.is_some())
                    && state.key.legacy_key().is_none()
                    && sysv::key_path(&sem_key).is_ok_and(|path| !sysv::key_file_exists(&path));
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
                    key_file_was_gone,
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
                let kept = match &state.semaphore {
                    Some(Semaphore::Posix(s)) if s.name() == name && holding => Kept::Reuse,
                    Some(Semaphore::Posix(s)) if !s.still_named() => Kept::NameLost,
                    Some(Semaphore::Posix(s)) if s.name() == name => Kept::Reuse,
                    _ => Kept::Replace,
                };
                if kept != Kept::Reuse {
                    let old = self.take_semaphore(state);
                    if kept == Kept::Replace {
                        cleanup_semaphore(old);
                    }
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
}

/// Qt's `cleanHandle()` of the embedded semaphore: the object that created a semaphore removes
/// it when it goes. Only when no segment exists any more for the key, unlike Qt (which removes
/// it regardless, breaking other users' locks).
pub(super) fn cleanup_semaphore(semaphore: Option<(Semaphore, NativeIpcKey)>) {
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
