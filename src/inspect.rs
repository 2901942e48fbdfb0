//! Seeing and cleaning up shared memory segments: what the `qsharedmem ls / info / rm / gc`
//! commands are built on.
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
//! `flock`s that count qsharedmem attachments, `/proc/<pid>/maps` and `/proc/<pid>/fd` for
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

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::key::{self, IpcObject, KeyType, NativeIpcKey};
use crate::segment::{self, ControlRecord, SegmentKind};
use crate::sys::namedsem::{self, NamedSemaphore, OpenMode};
use crate::sys::procfs::{self, FileId, FlockHolder, ShmUsers};
use crate::sys::sysv::{self, SemOp, ShmStat};
use crate::sys::{mapping::Mapping, posix, process, strerror, Errno, SysResult};

/// The prefix of Qt's legacy segment names (and key files).
const LEGACY_SEGMENT_PREFIX: &str = "qipc_sharedmemory_";
/// The prefix of Qt's legacy semaphore names (and key files).
const LEGACY_SEMAPHORE_PREFIX: &str = "qipc_systemsem_";
/// The prefix of the names `multiprocessing.shared_memory` generates.
const MULTIPROCESSING_PREFIX: &str = "psm_";
/// How long a System V [`preview`] waits for the segment's lock.
const PREVIEW_LOCK_WAIT: Duration = Duration::from_millis(500);

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
            primitive: primitive.into(),
            value: None,
            waiters: None,
            owner_deaths: None,
        }
    }
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
    /// POSIX: the size of the file (for qsharedmem segments: data, padding and control page).
    pub file_size: Option<u64>,
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
    },
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
            (None, Object::Posix { file_name, .. }) => format!("posix:/{file_name}"),
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
            Object::Posix { file_name, .. } => Some(file_name),
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
            Self::NotFound { .. } => libc::ENOENT,
            Self::Ambiguous { .. } => libc::EINVAL,
            Self::InUse { .. } => libc::EBUSY,
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
            Self::Os { context, errno } => write!(f, "{context}: {}", strerror(*errno)),
        }
    }
}

impl std::error::Error for InspectError {}

// ---------------------------------------------------------------------------------------------
// Listing.

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

/// Every shared memory segment in `scope`: POSIX segments first (by name), then System V
/// segments (in the kernel's order).
///
/// # Errors
/// When `/dev/shm` or `/proc` cannot be read.
pub fn list(scope: Scope) -> Result<Vec<SegmentInfo>, InspectError> {
    list_with_key_files(scope, &[])
}

/// [`list`], also matching System V segments to the key files `extra_key_files` (which may be
/// outside the directories Qt uses).
fn list_with_key_files(
    scope: Scope,
    extra_key_files: &[&str],
) -> Result<Vec<SegmentInfo>, InspectError> {
    // The objects first, then who uses them: everything listed had its users when /proc was
    // read (a qsharedmem segment is published with its creator's flock taken, and a Qt or
    // multiprocessing creator holds its descriptor from shm_open on), so a segment just
    // created cannot look unused. One destroyed meanwhile is dropped when it cannot be opened.
    let posix = posix_files(scope)?;
    let sysv = sysv_list(scope)?;
    let snapshot = Snapshot::take()?;
    let mut found: Vec<SegmentInfo> = posix
        .into_iter()
        .filter_map(|(name, listed)| posix_segment(&snapshot, &name, listed))
        .collect();
    if !sysv.is_empty() {
        let key_files = key_files(extra_key_files);
        found.extend(
            sysv.into_iter()
                .map(|(shmid, st)| sysv_segment(&snapshot, &key_files, shmid, &st)),
        );
    }
    Ok(found)
}

fn in_scope(scope: Scope, uid: u32) -> bool {
    scope == Scope::AllUsers || uid == process::euid()
}

fn time_from_secs(secs: i64) -> Option<SystemTime> {
    u64::try_from(secs)
        .ok()
        .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
}

/// The regular files in `/dev/shm` but named semaphores, in `scope`, by name.
fn posix_files(scope: Scope) -> Result<Vec<(String, posix::FileStat)>, InspectError> {
    let entries = std::fs::read_dir(posix::SHM_DIR)
        .map_err(|e| InspectError::os(posix::SHM_DIR, Errno::from_io(&e)))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        // Named semaphores live in the same directory.
        .filter(|name| !name.starts_with("sem."))
        .collect();
    names.sort();
    let mut found = Vec::new();
    for name in names {
        let Ok(listed) = posix::stat_name(&name) else {
            continue; // gone meanwhile
        };
        if listed.is_regular() && in_scope(scope, listed.uid) {
            found.push((name, listed));
        }
    }
    Ok(found)
}

