//! System V IPC: Qt's key files, `ftok`, shared memory segments (`shmget`/`shmctl`) and
//! semaphore sets (`semget`/`semop`/`semctl`).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use super::cvt::{c_string, cvt, retry, Errno, SysResult};

extern "C" {
    // glibc exports semtimedop(2), but the libc crate does not declare it for linux-gnu.
    fn semtimedop(
        semid: libc::c_int,
        sops: *mut libc::sembuf,
        nsops: libc::size_t,
        timeout: *const libc::timespec,
    ) -> libc::c_int;
}

/// A System V IPC key (`key_t`).
pub type IpcKey = libc::key_t;

/// A C path for a key file: the UTF-8 bytes of the native key, as Qt's `QFile::encodeName`.
pub fn key_path(native_key: &str) -> SysResult<CString> {
    c_string(native_key)
}

/// Qt's `createUnixKeyFile`: `open(path, O_EXCL|O_CREAT|O_RDWR, 0640)` and close.
/// `Ok(true)` if this call created the file, `Ok(false)` if it already existed.
///
/// Unlike Qt we add `O_NOFOLLOW`: a symbolic link planted at the key's path (for example in a
/// shared `/tmp`) is never followed; with `O_EXCL` the kernel already refuses to create through
/// one, and `O_NOFOLLOW` makes the "already exists" case refuse it as well (`ELOOP`).
pub fn create_key_file(path: &CString) -> SysResult<bool> {
    let flags = libc::O_EXCL | libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    loop {
        let result = retry(|| {
            // SAFETY: `path` is a valid NUL-terminated string.
            cvt(unsafe { libc::open(path.as_ptr(), flags, 0o640 as libc::c_uint) })
        });
        return match result {
            Ok(fd) => {
                // SAFETY: `open` returned a new descriptor nobody else owns; dropping closes it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(true)
            }
            Err(Errno::EEXIST) => {
                // Refuse a symbolic link where the key file should be.
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: valid C string; `st` is valid for writes of a `struct stat`.
                match cvt(unsafe { libc::lstat(path.as_ptr(), st.as_mut_ptr()) }) {
                    // Removed between the two calls (by the last user of its segment): again.
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
                // SAFETY: lstat succeeded and initialised the struct.
                let st = unsafe { st.assume_init() };
                if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    return Err(Errno::ELOOP);
                }
                Ok(false)
            }
            Err(e) => Err(e),
        };
    }
}

/// `unlink(path)`.
pub fn remove_key_file(path: &CString) -> SysResult<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    cvt(unsafe { libc::unlink(path.as_ptr()) }).map(drop)
}

/// Whether a file exists at `path` (without following a final symbolic link).
#[must_use]
pub fn key_file_exists(path: &CString) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string; `st` is valid for writes of a `struct stat`.
    unsafe { libc::lstat(path.as_ptr(), st.as_mut_ptr()) == 0 }
}

/// `ftok(path, project_id)`.
pub fn ftok(path: &CString, project_id: u8) -> SysResult<IpcKey> {
    // SAFETY: `path` is a valid NUL-terminated string.
    let key = unsafe { libc::ftok(path.as_ptr(), libc::c_int::from(project_id)) };
    if key == -1 {
        Err(Errno::last())
    } else {
        Ok(key)
    }
}

fn shm_get(key: IpcKey, size: usize, flags: i32) -> SysResult<i32> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::shmget(key, size, flags) })
}

/// `shmget(key, size, permissions|IPC_CREAT|IPC_EXCL)`: a new segment, `EEXIST` if the key has
/// one.
pub fn shm_create(key: IpcKey, size: usize, permissions: u32) -> SysResult<i32> {
    shm_get(key, size, create_new(permissions))
}

/// `shmget(key, 0, permissions)`: the existing segment of `key` (`ENOENT` if none), checked
/// against `permissions` (Qt: 0600 to write, 0400 to read).
pub fn shm_open(key: IpcKey, permissions: u32) -> SysResult<i32> {
    shm_get(key, 0, mode_bits(permissions))
}

fn mode_bits(permissions: u32) -> i32 {
    i32::try_from(permissions & 0o777).unwrap_or(0o600)
}

/// The `*get` flags that make a new object with `permissions`, or fail with `EEXIST`.
fn create_new(permissions: u32) -> i32 {
    mode_bits(permissions) | libc::IPC_CREAT | libc::IPC_EXCL
}

