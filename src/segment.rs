//! Segments and their lifecycle: how a segment is created, attached, counted and destroyed on
//! each backend (SPEC §4).
//!
//! * **qsharedmem POSIX segments** (`/dev/shm/<name>`): `[data][padding to a page][control
//!   page]`. Created unnamed (`O_TMPFILE`), sized and reserved (`posix_fallocate`), initialised,
//!   then published under their name atomically (`linkat`). Every attachment holds
//!   `flock(LOCK_SH)` on its own open file description; the detacher that can upgrade to
//!   `LOCK_EX` is the last one and unlinks the name. Crashed attachers drop their locks with
//!   their descriptors, so the last survivor still cleans up, and an orphan (a segment nobody
//!   holds) is reclaimed by the next `create()`.
//! * **foreign POSIX segments** (made by Qt, by `multiprocessing.shared_memory`, by anyone):
//!   attached as they are, never unlinked by us.
//! * **System V segments**: exactly Qt's objects (key file, `ftok`, `shmget`/`shmat`); the last
//!   detacher (`shm_nattch` 0) removes the segment, its key file and the lock semaphore, under
//!   that semaphore so that no attacher can slip in between.
//!
//! An [`Attachment`] is this process's view of one segment. It is shared (`Arc`) by the handle
//! and by every buffer exported from it; the segment is detached when the last of them goes.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind};
use crate::lock::{self, LockPrimitive, WAIT_SLICE};
use crate::semaphore::SysVSemaphore;
use crate::sys::mapping::{page_size, Mapping};
use crate::sys::mutex::{self, MUTEX_RESERVED};
use crate::sys::{posix, process, sysv, Errno};
use crate::testpoint;

/// `QSharedMemory::AccessMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AccessMode {
    /// `QSharedMemory::ReadOnly` (0): the memory is mapped read-only.
    ReadOnly = 0,
    /// `QSharedMemory::ReadWrite` (1).
    #[default]
    ReadWrite = 1,
}

impl AccessMode {
    /// True for `ReadWrite`.
    #[must_use]
    pub const fn is_writable(self) -> bool {
        matches!(self, Self::ReadWrite)
    }
}

/// What kind of OS object a segment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// A POSIX segment created by qsharedmem (with its control page and robust lock).
    Posix,
    /// A POSIX segment created by someone else (Qt, multiprocessing, ...).
    ForeignPosix,
    /// A System V segment (Qt's legacy default on Linux).
    SystemV,
}

// ---------------------------------------------------------------------------------------------
// The control page of qsharedmem POSIX segments.

/// Identifies a qsharedmem control page.
const MAGIC: [u8; 8] = *b"QSHMEM\0\x01";
/// Layout version of the control page.
const VERSION: u32 = 1;
const AT_MAGIC: usize = 0;
const AT_VERSION: usize = 8;
const AT_PAGE_SIZE: usize = 12;
const AT_LOGICAL_SIZE: usize = 16;
const AT_CREATOR_PID: usize = 24;
const AT_LOCK_OWNER: usize = 28;
const AT_CREATED_MS: usize = 32;
const AT_OWNER_DEATHS: usize = 40;
const AT_NATIVE_KEY_LEN: usize = 48;
const AT_LEGACY_KEY_LEN: usize = 50;
/// Nonzero once `remove()` took the segment's name away (a field added within version 1: the
/// bytes were zero-filled padding, so older segments read as "not removed").
const AT_REMOVED: usize = 52;
const AT_MUTEX: usize = 64;
const AT_NATIVE_KEY: usize = AT_MUTEX + MUTEX_RESERVED;
const NATIVE_KEY_MAX: usize = 256;
const AT_LEGACY_KEY: usize = AT_NATIVE_KEY + NATIVE_KEY_MAX;
const LEGACY_KEY_MAX: usize = 2048;
const CONTROL_USED: usize = AT_LEGACY_KEY + LEGACY_KEY_MAX;

/// The control page of a qsharedmem POSIX segment, inside some mapping.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ControlPage<'a> {
    map: &'a Mapping,
    base: usize,
}

