//! The control block of a POSIX segment: a sidecar file of qsharedmem's own next to the data.
//!
//! `/dev/shm/<name>` holds exactly the segment's bytes, as Qt's and `multiprocessing`'s
//! segments do, so every reader sees the same size and no reader can overwrite our
//! bookkeeping. Everything else lives in `/dev/shm/<name>.qsm`, one page:
//!
//! | offset | field |
//! |---:|---|
//! | 0 | magic `QSMSIDE\x02` (written last: a block with the magic is complete) |
//! | 8 | layout version (2) |
//! | 12 | flags: bit 0 set for a block made for someone else's data file ("adopted"), bit 1 while its creator names the data |
//! | 16 | the data file's device and inode (`st_dev`, `st_ino`) |
//! | 32 | the data file's size at creation |
//! | 40 | creation time, ms since the epoch |
//! | 48 | the creator's pid |
//! | 52 | the removal claim (nonzero once `remove()` took the names away) |
//! | 64 | the lock: robust mutex, holder and Qt-semaphore state, owner deaths (128 bytes) |
//! | 192 | wait/notify: the generation word, its waiters, the event namer (64 bytes) |
//! | 256 | 32 events of 64 bytes: state word, waiters, name |
//! | 2304 | native key and Qt legacy key: lengths, then 256 and 1024 bytes |
//!
//! Every field is an atomic: other processes write the block while we read it, so every
//! cross-process read is an atomic load. The block is mapped read-write by every attachment
//! that can write it (the lock needs that, also for a `ReadOnly` attachment).

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::FileId;
use crate::lock::robust_mutex::RobustLock;
use crate::sys::mapping::{cross_process, Mapping};
use crate::sys::{posix, Errno};

/// The suffix of a sidecar's file name: `/dev/shm/<name>` + this.
pub(crate) const SIDECAR_SUFFIX: &str = ".qsm";

/// The size of a sidecar file.
pub(crate) const CONTROL_SIZE: usize = 4096;

const MAGIC: u64 = u64::from_ne_bytes(*b"QSMSIDE\x02");
/// The layout version this code writes and reads (1 was qsharedmem 0.1's control page at the end
/// of the data file).
pub(crate) const VERSION: u32 = 2;
/// Flag: the block was made for a data file that someone else created (Qt, `multiprocessing`):
/// the last detacher removes the block, never the data.
const ADOPTED: u32 = 1;
/// Flag: the creator has named the block but not yet the data (the only time a block in use
/// legitimately has no data file of its name).
const PUBLISHING: u32 = 2;
/// Flag: the block holds only the notify words and events of a System V segment, whose shmid
/// is `data_ino` (see `segment::sysv_notify`); its lock is not used.
const SYSV_NOTIFY: u32 = 4;
/// `data_dev` of a System V notify block (no device of a file system is all ones).
const SYSV_DEV: u64 = u64::MAX;

/// Room for the native key (the `/dev/shm` name is at most 255 bytes).
const NATIVE_KEY_MAX: usize = 256;
/// Room for Qt's legacy key (longer ones are not recorded; only inspection shows them).
const LEGACY_KEY_MAX: usize = 1024;
/// How many named events a segment has.
pub(crate) const EVENT_COUNT: usize = 32;
/// Room for an event's name.
pub(crate) const EVENT_NAME_MAX: usize = 48;

cross_process! {
    /// The wait/notify word of a segment (64 bytes, a cache line of its own).
    pub(crate) struct NotifyBlock {
        /// Bumped by every notify; waiters sleep on it (a futex word).
        pub(crate) generation: AtomicU32,
        /// How many processes sleep on `generation` (a notify with none skips the wake-up call).
        pub(crate) waiters: AtomicU32,
        /// The pid of the process naming an event right now (0: nobody), see `notify::events`.
        pub(crate) event_namer: AtomicU32,
        _reserved: [AtomicU32; 13],
    }
}

