//! Qt's `QSystemSemaphore` backend for System V keys: a semaphore set found by
//! `ftok(<key file>, <type>)`, every operation with `SEM_UNDO` (crash-safe), opened, created,
//! taken over and cleaned up as Qt 6.12 does; plus the lock protocol of `QSharedMemory`'s System
//! V locks, which adds owner-death detection to Qt's semaphore without changing what Qt sees.
//!
//! Owner death: sets that qsharedmem creates for a lock have a second semaphore, a "consistent"
//! token (value 1). A qsharedmem locker takes semaphore 0 *with* `SEM_UNDO` and the token
//! *without* it, atomically, and gives both back on unlock. If the holder dies, the kernel
//! returns semaphore 0 but the token stays taken; the next locker finds the lock free and the
//! token missing, takes the lock alone, reports that the owner died, and restores the token
//! when it unlocks. Qt only ever touches semaphore 0, so it interoperates unchanged.
//!
//! This file is the semaphore set as Qt uses it; `lock_protocol` adds the token, `retire` the
//! marking that makes a removal safe against a remover's death.

mod lock_protocol;
mod retire;

pub(crate) use retire::remove_abandoned_sets;
use retire::{retire, retirement, Retirement};

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::SemMode;
use crate::error::{SemaphoreError, SemaphoreErrorKind};
use crate::sys::sysv::{self, SemOp};
use crate::sys::Errno;
use crate::testpoint;

/// System V semaphore sets that qsharedmem creates for `QSharedMemory` locks have this many
/// semaphores: number 0 is Qt's lock, number 1 is a "consistent" token that a holder takes
/// without `SEM_UNDO`, so that a holder's death leaves it missing (see [`crate::lock`]), and
/// number 2 is raised once the set is initialised (see `SysVSemaphore::initialise`).
pub(crate) const LOCK_SET_SIZE: i32 = 3;

/// The size of the sets that qsharedmem creates for a `QSystemSemaphore`: its value, and the
/// "initialised" flag.
pub(crate) const COUNTER_SET_SIZE: i32 = 2;

/// A System V semaphore set used the way Qt's `QSystemSemaphorePrivate` (systemv) uses it.
#[derive(Debug)]
pub(crate) struct SysVSemaphore {
    native_key: String,
    key_file: CString,
    project_id: u8,
    initial_value: i32,
    /// Size of the set when we create it ([`COUNTER_SET_SIZE`] or [`LOCK_SET_SIZE`]).
    create_size: i32,
    /// Permission bits of the set (and key file) when we create them (Qt: 0600).
    permissions: u32,
    semid: AtomicI32,
    /// How many semaphores the open set has (a set Qt created has 1).
    size: AtomicI32,
    created_file: AtomicBool,
    created_semaphore: AtomicBool,
    reopen: Mutex<()>,
    /// Whether an operation that finds the set removed opens (or re-creates) it again, as Qt
    /// does; not for an inspector's look at an existing set.
    recreate: bool,
}

/// Why one attempt to open a set did not give a usable set.
enum Retry {
    /// The set was removed between finding it and initialising it.
    Removed,
    Failed(SemaphoreError),
}

fn sem_err(function: &str, errno: Errno) -> SemaphoreError {
    SemaphoreError::from_errno(function, errno)
}

impl SysVSemaphore {
    /// Qt's `handle(mode)` for a System V key: creates the key file (0640, `O_EXCL`), derives
    /// the IPC key with `ftok`, opens or creates the set, and sets its initial value when it
    /// created it (or, in Qt's `Create` mode only, always).
    pub(crate) fn open(
        native_key: &str,
        project_id: u8,
        initial_value: i32,
        create_size: i32,
        mode: SemMode,
        permissions: u32,
    ) -> Result<Self, SemaphoreError> {
        if native_key.is_empty() {
            return Err(SemaphoreError::new(
                SemaphoreErrorKind::KeyError,
                "QSystemSemaphore::handle:: key is empty",
            ));
        }
        let key_file = sysv::key_path(native_key).map_err(|_| {
            SemaphoreError::new(
                SemaphoreErrorKind::KeyError,
                "QSystemSemaphore::handle:: unable to make key",
            )
        })?;
        let sem = Self {
            native_key: native_key.to_owned(),
            key_file,
            project_id,
            initial_value,
            create_size,
            permissions,
            semid: AtomicI32::new(-1),
            size: AtomicI32::new(0),
            created_file: AtomicBool::new(false),
            created_semaphore: AtomicBool::new(false),
            reopen: Mutex::new(()),
            recreate: true,
        };
        if let Err(e) = sem.handle(mode) {
            // Qt keeps a failed object around and cleans it up when it is destroyed; this one
            // is dropped now, so a key file it created (before ftok or semget failed) goes now.
            let _ = sem.clean_handle();
            return Err(e);
        }
        Ok(sem)
    }

