//! Seeing and cleaning up shared memory segments: what the `qsharedmem ls / info / rm / gc`
//! commands are built on.
//!
//! The parts: [`list`](list::list) (`list.rs`), [`find`]/[`lookup`] (`find.rs`), [`preview`]
//! (`preview.rs`), [`remove`]/[`collect_garbage`] (`remove.rs`). Removal and locking use the
//! library's own code (`segment`, `lock`): the CLI deletes a segment exactly as its last
//! detacher would.
//!
//! [`list`] finds every shared memory segment on the machine (by default only the current
//! user's): qsharedmem's own POSIX segments, other POSIX segments in `/dev/shm` (Qt's,
//! `multiprocessing.shared_memory`'s, anyone's) and System V segments, with Qt's key files
//! matched back to them. For each it reports what is known: keys, size, who is attached, the
//! state of its lock, its creator, and whether it is an [orphan](Usage::Orphan).
//! [`find`]/[`lookup`] select segments by any key form a user may type, [`preview`] reads their
//! first bytes, [`remove`] and [`collect_garbage`] delete them.
//!
//! **Looking never disturbs a segment.** Attachments are read from `/proc` (`/proc/locks` for the
//! `flock`s on the control blocks that count qsharedmem attachments, `/proc/<pid>/maps` and `/proc/<pid>/fd` for
//! everyone else) instead of being probed with locks: a probing `flock(LOCK_EX|LOCK_NB)` would
//! make a concurrent last detacher believe that somebody else is still attached, and the segment
//! would be left behind. Headers are copied with `pread`, never mapped. The one exception is a
//! System V [`preview`], which has to attach: it does so under the segment's lock semaphore, the
//! way Qt's own attach and detach run, so no detacher can count it as a user.
//!
//! **Removing is careful.** [`remove`] re-checks right before it deletes: a qsharedmem segment
//! only goes if `flock(LOCK_EX|LOCK_NB)` proves that nobody holds it (the protocol every
//! qsharedmem attacher follows), a System V segment only under its lock semaphore with
//! `shm_nattch` 0, a foreign POSIX segment only if no process maps it or has it open. Unless
//! forced, a segment in use is never removed.
//!
//! Limits: only processes this user may inspect are visible in `/proc` (all of them for root);
//! the creator of a foreign POSIX segment is not recorded anywhere, so such a segment counts as
//! an orphan as soon as no process uses it.
mod find;
mod list;
mod preview;
mod remove;

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

pub use find::{find, lookup};
pub use list::list;
pub use preview::preview;
pub use remove::{collect_garbage, remove, remove_key, GcOutcome, Removal};

use crate::key::NativeIpcKey;
use crate::segment::SegmentKind;
use crate::sys::procfs::{self, FileId, FlockHolder, ShmUsers};
use crate::sys::{posix, Errno};

/// The prefix of Qt's legacy segment names (and key files).
const LEGACY_SEGMENT_PREFIX: &str = "qipc_sharedmemory_";
/// The prefix of Qt's legacy semaphore names (and key files).
const LEGACY_SEMAPHORE_PREFIX: &str = "qipc_systemsem_";
/// The prefix of the names `multiprocessing.shared_memory` generates.
const MULTIPROCESSING_PREFIX: &str = "psm_";

/// Whose segments to look at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Segments owned by the effective user.
    #[default]
    CurrentUser,
    /// Every segment this process can see.
    AllUsers,
}

/// Who made a segment, as far as can be told from its names and objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// qsharedmem: a POSIX segment with qsharedmem's control page, or a System V segment whose
    /// lock set qsharedmem created.
    Qsharedmem,
    /// Qt (`QSharedMemory`): a `qipc_sharedmemory_` name, a Qt key file, or Qt's semaphore.
    Qt,
    /// Python's `multiprocessing.shared_memory` (a `psm_` name).
    Multiprocessing,
    /// Somebody else.
    Unknown,
}

impl Origin {
    /// `"qsharedmem"`, `"qt"`, `"multiprocessing"` or `"unknown"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Qsharedmem => "qsharedmem",
            Self::Qt => "qt",
            Self::Multiprocessing => "multiprocessing",
            Self::Unknown => "unknown",
        }
    }
}