cross_process! {
    /// One named event (64 bytes).
    pub(crate) struct EventSlot {
        /// Bit 0: set; the bits above count the `set()`s that found it clear (so that a waiter
        /// sees a `set()` that a `clear()` undid at once). Waiters sleep on it (a futex word).
        pub(crate) state: AtomicU32,
        /// How many processes sleep on `state`.
        pub(crate) waiters: AtomicU32,
        /// 0: the slot is free; otherwise the length of `name` + 1 (an unnamed, numbered slot has
        /// length 1).
        pub(crate) name_len: AtomicU32,
        _reserved: AtomicU32,
        pub(crate) name: [AtomicU8; EVENT_NAME_MAX],
    }
}

cross_process! {
    /// The control block; see the module documentation for the layout.
    pub(crate) struct Control {
        magic: AtomicU64,
        version: AtomicU32,
        flags: AtomicU32,
        data_dev: AtomicU64,
        data_ino: AtomicU64,
        data_size: AtomicU64,
        created_ms: AtomicU64,
        creator_pid: AtomicU32,
        removal_claimed: AtomicU32,
        _reserved: [AtomicU32; 2],
        pub(crate) lock: RobustLock,
        pub(crate) notify: NotifyBlock,
        pub(crate) events: [EventSlot; EVENT_COUNT],
        native_key_len: AtomicU32,
        legacy_key_len: AtomicU32,
        native_key: [AtomicU8; NATIVE_KEY_MAX],
        legacy_key: [AtomicU8; LEGACY_KEY_MAX],
        _tail: [AtomicU8; 504],
    }
}

/// Fails the build unless each field of `$type` is at the byte offset given for it.
macro_rules! assert_layout {
    ($type:ty { $($field:ident: $offset:expr),* $(,)? }) => {
        $(assert!(
            std::mem::offset_of!($type, $field) == $offset,
            concat!(stringify!($type), ".", stringify!($field), " is not at ", stringify!($offset)),
        );)*
    };
}

// The layout docs/design.md documents, which other versions and the inspector rely on.
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<Control>() == CONTROL_SIZE);
    assert!(size_of::<NotifyBlock>() == 64 && size_of::<EventSlot>() == 64);
    assert_layout!(Control {
        version: 8,
        flags: 12,
        data_dev: 16,
        data_size: 32,
        created_ms: 40,
        creator_pid: 48,
        removal_claimed: 52,
        lock: 64,
        notify: 192,
        events: 256,
        native_key_len: 2304,
        native_key: 2312,
        legacy_key: 2568,
    });
};

/// What a new control block says about its segment.
pub(crate) struct Describe<'a> {
    pub(crate) data: FileId,
    pub(crate) data_size: u64,
    pub(crate) adopted: bool,
    pub(crate) native_key: &'a str,
    pub(crate) legacy_key: Option<&'a str>,
    pub(crate) creator_pid: i32,
    pub(crate) created_ms: u64,
}

fn store_bytes(len: &AtomicU32, field: &[AtomicU8], bytes: &[u8]) {
    if bytes.len() > field.len() {
        return;
    }
    for (cell, &byte) in field.iter().zip(bytes) {
        cell.store(byte, Ordering::Relaxed);
    }
    len.store(bytes.len() as u32 + 1, Ordering::Relaxed);
}

fn load_string(len: &AtomicU32, field: &[AtomicU8]) -> Option<String> {
    let len = usize::try_from(len.load(Ordering::Relaxed))
        .ok()?
        .checked_sub(1)?;
    let bytes: Vec<u8> = field
        .get(..len)?
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    String::from_utf8(bytes).ok()
}

impl Control {
    /// Writes a fresh block and initialises its mutex; the magic goes last. Only for a block
    /// whose file is not published yet (on a used one it would break the lock).
    pub(crate) fn initialise(&self, what: &Describe<'_>) -> Result<(), Errno> {
        self.version.store(VERSION, Ordering::Relaxed);
        let flags = if what.adopted { ADOPTED } else { PUBLISHING };
        self.flags.store(flags, Ordering::Relaxed);
        self.data_dev.store(what.data.dev, Ordering::Relaxed);
        self.data_ino.store(what.data.ino, Ordering::Relaxed);
        self.data_size.store(what.data_size, Ordering::Relaxed);
        self.created_ms.store(what.created_ms, Ordering::Relaxed);
        self.creator_pid.store(
            u32::try_from(what.creator_pid).unwrap_or(0),
            Ordering::Relaxed,
        );
        self.store_keys(what);
        self.lock.init()?;
        self.magic.store(MAGIC, Ordering::Release);
        Ok(())
    }

