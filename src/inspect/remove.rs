//! [`remove`] and [`collect_garbage`]: deleting segments, with the library's own removal code,
//! so that the CLI removes a segment exactly as its last detacher would.

use std::collections::BTreeSet;
use std::os::fd::AsFd;

use super::list::{ftok_of, list, qt_semaphore_name};
use super::{InspectError, Object, Scope, SegmentInfo, Snapshot, SysVLock};
use crate::lock::sysv_sem::{self, SysVSemaphore};
use crate::segment::posix as posix_segment;
use crate::segment::{sysv as sysv_segment, sysv_notify, Failure, SegmentKind};
use crate::sys::namedsem;
use crate::sys::procfs::{self, FileId};
use crate::sys::{posix, process, sysv, Errno};
use crate::wait::uninterrupted;

/// How careful [`remove`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Removal {
    /// Only if nobody is attached.
    IfUnused,
    /// Only if nobody is attached and the creator is gone ([`super::Usage::Orphan`]).
    IfOrphan,
    /// Even if processes are attached: they keep their memory until they detach, but nobody
    /// can attach any more, and the name is free for a new segment.
    Force,
}

/// Removes a segment found by [`list`]/[`super::find`], with what belongs to it: a System V
/// segment's key file and lock semaphore (and that one's key file), a POSIX segment's control
/// block, and its Qt semaphore if no process uses it. Returns the objects removed (empty if the
/// segment was already gone).
///
/// Usage is checked again right before removing, by the protocol the library itself follows: a
/// qsharedmem segment only goes if `flock(LOCK_EX|LOCK_NB)` on its control block proves that
/// nobody holds it, a System V segment only under its lock semaphore with `shm_nattch` 0, a
/// foreign POSIX segment only if no process maps it or has it open. Unless forced, a segment in
/// use is never removed.
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
        Object::Posix {
            file_name,
            file,
            control,
            old_layout,
        } => remove_posix(
            segment,
            file_name,
            *file,
            control.as_ref(),
            *old_layout,
            how,
        ),
        Object::Sidecar { file_name, file } => remove_sidecar(segment, file_name, *file, how),
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

fn failure(path: &str, failure: &Failure) -> InspectError {
    InspectError::Os {
        context: format!("removing {path}"),
        errno: failure.errno().unwrap_or(Errno::EIO).raw(),
    }
}

fn remove_posix(
    segment: &SegmentInfo,
    file_name: &str,
    file: FileId,
    control: Option<&(String, FileId)>,
    old_layout: bool,
    how: Removal,
) -> Result<Vec<String>, InspectError> {
    let path = format!("{}/{file_name}", posix::SHM_DIR);
    let snapshot = Snapshot::take()?;
    if how != Removal::Force {
        let counted_on = control.map_or(file, |(_, side)| *side);
        let mut users = snapshot.users.of_file(&file);
        let holders = snapshot.flocks_of(&counted_on);
        users.extend(holders.iter().map(|h| h.pid).filter(|&p| p > 0));
        let unnamed = holders.iter().filter(|h| h.pid <= 0).count();
        if !users.is_empty() || unnamed > 0 {
            return Err(InspectError::in_use(segment, users_text(&users, unnamed)));
        }
    }
    let mut removed = Vec::new();
    match posix::stat_name(file_name) {
        Ok(st) if FileId::of(&st) == file => {}
        // Gone, or replaced by a new segment since it was listed: not the one asked for.
        _ => return Ok(removed),
    }
    let ours = segment.kind == SegmentKind::Posix;
    if how == Removal::Force {
        // What remove() does: the names go now, attachments keep the memory.
        let expected = crate::segment::FileId {
            dev: posix::stat_name(file_name).map_or(0, |st| st.dev),
            ino: file.ino,
        };
        match posix_segment::remove_names(file_name, Some(expected), &mut uninterrupted) {
            Ok(posix_segment::Removal::Removed) => removed.push(path),
            Ok(_) => {}
            Err(f) => return Err(failure(file_name, &f)),
        }
        if let Some((side_name, _)) = control {
            if !posix_segment::exists(side_name) {
                removed.push(format!("{}/{side_name}", posix::SHM_DIR));
            }
        }
    } else if control.is_some() {
        // qsharedmem's own protocol: only with the exclusive flock on the control block,
        // which proves that no attachment exists.
        match posix_segment::remove_if_unheld(file_name) {
            Ok(Some(gone)) => removed.extend(gone),
            Ok(None) => return Err(InspectError::in_use(segment, "a process holds it")),
            Err(f) => return Err(failure(&path, &f)),
        }
    } else if old_layout {
        if !posix_segment::reclaim_old_layout_orphan(file_name) {
            return Err(InspectError::in_use(segment, "a process holds it"));
        }
        removed.push(path);
    } else {
        let fd = match posix::open_existing(file_name, false) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(removed),
            Err(e) => return Err(InspectError::os(format!("opening {path}"), e)),
        };
        if posix::unlink_if_same(file_name, fd.as_fd())
            .map_err(|e| InspectError::os(format!("removing {path}"), e))?
        {
            removed.push(path);
        }
    }
    if ours || control.is_none() {
        removed.extend(remove_unused_qt_semaphore(&snapshot, file_name));
    }
    Ok(removed)
}

