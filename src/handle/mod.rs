//! [`Handle`]: `QSharedMemory`'s state machine (key, attachment, Qt's embedded lock semaphore,
//! `lockedByMe`, `error()`), shareable between threads: every method takes `&self`.
//!
//! The concurrency rules, which the Rust façade and the Python binding both rely on:
//!
//! * The state mutex is held only for moments: never across a wait, never while the caller's
//!   interrupt check runs (the Python binding's re-enters the interpreter). An operation that
//!   waits (a lock, the System V lock of create/attach/detach, an attach that waits for a
//!   segment held exclusively) prepares under the mutex, waits without it, and finishes under
//!   it; if the handle changed meanwhile (another thread detached it, gave it another key,
//!   locked it), what the wait got is given back and the operation reports it.
//! * `lock()`, `unlock()`, `data()` and `size()` have hot paths that take no mutex at all: the
//!   current attachment and lock target are [`Published`], who holds the lock is an atomic.
//!   They need a [`Quiescence`] (the binding's: the GIL). Replaced values are retired, and
//!   freed by [`Handle::reclaim`] under the same proof.
//! * Everything a forked child inherits is checked against the fork generation: a child never
//!   believes it holds its parent's lock, and its attachments take counts of their own.

mod attach_wait;
mod create_attach;
mod detach;
mod init_key;
mod locking;
mod notify;
pub(crate) mod qt_errors;
mod remove;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::{Error, ErrorKind};
use crate::key::{KeyType, NativeIpcKey};
use crate::lock::posix_sem::PosixSemaphore;
use crate::lock::sysv_sem::SysVSemaphore;
use crate::segment::control::ControlMap;
use crate::segment::{Attachment, SegmentIdentity, SegmentKind};
use crate::sys::process;
use crate::sys::published::{Published, Quiescence};

/// Qt's embedded lock semaphore: set up by create()/attach() (Qt's `initKey`), kept across
/// detach().
#[derive(Clone, Debug)]
enum Semaphore {
    Posix(Arc<PosixSemaphore>),
    SysV(Arc<SysVSemaphore>),
}

/// What `lock()` and `unlock()` work on.
#[derive(Debug)]
pub(crate) enum Target {
    /// A POSIX segment with a control block: its robust mutex, then Qt's semaphore.
    Paired {
        attachment: Arc<Attachment>,
        /// The attachment's control block (the robust lock's home).
        control: Arc<ControlMap>,
        semaphore: Option<Arc<PosixSemaphore>>,
    },
    /// Qt's POSIX semaphore alone: before a segment exists (`lock()` before `create()`, as in
    /// Qt), or for a segment without a control block.
    Semaphore(Arc<PosixSemaphore>),
    /// A System V segment's semaphore set (also usable without an attachment, as in Qt).
    SysV(Arc<SysVSemaphore>),
}

/// What a holder holds of its target.
const HOLDS_ALL: u8 = 0;
/// Only Qt's semaphore of a paired target: taken before the segment was attached (the mutex
/// cannot be taken then without breaking the lock order).
const HOLDS_SEMAPHORE: u8 = 1;

/// The segment a handle was attached to last, remembered by `remove()` after a detach.
#[derive(Clone, Debug)]
struct Previous {
    identity: SegmentIdentity,
    /// Whether its name had been removed when this handle let go (or this handle removed it).
    name_removed: bool,
}

/// What the state mutex protects.
#[derive(Debug)]
struct State {
    key: NativeIpcKey,
    attachment: Option<Arc<Attachment>>,
    semaphore: Option<Semaphore>,
    /// The key `semaphore` was set up for (after `set_native_key` it can differ from `key`).
    semaphore_key: NativeIpcKey,
    target: Option<Arc<Target>>,
    last_error: Option<Error>,
    fork_generation: u64,
    previous: Option<Previous>,
    /// Qt's embedded semaphore keeps the error of a `create()` that failed on the empty POSIX
    /// key: re-keying it to that same key for an attach is a no-op, so the attach reports that
    /// error too (until another key is used).
    empty_posix_key_failed: bool,
    /// A semaphore lock was given back for a thread that ended holding it: the next `lock()`
    /// reports the death.
    unreported_death: bool,
    /// Replaced targets and attachments, freed by [`Handle::reclaim`].
    retired_targets: Vec<Arc<Target>>,
    retired_attachments: Vec<Arc<Attachment>>,
}