/// The state of a segment's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockState {
    /// Nobody holds it.
    Free,
    /// A process holds it ([`LockInfo::holder`] when known).
    Held,
    /// Its holder died while holding it. qsharedmem's mutex and System V sets hand it to the
    /// next locker, which is told that the owner died; Qt's POSIX semaphore stays taken forever
    /// (Qt's limitation) until the segment and semaphore are removed.
    OwnerDied,
    /// There is no lock object (e.g. `multiprocessing` segments have none).
    NoLock,
    /// The lock object exists but could not be read.
    Unknown,
}

impl LockState {
    /// `"free"`, `"held"`, `"owner-died"`, `"none"` or `"unknown"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Held => "held",
            Self::OwnerDied => "owner-died",
            Self::NoLock => "none",
            Self::Unknown => "unknown",
        }
    }
}

/// What is known about a segment's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// Free, held, ...
    pub state: LockState,
    /// The pid holding it (or that held it when it died), when known.
    pub holder: Option<i32>,
    /// Processes that may hold it when it cannot be known which (Qt's POSIX semaphore does
    /// not record its holder: the processes that have it open).
    pub suspects: Vec<i32>,
    /// Which OS object the lock is, in words.
    pub primitive: String,
    /// The semaphore's value (semaphores only): 1 free, 0 taken.
    pub value: Option<i32>,
    /// How many processes wait for it (System V only).
    pub waiters: Option<u32>,
    /// How many holders died holding it, over the segment's life (qsharedmem POSIX segments).
    pub owner_deaths: Option<u32>,
}

impl LockInfo {
    fn without(state: LockState, primitive: impl Into<String>) -> Self {
        Self {
            state,
            holder: None,
            suspects: Vec::new(),
            primitive: primitive.into(),
            value: None,
            waiters: None,
            owner_deaths: None,
        }
    }
}

/// One event of a segment's control block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    /// Its name, or `#<index>` for a numbered one.
    pub name: String,
    /// Whether it is set.
    pub set: bool,
    /// How many processes wait for it.
    pub waiters: u32,
}

/// Whether anybody uses a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Usage {
    /// At least one process is attached (or maps it, or has it open).
    InUse,
    /// Nobody is attached, but its creator is still alive (it may attach again).
    Unused,
    /// Nobody is attached and its creator is gone (or unknown, for foreign POSIX segments):
    /// nothing will ever clean it up. [`collect_garbage`] removes these.
    Orphan,
}

impl Usage {
    /// `"in-use"`, `"unused"` or `"orphan"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InUse => "in-use",
            Self::Unused => "unused",
            Self::Orphan => "orphan",
        }
    }
}

