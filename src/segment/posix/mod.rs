//! POSIX segments: `/dev/shm/<name>` holds exactly the segment's bytes; qsharedmem's control
//! block (lock, reference count, notify words, what the segment is) lives in the sidecar
//! `/dev/shm/<name>.qsm` ([`super::control`]).
//!
//! **create(size)** makes both files unnamed (`O_TMPFILE`), sizes and reserves them
//! (`posix_fallocate`: a full `/dev/shm` is an error now, never a `SIGBUS` later), initialises
//! the control block (its magic last), takes the reference count (`flock(LOCK_SH)` on a
//! description of its own), and only then names them: the sidecar first, then the data
//! (`linkat`). Whoever sees the data name sees a complete segment with its sidecar; a creator
//! that dies before publishing leaves nothing.
//!
//! **The reference count.** Every attachment holds `LOCK_SH` on its own open file description
//! of the sidecar, one that is never mapped (a mapping keeps its description alive after the
//! descriptor is closed, and in a forked child: a lock on it would outlive the attachment). The
//! detacher that gets `LOCK_EX|LOCK_NB` is the last one and removes the names: the data first,
//! then the sidecar, then Qt's semaphore if it is the one the segment was made with. A process
//! that dies drops its locks with its descriptors; if everyone died, the segment is an orphan
//! that the next `create()` reclaims (also a sidecar whose data is gone). Every removal of a
//! name happens under `LOCK_EX` on the sidecar, so two removers cannot race.
//!
//! **attach()** opens the data (`O_RDONLY` for `ReadOnly`) and its sidecar, takes the
//! reference count, and checks that neither was removed in between (then it looks again). A
//! data file without a sidecar was made by someone else (Qt, `multiprocessing`): it gets a
//! sidecar of its own ("adopted"), so that qsharedmem processes share the robust lock and the
//! notify words on it too; its last qsharedmem detacher removes only that sidecar, never the
//! data. A data file in qsharedmem 0.1's layout (a control page at its end) is refused.
//!
//! This file holds the attachment and what every step shares (the refcount vote, the unlink
//! that checks the name still refers to a file); [`create`], [`attach`], `remove` (names taken
//! away while attached) and `reclaim` (names left by the dead) are the steps.

mod attach;
mod create;
mod reclaim;
mod remove;

pub(crate) use attach::{attach, AttachSpec};
pub(crate) use create::{create, CreateSpec};
pub(crate) use reclaim::{is_old_layout, reclaim_old_layout_orphan, remove_if_unheld};
pub(crate) use remove::{remove_names, remove_semaphore, remove_semaphore_if_unused, Removal};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use super::control::{ControlMap, Describe};
use super::registry;
use super::{Failure, FileId, Permissions, Step};
use crate::sys::mapping::Mapping;
use crate::sys::{posix, process, procfs, Errno};
use crate::testpoint;
use crate::wait::{poll_in_slices, Deadline, Interrupt, Waited};

/// The sidecar's file name for the data file `file_name`.
pub(crate) fn sidecar_name(file_name: &str) -> String {
    format!("{file_name}{}", super::control::SIDECAR_SUFFIX)
}

/// The `/dev/shm` file name of a POSIX native key, checked the way `shm_open` would. Qt opens
/// the lock semaphore before the segment, so the caller checks the name for `sem_open` first.
pub(crate) fn file_name(native_key: &str) -> Result<String, Failure> {
    if native_key.is_empty() {
        return Err(Failure::EmptyKey);
    }
    posix::shm_file_name(native_key, false).map_err(|_| Failure::BadName)
}

/// Qt's semaphore file that a segment records, so that its last detacher removes it with the
/// segment (only if the name still refers to that file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SemaphoreFile {
    /// `sem.<name>`, in `/dev/shm`.
    pub(crate) file_name: String,
    pub(crate) file: FileId,
}

impl SemaphoreFile {
    /// The semaphore file that `sem_open(name)` opened, if it is there.
    pub(crate) fn of(sem_name: &str) -> Option<Self> {
        let file_name = posix::shm_file_name(sem_name, true).ok()?;
        let st = posix::stat_name(&file_name).ok()?;
        Some(Self {
            file: FileId::of(&st),
            file_name,
        })
    }
}

/// The descriptor whose open file description holds an attachment's `LOCK_SH` on the sidecar
/// (`None` once released at process exit).
#[derive(Debug)]
pub(crate) struct RefcountFd {
    pub(crate) fd: Option<OwnedFd>,
    /// `process::fork_generation()` when the lock was taken: a different value means the
    /// descriptor was inherited through `fork()` and its lock belongs to the parent.
    pub(crate) generation: u64,
    /// Between `registry::prepare_all_for_fork` and the fork: a description with a lock of its
    /// own for the child, which the parent closes right after the fork.
    pub(crate) for_child: Option<OwnedFd>,
}

