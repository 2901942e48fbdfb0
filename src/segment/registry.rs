//! Every live POSIX attachment of this process that is counted (has a sidecar), for `fork()`
//! and for exit.
//!
//! * A child inherits its parent's descriptors, and with them the parent's open file
//!   descriptions and their `flock`s: a child's `LOCK_EX` would succeed on the parent's lock
//!   and destroy the segment under the parent. So a child's attachments take a lock of their
//!   own: right at the fork, when the Python package's `os.register_at_fork` hooks run
//!   ([`prepare_all_for_fork`], [`after_fork_in_parent_all`], [`rehome_all_after_fork`]), or
//!   lazily at the child's next operation on the handle (a fork-generation check), for a Rust
//!   program that forks without hooks.
//! * A process that leaves without running destructors (`std::process::exit`, `os._exit` in
//!   multiprocessing's children) would leave a segment it was the last to hold as an orphan:
//!   [`release_all_at_exit`] removes those names first. Rust programs call
//!   [`crate::exit`] instead of `std::process::exit`.
//!
//! These run at moments the handle does not choose, so they are crate-private: calling the
//! exit release in the middle of a program would make live attachments stop counting.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::{Duration, Instant};

use super::posix::RefcountFd;
use super::Attachment;
use crate::sys::{posix, process};
use crate::wait::{poll_in_slices, uninterrupted, Waited};

/// Locks a mutex that its users hold only for a system call or two, never across a wait. One
/// that stays locked for a second was locked by a thread of the parent that forked this
/// process: that thread does not exist here and the mutex stays locked forever, so `None`
/// (callers do without).
pub(crate) fn lock_patiently<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut pause = Duration::from_micros(10);
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

static TRACKED: Mutex<Vec<Weak<Attachment>>> = Mutex::new(Vec::new());

/// Registers an attachment for the fork and exit handling (only counted POSIX ones).
pub(crate) fn track(attachment: &Arc<Attachment>) {
    if attachment.posix().is_none_or(|p| p.refcount().is_none()) {
        return;
    }
    let mut list = TRACKED.lock().unwrap_or_else(PoisonError::into_inner);
    // Forget detached attachments only when the list would grow: pruning on every call made
    // each create()/attach() cost O(attachments), 10,000 segments O(n^2). This way it is O(1)
    // amortised and the list never holds more than twice what it must.
    if list.len() == list.capacity() {
        list.retain(|w| w.strong_count() > 0);
    }
    list.push(Arc::downgrade(attachment));
}

fn tracked() -> Vec<Arc<Attachment>> {
    // try_lock: right after fork() the registry's mutex may have been held by a thread that
    // does not exist in the child; then the lazy per-operation re-homing has to do.
    let upgrade = |list: &Vec<Weak<Attachment>>| list.iter().filter_map(Weak::upgrade).collect();
    match TRACKED.try_lock() {
        Ok(list) => upgrade(&list),
        Err(TryLockError::Poisoned(p)) => upgrade(&p.into_inner()),
        Err(TryLockError::WouldBlock) => Vec::new(),
    }
}

/// How long a child waits for the lock of its own when someone holds `LOCK_EX`.
const REHOME_WAIT: Duration = Duration::from_secs(2);

impl Attachment {
    /// After `fork()`, in the child: take a lock of the child's own on the segment, so that the
    /// parent's detach cannot destroy it while the child uses it, and the child's detach cannot
    /// destroy it while the parent does. Idempotent; a no-op for other kinds of segment (the
    /// kernel counts System V attachments inherited through fork by itself).
    pub(crate) fn rehome_after_fork(&self) {
        let Some(posix) = self.posix() else { return };
        let now = process::fork_generation();
        // The refcount mutex is held only for moments, never across the wait below.
        let fresh = {
            let Some(mut rc) = posix.refcount() else {
                return;
            };
            if rc.generation == now {
                return;
            }
            if let Some(fd) = rc.for_child.take() {
                // Locked for us before the fork: we have counted since the very first moment.
                *rc = RefcountFd::new(fd);
                return;
            }
            let Some(inherited) = rc.fd.as_ref() else {
                return;
            };
            match posix::reopen(inherited.as_fd(), false) {
                Ok(fd) => fd,
                Err(_) => return,
            }
        };
        let counted = match posix::try_lock_shared(fresh.as_fd()) {
            Ok(true) => true,
            // Someone holds LOCK_EX: a detacher deciding whether it is the last one. If that
            // was the parent, between our fork and now, it saw only the description we share
            // with it, concluded it was the last, and may have removed the names; its LOCK_EX
            // then stays on that description for as long as we keep our inherited reference
            // to it. So let go of it first, then wait (briefly) for the lock.
            Ok(false) => {
                if let Some(mut rc) = posix.refcount() {
                    rc.fd = None;
                }
                let waited = poll_in_slices(Some(REHOME_WAIT), &mut uninterrupted, || {
                    posix::try_lock_shared(fresh.as_fd()).map(|got| got.then_some(()))
                });
                matches!(waited, Ok(Waited::Got(())))
            }
            Err(_) => false,
        };
        if counted {
            if let Some(mut rc) = posix.refcount() {
                // Dropping the inherited descriptor does not release the parent's lock: the
                // parent still has the open file description.
                *rc = RefcountFd::new(fresh);
            }
        }
    }

    /// Before `fork()`: a locked description for the child (see [`prepare_all_for_fork`]).
    #[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's fork hooks
    fn prepare_for_fork(&self) {
        let Some(posix) = self.posix() else { return };
        let Some(mut rc) = posix.refcount() else {
            return;
        };
        if rc.generation != process::fork_generation() {
            return;
        }
        let Some(fd) = rc.fd.as_ref() else { return };
        rc.for_child = posix::reopen(fd.as_fd(), false)
            .ok()
            .filter(|child| posix::try_lock_shared(child.as_fd()) == Ok(true));
    }

