//! Waiting for a 32-bit word to change: spin briefly, then sleep in the kernel (a futex) in
//! slices of at most [`WAIT_SLICE`](crate::wait::WAIT_SLICE), between which the caller's
//! interrupt check runs and the deadline is checked.
//!
//! **The waiter count and lost wake-ups.** Words in the control block have a count of the
//! processes sleeping on them, so that a notifier with nobody asleep skips the wake-up system
//! call. A sleeper announces itself (`waiters += 1`) *before* it looks at the word a last time
//! and sleeps; a notifier changes the word *before* it looks at the count. All four accesses
//! are `SeqCst`, so in their single total order either the sleeper's last look comes after the
//! change (it sees it and does not sleep) or the notifier's look at the count comes after the
//! announcement (it sees a sleeper and wakes it). And the kernel's `FUTEX_WAIT` compares the
//! word again under its own lock, so a wake-up that comes between the last look and the sleep
//! makes the sleep return at once. A notification can therefore never be lost.
//!
//! A sleeper killed while asleep leaves the count one too high: notifiers then make the system
//! call for nobody, which costs a microsecond and nothing else (and `qsharedmem info` shows the
//! stale count). A notifier killed between changing the word and waking the sleepers leaves
//! them asleep until their slice ends, at most 100 ms: they then see the change.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys::futex::{self, FutexWord};
use crate::sys::Errno;
use crate::wait::{Deadline, Interrupt, Waited};

/// How long a wait polls the word before it sleeps, unless told otherwise: long enough to catch
/// an answer that is already on its way (a ping-pong partner on the other CPU), short enough
/// that a waiter that sleeps anyway wastes little.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(10);

/// Slices that ended by their timeout although the word had changed: a sleeper that was not
/// woken. With the protocol below only a notifier that died (or stalled for a whole slice)
/// between changing the word and waking can cause one; tests assert that busy runs see none.
static LATE_WAKEUPS: AtomicU64 = AtomicU64::new(0);

/// How many times, in this process, a sleeping waiter found the word changed only when its
/// 100 ms slice ran out instead of being woken (see the module documentation): 0 unless a
/// notifier died or stalled between its change and its wake-up call. A diagnostic.
#[must_use]
pub fn late_wakeups() -> u64 {
    LATE_WAKEUPS.load(Ordering::Relaxed)
}

/// How a wait ends and how it begins.
#[derive(Clone, Copy, Debug)]
pub struct WaitFor {
    /// The longest the wait takes (`None`: as long as it takes).
    pub timeout: Option<Duration>,
    /// How long it polls before it sleeps ([`DEFAULT_SPIN`] by default; zero: sleep at once).
    pub spin: Duration,
}

impl WaitFor {
    /// Waits at most `timeout` (`None`: as long as it takes), spinning [`DEFAULT_SPIN`] first.
    #[must_use]
    pub const fn at_most(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            spin: DEFAULT_SPIN,
        }
    }

    /// The same wait, spinning `spin` before sleeping.
    #[must_use]
    pub const fn spinning(self, spin: Duration) -> Self {
        Self {
            timeout: self.timeout,
            spin,
        }
    }
}

/// Where a waited word lives, and how a sleeper announces itself.
#[derive(Clone, Copy)]
pub(crate) enum Watched<'a> {
    /// A word of the control block with its count of sleepers.
    Counted {
        word: &'a AtomicU32,
        waiters: &'a AtomicU32,
    },
    /// A word of the user's data (no room for a count there: wakers always call the kernel).
    Plain(FutexWord<'a>),
}