impl RefcountFd {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            fd: Some(fd),
            generation: process::fork_generation(),
            for_child: None,
        }
    }
}

/// The sidecar of an attachment.
#[derive(Debug)]
struct Sidecar {
    file_name: String,
    file: FileId,
    map: Arc<ControlMap>,
    refcount: Mutex<RefcountFd>,
}

/// This process's attachment to a POSIX segment.
#[derive(Debug)]
pub(crate) struct PosixAttachment {
    file_name: String,
    data_file: FileId,
    data: Mapping,
    sidecar: Option<Sidecar>,
    /// The data file is qsharedmem's: its last detacher removes it.
    ours: bool,
    semaphore: Option<SemaphoreFile>,
}

impl PosixAttachment {
    pub(crate) fn is_ours(&self) -> bool {
        self.ours
    }

    pub(crate) fn data(&self) -> &Mapping {
        &self.data
    }

    pub(crate) fn file_name(&self) -> &str {
        &self.file_name
    }

    pub(crate) fn data_file(&self) -> FileId {
        self.data_file
    }

    #[inline]
    pub(crate) fn control(&self) -> Option<&Arc<ControlMap>> {
        self.sidecar.as_ref().map(|s| &s.map)
    }

    pub(crate) fn removal_claimed(&self) -> bool {
        self.control()
            .is_some_and(|map| map.control().removal_claimed())
    }

    #[inline]
    pub(crate) fn lost_pages(&self) -> bool {
        self.data.lost_pages() || self.control().is_some_and(|map| map.lost_pages())
    }

    pub(crate) fn damage(&self) -> String {
        let now = posix::stat_name(&self.file_name)
            .ok()
            .filter(|st| FileId::of(st) == self.data_file)
            .map(|st| st.size);
        let mapped = self.data.len() as u64;
        match now {
            Some(now) if now < mapped => format!(
                "the segment was truncated by another process ({mapped} bytes mapped, the file \
                 now has {now}); the lost part is no longer shared"
            ),
            _ if self.control().is_some_and(|map| map.lost_pages()) => format!(
                "its control block {} was truncated by another process; the lock in it is no \
                 longer shared",
                self.sidecar.as_ref().map_or("", |s| s.file_name.as_str())
            ),
            _ => format!(
                "part of the segment could not be provided ({} is full); that part is no longer \
                 shared",
                posix::SHM_DIR
            ),
        }
    }

    /// Whether a process other than this one and qsharedmem's attachers (which hold the
    /// sidecar's `flock`) maps or holds open Qt's semaphore of the segment: only such a process
    /// can hold the semaphore without holding the robust mutex. Reads `/proc` (after a holder
    /// died only).
    pub(crate) fn semaphore_has_other_users(&self) -> bool {
        let (Some(sem), Some(sidecar)) = (&self.semaphore, &self.sidecar) else {
            // Without a record of the semaphore or a sidecar: assume the worst.
            return true;
        };
        let (Ok(users), Ok(holders)) = (procfs::shm_users(), procfs::flock_holders()) else {
            return true;
        };
        let sem_id = procfs_id(sem.file);
        let side_id = procfs_id(sidecar.file);
        let attachers: std::collections::BTreeSet<i32> = holders
            .iter()
            .filter(|h| h.file == side_id)
            .map(|h| h.pid)
            .collect();
        let me = process::pid();
        users
            .of_file(&sem_id)
            .iter()
            .any(|pid| *pid != me && !attachers.contains(pid))
    }

    /// The refcount state; `None` in a child forked while another thread of the parent held
    /// its mutex (see `registry::lock_patiently`), or without a sidecar.
    pub(crate) fn refcount(&self) -> Option<MutexGuard<'_, RefcountFd>> {
        registry::lock_patiently(&self.sidecar.as_ref()?.refcount)
    }

    /// The last holder's cleanup: the data name (if it is ours), the sidecar's, and Qt's
    /// semaphore of the segment. The caller holds `LOCK_EX` on the sidecar.
    pub(crate) fn remove_names(&self) {
        if self.ours {
            testpoint::step("detach:exclusive");
            let _ = unlink_if_file(&self.file_name, self.data_file);
            testpoint::step("detach:unlinked");
            if let Some(sem) = &self.semaphore {
                let _ = unlink_if_file(&sem.file_name, sem.file);
            }
        }
        if let Some(sidecar) = &self.sidecar {
            let _ = unlink_if_file(&sidecar.file_name, sidecar.file);
        }
    }
}

