//! Qt's `detach` and the destructor: the attachment let go (the last detacher destroys the
//! segment), the lock released, and Qt's semaphore cleaned up by its creator.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::init_key::cleanup_semaphore;
use super::locking::{unlock_internally, Taken};
use super::{Handle, Previous, Semaphore, Target, HOLDS_ALL};
use crate::error::{Error, ErrorKind};
use crate::key::NativeIpcKey;
use crate::sys::{process, Errno};
use crate::testpoint;
use crate::wait::Interrupt;

/// Whether a System V detach waits for the key's lock (Qt's `detach()` does; a destructor must
/// not block, and leaves the check to the attachment's drop).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockWait {
    AsQt,
    Never,
}

impl Handle {
    /// `QSharedMemory::detach()`: always lets go of the memory; buffers taken from it stay
    /// valid until they are released. If this handle holds the lock, the lock is released
    /// (as in Qt). The last detacher of a segment destroys it.
    ///
    /// # Errors
    /// Not attached (not recorded, as in Qt); `LockError` if the System V lock could not be
    /// taken for the last-detacher check, or if another thread holds this handle's lock (it
    /// must unlock first).
    pub fn detach_with(&self, interrupt: Interrupt<'_>) -> Result<(), Error> {
        self.detach_inner(interrupt, LockWait::AsQt)
    }

    fn detach_inner(&self, interrupt: Interrupt<'_>, wait: LockWait) -> Result<(), Error> {
        self.let_ending_holder_finish();
        let mut state = self.state();
        let Some(att) = state.attachment.clone() else {
            return Err(Error::new(
                ErrorKind::NotFound,
                "QSharedMemory::detach: not attached",
            ));
        };
        let holder = self.fast.held_by.load(Ordering::Acquire);
        if holder != 0 && holder != process::thread_self() {
            if self.holder_ended(&state) {
                self.settle_ended_holder(&mut state);
            } else {
                // Unmapping the segment under another thread that holds its robust mutex would
                // leave that thread's robust list pointing into unmapped memory: its next lock
                // of any mutex would crash, and its death would never be reported.
                return Err(self.record(
                    &mut state,
                    Error::with_errno(
                        ErrorKind::LockError,
                        "QSharedMemory::detach: unable to detach (locked by another thread)",
                        Errno::EPERM,
                    ),
                ));
            }
        }
        testpoint::step("detach:begin");
        let lost =
            Self::lost_memory_error(&state, "QSharedMemory::detach", ErrorKind::UnknownError);
        state.previous = Some(Previous {
            identity: att.identity(),
            name_removed: att.name_removed(),
        });
        let held_here = self.fast.held_by.load(Ordering::Acquire) == process::thread_self();
        match (att.sysv(), &state.semaphore) {
            (Some(_), Some(Semaphore::SysV(sem))) => {
                let sem = Arc::clone(sem);
                let taken = if held_here {
                    // Qt's detach releases a lock the handle holds: that lock covers the check.
                    self.clear_held();
                    Some(Taken {
                        sem: Arc::clone(&sem),
                        unreported_death: false,
                    })
                } else if wait == LockWait::Never {
                    // A destructor: the attachment's own drop makes the last-detacher check
                    // under the lock, or hands it to the reaper if the lock is busy.
                    None
                } else {
                    drop(state);
                    let taken = self.lock_internally(&sem, "QSharedMemory::detach", interrupt)?;
                    state = self.state();
                    taken
                };
                testpoint::step("detach:locked");
                // The attachment is retired; its last reference (the binding reclaims it right
                // after this call, the Rust façade at once) decides, under the lock, whether it
                // was the last one.
                self.set_attachment(&mut state, None);
                drop(att);
                unlock_internally(taken);
                if !sem.is_open() {
                    state.semaphore = None;
                }
                self.refresh_target(&mut state);
            }
            _ => {
                if held_here {
                    drop(state);
                    let _ = self.unlock();
                    state = self.state();
                }
                self.set_attachment(&mut state, None);
                self.refresh_target(&mut state);
            }
        }
        // The handle is detached either way; a segment that lost memory while attached is
        // reported, so that the damage does not go unnoticed.
        match lost {
            Some(error) => Err(self.record(&mut state, error)),
            None => Ok(()),
        }
    }

    /// Makes the handle what `Handle::with_key(key)` (or `Handle::new()`) makes, after doing
    /// what the destructor does to the current one (Python's `__init__` on a live object).
    pub fn reset(&self, key: Option<NativeIpcKey>) {
        self.teardown();
        {
            let mut state = self.state();
            state.key = NativeIpcKey::default();
            state.last_error = None;
            state.previous = None;
            state.empty_posix_key_failed = false;
            state.unreported_death = false;
            self.fast.owner_died.store(false, Ordering::Relaxed);
        }
        if let Some(key) = key {
            // Qt builds the handle for the key's type, with an empty key of that type: an empty
            // key of it (even of an unsupported type) then changes nothing and is no error, and
            // a rejected key leaves that empty key.
            self.state().key = NativeIpcKey::empty(key.key_type());
            let _ = self.set_native_key(key);
        }
    }

    /// The destructor's work: detach if attached, release the lock, and clean up Qt's
    /// semaphore if this handle made it and no segment needs it. What it retires stays for
    /// the next reclaim.
    pub(super) fn teardown(&self) {
        self.let_ending_holder_finish();
        let me = process::thread_self();
        let mut state = self.state();
        let holder = self.fast.held_by.load(Ordering::Acquire);
        if holder != 0 && holder != me && !self.holder_ended(&state) {
            if let Some(target) = self.held_arc(&state) {
                match &*target {
                    Target::Paired { attachment, .. }
                        if self.fast.holds.load(Ordering::Relaxed) == HOLDS_ALL =>
                    {
                        // The holding thread's robust list points into the control block, and
                        // only that thread can unlock: keep the segment mapped (and counted)
                        // for the rest of the process, so that its next lock does not write
                        // into unmapped memory and its death still releases the mutex for the
                        // other processes.
                        std::mem::forget(Arc::clone(attachment));
                    }
                    _ => {
                        // A semaphore has no owner: give it back for the thread that can no
                        // longer.
                        self.settle_ended_holder(&mut state);
                    }
                }
            }
            self.clear_held();
        } else if holder != 0 {
            drop(state);
            if holder == me {
                let _ = self.unlock();
            } else {
                let mut state = self.state();
                self.settle_ended_holder(&mut state);
            }
            state = self.state();
        }
        if state.attachment.is_some() {
            drop(state);
            let _ = self.detach_inner(&mut crate::wait::uninterrupted, LockWait::Never);
            state = self.state();
        }
        let semaphore = self.take_semaphore(&mut state);
        self.set_target(&mut state, None);
        drop(state);
        cleanup_semaphore(semaphore);
    }
}