/// The segment `name` (`None` if it vanished meanwhile).
fn posix_segment(snapshot: &Snapshot, name: &str, listed: posix::FileStat) -> Option<SegmentInfo> {
    let (st, record, note) = match posix::open_existing(name, false) {
        Ok(fd) => {
            let st = posix::fstat(fd.as_fd()).unwrap_or(listed);
            if !st.same_file(&listed) {
                // Replaced after /proc was read: its users are not in the snapshot.
                return None;
            }
            match segment::read_control_record(fd.as_fd(), st.size) {
                Ok(record) => (st, record, None),
                Err(e) => (st, None, Some(format!("unusable qsharedmem header: {e}"))),
            }
        }
        Err(Errno::ENOENT) => return None,
        Err(e) => (
            listed,
            None,
            Some(format!("cannot be read: {}", strerror(e.raw()))),
        ),
    };
    let file = FileId::of(&st);
    let holders = snapshot.flocks_of(&file);
    let mappers = snapshot.users.of_file(&file);
    let holder_pids: BTreeSet<i32> = holders.iter().map(|h| h.pid).filter(|&p| p > 0).collect();
    let pids: Vec<i32> = holder_pids.union(&mappers).copied().collect();
    let mut info = SegmentInfo {
        kind: SegmentKind::ForeignPosix,
        origin: Origin::Unknown,
        key: Some(NativeIpcKey::new(
            format!("/{name}"),
            KeyType::POSIX_REALTIME,
        )),
        qt_key: None,
        file: Some(format!("{}/{name}", posix::SHM_DIR)),
        key_file: None,
        shmid: None,
        ipc_key: None,
        size: st.size,
        file_size: Some(st.size),
        attachments: 0,
        pids,
        last_pid: None,
        lock: LockInfo::without(LockState::Unknown, ""),
        creator_pid: None,
        creator_alive: None,
        created: time_from_secs(st.mtime),
        uid: st.uid,
        user: process::user_name(st.uid),
        mode: st.mode & 0o7777,
        usage: Usage::Orphan,
        note,
        object: Object::Posix {
            file_name: name.to_owned(),
            file,
        },
    };
    match record {
        Some(record) => {
            // Every qsharedmem attachment holds one flock; anybody else (Qt, multiprocessing)
            // that maps the file counts once.
            let others = mappers.difference(&holder_pids).count();
            info.attachments = (holders.len() + others) as u64;
            describe_ours(&mut info, name, &record);
        }
        None => {
            let unnamed = holders.iter().filter(|h| h.pid <= 0).count();
            info.attachments = (info.pids.len() + unnamed) as u64;
            describe_foreign(&mut info, snapshot, name);
        }
    }
    info.usage = if info.attachments > 0 {
        Usage::InUse
    } else if info.creator_alive == Some(true) {
        Usage::Unused
    } else {
        Usage::Orphan
    };
    Some(info)
}

fn describe_ours(info: &mut SegmentInfo, name: &str, record: &ControlRecord) {
    info.kind = SegmentKind::Posix;
    info.origin = Origin::Qsharedmem;
    info.size = record.logical_size;
    let native = record
        .native_key
        .clone()
        .filter(|native| posix::shm_file_name(native, false).ok().as_deref() == Some(name))
        .unwrap_or_else(|| format!("/{name}"));
    info.qt_key = match &record.legacy_key {
        Some(legacy) => Some(legacy.clone()),
        None => Some(native.trim_start_matches('/').to_owned()),
    };
    info.key = Some(match &record.legacy_key {
        Some(legacy) => {
            NativeIpcKey::from_parts(native, KeyType::POSIX_REALTIME, Some(legacy.clone()))
        }
        None => NativeIpcKey::new(native, KeyType::POSIX_REALTIME),
    });
    info.creator_pid = Some(record.creator_pid);
    info.creator_alive = Some(process::is_alive(record.creator_pid));
    info.created = UNIX_EPOCH.checked_add(Duration::from_millis(record.created_ms));
    let (state, holder) = match record.lock_owner {
        0 => (LockState::Free, None),
        pid if process::is_alive(pid) => (LockState::Held, Some(pid)),
        pid => (LockState::OwnerDied, Some(pid)),
    };
    info.lock = LockInfo {
        state,
        holder,
        primitive: "robust mutex in the control page".to_owned(),
        value: None,
        waiters: None,
        owner_deaths: Some(record.owner_deaths),
    };
}

/// Qt's lock semaphore for the POSIX segment `file_name`: `/qipc_systemsem_…` for a legacy
/// name, the segment's own name otherwise.
fn qt_semaphore_name(file_name: &str) -> String {
    match file_name.strip_prefix(LEGACY_SEGMENT_PREFIX) {
        Some(rest) => format!("/{LEGACY_SEMAPHORE_PREFIX}{rest}"),
        None => format!("/{file_name}"),
    }
}