/// What the hot paths read without the state mutex.
#[derive(Debug, Default)]
struct Fast {
    target: Published<Target>,
    attachment: Published<Attachment>,
    /// `thread_self()` of the thread holding the lock through this handle, 0 if none.
    held_by: AtomicUsize,
    /// What it holds (`HOLDS_ALL`, `HOLDS_SEMAPHORE`).
    holds: AtomicU8,
    /// The thread token of the holder (for a semaphore lock: to notice that the thread ended).
    holder_token: AtomicU64,
    /// The kernel thread id that the robust mutex named right after the holder took it: once
    /// the mutex names another (or none) while the handle still says "held", the holder
    /// thread ended (the kernel released the mutex for it).
    holder_tid: AtomicU32,
    /// The target held (it may be retired while held: it is not freed then).
    held_target: Published<Target>,
    /// Whether the last successful lock() found that the previous holder had died.
    owner_died: AtomicBool,
    /// The fork generation the state belongs to: a hot path in a forked child goes the slow
    /// way, which re-homes the handle first.
    generation: AtomicU64,
}

/// What a handle retired: dropping it frees it (and may detach from a segment).
#[derive(Debug)]
#[must_use = "dropping it frees what was retired"]
pub struct Retired {
    _targets: Vec<Arc<Target>>,
    _attachments: Vec<Arc<Attachment>>,
}

/// `QSharedMemory`'s state machine, shareable between threads. See the module documentation.
#[derive(Debug)]
pub struct Handle {
    state: Mutex<State>,
    fast: Fast,
}

impl Default for Handle {
    fn default() -> Self {
        Self::new()
    }
}

impl Handle {
    /// `QSharedMemory()`: a handle with an empty key (type `PosixRealtime`).
    #[must_use]
    pub fn new() -> Self {
        let generation = process::fork_generation();
        let fast = Fast::default();
        fast.generation.store(generation, Ordering::Relaxed);
        Self {
            state: Mutex::new(State {
                key: NativeIpcKey::default(),
                attachment: None,
                semaphore: None,
                semaphore_key: NativeIpcKey::default(),
                target: None,
                last_error: None,
                fork_generation: generation,
                previous: None,
                empty_posix_key_failed: false,
                unreported_death: false,
                retired_targets: Vec::new(),
                retired_attachments: Vec::new(),
            }),
            fast,
        }
    }

    /// `QSharedMemory(const QNativeIpcKey &key)`. An unsupported key type leaves the key empty
    /// (of that type, as in Qt, whose handle is built for the key's type) and records
    /// `KeyError`, unless the key is empty; create() and attach() then fail with Qt's
    /// `initKey` error.
    #[must_use]
    pub fn with_key(key: NativeIpcKey) -> Self {
        let handle = Self::new();
        handle.reset(Some(key));
        handle
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement, so a panic elsewhere cannot leave it
        // half-updated.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh_after_fork(&mut state);
        state
    }

    /// After `fork()`, a child's handle must neither use the parent's `flock` nor believe it
    /// holds the parent's lock.
    fn refresh_after_fork(&self, state: &mut State) {
        let now = process::fork_generation();
        if now == state.fork_generation {
            return;
        }
        state.fork_generation = now;
        if let Some(att) = &state.attachment {
            att.rehome_after_fork();
        }
        self.fast.held_by.store(0, Ordering::Relaxed);
        self.fast.held_target.publish(None);
        self.fast.owner_died.store(false, Ordering::Relaxed);
        self.fast.generation.store(now, Ordering::Release);
    }

    /// Makes this handle independent of its parent after `fork()` (idempotent). Every
    /// operation does this by itself; calling it right after the fork also protects a segment
    /// the child keeps attached without touching it.
    pub fn after_fork(&self) {
        drop(self.state());
    }

    fn record(&self, state: &mut State, error: Error) -> Error {
        state.last_error = Some(error.clone());
        error
    }

    /// Publishes the state's attachment and target for the hot paths, retiring what they
    /// replace.
    fn publish(&self, state: &mut State) {
        self.fast.attachment.publish(state.attachment.as_ref());
        self.fast.target.publish(state.target.as_ref());
    }

    /// Replaces the attachment, retiring the old one.
    fn set_attachment(&self, state: &mut State, attachment: Option<Arc<Attachment>>) {
        if let Some(old) = std::mem::replace(&mut state.attachment, attachment) {
            state.retired_attachments.push(old);
        }
        self.publish(state);
    }

    /// Replaces the lock target, retiring the old one.
    fn set_target(&self, state: &mut State, target: Option<Target>) {
        let target = target.map(Arc::new);
        if let Some(old) = std::mem::replace(&mut state.target, target) {
            state.retired_targets.push(old);
        }
        self.publish(state);
    }

