//! Removing names while processes may stay attached (`remove()`, multiprocessing's
//! `unlink()`), and Qt's semaphore of a key once no segment of ours uses it.

use std::os::fd::AsFd;

use super::{count_in, sidecar_name, unlink_if_file, EXCLUSIVE_WAIT};
use crate::segment::control::{ControlMap, ControlRecord, CONTROL_SIZE};
use crate::segment::{Failure, FileId, Step};
use crate::sys::{namedsem, posix, Errno};
use crate::wait::{Deadline, Interrupt};

/// What [`remove_names`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The name referred to the segment and is gone now.
    Removed,
    /// No such name, or it refers to another file than the one asked for.
    Missing,
    /// A qsharedmem segment whose name someone else removed (or is removing) already.
    AlreadyRemoved,
}

/// Removes the names of the segment `file_name` now (the data and its sidecar), if the data is
/// the file `expected` (any file when `None`). Processes attached keep the segment; it is
/// destroyed by its last detach as always (a foreign one when its last mapping goes).
///
/// For a segment with a control block the removal is claimed there first, so that of two
/// concurrent removers exactly one unlinks (the other sees [`Removal::AlreadyRemoved`]); while
/// this runs it holds a shared `flock` like an attachment, so no last detacher or reclaimer
/// can unlink the names under it either.
pub(crate) fn remove_names(
    file_name: &str,
    expected: Option<FileId>,
    interrupt: Interrupt<'_>,
) -> Result<Removal, Failure> {
    let data_fd = match posix::open_existing(file_name, false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Removal::Missing),
        Err(e) => return Err(Failure::Os(Step::Open, e)),
    };
    let data_st = posix::fstat(data_fd.as_fd()).map_err(|e| Failure::Os(Step::Stat, e))?;
    let data_file = FileId::of(&data_st);
    if expected.is_some_and(|id| id != data_file) {
        // The name belongs to another segment now; never touch that one.
        return Ok(Removal::Missing);
    }
    let side_name = sidecar_name(file_name);
    let mut claimed = None;
    // (A file too short for a control block is someone else's: not mapped, it would fault.)
    let side_fd = posix::open_existing(&side_name, true)
        .ok()
        .filter(|fd| posix::fstat(fd.as_fd()).is_ok_and(|st| st.size >= CONTROL_SIZE as u64));
    if let Some(side_fd) = side_fd {
        if let Ok(map) = ControlMap::map(side_fd.as_fd()) {
            if map.control().describes(data_file) {
                let vote = posix::reopen(side_fd.as_fd(), false)
                    .map_err(|e| Failure::Os(Step::Count, e))?;
                count_in(
                    vote.as_fd(),
                    Deadline::after(Some(EXCLUSIVE_WAIT)),
                    interrupt,
                )?;
                if !map.control().claim_removal() {
                    return Ok(Removal::AlreadyRemoved);
                }
                let side_st =
                    posix::fstat(side_fd.as_fd()).map_err(|e| Failure::Os(Step::Stat, e))?;
                claimed = Some((map, vote, FileId::of(&side_st)));
            }
        }
    }
    match unlink_if_file(file_name, data_file) {
        Ok(true) => {
            if let Some((_, _, side_file)) = &claimed {
                let _ = unlink_if_file(&side_name, *side_file);
            }
            Ok(Removal::Removed)
        }
        Ok(false) => Ok(Removal::Missing),
        Err(e) => {
            if let Some((map, _, _)) = &claimed {
                map.control().release_removal_claim();
            }
            Err(Failure::Os(Step::Unlink, e))
        }
    }
}

/// Removes Qt's semaphore `sem_name` if no segment of ours uses it: the name `file_name` has no
/// data file, or no control block of ours describes that data, or nobody is attached to it
/// (someone else's segment, e.g. one that Qt leaked, a damaged object, an orphan). For a
/// handle that made the semaphore and goes away: that is Qt's rule (its creator removes it),
/// kept while one of our segments is in use so that its users and Qt's keep meeting on one
/// semaphore.
pub(crate) fn remove_semaphore_if_unused(file_name: &str, sem_name: &str) {
    if !segment_in_use(file_name) {
        let _ = namedsem::unlink(sem_name);
    }
}

/// Whether `file_name` names a segment with a control block of ours that someone holds.
fn segment_in_use(file_name: &str) -> bool {
    let Ok(data) = posix::stat_name(file_name) else {
        return false;
    };
    let Ok(fd) = posix::open_existing(&sidecar_name(file_name), false) else {
        return false;
    };
    match ControlRecord::read(fd.as_fd()) {
        Ok(record) if record.data == FileId::of(&data) => {
            posix::try_lock_exclusive(fd.as_fd()) != Ok(true)
        }
        _ => false,
    }
}

/// Removes Qt's semaphore `sem_name`, which no segment can use.
pub(crate) fn remove_semaphore(sem_name: &str) {
    let _ = namedsem::unlink(sem_name);
}