impl<'a> ControlPage<'a> {
    fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        self.map.read_into(self.base + at, &mut b);
        u32::from_ne_bytes(b)
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        self.map.read_into(self.base + at, &mut b);
        u64::from_ne_bytes(b)
    }

    fn string_at(&self, len_at: usize, at: usize, max: usize) -> Option<String> {
        let mut b = [0u8; 2];
        self.map.read_into(self.base + len_at, &mut b);
        let len = usize::from(u16::from_ne_bytes(b));
        if len > max {
            return None;
        }
        let mut bytes = vec![0u8; len];
        self.map.read_into(self.base + at, &mut bytes);
        String::from_utf8(bytes).ok()
    }

    /// The mapping the page lives in.
    pub(crate) fn mapping(&self) -> &'a Mapping {
        self.map
    }

    /// Offset of the robust mutex within [`Self::mapping`].
    pub(crate) fn mutex_offset(&self) -> usize {
        self.base + AT_MUTEX
    }

    /// Records which process holds the lock (0: nobody), for inspection tools.
    pub(crate) fn set_lock_owner(&self, pid: i32) {
        if self.map.is_writable() {
            self.map.atomic_u32(self.base + AT_LOCK_OWNER).store(
                u32::try_from(pid).unwrap_or(0),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// The pid recorded as holding the lock (0: nobody).
    pub(crate) fn lock_owner(&self) -> i32 {
        i32::try_from(self.u32_at(AT_LOCK_OWNER)).unwrap_or(0)
    }

    /// Counts a recovery from a dead holder.
    pub(crate) fn count_owner_death(&self) {
        if self.map.is_writable() {
            self.map
                .atomic_u32(self.base + AT_OWNER_DEATHS)
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// How many times a holder died while holding the lock.
    pub(crate) fn owner_deaths(&self) -> u32 {
        self.u32_at(AT_OWNER_DEATHS)
    }

    /// Claims the removal of the segment's name: true for exactly one caller, in any process,
    /// so that two concurrent `remove()`s never unlink twice (the second one could otherwise
    /// unlink a new segment that took the name in between).
    fn claim_removal(&self) -> bool {
        self.map
            .atomic_u32(self.base + AT_REMOVED)
            .compare_exchange(
                0,
                1,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .is_ok()
    }

    /// Gives a claim back (the unlink failed, the name is still there).
    fn release_removal_claim(&self) {
        self.map
            .atomic_u32(self.base + AT_REMOVED)
            .store(0, std::sync::atomic::Ordering::Release);
    }

    /// Whether `remove()` took the segment's name away.
    pub(crate) fn removal_claimed(&self) -> bool {
        self.u32_at(AT_REMOVED) != 0
    }

    /// The exact size the creator asked for.
    pub(crate) fn logical_size(&self) -> u64 {
        self.u64_at(AT_LOGICAL_SIZE)
    }

    /// The creator's pid.
    pub(crate) fn creator_pid(&self) -> i32 {
        i32::try_from(self.u32_at(AT_CREATOR_PID)).unwrap_or(0)
    }

    /// Creation time, milliseconds since the epoch.
    pub(crate) fn created_ms(&self) -> u64 {
        self.u64_at(AT_CREATED_MS)
    }

    /// The native key the segment was created with.
    pub(crate) fn native_key(&self) -> Option<String> {
        self.string_at(AT_NATIVE_KEY_LEN, AT_NATIVE_KEY, NATIVE_KEY_MAX)
    }

    /// The Qt legacy key the segment was created with, if any (and if it fit).
    pub(crate) fn legacy_key(&self) -> Option<String> {
        self.string_at(AT_LEGACY_KEY_LEN, AT_LEGACY_KEY, LEGACY_KEY_MAX)
            .filter(|k| !k.is_empty())
    }

    /// Writes a fresh header and initialises the mutex. Only the creator calls this, before the
    /// segment is published.
    fn initialise(
        &self,
        logical_size: usize,
        native_key: &str,
        legacy_key: Option<&str>,
    ) -> Result<(), Errno> {
        let page = u32::try_from(page_size()).unwrap_or(4096);
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let b = self.base;
        self.map.write_from(b + AT_VERSION, &VERSION.to_ne_bytes());
        self.map.write_from(b + AT_PAGE_SIZE, &page.to_ne_bytes());
        self.map
            .write_from(b + AT_LOGICAL_SIZE, &(logical_size as u64).to_ne_bytes());
        self.map
            .write_from(b + AT_CREATOR_PID, &process::pid().to_ne_bytes());
        self.map
            .write_from(b + AT_CREATED_MS, &created_ms.to_ne_bytes());
        let native = native_key.as_bytes();
        if native.len() <= NATIVE_KEY_MAX {
            self.map
                .write_from(b + AT_NATIVE_KEY_LEN, &(native.len() as u16).to_ne_bytes());
            self.map.write_from(b + AT_NATIVE_KEY, native);
        }
        let legacy = legacy_key.unwrap_or("").as_bytes();
        if legacy.len() <= LEGACY_KEY_MAX {
            self.map
                .write_from(b + AT_LEGACY_KEY_LEN, &(legacy.len() as u16).to_ne_bytes());
            self.map.write_from(b + AT_LEGACY_KEY, legacy);
        }
        mutex::init(self.map, b + AT_MUTEX)?;
        // The magic goes last: a page with the magic is a complete page.
        self.map.write_from(b + AT_MAGIC, &MAGIC);
        Ok(())
    }
}

const _: () = assert!(CONTROL_USED <= 4096);

fn round_up(size: usize, page: usize) -> Option<usize> {
    size.checked_add(page - 1).map(|s| s & !(page - 1))
}

/// What the last page of a POSIX shared memory file says about it.
#[derive(Debug)]
enum Classified {
    /// A valid qsharedmem segment with this logical size.
    Ours { logical_size: usize },
    /// Someone else's segment.
    Foreign,
}

/// The start of a control page: enough to recognise a qsharedmem segment and its size.
const HEADER_LEN: usize = AT_LOGICAL_SIZE + 8;

/// Classifies the file `fd` (`file_size` bytes) by the header of its last page.
///
/// The header is read with `pread`, not through a mapping: touching the mapping costs a page
/// fault now and a TLB flush when it is unmapped, together more than the system call, and
/// attaching otherwise never touches the memory. A file too short for the header (it shrank)
/// is foreign, never read out of bounds.
fn classify(fd: BorrowedFd<'_>, file_size: u64) -> Result<Classified, Error> {
    let page = page_size();
    let Ok(file_size) = usize::try_from(file_size) else {
        return Ok(Classified::Foreign);
    };
    if file_size < page || file_size % page != 0 {
        return Ok(Classified::Foreign);
    }
    let base = file_size - page;
    let mut header = [0u8; HEADER_LEN];
    match posix::read_at(fd, base as u64, &mut header) {
        Ok(read) if read == HEADER_LEN => {}
        Ok(_) => return Ok(Classified::Foreign),
        Err(e) => return Err(Error::from_errno("QSharedMemory::attach (pread)", e.raw())),
    }
    check_header(&header, file_size)
}

/// Checks the header of the last page of a file of `file_size` bytes (a multiple of the page
/// size): foreign without our magic, an error if ours but unreadable, else the logical size.
fn check_header(header: &[u8], file_size: usize) -> Result<Classified, Error> {
    let page = page_size();
    let field = |at: usize, len: usize| &header[at..at + len];
    let u32_at = |at: usize| u32::from_ne_bytes(field(at, 4).try_into().expect("4 bytes"));
    if header.len() < HEADER_LEN || field(AT_MAGIC, 8) != MAGIC {
        return Ok(Classified::Foreign);
    }
    let version = u32_at(AT_VERSION);
    if version != VERSION {
        return Err(Error::new(
            ErrorKind::UnknownError,
            format!(
                "QSharedMemory::attach: unsupported qsharedmem segment layout version {version}"
            ),
        ));
    }
    let logical = u64::from_ne_bytes(field(AT_LOGICAL_SIZE, 8).try_into().expect("8 bytes"));
    let consistent = usize::try_from(logical)
        .ok()
        .filter(|&l| l > 0)
        .and_then(|l| round_up(l, page))
        .is_some_and(|data| data.checked_add(page) == Some(file_size));
    if !consistent || u32_at(AT_PAGE_SIZE) as usize != page {
        return Err(Error::new(
            ErrorKind::UnknownError,
            format!(
                "QSharedMemory::attach: corrupt qsharedmem segment (header says {logical} bytes, \
                 file has {file_size})"
            ),
        ));
    }
    Ok(Classified::Ours {
        logical_size: logical as usize,
    })
}

/// What the control page of a qsharedmem POSIX segment says, read from a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ControlRecord {
    /// The exact size the creator asked for.
    pub(crate) logical_size: u64,
    /// The creator's pid.
    pub(crate) creator_pid: i32,
    /// Creation time, milliseconds since the epoch.
    pub(crate) created_ms: u64,
    /// The pid recorded as holding the lock (0: nobody).
    pub(crate) lock_owner: i32,
    /// How many times a holder died while holding the lock.
    pub(crate) owner_deaths: u32,
    /// The native key the segment was created with.
    pub(crate) native_key: Option<String>,
    /// The Qt legacy key the segment was created with.
    pub(crate) legacy_key: Option<String>,
}

/// Reads the control page of the POSIX shared memory file `fd` (`file_size` bytes long) without
/// mapping or locking the file: `Ok(None)` for a foreign file, an error for a qsharedmem page
/// that is inconsistent. Inspection tools use this, so that looking at a segment can neither
/// fault (if someone shrinks the file) nor change its reference count.
pub(crate) fn read_control_record(
    fd: std::os::fd::BorrowedFd<'_>,
    file_size: u64,
) -> Result<Option<ControlRecord>, Error> {
    let page = page_size();
    let Ok(size) = usize::try_from(file_size) else {
        return Ok(None);
    };
    if size < page || size % page != 0 {
        return Ok(None);
    }
    let mut bytes = vec![0u8; page];
    let read = posix::read_at(fd, (size - page) as u64, &mut bytes)
        .map_err(|e| Error::from_errno("qsharedmem inspect (pread)", e.raw()))?;
    if read < page {
        // Shrunk since it was measured: not a qsharedmem segment (those never change size).
        return Ok(None);
    }
    let copy = Mapping::anonymous(page)
        .map_err(|e| Error::from_errno("qsharedmem inspect (mmap)", e.raw()))?;
    copy.write_from(0, &bytes);
    let control = ControlPage {
        map: &copy,
        base: 0,
    };
    match check_header(&bytes, size)? {
        Classified::Foreign => Ok(None),
        Classified::Ours { .. } => Ok(Some(ControlRecord {
            logical_size: control.logical_size(),
            creator_pid: control.creator_pid(),
            created_ms: control.created_ms(),
            lock_owner: control.lock_owner(),
            owner_deaths: control.owner_deaths(),
            native_key: control.native_key(),
            legacy_key: control.legacy_key(),
        })),
    }
}

// ---------------------------------------------------------------------------------------------
// Attachments.

/// This process's attachment to one segment: its mapping, and whatever keeps the attachment
/// counted. Dropping it detaches (and destroys the segment if this was the last attachment).
#[derive(Debug)]
pub struct Attachment {
    size: usize,
    writable: bool,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Owned(Owned),
    Foreign(Foreign),
    SysV(SysVAttachment),
}

/// Which file a POSIX segment is (its name can be given to another file later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(st: &posix::FileStat) -> Self {
        Self {
            dev: st.dev,
            ino: st.ino,
        }
    }
}

/// What a handle remembers about a segment after detaching from it, to recognise it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SegmentIdentity {
    /// A POSIX segment: its `/dev/shm` name and file; `ours` for qsharedmem segments (which
    /// their last detach destroys), false for foreign ones (which nobody destroys but `remove`).
    Posix {
        file_name: String,
        file: FileId,
        ours: bool,
    },
    /// A System V segment (its last detach destroys it), by its id.
    SysV { shmid: i32 },
}

#[derive(Debug)]
struct Owned {
    file_name: String,
    file: FileId,
    /// The whole file: data, padding, control page (read-only for `ReadOnly` attachments).
    data: Mapping,
    /// For `ReadOnly` attachments: a writable mapping holding the control page, and its offset.
    control: Option<(Mapping, usize)>,
    /// Offset of the control page in `data`.
    control_base: usize,
    refcount: Mutex<RefcountFd>,
}

/// The descriptor whose open file description holds this attachment's `LOCK_SH` (`None` once
/// released at process exit).
#[derive(Debug)]
struct RefcountFd {
    fd: Option<OwnedFd>,
    /// `process::fork_generation()` when the lock was taken: a different value means the
    /// descriptor was inherited through `fork()` and its lock belongs to the parent.
    generation: u64,
    /// Between [`prepare_all_for_fork`] and the fork: a description with a lock of its own for
    /// the child, which the parent closes right after the fork.
    for_child: Option<OwnedFd>,
}

impl RefcountFd {
    fn new(fd: OwnedFd) -> Self {
        Self {
            fd: Some(fd),
            generation: process::fork_generation(),
            for_child: None,
        }
    }
}

#[derive(Debug)]
struct Foreign {
    file_name: String,
    file: FileId,
    data: Mapping,
    fd: OwnedFd,
}

#[derive(Debug)]
struct SysVAttachment {
    shmid: i32,
    mapping: Option<Mapping>,
    key_file: CString,
    project_id: u8,
    lock: Arc<SysVSemaphore>,
}

impl Attachment {
    /// The size every qsharedmem process reports: the creator's requested size (qsharedmem
    /// POSIX and System V), or the file size (foreign POSIX).
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the memory is mapped writable.
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Which kind of segment this is.
    #[must_use]
    pub fn kind(&self) -> SegmentKind {
        match self.inner {
            Inner::Owned(_) => SegmentKind::Posix,
            Inner::Foreign(_) => SegmentKind::ForeignPosix,
            Inner::SysV(_) => SegmentKind::SystemV,
        }
    }

    /// The mapping holding the data; the data is its first [`Self::size`] bytes.
    pub(crate) fn data_mapping(&self) -> &Mapping {
        match &self.inner {
            Inner::Owned(o) => &o.data,
            Inner::Foreign(f) => &f.data,
            Inner::SysV(s) => s
                .mapping
                .as_ref()
                .expect("mapping lives as long as the attachment"),
        }
    }

    /// The first byte of the data.
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.data_mapping().as_ptr()
    }

    /// The control page (qsharedmem POSIX segments), if this process can write it.
    pub(crate) fn control(&self) -> Option<ControlPage<'_>> {
        let Inner::Owned(o) = &self.inner else {
            return None;
        };
        match &o.control {
            Some((map, base)) => Some(ControlPage { map, base: *base }),
            None if o.data.is_writable() => Some(ControlPage {
                map: &o.data,
                base: o.control_base,
            }),
            None => None,
        }
    }

    /// After `fork()`, in the child: take a lock of the child's own on the segment, so that the
    /// parent's detach cannot destroy it while the child uses it, and the child's detach cannot
    /// destroy it while the parent does. Idempotent; a no-op for other kinds of segment (the
    /// kernel counts System V attachments inherited through fork by itself).
    pub fn rehome_after_fork(&self) {
        let Inner::Owned(o) = &self.inner else { return };
        let Some(mut rc) = o.refcount_state() else {
            return;
        };
        let now = process::fork_generation();
        if rc.generation == now {
            return;
        }
        if let Some(fd) = rc.for_child.take() {
            // Locked for us before the fork: we have counted since the very first moment.
            *rc = RefcountFd::new(fd);
            return;
        }
        let Some(inherited) = rc.fd.as_ref() else {
            return;
        };
        let Ok(fd) = posix::reopen(inherited.as_fd(), false) else {
            return;
        };
        let locked = match posix::try_lock_shared(fd.as_fd()) {
            Ok(true) => true,
            // Someone holds LOCK_EX: a detacher deciding whether it is the last one. If that
            // was the parent, between our fork and now, it saw only the description we share
            // with it, concluded it was the last, and may have removed the name; its LOCK_EX
            // then stays on that description for as long as we keep our inherited reference
            // to it. So let go of it first, then wait (briefly) for the lock.
            Ok(false) => {
                rc.fd = None;
                posix::lock_shared(fd.as_fd()).is_ok()
            }
            Err(_) => false,
        };
        if locked {
            // Dropping the inherited descriptor does not release the parent's lock: the
            // parent still has the open file description.
            *rc = RefcountFd::new(fd);
        }
    }

    /// Before `fork()`: a locked description for the child (see [`prepare_all_for_fork`]).
    fn prepare_for_fork(&self) {
        let Inner::Owned(o) = &self.inner else { return };
        let Some(mut rc) = o.refcount_state() else {
            return;
        };
        if rc.generation != process::fork_generation() {
            return;
        }
        let Some(fd) = rc.fd.as_ref() else { return };
        rc.for_child = posix::reopen(fd.as_fd(), false)
            .ok()
            .filter(|child| posix::lock_shared(child.as_fd()).is_ok());
    }

    /// In the parent after `fork()`: the child's description is the child's alone now.
    fn after_fork_in_parent(&self) {
        let Inner::Owned(o) = &self.inner else { return };
        let Some(mut rc) = o.refcount_state() else {
            return;
        };
        rc.for_child = None;
    }

    /// The (device, inode) of a qsharedmem POSIX segment and its refcount descriptor, for the
    /// exit-time check.
    fn take_refcount_at_exit(&self) -> Option<(u64, u64, String, OwnedFd)> {
        let Inner::Owned(o) = &self.inner else {
            return None;
        };
        let mut rc = o.refcount_state()?;
        if rc.generation != process::fork_generation() {
            return None;
        }
        let fd = rc.fd.take()?;
        let st = posix::fstat(fd.as_fd()).ok()?;
        Some((st.dev, st.ino, o.file_name.clone(), fd))
    }

    /// What identifies this segment once detached.
    pub(crate) fn identity(&self) -> SegmentIdentity {
        match &self.inner {
            Inner::Owned(o) => SegmentIdentity::Posix {
                file_name: o.file_name.clone(),
                file: o.file,
                ours: true,
            },
            Inner::Foreign(f) => SegmentIdentity::Posix {
                file_name: f.file_name.clone(),
                file: f.file,
                ours: false,
            },
            Inner::SysV(s) => SegmentIdentity::SysV { shmid: s.shmid },
        }
    }

    /// Whether the segment's name was removed ([`remove_posix_name`], or `IPC_RMID` for System
    /// V). Always false for foreign POSIX segments, which keep no record of it.
    pub(crate) fn name_removed(&self) -> bool {
        match &self.inner {
            Inner::Owned(o) => o.removal_claimed(),
            Inner::Foreign(_) => false,
            Inner::SysV(s) => {
                sysv::shm_stat(s.shmid).map_or(true, |st| st.mode & sysv::SHM_DEST != 0)
            }
        }
    }

    /// Removes this System V segment's key now (`IPC_RMID`): nobody can attach to it any more,
    /// and it is destroyed when its last attachment goes; that last detacher also removes the
    /// key file and the lock (unless a new segment took the key). The caller holds the lock.
    /// `Ok(false)` if it was removed already.
    pub(crate) fn remove_sysv(&self) -> Result<bool, Error> {
        let Inner::SysV(s) = &self.inner else {
            return Ok(false);
        };
        match sysv::shm_stat(s.shmid) {
            Ok(st) if st.mode & sysv::SHM_DEST == 0 => {}
            Ok(_) | Err(_) => return Ok(false),
        }
        sysv::shm_remove(s.shmid)
            .map(|()| true)
            .map_err(|e| removal_error("QSharedMemory::remove (shmctl)", e.raw()))
    }

    /// The System V segment id.
    pub(crate) fn sysv_id(&self) -> Option<i32> {
        match &self.inner {
            Inner::SysV(s) => Some(s.shmid),
            _ => None,
        }
    }

    /// Whether part of the memory was lost: the file shrank under the mapping (another process
    /// truncated it) or could not provide a page (its file system ran full), and the pages were
    /// replaced by private zero pages, so that the access did not kill the process with
    /// `SIGBUS`. Such an attachment no longer shares that memory with anyone.
    #[must_use]
    pub fn lost_pages(&self) -> bool {
        match &self.inner {
            Inner::Owned(o) => {
                o.data.lost_pages() || o.control.as_ref().is_some_and(|(m, _)| m.lost_pages())
            }
            Inner::Foreign(f) => f.data.lost_pages(),
            Inner::SysV(_) => false,
        }
    }

    /// What happened to an attachment that [lost pages](Self::lost_pages), for error texts.
    pub(crate) fn damage(&self) -> String {
        let (fd, mapped) = match &self.inner {
            Inner::Owned(o) => {
                let size = o
                    .refcount_state()
                    .and_then(|rc| rc.fd.as_ref().and_then(|fd| posix::fstat(fd.as_fd()).ok()));
                (size.map(|st| st.size), o.data.len())
            }
            Inner::Foreign(f) => (
                posix::fstat(f.fd.as_fd()).ok().map(|st| st.size),
                f.data.len(),
            ),
            Inner::SysV(s) => (None, s.mapping.as_ref().map_or(0, Mapping::len)),
        };
        match fd {
            Some(now) if now < mapped as u64 => format!(
                "the segment was truncated by another process ({mapped} bytes mapped, the file \
                 now has {now}); the lost part is no longer shared"
            ),
            _ => format!(
                "part of the segment could not be provided ({} is full); that part is no longer \
                 shared",
                posix::SHM_DIR
            ),
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        match &mut self.inner {
            Inner::Owned(o) => {
                o.detach();
                o.keep_lost_control_page();
            }
            Inner::Foreign(_) => {}
            Inner::SysV(s) => s.detach(),
        }
    }
}

