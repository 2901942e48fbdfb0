//! The process-wide watcher: one thread that sleeps on every word that asynchronous waiters
//! (asyncio tasks) wait for, all at once, and tells each waiter's event loop when its word
//! changed. A thousand waiting tasks cost one thread, not a thousand.
//!
//! A waiter registers a [`Source`] (a word and the value it waits to see change) with a
//! [`WatchQueue`], its event loop's mailbox: an `eventfd` the loop watches, and the list of
//! registrations that completed. The thread keeps the registrations, completes those whose
//! word no longer holds the value, and sleeps on the rest with `futex_waitv` (Linux 5.16+): up
//! to 127 distinct words, plus a word of its own that registrations bump to wake it. Words
//! beyond 127 are looked at every 2 ms instead. While anything is registered the thread also
//! looks at every word once per 100 ms slice, so a notifier that died between changing a word
//! and waking its sleepers delays a waiter by at most that.
//!
//! On kernels without `futex_waitv` (`ENOSYS`) the thread looks at the words with a backoff
//! instead: every 50 µs at first, doubling up to every 10 ms while nothing changes, back to
//! 50 µs after every registration or completion. That costs some CPU while tasks wait, never a
//! missed change.
//!
//! Registrations keep the memory they watch mapped (they hold the control block or the
//! attachment) until they complete or are cancelled. In a forked child the parent's
//! registrations are forgotten (they belong to its event loops) and a new thread starts on
//! first use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{AtomicWord, Event, Notifier};
use crate::sys::futex::{self, FutexWord, WAIT_ANY_MAX};
use crate::sys::wakeup::EventFd;
use crate::sys::{process, Errno};
use crate::wait::WAIT_SLICE;

/// An event loop's mailbox: completed registrations, and a descriptor that becomes readable
/// when there are some.
#[derive(Debug)]
pub struct WatchQueue {
    wakeup: EventFd,
    done: Mutex<Vec<u64>>,
}

impl WatchQueue {
    /// A new, empty mailbox.
    ///
    /// # Errors
    /// When no `eventfd` can be made (descriptor limit).
    pub fn new() -> Result<Arc<Self>, std::io::Error> {
        let wakeup = EventFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.raw()))?;
        Ok(Arc::new(Self {
            wakeup,
            done: Mutex::new(Vec::new()),
        }))
    }

    /// The descriptor to watch for readability (owned by the queue).
    #[must_use]
    pub fn fd(&self) -> i32 {
        self.wakeup.raw()
    }

    /// The registrations that completed since the last call (their ids); makes the descriptor
    /// unreadable again until the next completion.
    pub fn take_done(&self) -> Vec<u64> {
        self.wakeup.drain();
        std::mem::take(&mut *lock(&self.done))
    }

    fn complete(&self, id: u64) {
        lock(&self.done).push(id);
        self.wakeup.signal();
    }
}

/// What a registration waits for: a word, and the value whose change completes it.
#[derive(Clone, Debug)]
pub enum Source {
    /// A segment's notify generation, while it is `generation`.
    Generation {
        /// The segment's notifier.
        notifier: Notifier,
        /// The generation the waiter saw.
        generation: u32,
    },
    /// An event, until it is set (or was set) after `token` was read.
    Event {
        /// The event.
        event: Event,
        /// [`Event::token`] when the waiter looked.
        token: u32,
    },
    /// A 32-bit atomic word, while it holds `expected`.
    Word32 {
        /// The word.
        word: AtomicWord<u32>,
        /// The value the waiter saw.
        expected: u32,
    },
    /// A 64-bit atomic word, while it holds `expected` (sleeps on its low half).
    Word64 {
        /// The word.
        word: AtomicWord<u64>,
        /// The value the waiter saw.
        expected: u64,
    },
}

impl Source {
    /// Whether the wait is over.
    fn done(&self) -> bool {
        match self {
            Self::Generation {
                notifier,
                generation,
            } => notifier.generation() != *generation,
            Self::Event { event, token } => event.set_since(*token),
            Self::Word32 { word, expected } => word.load() != *expected,
            Self::Word64 { word, expected } => word.load() != *expected,
        }
    }

    /// The futex word to sleep on and the value it holds while the wait is not over.
    fn sleep_word(&self) -> (FutexWord<'_>, u32) {
        // The words borrow from the control block or attachment that the source keeps alive.
        match self {
            Self::Generation {
                notifier,
                generation,
            } => (
                FutexWord::of(&notifier.control().control().notify.generation),
                *generation,
            ),
            Self::Event { event, token } => {
                let (map, index) = event.parts();
                (FutexWord::of(&map.control().events[index].state), *token)
            }
            Self::Word32 { word, expected } => word.sleep_word(*expected),
            Self::Word64 { word, expected } => word.sleep_word(*expected),
        }
    }
}