    /// In the parent after `fork()`: the child's description is the child's alone now.
    #[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's fork hooks
    fn after_fork_in_parent(&self) {
        if let Some(mut rc) = self.posix().and_then(|p| p.refcount()) {
            rc.for_child = None;
        }
    }

    /// This attachment's refcount descriptor, taken away for the exit-time check.
    fn take_refcount_at_exit(&self) -> Option<OwnedFd> {
        let mut rc = self.posix()?.refcount()?;
        if rc.generation != process::fork_generation() {
            return None;
        }
        rc.fd.take()
    }
}

/// Before `fork()` (Python's `os.register_at_fork(before=...)`): gives every counted POSIX
/// attachment a second locked description, which the child inherits and keeps while the parent
/// closes its copy ([`after_fork_in_parent_all`]). The child's attachments then count from the
/// moment of the fork, so a parent that detaches right after forking cannot take itself for
/// the last holder and destroy a segment the child inherited.
#[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's fork hooks
pub(crate) fn prepare_all_for_fork() {
    for attachment in tracked() {
        attachment.prepare_for_fork();
    }
}

/// In the parent after `fork()`: closes the descriptions [`prepare_all_for_fork`] made for the
/// child.
#[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's fork hooks
pub(crate) fn after_fork_in_parent_all() {
    for attachment in tracked() {
        attachment.after_fork_in_parent();
    }
}

/// In a child after `fork()`: gives every inherited counted POSIX attachment a lock of the
/// child's own (see [`Attachment::rehome_after_fork`]).
#[cfg_attr(not(feature = "python"), allow(dead_code))] // the binding's fork hooks
pub(crate) fn rehome_all_after_fork() {
    for attachment in tracked() {
        attachment.rehome_after_fork();
    }
}

/// At process exit (also exits that skip destructors): if this process is the last one
/// holding a POSIX segment, remove its names now, as the last detach would have. Attachments
/// stay mapped; they just stop counting, so only call this when the process is about to end.
pub(crate) fn release_all_at_exit() {
    let mut by_sidecar: Vec<(Arc<Attachment>, posix::FileStat, Vec<OwnedFd>)> = Vec::new();
    for attachment in tracked() {
        let Some(fd) = attachment.take_refcount_at_exit() else {
            continue;
        };
        let Ok(st) = posix::fstat(fd.as_fd()) else {
            continue;
        };
        match by_sidecar.iter_mut().find(|(_, s, _)| s.same_file(&st)) {
            Some(entry) => entry.2.push(fd),
            None => by_sidecar.push((attachment, st, vec![fd])),
        }
    }
    for (attachment, _, mut fds) in by_sidecar {
        // Release all but one of this process's own locks, then ask whether anyone else holds
        // the file.
        let last = fds.pop().expect("at least one descriptor per file");
        drop(fds);
        if posix::try_lock_exclusive(last.as_fd()) == Ok(true) {
            if let Some(posix) = attachment.posix() {
                posix.remove_names();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::posix::{self as posix_segment, CreateSpec};
    use crate::segment::{AccessMode, Permissions};

    /// Removes a test segment's names however the test ends.
    struct Names(String);

    impl Drop for Names {
        fn drop(&mut self) {
            let _ = posix::unlink_name(&self.0);
            let _ = posix::unlink_name(&posix_segment::sidecar_name(&self.0));
        }
    }

    /// A child re-homing its inherited count waits for a detacher's `LOCK_EX` without holding
    /// the refcount mutex: meanwhile the mutex is free for others (the exit cleanup, a second
    /// re-homing), which would otherwise wait a second and then take it for a lost mutex.
    #[test]
    fn rehoming_waits_for_an_exclusive_holder_without_holding_the_refcount_mutex() {
        let key = format!("/qsm-rs-registry-{}-rehome", std::process::id());
        let file_name = posix_segment::file_name(&key).unwrap();
        let _names = Names(file_name.clone());
        let spec = CreateSpec {
            size: 64,
            mode: AccessMode::ReadWrite,
            permissions: Permissions::default(),
            native_key: &key,
            legacy_key: None,
            semaphore: None,
            lock_now: false,
            partner: None,
        };
        let att = posix_segment::create(&file_name, &spec).unwrap();
        let posix = att.posix().unwrap();
        // What a fork leaves: a count from another fork generation, on a description that a
        // "parent" (this duplicate of it) holds exclusively, deciding whether it is the last.
        let parent = {
            let mut rc = posix.refcount().unwrap();
            rc.generation = process::fork_generation().wrapping_add(1);
            let shared = rc.fd.as_ref().unwrap().try_clone().unwrap();
            assert_eq!(posix::try_lock_exclusive(shared.as_fd()), Ok(true));
            shared
        };
        std::thread::scope(|scope| {
            let rehoming = scope.spawn(|| att.rehome_after_fork());
            std::thread::sleep(Duration::from_millis(200));
            assert!(!rehoming.is_finished(), "waits for the exclusive holder");
            let started = Instant::now();
            let free = posix.refcount().is_some();
            assert!(
                free && started.elapsed() < Duration::from_millis(500),
                "the refcount mutex is free while re-homing waits"
            );
            drop(parent);
            rehoming.join().unwrap();
        });
        let rc = posix.refcount().unwrap();
        assert_eq!(rc.generation, process::fork_generation(), "counted anew");
        assert!(rc.fd.is_some());
    }
}