/// What `shmctl(IPC_STAT)` reports about a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmStat {
    /// `shm_segsz`: the size the creator asked for.
    pub size: usize,
    /// `shm_nattch`: how many attachments exist, in all processes.
    pub attached: u64,
    /// `shm_cpid`: the creator's pid.
    pub creator_pid: i32,
    /// `shm_lpid`: the pid of the last `shmat`/`shmdt`.
    pub last_pid: i32,
    /// `shm_ctime`: last change time (creation, in practice), seconds since the epoch.
    pub changed: i64,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
    /// The IPC key the segment was created with (`IPC_PRIVATE` once removed).
    pub key: IpcKey,
}

/// The `shm_perm.mode` bit the kernel sets once `IPC_RMID` marked a segment for destruction on
/// its last detach (`SHM_DEST` in `<linux/shm.h>`; the libc crate does not export it).
pub const SHM_DEST: u32 = 0o1000;

impl ShmStat {
    /// Whether the segment was removed and only lives on until its last attachment ends.
    #[must_use]
    pub fn is_marked_for_removal(&self) -> bool {
        self.mode & SHM_DEST != 0
    }
}

/// `shmctl(id, IPC_STAT)`.
pub fn shm_stat(id: i32) -> SysResult<ShmStat> {
    let mut ds = std::mem::MaybeUninit::<libc::shmid_ds>::uninit();
    // SAFETY: `ds` is valid for writes of a `struct shmid_ds`.
    cvt(unsafe { libc::shmctl(id, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: IPC_STAT succeeded and filled the struct.
    let ds = unsafe { ds.assume_init() };
    Ok(ShmStat {
        size: ds.shm_segsz,
        // c_ulong: u64 on the 64-bit targets we build for, narrower elsewhere.
        #[allow(clippy::useless_conversion)]
        attached: u64::from(ds.shm_nattch),
        creator_pid: ds.shm_cpid,
        last_pid: ds.shm_lpid,
        changed: ds.shm_ctime,
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        mode: u32::from(ds.shm_perm.mode),
        key: ds.shm_perm.__key,
    })
}

/// `shmctl(id, IPC_SET)` with the segment's group changed to `group` (owner and mode kept).
pub fn shm_set_group(id: i32, group: u32) -> SysResult<()> {
    let mut ds = std::mem::MaybeUninit::<libc::shmid_ds>::uninit();
    // SAFETY: `ds` is valid for writes of a `struct shmid_ds`.
    cvt(unsafe { libc::shmctl(id, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: IPC_STAT succeeded and filled the struct.
    let mut ds = unsafe { ds.assume_init() };
    ds.shm_perm.gid = group;
    // SAFETY: IPC_SET reads uid, gid and mode from a valid, filled `struct shmid_ds`.
    cvt(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }).map(drop)
}

/// `shmctl(id, IPC_RMID)`: the segment goes away when its last attachment does.
pub fn shm_remove(id: i32) -> SysResult<()> {
    // SAFETY: IPC_RMID does not read the buffer argument, so NULL is allowed.
    cvt(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// Every System V segment on the machine that the caller may see: `(id, stat)` pairs, read
/// from `/proc/sysvipc/shm` (the kernel's own listing, as `ipcs` uses).
pub fn list_segments() -> SysResult<Vec<(i32, ShmStat)>> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").map_err(|e| Errno::from_io(&e))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some(id) = line
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = shm_stat(id) {
            out.push((id, stat));
        }
    }
    Ok(out)
}

/// One line of `/proc/sysvipc/sem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SemSetEntry {
    /// The set's id.
    pub id: i32,
    /// Its IPC key.
    pub key: IpcKey,
    /// How many semaphores it has.
    pub count: u64,
    /// The owner's uid.
    pub uid: u32,
}

/// Every System V semaphore set on the machine (that this process may see).
pub fn list_semaphore_sets() -> SysResult<Vec<SemSetEntry>> {
    let text = std::fs::read_to_string("/proc/sysvipc/sem").map_err(|e| Errno::from_io(&e))?;
    // key semid perms nsems uid gid cuid cgid otime ctime
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let key = fields.next()?.parse().ok()?;
            let id = fields.next()?.parse().ok()?;
            let count = fields.nth(1)?.parse().ok()?;
            let uid = fields.next()?.parse().ok()?;
            Some(SemSetEntry {
                id,
                key,
                count,
                uid,
            })
        })
        .collect())
}

fn sem_get(key: IpcKey, nsems: i32, flags: i32) -> SysResult<i32> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::semget(key, nsems, flags) })
}

