//! POSIX shared memory objects as files in `/dev/shm`, the way glibc's `shm_open` names them,
//! plus the file operations the segment lifecycle needs (`O_TMPFILE`, `posix_fallocate`,
//! `linkat`, `flock`, `fstat`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::cvt::{c_string, cvt, cvt_count, retry, Errno, SysResult};

/// Where glibc keeps POSIX shared memory and named semaphores on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// Maximum length of a file name on Linux.
const NAME_MAX: usize = 255;

/// The file name in `/dev/shm` that `shm_open(name)` (or, with `sem_prefix`, `sem_open(name)`)
/// uses, following glibc's `__shm_get_name`: leading slashes are dropped; an empty name, one
/// with another `/`, or one of 254 bytes or more is `EINVAL`; a NUL byte cannot be passed to the
/// C library at all and is `EINVAL` too. Unlike glibc, `.` and `..` are `EINVAL` as well: as
/// file names in `/dev/shm` they are the directory itself and `/dev`, never a segment.
pub fn shm_file_name(name: &str, sem_prefix: bool) -> SysResult<String> {
    let bare = name.trim_start_matches('/');
    if bare.is_empty() || bare.len() + 1 >= NAME_MAX || bare.contains('/') || bare.contains('\0') {
        return Err(Errno::EINVAL);
    }
    if !sem_prefix && (bare == "." || bare == "..") {
        return Err(Errno::EINVAL);
    }
    Ok(if sem_prefix {
        format!("sem.{bare}")
    } else {
        bare.to_owned()
    })
}

fn shm_path(file_name: &str) -> SysResult<CString> {
    c_string(format!("{SHM_DIR}/{file_name}"))
}