impl Owned {
    /// The refcount descriptor's state; `None` in a child forked while another thread of the
    /// parent held it (see [`lock_patiently`]: a fork from one thread while another attached
    /// or detached used to hang the child here).
    fn refcount_state(&self) -> Option<MutexGuard<'_, RefcountFd>> {
        lock_patiently(&self.refcount)
    }

    /// The control page's removal flag. Read with `pread` on the refcount descriptor where
    /// there is one: read through the mapping, it cost every detach a page fault (and a TLB
    /// flush when the mapping goes), most of a detach of a small segment.
    fn removal_claimed(&self) -> bool {
        if let Some(fd) = self.refcount_state().as_ref().and_then(|rc| rc.fd.as_ref()) {
            let mut flag = [0u8; 4];
            let at = (self.control_base + AT_REMOVED) as u64;
            if posix::read_at(fd.as_fd(), at, &mut flag) == Ok(flag.len()) {
                return u32::from_ne_bytes(flag) != 0;
            }
        }
        ControlPage {
            map: &self.data,
            base: self.control_base,
        }
        .removal_claimed()
    }

    /// A control page that the `SIGBUS` handler replaced with a zero page (the file was
    /// truncated under it) stays mapped until the process exits instead of being unmapped with
    /// the rest of the attachment.
    ///
    /// The robust mutex in it may still be on a thread's robust list: a thread that held the
    /// lock when the file shrank unlocks a zeroed mutex, which glibc takes for a plain one (type
    /// 0) and unlocks without taking it off the list. That thread's next lock of any robust
    /// mutex (another segment's) links the new entry to this one, writing into this page;
    /// unmapped, that write is a `SIGSEGV`. Kept, it lands in private memory nobody else uses.
    /// The page is anonymous now and cannot fault again, so it needs no `SIGBUS` watch. Cost: a
    /// page of address space (and of memory, once touched) per truncated attachment.
    fn keep_lost_control_page(&mut self) {
        // The mapping the lock was taken through (a read-only one cannot have been locked).
        let (map, base) = match &mut self.control {
            Some((map, base)) => (map, *base),
            None if self.data.is_writable() => (&mut self.data, self.control_base),
            None => return,
        };
        // The handler replaced everything from the faulting page to the end of the mapping, so
        // if it replaced anything, the control page, the mapping's last page, is among it.
        if map.lost_pages() {
            map.keep_mapped_from(base);
        }
    }

    fn detach(&mut self) {
        // Fields drop after this function: the mappings go first because `detach` runs inside
        // `Drop for Attachment`; the decision only needs the descriptor.
        let rc = self
            .refcount
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if rc.generation != process::fork_generation() {
            // Inherited through fork and never re-homed: the lock is the parent's, not ours.
            return;
        }
        let Some(fd) = rc.fd.as_ref() else { return };
        if let Ok(true) = posix::try_lock_exclusive(fd.as_fd()) {
            // Nobody else holds the segment: we are the last one out.
            testpoint::step("detach:exclusive");
            let _ = posix::unlink_if_same(&self.file_name, fd.as_fd());
            testpoint::step("detach:unlinked");
        }
    }
}