    /// The existing set with the IPC key `key`, for inspection tools: nothing is created, and
    /// nothing is owned (dropping it removes nothing). `native_key` names it (its key file,
    /// when known).
    pub(crate) fn existing(native_key: &str, key: sysv::IpcKey) -> Option<Self> {
        let id = sysv::sem_open(key, 0).ok()?;
        let size = sysv::sem_count(id)
            .ok()
            .and_then(|n| i32::try_from(n).ok())?;
        Some(Self {
            native_key: native_key.to_owned(),
            key_file: sysv::key_path(native_key).unwrap_or_default(),
            project_id: (key as u32 >> 24) as u8,
            initial_value: 1,
            create_size: LOCK_SET_SIZE,
            permissions: 0o600,
            semid: AtomicI32::new(id),
            size: AtomicI32::new(size),
            created_file: AtomicBool::new(false),
            created_semaphore: AtomicBool::new(false),
            reopen: Mutex::new(()),
            recreate: false,
        })
    }

    /// Qt's key file, `ftok` and `semget`: the set's id and whether this call created it.
    ///
    /// The last user of a segment removes its key file and set at any moment (under the lock,
    /// but opening the lock cannot take it): if the file vanishes between its creation and
    /// `ftok`, or the set between the `EEXIST` and the open, start over. Qt opens the existing
    /// set with `IPC_CREAT`, which in that race creates a set nobody initialises (value 0: the
    /// lock is held forever); we open it without, and create it ourselves.
    ///
    /// And the IPC key must still be the key file's when the set is in hand. If the file was
    /// removed and made again between our `ftok` and our `semget` (by the last detacher and
    /// the next creator), the key we hold belongs to a file that no longer exists, and a set
    /// made under it would be a second lock for the same segment: whoever opens the key file
    /// now gets the new file's key, and the other set. So after `semget`, `ftok` again: a
    /// different key (or no file) means start over, removing the set if this call made it.
    fn open_or_create_set(&self) -> Result<(i32, bool), SemaphoreError> {
        let ftok_failed = || {
            SemaphoreError::new(
                SemaphoreErrorKind::KeyError,
                "QSystemSemaphore::handle:: ftok failed",
            )
        };
        for _ in 0..100 {
            let created_file = sysv::create_key_file(&self.key_file).map_err(|_| {
                SemaphoreError::new(
                    SemaphoreErrorKind::KeyError,
                    "QSystemSemaphore::handle:: unable to make key",
                )
            })?;
            // Qt's `createdFile = (result == 1)`: whether *this* attempt made the file (one made
            // by an earlier attempt may have been removed and made again by someone else).
            self.created_file.store(created_file, Ordering::Relaxed);
            let key = match sysv::ftok(&self.key_file, self.project_id) {
                Ok(key) => key,
                Err(Errno::ENOENT) => continue,
                Err(_) => return Err(ftok_failed()),
            };
            testpoint::step("lock-set:keyed");
            let (id, created) = match sysv::sem_create(key, self.create_size, self.permissions) {
                Ok(id) => (id, true),
                Err(Errno::EEXIST) => match sysv::sem_open(key, 0o600) {
                    Ok(id) => (id, false),
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(self.fail_handle(e)),
                },
                Err(e) => return Err(self.fail_handle(e)),
            };
            if sysv::ftok(&self.key_file, self.project_id) != Ok(key) {
                // The key file was replaced (or removed) meanwhile: this set is not the one
                // that the file names now.
                if created {
                    let _ = sysv::sem_remove(id);
                }
                continue;
            }
            if !created {
                match retirement(id) {
                    Retirement::Live => {}
                    // Its remover is about to unlink the key file and remove it: wait for that.
                    Retirement::InProgress => {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        continue;
                    }
                    // Its remover died before it could: finish the removal, then start over.
                    Retirement::Abandoned => {
                        let _ = sysv::sem_remove(id);
                        continue;
                    }
                }
            }
            return Ok((id, created));
        }
        Err(ftok_failed())
    }

