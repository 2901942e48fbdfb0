//! Which semaphore locks the threads of this process hold.
//!
//! A robust mutex knows its holder (relocking from the same thread is `EDEADLK`, and the kernel
//! marks it when the holder thread ends). A semaphore knows nothing of threads, so the locks
//! that are semaphores (System V, and Qt's POSIX semaphore when it is the whole lock) are
//! registered here while held: by thread token (never reused), so that a second lock through
//! another handle on the same thread is refused instead of waiting forever, and so that a lock
//! whose holder thread ended without unlocking is found and given back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use crate::sys::process;

/// Which lock: the kind and the semaphore's name. Looked up by reference, so that only taking
/// a lock allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Identity<'a> {
    /// A System V lock set, by its key file.
    SysV(&'a str),
    /// A POSIX named semaphore, by name.
    Posix(&'a str),
}

#[derive(Debug)]
enum Owned {
    SysV(String),
    Posix(String),
}

impl Owned {
    fn new(id: Identity<'_>) -> Self {
        match id {
            Identity::SysV(key) => Self::SysV(key.to_owned()),
            Identity::Posix(name) => Self::Posix(name.to_owned()),
        }
    }

    fn is(&self, id: Identity<'_>) -> bool {
        match (self, id) {
            (Self::SysV(held), Identity::SysV(key)) => held == key,
            (Self::Posix(held), Identity::Posix(name)) => held == name,
            _ => false,
        }
    }
}

struct Entry {
    lock: Owned,
    thread: u64,
}

/// Semaphore locks held by threads of this process.
static HELD: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
/// How many entries `HELD` has: a thread that holds no semaphore lock at all (the usual case
/// when it is about to take one) answers without the registry's mutex.
static HELD_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Tokens of threads that ended while holding a registered lock. Kept for the life of the
/// process (tokens are never reused): a handle whose holder thread ended asks about it later,
/// also after a waiter took the lock over. One entry per such thread, a rare event.
static ENDED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn ended() -> MutexGuard<'static, Vec<u64>> {
    ENDED.lock().unwrap_or_else(PoisonError::into_inner)
}

fn held() -> MutexGuard<'static, Vec<Entry>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

fn watch_thread_ends() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| process::set_thread_exit_hook(thread_ended));
}

/// Called when a thread ends: locks it still holds are nobody's now.
fn thread_ended(token: u64) {
    if HELD_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    if held().iter().any(|entry| entry.thread == token) {
        ended().push(token);
    }
}

/// Whether the calling thread holds `id`.
pub(crate) fn is_held(id: Identity<'_>) -> bool {
    if HELD_COUNT.load(Ordering::Acquire) == 0 {
        return false;
    }
    let me = process::thread_token();
    held()
        .iter()
        .any(|entry| entry.lock.is(id) && entry.thread == me)
}

/// Registers that the calling thread now holds `id`; returns its thread token.
pub(crate) fn mark_held(id: Identity<'_>) -> u64 {
    watch_thread_ends();
    let me = process::thread_token();
    let mut list = held();
    list.push(Entry {
        lock: Owned::new(id),
        thread: me,
    });
    HELD_COUNT.store(list.len(), Ordering::Release);
    me
}

/// Registers that `id` was released (by the thread that took it, or for a thread that ended).
pub(crate) fn mark_released(id: Identity<'_>) {
    let me = process::thread_token();
    let mut list = held();
    let at = list
        .iter()
        .position(|entry| entry.lock.is(id) && entry.thread == me)
        // Released for another thread than the one that took it.
        .or_else(|| list.iter().position(|entry| entry.lock.is(id)));
    if let Some(at) = at {
        list.swap_remove(at);
        HELD_COUNT.store(list.len(), Ordering::Release);
    }
}

/// Whether the thread with this token ended while holding a registered lock.
pub(crate) fn thread_has_ended(token: u64) -> bool {
    token != 0 && ended().contains(&token)
}

/// A waiter's check between wait slices: if a thread of this process that ended holds `id`,
/// the calling thread takes the lock over (its holder is dead, as a crashed process's would
/// be: the caller reports the death). Returns whether it did.
pub(crate) fn take_over_ended(id: Identity<'_>) -> bool {
    if HELD_COUNT.load(Ordering::Acquire) == 0 {
        return false;
    }
    let ended = ended();
    if ended.is_empty() {
        return false;
    }
    let me = process::thread_token();
    let mut list = held();
    match list
        .iter_mut()
        .find(|entry| entry.lock.is(id) && ended.contains(&entry.thread))
    {
        Some(entry) => {
            entry.thread = me;
            true
        }
        None => false,
    }
}

/// Unregisters `id` for the ended thread `token`, if that thread still holds it (nobody took
/// it over): then the caller gives the lock back for it. Returns whether it did.
pub(crate) fn release_for_ended(id: Identity<'_>, token: u64) -> bool {
    let mut list = held();
    match list
        .iter()
        .position(|entry| entry.lock.is(id) && entry.thread == token)
    {
        Some(at) => {
            list.swap_remove(at);
            HELD_COUNT.store(list.len(), Ordering::Release);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks `id` held on a thread that then ends; returns that thread's token.
    fn held_by_an_ended_thread(id: Identity<'_>) -> u64 {
        std::thread::scope(|scope| scope.spawn(|| mark_held(id)).join().unwrap())
    }

    #[test]
    fn a_lock_held_by_a_thread_that_ended_is_reported() {
        let name = format!("held-test-{}", std::process::id());
        let id = Identity::Posix(&name);
        let token = held_by_an_ended_thread(id);
        assert!(thread_has_ended(token));
        assert!(!is_held(id), "held by another thread, not this one");
        mark_released(id);
        assert!(thread_has_ended(token), "an ended thread stays ended");
    }

    #[test]
    fn a_waiter_takes_over_the_lock_of_an_ended_thread_once() {
        let name = format!("held-takeover-{}", std::process::id());
        let id = Identity::SysV(&name);
        let token = held_by_an_ended_thread(id);
        assert!(take_over_ended(id));
        assert!(is_held(id), "the waiter holds it now");
        assert!(!take_over_ended(id), "taken over once");
        assert!(
            !release_for_ended(id, token),
            "nothing left to give back for the dead"
        );
        mark_released(id);
        assert!(!is_held(id));
    }

    #[test]
    fn relock_on_the_same_thread_is_seen() {
        let name = format!("held-relock-{}", std::process::id());
        let id = Identity::SysV(&name);
        assert!(!is_held(id));
        let token = mark_held(id);
        assert!(is_held(id));
        assert!(!thread_has_ended(token));
        mark_released(id);
        assert!(!is_held(id));
    }
}