fn describe_foreign(info: &mut SegmentInfo, snapshot: &Snapshot, name: &str) {
    let sem_name = qt_semaphore_name(name);
    let sem_file = posix::shm_file_name(&sem_name, true).ok();
    let sem_stat = sem_file.as_deref().and_then(|f| posix::stat_name(f).ok());
    info.origin = if name.starts_with(LEGACY_SEGMENT_PREFIX) {
        Origin::Qt
    } else if name.starts_with(MULTIPROCESSING_PREFIX) {
        Origin::Multiprocessing
    } else if sem_stat.is_some() {
        Origin::Qt
    } else {
        Origin::Unknown
    };
    if !name.starts_with(LEGACY_SEGMENT_PREFIX) {
        info.qt_key = Some(name.to_owned());
    }
    let primitive = format!(
        "Qt's POSIX semaphore {}/{}",
        posix::SHM_DIR,
        sem_file.as_deref().unwrap_or("?")
    );
    info.lock = match sem_stat {
        None => LockInfo::without(LockState::NoLock, "none"),
        Some(st) => {
            match NamedSemaphore::open(&sem_name, OpenMode::Existing).and_then(|sem| sem.value()) {
                Ok(value) => {
                    let state = if value > 0 {
                        LockState::Free
                    } else if snapshot.users.of_file(&FileId::of(&st)).is_empty() {
                        // Taken, and no process has it open: its holder died (Qt's POSIX semaphore
                        // has no undo), so it stays taken until somebody removes it.
                        LockState::OwnerDied
                    } else {
                        LockState::Held
                    };
                    LockInfo {
                        value: Some(value),
                        ..LockInfo::without(state, primitive)
                    }
                }
                Err(_) => LockInfo::without(LockState::Unknown, primitive),
            }
        }
    };
}

/// A file that may be a System V key file, with the part of its `ftok` key that does not depend
/// on the project id.
struct KeyFile {
    path: String,
    ftok_bits: i32,
    in_runtime_dir: bool,
}

const FTOK_FILE_BITS: i32 = 0x00ff_ffff;

/// The directories Qt's runtime location can be, without creating any (Qt's own lookup
/// creates it): `$XDG_RUNTIME_DIR` and `<temp>/runtime-<user>`.
fn runtime_dirs() -> Vec<String> {
    let mut dirs = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").and_then(|v| v.into_string().ok()) {
        if xdg.starts_with('/') {
            dirs.push(xdg);
        }
    }
    let user = process::user_name(process::euid()).unwrap_or_default();
    for temp in temp_dirs() {
        dirs.push(format!("{temp}/runtime-{user}"));
    }
    dirs.dedup();
    dirs
}

/// Where Qt puts legacy key files: `QDir::tempPath()`, and `/tmp` (for programs started with
/// another `$TMPDIR`).
fn temp_dirs() -> Vec<String> {
    let mut dirs = vec![key::temp_path()];
    if dirs[0] != "/tmp" {
        dirs.push("/tmp".to_owned());
    }
    dirs
}

/// Qt's key files: `qipc_*` files in the temp directories, and every file in the runtime
/// directories (where `platformSafeKey(…, SystemV)` puts them).
fn key_files(extra: &[&str]) -> Vec<KeyFile> {
    let mut found = Vec::new();
    let mut seen = BTreeSet::new();
    for path in extra {
        if let (Ok(meta), Some(key)) = (std::fs::metadata(path), ftok_of(path, 1)) {
            if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                found.push(KeyFile {
                    path: (*path).to_owned(),
                    ftok_bits: key & FTOK_FILE_BITS,
                    in_runtime_dir: false,
                });
            }
        }
    }
    let dirs = temp_dirs()
        .into_iter()
        .map(|d| (d, false))
        .chain(runtime_dirs().into_iter().map(|d| (d, true)));
    for (dir, in_runtime_dir) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !in_runtime_dir && !name.starts_with("qipc_") {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let path = format!("{dir}/{name}");
            if let Some(key) = ftok_of(&path, 1) {
                found.push(KeyFile {
                    path,
                    ftok_bits: key & FTOK_FILE_BITS,
                    in_runtime_dir,
                });
            }
        }
    }
    found
}

fn ftok_of(path: &str, project_id: u8) -> Option<i32> {
    let path = sysv::key_path(path).ok()?;
    sysv::ftok(&path, project_id).ok()
}

