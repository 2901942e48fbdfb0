//! Attaching to a POSIX segment: open the data and its sidecar, count in, check that neither
//! was removed in between; a data file without a sidecar (someone else's) gets one, "adopted".

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::reclaim::{is_old_layout, retire_open_if_data_gone};
use super::EXCLUSIVE_WAIT;
use super::{count_in, new_control_block, new_file, sidecar_name, unlink_if_file, vote};
use super::{PosixAttachment, RefcountFd, SemaphoreFile, Sidecar};
use crate::segment::control::{ControlMap, ControlRecord, NotAControlBlock, CONTROL_SIZE};
use crate::segment::{AccessMode, Attachment, Failure, FileId, Inner, Permissions, Step};
use crate::sys::mapping::Mapping;
use crate::sys::{posix, Errno};
use crate::testpoint;
use crate::wait::{Deadline, Interrupt};

/// What `attach` needs beyond the name.
pub(crate) struct AttachSpec<'a> {
    pub(crate) mode: AccessMode,
    /// Runs if the data file is empty (a foreign creator may be between creating and sizing
    /// it); the size is read again afterwards.
    pub(crate) settle: &'a mut dyn FnMut(),
    pub(crate) semaphore: Option<SemaphoreFile>,
    pub(crate) native_key: &'a str,
    pub(crate) legacy_key: Option<&'a str>,
    /// Bounds the wait for a segment held exclusively (`None`: [`EXCLUSIVE_WAIT`]).
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) interrupt: Interrupt<'a>,
}

/// A data file and its sidecar, both open, the attachment counted.
struct Opened {
    data_fd: OwnedFd,
    data_st: posix::FileStat,
    sidecar: Option<Sidecar>,
}

/// Attaches to the POSIX segment `file_name`.
pub(crate) fn attach(file_name: &str, spec: &mut AttachSpec<'_>) -> Result<Attachment, Failure> {
    let writable = spec.mode.is_writable();
    let deadline = Deadline::after(Some(spec.timeout.unwrap_or(EXCLUSIVE_WAIT)));
    let opened = open_counted(file_name, spec, deadline)?;
    let len = usize::try_from(opened.data_st.size).map_err(|_| Failure::TooLarge)?;
    let data = Mapping::map_file(opened.data_fd.as_fd(), 0, len, writable)
        .map_err(|e| Failure::Os(Step::Map, e))?;
    testpoint::step("attach:mapped");
    let ours = opened
        .sidecar
        .as_ref()
        .is_some_and(|s| !s.map.control().is_adopted());
    Ok(Attachment {
        size: len,
        writable,
        inner: Inner::Posix(PosixAttachment {
            file_name: file_name.to_owned(),
            data_file: FileId::of(&opened.data_st),
            data,
            sidecar: opened.sidecar,
            ours,
            semaphore: spec.semaphore.clone(),
        }),
    })
}

