//! Waiting for another process without burning a core: the notify generation of a segment,
//! its named events, atomic words in its data, and the process-wide watcher that lets many
//! asyncio tasks wait without a thread each.
//!
//! * [`Notifier`]: the segment's *generation*, a 32-bit counter in its control block.
//!   `notify()` bumps it and wakes one sleeper, `notify_all()` bumps it and wakes them all;
//!   `wait_changed(g)` returns once the generation is no longer `g`. A consumer reads the
//!   generation, looks at the data, and if there is nothing to do waits for the generation it
//!   read: a notification between the look and the wait makes the wait return at once, so none
//!   is ever missed.
//! * [`Event`]: one of 32 named (or numbered) flags in the control block, like
//!   `threading.Event`: `set()`, `clear()`, `is_set()`, `wait()`.
//! * [`AtomicWord`]: a 32/64-bit word of the user's data, with `load`, `store`, `add`,
//!   `compare_exchange`, `wait` and `wake`.
//! * [`watcher`]: one thread per process that sleeps on every word awaited by asyncio tasks at
//!   once (`futex_waitv`), and tells each task's event loop through an `eventfd`.
//!
//! Every wait spins briefly, then sleeps in the kernel (a futex) in slices of at most 100 ms;
//! see [`waiting`] for the protocol that makes lost wake-ups impossible.
//!
//! POSIX segments keep these words in their control block, `/dev/shm/<name>.qsm`. System V
//! segments have none (they are Qt's objects, byte for byte): their words live in a block of
//! their own, `/dev/shm/qsm-sysv-<shmid>.qsm`, made by the first process that uses them and
//! removed with the segment ([`crate::segment::sysv_notify`]).

pub(crate) mod events;
pub(crate) mod waiting;
pub mod watcher;
mod words;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use waiting::{late_wakeups, WaitFor, DEFAULT_SPIN};
pub use words::{AtomicWord, Width};

use crate::error::{Error, ErrorKind};
use crate::segment::control::{ControlMap, EventSlot, EVENT_COUNT, EVENT_NAME_MAX};
use crate::segment::Attachment;
use crate::sys::Errno;
use crate::wait::{uninterrupted, Interrupt, Waited};
use events::EventLookup;
use waiting::{wait_counted_until, wake_counted};

/// Why a notify, event or atomic-word operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotifyError {
    /// The handle is not attached, or the segment has no control block this process can use
    /// (a foreign POSIX segment whose control block it may not write): Qt's error kind and a
    /// text that says why.
    Segment(Error),
    /// An argument that cannot be used: a misaligned or out-of-range offset, an event index
    /// outside 0..32, an empty event name or one longer than 48 bytes.
    Argument(String),
    /// A write through a `ReadOnly` attachment.
    ReadOnly(String),
    /// The interrupt check asked a wait to stop.
    Interrupted,
}

impl NotifyError {
    pub(crate) fn os(operation: &str, errno: Errno) -> Self {
        Self::Segment(Error::with_errno(
            ErrorKind::UnknownError,
            format!("{operation}: {}", errno.text()),
            errno,
        ))
    }
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(e) => write!(f, "{}", e.message()),
            Self::Argument(text) | Self::ReadOnly(text) => f.write_str(text),
            Self::Interrupted => f.write_str("the wait was interrupted"),
        }
    }
}

impl std::error::Error for NotifyError {}

/// Maps a wait's end to the API's answer: changed (true), timed out (false), interrupted.
fn answer<T>(waited: Result<Waited<T>, Errno>) -> Result<bool, NotifyError> {
    match waited {
        Ok(Waited::Got(_)) => Ok(true),
        Ok(Waited::TimedOut) => Ok(false),
        Ok(Waited::Interrupted) => Err(NotifyError::Interrupted),
        Err(errno) => Err(NotifyError::os("wait", errno)),
    }
}

/// A segment's notify generation (see the module documentation). Cheap to clone; like a
/// `data()` view it keeps the attachment (and so the segment) alive.
#[derive(Clone, Debug)]
pub struct Notifier {
    control: Arc<ControlMap>,
    _attachment: Arc<Attachment>,
}

impl Notifier {
    pub(crate) fn new(attachment: Arc<Attachment>, control: Arc<ControlMap>) -> Self {
        Self {
            control,
            _attachment: attachment,
        }
    }