fn file_name_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// The System V segments in `scope`, in the kernel's order.
fn sysv_list(scope: Scope) -> Result<Vec<(i32, ShmStat)>, InspectError> {
    let segments = match sysv::list_segments() {
        Ok(segments) => segments,
        // A kernel without System V IPC.
        Err(Errno::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(InspectError::os("/proc/sysvipc/shm", e)),
    };
    Ok(segments
        .into_iter()
        .filter(|(_, st)| in_scope(scope, st.uid))
        .collect())
}

fn sysv_segment(
    snapshot: &Snapshot,
    key_files: &[KeyFile],
    shmid: i32,
    st: &ShmStat,
) -> SegmentInfo {
    let project_id = (st.key as u32 >> 24) as u8;
    let candidates: Vec<&KeyFile> = if st.key == 0 {
        Vec::new()
    } else {
        key_files
            .iter()
            .filter(|k| k.ftok_bits == st.key & FTOK_FILE_BITS)
            // A legacy semaphore's key file is never a segment's.
            .filter(|k| !file_name_of(&k.path).starts_with(LEGACY_SEMAPHORE_PREFIX))
            .collect()
    };
    let mut notes = Vec::new();
    let key_file = match candidates.as_slice() {
        [one] => Some(*one),
        [] => None,
        many => {
            let paths: Vec<&str> = many.iter().map(|k| k.path.as_str()).collect();
            notes.push(format!("several possible key files: {}", paths.join(", ")));
            None
        }
    };
    if st.is_marked_for_removal() {
        notes.push("removed; goes away with its last attachment".to_owned());
    }
    let lock = sysv_lock(key_file.map(|k| k.path.as_str()), project_id, st.key);
    let (lock_info, set_size) = match &lock {
        Some(lock) => sysv_lock_info(lock),
        None => (LockInfo::without(LockState::NoLock, "none"), 0),
    };
    let origin = match key_file {
        None => Origin::Unknown,
        Some(_) if set_size >= 2 => Origin::Qsharedmem,
        Some(_) => Origin::Qt,
    };
    let qt_key = key_file
        .filter(|k| k.in_runtime_dir)
        .map(|k| file_name_of(&k.path).to_owned());
    let pids: Vec<i32> = snapshot.users.of_sysv(shmid).into_iter().collect();
    let creator_alive = process::is_alive(st.creator_pid);
    let usage = if st.attached > 0 || !pids.is_empty() {
        Usage::InUse
    } else if creator_alive {
        Usage::Unused
    } else {
        Usage::Orphan
    };
    SegmentInfo {
        kind: SegmentKind::SystemV,
        origin,
        key: key_file.map(|k| NativeIpcKey::new(&k.path, KeyType::from_raw(project_id.into()))),
        qt_key,
        file: None,
        key_file: key_file.map(|k| k.path.clone()),
        shmid: Some(shmid),
        ipc_key: Some(st.key),
        size: st.size as u64,
        file_size: None,
        attachments: st.attached,
        pids,
        last_pid: Some(st.last_pid),
        lock: lock_info,
        creator_pid: Some(st.creator_pid),
        creator_alive: Some(creator_alive),
        created: time_from_secs(st.changed),
        uid: st.uid,
        user: process::user_name(st.uid),
        mode: st.mode & 0o777,
        usage,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        object: Object::SysV {
            shmid,
            ipc_key: st.key,
            lock,
        },
    }
}

/// The lock semaphore set of a System V segment (Qt's rules): a legacy key file
/// `qipc_sharedmemory_X` has its own `qipc_systemsem_X` key file, any other key file is used for
/// both. Without a known key file, a set with the segment's own IPC key is taken to be its lock
/// (for display only; it is never removed on that guess).
fn sysv_lock(key_file: Option<&str>, project_id: u8, segment_key: i32) -> Option<SysVLock> {
    let (sem_key, derived, own_key_file) = match key_file {
        Some(path) => {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            match name.strip_prefix(LEGACY_SEGMENT_PREFIX) {
                Some(rest) => {
                    let sem_file = format!("{dir}/{LEGACY_SEMAPHORE_PREFIX}{rest}");
                    (ftok_of(&sem_file, project_id)?, true, Some(sem_file))
                }
                None => (segment_key, true, None),
            }
        }
        None if segment_key != 0 => (segment_key, false, None),
        None => return None,
    };
    let semid = sysv::sem_get(sem_key, 0, 0).ok()?;
    Some(SysVLock {
        semid,
        derived,
        key_file: own_key_file,
    })
}

/// The lock's state, and the size of its set (qsharedmem's sets have a second, "consistent"
/// semaphore whose absence means that a holder died).
fn sysv_lock_info(lock: &SysVLock) -> (LockInfo, u64) {
    let semid = lock.semid;
    let set_size = sysv::sem_count(semid).unwrap_or(0);
    let primitive = if set_size >= 2 {
        format!("System V semaphore set {semid} (with qsharedmem's owner-died token)")
    } else {
        format!("System V semaphore set {semid}")
    };
    let Ok(value) = sysv::sem_value(semid, 0) else {
        return (LockInfo::without(LockState::Unknown, primitive), set_size);
    };
    let live_pid = |pid: SysResult<i32>| pid.ok().filter(|&p| p > 0);
    let (state, holder) = if value == 0 {
        // The last operation on a taken semaphore was the taking.
        (LockState::Held, live_pid(sysv::sem_last_pid(semid, 0)))
    } else if set_size >= 2 && sysv::sem_value(semid, 1) == Ok(0) {
        // The kernel gave the lock back (SEM_UNDO) but the token is still missing.
        (LockState::OwnerDied, live_pid(sysv::sem_last_pid(semid, 1)))
    } else {
        (LockState::Free, None)
    };
    let info = LockInfo {
        state,
        holder,
        primitive,
        value: Some(value),
        waiters: sysv::sem_waiters(semid, 0)
            .ok()
            .and_then(|n| u32::try_from(n).ok()),
        owner_deaths: None,
    };
    (info, set_size)
}

// ---------------------------------------------------------------------------------------------
// Finding segments by key.

/// What a user typed to name a segment.
enum Query {
    /// `shmid:<id>`.
    ShmId(i32),
    /// `0x<hex>`: a System V IPC key.
    IpcKey(i32),
    /// A native key, with its type when given in Qt's string form.
    Native {
        native: String,
        key_type: Option<KeyType>,
    },
    /// A plain Qt key: a legacy key (`QSharedMemory("demo")`) or a `platformSafeKey()`
    /// argument.
    Plain(String),
}

impl Query {
    fn parse(text: &str) -> Self {
        if let Some(id) = text.strip_prefix("shmid:").and_then(|id| id.parse().ok()) {
            return Self::ShmId(id);
        }
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            if let Ok(key) = u32::from_str_radix(hex, 16) {
                return Self::IpcKey(key as i32);
            }
        }
        if let Some(name) = text.strip_prefix("/dev/shm/") {
            return Self::Native {
                native: format!("/{name}"),
                key_type: Some(KeyType::POSIX_REALTIME),
            };
        }
        if text.starts_with('/') {
            return Self::Native {
                native: text.to_owned(),
                key_type: None,
            };
        }
        if text.contains(':') {
            if let Ok(key) = text.parse::<NativeIpcKey>() {
                if key.is_valid() && !key.is_empty() {
                    return Self::Native {
                        native: key.native_key().to_owned(),
                        key_type: Some(key.key_type()),
                    };
                }
            }
        }
        Self::Plain(text.to_owned())
    }

    fn matches(&self, segment: &SegmentInfo) -> bool {
        match self {
            Self::ShmId(id) => segment.shmid == Some(*id),
            Self::IpcKey(key) => segment.ipc_key == Some(*key),
            Self::Native { native, key_type } => native_matches(segment, native, *key_type),
            Self::Plain(key) => {
                segment.qt_key.as_deref() == Some(key.as_str())
                    || plain_key_natives(key)
                        .iter()
                        .any(|(native, key_type)| native_matches(segment, native, *key_type))
            }
        }
    }
}

