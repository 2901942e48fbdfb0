//! System V segments: byte for byte Qt's objects. The key file (created `O_EXCL`, mode 0640),
//! `ftok(file, type)`, `shmget(…, 0600|IPC_CREAT|IPC_EXCL)`, `shmat`; the lock semaphore is
//! Qt's ([`crate::lock::sysv_sem`]). `create()`, `attach()` and `detach()` run under that
//! semaphore as Qt's do, so Qt and qsharedmem never race. The last detacher
//! (`shm_nattch` = 0 after its `shmdt`) removes the segment, its key file and the semaphore
//! with its key file, under the semaphore, so no attacher can slip in between.
//!
//! A segment found by `create()` with nobody attached, whose creator and last user are dead and
//! whose lock existed before (so it was made by Qt or qsharedmem, which make the lock first),
//! is an orphan left by crashes and is reclaimed. One whose creator or last user still lives
//! is someone's (System V segments outlive their processes by design): `AlreadyExists`, as in
//! Qt.

use std::ffi::CString;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::control::ControlMap;
use super::{sysv_notify, AccessMode, Attachment, Failure, Inner, Permissions, Step};
use crate::lock::sysv_sem::SysVSemaphore;
use crate::sys::mapping::Mapping;
use crate::sys::{process, sysv, Errno};
use crate::testpoint;

/// This process's attachment to a System V segment.
#[derive(Debug)]
pub(crate) struct SysVAttachment {
    shmid: i32,
    /// `None` only while the attachment is dropped (`shmdt` goes before the decision).
    mapping: Option<Mapping>,
    key_file: CString,
    project_id: u8,
    lock: Arc<SysVSemaphore>,
    /// The segment's notify block, once this attachment used it (see [`super::sysv_notify`]).
    notify: Mutex<Option<Arc<ControlMap>>>,
}

impl SysVAttachment {
    /// The segment's notify block, made now if nobody made it yet.
    pub(crate) fn notify_block(&self) -> Result<Arc<ControlMap>, Errno> {
        let mut slot = self.notify.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(map) = slot.as_ref() {
            return Ok(Arc::clone(map));
        }
        let map = Arc::new(sysv_notify::open_or_create(self.shmid)?);
        *slot = Some(Arc::clone(&map));
        Ok(map)
    }

    pub(crate) fn shmid(&self) -> i32 {
        self.shmid
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        self.mapping
            .as_ref()
            .expect("mapping lives as long as the attachment")
    }

    pub(crate) fn marked_for_removal(&self) -> bool {
        sysv::shm_stat(self.shmid).map_or(true, |st| st.is_marked_for_removal())
    }

    /// Removes this segment's key now (`IPC_RMID`): nobody can attach to it any more, and it
    /// is destroyed when its last attachment goes; that last detacher also removes the key file
    /// and the lock (unless a new segment took the key). The caller holds the lock.
    /// `Ok(false)` if it was removed already.
    pub(crate) fn remove(&self) -> Result<bool, Failure> {
        match sysv::shm_stat(self.shmid) {
            Ok(st) if !st.is_marked_for_removal() => {}
            Ok(_) | Err(_) => return Ok(false),
        }
        sysv::shm_remove(self.shmid)
            .map(|()| true)
            .map_err(|e| Failure::Os(Step::SysVRemove, e))
    }
}

impl Drop for SysVAttachment {
    fn drop(&mut self) {
        // shmdt needs no lock; only the "was that the last one?" decision does.
        drop(self.mapping.take());
        testpoint::step("detach:unmapped");
        let (shmid, key_file, project_id) = (self.shmid, self.key_file.clone(), self.project_id);
        run_under_lock(
            &self.lock,
            Box::new(move |lock, _| {
                remove_if_unused(shmid, &key_file, project_id, lock);
            }),
        );
    }
}

fn key_file(native_key: &str) -> Result<CString, Failure> {
    if native_key.is_empty() {
        return Err(Failure::EmptyKey);
    }
    sysv::key_path(native_key).map_err(|_| Failure::KeyFile)
}

/// What a `create()` needs beyond the key.
pub(crate) struct CreateSpec<'a> {
    pub(crate) size: usize,
    pub(crate) mode: AccessMode,
    pub(crate) permissions: Permissions,
    /// The lock; the caller holds it.
    pub(crate) lock: &'a Arc<SysVSemaphore>,
    /// Whether the lock existed before the caller opened it (then an orphan can be Qt's or
    /// ours; a lock the caller just made belongs to no segment that anyone made the Qt way).
    pub(crate) lock_preexisted: bool,
}