/// Everything known about one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// qsharedmem POSIX, foreign POSIX, or System V.
    pub kind: SegmentKind,
    /// Who made it.
    pub origin: Origin,
    /// Its native key (with the legacy key when the segment recorded one), when known: a
    /// System V segment's key file cannot always be found.
    pub key: Option<NativeIpcKey>,
    /// The key a Qt program would pass for it, when it can be recovered: the legacy key
    /// (`QSharedMemory("demo")`) qsharedmem recorded, or the `platformSafeKey()` argument. Qt's
    /// legacy names only keep a hash of their key, which cannot be reversed.
    pub qt_key: Option<String>,
    /// POSIX: the file, `/dev/shm/<name>`.
    pub file: Option<String>,
    /// System V: the key file `ftok()` was given, when it was found.
    pub key_file: Option<String>,
    /// System V: the segment id.
    pub shmid: Option<i32>,
    /// System V: the IPC key (`ftok` result).
    pub ipc_key: Option<i32>,
    /// The size every qsharedmem process reports: the logical size for qsharedmem segments,
    /// the file size for foreign POSIX ones, `shm_segsz` for System V.
    pub size: u64,
    /// POSIX: the size of the data file (exactly `size` for qsharedmem segments).
    pub file_size: Option<u64>,
    /// POSIX: qsharedmem's control block for the segment, `/dev/shm/<name>.qsm`, if it has one.
    pub control_file: Option<String>,
    /// How many processes wait for a notification (`wait_changed`), for segments with a
    /// control block.
    pub notify_waiters: Option<u32>,
    /// The notification generation, for segments with a control block.
    pub generation: Option<u32>,
    /// The events in use: name (or `#<index>`), whether set, how many wait.
    pub events: Vec<EventInfo>,
    /// How many attachments exist: `flock` holders plus other mappers for qsharedmem
    /// segments, processes that map or have open foreign POSIX segments, `shm_nattch` for
    /// System V.
    pub attachments: u64,
    /// The processes attached, as far as they are visible.
    pub pids: Vec<i32>,
    /// System V: the pid of the last `shmat`/`shmdt` (`shm_lpid`).
    pub last_pid: Option<i32>,
    /// The lock.
    pub lock: LockInfo,
    /// The creator's pid, when recorded (qsharedmem's control page, `shm_cpid`).
    pub creator_pid: Option<i32>,
    /// Whether the creator is alive (`None`: creator unknown).
    pub creator_alive: Option<bool>,
    /// When it was created: recorded by qsharedmem, `shm_ctime` for System V, the file's
    /// modification time for foreign POSIX segments.
    pub created: Option<SystemTime>,
    /// The owner's uid.
    pub uid: u32,
    /// The owner's user name.
    pub user: Option<String>,
    /// Permission bits.
    pub mode: u32,
    /// In use, unused or orphan.
    pub usage: Usage,
    /// Anything unusual (unreadable, inconsistent, marked for removal, ...).
    pub note: Option<String>,
    object: Object,
}

/// The OS objects behind a listed segment, to find exactly them again when removing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Object {
    Posix {
        file_name: String,
        file: FileId,
        /// The control block's file and identity, for qsharedmem's and adopted segments.
        control: Option<(String, FileId)>,
        /// Left over by qsharedmem 0.1 (control page at the end of the data).
        old_layout: bool,
    },
    /// A control block whose data file is gone (its remover died between the two unlinks).
    Sidecar { file_name: String, file: FileId },
    SysV {
        shmid: i32,
        ipc_key: i32,
        lock: Option<SysVLock>,
    },
}

/// A System V segment's lock semaphore set.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SysVLock {
    semid: i32,
    /// The set's IPC key.
    ipc_key: i32,
    /// Whether it was derived from the segment's known key file (and so belongs to it and may
    /// be removed with it), rather than guessed from the segment's IPC key.
    derived: bool,
    /// A legacy lock's own key file (`qipc_systemsem_…`), removed with it.
    key_file: Option<String>,
}

impl SegmentInfo {
    /// A string that names exactly this segment and that [`find`] accepts: Qt's string form
    /// of its key (`posix:/demo`, `systemv:/tmp/qipc_sharedmemory_…`) when known, else
    /// `shmid:<id>`.
    #[must_use]
    pub fn id(&self) -> String {
        match (&self.key, &self.object) {
            (Some(key), _) => NativeIpcKey::new(key.native_key(), key.key_type()).to_qt_string(),
            (None, Object::SysV { shmid, .. }) => format!("shmid:{shmid}"),
            (None, Object::Posix { file_name, .. } | Object::Sidecar { file_name, .. }) => {
                format!("posix:/{file_name}")
            }
        }
    }

    /// The native key, or `""` when unknown.
    #[must_use]
    pub fn native_key(&self) -> &str {
        self.key.as_ref().map_or("", NativeIpcKey::native_key)
    }

    /// Whether [`collect_garbage`] would remove it.
    #[must_use]
    pub fn is_orphan(&self) -> bool {
        self.usage == Usage::Orphan
    }

    fn posix_name(&self) -> Option<&str> {
        match &self.object {
            Object::Posix { file_name, .. } | Object::Sidecar { file_name, .. } => Some(file_name),
            Object::SysV { .. } => None,
        }
    }

    fn project_id(&self) -> Option<u8> {
        self.ipc_key.map(|k| (k as u32 >> 24) as u8)
    }
}