/// How long a detach that finds the System V lock busy waits for it before handing the
/// last-detacher check to the background reaper.
const CLEANUP_WAIT: Duration = Duration::from_secs(2);

impl SysVAttachment {
    fn detach(&mut self) {
        // shmdt needs no lock; only the "was that the last one?" decision does.
        drop(self.mapping.take());
        testpoint::step("detach:unmapped");
        let (shmid, key_file, project_id) = (self.shmid, self.key_file.clone(), self.project_id);
        run_under_sysv_lock(
            &self.lock,
            Box::new(move |lock| {
                remove_if_unused(shmid, &key_file, project_id, lock);
            }),
        );
    }
}

/// Work that must run while holding a System V lock (a cleanup decision).
pub(crate) type UnderLock = Box<dyn FnOnce(&SysVSemaphore) + Send>;

/// Runs `action` under `lock`: at once if this thread holds the lock or it becomes free within
/// [`CLEANUP_WAIT`]; otherwise on the reaper thread, which waits for it. A destructor that calls
/// this never blocks long. Taking the lock re-creates it if it was removed (its creator may have
/// gone while the segment lives on); `action` removes it again if the segment turns out gone.
pub(crate) fn run_under_sysv_lock(lock: &Arc<SysVSemaphore>, action: UnderLock) {
    if lock::sysv_held_by_current_thread(lock) {
        action(lock);
        return;
    }
    match lock::acquire_for_cleanup(lock, CLEANUP_WAIT) {
        Ok(Some(recovered)) => {
            action(lock);
            lock::release_after_cleanup(lock, recovered);
        }
        Ok(None) => reap_later(lock.clone(), action),
        // The lock cannot even be opened (its key file's directory is gone, say).
        Err(_) => {}
    }
}