    fn handle(&self, mode: SemMode) -> Result<i32, SemaphoreError> {
        // The set found can be removed before it is initialised (its last user retired it):
        // that is a race with another process's progress, not a failure, so open again.
        let mut attempts = 0;
        loop {
            match self.handle_once(mode) {
                Err(Retry::Removed) if attempts < 100 => attempts += 1,
                Err(Retry::Removed) => {
                    return Err(self.fail_handle(Errno::EIDRM));
                }
                Err(Retry::Failed(e)) => return Err(e),
                Ok(id) => return Ok(id),
            }
        }
    }

    fn handle_once(&self, mode: SemMode) -> Result<i32, Retry> {
        let (id, created) = self.open_or_create_set().map_err(Retry::Failed)?;
        let removed = |e: Errno| -> Retry {
            if matches!(e, Errno::EIDRM | Errno::EINVAL) {
                Retry::Removed
            } else {
                Retry::Failed(self.fail_handle(e))
            }
        };
        let size = if created {
            self.create_size
        } else {
            match sysv::sem_count(id) {
                Ok(n) => i32::try_from(n).unwrap_or(1),
                Err(e) => return Err(removed(e)),
            }
        };
        if created {
            // "Force cleanup of file, it is possible that it can be left over from a crash."
            self.created_file.store(true, Ordering::Relaxed);
            self.created_semaphore.store(true, Ordering::Relaxed);
        }
        if mode == SemMode::Create {
            self.created_file.store(true, Ordering::Relaxed);
            self.created_semaphore.store(true, Ordering::Relaxed);
            // Qt's Create mode resets an existing set too (its takeover). The initialised
            // flag goes first: an opener that found it missing meanwhile would add the
            // initial value a second time.
            if let Some(flag) = self.initialised_flag(size) {
                if let Err(e) = sysv::sem_set_value(id, i32::from(flag), 1) {
                    return Err(removed(e));
                }
            }
            if self.initial_value >= 0 {
                if let Err(e) = sysv::sem_set_value(id, 0, self.initial_value) {
                    return Err(removed(e));
                }
            }
        } else if let Err(e) = {
            if created {
                testpoint::step("lock-set:created");
            }
            self.initialise(id, size, created)
        } {
            return Err(removed(e));
        }
        self.size.store(size, Ordering::Relaxed);
        self.semid.store(id, Ordering::Release);
        Ok(id)
    }

    /// The number of the "initialised" semaphore in a set of `size` semaphores, if the set has
    /// one: sets that qsharedmem creates have it last (locks: lock, token, flag; counting
    /// semaphores: value, flag). Qt's sets (one semaphore) and those of qsharedmem 0.1 (a lock
    /// and its token) do not.
    fn initialised_flag(&self, size: i32) -> Option<u16> {
        (size == self.create_size && size >= 2)
            .then(|| u16::try_from(size - 1).ok())
            .flatten()
    }