/// `semget(key, count, permissions|IPC_CREAT|IPC_EXCL)`: a new set (every value 0), `EEXIST`
/// if the key has one.
pub fn sem_create(key: IpcKey, count: i32, permissions: u32) -> SysResult<i32> {
    sem_get(key, count, create_new(permissions))
}

/// `semget(key, 0, permissions)`: the existing set of `key`, `ENOENT` if none.
pub fn sem_open(key: IpcKey, permissions: u32) -> SysResult<i32> {
    sem_get(key, 0, mode_bits(permissions))
}

/// What `IPC_STAT` says about a semaphore set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SemStat {
    /// How many semaphores the set has (`sem_nsems`).
    pub count: u64,
    /// When a `semop` last succeeded on the set (`sem_otime`, seconds since the epoch); 0 if
    /// none ever did, which also means that nobody holds any of its semaphores.
    pub last_op: i64,
    /// When the set was created or last changed by `semctl` (`sem_ctime`, e.g. a `SETVAL`).
    pub changed: i64,
}

/// `semctl(id, 0, IPC_STAT)`.
pub fn sem_stat(id: i32) -> SysResult<SemStat> {
    let mut ds = std::mem::MaybeUninit::<libc::semid_ds>::uninit();
    // SAFETY: IPC_STAT takes a `struct semid_ds *` as its fourth (variadic) argument; `ds` is
    // valid for writes of one.
    cvt(unsafe { libc::semctl(id, 0, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: IPC_STAT succeeded and filled the struct.
    let ds = unsafe { ds.assume_init() };
    // c_ulong: u64 on the 64-bit targets we build for, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    Ok(SemStat {
        count: u64::from(ds.sem_nsems),
        last_op: i64::from(ds.sem_otime),
        changed: i64::from(ds.sem_ctime),
    })
}

/// The number of semaphores in the set `id` (`IPC_STAT`'s `sem_nsems`).
pub fn sem_count(id: i32) -> SysResult<u64> {
    sem_stat(id).map(|st| st.count)
}

/// `semctl(id, num, SETVAL, value)`.
pub fn sem_set_value(id: i32, num: i32, value: i32) -> SysResult<()> {
    // SAFETY: SETVAL takes an `int` (the `val` member of `union semun`) as its fourth argument.
    cvt(unsafe { libc::semctl(id, num, libc::SETVAL, value) }).map(drop)
}

/// `semctl(id, num, GETVAL)`.
pub fn sem_value(id: i32, num: i32) -> SysResult<i32> {
    // SAFETY: GETVAL takes no fourth argument.
    cvt(unsafe { libc::semctl(id, num, libc::GETVAL) })
}

/// `semctl(id, num, GETPID)`: the pid of the last process that operated on semaphore `num`.
pub fn sem_last_pid(id: i32, num: i32) -> SysResult<i32> {
    // SAFETY: GETPID takes no fourth argument.
    cvt(unsafe { libc::semctl(id, num, libc::GETPID) })
}

/// `semctl(id, num, GETNCNT)`: how many processes wait for semaphore `num` to increase.
pub fn sem_waiters(id: i32, num: i32) -> SysResult<i32> {
    // SAFETY: GETNCNT takes no fourth argument.
    cvt(unsafe { libc::semctl(id, num, libc::GETNCNT) })
}

/// `semctl(id, 0, IPC_SET)` with the set's permission bits changed to `mode` and, if given, its
/// group to `group` (the owner is kept; only the owner, creator or root may do this).
pub fn sem_set_permissions(id: i32, mode: u32, group: Option<u32>) -> SysResult<()> {
    let mut ds = std::mem::MaybeUninit::<libc::semid_ds>::uninit();
    // SAFETY: IPC_STAT takes a `struct semid_ds *` as its fourth (variadic) argument; `ds` is
    // valid for writes of one.
    cvt(unsafe { libc::semctl(id, 0, libc::IPC_STAT, ds.as_mut_ptr()) })?;
    // SAFETY: IPC_STAT succeeded and filled the struct.
    let mut ds = unsafe { ds.assume_init() };
    ds.sem_perm.mode = (mode & 0o777) as libc::c_ushort;
    if let Some(group) = group {
        ds.sem_perm.gid = group;
    }
    // SAFETY: IPC_SET reads uid, gid and mode from a valid, filled `struct semid_ds *` passed
    // as the fourth argument.
    cvt(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds) }).map(drop)
}

