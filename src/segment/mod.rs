//! Segments and their lifecycle: how a segment is created, attached, counted and destroyed on
//! each backend (SPEC §4).
//!
//! * [`posix`]: `/dev/shm/<name>` holds exactly the segment's bytes (Qt's object, byte for
//!   byte); qsharedmem's bookkeeping lives in a sidecar, `/dev/shm/<name>.qsm` ([`control`]).
//!   Segments that qsharedmem creates are published atomically and destroyed by their last
//!   detach; a segment someone else made (Qt, `multiprocessing`) gets a sidecar of its own on
//!   its first qsharedmem attach, and is never destroyed by us.
//! * [`sysv`]: exactly Qt's objects (key file, `ftok`, `shmget`/`shmat`); the last detacher
//!   (`shm_nattch` 0) removes the segment, its key file and the lock semaphore, under that
//!   semaphore so that no attacher can slip in between.
//! * [`registry`]: every live POSIX attachment of the process, for `fork()` and exit.
//!
//! An [`Attachment`] is this process's view of one segment. It is shared (`Arc`) by the handle
//! and by every buffer exported from it; the segment is detached when the last of them goes.
//!
//! Failures are [`Failure`]s here: what went wrong, in the segment's terms. The façades word
//! them as Qt does (`crate::handle::qt_errors`).

pub(crate) mod control;
pub(crate) mod posix;
pub(crate) mod registry;
pub(crate) mod sysv;
pub(crate) mod sysv_notify;

use crate::sys::mapping::{page_size, Mapping};
use crate::sys::{posix as sys_posix, Errno};

/// `QSharedMemory::AccessMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AccessMode {
    /// `QSharedMemory::ReadOnly` (0): the memory is mapped read-only.
    ReadOnly = 0,
    /// `QSharedMemory::ReadWrite` (1).
    #[default]
    ReadWrite = 1,
}

impl AccessMode {
    /// True for `ReadWrite`.
    #[must_use]
    pub const fn is_writable(self) -> bool {
        matches!(self, Self::ReadWrite)
    }
}

/// What kind of OS object a segment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// A POSIX segment created by qsharedmem (its last detach destroys it).
    Posix,
    /// A POSIX segment created by someone else (Qt, multiprocessing, ...).
    ForeignPosix,
    /// A System V segment (Qt's legacy default on Linux).
    SystemV,
}

/// Who may use the OS objects a `create()` makes: permission bits (Qt: 0600, less the umask)
/// and, optionally, a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// The permission bits.
    pub mode: u32,
    /// The group the objects get (the creator must be a member); `None`: the creator's.
    pub group: Option<u32>,
    /// Whether `mode` was asked for (then it is set exactly, whatever the umask), or is Qt's
    /// default (then the umask applies, as in Qt).
    pub explicit: bool,
}

impl Default for Permissions {
    fn default() -> Self {
        Self {
            mode: 0o600,
            group: None,
            explicit: false,
        }
    }
}

impl Permissions {
    /// Exactly `mode` (and `group`), whatever the umask.
    #[must_use]
    pub const fn exactly(mode: u32, group: Option<u32>) -> Self {
        Self {
            mode,
            group,
            explicit: true,
        }
    }
}

/// Which file a POSIX segment is (its name can be given to another file later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl FileId {
    pub(crate) fn of(st: &sys_posix::FileStat) -> Self {
        Self {
            dev: st.dev,
            ino: st.ino,
        }
    }
}

/// What a handle remembers about a segment after detaching from it, to recognise it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SegmentIdentity {
    /// A POSIX segment: its `/dev/shm` name and file; `ours` for qsharedmem segments (which
    /// their last detach destroys), false for foreign ones (which nobody destroys but `remove`).
    Posix {
        file_name: String,
        file: FileId,
        ours: bool,
    },
    /// A System V segment (its last detach destroys it), by its id.
    SysV { shmid: i32 },
}

/// A step of a segment operation, for the error text of its failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Opening the data file (`shm_open`), also when creating (Qt's label for both).
    Open,
    /// Sizing and reserving a new file.
    Reserve,
    /// `fstat` of the data file.
    Stat,
    /// Mapping the data.
    Map,
    /// Counting the attachment (`flock`).
    Count,
    /// Making, opening or publishing the control block.
    Control,
    /// Initialising the control block's mutex.
    MutexInit,
    /// Setting the permissions of a new object.
    Permissions,
    /// Removing a name (`shm_unlink`).
    Unlink,
    /// System V: `ftok` of the key file.
    Ftok,
    /// System V: `shmget` for a new segment.
    SysVCreate,
    /// System V: `shmget` of an existing segment.
    SysVGet,
    /// System V: `shmat`.
    SysVAttach,
    /// System V: `shmctl(IPC_STAT)`.
    SysVStat,
    /// System V: `shmctl(IPC_RMID)`.
    SysVRemove,
}

/// Why a segment operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A system call failed.
    Os(Step, Errno),
    /// The key is empty.
    EmptyKey,
    /// The System V key file cannot be made (its directory is missing, say).
    KeyFile,
    /// A name that cannot be a POSIX object (`.`, `..`).
    BadName,
    /// The size does not fit in the address space.
    TooLarge,
    /// System V refused the size (`EINVAL` from `shmget`).
    SizeRestrictions,
    /// `/dev/shm` cannot hold `needed` more bytes (`free` are free), or has no inode left.
    OutOfSpace {
        needed: u64,
        free: u64,
        no_inodes: bool,
    },
    /// The name holds a segment of qsharedmem 0.1's layout (its control page at the end of the
    /// data), which this version does not attach.
    OldLayout { file_name: String },
    /// A qsharedmem control block of another layout version.
    UnknownVersion { version: u32 },
    /// `<name>.qsm` exists and is not a qsharedmem control block.
    SidecarTaken { file_name: String },
    /// Someone holds the segment exclusively and did not let go within the wait: a process
    /// destroying it, or one stopped while it did (`flock(LOCK_EX)`).
    Busy,
    /// The caller's interrupt check stopped a wait.
    Interrupted,
}

