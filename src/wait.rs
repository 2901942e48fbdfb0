//! Waiting: every wait in the crate is cut into slices of at most [`WAIT_SLICE`], between which
//! the caller's interrupt check runs (the Python binding runs signal handlers there, so Ctrl-C
//! works), and every wait honours the timeout it was given.

use std::time::{Duration, Instant};

/// The longest a wait blocks before it runs the interrupt check again.
pub const WAIT_SLICE: Duration = Duration::from_millis(100);

/// A check that runs between wait slices; `true` ends the wait.
pub type Interrupt<'a> = &'a mut dyn FnMut() -> bool;

/// A wait that is never interrupted.
pub(crate) fn uninterrupted() -> bool {
    false
}

/// How [`wait_in_slices`] ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waited<T> {
    /// The attempt succeeded.
    Got(T),
    /// The timeout passed first.
    TimedOut,
    /// The interrupt check asked to stop waiting.
    Interrupted,
}

/// When a wait ends: `None` never.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `timeout` from now (`None`: never).
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        Self(timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future)))
    }

    /// The next slice: at most [`WAIT_SLICE`], `None` once the deadline has passed.
    pub(crate) fn next_slice(self) -> Option<Duration> {
        match self.0 {
            None => Some(WAIT_SLICE),
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(WAIT_SLICE))
            }
        }
    }

    /// What is left of the wait (`None`: unbounded).
    pub(crate) fn left(self) -> Option<Duration> {
        self.0
            .map(|end| end.saturating_duration_since(Instant::now()))
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Waits by calling `attempt(slice)` with slices of at most [`WAIT_SLICE`] until it returns
/// `Some`, `timeout` passes (`None`: never) or `interrupt`, which runs between slices, returns
/// true. `attempt` blocks for at most its slice and returns `None` when the slice ends empty.
pub(crate) fn wait_in_slices<T, E>(
    timeout: Option<Duration>,
    interrupt: Interrupt<'_>,
    mut attempt: impl FnMut(Duration) -> Result<Option<T>, E>,
) -> Result<Waited<T>, E> {
    let deadline = Deadline::after(timeout);
    loop {
        let Some(slice) = deadline.next_slice() else {
            return Ok(Waited::TimedOut);
        };
        if let Some(got) = attempt(slice)? {
            return Ok(Waited::Got(got));
        }
        if interrupt() {
            return Ok(Waited::Interrupted);
        }
    }
}

/// Waits for `ready()` to return `Some` by polling it with a backoff (10 µs doubling to 10 ms),
/// for waits the kernel offers no timed form of (`flock`) or no notification at all.
pub(crate) fn poll_in_slices<T, E>(
    timeout: Option<Duration>,
    interrupt: Interrupt<'_>,
    mut ready: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Waited<T>, E> {
    let mut pause = Duration::from_micros(10);
    wait_in_slices(timeout, interrupt, |slice| {
        let end = Instant::now() + slice;
        loop {
            if let Some(got) = ready()? {
                return Ok(Some(got));
            }
            let now = Instant::now();
            if now >= end {
                return Ok(None);
            }
            std::thread::sleep(pause.min(end - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_at_its_timeout_and_at_an_interrupt() {
        let got: Result<Waited<()>, ()> =
            wait_in_slices(Some(Duration::from_millis(30)), &mut uninterrupted, |s| {
                std::thread::sleep(s);
                Ok(None)
            });
        assert_eq!(got, Ok(Waited::TimedOut));
        let mut calls = 0;
        let mut stop = || {
            calls += 1;
            calls == 2
        };
        let got: Result<Waited<()>, ()> = wait_in_slices(None, &mut stop, |_| Ok(None));
        assert_eq!(got, Ok(Waited::Interrupted));
    }

    #[test]
    fn polling_returns_what_becomes_ready() {
        let mut n = 0;
        let got: Result<Waited<u32>, ()> = poll_in_slices(None, &mut uninterrupted, || {
            n += 1;
            Ok((n == 5).then_some(n))
        });
        assert_eq!(got, Ok(Waited::Got(5)));
    }
}