impl Watched<'_> {
    fn load(self) -> u32 {
        match self {
            Self::Counted { word, .. } => word.load(Ordering::SeqCst),
            Self::Plain(word) => word.load(),
        }
    }

    /// Sleeps at most `slice` unless the word no longer holds `expected`.
    fn sleep(self, expected: u32, slice: Duration) -> Result<(), Errno> {
        let result = match self {
            Self::Counted { word, waiters } => {
                waiters.fetch_add(1, Ordering::SeqCst);
                let result = if word.load(Ordering::SeqCst) == expected {
                    futex::wait(FutexWord::of(word), expected, Some(slice))
                } else {
                    Ok(())
                };
                waiters.fetch_sub(1, Ordering::SeqCst);
                result
            }
            Self::Plain(word) => futex::wait(word, expected, Some(slice)),
        };
        match result {
            Err(Errno::ETIMEDOUT) => {
                if self.load() != expected {
                    LATE_WAKEUPS.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            // Woken, changed before the kernel looked, a signal: look again.
            Ok(()) | Err(Errno::EAGAIN | Errno::EINTR) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Waits until `ready()` returns `Some`, sleeping on `watched` while it holds `expected` (the
/// word whose change may make `ready` true; `ready` may look at more than the word, e.g. both
/// halves of a 64-bit value). `ready` runs first, while spinning, and after every sleep.
pub(crate) fn wait_until<T>(
    watched: Watched<'_>,
    expected: u32,
    ready: &dyn Fn() -> Option<T>,
    how: WaitFor,
    interrupt: Interrupt<'_>,
) -> Result<Waited<T>, Errno> {
    if let Some(got) = ready() {
        return Ok(Waited::Got(got));
    }
    let deadline = Deadline::after(how.timeout);
    let spin_for = how.spin.min(how.timeout.unwrap_or(how.spin));
    if let Some(got) = spin(ready, spin_for) {
        return Ok(Waited::Got(got));
    }
    loop {
        let Some(slice) = deadline.next_slice() else {
            return Ok(Waited::TimedOut);
        };
        watched.sleep(expected, slice)?;
        if let Some(got) = ready() {
            return Ok(Waited::Got(got));
        }
        if interrupt() {
            return Ok(Waited::Interrupted);
        }
    }
}

/// [`wait_until`] on a counted word of the control block.
pub(crate) fn wait_counted_until<T>(
    word: &AtomicU32,
    waiters: &AtomicU32,
    expected: u32,
    ready: &dyn Fn() -> Option<T>,
    how: WaitFor,
    interrupt: Interrupt<'_>,
) -> Result<Waited<T>, Errno> {
    wait_until(
        Watched::Counted { word, waiters },
        expected,
        ready,
        how,
        interrupt,
    )
}

/// Polls `ready` for `spin`; what it returned, if it returned something.
fn spin<T>(ready: &dyn Fn() -> Option<T>, spin: Duration) -> Option<T> {
    if spin.is_zero() {
        return None;
    }
    let start = Instant::now();
    loop {
        // The clock is read once per 32 looks: a look is a few nanoseconds, a clock read ~20.
        for _ in 0..32 {
            if let Some(got) = ready() {
                return Some(got);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= spin {
            return None;
        }
    }
}

/// Wakes up to `count` sleepers of a counted word that was just changed; skips the system call
/// when nobody sleeps. Returns how many it woke.
pub(crate) fn wake_counted(word: &AtomicU32, waiters: &AtomicU32, count: u32) -> u32 {
    if waiters.load(Ordering::SeqCst) == 0 {
        return 0;
    }
    futex::wake(FutexWord::of(word), count).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::uninterrupted;
    use std::sync::Arc;

    #[test]
    fn a_changed_word_returns_at_once_and_an_unchanged_one_times_out() {
        let (word, waiters) = (AtomicU32::new(3), AtomicU32::new(0));
        let how = WaitFor::at_most(Some(Duration::from_millis(30)));
        let wait = |expected: u32| {
            let ready = || {
                let now = word.load(Ordering::SeqCst);
                (now != expected).then_some(now)
            };
            wait_counted_until(&word, &waiters, expected, &ready, how, &mut uninterrupted)
        };
        assert_eq!(wait(2), Ok(Waited::Got(3)));
        assert_eq!(wait(3), Ok(Waited::TimedOut));
        assert_eq!(waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn no_notification_is_lost_between_threads() {
        let words = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
        let rounds = 2000;
        let sleeper = {
            let words = Arc::clone(&words);
            std::thread::spawn(move || {
                let mut seen = 0;
                while seen < rounds {
                    // No spin: every round goes to sleep if it can.
                    let how = WaitFor::at_most(None).spinning(Duration::ZERO);
                    let ready = || {
                        let now = words.0.load(Ordering::SeqCst);
                        (now != seen).then_some(now)
                    };
                    let waited = wait_counted_until(
                        &words.0,
                        &words.1,
                        seen,
                        &ready,
                        how,
                        &mut uninterrupted,
                    );
                    match waited.unwrap() {
                        Waited::Got(now) => seen = now,
                        other => panic!("{other:?}"),
                    }
                }
                seen
            })
        };
        for _ in 0..rounds {
            words.0.fetch_add(1, Ordering::SeqCst);
            wake_counted(&words.0, &words.1, u32::MAX);
            std::thread::yield_now();
        }
        assert_eq!(sleeper.join().unwrap(), rounds);
        assert_eq!(
            late_wakeups(),
            0,
            "every sleeper was woken, none found out by its timeout"
        );
    }
}