impl Failure {
    /// The OS error behind the failure, if any.
    pub(crate) fn errno(&self) -> Option<Errno> {
        match self {
            Self::Os(_, errno) => Some(*errno),
            Self::OutOfSpace { .. } => Some(Errno::ENOSPC),
            _ => None,
        }
    }
}

/// This process's attachment to one segment: its mapping, and whatever keeps the attachment
/// counted. Dropping it detaches (and destroys the segment if this was the last attachment).
#[derive(Debug)]
pub struct Attachment {
    size: usize,
    writable: bool,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Posix(posix::PosixAttachment),
    SysV(sysv::SysVAttachment),
}

impl Attachment {
    /// The segment's size: exactly what its creator asked for.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the memory is mapped writable.
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Which kind of segment this is.
    #[must_use]
    pub fn kind(&self) -> SegmentKind {
        match &self.inner {
            Inner::Posix(p) if p.is_ours() => SegmentKind::Posix,
            Inner::Posix(_) => SegmentKind::ForeignPosix,
            Inner::SysV(_) => SegmentKind::SystemV,
        }
    }

    /// The mapping holding the data; the data is its first [`Self::size`] bytes.
    pub(crate) fn data_mapping(&self) -> &Mapping {
        match &self.inner {
            Inner::Posix(p) => p.data(),
            Inner::SysV(s) => s.mapping(),
        }
    }

    /// The first byte of the data.
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.data_mapping().as_ptr()
    }

    /// The control block (POSIX segments that have one).
    #[inline]
    pub(crate) fn control(&self) -> Option<&std::sync::Arc<control::ControlMap>> {
        match &self.inner {
            Inner::Posix(p) => p.control(),
            Inner::SysV(_) => None,
        }
    }

    /// The control block that holds the segment's notify generation and events: a POSIX
    /// segment's own, or a System V segment's notify block (made now if nobody made it yet).
    /// `None` errno for a foreign POSIX segment whose control block this process may not write
    /// (or that has none).
    pub(crate) fn notify_block(
        &self,
    ) -> Result<std::sync::Arc<control::ControlMap>, Option<Errno>> {
        match &self.inner {
            Inner::Posix(p) => p.control().cloned().ok_or(None),
            Inner::SysV(s) => s.notify_block().map_err(Some),
        }
    }

    pub(crate) fn posix(&self) -> Option<&posix::PosixAttachment> {
        match &self.inner {
            Inner::Posix(p) => Some(p),
            Inner::SysV(_) => None,
        }
    }

    pub(crate) fn sysv(&self) -> Option<&sysv::SysVAttachment> {
        match &self.inner {
            Inner::SysV(s) => Some(s),
            Inner::Posix(_) => None,
        }
    }

    /// What identifies this segment once detached.
    pub(crate) fn identity(&self) -> SegmentIdentity {
        match &self.inner {
            Inner::Posix(p) => SegmentIdentity::Posix {
                file_name: p.file_name().to_owned(),
                file: p.data_file(),
                ours: p.is_ours(),
            },
            Inner::SysV(s) => SegmentIdentity::SysV { shmid: s.shmid() },
        }
    }

    /// Whether the segment's name was removed (`remove()`, or `IPC_RMID` for System V). False
    /// for foreign POSIX segments without a control block, which keep no record of it.
    pub(crate) fn name_removed(&self) -> bool {
        match &self.inner {
            Inner::Posix(p) => p.removal_claimed(),
            Inner::SysV(s) => s.marked_for_removal(),
        }
    }

    /// Whether part of the memory was lost: the file shrank under the mapping (another process
    /// truncated it) or could not provide a page (its file system ran full), and the pages were
    /// replaced by private zero pages, so that the access did not kill the process with
    /// `SIGBUS`. Such an attachment no longer shares that memory with anyone.
    #[must_use]
    #[inline]
    pub fn lost_pages(&self) -> bool {
        match &self.inner {
            Inner::Posix(p) => p.lost_pages(),
            Inner::SysV(_) => false,
        }
    }

    /// What happened to an attachment that [lost pages](Self::lost_pages), for error texts.
    pub(crate) fn damage(&self) -> String {
        match &self.inner {
            Inner::Posix(p) => p.damage(),
            Inner::SysV(_) => String::new(),
        }
    }
}

fn round_up(size: usize, page: usize) -> Option<usize> {
    size.checked_add(page - 1).map(|s| s & !(page - 1))
}

/// Bytes a file of `len` bytes takes in `/dev/shm` (whole pages).
pub(crate) fn pages_for(len: usize) -> u64 {
    round_up(len, page_size()).unwrap_or(len) as u64
}

/// The failure for a full `/dev/shm` while making `needed` bytes of new files: no space, or no
/// inode left (then the space does not matter).
pub(crate) fn out_of_space(needed: u64) -> Failure {
    Failure::OutOfSpace {
        needed,
        free: sys_posix::shm_space().map(|(free, _)| free).unwrap_or(0),
        no_inodes: sys_posix::shm_out_of_inodes(),
    }
}
