//! Creating a qsharedmem POSIX segment: both files made unnamed, initialised and counted, then
//! published (the sidecar first, then the data), reclaiming an orphan that has the name.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use super::reclaim::{reclaim_old_layout_orphan, reclaim_sidecar, retire_if_data_gone, Reclaim};
use super::{new_control_block, new_file, sidecar_name, unlink_if_file, vote};
use super::{PosixAttachment, RefcountFd, SemaphoreFile, Sidecar};
use crate::segment::control::{ControlMap, CONTROL_SIZE};
use crate::segment::{
    pages_for, AccessMode, Attachment, Failure, FileId, Inner, Permissions, Step,
};
use crate::sys::mapping::Mapping;
use crate::sys::namedsem::NamedSemaphore;
use crate::sys::{posix, process, Errno};
use crate::testpoint;

/// What a `create()` needs beyond the name.
pub(crate) struct CreateSpec<'a> {
    pub(crate) size: usize,
    pub(crate) mode: AccessMode,
    pub(crate) permissions: Permissions,
    pub(crate) native_key: &'a str,
    pub(crate) legacy_key: Option<&'a str>,
    /// Qt's semaphore for the key, recorded so that the last detacher removes it.
    pub(crate) semaphore: Option<SemaphoreFile>,
    /// The creator holds Qt's semaphore already (`lock()` before `create()`): the new lock is
    /// taken for it before the segment is published, so that it holds the whole lock.
    pub(crate) lock_now: bool,
    /// Qt's semaphore of the key, opened: an orphan's dead holder's share of it is settled
    /// when the orphan is reclaimed.
    pub(crate) partner: Option<&'a NamedSemaphore>,
}

/// Creates a qsharedmem POSIX segment and attaches to it.
pub(crate) fn create(file_name: &str, spec: &CreateSpec<'_>) -> Result<Attachment, Failure> {
    let size = spec.size;
    if isize::try_from(size).is_err() {
        return Err(Failure::TooLarge);
    }
    let needed = pages_for(size) + CONTROL_SIZE as u64;
    let data_fd = new_file(size, spec.permissions, needed)?;
    let data_st = posix::fstat(data_fd.as_fd()).map_err(|e| Failure::Os(Step::Stat, e))?;
    let data_file = FileId::of(&data_st);
    testpoint::step("create:reserved");
    let side_fd = new_file(CONTROL_SIZE, spec.permissions, needed)?;
    let side_file = posix::fstat(side_fd.as_fd())
        .map(|st| FileId::of(&st))
        .map_err(|e| Failure::Os(Step::Stat, e))?;
    let map = new_control_block(
        side_fd.as_fd(),
        data_file,
        size as u64,
        false,
        spec.native_key,
        spec.legacy_key,
    )?;
    if spec.lock_now {
        let lock = &map.control().lock;
        // Uncontended: nobody else knows the block. The holder already has Qt's semaphore.
        if lock.try_lock().ok().flatten().is_some() {
            lock.note_holder_with_partner(u32::try_from(process::pid()).unwrap_or(0));
        }
    }
    testpoint::step("create:initialised");
    let refcount = vote(side_fd.as_fd())?;
    // A ReadOnly creator (Qt allows it) gets a read-only mapping from a read-only descriptor.
    let data = if spec.mode.is_writable() {
        Mapping::map_file(data_fd.as_fd(), 0, size, true)
    } else {
        posix::reopen(data_fd.as_fd(), false)
            .and_then(|ro| Mapping::map_file(ro.as_fd(), 0, size, false))
    }
    .map_err(|e| Failure::Os(Step::Map, e))?;

    // Everything that can fail has been done but the naming.
    let side_name = sidecar_name(file_name);
    publish_sidecar(side_fd.as_fd(), &side_name, &map, spec.partner)?;
    let published = publish_data(data_fd.as_fd(), file_name);
    if let Err(e) = published {
        let _ = unlink_if_file(&side_name, side_file);
        return Err(e);
    }
    map.control().finish_publishing();
    testpoint::step("create:published");
    Ok(Attachment {
        size,
        writable: spec.mode.is_writable(),
        inner: Inner::Posix(PosixAttachment {
            file_name: file_name.to_owned(),
            data_file,
            data,
            sidecar: Some(Sidecar {
                file_name: side_name,
                file: side_file,
                map: Arc::new(map),
                refcount: Mutex::new(RefcountFd::new(refcount)),
            }),
            ours: true,
            semaphore: spec.semaphore.clone(),
        }),
    })
}

/// Names a new sidecar, reclaiming an orphan that has the name: the new lock (`map`, not yet
/// named) takes over what the orphan's dead holder had of Qt's semaphore `partner`.
fn publish_sidecar(
    fd: BorrowedFd<'_>,
    side_name: &str,
    map: &ControlMap,
    partner: Option<&NamedSemaphore>,
) -> Result<(), Failure> {
    for _ in 0..8 {
        match posix::publish(fd, side_name) {
            Ok(()) => return Ok(()),
            Err(Errno::EEXIST) => match reclaim_sidecar(side_name)? {
                Reclaim::Reclaimed(orphan) => {
                    if let (Some(orphan), Some(sem)) = (orphan, partner) {
                        let doubt = u32::try_from(orphan.doubtful_holder).unwrap_or(0);
                        map.control()
                            .lock
                            .inherit_dead_holder(orphan.lock_state, doubt, sem);
                    }
                }
                Reclaim::InUse if retire_if_data_gone(side_name)? => {}
                Reclaim::InUse => return Err(Failure::Os(Step::Open, Errno::EEXIST)),
                Reclaim::NotOurs => {
                    return Err(Failure::SidecarTaken {
                        file_name: side_name.to_owned(),
                    })
                }
            },
            Err(e) => return Err(Failure::Os(Step::Open, e)),
        }
    }
    Err(Failure::Os(Step::Open, Errno::EEXIST))
}

/// Names new data, reclaiming an orphan of qsharedmem 0.1 that has the name.
fn publish_data(fd: BorrowedFd<'_>, file_name: &str) -> Result<(), Failure> {
    for _ in 0..8 {
        match posix::publish(fd, file_name) {
            Ok(()) => return Ok(()),
            Err(Errno::EEXIST) => {
                // A data file without a sidecar of ours: someone else's (Qt's), or an orphan of
                // qsharedmem 0.1.
                if !reclaim_old_layout_orphan(file_name) {
                    return Err(Failure::Os(Step::Open, Errno::EEXIST));
                }
            }
            Err(e) => return Err(Failure::Os(Step::Open, e)),
        }
    }
    Err(Failure::Os(Step::Open, Errno::EEXIST))
}
