//! The notify block of a System V segment: `/dev/shm/qsm-sysv-<shmid>.qsm`.
//!
//! System V segments are Qt's objects byte for byte and have no room for qsharedmem's notify
//! generation and events, so those live in a control block of their own ([`super::control`],
//! flagged as a System V notify block, its lock unused), named after the segment's id:
//!
//! * **Made on first use**, not at attach: a program that never waits costs nothing. The first
//!   process that needs it makes it unnamed (`O_TMPFILE`), initialises it (its magic last) and
//!   names it with `linkat`; a process that finds the name taken uses that one. The block gets
//!   the segment's permission bits and group, so whoever may attach may wait and notify.
//! * **Tied to one segment**: the block records the shmid and the segment's creator pid
//!   (`shm_cpid`); a block that describes another segment of the same id (the kernel reuses ids
//!   after a long time) is left over from a crash and is replaced.
//! * **Removed with the segment**, by whoever removes the segment: its last detacher (under the
//!   key's lock, once `shm_nattch` is 0), the `create()` that reclaims it as an orphan, and
//!   `qsharedmem rm`/`gc` (which also remove blocks whose segment is gone). A process that makes
//!   the block is attached, so the segment cannot be removed while it does.

use std::os::fd::AsFd;

use super::control::{ControlMap, Describe, CONTROL_SIZE, SIDECAR_SUFFIX};
use super::FileId;
use crate::sys::{posix, sysv, Errno};

/// How the name of a System V notify block begins.
pub(crate) const PREFIX: &str = "qsm-sysv-";

/// The `/dev/shm` file name of the notify block of the segment `shmid`.
pub(crate) fn file_name(shmid: i32) -> String {
    format!("{PREFIX}{shmid}{SIDECAR_SUFFIX}")
}

/// The shmid a notify block's file name names, if it is one.
pub(crate) fn shmid_of(file_name: &str) -> Option<i32> {
    file_name
        .strip_prefix(PREFIX)?
        .strip_suffix(SIDECAR_SUFFIX)?
        .parse()
        .ok()
}

/// Maps the notify block of the segment `shmid`, making it if there is none. The caller is
/// attached to the segment.
pub(crate) fn open_or_create(shmid: i32) -> Result<ControlMap, Errno> {
    let segment = sysv::shm_stat(shmid)?;
    let name = file_name(shmid);
    for _ in 0..8 {
        match posix::open_existing(&name, true) {
            Ok(fd) => {
                if posix::fstat(fd.as_fd())?.size < CONTROL_SIZE as u64 {
                    // Not a block of ours (too short to map safely): not ours to remove either.
                    return Err(Errno::EEXIST);
                }
                let map = ControlMap::map(fd.as_fd())?;
                if map.control().describes_sysv(shmid, segment.creator_pid) {
                    return Ok(map);
                }
                if map.control().is_complete() {
                    // A block of an earlier segment with this id, left by a crash.
                    let _ = posix::unlink_if_same(&name, fd.as_fd());
                    continue;
                }
                // Not ours at all, or half made by a creator that died (it was never named, so
                // this cannot be): leave it alone.
                return Err(Errno::EEXIST);
            }
            Err(Errno::ENOENT) => {
                let fd = posix::create_unnamed(CONTROL_SIZE as u64, 0o600)?;
                // The segment's permissions and group: whoever may write the segment may use
                // the block (as for a POSIX segment's control block, which has its data's).
                let _ = posix::set_mode(fd.as_fd(), segment.mode & 0o666);
                let _ = posix::set_group(fd.as_fd(), segment.gid);
                let map = ControlMap::map(fd.as_fd())?;
                map.control().initialise_sysv_notify(
                    shmid,
                    segment.creator_pid,
                    &Describe {
                        data: FileId { dev: 0, ino: 0 },
                        data_size: segment.size as u64,
                        adopted: true,
                        native_key: "",
                        legacy_key: None,
                        creator_pid: segment.creator_pid,
                        created_ms: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    },
                );
                match posix::publish(fd.as_fd(), &name) {
                    Ok(()) => return Ok(map),
                    Err(Errno::EEXIST) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EEXIST)
}

/// Removes the notify block of the segment `shmid`, if there is one (the segment is gone or
/// being removed by the caller).
pub(crate) fn remove(shmid: i32) {
    let name = file_name(shmid);
    if let Ok(fd) = posix::open_existing(&name, false) {
        let _ = posix::unlink_if_same(&name, fd.as_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_shmid() {
        assert_eq!(file_name(42), "qsm-sysv-42.qsm");
        assert_eq!(shmid_of("qsm-sysv-42.qsm"), Some(42));
        assert_eq!(shmid_of("qsm-sysv-x.qsm"), None);
        assert_eq!(shmid_of("data.qsm"), None);
    }
}