struct Registration {
    source: Source,
    queue: Arc<WatchQueue>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    waiting: HashMap<u64, Registration>,
    /// The fork generation the registrations and the thread belong to.
    fork_generation: u64,
    /// Whether the thread of this process runs.
    running: bool,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
/// The watcher's own word: bumped (and woken) by every registration and cancellation.
static RESCAN: AtomicU32 = AtomicU32::new(0);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn rescan() {
    RESCAN.fetch_add(1, Ordering::SeqCst);
    let _ = futex::wake(FutexWord::of(&RESCAN), u32::MAX);
}

/// Registers a wait: when `source` is done, its id is put in `queue` (at once, through the
/// thread, if it is done already). Returns the id, for [`cancel`].
///
/// # Errors
/// When the watcher thread cannot be started.
pub fn watch(queue: &Arc<WatchQueue>, source: Source) -> Result<u64, std::io::Error> {
    let id = {
        let mut slot = lock(&REGISTRY);
        let registry = slot.get_or_insert_with(Registry::default);
        let now = process::fork_generation();
        if registry.fork_generation != now {
            // Inherited from the parent: its registrations belong to its event loops, and its
            // thread does not exist here.
            *registry = Registry {
                fork_generation: now,
                ..Registry::default()
            };
        }
        if !registry.running {
            std::thread::Builder::new()
                .name("qsharedmem-watcher".into())
                .spawn(watch_forever)?;
            registry.running = true;
        }
        registry.next_id += 1;
        let id = registry.next_id;
        registry.waiting.insert(
            id,
            Registration {
                source,
                queue: Arc::clone(queue),
            },
        );
        id
    };
    rescan();
    Ok(id)
}

/// Forgets a registration (nothing happens if it completed already); the memory it watched is
/// let go at once.
pub fn cancel(id: u64) {
    let removed = lock(&REGISTRY)
        .as_mut()
        .filter(|r| r.fork_generation == process::fork_generation())
        .and_then(|r| r.waiting.remove(&id));
    if removed.is_some() {
        rescan();
    }
    // Dropped here, outside the registry's lock (a last reference may detach a segment).
    drop(removed);
}

/// How many registrations wait now (tests, diagnostics).
#[must_use]
pub fn waiting() -> usize {
    lock(&REGISTRY)
        .as_ref()
        .filter(|r| r.fork_generation == process::fork_generation())
        .map_or(0, |r| r.waiting.len())
}

/// How often the words that do not fit in one `futex_waitv` are looked at.
const OVERFLOW_POLL: Duration = Duration::from_millis(2);
/// The backoff of the polling fallback (no `futex_waitv`).
const POLL_FIRST: Duration = Duration::from_micros(50);
const POLL_MAX: Duration = Duration::from_millis(10);

fn watch_forever() {
    let mut poll_pause = POLL_FIRST;
    let mut waitv_missing = false;
    loop {
        let rescan_seen = RESCAN.load(Ordering::SeqCst);
        // Complete what is done; take the rest for this round (clones: the registry's lock is
        // not held while sleeping).
        let (completed, pending) = {
            let mut slot = lock(&REGISTRY);
            let Some(registry) = slot.as_mut() else {
                return;
            };
            if registry.fork_generation != process::fork_generation() {
                return;
            }
            let done: Vec<u64> = registry
                .waiting
                .iter()
                .filter(|(_, r)| r.source.done())
                .map(|(id, _)| *id)
                .collect();
            let completed: Vec<(u64, Registration)> = done
                .into_iter()
                .filter_map(|id| registry.waiting.remove(&id).map(|r| (id, r)))
                .collect();
            let pending: Vec<Source> = registry
                .waiting
                .values()
                .map(|r| r.source.clone())
                .collect();
            (completed, pending)
        };
        let progress = !completed.is_empty();
        for (id, registration) in completed {
            registration.queue.complete(id);
        }
        let mut words: Vec<(FutexWord<'_>, u32)> = vec![(FutexWord::of(&RESCAN), rescan_seen)];
        let mut overflow = false;
        for source in &pending {
            let (word, value) = source.sleep_word();
            if words.iter().any(|(w, _)| w.address() == word.address()) {
                continue;
            }
            if words.len() < WAIT_ANY_MAX {
                words.push((word, value));
            } else {
                overflow = true;
            }
        }
        if pending.is_empty() {
            // Nothing to watch: sleep until a registration comes.
            poll_pause = POLL_FIRST;
            let _ = futex::wait(FutexWord::of(&RESCAN), rescan_seen, None);
            continue;
        }
        if !waitv_missing {
            let timeout = if overflow { OVERFLOW_POLL } else { WAIT_SLICE };
            match futex::wait_any(&words, Some(timeout)) {
                Err(Errno::ENOSYS) => waitv_missing = true,
                // Woken, changed, timed out, interrupted: look again.
                _ => continue,
            }
        }
        if progress || RESCAN.load(Ordering::SeqCst) != rescan_seen {
            poll_pause = POLL_FIRST;
        }
        let _ = futex::wait(FutexWord::of(&RESCAN), rescan_seen, Some(poll_pause));
        poll_pause = (poll_pause * 2).min(POLL_MAX);
    }
}