/// What `fstat` tells about a shared memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// `st_size`.
    pub size: u64,
    /// `st_nlink`: 0 once the name was unlinked.
    pub nlink: u64,
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_uid`.
    pub uid: u32,
    /// `st_mode`.
    pub mode: u32,
    /// `st_mtime` in seconds since the epoch.
    pub mtime: i64,
}

impl FileStat {
    fn from_raw(st: &libc::stat) -> Self {
        Self {
            size: u64::try_from(st.st_size).unwrap_or(0),
            nlink: st.st_nlink,
            dev: st.st_dev,
            ino: st.st_ino,
            uid: st.st_uid,
            mode: st.st_mode,
            mtime: st.st_mtime,
        }
    }

    /// True for a regular file (not a directory, link, socket, ...).
    #[must_use]
    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    /// True if both describe the same file.
    #[must_use]
    pub fn same_file(&self, other: &FileStat) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

fn open_path(path: &CString, flags: i32, mode: libc::mode_t) -> SysResult<OwnedFd> {
    let fd = retry(|| {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        cvt(unsafe {
            libc::open(
                path.as_ptr(),
                flags | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        })
    })?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `shm_open(name, O_RDWR or O_RDONLY)` of an existing object, by its `/dev/shm` file name.
pub fn open_existing(file_name: &str, writable: bool) -> SysResult<OwnedFd> {
    let flags = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    };
    open_path(
        &shm_path(file_name)?,
        flags | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
    )
}

/// Opens another descriptor (a new open file description) for the file `fd` refers to, through
/// `/proc/self/fd`; this works even after the name was unlinked.
pub fn reopen(fd: BorrowedFd<'_>, writable: bool) -> SysResult<OwnedFd> {
    let flags = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    };
    open_path(
        &c_string(format!("/proc/self/fd/{}", fd.as_raw_fd()))?,
        flags,
        0,
    )
}

/// A new, unnamed file in `/dev/shm` (`O_TMPFILE`), `len` bytes long with every page reserved
/// (`posix_fallocate`, which also sets the size), so that a full `/dev/shm` fails here with
/// `ENOSPC` instead of killing the process with `SIGBUS` later. [`publish`] names it.
pub fn create_unnamed(len: u64, mode: libc::mode_t) -> SysResult<OwnedFd> {
    let file = open_path(&c_string(SHM_DIR)?, libc::O_TMPFILE | libc::O_RDWR, mode)?;
    let len = libc::off_t::try_from(len).map_err(|_| Errno::EFBIG)?;
    retry(|| {
        // SAFETY: valid descriptor, plain integer arguments; posix_fallocate returns the error
        // number instead of setting errno.
        match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
            0 => Ok(()),
            err => Err(Errno::from_raw(err)),
        }
    })?;
    Ok(file)
}

/// Gives the unnamed file `file` the name `file_name` in `/dev/shm`, atomically: afterwards
/// everyone sees the complete file, before it nobody sees anything. `EEXIST` if the name is
/// taken.
///
/// Linux 6.10 and later let the process that opened a file link it by its descriptor
/// (`AT_EMPTY_PATH`); older kernels refuse that without `CAP_DAC_READ_SEARCH` (`ENOENT`), and
/// then `/proc/self/fd/N` does it, at the price of a longer path walk. Which of the two works is
/// remembered.
pub fn publish(file: BorrowedFd<'_>, file_name: &str) -> SysResult<()> {
    static BY_DESCRIPTOR_REFUSED: AtomicBool = AtomicBool::new(false);
    let target = shm_path(file_name)?;
    if !BY_DESCRIPTOR_REFUSED.load(Ordering::Relaxed) {
        match link_by_descriptor(file, &target) {
            Err(Errno::ENOENT | Errno::EPERM | Errno::EINVAL) => {
                BY_DESCRIPTOR_REFUSED.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    link_through_proc(file, &target)
}

fn link_by_descriptor(file: BorrowedFd<'_>, target: &CString) -> SysResult<()> {
    retry(|| {
        // SAFETY: `file` is open, both strings are valid NUL-terminated strings.
        cvt(unsafe {
            libc::linkat(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })
    })
    .map(drop)
}

fn link_through_proc(file: BorrowedFd<'_>, target: &CString) -> SysResult<()> {
    let source = c_string(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    retry(|| {
        // SAFETY: both strings are valid NUL-terminated strings.
        cvt(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                source.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })
    })
    .map(drop)
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<FileStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of a `struct stat`; `fd` is open.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it initialised the whole struct.
    Ok(FileStat::from_raw(unsafe { &st.assume_init() }))
}

/// The file offset `done` bytes past `offset`, as `pread`/`pwrite` take it.
fn offset_past(offset: u64, done: usize) -> SysResult<libc::off_t> {
    offset
        .checked_add(done as u64)
        .and_then(|at| libc::off_t::try_from(at).ok())
        .ok_or(Errno::EOVERFLOW)
}

/// `pwrite` all of `buf` at `offset`.
pub fn write_all_at(fd: BorrowedFd<'_>, offset: u64, buf: &[u8]) -> SysResult<()> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset_past(offset, done)?;
        let rest = &buf[done..];
        let n = retry(|| {
            // SAFETY: `rest` is valid for reads of `rest.len()` bytes; `fd` is open.
            cvt_count(unsafe { libc::pwrite(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), at) })
        })?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        done += n;
    }
    Ok(())
}

/// `pread` until `buf` is full or the file ends; returns how many bytes were read. Reading
/// copies, so unlike a mapping it cannot fault when another process shrinks the file meanwhile.
pub fn read_at(fd: BorrowedFd<'_>, offset: u64, buf: &mut [u8]) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset_past(offset, done)?;
        let rest = &mut buf[done..];
        let n = retry(|| {
            // SAFETY: `rest` is valid for writes of `rest.len()` bytes; `fd` is open.
            cvt_count(unsafe {
                libc::pread(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), at)
            })
        })?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// `lstat("/dev/shm/<file_name>")`.
pub fn stat_name(file_name: &str) -> SysResult<FileStat> {
    let path = shm_path(file_name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `path` is a valid C string and `st` is valid for writes of a `struct stat`.
    cvt(unsafe { libc::lstat(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: lstat succeeded, so it initialised the whole struct.
    Ok(FileStat::from_raw(unsafe { &st.assume_init() }))
}

/// Removes the name `file_name` from `/dev/shm` if it still refers to the file `fd` is open on.
/// Returns whether it removed it.
///
/// The check and the unlink are two steps; callers make them atomic by holding an exclusive
/// `flock` on the file, which every other party that removes or replaces the name also takes.
pub fn unlink_if_same(file_name: &str, fd: BorrowedFd<'_>) -> SysResult<bool> {
    let ours = fstat(fd)?;
    match stat_name(file_name) {
        Ok(named) if named.same_file(&ours) => {}
        Ok(_) | Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    }
    match unlink_name(file_name) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `unlink("/dev/shm/<file_name>")` (what `shm_unlink` does).
pub fn unlink_name(file_name: &str) -> SysResult<()> {
    let path = shm_path(file_name)?;
    // SAFETY: `path` is a valid NUL-terminated string.
    cvt(unsafe { libc::unlink(path.as_ptr()) }).map(drop)
}

/// `flock(fd, operation)`, retried on `EINTR`.
fn flock(fd: BorrowedFd<'_>, operation: libc::c_int) -> SysResult<()> {
    retry(|| {
        // SAFETY: valid descriptor, plain integer argument.
        cvt(unsafe { libc::flock(fd.as_raw_fd(), operation) })
    })
    .map(drop)
}

/// `flock(fd, operation|LOCK_NB)`: true if taken, false if another holder is in the way.
fn try_flock(fd: BorrowedFd<'_>, operation: libc::c_int) -> SysResult<bool> {
    match flock(fd, operation | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `flock(fd, LOCK_SH)`, waiting if someone holds `LOCK_EX` (only ever briefly: a detacher
/// deciding whether it is the last one, or a creator checking for an orphan).
pub fn lock_shared(fd: BorrowedFd<'_>) -> SysResult<()> {
    flock(fd, libc::LOCK_SH)
}

/// `flock(fd, LOCK_SH|LOCK_NB)`: true if taken, false if someone holds `LOCK_EX`.
pub fn try_lock_shared(fd: BorrowedFd<'_>) -> SysResult<bool> {
    try_flock(fd, libc::LOCK_SH)
}

/// `flock(fd, LOCK_EX|LOCK_NB)`: true if this open file description is now the only holder
/// of any lock on the file, false if another holds a lock.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> SysResult<bool> {
    try_flock(fd, libc::LOCK_EX)
}

/// `fchmod(fd, mode)`: exact permission bits (the umask applied when the file was made does not
/// apply to this).
pub fn set_mode(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: valid descriptor, plain integer argument.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o7777) }).map(drop)
}

/// `fchown(fd, -1, group)`: the file's group (the caller must be a member, or root).
pub fn set_group(fd: BorrowedFd<'_>, group: u32) -> SysResult<()> {
    // SAFETY: valid descriptor, plain integer arguments; -1 keeps the owner.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), u32::MAX, group) }).map(drop)
}

/// Whether the file system holding `/dev/shm` has no inode left (creating a file there fails
/// with `ENOSPC` then, however much space is free).
#[must_use]
pub fn shm_out_of_inodes() -> bool {
    let Ok(path) = c_string(SHM_DIR) else {
        return false;
    };
    let mut vfs = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `vfs` is valid for writes of a `struct statvfs`.
    if unsafe { libc::statvfs(path.as_ptr(), vfs.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statvfs succeeded, so it initialised the whole struct.
    let vfs = unsafe { vfs.assume_init() };
    vfs.f_files > 0 && vfs.f_favail == 0
}

/// Free and total bytes of the file system holding `/dev/shm`.
pub fn shm_space() -> SysResult<(u64, u64)> {
    let path = c_string(SHM_DIR)?;
    let mut vfs = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `vfs` is valid for writes of a `struct statvfs`.
    cvt(unsafe { libc::statvfs(path.as_ptr(), vfs.as_mut_ptr()) })?;
    // SAFETY: statvfs succeeded, so it initialised the whole struct.
    let vfs = unsafe { vfs.assume_init() };
    let block = vfs.f_frsize;
    Ok((
        vfs.f_bavail.saturating_mul(block),
        vfs.f_blocks.saturating_mul(block),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn unique(tag: &str) -> String {
        format!("qsm-sys-test-{}-{tag}", std::process::id())
    }

    #[test]
    fn glibc_name_rules() {
        assert_eq!(shm_file_name("/abc", false).unwrap(), "abc");
        assert_eq!(shm_file_name("//abc", true).unwrap(), "sem.abc");
        assert_eq!(shm_file_name("abc", false).unwrap(), "abc");
        assert_eq!(shm_file_name("/..", true).unwrap(), "sem...");
        for bad in [
            "",
            "/",
            "/a/b",
            "/a\0b",
            "/.",
            "/..",
            "..",
            "/../etc/passwd",
        ] {
            assert_eq!(shm_file_name(bad, false), Err(Errno::EINVAL), "{bad:?}");
        }
        assert!(shm_file_name(&"x".repeat(253), false).is_ok());
        assert_eq!(shm_file_name(&"x".repeat(254), false), Err(Errno::EINVAL));
    }

    #[test]
    fn unnamed_file_is_published_atomically_and_refcounted_by_flock() {
        let name = unique("publish");
        let file = create_unnamed(8192, 0o600).unwrap();
        assert_eq!(fstat(file.as_fd()).unwrap().size, 8192);
        assert_eq!(stat_name(&name), Err(Errno::ENOENT));
        lock_shared(file.as_fd()).unwrap();
        publish(file.as_fd(), &name).unwrap();
        assert_eq!(publish(file.as_fd(), &name), Err(Errno::EEXIST));

        let other = open_existing(&name, true).unwrap();
        lock_shared(other.as_fd()).unwrap();
        assert!(
            !try_lock_exclusive(file.as_fd()).unwrap(),
            "another holder exists"
        );
        drop(other);
        assert!(
            try_lock_exclusive(file.as_fd()).unwrap(),
            "we are the last holder"
        );
        assert!(unlink_if_same(&name, file.as_fd()).unwrap());
        assert_eq!(fstat(file.as_fd()).unwrap().nlink, 0);
        assert!(!unlink_if_same(&name, file.as_fd()).unwrap());
    }

    #[test]
    fn both_ways_of_publishing_name_the_same_file() {
        for (tag, link) in [
            (
                "by-fd",
                link_by_descriptor as fn(BorrowedFd<'_>, &CString) -> SysResult<()>,
            ),
            ("by-proc", link_through_proc),
        ] {
            let name = unique(tag);
            let file = create_unnamed(4096, 0o600).unwrap();
            let target = shm_path(&name).unwrap();
            match link(file.as_fd(), &target) {
                // A kernel older than 6.10 (without CAP_DAC_READ_SEARCH): publish() falls back.
                Err(Errno::ENOENT) if tag == "by-fd" => continue,
                other => other.unwrap(),
            }
            assert!(stat_name(&name)
                .unwrap()
                .same_file(&fstat(file.as_fd()).unwrap()));
            assert_eq!(link(file.as_fd(), &target), Err(Errno::EEXIST));
            unlink_name(&name).unwrap();
        }
    }

    #[test]
    fn reopen_gives_an_independent_lock_holder() {
        let file = create_unnamed(4096, 0o600).unwrap();
        lock_shared(file.as_fd()).unwrap();
        let again = reopen(file.as_fd(), false).unwrap();
        lock_shared(again.as_fd()).unwrap();
        assert!(!try_lock_exclusive(file.as_fd()).unwrap());
    }
}