/// Removes the System V segment `shmid` if nobody is attached to it any more, together with
/// its key file and the lock semaphore (and that one's key file). The caller holds the lock.
/// Returns whether the lock semaphore was removed.
fn remove_if_unused(shmid: i32, key_file: &CString, project_id: u8, lock: &SysVSemaphore) -> bool {
    match sysv::shm_stat(shmid) {
        Ok(st) if st.attached == 0 => {
            let _ = sysv::shm_remove(shmid);
            testpoint::step("detach:removed");
            remove_key_file_and_lock(key_file, lock);
            true
        }
        // Already destroyed: its key was removed (`remove()`, or `ipcrm`) while we were
        // attached, and our detach was the last one. The key file and the lock were left for
        // us; they go too unless a new segment has taken the key meanwhile (it would share
        // them). Nobody is creating one right now: creators hold the lock, and so do we.
        Err(Errno::EINVAL | Errno::EIDRM) if !sysv_key_in_use(key_file, project_id) => {
            remove_key_file_and_lock(key_file, lock);
            true
        }
        _ => false,
    }
}

/// Removes a segment's key file and its lock (the set and the set's key file). New System V
/// keys use one file for both: it is unlinked once, because a second unlink could remove the
/// file that another process created in between, giving the key a second lock.
fn remove_key_file_and_lock(key_file: &CString, lock: &SysVSemaphore) {
    if key_file.as_bytes() != lock.native_key().as_bytes() {
        let _ = sysv::remove_key_file(key_file);
    }
    lock.remove();
}

/// Whether a System V segment exists for the key file `key_file` right now.
fn sysv_key_in_use(key_file: &CString, project_id: u8) -> bool {
    sysv::ftok(key_file, project_id).is_ok_and(|key| sysv::shm_get(key, 0, 0).is_ok())
}

