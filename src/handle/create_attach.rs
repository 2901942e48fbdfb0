//! Qt's `create` and `attach`: the segment made or found under the key's lock, and installed
//! as the handle's attachment.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::init_key::Prepared;
use super::locking::unlock_internally;
use super::qt_errors::{segment_error, Family, Op};
use super::{Handle, State, Target, HOLDS_ALL, HOLDS_SEMAPHORE};
use crate::error::{Error, ErrorKind};
use crate::lock::posix_sem::PosixSemaphore;
use crate::segment::posix::{self as posix_segment, SemaphoreFile};
use crate::segment::{
    registry, sysv as sysv_segment, AccessMode, Attachment, Failure, Permissions, Step,
};
use crate::sys::{process, Errno};
use crate::testpoint;
use crate::wait::Interrupt;

impl Handle {
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
                ..
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
                key_file_was_gone: true,
                ..
            } => Err(self.record(
                &mut state,
                segment_error(
                    Op::Attach,
                    Family::SysV,
                    Failure::Os(Step::Ftok, Errno::ENOENT),
                ),
            )),
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
                // A lock set made for a segment that does not exist stays with the handle, as
                // Qt's does: `lock()` after a failed `attach()` then works (the idiom "attach
                // fails → lock() → create()"), and the handle's teardown removes the set if no
                // segment came to need it.
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
