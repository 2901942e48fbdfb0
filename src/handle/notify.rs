//! The notify generation, events and atomic words of the attached segment (`crate::notify`).
//!
//! Each call takes the attachment (and its control block) from the state for a moment; the
//! object it returns holds them, so it keeps working after the handle detaches, and the
//! handle's state mutex is never held while anyone waits.

use std::sync::Arc;

use super::Handle;
use crate::error::{Error, ErrorKind};
use crate::notify::{AtomicWord, Event, EventId, Notifier, NotifyError, Width};
use crate::segment::control::ControlMap;
use crate::segment::{Attachment, SegmentKind};
use crate::sys::Errno;

impl Handle {
    fn attached(&self, function: &str) -> Result<Arc<Attachment>, NotifyError> {
        self.attachment().ok_or_else(|| {
            NotifyError::Segment(Error::new(
                ErrorKind::NotFound,
                format!("QSharedMemory::{function}: not attached"),
            ))
        })
    }

    fn notify_parts(
        &self,
        function: &str,
    ) -> Result<(Arc<Attachment>, Arc<ControlMap>), NotifyError> {
        let attachment = self.attached(function)?;
        let key = self.native_key();
        match attachment.notify_block() {
            Ok(control) => Ok((attachment, control)),
            Err(None) => Err(NotifyError::Segment(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "QSharedMemory::{function}: {key} was made by another program (Qt, \
                     multiprocessing) and this process cannot open its qsharedmem control block \
                     /dev/shm/<name>.qsm for writing, where the notify generation and the events \
                     live (its permissions do not allow it, or it could not be made)"
                ),
            ))),
            Err(Some(errno)) => {
                let kind = if matches!(errno, Errno::EACCES | Errno::EPERM) {
                    ErrorKind::PermissionDenied
                } else if errno == Errno::ENOSPC {
                    ErrorKind::OutOfResources
                } else {
                    ErrorKind::UnknownError
                };
                let which = match attachment.kind() {
                    SegmentKind::SystemV => "the notify block of this System V segment",
                    _ => "the control block",
                };
                Err(NotifyError::Segment(Error::with_errno(
                    kind,
                    format!(
                        "QSharedMemory::{function}: cannot open or make {which}: {}",
                        errno.text()
                    ),
                    errno,
                )))
            }
        }
    }

    /// The attached segment's notify generation (`notify()`, `wait_changed()`).
    ///
    /// # Errors
    /// Not attached (`NotFound`); a foreign segment whose control block this process may not
    /// write, or a System V notify block that cannot be made (`PermissionDenied`, ...).
    pub fn notifier(&self) -> Result<Notifier, NotifyError> {
        let (attachment, control) = self.notify_parts("notify")?;
        Ok(Notifier::new(attachment, control))
    }

    /// One of the attached segment's 32 events, by slot number or by name (named now if no
    /// slot has the name yet).
    ///
    /// # Errors
    /// As [`Self::notifier`]; [`NotifyError::Argument`] for an index outside 0..32 or a name
    /// that is empty or longer than 48 bytes; `OutOfResources` when all 32 are in use.
    pub fn event(&self, id: EventId<'_>) -> Result<Event, NotifyError> {
        let (attachment, control) = self.notify_parts("event")?;
        Event::find(attachment, control, id)
    }

    /// One attempt to take the lock for an asynchronous waiter (an asyncio task): `Ok(Some(
    /// owner_died))` if this call took it; `Ok(None)` if it is busy: held by another process or
    /// thread, *or by this very handle* (another task of the same event loop holds it; unlike
    /// `lock()`, which returns true then, a task must wait for it). With `record_busy` (the last
    /// attempt before a timeout) a busy lock is recorded as `lock()`'s time-out error.
    ///
    /// # Errors
    /// As [`Self::lock_with`]: no lock set up yet, an OS error.
    pub fn try_lock_for_task(&self, record_busy: bool) -> Result<Option<bool>, Error> {
        if self.is_locked() {
            if record_busy {
                let mut state = self.state();
                self.record(
                    &mut state,
                    Error::with_errno(
                        ErrorKind::LockError,
                        "QSharedMemory::lock: unable to lock (timed out; this handle holds it)",
                        Errno::ETIMEDOUT,
                    ),
                );
            }
            return Ok(None);
        }
        if !record_busy {
            return self.try_lock();
        }
        match self.lock_with(
            Some(std::time::Duration::ZERO),
            &mut crate::wait::uninterrupted,
        ) {
            Ok(died) => Ok(Some(died)),
            Err(e) if e.os_error() == Some(Errno::ETIMEDOUT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The aligned 32- or 64-bit word at `offset` of the attached segment's data, for atomic
    /// operations, waits and wake-ups (any backend: the word is in the user's bytes).
    ///
    /// # Errors
    /// Not attached (`NotFound`); [`NotifyError::Argument`] for a misaligned offset or one
    /// past the end.
    pub fn atomic_word<T: Width>(&self, offset: usize) -> Result<AtomicWord<T>, NotifyError> {
        AtomicWord::new(self.attached("atomic")?, offset)
    }
}