/// Why an inspection or removal failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InspectError {
    /// No segment matches the key.
    NotFound {
        /// What was asked for.
        query: String,
    },
    /// Several segments match the key.
    Ambiguous {
        /// What was asked for.
        query: String,
        /// The matching segments' [ids](SegmentInfo::id).
        ids: Vec<String>,
    },
    /// The segment is in use (or its lock is held), so it was left alone.
    InUse {
        /// The segment's [id](SegmentInfo::id).
        id: String,
        /// Who uses it.
        reason: String,
    },
    /// The OS refused.
    Os {
        /// What was being done.
        context: String,
        /// The error number.
        errno: i32,
    },
}

impl InspectError {
    /// An `errno` value for the failure: `ENOENT`, `EINVAL` (ambiguous), `EBUSY` (in use), or
    /// the OS's.
    #[must_use]
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotFound { .. } => Errno::ENOENT.raw(),
            Self::Ambiguous { .. } => Errno::EINVAL.raw(),
            Self::InUse { .. } => Errno::EBUSY.raw(),
            Self::Os { errno, .. } => *errno,
        }
    }

    fn os(context: impl Into<String>, errno: Errno) -> Self {
        Self::Os {
            context: context.into(),
            errno: errno.raw(),
        }
    }

    fn in_use(segment: &SegmentInfo, reason: impl Into<String>) -> Self {
        Self::InUse {
            id: segment.id(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { query } => write!(f, "no shared memory segment matches {query:?}"),
            Self::Ambiguous { query, ids } => write!(
                f,
                "{query:?} matches {} segments: {}; name one of them exactly",
                ids.len(),
                ids.join(", ")
            ),
            Self::InUse { id, reason } => write!(f, "{id} is in use: {reason}"),
            Self::Os { context, errno } => write!(f, "{context}: {}", crate::sys::strerror(*errno)),
        }
    }
}

impl std::error::Error for InspectError {}

/// What `/proc` says about who uses shared memory right now.
struct Snapshot {
    flocks: HashMap<FileId, Vec<FlockHolder>>,
    users: ShmUsers,
}

impl Snapshot {
    /// Reads `/proc`. Called before any file is opened, so that the inspector's own short-lived
    /// descriptors are not counted.
    fn take() -> Result<Self, InspectError> {
        let mut flocks: HashMap<FileId, Vec<FlockHolder>> = HashMap::new();
        for holder in procfs::flock_holders().map_err(|e| InspectError::os("/proc/locks", e))? {
            flocks.entry(holder.file).or_default().push(holder);
        }
        let users = procfs::shm_users().map_err(|e| InspectError::os("/proc", e))?;
        Ok(Self { flocks, users })
    }

    fn flocks_of(&self, file: &FileId) -> &[FlockHolder] {
        self.flocks.get(file).map_or(&[], Vec::as_slice)
    }
}

/// Free and total bytes of the file system behind `/dev/shm` (POSIX segments and named
/// semaphores live there; a container's is often small).
///
/// # Errors
/// The OS's, from `statvfs`.
pub fn shm_space() -> Result<(u64, u64), InspectError> {
    posix::shm_space().map_err(|e| InspectError::os(posix::SHM_DIR, e))
}

#[cfg(test)]
mod tests {
    use super::find::Query;
    use super::list::qt_semaphore_name;
    use super::*;
    use crate::key::KeyType;
    use crate::sys::process;
    use crate::{AccessMode, SharedMemory};

    fn unique(tag: &str) -> String {
        format!("qsm-rs-{}-inspect-{tag}", std::process::id())
    }

    #[test]
    fn queries_are_parsed_by_form() {
        assert!(matches!(Query::parse("shmid:12"), Query::ShmId(12)));
        assert!(matches!(Query::parse("0x5100c092"), Query::IpcKey(k) if k == 0x5100_c092));
        assert!(matches!(
            Query::parse("/dev/shm/abc"),
            Query::Native { native, key_type: Some(KeyType::POSIX_REALTIME) } if native == "/abc"
        ));
        assert!(matches!(
            Query::parse("systemv-84:/tmp/x"),
            Query::Native { native, key_type: Some(t) } if native == "/tmp/x" && t.raw() == 84
        ));
        assert!(matches!(
            Query::parse("/x"),
            Query::Native { key_type: None, .. }
        ));
        assert!(matches!(Query::parse("a:b"), Query::Plain(k) if k == "a:b"));
        assert!(matches!(Query::parse("demo"), Query::Plain(k) if k == "demo"));
    }