fn open_counted(
    file_name: &str,
    spec: &mut AttachSpec<'_>,
    deadline: Deadline,
) -> Result<Opened, Failure> {
    let side_name = sidecar_name(file_name);
    for _ in 0..16 {
        let data_fd = posix::open_existing(file_name, spec.mode.is_writable())
            .map_err(|e| Failure::Os(Step::Open, e))?;
        testpoint::step("attach:opened");
        let stat = |fd: BorrowedFd<'_>| posix::fstat(fd).map_err(|e| Failure::Os(Step::Stat, e));
        let mut data_st = stat(data_fd.as_fd())?;
        if data_st.size == 0 {
            (spec.settle)();
            data_st = stat(data_fd.as_fd())?;
        }
        let data_file = FileId::of(&data_st);
        let sidecar = match posix::open_existing(&side_name, true) {
            Ok(side_fd) if stat(side_fd.as_fd())?.size < CONTROL_SIZE as u64 => {
                // Too short to be a control block (mapping it would fault): someone else's
                // file. This data goes without one.
                None
            }
            Ok(side_fd) => {
                let map =
                    ControlMap::map(side_fd.as_fd()).map_err(|e| Failure::Os(Step::Control, e))?;
                if map.control().describes(data_file) {
                    let vote = posix::reopen(side_fd.as_fd(), false)
                        .map_err(|e| Failure::Os(Step::Count, e))?;
                    count_in(vote.as_fd(), deadline, &mut *spec.interrupt)?;
                    testpoint::step("attach:counted");
                    let side_st = stat(side_fd.as_fd())?;
                    if side_st.nlink == 0 || stat(data_fd.as_fd())?.nlink == 0 {
                        // The last detacher removed it between our open and our count.
                        continue;
                    }
                    Some(Sidecar {
                        file_name: side_name.clone(),
                        file: FileId::of(&side_st),
                        map: Arc::new(map),
                        refcount: Mutex::new(RefcountFd::new(vote)),
                    })
                } else {
                    match stale_sidecar(side_fd.as_fd(), &side_name)? {
                        // Removed: look again (and adopt the data).
                        true => continue,
                        // In use by processes attached to an older file of that name, or not a
                        // control block at all: this data goes without one.
                        false => None,
                    }
                }
            }
            Err(Errno::ENOENT) => {
                if stat(data_fd.as_fd())?.nlink == 0 {
                    // Removed since we opened it (the sidecar went first): look again.
                    continue;
                }
                if is_old_layout(data_fd.as_fd(), data_st.size) {
                    return Err(Failure::OldLayout {
                        file_name: file_name.to_owned(),
                    });
                }
                match adopt(&side_name, data_file, &data_st, spec) {
                    Ok(Some(sidecar)) if stat(data_fd.as_fd())?.nlink == 0 => {
                        // The data was removed while we adopted it: our sidecar would describe
                        // a file nobody can open. Take it back and look again.
                        let _ = unlink_if_file(&side_name, sidecar.file);
                        continue;
                    }
                    Ok(Some(sidecar)) => Some(sidecar),
                    // Someone else published one meanwhile: use theirs.
                    Ok(None) => continue,
                    Err(_) => None,
                }
            }
            // No write access to the sidecar: the lock and the count are not ours to take.
            Err(_) => None,
        };
        return Ok(Opened {
            data_fd,
            data_st,
            sidecar,
        });
    }
    Err(Failure::Os(Step::Open, Errno::ENOENT))
}

/// A sidecar that does not describe the data file now named: if nobody holds it, it is left
/// over (from an older file of that name) and is removed (`Ok(true)`).
fn stale_sidecar(fd: BorrowedFd<'_>, side_name: &str) -> Result<bool, Failure> {
    match ControlRecord::read(fd) {
        Err(NotAControlBlock::Version(version)) => return Err(Failure::UnknownVersion { version }),
        Err(_) => return Ok(false),
        // A System V segment's notify block (`qsm-sysv-<shmid>.qsm`): not ours to remove.
        Ok(record) if record.sysv_shmid.is_some() => return Ok(false),
        Ok(_) => {}
    }
    let probe = posix::reopen(fd, false).map_err(|e| Failure::Os(Step::Count, e))?;
    if posix::try_lock_exclusive(probe.as_fd()) != Ok(true) {
        // In use by the attachments of a data file that is gone or was replaced: retire it,
        // so that this data gets a block of its own (and its lock is shared).
        return retire_open_if_data_gone(fd, side_name);
    }
    let st = posix::fstat(fd).map_err(|e| Failure::Os(Step::Stat, e))?;
    Ok(unlink_if_file(side_name, FileId::of(&st)).is_ok())
}

/// Makes and publishes a sidecar for someone else's data file. `Ok(None)` if another process
/// published one first.
fn adopt(
    side_name: &str,
    data: FileId,
    data_st: &posix::FileStat,
    spec: &AttachSpec<'_>,
) -> Result<Option<Sidecar>, Failure> {
    let side_fd = new_file(CONTROL_SIZE, Permissions::default(), CONTROL_SIZE as u64)?;
    // The data's permissions, so that everyone who may use it may lock it.
    let _ = posix::set_mode(side_fd.as_fd(), data_st.mode & 0o666);
    let map = new_control_block(
        side_fd.as_fd(),
        data,
        data_st.size,
        true,
        spec.native_key,
        spec.legacy_key,
    )?;
    let refcount = vote(side_fd.as_fd())?;
    match posix::publish(side_fd.as_fd(), side_name) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Ok(None),
        Err(e) => return Err(Failure::Os(Step::Control, e)),
    }
    let side_st = posix::fstat(side_fd.as_fd()).map_err(|e| Failure::Os(Step::Stat, e))?;
    Ok(Some(Sidecar {
        file_name: side_name.to_owned(),
        file: FileId::of(&side_st),
        map: Arc::new(map),
        refcount: Mutex::new(RefcountFd::new(refcount)),
    }))
}