    /// Takes out what state changes retired, to be dropped by the caller (with the GIL
    /// released, for the binding: a last detach may wait for a System V lock). No hot path of
    /// another thread can be using it: the proof is the lock they hold while they run; later
    /// ones cannot reach it, as it was unpublished before it was retired.
    pub fn retired(&self, _quiescent: &Quiescence) -> Retired {
        let mut state = self.state();
        let held = &self.fast.held_target;
        // A retired target that is still held stays until it is unlocked.
        let (keep, free): (Vec<_>, Vec<_>) = std::mem::take(&mut state.retired_targets)
            .into_iter()
            .partition(|t| held.is(t));
        state.retired_targets = keep;
        Retired {
            _targets: free,
            _attachments: std::mem::take(&mut state.retired_attachments),
        }
    }

    /// [`Self::retired`], dropped at once, for an owner that holds the handle exclusively (`&mut`): no other
    /// thread can be in one of its hot paths.
    pub fn reclaim_exclusive(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let held = &self.fast.held_target;
        state.retired_targets.retain(|t| held.is(t));
        state.retired_attachments.clear();
    }

    /// The current attachment for a hot path (`data()`, `size()`).
    #[inline]
    pub fn attachment_now<'a>(&self, quiescent: &'a Quiescence) -> Option<&'a Attachment> {
        if self.fast.generation.load(Ordering::Relaxed) != process::fork_generation_cached() {
            return None;
        }
        self.fast.attachment.load(quiescent)
    }

    // -----------------------------------------------------------------------------------------
    // Qt's accessors.

    /// `QSharedMemory::key()`: the legacy key, if the native key was derived from one.
    #[must_use]
    pub fn key(&self) -> Option<String> {
        self.state().key.legacy_key().map(str::to_owned)
    }

    /// `QSharedMemory::nativeKey()`.
    #[must_use]
    pub fn native_key(&self) -> String {
        self.state().key.native_key().to_owned()
    }

    /// `QSharedMemory::nativeIpcKey()`.
    #[must_use]
    pub fn native_ipc_key(&self) -> NativeIpcKey {
        self.state().key.clone()
    }

    /// `QSharedMemory::error()`: the last recorded error, `None` for `NoError`.
    #[must_use]
    pub fn error(&self) -> Option<Error> {
        self.state().last_error.clone()
    }

    /// `QSharedMemory::errorString()`: the last recorded error's text, "" for `NoError`.
    #[must_use]
    pub fn error_string(&self) -> String {
        self.state()
            .last_error
            .as_ref()
            .map_or_else(String::new, |e| e.message().to_owned())
    }

    /// `QSharedMemory::isAttached()`.
    #[must_use]
    pub fn is_attached(&self) -> bool {
        self.state().attachment.is_some()
    }

    /// `QSharedMemory::size()`: the segment's size, 0 when not attached.
    #[must_use]
    pub fn size(&self) -> usize {
        self.state().attachment.as_ref().map_or(0, |a| a.size())
    }

    /// Which kind of segment this handle is attached to.
    #[must_use]
    pub fn segment_kind(&self) -> Option<SegmentKind> {
        self.state().attachment.as_ref().map(|a| a.kind())
    }

    /// The attachment, shared with anything that must keep the memory mapped (the Python
    /// buffer exports); the mapping ends when the last reference goes.
    #[must_use]
    pub fn attachment(&self) -> Option<Arc<Attachment>> {
        self.state().attachment.clone()
    }

    /// Whether this handle holds the lock.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        let _state = self.state();
        self.fast.held_by.load(Ordering::Acquire) != 0
    }

    /// Whether the last successful lock found that the previous holder had died while holding
    /// it (the data it protected may be half-written).
    #[must_use]
    pub fn lock_owner_died(&self) -> bool {
        self.fast.owner_died.load(Ordering::Relaxed)
    }

    /// Whether a key type is supported (see `SharedMemory::is_key_type_supported`).
    #[must_use]
    pub fn is_key_type_supported(key_type: KeyType) -> bool {
        key_type.backend().is_some()
    }

    /// The error for an operation on an attachment that lost part of its memory, if it did.
    fn lost_memory_error(state: &State, function: &str, kind: ErrorKind) -> Option<Error> {
        let att = state.attachment.as_ref().filter(|a| a.lost_pages())?;
        Some(Error::new(kind, format!("{function}: {}", att.damage())))
    }
}

impl Drop for Handle {
    /// Qt's destructor: detach if attached, release the lock. Never blocks for long: the System
    /// V last-detacher check is deferred to a background thread when the lock is busy.
    fn drop(&mut self) {
        self.teardown();
        // `&mut self`: no other thread can be in a hot path; everything retired goes now.
        self.reclaim_exclusive();
    }
}
