//! `attach(mode, timeout=…)`: waiting for a segment that does not exist yet, so that programs
//! can start in any order.
//!
//! POSIX: `inotify` on `/dev/shm` is set up *before* the first attempt (a segment created
//! between a failed attempt and the watch would otherwise be missed), and the next attempt
//! comes when a name appears. A qsharedmem creator names the control block first and the data
//! last (see `segment::posix`), so the data's name means a complete segment; a foreign creator
//! (Qt, `multiprocessing`) may still be sizing it, which `attach` already waits out. Without
//! inotify (its per-user limits reached), and for System V (which tells nobody), the segment is
//! looked for with a backoff: every millisecond at first, up to every 50 ms. Either way it
//! looks again at least once per 100 ms slice, between which the interrupt check runs.
//!
//! A look is a side-effect free check (`stat` of the name, `ftok` + `shmget` of the key) and
//! only an existing segment is attached: a System V `attach()` that finds nothing makes and
//! removes the key's lock set, which polling must not do a hundred times a second.

use std::time::Duration;

use super::qt_errors::interrupted;
use super::Handle;
use crate::error::{Error, ErrorKind};
use crate::key::Backend;
use crate::segment::{posix as posix_segment, sysv as sysv_segment, AccessMode};
use crate::sys::{posix, wakeup::DirectoryWatch};
use crate::wait::{Deadline, Interrupt};

/// The slowest a segment is looked for when no `inotify` tells us.
const POLL_MAX: Duration = Duration::from_millis(50);

impl Handle {
    /// `attach(mode)`, waiting at most `timeout` for the segment to be created if it does not
    /// exist yet (`Duration::MAX`: as long as it takes); the same bound applies to the waits of
    /// the attach itself (a System V key's lock, a POSIX segment held exclusively). Fails as
    /// `attach` does (`NotFound` when the time is up), or with an unrecorded `LockError`
    /// "interrupted" when the interrupt check, which runs at least every 100 ms, asks to stop.
    ///
    /// # Errors
    /// As [`Self::attach_with`].
    pub fn attach_when_created(
        &self,
        mode: AccessMode,
        timeout: Duration,
        interrupt: Interrupt<'_>,
    ) -> Result<(), Error> {
        let key = self.native_ipc_key();
        let backend = key.key_type().backend();
        let file_name = match backend {
            Some(Backend::Posix) => posix_segment::file_name(key.native_key()).ok(),
            _ => None,
        };
        let exists = || match backend {
            Some(Backend::Posix) => file_name.as_deref().is_some_and(posix_segment::exists),
            Some(Backend::SysV { project_id }) => {
                sysv_segment::segment_exists(key.native_key(), project_id)
            }
            // Unsupported or bad keys: the attach reports why.
            None => true,
        };
        // Watch first, look second: nothing created in between goes unseen.
        let watch = file_name
            .as_ref()
            .and_then(|_| DirectoryWatch::new(posix::SHM_DIR).ok());
        let deadline = Deadline::after(Some(timeout));
        let mut pause = Duration::from_millis(1);
        loop {
            if exists() || deadline.next_slice().is_none() {
                match self.attach_with(mode, deadline.left(), &mut *interrupt) {
                    Err(e)
                        if e.kind() == ErrorKind::NotFound && deadline.next_slice().is_some() =>
                    {
                        // Removed again between the look and the attach: wait on.
                    }
                    other => return other,
                }
            }
            let Some(slice) = deadline.next_slice() else {
                continue; // one last attempt above reports the outcome
            };
            match &watch {
                Some(watch) => {
                    // Any change in /dev/shm may be ours; the look above sorts it out.
                    let _ = watch.wait(slice);
                }
                None => {
                    std::thread::sleep(pause.min(slice));
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
            if interrupt() {
                return Err(interrupted("QSharedMemory::attach"));
            }
        }
    }
}