    /// The keys the segment was made with, for the inspector.
    fn store_keys(&self, what: &Describe<'_>) {
        store_bytes(
            &self.native_key_len,
            &self.native_key,
            what.native_key.as_bytes(),
        );
        if let Some(legacy) = what.legacy_key {
            store_bytes(&self.legacy_key_len, &self.legacy_key, legacy.as_bytes());
        }
    }

    /// Writes a fresh block for the notify words and events of the System V segment `shmid`,
    /// made by `creator_pid` (its `shm_cpid`, which tells it from a later segment that got the
    /// same id); the magic goes last. Only for a block whose file is not published yet.
    pub(crate) fn initialise_sysv_notify(&self, shmid: i32, creator_pid: i32, what: &Describe<'_>) {
        self.version.store(VERSION, Ordering::Relaxed);
        self.flags.store(ADOPTED | SYSV_NOTIFY, Ordering::Relaxed);
        self.data_dev.store(SYSV_DEV, Ordering::Relaxed);
        self.data_ino
            .store(u64::from(shmid.unsigned_abs()), Ordering::Relaxed);
        self.data_size.store(what.data_size, Ordering::Relaxed);
        self.created_ms.store(what.created_ms, Ordering::Relaxed);
        // The creator of the System V segment, not of this block.
        self.creator_pid
            .store(creator_pid.unsigned_abs(), Ordering::Relaxed);
        self.store_keys(what);
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Whether the block is complete and of this layout version (whatever it describes).
    pub(crate) fn is_complete(&self) -> bool {
        self.magic.load(Ordering::Acquire) == MAGIC
            && self.version.load(Ordering::Relaxed) == VERSION
    }

    /// Whether the block is complete and holds the notify words of the System V segment
    /// `shmid` made by `creator_pid`.
    pub(crate) fn describes_sysv(&self, shmid: i32, creator_pid: i32) -> bool {
        self.magic.load(Ordering::Acquire) == MAGIC
            && self.version.load(Ordering::Relaxed) == VERSION
            && self.flags.load(Ordering::Relaxed) & SYSV_NOTIFY != 0
            && self.data_dev.load(Ordering::Relaxed) == SYSV_DEV
            && self.data_ino.load(Ordering::Relaxed) == u64::from(shmid.unsigned_abs())
            && self.creator_pid.load(Ordering::Relaxed) == creator_pid.unsigned_abs()
    }

    /// Whether the block is complete, of this layout version, and describes the data file
    /// `data`.
    pub(crate) fn describes(&self, data: FileId) -> bool {
        self.magic.load(Ordering::Acquire) == MAGIC
            && self.version.load(Ordering::Relaxed) == VERSION
            && self.data_dev.load(Ordering::Relaxed) == data.dev
            && self.data_ino.load(Ordering::Relaxed) == data.ino
    }

    /// The creator named the data: the block describes a published segment from now on.
    pub(crate) fn finish_publishing(&self) {
        self.flags.fetch_and(!PUBLISHING, Ordering::Release);
    }

    /// Whether the block was made for someone else's data file.
    pub(crate) fn is_adopted(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & ADOPTED != 0
    }

    /// Claims the removal of the segment's names: true for exactly one caller, in any process,
    /// so that two concurrent `remove()`s never unlink twice (the second one could otherwise
    /// unlink a new segment that took the name in between).
    pub(crate) fn claim_removal(&self) -> bool {
        self.removal_claimed
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives a claim back (the unlink failed, the name is still there).
    pub(crate) fn release_removal_claim(&self) {
        self.removal_claimed.store(0, Ordering::Release);
    }

    /// Whether `remove()` took the segment's names away.
    pub(crate) fn removal_claimed(&self) -> bool {
        self.removal_claimed.load(Ordering::Acquire) != 0
    }
}

/// A mapping of a sidecar whose block is complete: the lock's and the notify words' home.
#[derive(Debug)]
pub(crate) struct ControlMap {
    map: Mapping,
}

impl ControlMap {
    /// Maps the sidecar `fd` (read-write).
    pub(crate) fn map(fd: BorrowedFd<'_>) -> Result<Self, Errno> {
        Ok(Self {
            map: Mapping::map_file(fd, 0, CONTROL_SIZE, true)?,
        })
    }

    /// The block.
    #[inline]
    pub(crate) fn control(&self) -> &Control {
        self.map.shared::<Control>(0)
    }

    /// Whether the sidecar file shrank under the mapping (someone truncated it): the block is
    /// then private zero pages, and the lock in it no longer shared.
    #[inline]
    pub(crate) fn lost_pages(&self) -> bool {
        self.map.lost_pages()
    }
}

impl Drop for ControlMap {
    /// A block that the `SIGBUS` handler replaced with a zero page (the file was truncated
    /// under it) stays mapped until the process exits instead of being unmapped: a thread that
    /// held the lock when the file shrank unlocks a zeroed mutex, which glibc takes for a plain
    /// one and unlocks without taking it off the thread's robust list, and that thread's next
    /// robust lock (another segment's) links its new entry to this one, writing into the page.
    /// Kept, the write lands in private memory; unmapped, it would be a `SIGSEGV`.
    fn drop(&mut self) {
        if self.map.lost_pages() {
            self.map.keep_mapped_from(0);
        }
    }
}

/// What a control block says, read from a copy of the file (inspection tools: looking must not
/// take a lock, count as an attachment, or fault if someone shrinks the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ControlRecord {
    /// The data file it describes.
    pub(crate) data: FileId,
    /// The data file's size at creation.
    pub(crate) data_size: u64,
    /// Made for someone else's data file.
    pub(crate) adopted: bool,
    /// Its creator has not named the data yet (or died before it could).
    pub(crate) publishing: bool,
    /// The creator's pid.
    pub(crate) creator_pid: i32,
    /// Creation time, milliseconds since the epoch.
    pub(crate) created_ms: u64,
    /// The pid recorded as holding the lock (0: nobody).
    pub(crate) lock_holder: i32,
    /// Whether that holder holds Qt's semaphore.
    pub(crate) holds_qt_semaphore: bool,
    /// A dead holder that may still have Qt's semaphore (0: none).
    pub(crate) doubtful_holder: i32,
    /// The lock's raw state word (holder pid and Qt-semaphore stage).
    pub(crate) lock_state: u32,
    /// How many times a holder died while holding the lock.
    pub(crate) owner_deaths: u32,
    /// The native key the segment was created with.
    pub(crate) native_key: Option<String>,
    /// The Qt legacy key the segment was created with.
    pub(crate) legacy_key: Option<String>,
    /// For the notify block of a System V segment: that segment's shmid.
    pub(crate) sysv_shmid: Option<i32>,
    /// How many processes wait for a notification.
    pub(crate) notify_waiters: u32,
    /// The notify generation.
    pub(crate) generation: u32,
    /// The events in use: name (or `#index`), set, waiters.
    pub(crate) events: Vec<(String, bool, u32)>,
}

/// Why a sidecar could not be read as a control block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NotAControlBlock {
    /// Too short, or without the magic: not ours (or not finished; published ones always are).
    Foreign,
    /// Ours, but of another layout version.
    Version(u32),
    /// Reading failed.
    Os(Errno),
}