/// The IPC key of a segment: `ftok(key_file, project_id)`, as Qt derives it.
///
/// A project id of 0x80 or more sets the key's sign bit, and Qt takes every negative key for
/// a failed `ftok`: it reports the `errno` left over from its previous call, which is always
/// `EEXIST` there (the lock's key file, made just before). So does this, for the same keys:
/// Qt can never make such a segment, and one made here could not be shared with Qt.
fn segment_key(key_file: &CString, project_id: u8) -> Result<sysv::IpcKey, Failure> {
    match sysv::ftok(key_file, project_id) {
        Ok(key) if key < 0 => Err(Failure::Os(Step::Ftok, Errno::EEXIST)),
        Ok(key) => Ok(key),
        Err(e) => Err(Failure::Os(Step::Ftok, e)),
    }
}

/// Creates a System V segment the way Qt does, reclaiming an orphan instead of failing.
pub(crate) fn create(
    native_key: &str,
    project_id: u8,
    spec: &CreateSpec<'_>,
) -> Result<Attachment, Failure> {
    let key_file = key_file(native_key)?;
    let created_file = sysv::create_key_file(&key_file).map_err(|_| Failure::KeyFile)?;
    let forget_file = |created: bool| {
        if created {
            let _ = sysv::remove_key_file(&key_file);
        }
    };
    let key = match segment_key(&key_file, project_id) {
        Ok(key) => key,
        Err(e) => {
            forget_file(created_file);
            return Err(e);
        }
    };
    let permissions = spec.permissions.mode;
    let mut attempt = sysv::shm_create(key, spec.size, permissions);
    if attempt == Err(Errno::EEXIST) && spec.lock_preexisted && reclaim_orphan(key) {
        attempt = sysv::shm_create(key, spec.size, permissions);
    }
    let id = match attempt {
        Ok(id) => {
            testpoint::step("create:segment");
            id
        }
        Err(Errno::EINVAL) => {
            forget_file(created_file);
            return Err(Failure::SizeRestrictions);
        }
        Err(e) => {
            if e != Errno::EEXIST {
                forget_file(created_file);
            }
            return Err(Failure::Os(Step::SysVCreate, e));
        }
    };
    if let Some(group) = spec.permissions.group {
        let _ = sysv::shm_set_group(id, group);
    }
    match attach_id(id, key_file.clone(), project_id, spec.mode, spec.lock) {
        Ok(att) => Ok(att),
        Err(e) => {
            let _ = sysv::shm_remove(id);
            forget_file(created_file);
            Err(e)
        }
    }
}

/// An orphan: nobody is attached (`nattch` 0), the lock set existed before this `create()`
/// (a segment made by qsharedmem or Qt, whose last detacher died before removing it: with no
/// lock set the segment is someone else's, e.g. `sysv_ipc`'s, and Qt's answer is
/// `AlreadyExists`), and neither its creator nor its last user is another live process (a
/// live one may come back to it, as System V segments are meant to be used; this process
/// knows it holds no attachment of its own, since it is creating one). The caller holds the
/// lock, so no Qt or qsharedmem process is between creating and attaching it. Returns whether
/// it removed it.
fn reclaim_orphan(key: sysv::IpcKey) -> bool {
    let Ok(old) = sysv::shm_open(key, 0) else {
        return false;
    };
    let me = process::pid();
    let gone = |pid: i32| pid == me || !process::is_alive(pid);
    match sysv::shm_stat(old) {
        Ok(st) if st.attached == 0 && gone(st.creator_pid) && gone(st.last_pid) => {
            let removed = sysv::shm_remove(old).is_ok();
            if removed {
                sysv_notify::remove(old);
            }
            removed
        }
        _ => false,
    }
}

/// Attaches to the System V segment of `native_key` the way Qt does. The caller holds `lock`.
pub(crate) fn attach(
    native_key: &str,
    project_id: u8,
    mode: AccessMode,
    lock: &Arc<SysVSemaphore>,
) -> Result<Attachment, Failure> {
    let key_file = key_file(native_key)?;
    let perms = if mode.is_writable() { 0o600 } else { 0o400 };
    let mut attempts = 0;
    loop {
        let key = segment_key(&key_file, project_id)?;
        let id = sysv::shm_open(key, perms).map_err(|e| Failure::Os(Step::SysVGet, e))?;
        match attach_id(id, key_file.clone(), project_id, mode, lock) {
            // Removed between shmget and shmat (by a process that locked a lock set that
            // replaced ours while the key file was being re-created): look the key up again.
            Err(Failure::Os(_, Errno::EIDRM | Errno::EINVAL)) if attempts < 8 => attempts += 1,
            result => return result,
        }
    }
}