/// Every native key a plain key can stand for, most likely first.
fn plain_key_natives(key: &str) -> Vec<(String, Option<KeyType>)> {
    let derived = |k: NativeIpcKey| k.native_key().to_owned();
    let mut natives = vec![
        (
            derived(NativeIpcKey::legacy(
                key,
                IpcObject::SharedMemory,
                KeyType::SYSTEM_V,
            )),
            None,
        ),
        (
            derived(NativeIpcKey::legacy(
                key,
                IpcObject::SharedMemory,
                KeyType::POSIX_REALTIME,
            )),
            Some(KeyType::POSIX_REALTIME),
        ),
        (format!("/{key}"), Some(KeyType::POSIX_REALTIME)),
    ];
    natives.extend(
        runtime_dirs()
            .into_iter()
            .map(|dir| (format!("{dir}/{key}"), None)),
    );
    natives
}

fn native_matches(segment: &SegmentInfo, native: &str, key_type: Option<KeyType>) -> bool {
    match segment.kind {
        SegmentKind::Posix | SegmentKind::ForeignPosix => {
            key_type.is_none_or(KeyType::is_posix)
                && posix::shm_file_name(native, false).ok().as_deref() == segment.posix_name()
        }
        SegmentKind::SystemV => {
            let Some(project_id) = segment.project_id() else {
                return false;
            };
            let type_ok =
                key_type.is_none_or(|t| t.is_system_v() && t.raw() == u16::from(project_id));
            type_ok
                && (segment.key_file.as_deref() == Some(native)
                    // A key file outside the directories Qt uses: ask ftok directly.
                    || ftok_of(native, project_id).is_some_and(|key| Some(key) == segment.ipc_key))
        }
    }
}

