//! Names that are taken by what nobody uses any more: orphaned sidecars (every attacher died),
//! sidecars whose data was removed from outside, and qsharedmem 0.1's segments.

use std::os::fd::{AsFd, BorrowedFd};

use super::{sidecar_name, unlink_if_file};
use crate::segment::control::{ControlRecord, SIDECAR_SUFFIX};
use crate::segment::{Failure, FileId, Step};
use crate::sys::mapping::page_size;
use crate::sys::{posix, Errno};

pub(super) enum Reclaim {
    /// Removed (or gone already); the orphan's record if there was one, for its lock.
    Reclaimed(Option<ControlRecord>),
    InUse,
    NotOurs,
}

/// The sidecar name is taken. If it is a control block that nobody holds (every process that
/// used the segment died), remove it and its data (unless the data is someone else's).
pub(super) fn reclaim_sidecar(side_name: &str) -> Result<Reclaim, Failure> {
    let fd = match posix::open_existing(side_name, false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Reclaim::Reclaimed(None)),
        Err(e) => return Err(Failure::Os(Step::Open, e)),
    };
    if posix::try_lock_exclusive(fd.as_fd()) != Ok(true) {
        return Ok(Reclaim::InUse);
    }
    let Ok(record) = ControlRecord::read(fd.as_fd()) else {
        return Ok(Reclaim::NotOurs);
    };
    if record.sysv_shmid.is_some() {
        // A System V segment's notify block that happens to have this name: not a sidecar.
        return Ok(Reclaim::NotOurs);
    }
    let data_name = &side_name[..side_name.len() - SIDECAR_SUFFIX.len()];
    if !record.adopted {
        let _ = unlink_if_file(data_name, record.data);
    }
    let side = posix::fstat(fd.as_fd()).map_err(|e| Failure::Os(Step::Stat, e))?;
    let _ = unlink_if_file(side_name, FileId::of(&side));
    Ok(Reclaim::Reclaimed(Some(record)))
}

/// A control block in use whose data file no longer has the name: someone removed the data
/// from outside (`rm`, `shm_unlink`) while processes stayed attached, or replaced it. The
/// block's name is taken away as `remove()` would (its users keep it, and share their lock as
/// before), so that the name is free for a new segment. Not while its creator is still naming
/// the data. Returns whether the name is free now.
pub(super) fn retire_if_data_gone(side_name: &str) -> Result<bool, Failure> {
    let fd = match posix::open_existing(side_name, false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(true),
        Err(e) => return Err(Failure::Os(Step::Open, e)),
    };
    retire_open_if_data_gone(fd.as_fd(), side_name)
}

pub(super) fn retire_open_if_data_gone(
    fd: BorrowedFd<'_>,
    side_name: &str,
) -> Result<bool, Failure> {
    let Ok(record) = ControlRecord::read(fd) else {
        return Ok(false);
    };
    if record.publishing || record.sysv_shmid.is_some() {
        return Ok(false);
    }
    let data_name = &side_name[..side_name.len() - SIDECAR_SUFFIX.len()];
    if posix::stat_name(data_name).is_ok_and(|st| FileId::of(&st) == record.data) {
        return Ok(false);
    }
    let side = posix::fstat(fd).map_err(|e| Failure::Os(Step::Stat, e))?;
    match unlink_if_file(side_name, FileId::of(&side)) {
        // Gone either way (another process retired it first).
        Ok(_) => Ok(true),
        Err(e) => Err(Failure::Os(Step::Unlink, e)),
    }
}

/// Removes the segment `file_name` if nobody holds it (`LOCK_EX|LOCK_NB` on its control block),
/// as its last detacher would: the data (unless it is someone else's) and the control block.
/// `Ok(None)` if someone holds it; otherwise the files removed.
pub(crate) fn remove_if_unheld(file_name: &str) -> Result<Option<Vec<String>>, Failure> {
    let side_name = sidecar_name(file_name);
    let fd = match posix::open_existing(&side_name, false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Some(Vec::new())),
        Err(e) => return Err(Failure::Os(Step::Open, e)),
    };
    if posix::try_lock_exclusive(fd.as_fd()) != Ok(true) {
        return Ok(None);
    }
    let record = ControlRecord::read(fd.as_fd()).map_err(|_| Failure::SidecarTaken {
        file_name: side_name.clone(),
    })?;
    let mut removed = Vec::new();
    let path = |name: &str| format!("{}/{name}", posix::SHM_DIR);
    if !record.adopted && unlink_if_file(file_name, record.data) == Ok(true) {
        removed.push(path(file_name));
    }
    let side = posix::fstat(fd.as_fd()).map_err(|e| Failure::Os(Step::Stat, e))?;
    if unlink_if_file(&side_name, FileId::of(&side)) == Ok(true) {
        removed.push(path(&side_name));
    }
    Ok(Some(removed))
}

/// qsharedmem 0.1 kept its control page at the end of the data file.
const OLD_MAGIC: [u8; 8] = *b"QSHMEM\0\x01";

/// Whether the file `fd` (`size` bytes) is a segment of qsharedmem 0.1's layout.
pub(crate) fn is_old_layout(fd: BorrowedFd<'_>, size: u64) -> bool {
    let page = page_size() as u64;
    if size < page || size % page != 0 {
        return false;
    }
    let mut magic = [0u8; 8];
    posix::read_at(fd, size - page, &mut magic) == Ok(8) && magic == OLD_MAGIC
}

/// Removes `file_name` if it is an orphan of qsharedmem 0.1 (its attachments held `flock`s on
/// the data file itself). Returns whether the name is free now.
pub(crate) fn reclaim_old_layout_orphan(file_name: &str) -> bool {
    let Ok(fd) = posix::open_existing(file_name, false) else {
        return posix::stat_name(file_name) == Err(Errno::ENOENT);
    };
    let Ok(st) = posix::fstat(fd.as_fd()) else {
        return false;
    };
    if !is_old_layout(fd.as_fd(), st.size) || posix::try_lock_exclusive(fd.as_fd()) != Ok(true) {
        return false;
    }
    unlink_if_file(file_name, FileId::of(&st)).is_ok()
}