    /// The generation now.
    #[must_use]
    pub fn generation(&self) -> u32 {
        self.control
            .control()
            .notify
            .generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the generation is no longer `generation`, at most `timeout` (`None`: as
    /// long as it takes): true once it changed (at once if it has), false on timeout.
    #[must_use]
    pub fn wait_changed(&self, generation: u32, timeout: Option<Duration>) -> bool {
        matches!(
            self.wait_changed_with(generation, WaitFor::at_most(timeout), &mut uninterrupted),
            Ok(true)
        )
    }

    /// [`Self::wait_changed`] with the spin and an interrupt check between slices.
    ///
    /// # Errors
    /// [`NotifyError::Interrupted`] when the check asked to stop.
    pub fn wait_changed_with(
        &self,
        generation: u32,
        how: WaitFor,
        interrupt: Interrupt<'_>,
    ) -> Result<bool, NotifyError> {
        let notify = &self.control.control().notify;
        let changed = || {
            let now = notify.generation.load(std::sync::atomic::Ordering::SeqCst);
            (now != generation).then_some(now)
        };
        answer(wait_counted_until(
            &notify.generation,
            &notify.waiters,
            generation,
            &changed,
            how,
            interrupt,
        ))
    }

    /// Bumps the generation and wakes one sleeping waiter (the others see the new generation
    /// when they next look, at the latest when their current 100 ms slice ends); returns how
    /// many it woke.
    pub fn notify(&self) -> u32 {
        self.bump(1)
    }

    /// Bumps the generation and wakes every sleeping waiter; returns how many it woke.
    pub fn notify_all(&self) -> u32 {
        self.bump(u32::MAX)
    }

    fn bump(&self, count: u32) -> u32 {
        let notify = &self.control.control().notify;
        notify
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        crate::testpoint::step("notify:bumped");
        wake_counted(&notify.generation, &notify.waiters, count)
    }

    /// How many processes (threads) sleep in `wait_changed` now.
    #[must_use]
    pub fn waiters(&self) -> u32 {
        self.control
            .control()
            .notify
            .waiters
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The control block (for the watcher).
    pub(crate) fn control(&self) -> &Arc<ControlMap> {
        &self.control
    }
}

/// Which event: its slot number, or its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventId<'a> {
    /// Slot `0..32`, whatever its name.
    Index(usize),
    /// The slot with this name (up to 48 bytes), named now if none has it yet.
    Name(&'a str),
}

/// One of a segment's 32 events, shared by every process attached: set or clear, with waiters
/// (see [`events`]). Like a `data()` view it keeps the attachment (and so the segment) alive.
#[derive(Clone, Debug)]
pub struct Event {
    control: Arc<ControlMap>,
    index: usize,
    _attachment: Arc<Attachment>,
}

impl Event {
    /// The event `id` of the segment `attachment`, whose notify block is `control`.
    pub(crate) fn find(
        attachment: Arc<Attachment>,
        control: Arc<ControlMap>,
        id: EventId<'_>,
    ) -> Result<Self, NotifyError> {
        let found = match id {
            EventId::Index(index) => control.control().event_numbered(index),
            EventId::Name(name) => control.control().event_named(name),
        };
        let index = found.map_err(|lookup| match lookup {
            EventLookup::BadIndex(index) => NotifyError::Argument(format!(
                "event index {index} is out of range: a segment has {EVENT_COUNT} events, 0 to {}",
                EVENT_COUNT - 1
            )),
            EventLookup::BadName(name) => NotifyError::Argument(format!(
                "an event name must have 1 to {EVENT_NAME_MAX} bytes (UTF-8), {name:?} has {}",
                name.len()
            )),
            EventLookup::Full => NotifyError::Segment(Error::new(
                ErrorKind::OutOfResources,
                format!("all {EVENT_COUNT} events of the segment are in use"),
            )),
            EventLookup::NamerBusy(pid) => NotifyError::Segment(Error::with_errno(
                ErrorKind::LockError,
                format!(
                    "process {pid} has been naming an event of this segment for over {} s \
                     (stopped?); events that exist keep working",
                    events::NAMER_WAIT.as_secs()
                ),
                Errno::EBUSY,
            )),
        })?;
        Ok(Self {
            control,
            index,
            _attachment: attachment,
        })
    }

    fn slot(&self) -> &EventSlot {
        &self.control.control().events[self.index]
    }

    /// The slot number, `0..32`.
    #[must_use]
    pub fn index(&self) -> usize {
        self.index
    }

    /// The event's name, `None` for a numbered event.
    #[must_use]
    pub fn name(&self) -> Option<String> {
        self.control.control().event_name(self.index)
    }

    /// Sets the event, waking every waiter; false if it was set already.
    pub fn set(&self) -> bool {
        self.slot().set()
    }

    /// Clears the event; false if it was clear already.
    pub fn clear(&self) -> bool {
        self.slot().clear()
    }

    /// Whether the event is set.
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.slot().is_set()
    }

    /// Waits until the event is set, at most `timeout` (`None`: as long as it takes): true once
    /// it is (at once if it is already; also when a `set()` was undone by a `clear()` before
    /// this waiter woke up), false on timeout.
    #[must_use]
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        matches!(
            self.wait_with(WaitFor::at_most(timeout), &mut uninterrupted),
            Ok(true)
        )
    }

    /// [`Self::wait`] with the spin and an interrupt check between slices.
    ///
    /// # Errors
    /// [`NotifyError::Interrupted`] when the check asked to stop.
    pub fn wait_with(&self, how: WaitFor, interrupt: Interrupt<'_>) -> Result<bool, NotifyError> {
        answer(self.slot().wait(how, interrupt))
    }

    /// The state word now, for [`Self::set_since`] (a waiter that cannot block reads it, then
    /// waits for the word to change, e.g. through the [`watcher`]).
    #[must_use]
    pub fn token(&self) -> u32 {
        self.slot().token()
    }

    /// Whether the event is set, or was set after `token` was read.
    #[must_use]
    pub fn set_since(&self, token: u32) -> bool {
        self.slot().set_since(token)
    }

    /// How many processes (threads) sleep in `wait` now.
    #[must_use]
    pub fn waiters(&self) -> u32 {
        self.slot()
            .waiters
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The control block and the slot (for the watcher).
    pub(crate) fn parts(&self) -> (&Arc<ControlMap>, usize) {
        (&self.control, self.index)
    }
}