/// The segments in `scope` that `query` names: a plain Qt key (`demo`: legacy or
/// platform-safe, any backend), a native key (`/demo`, `/tmp/qipc_sharedmemory_…`), Qt's string
/// form (`posix:/demo`, `systemv-84:/path`), a file in `/dev/shm` (`/dev/shm/demo`), a System
/// V IPC key (`0x5100c092`) or segment id (`shmid:2818055`).
///
/// # Errors
/// As [`list`].
pub fn find(query: &str, scope: Scope) -> Result<Vec<SegmentInfo>, InspectError> {
    let query = Query::parse(query);
    let key_file = match &query {
        Query::Native { native, .. } => vec![native.as_str()],
        _ => Vec::new(),
    };
    Ok(list_with_key_files(scope, &key_file)?
        .into_iter()
        .filter(|segment| query.matches(segment))
        .collect())
}

/// The one segment `query` names (see [`find`]).
///
/// # Errors
/// [`InspectError::NotFound`], [`InspectError::Ambiguous`], or as [`list`].
pub fn lookup(query: &str, scope: Scope) -> Result<SegmentInfo, InspectError> {
    let mut found = find(query, scope)?;
    match found.len() {
        0 => Err(InspectError::NotFound {
            query: query.to_owned(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(InspectError::Ambiguous {
            query: query.to_owned(),
            ids: found.iter().map(SegmentInfo::id).collect(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// Up to `max` bytes from the start of the segment's data, copied.
///
/// POSIX segments are read with `pread` (no mapping, no lock). A System V segment has to be
/// attached; that happens under its lock semaphore (waiting at most half a second), exactly as
/// Qt attaches and detaches, so that no detacher can mistake the inspector for a user.
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
        Object::Posix { file_name, file } => {
            let fd = posix::open_existing(file_name, false).map_err(|e| match e.raw() {
                libc::ENOENT => gone(),
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
        Object::SysV {
            shmid,
            ipc_key,
            lock,
        } => {
            let held = match lock {
                Some(lock) => Some(take_sysv_lock(
                    segment,
                    lock.semid,
                    Some(PREVIEW_LOCK_WAIT),
                )?),
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
                mapping.read_into(0, &mut bytes);
                Ok(bytes)
            })();
            if let Some(semid) = held.flatten() {
                release_sysv_lock(semid);
            }
            result
        }
    }
}

const TAKE_SYSV_LOCK: SemOp = SemOp {
    num: 0,
    delta: -1,
    undo: true,
    no_wait: false,
};

/// Takes semaphore 0 of the set (with `SEM_UNDO`, as Qt does; qsharedmem's owner-died token is
/// not touched). `Ok(None)` if the set no longer exists; `InUse` if it stays taken.
fn take_sysv_lock(
    segment: &SegmentInfo,
    semid: i32,
    wait: Option<Duration>,
) -> Result<Option<i32>, InspectError> {
    let op = SemOp {
        no_wait: wait.is_none(),
        ..TAKE_SYSV_LOCK
    };
    loop {
        match sysv::sem_op(semid, &[op], wait) {
            Ok(()) => return Ok(Some(semid)),
            Err(Errno::EINTR) => continue,
            Err(Errno::EIDRM | Errno::EINVAL) => return Ok(None),
            Err(Errno::EAGAIN) => {
                let holder = sysv::sem_last_pid(semid, 0)
                    .ok()
                    .filter(|&p| p > 0)
                    .map_or_else(String::new, |pid| format!(" by pid {pid}"));
                return Err(InspectError::in_use(
                    segment,
                    format!("its lock is held{holder}"),
                ));
            }
            Err(e) => return Err(InspectError::os("semop", e)),
        }
    }
}

fn release_sysv_lock(semid: i32) {
    let give = SemOp {
        delta: 1,
        ..TAKE_SYSV_LOCK
    };
    // If the set was removed meanwhile there is nothing to give back.
    let _ = sysv::sem_op(semid, &[give], None);
}

// ---------------------------------------------------------------------------------------------
// Removing.

/// How careful [`remove`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Removal {
    /// Only if nobody is attached.
    IfUnused,
    /// Only if nobody is attached and the creator is gone ([`Usage::Orphan`]).
    IfOrphan,
    /// Even if processes are attached: they keep their memory until they detach, but nobody
    /// can attach any more, and the name is free for a new segment.
    Force,
}

/// Removes a segment found by [`list`]/[`find`], with what belongs to it: a System V segment's
/// key file and lock semaphore (and that one's key file), a POSIX segment's Qt semaphore if no
/// process uses it. Returns the objects removed (empty if the segment was already gone).
///
/// Usage is checked again right before removing (see the module documentation).
///
/// # Errors
/// [`InspectError::InUse`] when `how` forbids removing a segment in use (or a System V lock is
/// held); the OS's error (e.g. `EACCES` for another user's segment).
pub fn remove(segment: &SegmentInfo, how: Removal) -> Result<Vec<String>, InspectError> {
    if how == Removal::IfOrphan {
        if let Some(pid) = segment.creator_pid.filter(|&pid| process::is_alive(pid)) {
            return Err(InspectError::in_use(
                segment,
                format!("its creator (pid {pid}) is alive"),
            ));
        }
    }
    match &segment.object {
        Object::Posix { file_name, file } => remove_posix(segment, file_name, *file, how),
        Object::SysV {
            shmid,
            ipc_key,
            lock,
        } => remove_sysv(segment, *shmid, *ipc_key, lock.as_ref(), how),
    }
}

fn users_text(pids: &BTreeSet<i32>, extra: usize) -> String {
    let mut parts: Vec<String> = pids.iter().map(|p| format!("pid {p}")).collect();
    if extra > 0 {
        parts.push(format!("{extra} more"));
    }
    if parts.is_empty() {
        "attached".to_owned()
    } else {
        format!("attached by {}", parts.join(", "))
    }
}

fn remove_posix(
    segment: &SegmentInfo,
    file_name: &str,
    file: FileId,
    how: Removal,
) -> Result<Vec<String>, InspectError> {
    let path = format!("{}/{file_name}", posix::SHM_DIR);
    let snapshot = Snapshot::take()?;
    if how != Removal::Force {
        let mut users = snapshot.users.of_file(&file);
        let holders = snapshot.flocks_of(&file);
        users.extend(holders.iter().map(|h| h.pid).filter(|&p| p > 0));
        let unnamed = holders.iter().filter(|h| h.pid <= 0).count();
        if !users.is_empty() || unnamed > 0 {
            return Err(InspectError::in_use(segment, users_text(&users, unnamed)));
        }
    }
    let mut removed = Vec::new();
    let fd = match posix::open_existing(file_name, false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(removed),
        Err(e) => return Err(InspectError::os(format!("opening {path}"), e)),
    };
    let st = posix::fstat(fd.as_fd()).map_err(|e| InspectError::os("fstat", e))?;
    if FileId::of(&st) != file {
        // Replaced by a new segment since it was listed: not the one asked for.
        return Ok(removed);
    }
    let unlinked = if segment.kind == SegmentKind::Posix && how != Removal::Force {
        drop(fd);
        // qsharedmem's own protocol: only with the exclusive flock, which proves that no
        // attachment exists and keeps new attachers waiting until the name is gone.
        match segment::reclaim_orphan(file_name) {
            Ok(true) => true,
            Ok(false) => {
                return Err(InspectError::in_use(segment, "a process holds it"));
            }
            Err(e) => {
                return Err(InspectError::Os {
                    context: format!("removing {path}"),
                    errno: e.errno().unwrap_or(libc::EIO),
                })
            }
        }
    } else {
        posix::unlink_if_same(file_name, fd.as_fd())
            .map_err(|e| InspectError::os(format!("removing {path}"), e))?
    };
    if unlinked {
        removed.push(path);
    }
    removed.extend(remove_unused_qt_semaphore(&snapshot, file_name));
    Ok(removed)
}

/// Removes Qt's semaphore of the POSIX segment `file_name` if it exists and no process has it
/// open (a Qt process that crashed while holding it left it taken forever).
fn remove_unused_qt_semaphore(snapshot: &Snapshot, file_name: &str) -> Option<String> {
    let sem_name = qt_semaphore_name(file_name);
    let sem_file = posix::shm_file_name(&sem_name, true).ok()?;
    let st = posix::stat_name(&sem_file).ok()?;
    if !snapshot.users.of_file(&FileId::of(&st)).is_empty() {
        return None;
    }
    namedsem::unlink(&sem_name).ok()?;
    Some(format!("{}/{sem_file}", posix::SHM_DIR))
}

fn remove_sysv(
    segment: &SegmentInfo,
    shmid: i32,
    ipc_key: i32,
    lock: Option<&SysVLock>,
    how: Removal,
) -> Result<Vec<String>, InspectError> {
    // Under the lock, as Qt's and qsharedmem's create/attach/detach run: nobody can be between
    // finding the segment and attaching to it while it is removed.
    let held = match lock {
        Some(lock) => match take_sysv_lock(segment, lock.semid, None) {
            Ok(held) => held,
            Err(InspectError::InUse { .. }) if how == Removal::Force => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let result = remove_sysv_locked(segment, shmid, ipc_key, lock, how);
    let lock_removed = matches!(&result, Ok((_, true)));
    if let (Some(semid), false) = (held, lock_removed) {
        release_sysv_lock(semid);
    }
    result.map(|(removed, _)| removed)
}

/// Returns the objects removed and whether the lock set was among them.
fn remove_sysv_locked(
    segment: &SegmentInfo,
    shmid: i32,
    ipc_key: i32,
    lock: Option<&SysVLock>,
    how: Removal,
) -> Result<(Vec<String>, bool), InspectError> {
    let mut removed = Vec::new();
    let st = match sysv::shm_stat(shmid) {
        Ok(st) if st.key == ipc_key => st,
        // Gone meanwhile (or the id now names another segment).
        _ => return Ok((removed, false)),
    };
    if how != Removal::Force && st.attached > 0 {
        let pids: BTreeSet<i32> = procfs::shm_users()
            .map(|users| users.of_sysv(shmid))
            .unwrap_or_default();
        let hidden = usize::try_from(st.attached)
            .unwrap_or(usize::MAX)
            .saturating_sub(pids.len());
        return Err(InspectError::in_use(segment, users_text(&pids, hidden)));
    }
    if how == Removal::IfOrphan && process::is_alive(st.creator_pid) {
        return Err(InspectError::in_use(
            segment,
            format!("its creator (pid {}) is alive", st.creator_pid),
        ));
    }
    sysv::shm_remove(shmid).map_err(|e| InspectError::os("shmctl(IPC_RMID)", e))?;
    removed.push(format!(
        "System V segment {shmid} (key 0x{:08x})",
        ipc_key as u32
    ));
    let project_id = (ipc_key as u32 >> 24) as u8;
    if let Some(path) = &segment.key_file {
        // Only the file the key was made from (it could have been replaced meanwhile).
        if ftok_of(path, project_id) == Some(ipc_key) && remove_file(path) {
            removed.push(path.clone());
        }
    }
    let mut lock_removed = false;
    if let Some(lock) = lock.filter(|lock| lock.derived) {
        if sysv::sem_remove(lock.semid).is_ok() {
            lock_removed = true;
            removed.push(format!("System V semaphore set {}", lock.semid));
        }
        if let Some(path) = &lock.key_file {
            if remove_file(path) {
                removed.push(path.clone());
            }
        }
    }
    Ok((removed, lock_removed))
}

fn remove_file(path: &str) -> bool {
    sysv::key_path(path)
        .ok()
        .is_some_and(|path| sysv::remove_key_file(&path).is_ok())
}

/// Removes the segment `query` names (see [`find`]); `force` removes it even while processes
/// are attached. Returns the segment and the objects removed.
///
/// # Errors
/// As [`lookup`] and [`remove`].
pub fn remove_key(
    query: &str,
    scope: Scope,
    force: bool,
) -> Result<(SegmentInfo, Vec<String>), InspectError> {
    let segment = lookup(query, scope)?;
    let how = if force {
        Removal::Force
    } else {
        Removal::IfUnused
    };
    let removed = remove(&segment, how)?;
    Ok((segment, removed))
}

/// What [`collect_garbage`] did with one orphan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcOutcome {
    /// The orphan, as listed.
    pub segment: SegmentInfo,
    /// The objects removed (empty in a dry run, or if it vanished meanwhile).
    pub removed: Vec<String>,
    /// Why it was left alone (it came into use, its lock is held, permission, ...).
    pub skipped: Option<InspectError>,
}

/// Removes every [orphan](Usage::Orphan) in `scope` that `filter` accepts; with `dry_run`,
/// only reports them. Segments in use are never touched; an orphan that comes into use before
/// it is removed is skipped.
///
/// # Errors
/// As [`list`]. Failures to remove single segments are reported in their [`GcOutcome`].
pub fn collect_garbage(
    scope: Scope,
    dry_run: bool,
    filter: &mut dyn FnMut(&SegmentInfo) -> bool,
) -> Result<Vec<GcOutcome>, InspectError> {
    let mut outcomes = Vec::new();
    for segment in list(scope)? {
        if !segment.is_orphan() || !filter(&segment) {
            continue;
        }
        let (removed, skipped) = if dry_run {
            (Vec::new(), None)
        } else {
            match remove(&segment, Removal::IfOrphan) {
                Ok(removed) => (removed, None),
                Err(e) => (Vec::new(), Some(e)),
            }
        };
        outcomes.push(GcOutcome {
            segment,
            removed,
            skipped,
        });
    }
    Ok(outcomes)
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
    use super::*;
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
