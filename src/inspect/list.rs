//! [`list`]: every segment on the machine, with what is known about it, read without
//! disturbing it.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    EventInfo, InspectError, LockInfo, LockState, Object, Origin, Scope, SegmentInfo, Snapshot,
    SysVLock, Usage, LEGACY_SEGMENT_PREFIX, LEGACY_SEMAPHORE_PREFIX, MULTIPROCESSING_PREFIX,
};
use crate::key::{self, KeyType, NativeIpcKey};
use crate::segment::control::{ControlRecord, NotAControlBlock, SIDECAR_SUFFIX};
use crate::segment::posix::{is_old_layout, sidecar_name};
use crate::segment::{sysv_notify, SegmentKind};
use crate::sys::namedsem::{NamedSemaphore, OpenMode};
use crate::sys::procfs::FileId;
use crate::sys::sysv::{self, ShmStat};
use crate::sys::{posix, process, Errno, SysResult};

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
pub(super) fn list_with_key_files(
    scope: Scope,
    extra_key_files: &[&str],
) -> Result<Vec<SegmentInfo>, InspectError> {
    // The objects first, then who uses them: everything listed had its users when /proc was
    // read (a qsharedmem segment is published with its creator's flock taken, and a Qt or
    // multiprocessing creator holds its descriptor from shm_open on), so a segment just
    // created cannot look unused. One destroyed meanwhile is dropped when it cannot be opened.
    let (data, sidecars) = posix_files(scope)?;
    let sysv = sysv_list(scope)?;
    let snapshot = Snapshot::take()?;
    let mut found: Vec<SegmentInfo> = data
        .iter()
        .filter_map(|(name, listed)| posix_segment(&snapshot, name, *listed))
        .collect();
    // Control blocks whose data file is gone (and System V notify blocks whose segment is;
    // the others are shown with their segment).
    for (name, listed) in &sidecars {
        let data_name = &name[..name.len() - SIDECAR_SUFFIX.len()];
        let sysv_block = sysv_notify::shmid_of(name);
        if sysv_block.is_some_and(|shmid| sysv_notify_record(shmid).is_some()) {
            continue;
        }
        if sysv_block.is_some() || !data.iter().any(|(d, _)| d == data_name) {
            found.extend(lone_sidecar(&snapshot, name, *listed));
        }
    }
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

type Listed = Vec<(String, posix::FileStat)>;

/// The regular files in `/dev/shm` in `scope`, by name: data files, and control blocks
/// (`*.qsm`). Named semaphores (`sem.*`) live there too and are left out.
fn posix_files(scope: Scope) -> Result<(Listed, Listed), InspectError> {
    let entries = std::fs::read_dir(posix::SHM_DIR)
        .map_err(|e| InspectError::os(posix::SHM_DIR, Errno::from_io(&e)))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with("sem."))
        .collect();
    names.sort();
    let (mut data, mut sidecars) = (Vec::new(), Vec::new());
    for name in names {
        let Ok(listed) = posix::stat_name(&name) else {
            continue; // gone meanwhile
        };
        if !listed.is_regular() || !in_scope(scope, listed.uid) {
            continue;
        }
        if name.ends_with(SIDECAR_SUFFIX) {
            sidecars.push((name, listed));
        } else {
            data.push((name, listed));
        }
    }
    Ok((data, sidecars))
}

/// A segment's control block, if `<name>.qsm` is one that describes the data file `data`.
fn control_record(
    name: &str,
    data: crate::segment::FileId,
) -> Option<(String, FileId, ControlRecord)> {
    let side_name = sidecar_name(name);
    let fd = posix::open_existing(&side_name, false).ok()?;
    let st = posix::fstat(fd.as_fd()).ok()?;
    let record = ControlRecord::read(fd.as_fd()).ok()?;
    (record.data == data).then(|| (side_name, FileId::of(&st), record))
}

