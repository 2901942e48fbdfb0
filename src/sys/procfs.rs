//! What `/proc` tells about how processes use shared memory, read without touching the objects
//! themselves: `flock` holders (`/proc/locks`), mappings (`/proc/<pid>/maps`, which also lists
//! System V attachments) and open descriptors (`/proc/<pid>/fd`).
//!
//! Inspection tools use this instead of probing with locks of their own: a probe with
//! `flock(LOCK_EX|LOCK_NB)` would make a concurrent last detacher believe that somebody else is
//! still attached, and the segment would outlive everyone. Reading `/proc` changes nothing.
//!
//! Only processes the caller may inspect are visible in `/proc/<pid>/{maps,fd}` (its own user's,
//! or every process for root); `/proc/locks` lists every lock on the machine.

use std::collections::{BTreeSet, HashMap};
use std::fs;

use super::cvt::{Errno, SysResult};
use super::posix::FileStat;

/// A file's identity as `/proc` prints it: device major and minor number, and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The identity of the file `st` describes.
    #[must_use]
    pub fn of(st: &FileStat) -> Self {
        Self {
            major: libc::major(st.dev),
            minor: libc::minor(st.dev),
            ino: st.ino,
        }
    }

    /// The identity of the file with device number `dev` and inode `ino`.
    #[must_use]
    pub fn of_dev(dev: u64, ino: u64) -> Self {
        Self {
            major: libc::major(dev),
            minor: libc::minor(dev),
            ino,
        }
    }

    /// Parses `/proc`'s `"<major hex>:<minor hex>"` device and a decimal inode.
    fn parse(device: &str, ino: &str) -> Option<Self> {
        let (major, minor) = device.split_once(':')?;
        Some(Self {
            major: u32::from_str_radix(major, 16).ok()?,
            minor: u32::from_str_radix(minor, 16).ok()?,
            ino: ino.parse().ok()?,
        })
    }
}

/// One granted `flock` lock from `/proc/locks` (waiters are left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlockHolder {
    /// The process that took the lock (it may have handed the descriptor to a child since, or
    /// be 0/-1 when the kernel cannot name it in our pid namespace).
    pub pid: i32,
    /// The locked file.
    pub file: FileId,
    /// `LOCK_EX` (true) or `LOCK_SH`.
    pub exclusive: bool,
}

/// Every granted `flock` lock on the machine, from `/proc/locks`.
///
/// # Errors
/// The errno of reading `/proc/locks`.
pub fn flock_holders() -> SysResult<Vec<FlockHolder>> {
    let text = read_proc("/proc/locks")?;
    Ok(text.lines().filter_map(parse_lock_line).collect())
}

/// `"1: FLOCK  ADVISORY  READ 27803 00:1b:55188 0 EOF"`; `"1: -> FLOCK ..."` is a waiter.
fn parse_lock_line(line: &str) -> Option<FlockHolder> {
    let mut fields = line.split_whitespace().skip(1);
    let kind = fields.next()?;
    if kind != "FLOCK" {
        return None;
    }
    let _advisory = fields.next()?;
    let exclusive = match fields.next()? {
        "WRITE" => true,
        "READ" => false,
        _ => return None,
    };
    let pid = fields.next()?.parse().ok()?;
    let mut id = fields.next()?.rsplitn(2, ':');
    let ino = id.next()?;
    let file = FileId::parse(id.next()?, ino)?;
    Some(FlockHolder {
        pid,
        file,
        exclusive,
    })
}

/// Which processes map or hold open which shared memory objects.
#[derive(Clone, Debug, Default)]
pub struct ShmUsers {
    /// Files under `/dev/shm` (segments and named semaphores), by identity: pids that map them
    /// or have a descriptor open on them.
    pub files: HashMap<FileId, BTreeSet<i32>>,
    /// System V segments, by id: pids that have them attached.
    pub sysv: HashMap<i32, BTreeSet<i32>>,
}

impl ShmUsers {
    /// The processes using the file `id` (empty if none).
    #[must_use]
    pub fn of_file(&self, id: &FileId) -> BTreeSet<i32> {
        self.files.get(id).cloned().unwrap_or_default()
    }

    /// The processes attached to the System V segment `shmid` (empty if none).
    #[must_use]
    pub fn of_sysv(&self, shmid: i32) -> BTreeSet<i32> {
        self.sysv.get(&shmid).cloned().unwrap_or_default()
    }
}

