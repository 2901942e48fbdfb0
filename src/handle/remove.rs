//! `remove()`: `multiprocessing.shared_memory`'s `unlink()` (not in Qt).

use std::sync::{Mutex, PoisonError};

use super::locking::unlock_internally;
use super::qt_errors::{segment_error, Family, Op};
use super::{Handle, Previous, Semaphore};
use crate::error::Error;
use crate::key::Backend;
use crate::segment::posix::{self as posix_segment, Removal};
use crate::segment::{sysv as sysv_segment, AccessMode, SegmentIdentity};
use crate::sys::Errno;
use crate::wait::Interrupt;

/// The segments that a `remove()` in this process took the name of (the most recent ones), so
/// that a second `remove()` through another, detached handle is `NotFound` as a second
/// `unlink()` is in multiprocessing.
mod removed_here {
    use super::{Mutex, PoisonError, SegmentIdentity};

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

fn not_found() -> Error {
    Error::from_errno("QSharedMemory::remove", Errno::ENOENT)
}

impl Handle {
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
    /// # Errors
    /// `NotFound` if the key has no segment (or it was removed already), `PermissionDenied` if
    /// the segment belongs to another user, `KeyError` for a bad key, `LockError` if the System
    /// V lock could not be taken.
    pub fn remove_with(&self, interrupt: Interrupt<'_>) -> Result<(), Error> {
        let state = self.state();
        if let Some(att) = state.attachment.clone() {
            let sysv_lock = match &state.semaphore {
                Some(Semaphore::SysV(sem)) => Some(sem.clone()),
                _ => None,
            };
            drop(state);
            let removed = match (att.identity(), att.sysv(), sysv_lock) {
                (
                    SegmentIdentity::Posix {
                        file_name, file, ..
                    },
                    _,
                    _,
                ) => posix_segment::remove_names(&file_name, Some(file), interrupt)
                    .map(|found| found == Removal::Removed)
                    .map_err(|f| segment_error(Op::Remove, Family::Posix, f)),
                (SegmentIdentity::SysV { .. }, Some(sysv), Some(sem)) => {
                    let taken = self.lock_internally(&sem, "QSharedMemory::remove", interrupt)?;
                    let result = sysv
                        .remove()
                        .map_err(|f| segment_error(Op::Remove, Family::SysV, f));
                    unlock_internally(taken);
                    result
                }
                _ => Ok(false),
            };
            let mut state = self.state();
            return match removed {
                Ok(true) => {
                    removed_here::note(att.identity());
                    state.last_error = None;
                    Ok(())
                }
                Ok(false) => Err(self.record(&mut state, not_found())),
                Err(e) => Err(self.record(&mut state, e)),
            };
        }
        let previous = state.previous.clone();
        let key = state.key.clone();
        drop(state);
        let found = match &previous {
            Some(Previous {
                identity:
                    SegmentIdentity::Posix {
                        file_name, file, ..
                    },
                ..
            }) => posix_segment::remove_names(file_name, Some(*file), interrupt)
                .map_err(|f| segment_error(Op::Remove, Family::Posix, f)),
            Some(Previous {
                identity: SegmentIdentity::SysV { shmid },
                ..
            }) => self.remove_sysv_by_key(Some(*shmid), interrupt),
            None => match key.key_type().backend() {
                Some(crate::key::Backend::Posix) => posix_segment::file_name(key.native_key())
                    .map_err(|f| segment_error(Op::Remove, Family::Posix, f))
                    .and_then(|file_name| {
                        posix_segment::remove_names(&file_name, None, interrupt)
                            .map_err(|f| segment_error(Op::Remove, Family::Posix, f))
                    }),
                _ => self.remove_sysv_by_key(None, interrupt),
            },
        };
        let mut state = self.state();
        let removed = match &found {
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
            Err(e) => return Err(self.record(&mut state, e.clone())),
        };
        if !removed {
            return Err(self.record(&mut state, not_found()));
        }
        if let Some(previous) = &mut state.previous {
            previous.name_removed = true;
            if found == Ok(Removal::Removed) {
                removed_here::note(previous.identity.clone());
            }
        }
        state.last_error = None;
        Ok(())
    }

    /// Removes the System V segment of the current key (only if it is the segment `expected`,
    /// when given): attaches (read-only), removes, and detaches again, so that the
    /// last-detacher rules clean up the key file and the lock.
    fn remove_sysv_by_key(
        &self,
        expected: Option<i32>,
        interrupt: Interrupt<'_>,
    ) -> Result<Removal, Error> {
        let previous = self.state().previous.take();
        let found = match self.attach_with(AccessMode::ReadOnly, None, &mut *interrupt) {
            Ok(()) => {
                let (att, sem) = {
                    let state = self.state();
                    let sem = match &state.semaphore {
                        Some(Semaphore::SysV(sem)) => Some(sem.clone()),
                        _ => None,
                    };
                    (state.attachment.clone(), sem)
                };
                let found = match (att, sem) {
                    // The key belongs to another segment now: leave that one alone.
                    (Some(att), _)
                        if expected.is_some_and(|id| att.sysv().map(|s| s.shmid()) != Some(id)) =>
                    {
                        Ok(Removal::Missing)
                    }
                    (Some(att), Some(sem)) => self
                        .lock_internally(&sem, "QSharedMemory::remove", &mut *interrupt)
                        .and_then(|taken| {
                            let result = att
                                .sysv()
                                .map_or(Ok(false), |s| s.remove())
                                .map_err(|f| segment_error(Op::Remove, Family::SysV, f));
                            unlock_internally(taken);
                            result
                        })
                        .map(|done| {
                            if done {
                                Removal::Removed
                            } else {
                                Removal::AlreadyRemoved
                            }
                        }),
                    _ => Ok(Removal::Missing),
                };
                let _ = self.detach_with(interrupt);
                found
            }
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {
                self.remove_unused_lock_set(interrupt);
                Ok(Removal::Missing)
            }
            Err(e) => Err(e),
        };
        self.state().previous = previous;
        found
    }

    /// After `remove()` found no segment: the lock set that its attach made stays with the
    /// handle for `attach()` (as Qt's does), but a `remove()` that found nothing leaves nothing
    /// behind. Removed under the lock, so that nobody is creating a segment with it meanwhile.
    fn remove_unused_lock_set(&self, interrupt: Interrupt<'_>) {
        let (sem, key) = {
            let state = self.state();
            match &state.semaphore {
                Some(Semaphore::SysV(sem)) if sem.owns_semaphore() => {
                    (sem.clone(), state.key.clone())
                }
                _ => return,
            }
        };
        let Some(Backend::SysV { project_id }) = key.key_type().backend() else {
            return;
        };
        let Ok(taken) = self.lock_internally(&sem, "QSharedMemory::remove", interrupt) else {
            return;
        };
        if !sysv_segment::segment_exists(key.native_key(), project_id) {
            sem.remove();
        }
        unlock_internally(taken);
        if !sem.is_open() {
            let mut state = self.state();
            state.semaphore = None;
            self.refresh_target(&mut state);
        }
    }
}
