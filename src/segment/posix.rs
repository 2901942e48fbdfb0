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

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use super::control::{ControlMap, ControlRecord, Describe, NotAControlBlock, CONTROL_SIZE};
use super::registry;
use super::{AccessMode, Attachment, Failure, FileId, Inner, Permissions, Step};
use crate::sys::mapping::{page_size, Mapping};
use crate::sys::namedsem::NamedSemaphore;
use crate::sys::{namedsem, posix, process, procfs, Errno};
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

/// A new open file description of the file `fd` is open on, holding a shared `flock`: the
/// attachment's vote in the reference count. Never mapped (see the module documentation).
fn vote(fd: BorrowedFd<'_>) -> Result<OwnedFd, Failure> {
    let vote = posix::reopen(fd, false).map_err(|e| Failure::Os(Step::Count, e))?;
    posix::lock_shared(vote.as_fd()).map_err(|e| Failure::Os(Step::Count, e))?;
    Ok(vote)
}

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
    let needed = super::pages_for(size) + CONTROL_SIZE as u64;
    let data_fd = new_file(size, spec.permissions, needed)?;
    let data_st = posix::fstat(data_fd.as_fd()).map_err(|e| Failure::Os(Step::Stat, e))?;
    let data_file = FileId::of(&data_st);
    testpoint::step("create:reserved");
    let side_fd = new_file(CONTROL_SIZE, spec.permissions, needed)?;
    let side_file = posix::fstat(side_fd.as_fd())
        .map(|st| FileId::of(&st))
        .map_err(|e| Failure::Os(Step::Stat, e))?;
    let map = ControlMap::map(side_fd.as_fd()).map_err(|e| Failure::Os(Step::Control, e))?;
    let describe = Describe {
        data: data_file,
        data_size: size as u64,
        adopted: false,
        native_key: spec.native_key,
        legacy_key: spec.legacy_key,
        creator_pid: process::pid(),
        created_ms: now_ms(),
    };
    // The sidecar is unnamed: nobody else uses the block yet.
    map.control()
        .initialise(&describe)
        .map_err(|e| Failure::Os(Step::MutexInit, e))?;
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

enum Reclaim {
    /// Removed (or gone already); the orphan's record if there was one, for its lock.
    Reclaimed(Option<ControlRecord>),
    InUse,
    NotOurs,
}

/// The sidecar name is taken. If it is a control block that nobody holds (every process that
/// used the segment died), remove it and its data (unless the data is someone else's).
fn reclaim_sidecar(side_name: &str) -> Result<Reclaim, Failure> {
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
    let data_name = &side_name[..side_name.len() - super::control::SIDECAR_SUFFIX.len()];
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
fn retire_if_data_gone(side_name: &str) -> Result<bool, Failure> {
    let fd = match posix::open_existing(side_name, false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(true),
        Err(e) => return Err(Failure::Os(Step::Open, e)),
    };
    retire_open_if_data_gone(fd.as_fd(), side_name)
}

fn retire_open_if_data_gone(fd: BorrowedFd<'_>, side_name: &str) -> Result<bool, Failure> {
    let Ok(record) = ControlRecord::read(fd) else {
        return Ok(false);
    };
    if record.publishing || record.sysv_shmid.is_some() {
        return Ok(false);
    }
    let data_name = &side_name[..side_name.len() - super::control::SIDECAR_SUFFIX.len()];
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
    let data_size = data_st.size;
    let map = ControlMap::map(side_fd.as_fd()).map_err(|e| Failure::Os(Step::Control, e))?;
    let describe = Describe {
        data,
        data_size,
        adopted: true,
        native_key: spec.native_key,
        legacy_key: spec.legacy_key,
        creator_pid: process::pid(),
        created_ms: now_ms(),
    };
    // The sidecar is unnamed: nobody else uses the block yet.
    map.control()
        .initialise(&describe)
        .map_err(|e| Failure::Os(Step::MutexInit, e))?;
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

/// Whether a data file has the name `file_name` now.
pub(crate) fn exists(file_name: &str) -> bool {
    posix::stat_name(file_name).is_ok()
}

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