fn attach_id(
    id: i32,
    key_file: CString,
    project_id: u8,
    mode: AccessMode,
    lock: &Arc<SysVSemaphore>,
) -> Result<Attachment, Failure> {
    let st = sysv::shm_stat(id).map_err(|e| Failure::Os(Step::SysVStat, e))?;
    let mapping = Mapping::attach_sysv(id, st.size, mode.is_writable())
        .map_err(|e| Failure::Os(Step::SysVAttach, e))?;
    Ok(Attachment {
        size: st.size,
        writable: mode.is_writable(),
        inner: Inner::SysV(SysVAttachment {
            shmid: id,
            mapping: Some(mapping),
            key_file,
            project_id,
            lock: lock.clone(),
            notify: Mutex::new(None),
        }),
    })
}

/// Whether a System V segment exists for this key file right now.
pub(crate) fn segment_exists(native_key: &str, project_id: u8) -> bool {
    sysv::key_path(native_key)
        .ok()
        .is_some_and(|path| key_in_use(&path, project_id))
}

fn key_in_use(key_file: &CString, project_id: u8) -> bool {
    segment_key(key_file, project_id).is_ok_and(|key| sysv::shm_open(key, 0).is_ok())
}

/// How long a detach that finds the lock busy waits for it before handing the last-detacher
/// check to the background reaper.
const CLEANUP_WAIT: Duration = Duration::from_secs(2);

/// Work that must run while holding a System V lock (a cleanup decision). The flag says that
/// the lock was taken from a holder that died: its death is recorded in the set (the missing
/// token), and the next `lock()` reports it unless the set is removed.
pub(crate) type UnderLock = Box<dyn FnOnce(&SysVSemaphore, HolderDied) + Send>;

/// Whether a lock taken for a cleanup came from a holder that died (see [`UnderLock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HolderDied(pub(crate) bool);

/// Runs `action` under `lock`: at once if this thread holds the lock or it becomes free within
/// [`CLEANUP_WAIT`]; otherwise on the reaper thread, which waits for it. A destructor that
/// calls this never blocks long. Taking the lock re-creates it if it was removed (its creator
/// may have gone while the segment lives on); `action` removes it again if the segment turns
/// out gone.
pub(crate) fn run_under_lock(lock: &Arc<SysVSemaphore>, action: UnderLock) {
    if lock.held_by_current_thread() {
        // This thread's own hold: its death status is its caller's.
        action(lock, HolderDied(false));
        return;
    }
    match lock.lock_for_cleanup(CLEANUP_WAIT) {
        Ok(Some(recovered)) => {
            action(lock, HolderDied(recovered));
            lock.unlock_after_cleanup(recovered);
        }
        Ok(None) => reap_later(lock.clone(), action),
        // The lock cannot even be opened (its key file's directory is gone, say).
        Err(_) => {}
    }
}