impl ControlRecord {
    /// Reads the control block of the sidecar `fd` with `pread` into a copy.
    pub(crate) fn read(fd: BorrowedFd<'_>) -> Result<Self, NotAControlBlock> {
        let copy = Mapping::anonymous(CONTROL_SIZE).map_err(NotAControlBlock::Os)?;
        let bytes = read_into_copy(fd, &copy)?;
        if bytes < CONTROL_SIZE {
            return Err(NotAControlBlock::Foreign);
        }
        let control = copy.shared::<Control>(0);
        if control.magic.load(Ordering::Relaxed) != MAGIC {
            return Err(NotAControlBlock::Foreign);
        }
        let version = control.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(NotAControlBlock::Version(version));
        }
        let events = control
            .events
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let len = slot.name_len.load(Ordering::Relaxed);
                (len > 0).then(|| {
                    let name = load_string(&slot.name_len, &slot.name)
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| format!("#{index}"));
                    (
                        name,
                        slot.state.load(Ordering::Relaxed) & 1 != 0,
                        slot.waiters.load(Ordering::Relaxed),
                    )
                })
            })
            .collect();
        Ok(Self {
            data: FileId {
                dev: control.data_dev.load(Ordering::Relaxed),
                ino: control.data_ino.load(Ordering::Relaxed),
            },
            data_size: control.data_size.load(Ordering::Relaxed),
            adopted: control.is_adopted(),
            publishing: control.flags.load(Ordering::Relaxed) & PUBLISHING != 0,
            creator_pid: i32::try_from(control.creator_pid.load(Ordering::Relaxed)).unwrap_or(0),
            created_ms: control.created_ms.load(Ordering::Relaxed),
            lock_holder: control.lock.holder(),
            holds_qt_semaphore: control.lock.holds_partner(),
            doubtful_holder: control.lock.doubtful_holder(),
            lock_state: control.lock.state_word(),
            owner_deaths: control.lock.owner_deaths(),
            native_key: load_string(&control.native_key_len, &control.native_key),
            legacy_key: load_string(&control.legacy_key_len, &control.legacy_key),
            sysv_shmid: (control.flags.load(Ordering::Relaxed) & SYSV_NOTIFY != 0)
                .then(|| i32::try_from(control.data_ino.load(Ordering::Relaxed)).unwrap_or(-1)),
            notify_waiters: control.notify.waiters.load(Ordering::Relaxed),
            generation: control.notify.generation.load(Ordering::Relaxed),
            events,
        })
    }
}