/// The segment `name` (`None` if it vanished meanwhile).
fn posix_segment(snapshot: &Snapshot, name: &str, listed: posix::FileStat) -> Option<SegmentInfo> {
    let (st, old_layout, note) = match posix::open_existing(name, false) {
        Ok(fd) => {
            let st = posix::fstat(fd.as_fd()).unwrap_or(listed);
            if !st.same_file(&listed) {
                // Replaced after /proc was read: its users are not in the snapshot.
                return None;
            }
            (st, is_old_layout(fd.as_fd(), st.size), None)
        }
        Err(Errno::ENOENT) => return None,
        Err(e) => (listed, false, Some(format!("cannot be read: {}", e.text()))),
    };
    let file = FileId::of(&st);
    let control = control_record(name, crate::segment::FileId::of(&st));
    // qsharedmem attachments hold an flock on the control block (0.1's: on the data file).
    let counted_on = match &control {
        Some((_, side, _)) => *side,
        None => file,
    };
    let holders = snapshot.flocks_of(&counted_on);
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
        control_file: None,
        notify_waiters: None,
        generation: None,
        events: Vec::new(),
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
            control: control.as_ref().map(|(n, id, _)| (n.clone(), *id)),
            old_layout,
        },
    };
    // Every qsharedmem attachment holds one flock; anybody else (Qt, multiprocessing) that
    // maps the file counts once.
    let others = mappers.difference(&holder_pids).count();
    info.attachments = (holders.len() + others) as u64;
    describe_foreign(&mut info, snapshot, name);
    if let Some((side_name, _, record)) = &control {
        describe_control(&mut info, snapshot, name, side_name, record);
    } else if old_layout {
        info.kind = SegmentKind::Posix;
        info.origin = Origin::Qsharedmem;
        info.note = Some(format!(
            "a segment of qsharedmem 0.1's layout (control page at the end), which this \
             version does not attach; `qsharedmem rm posix:/{name}` removes it"
        ));
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

/// What the control block adds: for qsharedmem's own segments the keys, size, creator and
/// lock; for adopted ones (someone else's data) the robust lock qsharedmem processes share.
fn describe_control(
    info: &mut SegmentInfo,
    snapshot: &Snapshot,
    name: &str,
    side_name: &str,
    record: &ControlRecord,
) {
    info.control_file = Some(format!("{}/{side_name}", posix::SHM_DIR));
    info.notify_waiters = Some(record.notify_waiters);
    info.generation = Some(record.generation);
    info.events = events_of(record);
    let qt_lock = info.lock.clone();
    if !record.adopted {
        info.kind = SegmentKind::Posix;
        info.origin = Origin::Qsharedmem;
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
    }
    let (state, holder) = match record.lock_holder {
        0 => match qt_lock.state {
            // No qsharedmem process holds it, but Qt's semaphore is taken: a Qt process.
            LockState::Held | LockState::OwnerDied => (qt_lock.state, qt_lock.holder),
            _ => (LockState::Free, None),
        },
        pid if process::is_alive(pid) => (LockState::Held, Some(pid)),
        pid => (LockState::OwnerDied, Some(pid)),
    };
    let mut primitive = format!("robust mutex in {}/{side_name}", posix::SHM_DIR);
    if qt_lock.state != LockState::NoLock {
        primitive = format!("{primitive}, then {}", qt_lock.primitive);
    }
    info.lock = LockInfo {
        state,
        holder,
        suspects: if record.lock_holder == 0 {
            qt_lock.suspects
        } else {
            Vec::new()
        },
        primitive,
        value: qt_lock.value,
        waiters: None,
        owner_deaths: Some(record.owner_deaths),
    };
    if record.doubtful_holder != 0 {
        let note = format!(
            "pid {} died while taking or giving back Qt's semaphore, and a Qt process may hold \
             it: the next qsharedmem lock() settles it once that is known",
            record.doubtful_holder
        );
        info.note = Some(
            info.note
                .take()
                .map_or(note.clone(), |n| format!("{n}; {note}")),
        );
    }
    let _ = snapshot;
}

/// The events a control block has in use.
fn events_of(record: &ControlRecord) -> Vec<EventInfo> {
    record
        .events
        .iter()
        .map(|(name, set, waiters)| EventInfo {
            name: name.clone(),
            set: *set,
            waiters: *waiters,
        })
        .collect()
}

/// The notify block of the live System V segment `shmid`, if it has one that describes it.
fn sysv_notify_record(shmid: i32) -> Option<ControlRecord> {
    let st = sysv::shm_stat(shmid).ok()?;
    let fd = posix::open_existing(&sysv_notify::file_name(shmid), false).ok()?;
    let record = ControlRecord::read(fd.as_fd()).ok()?;
    (record.sysv_shmid == Some(shmid) && record.creator_pid == st.creator_pid).then_some(record)
}

/// A control block whose data file is gone: its last remover died between the two unlinks
/// (or someone deleted the data by hand). An orphan once nobody holds it.
fn lone_sidecar(snapshot: &Snapshot, name: &str, listed: posix::FileStat) -> Option<SegmentInfo> {
    let fd = posix::open_existing(name, false).ok()?;
    let st = posix::fstat(fd.as_fd()).ok()?;
    let note = match ControlRecord::read(fd.as_fd()) {
        Ok(record) => match record.sysv_shmid {
            Some(shmid) => {
                format!("the wait/notify block of System V segment {shmid}, which no longer exists")
            }
            None => "a control block without its data file".to_owned(),
        },
        Err(NotAControlBlock::Version(v)) => format!("a control block of layout version {v}"),
        // Not ours: some program's file that happens to end in .qsm.
        Err(_) => return None,
    };
    let file = FileId::of(&st);
    let holders = snapshot.flocks_of(&file);
    let pids: Vec<i32> = holders.iter().map(|h| h.pid).filter(|&p| p > 0).collect();
    let data_name = name[..name.len() - SIDECAR_SUFFIX.len()].to_owned();
    Some(SegmentInfo {
        kind: SegmentKind::Posix,
        origin: Origin::Qsharedmem,
        key: Some(NativeIpcKey::new(
            format!("/{data_name}"),
            KeyType::POSIX_REALTIME,
        )),
        qt_key: None,
        file: None,
        key_file: None,
        shmid: None,
        ipc_key: None,
        size: 0,
        file_size: None,
        control_file: Some(format!("{}/{name}", posix::SHM_DIR)),
        notify_waiters: None,
        generation: None,
        events: Vec::new(),
        attachments: holders.len() as u64,
        pids,
        last_pid: None,
        lock: LockInfo::without(LockState::Unknown, "robust mutex (no data)"),
        creator_pid: None,
        creator_alive: None,
        created: time_from_secs(listed.mtime),
        uid: st.uid,
        user: process::user_name(st.uid),
        mode: st.mode & 0o7777,
        usage: if holders.is_empty() {
            Usage::Orphan
        } else {
            Usage::InUse
        },
        note: Some(note),
        object: Object::Sidecar {
            file_name: data_name,
            file,
        },
    })
}

/// Qt's lock semaphore for the POSIX segment `file_name`: `/qipc_systemsem_…` for a legacy
/// name, the segment's own name otherwise.
pub(super) fn qt_semaphore_name(file_name: &str) -> String {
    match file_name.strip_prefix(LEGACY_SEGMENT_PREFIX) {
        Some(rest) => format!("/{LEGACY_SEMAPHORE_PREFIX}{rest}"),
        None => format!("/{file_name}"),
    }
}

/// Origin and Qt's semaphore of a POSIX segment.
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
                    let users: Vec<i32> = snapshot
                        .users
                        .of_file(&FileId::of(&st))
                        .into_iter()
                        .collect();
                    let state = if value > 0 {
                        LockState::Free
                    } else if users.is_empty() {
                        // Taken, and no process has it open: its holder died (Qt's POSIX semaphore
                        // has no undo), so it stays taken until somebody removes it.
                        LockState::OwnerDied
                    } else {
                        LockState::Held
                    };
                    LockInfo {
                        value: Some(value),
                        // Qt's semaphore does not know its holder: one of these has it.
                        suspects: if value > 0 { Vec::new() } else { users },
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
pub(super) fn runtime_dirs() -> Vec<String> {
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

pub(super) fn ftok_of(path: &str, project_id: u8) -> Option<i32> {
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
    let notify = sysv_notify_record(shmid).filter(|r| r.creator_pid == st.creator_pid);
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
        control_file: notify
            .as_ref()
            .map(|_| format!("{}/{}", posix::SHM_DIR, sysv_notify::file_name(shmid))),
        notify_waiters: notify.as_ref().map(|r| r.notify_waiters),
        generation: notify.as_ref().map(|r| r.generation),
        events: notify.as_ref().map_or_else(Vec::new, events_of),
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
    let semid = sysv::sem_open(sem_key, 0).ok()?;
    Some(SysVLock {
        semid,
        ipc_key: sem_key,
        derived,
        key_file: own_key_file,
    })
}

/// The lock's state, and the size of its set (qsharedmem's sets have a second, "consistent"
/// semaphore whose absence means that a holder died).
fn sysv_lock_info(lock: &SysVLock) -> (LockInfo, u64) {
    let semid = lock.semid;
    let set_size = sysv::sem_count(semid).unwrap_or(0);
    let primitive = if set_size >= 3 {
        format!("System V semaphore set {semid} (qsharedmem's: owner-died token, initialised)")
    } else if set_size >= 2 {
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
        suspects: Vec::new(),
        primitive,
        value: Some(value),
        waiters: sysv::sem_waiters(semid, 0)
            .ok()
            .and_then(|n| u32::try_from(n).ok()),
        owner_deaths: None,
    };
    (info, set_size)
}