/// Hands work that needs a busy System V lock to a background thread, which waits for it.
/// A forked child gets a thread of its own: the parent's does not exist there.
fn reap_later(lock: Arc<SysVSemaphore>, action: UnderLock) {
    type Job = (Arc<SysVSemaphore>, UnderLock);
    struct Reaper {
        fork_generation: u64,
        jobs: mpsc::Sender<Job>,
    }
    static REAPER: Mutex<Option<Reaper>> = Mutex::new(None);

    fn start() -> Reaper {
        let (jobs, rx) = mpsc::channel::<Job>();
        // If the thread cannot be started the work is skipped: an orphaned segment is
        // reclaimed by the next create() or by `qsharedmem gc`.
        let _ = std::thread::Builder::new()
            .name("qsharedmem-reaper".into())
            .spawn(move || {
                for (lock, action) in rx {
                    loop {
                        match lock::acquire_for_cleanup(&lock, Duration::from_secs(60)) {
                            Ok(Some(recovered)) => {
                                action(&lock);
                                lock::release_after_cleanup(&lock, recovered);
                                break;
                            }
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                }
            });
        Reaper {
            fork_generation: process::fork_generation(),
            jobs,
        }
    }

    let Some(mut reaper) = lock_patiently(&REAPER) else {
        return;
    };
    let reaper = match &mut *reaper {
        Some(current) if current.fork_generation == process::fork_generation() => current,
        slot => slot.insert(start()),
    };
    let _ = reaper.jobs.send((lock, action));
}

/// Locks a mutex that its users hold only for a system call or two. One that stays locked for
/// a second was locked by a thread of the parent that forked this process: that thread does
/// not exist here and the mutex stays locked forever, so `None` (callers do without).
fn lock_patiently<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut pause = Duration::from_micros(10);
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Every live qsharedmem POSIX attachment of this process, for fork and exit handling.

static TRACKED: Mutex<Vec<std::sync::Weak<Attachment>>> = Mutex::new(Vec::new());

/// Registers an attachment for [`rehome_all_after_fork`] and [`release_all_at_exit`].
pub(crate) fn track(attachment: &Arc<Attachment>) {
    if attachment.kind() != SegmentKind::Posix {
        return;
    }
    let mut list = TRACKED.lock().unwrap_or_else(PoisonError::into_inner);
    // Forget detached attachments only when the list would grow: pruning on every call made
    // each create()/attach() cost O(attachments), 10,000 segments O(n^2). This way it is O(1)
    // amortised and the list never holds more than twice what it must.
    if list.len() == list.capacity() {
        list.retain(|w| w.strong_count() > 0);
    }
    list.push(Arc::downgrade(attachment));
}

fn tracked() -> Vec<Arc<Attachment>> {
    // try_lock: right after fork() the registry's mutex may have been held by a thread that
    // does not exist in the child; then the lazy per-operation re-homing has to do.
    match TRACKED.try_lock() {
        Ok(list) => list.iter().filter_map(std::sync::Weak::upgrade).collect(),
        Err(std::sync::TryLockError::Poisoned(p)) => p
            .into_inner()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect(),
        Err(std::sync::TryLockError::WouldBlock) => Vec::new(),
    }
}

/// Before `fork()` (Python's `os.register_at_fork(before=...)`): gives every qsharedmem POSIX
/// attachment a second locked description, which the child inherits and keeps while the parent
/// closes its copy ([`after_fork_in_parent_all`]). The child's attachments then count from the
/// moment of the fork, so a parent that detaches right after forking cannot take itself for
/// the last holder and destroy a segment the child inherited. Without this preparation (a
/// fork that runs no hooks), the child takes its own lock when it re-homes, which leaves that
/// short window open.
pub fn prepare_all_for_fork() {
    for attachment in tracked() {
        attachment.prepare_for_fork();
    }
}

/// In the parent after `fork()`: closes the descriptions [`prepare_all_for_fork`] made for the
/// child.
pub fn after_fork_in_parent_all() {
    for attachment in tracked() {
        attachment.after_fork_in_parent();
    }
}

/// In a child after `fork()`: gives every inherited qsharedmem POSIX attachment a lock of the
/// child's own (see [`Attachment::rehome_after_fork`]).
pub fn rehome_all_after_fork() {
    for attachment in tracked() {
        attachment.rehome_after_fork();
    }
}

/// At process exit (including exits that skip destructors, such as `os._exit` in
/// multiprocessing children): if this process is the last one holding a qsharedmem POSIX
/// segment, remove its name now, as the last detach would have. Attachments stay mapped; they
/// just stop counting.
pub fn release_all_at_exit() {
    let mut by_file: Vec<(u64, u64, String, Vec<OwnedFd>)> = Vec::new();
    for attachment in tracked() {
        if let Some((dev, ino, name, fd)) = attachment.take_refcount_at_exit() {
            match by_file
                .iter_mut()
                .find(|(d, i, _, _)| *d == dev && *i == ino)
            {
                Some(entry) => entry.3.push(fd),
                None => by_file.push((dev, ino, name, vec![fd])),
            }
        }
    }
    for (_, _, name, mut fds) in by_file {
        // Release all but one of this process's own locks, then ask whether anyone else holds
        // the file.
        let last = fds.pop().expect("at least one descriptor per file");
        drop(fds);
        if let Ok(true) = posix::try_lock_exclusive(last.as_fd()) {
            let _ = posix::unlink_if_same(&name, last.as_fd());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// POSIX.

/// Checks a POSIX native key the way `sem_open` would (Qt opens the lock semaphore before the
/// segment, so name errors surface from the semaphore), returning the `/dev/shm` file name.
pub(crate) fn posix_file_name(native_key: &str) -> Result<String, Error> {
    if native_key.is_empty() {
        return Err(Error::new(
            ErrorKind::KeyError,
            "QSharedMemoryPrivate::initKey: unable to set key on lock \
             (QSystemSemaphore::handle: key is empty)",
        ));
    }
    if let Err(e) = posix::shm_file_name(native_key, true) {
        return Err(Error::from_init_key(
            &crate::error::SemaphoreError::from_errno("QSystemSemaphore::handle", e.raw()),
        ));
    }
    posix::shm_file_name(native_key, false).map_err(|_| {
        // Only "." and "..", which glibc would pass on (naming /dev/shm and /dev): Qt's text
        // for a name shm_open refuses.
        Error::with_errno(
            ErrorKind::KeyError,
            "QSharedMemory::attach (shm_open): bad name",
            libc::EINVAL,
        )
    })
}

fn out_of_space(needed: usize) -> Error {
    let free = posix::shm_space().map(|(free, _)| free).unwrap_or(0);
    Error::with_errno(
        ErrorKind::OutOfResources,
        format!(
            "QSharedMemory::create (posix_fallocate): out of resources (needed {needed} bytes, \
             {free} bytes free in {})",
            posix::SHM_DIR
        ),
        libc::ENOSPC,
    )
}

/// Creates a qsharedmem POSIX segment of `size` bytes and attaches to it with `mode`.
pub(crate) fn create_posix(
    file_name: &str,
    native_key: &str,
    legacy_key: Option<&str>,
    size: usize,
    mode: AccessMode,
) -> Result<Attachment, Error> {
    let page = page_size();
    let too_big = || {
        Error::with_errno(
            ErrorKind::InvalidSize,
            "QSharedMemory::create: size too large",
            libc::EFBIG,
        )
    };
    let data_len = round_up(size, page).ok_or_else(too_big)?;
    let total = data_len.checked_add(page).ok_or_else(too_big)?;
    let fd = posix::create_unnamed(total as u64, 0o600).map_err(|e| match e.raw() {
        libc::ENOSPC => out_of_space(total),
        // What ftruncate says for these sizes (posix_fallocate now sizes the file).
        libc::EFBIG | libc::EINVAL => {
            Error::from_errno("QSharedMemory::create (ftruncate)", e.raw())
        }
        _ => Error::from_errno("QSharedMemory::create", e.raw()),
    })?;
    testpoint::step("create:reserved");
    let whole = Mapping::map_file(fd.as_fd(), 0, total, true)
        .map_err(|e| Error::from_errno("QSharedMemory::attach (mmap)", e.raw()))?;
    let control = ControlPage {
        map: &whole,
        base: data_len,
    };
    control
        .initialise(size, native_key, legacy_key)
        .map_err(|e| Error::from_errno("QSharedMemory::create (pthread_mutex_init)", e.raw()))?;
    testpoint::step("create:initialised");
    let lock_fd = refcount_descriptor(fd.as_fd())?;
    let file = posix::fstat(fd.as_fd())
        .map(|st| FileId::of(&st))
        .map_err(|e| Error::from_errno("QSharedMemory::attach (fstat)", e.raw()))?;
    // A ReadOnly creator (Qt allows it) gets a read-only mapping from a read-only descriptor;
    // the writable mapping is kept only for the control page (the lock lives there).
    let (data, control_map) = if mode.is_writable() {
        (whole, None)
    } else {
        let ro_fd = posix::reopen(fd.as_fd(), false)
            .map_err(|e| Error::from_errno("QSharedMemory::attach (shm_open)", e.raw()))?;
        let data = Mapping::map_file(ro_fd.as_fd(), 0, total, false)
            .map_err(|e| Error::from_errno("QSharedMemory::attach (mmap)", e.raw()))?;
        (data, Some((whole, data_len)))
    };

    // Everything that can fail has been done: once the name is published, a failure would
    // leave behind a segment that nobody holds but anyone can attach.
    let mut published = false;
    for _ in 0..8 {
        match posix::publish(fd.as_fd(), file_name) {
            Ok(()) => {
                published = true;
                break;
            }
            Err(Errno::EEXIST) => {
                if !reclaim_orphan(file_name)? {
                    return Err(Error::from_errno(
                        "QSharedMemory::attach (shm_open)",
                        libc::EEXIST,
                    ));
                }
            }
            Err(e) => {
                return Err(Error::from_errno(
                    "QSharedMemory::attach (shm_open)",
                    e.raw(),
                ))
            }
        }
    }
    if !published {
        return Err(Error::from_errno(
            "QSharedMemory::attach (shm_open)",
            libc::EEXIST,
        ));
    }
    testpoint::step("create:published");
    Ok(Attachment {
        size,
        writable: mode.is_writable(),
        inner: Inner::Owned(Owned {
            file_name: file_name.to_owned(),
            file,
            data,
            control: control_map,
            control_base: data_len,
            refcount: Mutex::new(RefcountFd::new(lock_fd)),
        }),
    })
}

/// A new open file description of the file `fd` is open on, holding a shared `flock`: the
/// attachment's vote in the refcount.
///
/// It is never mapped. A mapping keeps the description it was made from alive after the
/// descriptor is closed, and in a child after `fork()`; a lock on such a description would
/// outlive the attachment (a read-only creator's, a second attachment's at exit, the parent's
/// inherited by a forked child) and make the real last detacher's `LOCK_EX` fail, leaving the
/// segment behind.
fn refcount_descriptor(fd: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    let lock_fd = posix::reopen(fd, false)
        .map_err(|e| Error::from_errno("QSharedMemory::create (open)", e.raw()))?;
    posix::lock_shared(lock_fd.as_fd())
        .map_err(|e| Error::from_errno("QSharedMemory::create (flock)", e.raw()))?;
    Ok(lock_fd)
}

/// The name is taken. If it is a qsharedmem segment that nobody holds (all its users crashed),
/// remove it and return true; if it is in use or not ours, return false.
pub(crate) fn reclaim_orphan(file_name: &str) -> Result<bool, Error> {
    let fd = match posix::open_existing(file_name, false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(true),
        Err(Errno::EACCES) => {
            // Another user's segment. Qt's create() fails replacing that user's semaphore; we
            // give Qt's text for the same situation.
            return Err(Error::from_init_key(
                &crate::error::SemaphoreError::from_errno(
                    "QSystemSemaphore::handle (sem_unlink)",
                    libc::EACCES,
                ),
            ));
        }
        Err(e) => {
            return Err(Error::from_errno(
                "QSharedMemory::attach (shm_open)",
                e.raw(),
            ))
        }
    };
    if !posix::try_lock_exclusive(fd.as_fd()).unwrap_or(false) {
        return Ok(false);
    }
    let Ok(st) = posix::fstat(fd.as_fd()) else {
        return Ok(false);
    };
    if !matches!(classify(fd.as_fd(), st.size), Ok(Classified::Ours { .. })) {
        // Never remove someone else's segment: a Qt application may be using it.
        return Ok(false);
    }
    Ok(
        posix::unlink_if_same(file_name, fd.as_fd()).unwrap_or(false)
            || posix::stat_name(file_name).is_err(),
    )
}

/// Opens and classifies the POSIX segment `file_name`. Retries while it is being destroyed.
fn open_posix(file_name: &str, mode: AccessMode) -> Result<(OwnedFd, posix::FileStat), Error> {
    for _ in 0..16 {
        let fd = posix::open_existing(file_name, mode.is_writable()).map_err(|e| {
            if e.raw() == libc::EACCES {
                // Qt reports another user's segment from its lock semaphore, which it opens
                // first; we give the same text for the same situation.
                Error::from_init_key(&crate::error::SemaphoreError::from_errno(
                    "QSystemSemaphore::handle",
                    e.raw(),
                ))
            } else {
                Error::from_errno("QSharedMemory::attach (shm_open)", e.raw())
            }
        })?;
        testpoint::step("attach:opened");
        posix::lock_shared(fd.as_fd())
            .map_err(|e| Error::from_errno("QSharedMemory::attach (flock)", e.raw()))?;
        testpoint::step("attach:counted");
        let st = posix::fstat(fd.as_fd())
            .map_err(|e| Error::from_errno("QSharedMemory::attach (fstat)", e.raw()))?;
        if st.nlink > 0 {
            return Ok((fd, st));
        }
        // The last detacher unlinked it between our open and our lock: look again.
    }
    Err(Error::from_errno(
        "QSharedMemory::attach (shm_open)",
        libc::ENOENT,
    ))
}

/// The result of attaching by a POSIX key: ours, or someone else's (which needs Qt's
/// semaphore as its lock, opened by the caller).
pub(crate) enum PosixAttach {
    /// A qsharedmem segment.
    Ours(Attachment),
    /// A foreign segment.
    Foreign(Attachment),
}

/// A second open file description of the file `fd` (described by `st`) refers to, with its own
/// access mode. Opening the name again costs a third of re-opening through `/proc/self/fd`; if
/// the name no longer refers to the same file (it was replaced meanwhile), `/proc` it is.
fn open_again(
    file_name: &str,
    fd: BorrowedFd<'_>,
    st: &posix::FileStat,
    writable: bool,
) -> Result<OwnedFd, Errno> {
    if let Ok(again) = posix::open_existing(file_name, writable) {
        if posix::fstat(again.as_fd()).is_ok_and(|now| now.same_file(st)) {
            return Ok(again);
        }
    }
    posix::reopen(fd, writable)
}

/// Attaches to the POSIX segment `file_name`. `settle` runs if the file is empty (a foreign
/// creator may be between creating and sizing it); the size is then read again.
pub(crate) fn attach_posix(
    file_name: &str,
    mode: AccessMode,
    settle: &mut dyn FnMut(),
) -> Result<PosixAttach, Error> {
    let writable = mode.is_writable();
    let (fd, mut st) = open_posix(file_name, mode)?;
    if st.size == 0 {
        settle();
        st = posix::fstat(fd.as_fd())
            .map_err(|e| Error::from_errno("QSharedMemory::attach (fstat)", e.raw()))?;
    }
    let len = usize::try_from(st.size)
        .map_err(|_| Error::from_errno("QSharedMemory::attach (mmap)", libc::ENOMEM))?;
    let classified = classify(fd.as_fd(), st.size)?;
    // `fd` holds the refcount lock; the memory is mapped through a description of its own (see
    // `refcount_descriptor`).
    let data = open_again(file_name, fd.as_fd(), &st, writable)
        .and_then(|map_fd| Mapping::map_file(map_fd.as_fd(), 0, len, writable))
        .map_err(|e| Error::from_errno("QSharedMemory::attach (mmap)", e.raw()))?;
    testpoint::step("attach:mapped");
    match classified {
        Classified::Ours { logical_size } => {
            let page = page_size();
            let control_base = len - page;
            let control = if writable {
                None
            } else {
                // The lock lives in the control page, which a read-only attacher must still be
                // able to write; without write permission the lock is simply unavailable.
                open_again(file_name, fd.as_fd(), &st, true)
                    .ok()
                    .and_then(|rw| {
                        Mapping::map_file(rw.as_fd(), control_base as u64, page, true)
                            .ok()
                            .map(|m| (m, 0))
                    })
            };
            Ok(PosixAttach::Ours(Attachment {
                size: logical_size,
                writable,
                inner: Inner::Owned(Owned {
                    file_name: file_name.to_owned(),
                    file: FileId::of(&st),
                    data,
                    control,
                    control_base,
                    refcount: Mutex::new(RefcountFd::new(fd)),
                }),
            }))
        }
        Classified::Foreign => {
            // The descriptor keeps its shared flock: harmless for a foreign segment (we never
            // unlink those), and it shows inspection tools that we are attached.
            Ok(PosixAttach::Foreign(Attachment {
                size: len,
                writable,
                inner: Inner::Foreign(Foreign {
                    file_name: file_name.to_owned(),
                    file: FileId::of(&st),
                    data,
                    fd,
                }),
            }))
        }
    }
}

/// What [`remove_posix_name`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The name referred to the segment and is gone now.
    Removed,
    /// No such name, or it refers to another file than the one asked for.
    Missing,
    /// The segment is a qsharedmem segment whose name someone else removed (or is removing)
    /// already.
    AlreadyRemoved,
}

/// The error of a failed removal: Qt's text pattern with our function name; `EPERM` (not the
/// owner of the object, or of a sticky directory entry) is `PermissionDenied` as `EACCES` is.
fn removal_error(function: &str, errno: i32) -> Error {
    if errno == libc::EPERM {
        return Error::with_errno(
            ErrorKind::PermissionDenied,
            format!("{function}: permission denied"),
            errno,
        );
    }
    Error::from_errno(function, errno)
}

/// Removes the name `file_name` from `/dev/shm` now, if it refers to `expected` (any file when
/// `None`). Processes attached to the segment keep it; a qsharedmem segment is then destroyed
/// by its last detach as always, a foreign one when its last mapping goes.
///
/// For qsharedmem segments the removal is claimed in the control page first, so that of two
/// concurrent removers exactly one unlinks (the other sees [`Removal::AlreadyRemoved`]); while
/// this runs it holds a shared `flock` like an attachment, so no last detacher or orphan
/// reclaimer can unlink the name under it either.
pub(crate) fn remove_posix_name(
    file_name: &str,
    expected: Option<FileId>,
) -> Result<Removal, Error> {
    // Write access is needed only for the claim; without it, remove all the same (unlinking is
    // a matter of the directory's permissions).
    let opened = match open_posix(file_name, AccessMode::ReadWrite) {
        Err(e) if e.errno() == Some(libc::EACCES) => {
            open_posix(file_name, AccessMode::ReadOnly).map(|(fd, st)| (fd, st, false))
        }
        other => other.map(|(fd, st)| (fd, st, true)),
    };
    let (fd, st, writable) = match opened {
        Ok(opened) => opened,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Removal::Missing),
        Err(e) => return Err(e),
    };
    if expected.is_some_and(|id| id != FileId::of(&st)) {
        // The name belongs to another segment now; never touch that one.
        return Ok(Removal::Missing);
    }
    let page = page_size();
    let ours = matches!(classify(fd.as_fd(), st.size), Ok(Classified::Ours { .. }));
    // The control page is the file's last page; map just that one for the claim.
    let control_map = if ours && writable {
        Mapping::map_file(fd.as_fd(), st.size - page as u64, page, true).ok()
    } else {
        None
    };
    let control = control_map.as_ref().map(|map| ControlPage { map, base: 0 });
    if ours {
        let claimed = match &control {
            Some(control) => control.claim_removal(),
            // Read-only access: look at the flag, without claiming.
            None => Mapping::map_file(fd.as_fd(), st.size - page as u64, page, false)
                .map_or(true, |map| {
                    !ControlPage { map: &map, base: 0 }.removal_claimed()
                }),
        };
        if !claimed {
            return Ok(Removal::AlreadyRemoved);
        }
    }
    match posix::unlink_if_same(file_name, fd.as_fd()) {
        Ok(true) => Ok(Removal::Removed),
        Ok(false) => Ok(Removal::Missing),
        Err(e) => {
            if let Some(control) = &control {
                control.release_removal_claim();
            }
            Err(removal_error("QSharedMemory::remove (shm_unlink)", e.raw()))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// System V.

/// Qt's `QSharedMemoryPrivate::handle()` (System V): the IPC key of an existing key file.
fn sysv_key(key_file: &CString, project_id: u8) -> Result<sysv::IpcKey, Error> {
    sysv::ftok(key_file, project_id)
        .map_err(|e| Error::from_errno("QSharedMemory::handle", e.raw()))
}

/// Creates a System V segment the way Qt does, reclaiming an orphan (a segment nobody is
/// attached to) instead of failing. The caller holds `lock`.
pub(crate) fn create_sysv(
    native_key: &str,
    project_id: u8,
    size: usize,
    mode: AccessMode,
    lock: &Arc<SysVSemaphore>,
) -> Result<Attachment, Error> {
    if native_key.is_empty() {
        return Err(Error::new(
            ErrorKind::KeyError,
            "QSharedMemory::handle:: key is empty",
        ));
    }
    let unable = || {
        Error::new(
            ErrorKind::KeyError,
            "QSharedMemory::handle:: unable to make key",
        )
    };
    let key_file = sysv::key_path(native_key).map_err(|_| unable())?;
    let created_file = sysv::create_key_file(&key_file).map_err(|_| unable())?;
    let forget_file = |created: bool| {
        if created {
            let _ = sysv::remove_key_file(&key_file);
        }
    };
    let key = match sysv_key(&key_file, project_id) {
        Ok(key) => key,
        Err(e) => {
            forget_file(created_file);
            return Err(e);
        }
    };
    let flags = 0o600 | libc::IPC_CREAT | libc::IPC_EXCL;
    let mut attempt = sysv::shm_get(key, size, flags);
    if attempt == Err(Errno::EEXIST) {
        // An orphan: every process that used it is gone (nattch 0) and we hold the lock, so no
        // Qt or qsharedmem process is between creating and attaching it.
        if let Ok(old) = sysv::shm_get(key, 0, 0) {
            if sysv::shm_stat(old).is_ok_and(|st| st.attached == 0) {
                let _ = sysv::shm_remove(old);
                attempt = sysv::shm_get(key, size, flags);
            }
        }
    }
    let id = match attempt {
        Ok(id) => {
            testpoint::step("create:segment");
            id
        }
        Err(Errno::EINVAL) => {
            forget_file(created_file);
            return Err(Error::with_errno(
                ErrorKind::InvalidSize,
                "QSharedMemory::handle: system-imposed size restrictions",
                libc::EINVAL,
            ));
        }
        Err(e) => {
            if e.raw() != libc::EEXIST {
                forget_file(created_file);
            }
            return Err(Error::from_errno("QSharedMemory::create", e.raw()));
        }
    };
    match attach_sysv_id(id, key_file.clone(), project_id, mode, lock) {
        Ok(att) => Ok(att),
        Err(e) => {
            let _ = sysv::shm_remove(id);
            forget_file(created_file);
            Err(e)
        }
    }
}

/// Attaches to the System V segment of `native_key` the way Qt does. The caller holds `lock`.
pub(crate) fn attach_sysv(
    native_key: &str,
    project_id: u8,
    mode: AccessMode,
    lock: &Arc<SysVSemaphore>,
) -> Result<Attachment, Error> {
    if native_key.is_empty() {
        return Err(Error::new(
            ErrorKind::KeyError,
            "QSharedMemory::handle:: key is empty",
        ));
    }
    let key_file = sysv::key_path(native_key).map_err(|_| {
        Error::new(
            ErrorKind::KeyError,
            "QSharedMemory::handle:: unable to make key",
        )
    })?;
    let perms = if mode.is_writable() { 0o600 } else { 0o400 };
    let mut attempts = 0;
    loop {
        let key = sysv_key(&key_file, project_id)?;
        let id = sysv::shm_get(key, 0, perms)
            .map_err(|e| Error::from_errno("QSharedMemory::attach (shmget)", e.raw()))?;
        match attach_sysv_id(id, key_file.clone(), project_id, mode, lock) {
            // Removed between shmget and shmat (by a process that locked a lock set that
            // replaced ours while the key file was being re-created): look the key up again.
            Err(e) if matches!(e.errno(), Some(libc::EIDRM | libc::EINVAL)) && attempts < 8 => {
                attempts += 1;
            }
            result => return result,
        }
    }
}

fn attach_sysv_id(
    id: i32,
    key_file: CString,
    project_id: u8,
    mode: AccessMode,
    lock: &Arc<SysVSemaphore>,
) -> Result<Attachment, Error> {
    let st = sysv::shm_stat(id)
        .map_err(|e| Error::from_errno("QSharedMemory::attach (shmctl)", e.raw()))?;
    let mapping = Mapping::attach_sysv(id, st.size, mode.is_writable())
        .map_err(|e| Error::from_errno("QSharedMemory::attach (shmat)", e.raw()))?;
    Ok(Attachment {
        size: st.size,
        writable: mode.is_writable(),
        inner: Inner::SysV(SysVAttachment {
            shmid: id,
            mapping: Some(mapping),
            key_file,
            project_id,
            lock: lock.clone(),
        }),
    })
}

/// Whether a System V segment exists for this key file right now.
pub(crate) fn sysv_segment_exists(native_key: &str, project_id: u8) -> bool {
    sysv::key_path(native_key)
        .ok()
        .is_some_and(|path| sysv_key_in_use(&path, project_id))
}

/// Waits for a foreign POSIX segment's creator to finish sizing it (Qt creates the object,
/// then `ftruncate`s it, both under its semaphore).
pub(crate) fn settle_foreign_size(lock: &LockPrimitive) {
    let mut waited = Duration::ZERO;
    let mut none = || {
        waited += WAIT_SLICE;
        waited >= Duration::from_secs(1)
    };
    if let Ok(got) = lock.acquire(Some(Duration::from_secs(1)), &mut none) {
        let _ = lock.release_unreported(got == crate::lock::Acquired::OwnerDied);
    }
}