    #[test]
    fn qt_semaphore_names() {
        assert_eq!(qt_semaphore_name("demo"), "/demo");
        assert_eq!(
            qt_semaphore_name("qipc_sharedmemory_demo89e4"),
            "/qipc_systemsem_demo89e4"
        );
    }

    #[test]
    fn own_posix_segment_is_listed_without_being_disturbed() {
        let name = unique("posix");
        let key = SharedMemory::platform_safe_key(&name, KeyType::POSIX_REALTIME);
        let mut shm = SharedMemory::with_key(key.clone());
        shm.create(100, AccessMode::ReadWrite).unwrap();
        shm.lock().unwrap().as_mut_slice().unwrap()[..3].copy_from_slice(b"abc");

        let found = lookup(&name, Scope::CurrentUser).unwrap();
        assert_eq!(found.kind, SegmentKind::Posix);
        assert_eq!(found.origin, Origin::Qsharedmem);
        assert_eq!(found.size, 100);
        assert_eq!(found.attachments, 1);
        assert_eq!(found.pids, vec![process::pid()]);
        assert_eq!(found.creator_pid, Some(process::pid()));
        assert_eq!(found.usage, Usage::InUse);
        assert_eq!(found.lock.state, LockState::Free);
        assert_eq!(found.id(), key.to_qt_string());
        assert_eq!(found.qt_key.as_deref(), Some(name.as_str()));
        assert_eq!(preview(&found, 3).unwrap(), b"abc");
        assert_eq!(
            remove(&found, Removal::IfUnused),
            Err(InspectError::in_use(
                &found,
                format!("attached by pid {}", process::pid())
            ))
        );
        assert_eq!(
            remove(&found, Removal::IfOrphan),
            Err(InspectError::in_use(
                &found,
                format!("its creator (pid {}) is alive", process::pid())
            ))
        );
        // Inspection took no lock: the detach is still the last one and removes the segment.
        shm.detach().unwrap();
        assert_eq!(
            lookup(&name, Scope::CurrentUser),
            Err(InspectError::NotFound { query: name })
        );
    }

    #[test]
    fn own_sysv_segment_is_listed_previewed_and_removed_with_its_objects() {
        let dir = std::env::temp_dir().join(unique("sysv"));
        let path = dir.to_str().unwrap().to_owned();
        let key = NativeIpcKey::new(&path, KeyType::SYSTEM_V);
        let mut shm = SharedMemory::with_key(key.clone());
        shm.create(5000, AccessMode::ReadWrite).unwrap();
        shm.lock().unwrap().as_mut_slice().unwrap()[..2].copy_from_slice(b"hi");

        let found = lookup(&key.to_qt_string(), Scope::CurrentUser).unwrap();
        assert_eq!(found.kind, SegmentKind::SystemV);
        assert_eq!(found.size, 5000);
        assert_eq!(found.attachments, 1);
        assert_eq!(found.pids, vec![process::pid()]);
        assert_eq!(found.lock.state, LockState::Free);
        assert_eq!(preview(&found, 2).unwrap(), b"hi");
        assert!(matches!(
            remove(&found, Removal::IfUnused),
            Err(InspectError::InUse { .. })
        ));
        // The preview attached and detached under the lock; our attachment is still the only
        // one, and the segment is still there.
        assert_eq!(lookup(&path, Scope::CurrentUser).unwrap().attachments, 1);

        let removed = remove(&found, Removal::Force).unwrap();
        assert!(removed.iter().any(|r| r == &path), "{removed:?}");
        assert!(!std::path::Path::new(&path).exists());
        drop(shm);
        assert!(find(&path, Scope::CurrentUser).unwrap().is_empty());
    }
}