/// `pread`s the start of `fd` into the anonymous mapping `copy` (through a byte buffer: a
/// mapping is never written as bytes by safe code); returns how many bytes were read.
fn read_into_copy(fd: BorrowedFd<'_>, copy: &Mapping) -> Result<usize, NotAControlBlock> {
    let mut buf = vec![0u8; CONTROL_SIZE];
    let read = posix::read_at(fd, 0, &mut buf).map_err(NotAControlBlock::Os)?;
    let cells = copy.shared::<[AtomicU8; CONTROL_SIZE]>(0);
    for (cell, byte) in cells.iter().zip(&buf[..read]) {
        cell.store(*byte, Ordering::Relaxed);
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_describes_its_data_file_once_complete() {
        let map = Mapping::anonymous_shared(CONTROL_SIZE).unwrap();
        let control = map.shared::<Control>(0);
        let data = FileId { dev: 7, ino: 42 };
        assert!(!control.describes(data), "no magic yet");
        control
            .initialise(&Describe {
                data,
                data_size: 100,
                adopted: false,
                native_key: "/name",
                legacy_key: Some("legacy key"),
                creator_pid: 1234,
                created_ms: 5,
            })
            .unwrap();
        assert!(control.describes(data));
        assert!(!control.describes(FileId { dev: 7, ino: 43 }));
        assert!(!control.is_adopted());
        assert_ne!(control.flags.load(Ordering::Relaxed) & PUBLISHING, 0);
        control.finish_publishing();
        assert_eq!(control.flags.load(Ordering::Relaxed), 0);
        assert!(control.claim_removal());
        assert!(!control.claim_removal(), "exactly one claim");
        assert_eq!(
            load_string(&control.legacy_key_len, &control.legacy_key).as_deref(),
            Some("legacy key")
        );
    }
}
