//! [`preview`]: the first bytes of a segment, copied.

use std::os::fd::AsFd;
use std::time::Duration;

use super::{InspectError, Object, SegmentInfo};
use crate::lock::sysv_sem::SysVSemaphore;
use crate::sys::mapping::Mapping;
use crate::sys::procfs::FileId;
use crate::sys::{posix, sysv, Errno};

/// How long a System V [`preview`] waits for the segment's lock.
const PREVIEW_LOCK_WAIT: Duration = Duration::from_millis(500);

/// Up to `max` bytes from the start of the segment's data, copied.
///
/// POSIX segments are read with `pread` (no mapping, no lock). A System V segment has to be
/// attached; that happens under its lock semaphore (waiting at most half a second), with the
/// library's own lock protocol, exactly as Qt attaches and detaches, so that no detacher can
/// mistake the inspector for a user.
///
/// # Errors
/// [`InspectError::InUse`] if a System V segment's lock stays taken; [`InspectError::NotFound`]
/// if the segment is gone; the OS's error if it cannot be read.
pub fn preview(segment: &SegmentInfo, max: usize) -> Result<Vec<u8>, InspectError> {
    let len = usize::try_from(segment.size).unwrap_or(usize::MAX).min(max);
    let gone = || InspectError::NotFound {
        query: segment.id(),
    };
    match &segment.object {
        Object::Posix {
            file_name, file, ..
        } => {
            let fd = posix::open_existing(file_name, false).map_err(|e| match e {
                Errno::ENOENT => gone(),
                _ => InspectError::os(format!("opening {file_name}"), e),
            })?;
            let st = posix::fstat(fd.as_fd()).map_err(|e| InspectError::os("fstat", e))?;
            if FileId::of(&st) != *file {
                return Err(gone());
            }
            let mut bytes = vec![0u8; len];
            let read = posix::read_at(fd.as_fd(), 0, &mut bytes)
                .map_err(|e| InspectError::os("pread", e))?;
            bytes.truncate(read);
            Ok(bytes)
        }
        Object::Sidecar { .. } => Ok(Vec::new()),
        Object::SysV {
            shmid,
            ipc_key,
            lock,
        } => {
            let lock = lock.as_ref().and_then(|lock| {
                let name = lock.key_file.clone().or_else(|| segment.key_file.clone());
                SysVSemaphore::existing(name.as_deref().unwrap_or(""), lock.ipc_key)
            });
            let held = match &lock {
                Some(sem) => match sem.lock_for_cleanup(PREVIEW_LOCK_WAIT) {
                    Ok(Some(recovered)) => Some(recovered),
                    Ok(None) => {
                        return Err(InspectError::in_use(segment, held_text(sem)));
                    }
                    // Removed meanwhile: read without it.
                    Err(_) => None,
                },
                None => None,
            };
            let result = (|| {
                let st = sysv::shm_stat(*shmid).map_err(|_| gone())?;
                if st.key != *ipc_key {
                    return Err(gone());
                }
                let len = len.min(st.size);
                if len == 0 {
                    return Ok(Vec::new());
                }
                let mapping = Mapping::attach_sysv(*shmid, st.size, false)
                    .map_err(|e| InspectError::os("shmat", e))?;
                let mut bytes = vec![0u8; len];
                mapping.copy_out(0, &mut bytes);
                Ok(bytes)
            })();
            if let (Some(sem), Some(recovered)) = (&lock, held) {
                sem.unlock_after_cleanup(recovered);
            }
            result
        }
    }
}

/// "its lock is held by pid N".
pub(super) fn held_text(sem: &SysVSemaphore) -> String {
    let holder = sem
        .id()
        .ok()
        .and_then(|id| sysv::sem_last_pid(id, 0).ok())
        .filter(|&p| p > 0)
        .map_or_else(String::new, |pid| format!(" by pid {pid}"));
    format!("its lock is held{holder}")
}