impl Drop for PosixAttachment {
    fn drop(&mut self) {
        let Some(sidecar) = self.sidecar.as_mut() else {
            return;
        };
        let rc = sidecar
            .refcount
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let last = rc.generation == process::fork_generation()
            && rc
                .fd
                .as_ref()
                .is_some_and(|fd| posix::try_lock_exclusive(fd.as_fd()) == Ok(true));
        if last {
            // Nobody else holds the segment: we are the last one out.
            self.remove_names();
        }
    }
}

/// Removes `file_name` if it still names the file `file`. Returns whether it did.
fn unlink_if_file(file_name: &str, file: FileId) -> Result<bool, Errno> {
    match posix::stat_name(file_name) {
        Ok(st) if FileId::of(&st) == file => {}
        Ok(_) | Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    }
    match posix::unlink_name(file_name) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn procfs_id(file: FileId) -> procfs::FileId {
    procfs::FileId::of_dev(file.dev, file.ino)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A new unnamed file of `len` bytes with `permissions`.
fn new_file(len: usize, permissions: Permissions, reserve_for: u64) -> Result<OwnedFd, Failure> {
    let fd = posix::create_unnamed(len as u64, permissions.mode & 0o777).map_err(|e| match e {
        Errno::ENOSPC => super::out_of_space(reserve_for),
        other => Failure::Os(Step::Reserve, other),
    })?;
    if permissions.explicit {
        posix::set_mode(fd.as_fd(), permissions.mode)
            .map_err(|e| Failure::Os(Step::Permissions, e))?;
    }
    if let Some(group) = permissions.group {
        posix::set_group(fd.as_fd(), group).map_err(|e| Failure::Os(Step::Permissions, e))?;
    }
    Ok(fd)
}

/// Maps the new sidecar `fd` and writes its control block, describing the data file `data`
/// (`data_size` bytes, someone else's if `adopted`), with this process as its creator. The
/// sidecar is unnamed: nobody else uses the block yet.
fn new_control_block(
    fd: BorrowedFd<'_>,
    data: FileId,
    data_size: u64,
    adopted: bool,
    native_key: &str,
    legacy_key: Option<&str>,
) -> Result<ControlMap, Failure> {
    let map = ControlMap::map(fd).map_err(|e| Failure::Os(Step::Control, e))?;
    let describe = Describe {
        data,
        data_size,
        adopted,
        native_key,
        legacy_key,
        creator_pid: process::pid(),
        created_ms: now_ms(),
    };
    map.control()
        .initialise(&describe)
        .map_err(|e| Failure::Os(Step::MutexInit, e))?;
    Ok(map)
}

/// A new open file description of the file `fd` is open on, holding a shared `flock`: the
/// attachment's vote in the reference count. Never mapped (see the module documentation).
fn vote(fd: BorrowedFd<'_>) -> Result<OwnedFd, Failure> {
    let vote = posix::reopen(fd, false).map_err(|e| Failure::Os(Step::Count, e))?;
    posix::lock_shared(vote.as_fd()).map_err(|e| Failure::Os(Step::Count, e))?;
    Ok(vote)
}

/// Waits for `LOCK_SH` on `fd` in slices (someone holds `LOCK_EX` only while deciding whether
/// it is the last detacher, or while reclaiming: unless it is stopped, or hostile).
fn count_in(
    fd: BorrowedFd<'_>,
    deadline: Deadline,
    interrupt: Interrupt<'_>,
) -> Result<(), Failure> {
    match posix::try_lock_shared(fd) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => return Err(Failure::Os(Step::Count, e)),
    }
    let waited = poll_in_slices(deadline.left(), interrupt, || {
        posix::try_lock_shared(fd).map(|got| got.then_some(()))
    })
    .map_err(|e| Failure::Os(Step::Count, e))?;
    match waited {
        Waited::Got(()) => Ok(()),
        Waited::TimedOut => Err(Failure::Busy),
        Waited::Interrupted => Err(Failure::Interrupted),
    }
}

/// How long an attach waits for a segment held exclusively when its caller gave no timeout: an
/// exclusive `flock` is held only for a moment by a detacher or a reclaimer, so one held longer
/// belongs to a stopped or hostile process.
const EXCLUSIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a data file has the name `file_name` now.
pub(crate) fn exists(file_name: &str) -> bool {
    posix::stat_name(file_name).is_ok()
}