/// Removes the segment `shmid` if nobody is attached to it any more, together with its key
/// file and the lock semaphore (and that one's key file). The caller holds the lock.
pub(crate) fn remove_if_unused(
    shmid: i32,
    key_file: &CString,
    project_id: u8,
    lock: &SysVSemaphore,
) {
    match sysv::shm_stat(shmid) {
        Ok(st) if st.attached == 0 => {
            let _ = sysv::shm_remove(shmid);
            sysv_notify::remove(shmid);
            testpoint::step("detach:removed");
            if key_in_use(key_file, project_id) {
                // The key file was removed while we were attached and a new segment made it
                // again: the file and its lock are the new segment's now. Only our old set,
                // which no key leads to any more, goes.
                lock.remove_set_unless_keyed();
            } else {
                remove_key_file_and_lock(key_file, lock);
            }
        }
        // Already destroyed: its key was removed (`remove()`, or `ipcrm`) while we were
        // attached, and our detach was the last one. The key file and the lock were left for
        // us; they go too unless a new segment has taken the key meanwhile (it would share
        // them). Nobody is creating one right now: creators hold the lock, and so do we.
        Err(Errno::EINVAL | Errno::EIDRM) if !key_in_use(key_file, project_id) => {
            sysv_notify::remove(shmid);
            remove_key_file_and_lock(key_file, lock);
        }
        // Gone, and its key taken by a new segment: only its notify block is ours to remove.
        Err(Errno::EINVAL | Errno::EIDRM) => sysv_notify::remove(shmid),
        _ => {}
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

type ReaperJob = (Arc<SysVSemaphore>, UnderLock);

/// The reaper thread of this fork generation: where its jobs go.
struct Reaper {
    fork_generation: u64,
    jobs: mpsc::Sender<ReaperJob>,
}

static REAPER: Mutex<Option<Reaper>> = Mutex::new(None);

/// Starts the reaper thread running `body`. In tests it can be made to fail, as it does when
/// the process may start no more threads.
fn spawn_reaper(body: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    #[cfg(test)]
    if tests::FAIL_NEXT_REAPER_SPAWN.swap(false, std::sync::atomic::Ordering::SeqCst) {
        return Err(std::io::Error::other("no thread may be started (test)"));
    }
    std::thread::Builder::new()
        .name("qsharedmem-reaper".into())
        .spawn(body)
        .map(drop)
}

/// Hands work that needs a busy System V lock to a background thread, which waits for it.
/// A forked child gets a thread of its own: the parent's does not exist there. If no thread
/// can be started, the work waits here instead (once more, for [`CLEANUP_WAIT`]); an orphan it
/// leaves is reclaimed by the next `create()` or by `qsharedmem gc`.
fn reap_later(lock: Arc<SysVSemaphore>, action: UnderLock) {
    fn start() -> Option<Reaper> {
        let (jobs, rx) = mpsc::channel::<ReaperJob>();
        spawn_reaper(move || {
            for (lock, action) in rx {
                loop {
                    match lock.lock_for_cleanup(Duration::from_secs(60)) {
                        Ok(Some(recovered)) => {
                            action(&lock, HolderDied(recovered));
                            lock.unlock_after_cleanup(recovered);
                            break;
                        }
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
            }
        })
        .ok()?;
        Some(Reaper {
            fork_generation: process::fork_generation(),
            jobs,
        })
    }

    let mut job = Some((lock, action));
    if let Some(mut slot) = super::registry::lock_patiently(&REAPER) {
        let current = slot
            .as_ref()
            .is_some_and(|r| r.fork_generation == process::fork_generation());
        if !current {
            *slot = start();
        }
        if let Some(reaper) = slot.as_ref() {
            match reaper.jobs.send(job.take().expect("one job")) {
                Ok(()) => return,
                // The thread is gone: start another next time.
                Err(mpsc::SendError(unsent)) => {
                    job = Some(unsent);
                    *slot = None;
                }
            }
        }
    }
    if let Some((lock, action)) = job {
        if let Ok(Some(recovered)) = lock.lock_for_cleanup(CLEANUP_WAIT) {
            action(&lock, HolderDied(recovered));
            lock.unlock_after_cleanup(recovered);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::lock::sysv_sem::LOCK_SET_SIZE;
    use crate::lock::{Acquired, SemMode};

    pub(super) static FAIL_NEXT_REAPER_SPAWN: AtomicBool = AtomicBool::new(false);

    /// A cleanup job that reports on `ran` that it ran.
    fn job(ran: &mpsc::Sender<&'static str>, name: &'static str) -> UnderLock {
        let ran = ran.clone();
        Box::new(move |_, _| {
            let _ = ran.send(name);
        })
    }

    /// Removes a test's lock set and key file however the test ends.
    struct Removes(Arc<SysVSemaphore>);

    impl Drop for Removes {
        fn drop(&mut self) {
            self.0.remove();
        }
    }

    /// A reaper thread that cannot be started neither drops the job at hand (it runs in place,
    /// as far as the lock lets it) nor the jobs after it (the next one starts a reaper).
    #[test]
    fn a_reaper_that_fails_to_start_drops_no_later_job() {
        let key = std::env::temp_dir()
            .join(format!("qsm-rs-sysv-{}-reaper", std::process::id()))
            .to_string_lossy()
            .into_owned();
        let lock = SysVSemaphore::open(&key, 0x51, 1, LOCK_SET_SIZE, SemMode::Open, 0o600);
        let lock = Arc::new(lock.unwrap());
        let _removes = Removes(Arc::clone(&lock));
        let (ran, done) = mpsc::channel();
        *REAPER.lock().unwrap_or_else(PoisonError::into_inner) = None;

        FAIL_NEXT_REAPER_SPAWN.store(true, Ordering::SeqCst);
        reap_later(Arc::clone(&lock), job(&ran, "first"));
        assert_eq!(done.try_recv(), Ok("first"), "run in place of the reaper");

        assert_eq!(lock.lock_attempt(None), Ok(Some(Acquired::Locked)));
        reap_later(Arc::clone(&lock), job(&ran, "second"));
        assert!(done.try_recv().is_err(), "the reaper waits for the lock");
        lock.unlock(false).unwrap();
        assert_eq!(
            done.recv_timeout(Duration::from_secs(10)),
            Ok("second"),
            "a reaper was started for the next job"
        );
    }
}