/// A control block whose data is gone.
fn remove_sidecar(
    segment: &SegmentInfo,
    file_name: &str,
    file: FileId,
    how: Removal,
) -> Result<Vec<String>, InspectError> {
    let side_name = posix_segment::sidecar_name(file_name);
    let fd = match posix::open_existing(&side_name, false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(InspectError::os(format!("opening {side_name}"), e)),
    };
    let st = posix::fstat(fd.as_fd()).map_err(|e| InspectError::os("fstat", e))?;
    if FileId::of(&st) != file {
        return Ok(Vec::new());
    }
    if how != Removal::Force && posix::try_lock_exclusive(fd.as_fd()) != Ok(true) {
        return Err(InspectError::in_use(segment, "a process holds it"));
    }
    match posix::unlink_if_same(&side_name, fd.as_fd()) {
        Ok(true) => Ok(vec![format!("{}/{side_name}", posix::SHM_DIR)]),
        Ok(false) => Ok(Vec::new()),
        Err(e) => Err(InspectError::os(format!("removing {side_name}"), e)),
    }
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
    let sem = lock.filter(|lock| lock.derived).and_then(|lock| {
        let name = lock
            .key_file
            .clone()
            .or_else(|| segment.key_file.clone())
            .unwrap_or_default();
        SysVSemaphore::existing(&name, lock.ipc_key)
    });
    let held = match &sem {
        Some(sem) => match sem.lock_for_cleanup(std::time::Duration::ZERO) {
            Ok(Some(recovered)) => Some(recovered),
            Ok(None) if how == Removal::Force => None,
            Ok(None) => {
                return Err(InspectError::in_use(
                    segment,
                    super::preview::held_text(sem),
                ))
            }
            Err(_) => None,
        },
        None => None,
    };
    let result = remove_sysv_locked(segment, shmid, ipc_key, sem.as_ref(), how);
    if let (Some(sem), Some(recovered)) = (&sem, held) {
        sem.unlock_after_cleanup(recovered);
    }
    result
}

fn remove_sysv_locked(
    segment: &SegmentInfo,
    shmid: i32,
    ipc_key: i32,
    sem: Option<&SysVSemaphore>,
    how: Removal,
) -> Result<Vec<String>, InspectError> {
    let mut removed = Vec::new();
    let st = match sysv::shm_stat(shmid) {
        Ok(st) if st.key == ipc_key => st,
        // Gone meanwhile (or the id now names another segment).
        _ => return Ok(removed),
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
    let project_id = (ipc_key as u32 >> 24) as u8;
    let key_file = segment
        .key_file
        .as_deref()
        // Only the file the key was made from (it could have been replaced meanwhile).
        .filter(|path| ftok_of(path, project_id) == Some(ipc_key));
    let lock_name = sem.map(|s| s.native_key().to_owned());
    let key_file_existed = key_file.is_some_and(exists);
    let lock_file_existed = lock_name.as_deref().is_some_and(exists);
    let notify_block = format!("{}/{}", posix::SHM_DIR, sysv_notify::file_name(shmid));
    let notify_block_existed = exists(&notify_block);
    match (key_file, sem) {
        // What the last detacher does: segment, key file, lock and its key file.
        (Some(key_file), Some(sem)) if st.attached == 0 => {
            let key_file = sysv::key_path(key_file).map_err(|e| InspectError::os("key", e))?;
            sysv_segment::remove_if_unused(shmid, &key_file, project_id, sem);
        }
        // Forced while attached: the segment goes with its last attachment, and its key file
        // and lock now, so that the key is free for a new segment at once (the attachments
        // re-create a lock if they lock again, as Qt's would).
        _ => {
            sysv::shm_remove(shmid).map_err(|e| InspectError::os("shmctl(IPC_RMID)", e))?;
            if st.attached == 0 {
                // Destroyed at once: its notify block too (attachments keep theirs, and their
                // last detacher removes it).
                sysv_notify::remove(shmid);
            }
            if let Some(path) = key_file {
                if let Ok(path) = sysv::key_path(path) {
                    let _ = sysv::remove_key_file(&path);
                }
            }
            if let Some(sem) = sem {
                sem.remove();
            }
        }
    }
    if sysv::shm_stat(shmid).is_err() || st.attached > 0 {
        removed.push(format!(
            "System V segment {shmid} (key 0x{:08x})",
            ipc_key as u32
        ));
    }
    if let Some(path) = key_file.filter(|p| key_file_existed && !exists(p)) {
        removed.push(path.to_owned());
    }
    if notify_block_existed && !exists(&notify_block) {
        removed.push(notify_block);
    }
    if let (Some(sem), Some(name)) = (sem, &lock_name) {
        if !sem.is_open() {
            removed.push("System V semaphore set (the lock)".to_owned());
            if lock_file_existed && !exists(name) && Some(name.as_str()) != key_file {
                removed.push(name.clone());
            }
        }
    }
    Ok(removed)
}

fn exists(path: &str) -> bool {
    std::path::Path::new(path).exists()
}

/// Removes the segment `query` names (see [`super::find`]); `force` removes it even while
/// processes are attached. Returns the segment and the objects removed.
///
/// # Errors
/// As [`super::lookup`] and [`remove`].
pub fn remove_key(
    query: &str,
    scope: Scope,
    force: bool,
) -> Result<(SegmentInfo, Vec<String>), InspectError> {
    let segment = super::lookup(query, scope)?;
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

/// Removes every [orphan](super::Usage::Orphan) in `scope` that `filter` accepts; with
/// `dry_run`, only reports them. Segments in use are never touched; an orphan that comes into
/// use before it is removed is skipped. Also removes this user's System V lock sets that a
/// remover killed halfway left behind (they have no key file, and no segment to list).
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
    if !dry_run {
        sysv_sem::remove_abandoned_sets();
    }
    Ok(outcomes)
}