/// Scans every visible process for mappings of `/dev/shm` files and System V segments, and for
/// descriptors open on `/dev/shm` files. Processes that vanish or may not be inspected while
/// the scan runs are skipped.
///
/// # Errors
/// The errno of listing `/proc`.
pub fn shm_users() -> SysResult<ShmUsers> {
    let mut users = ShmUsers::default();
    let entries = fs::read_dir("/proc").map_err(io_errno)?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) {
            for line in maps.lines() {
                match parse_maps_line(line) {
                    Some(MapsEntry::File(id)) => {
                        users.files.entry(id).or_default().insert(pid);
                    }
                    Some(MapsEntry::SysV(shmid)) => {
                        users.sysv.entry(shmid).or_default().insert(pid);
                    }
                    None => {}
                }
            }
        }
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            if !target.starts_with(super::posix::SHM_DIR) {
                continue;
            }
            // The link text of an unlinked or not yet published file is not a usable name;
            // stat() through the link reaches the file itself.
            if let Ok(meta) = fs::metadata(fd.path()) {
                use std::os::unix::fs::MetadataExt;
                let id = FileId {
                    major: libc::major(meta.dev()),
                    minor: libc::minor(meta.dev()),
                    ino: meta.ino(),
                };
                users.files.entry(id).or_default().insert(pid);
            }
        }
    }
    Ok(users)
}

#[derive(Debug, PartialEq, Eq)]
enum MapsEntry {
    File(FileId),
    SysV(i32),
}

/// `"7f70629af000-7f70629b1000 rw-s 00000000 00:1b 55188   /dev/shm/#55188 (deleted)"`.
/// The path of a segment mapped before it was published names the unnamed file, so files are
/// identified by device and inode; System V attachments show as `/SYSV<key>` with the segment
/// id as inode.
fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    let mut fields = line.split_whitespace();
    let _range = fields.next()?;
    let _perms = fields.next()?;
    let _offset = fields.next()?;
    let device = fields.next()?;
    let ino = fields.next()?;
    // The first word of the path is enough to tell what it is.
    let path = fields.next()?;
    if path.starts_with("/SYSV") {
        return ino.parse().ok().map(MapsEntry::SysV);
    }
    let in_shm_dir = path
        .strip_prefix(super::posix::SHM_DIR)
        .is_some_and(|rest| rest.starts_with('/'));
    if in_shm_dir {
        return FileId::parse(device, ino).map(MapsEntry::File);
    }
    None
}

fn read_proc(path: &str) -> SysResult<String> {
    fs::read_to_string(path).map_err(io_errno)
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_io(&e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let held = parse_lock_line("1: FLOCK  ADVISORY  READ 27803 00:1b:55188 0 EOF").unwrap();
        assert_eq!(held.pid, 27803);
        assert!(!held.exclusive);
        assert_eq!(
            held.file,
            FileId {
                major: 0,
                minor: 0x1b,
                ino: 55188
            }
        );
        let ex = parse_lock_line("2: FLOCK  ADVISORY  WRITE 29841 fe:00:10010710 0 EOF").unwrap();
        assert!(ex.exclusive);
        assert_eq!(ex.file.major, 0xfe);
        assert_eq!(
            parse_lock_line("2: -> FLOCK  ADVISORY  WRITE 30597 fe:00:10010710 0 EOF"),
            None
        );
        assert_eq!(
            parse_lock_line("3: POSIX  ADVISORY  WRITE 1 00:1b:7 0 EOF"),
            None
        );
    }

    #[test]
    fn maps_lines() {
        assert_eq!(
            parse_maps_line(
                "7f70629af000-7f70629b1000 rw-s 00000000 00:1b 55188                      \
                 /dev/shm/#55188 (deleted)"
            ),
            Some(MapsEntry::File(FileId {
                major: 0,
                minor: 0x1b,
                ino: 55188
            }))
        );
        assert_eq!(
            parse_maps_line(
                "7f70627be000-7f70627c0000 rw-s 00000000 00:01 2818055                    \
                 /SYSV5100c092 (deleted)"
            ),
            Some(MapsEntry::SysV(2818055))
        );
        assert_eq!(
            parse_maps_line(
                "55ec521e9000-55ec521eb000 r--p 00000000 fe:00 247282      /usr/bin/head"
            ),
            None
        );
        assert_eq!(
            parse_maps_line("7ffd1c5f8000-7ffd1c619000 rw-p 00000000 00:00 0     [stack]"),
            None
        );
        assert_eq!(
            parse_maps_line("7ffd1c5f8000-7ffd1c619000 rw-p 00000000 00:00 0"),
            None
        );
        assert_eq!(
            parse_maps_line("1000-2000 rw-s 00000000 00:1b 5 /dev/shmother/x"),
            None
        );
    }

    #[test]
    fn own_flock_and_mapping_are_seen() {
        use crate::sys::mapping::Mapping;
        use crate::sys::posix;
        use std::os::fd::AsFd;

        let file = posix::create_unnamed(4096, 0o600).unwrap();
        let id = FileId::of(&posix::fstat(file.as_fd()).unwrap());
        posix::lock_shared(file.as_fd()).unwrap();
        let holders = flock_holders().unwrap();
        assert!(holders
            .iter()
            .any(|h| h.file == id && h.pid == std::process::id() as i32 && !h.exclusive));
        let _map = Mapping::map_file(file.as_fd(), 0, 4096, false).unwrap();
        let users = shm_users().unwrap();
        assert!(users.of_file(&id).contains(&(std::process::id() as i32)));
    }
}