/// Gives the key file at `path` the permission bits `mode` and, if given, the group `group`,
/// through a descriptor opened without following a symbolic link (key files never are).
pub fn set_key_file_permissions(path: &CString, mode: u32, group: Option<u32>) -> SysResult<()> {
    let fd = retry(|| {
        // SAFETY: `path` is a valid NUL-terminated string.
        cvt(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })
    })?;
    // SAFETY: `open` returned a new descriptor nobody else owns; dropping it closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    super::posix::set_mode(std::os::fd::AsFd::as_fd(&fd), mode & 0o777)?;
    if let Some(group) = group {
        super::posix::set_group(std::os::fd::AsFd::as_fd(&fd), group)?;
    }
    Ok(())
}

/// `semctl(id, 0, IPC_RMID)`.
pub fn sem_remove(id: i32) -> SysResult<()> {
    // SAFETY: IPC_RMID takes no fourth argument.
    cvt(unsafe { libc::semctl(id, 0, libc::IPC_RMID) }).map(drop)
}

/// One operation of a `semop` call.
#[derive(Clone, Copy, Debug)]
pub struct SemOp {
    /// Which semaphore of the set.
    pub num: u16,
    /// The change: negative waits until the value is large enough, 0 waits for zero.
    pub delta: i16,
    /// Undo the change when the process exits (`SEM_UNDO`).
    pub undo: bool,
    /// Fail with `EAGAIN` instead of waiting (`IPC_NOWAIT`).
    pub no_wait: bool,
}

/// `semtimedop(id, ops, timeout)`: all operations atomically, or none. `EAGAIN` when the
/// timeout passes (or an `IPC_NOWAIT` operation would wait); `EINTR` is returned, not retried,
/// so that callers can look at signals.
pub fn sem_op(id: i32, ops: &[SemOp], timeout: Option<Duration>) -> SysResult<()> {
    let mut raw: Vec<libc::sembuf> = ops
        .iter()
        .map(|op| {
            let mut flags = 0;
            if op.undo {
                flags |= libc::SEM_UNDO;
            }
            if op.no_wait {
                flags |= libc::IPC_NOWAIT;
            }
            libc::sembuf {
                sem_num: op.num,
                sem_op: op.delta,
                sem_flg: flags as libc::c_short,
            }
        })
        .collect();
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `raw` holds `raw.len()` initialised sembufs and `ts_ptr` is NULL or points to a
    // live timespec; both outlive the call.
    cvt(unsafe { semtimedop(id, raw.as_mut_ptr(), raw.len(), ts_ptr) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_and_never_through_a_symlink() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("qsm-sysv-keyfile-{}", std::process::id()));
        let link = dir.join(format!("qsm-sysv-keylink-{}", std::process::id()));
        let path = key_path(file.to_str().unwrap()).unwrap();
        assert!(create_key_file(&path).unwrap());
        assert!(!create_key_file(&path).unwrap());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let link_path = key_path(link.to_str().unwrap()).unwrap();
        assert_eq!(create_key_file(&link_path), Err(Errno::ELOOP));
        std::fs::remove_file(&link).unwrap();
        remove_key_file(&path).unwrap();
        assert!(!key_file_exists(&path));
    }

    #[test]
    fn semaphore_with_undo_round_trip() {
        let id = sem_create(libc::IPC_PRIVATE, 2, 0o600).unwrap();
        assert_eq!(sem_count(id).unwrap(), 2);
        sem_set_value(id, 0, 1).unwrap();
        let take = SemOp {
            num: 0,
            delta: -1,
            undo: true,
            no_wait: false,
        };
        sem_op(id, &[take], None).unwrap();
        assert_eq!(sem_value(id, 0).unwrap(), 0);
        assert_eq!(
            sem_op(id, &[take], Some(Duration::from_millis(10))),
            Err(Errno::EAGAIN)
        );
        sem_op(id, &[SemOp { delta: 1, ..take }], None).unwrap();
        assert_eq!(sem_last_pid(id, 0).unwrap(), std::process::id() as i32);
        sem_remove(id).unwrap();
    }

    #[test]
    fn private_segment_stat_and_remove() {
        let id = shm_create(libc::IPC_PRIVATE, 1000, 0o600).unwrap();
        let st = shm_stat(id).unwrap();
        assert_eq!(st.size, 1000);
        assert_eq!(st.attached, 0);
        assert!(list_segments().unwrap().iter().any(|(i, _)| *i == id));
        shm_remove(id).unwrap();
    }
}