    /// Gives a new set its initial values, exactly once, whoever does it.
    ///
    /// A set is born with every value 0, and a creator can be killed before it sets them: the
    /// lock would then be held forever by nobody. So the values are set by one `semop`, which
    /// is atomic, and which also raises the set's "initialised" flag, and only if that flag is
    /// still down: the creator runs it, and so does every opener, so that a set whose creator
    /// died before initialising it is initialised by the next user (and by nobody twice).
    ///
    /// A lock set without that flag (Qt's, or qsharedmem 0.1's) whose lock is taken although
    /// no `semop` ever succeeded on it (`sem_otime` 0: nobody can have taken it) was left
    /// uninitialised by a creator that died between `semget` and its `SETVAL`; once that is
    /// more than a second ago, the creator is not merely slow, and the lock is initialised here.
    fn initialise(&self, id: i32, size: i32, created: bool) -> Result<(), Errno> {
        let value = i16::try_from(self.initial_value.max(0)).map_err(|_| Errno::ERANGE)?;
        let give = |num: u16, delta: i16| SemOp {
            num,
            delta,
            undo: false,
            no_wait: false,
        };
        let when_zero = |num: u16| SemOp {
            num,
            delta: 0,
            undo: false,
            no_wait: true,
        };
        let mut ops = Vec::with_capacity(4);
        if let Some(flag) = self.initialised_flag(size) {
            ops.extend([when_zero(flag), give(flag, 1)]);
        } else if created || self.create_size != LOCK_SET_SIZE || !self.left_uninitialised(id) {
            // A set of another layout that we did not just create: its creator initialises it.
            if created && self.initial_value >= 0 {
                return sysv::sem_set_value(id, 0, self.initial_value);
            }
            return Ok(());
        } else {
            ops.push(when_zero(0));
        }
        if value > 0 {
            ops.push(give(0, value));
        }
        if size >= 2 && self.create_size == LOCK_SET_SIZE {
            // The lock's "consistent" token starts present.
            ops.extend([when_zero(1), give(1, 1)]);
        }
        match sysv::sem_op(id, &ops, None) {
            // Someone else initialised it first.
            Ok(()) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A lock wait that found the lock taken calls this between its wait slices: a lock set of
    /// Qt's layout whose creator died before initialising it is noticed once that is a second
    /// ago (see [`Self::initialise`]), also when the set was first opened sooner than that.
    pub(crate) fn repair_if_left_uninitialised(&self) {
        let id = self.semid.load(Ordering::Acquire);
        let size = self.size.load(Ordering::Relaxed);
        if id >= 0 && self.create_size == LOCK_SET_SIZE && self.initialised_flag(size).is_none() {
            let _ = self.initialise(id, size, false);
        }
    }

    /// Whether the lock set `id` (of a layout without the "initialised" flag) was left
    /// uninitialised by a creator that died: see [`Self::initialise`].
    fn left_uninitialised(&self, id: i32) -> bool {
        let Ok(stat) = sysv::sem_stat(id) else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        stat.last_op == 0 && sysv::sem_value(id, 0) == Ok(0) && now - stat.changed > 1
    }

    fn fail_handle(&self, errno: Errno) -> SemaphoreError {
        let _ = self.clean_handle();
        sem_err("QSystemSemaphore::handle", errno)
    }

    /// The IPC id of the set, opening it again if needed.
    pub(crate) fn id(&self) -> Result<i32, SemaphoreError> {
        let id = self.semid.load(Ordering::Acquire);
        if id >= 0 {
            return Ok(id);
        }
        let _guard = self
            .reopen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = self.semid.load(Ordering::Acquire);
        if id >= 0 {
            return Ok(id);
        }
        if !self.recreate {
            return Err(sem_err("QSystemSemaphore::handle", Errno::EIDRM));
        }
        self.handle(SemMode::Open)
    }

    /// Whether the open set has the extra "consistent" token (sets we created for a lock do;
    /// sets Qt created do not).
    pub(crate) fn has_consistency_token(&self) -> bool {
        self.size.load(Ordering::Relaxed) >= 2
    }

    /// Whether the set is open (false after [`Self::remove`], until an operation reopens it).
    pub(crate) fn is_open(&self) -> bool {
        self.semid.load(Ordering::Acquire) >= 0
    }

    /// The native key (the key file's path).
    pub(crate) fn native_key(&self) -> &str {
        &self.native_key
    }

    /// `semtimedop` on the set as it is, without Qt's recovery: `EIDRM`/`EINVAL` if it was
    /// removed. Cleanup code uses this, because re-creating a semaphore that the last detacher
    /// just removed would leave it behind.
    pub(crate) fn operate_existing(
        &self,
        ops: &[SemOp],
        timeout: Option<Duration>,
    ) -> Result<(), Errno> {
        let id = self.semid.load(Ordering::Acquire);
        if id < 0 {
            return Err(Errno::EIDRM);
        }
        sysv::sem_op(id, ops, timeout)
    }

    /// `semtimedop` with Qt's recovery: if the set was removed under us (`EINVAL`/`EIDRM`), it
    /// is opened (and if need be re-created) again and the operation retried.
    pub(crate) fn operate(&self, ops: &[SemOp], timeout: Option<Duration>) -> Result<(), Errno> {
        self.modify(ops, timeout)
            .map_err(|e| Errno::from_raw(e.errno().unwrap_or(Errno::EINVAL.raw())))?
    }

    /// Qt's `modifySemaphore`: opens the set first (re-creating it with the initial value if
    /// it is gone), then `semtimedop`; if the set was removed under us (`EINVAL`/`EIDRM`), it is
    /// opened again and the operation retried. The outer error is Qt's `handle()` failure, the
    /// inner one the operation's (`EAGAIN` when `timeout` passes or an `IPC_NOWAIT` operation
    /// would wait; `EINTR` is returned, not retried).
    pub(crate) fn modify(
        &self,
        ops: &[SemOp],
        timeout: Option<Duration>,
    ) -> Result<Result<(), Errno>, SemaphoreError> {
        let mut attempts = 0;
        loop {
            let id = self.id()?;
            // An "extra" semaphore number on a set Qt created (size 1) would be EFBIG; callers
            // check `has_consistency_token` first, but a set can be replaced between calls.
            match sysv::sem_op(id, ops, timeout) {
                Err(Errno::EINVAL | Errno::EIDRM) if attempts < 8 => {
                    attempts += 1;
                    self.forget_removed(id);
                }
                other => return Ok(other),
            }
        }
    }

    /// The set `id` was removed by someone else: forget it, and with it the ownership of it
    /// (Qt's `cleanHandle()` before re-opening), so that the next operation opens the key
    /// again and owns only what it creates then. Under the re-open mutex, so that a concurrent
    /// re-open that already created the new set keeps its ownership.
    fn forget_removed(&self, id: i32) {
        let _guard = self
            .reopen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self
            .semid
            .compare_exchange(id, -1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.created_semaphore.store(false, Ordering::Relaxed);
        }
    }

    /// Qt's `release(n)` (`modifySemaphore(n)`): adds `n` to semaphore 0 with `SEM_UNDO`.
    /// A System V semaphore cannot exceed 32767 (`SEMVMX`), so `n` above that is `ERANGE`, as
    /// the kernel says for any release past the maximum. (Qt stores `n` in the 16-bit
    /// `sem_op` field unchecked, so there a larger `n` wraps around and may even wait.)
    pub(crate) fn release(&self, n: u32) -> Result<Result<(), Errno>, SemaphoreError> {
        let Ok(delta) = i16::try_from(n) else {
            return Ok(Err(Errno::ERANGE));
        };
        let give = SemOp {
            num: 0,
            delta,
            undo: true,
            no_wait: false,
        };
        loop {
            match self.modify(&[give], None)? {
                Err(Errno::EINTR) => {}
                other => return Ok(other),
            }
        }
    }

    /// Qt's `acquire()` (`modifySemaphore(-1)`, with `SEM_UNDO`), waiting at most `wait`
    /// (`None`: not at all): `Ok(Ok(true))` if it took a token, `Ok(Ok(false))` if the wait
    /// ended first (timeout, or a signal: `EINTR`).
    pub(crate) fn acquire_for(
        &self,
        wait: Option<Duration>,
    ) -> Result<Result<bool, Errno>, SemaphoreError> {
        let take = SemOp {
            num: 0,
            delta: -1,
            undo: true,
            no_wait: wait.is_none(),
        };
        Ok(match self.modify(&[take], wait)? {
            Ok(()) => Ok(true),
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(false),
            Err(e) => Err(e),
        })
    }

    /// The current value of semaphore 0 (`GETVAL`).
    #[cfg(test)]
    pub(crate) fn value(&self) -> Result<i32, Errno> {
        let id = self
            .id()
            .map_err(|e| Errno::from_raw(e.errno().unwrap_or(Errno::EINVAL.raw())))?;
        sysv::sem_value(id, 0)
    }

    /// Qt's `cleanHandle()`: unlinks the key file if this object created it and removes the set
    /// if this object created it (or opened it in `Create` mode).
    pub(crate) fn clean_handle(&self) -> Result<(), SemaphoreError> {
        let id = self.semid.swap(-1, Ordering::AcqRel);
        let remove_set = self.created_semaphore.swap(false, Ordering::Relaxed) && id >= 0;
        if remove_set {
            retire(id);
        }
        if self.created_file.swap(false, Ordering::Relaxed) {
            let _ = sysv::remove_key_file(&self.key_file);
        }
        if remove_set {
            let removed = sysv::sem_remove(id);
            remove_abandoned_sets();
            // Qt reports a set that another of its creators removed first (`EINVAL`).
            removed.map_err(|e| sem_err("QSystemSemaphore::cleanHandle", e))?;
        }
        Ok(())
    }

    /// Removes the set and its key file, whoever created them (the last user of a shared memory
    /// segment does this, under the lock).
    ///
    /// The key file goes first: once it is gone, nobody can find the set any more (an opener
    /// that got its key just before makes sure afterwards that the file still names it), so
    /// nobody can start using the set while it is being removed. A remover killed between the
    /// two steps leaves the set behind under a key that no file has; it marks the set retired
    /// first, so that the next remover finds it and removes it (see [`remove_abandoned_sets`]).
    pub(crate) fn remove(&self) {
        let id = self.semid.swap(-1, Ordering::AcqRel);
        self.created_file.store(false, Ordering::Relaxed);
        self.created_semaphore.store(false, Ordering::Relaxed);
        if id >= 0 {
            retire(id);
        }
        let _ = sysv::remove_key_file(&self.key_file);
        if id >= 0 {
            let _ = sysv::sem_remove(id);
            remove_abandoned_sets();
        }
    }

    /// Removes only the set (IPC_RMID), keeping the key file, which a live System V segment may
    /// share. Users of the set re-create it on their next operation, as Qt's do.
    pub(crate) fn remove_set(&self) {
        let id = self.semid.swap(-1, Ordering::AcqRel);
        self.created_file.store(false, Ordering::Relaxed);
        self.created_semaphore.store(false, Ordering::Relaxed);
        if id >= 0 {
            let _ = sysv::sem_remove(id);
        }
    }

    /// Removes the set unless it is the one its key file's current key leads to (someone
    /// made the key file again and this handle opened the set of the new file): a set of a
    /// removed key file is reachable by nobody else, and would stay behind for ever.
    pub(crate) fn remove_set_unless_keyed(&self) {
        let id = self.semid.load(Ordering::Acquire);
        let keyed = sysv::ftok(&self.key_file, self.project_id)
            .and_then(|key| sysv::sem_open(key, 0))
            .is_ok_and(|current| current == id);
        if !keyed {
            self.remove_set();
        }
    }

    /// Whether this object created the set (so that, by Qt's rules, it cleans it up).
    pub(crate) fn owns_semaphore(&self) -> bool {
        self.created_semaphore.load(Ordering::Relaxed)
    }

    /// Gives the set and its key file the permission bits `mode` (the key file: without the
    /// execute bits) and, if given, the group `group`: so that another account that may use
    /// the segment (or the semaphore) may also take the lock. Only the owner may.
    pub(crate) fn set_permissions(&self, mode: u32, group: Option<u32>) -> Result<(), Errno> {
        let id = self
            .id()
            .map_err(|e| e.os_error().unwrap_or(Errno::EINVAL))?;
        sysv::sem_set_permissions(id, mode, group)?;
        sysv::set_key_file_permissions(&self.key_file, mode & 0o666, group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_key(tag: &str) -> String {
        std::env::temp_dir()
            .join(format!("qsm-semaphore-test-{}-{tag}", std::process::id()))
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn sysv_open_creates_set_and_clean_handle_removes_it() {
        let key = temp_key("sysv");
        let sem = SysVSemaphore::open(&key, 0x51, 1, LOCK_SET_SIZE, SemMode::Open, 0o600).unwrap();
        assert!(sem.has_consistency_token());
        let id = sem.id().unwrap();
        assert_eq!(sysv::sem_value(id, 0).unwrap(), 1);
        assert_eq!(sysv::sem_value(id, 1).unwrap(), 1);
        // A second opener sees the same set and does not own it.
        let other =
            SysVSemaphore::open(&key, 0x51, 1, LOCK_SET_SIZE, SemMode::Open, 0o600).unwrap();
        assert_eq!(other.id().unwrap(), id);
        assert!(!other.owns_semaphore());
        other.clean_handle().unwrap();
        assert_eq!(sysv::sem_value(id, 0).unwrap(), 1);
        sem.clean_handle().unwrap();
        assert!(sysv::sem_value(id, 0).is_err());
        assert!(!sysv::key_file_exists(&sysv::key_path(&key).unwrap()));
    }

    #[test]
    fn sysv_operation_recreates_a_removed_set() {
        let key = temp_key("recreate");
        let sem = SysVSemaphore::open(&key, 0x51, 1, 1, SemMode::Open, 0o600).unwrap();
        let first = sem.id().unwrap();
        sysv::sem_remove(first).unwrap();
        let take = SemOp {
            num: 0,
            delta: -1,
            undo: true,
            no_wait: true,
        };
        sem.operate(&[take], None).unwrap();
        sem.operate(&[SemOp { delta: 1, ..take }], None).unwrap();
        sem.remove();
    }

    #[test]
    fn sysv_empty_key_and_missing_directory_errors_are_qts() {
        let e = SysVSemaphore::open("", 0x51, 1, 1, SemMode::Open, 0o600).unwrap_err();
        assert_eq!(e.message(), "QSystemSemaphore::handle:: key is empty");
        let e = SysVSemaphore::open("/nonexistent-dir-qsm/x", 0x51, 1, 1, SemMode::Open, 0o600)
            .unwrap_err();
        assert_eq!(e.kind(), SemaphoreErrorKind::KeyError);
        assert_eq!(e.message(), "QSystemSemaphore::handle:: unable to make key");
    }
}
