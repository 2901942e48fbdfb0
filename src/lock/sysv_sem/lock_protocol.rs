//! The lock protocol of `QSharedMemory`'s System V locks: semaphore 0 with `SEM_UNDO` and the
//! "consistent" token without it, taken and given back in one `semop`, so that a holder's death
//! leaves the token missing for the next locker to see (see the parent module).

use std::time::{Duration, Instant};

use super::SysVSemaphore;
use crate::lock::{held, Acquired, LockFailure};
use crate::sys::sysv::SemOp;
use crate::sys::Errno;
use crate::wait::WAIT_SLICE;

const TAKE_LOCK: SemOp = SemOp {
    num: 0,
    delta: -1,
    undo: true,
    no_wait: false,
};
const TAKE_TOKEN: SemOp = SemOp {
    num: 1,
    delta: -1,
    undo: false,
    no_wait: true,
};
const TOKEN_MISSING: SemOp = SemOp {
    num: 1,
    delta: 0,
    undo: false,
    no_wait: true,
};
const GIVE_TOKEN: SemOp = SemOp {
    num: 1,
    delta: 1,
    undo: false,
    no_wait: false,
};
const GIVE_LOCK: SemOp = SemOp {
    num: 0,
    delta: 1,
    undo: true,
    no_wait: false,
};

fn nowait(op: SemOp) -> SemOp {
    SemOp {
        no_wait: true,
        ..op
    }
}

/// Errors of a lock attempt that mean "not this time": the lock is busy (`EAGAIN`), a signal
/// arrived (`EINTR`), the set was replaced by one without a token (`EFBIG`), or it was removed
/// under us again and again while we waited (`EIDRM`, `EINVAL`: the last user of a segment
/// removes its lock, and the next attempt re-creates it, as Qt does). The caller tries again in
/// its next wait slice, where its timeout and interrupt checks run.
fn retry_later(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EAGAIN | Errno::EINTR | Errno::EFBIG | Errno::EIDRM | Errno::EINVAL
    )
}

impl SysVSemaphore {
    /// One attempt to take the lock, waiting at most `wait` (`None`: not at all): `Ok(None)` if
    /// it stayed busy. Takes the token too where the set has one; a free lock whose token is
    /// missing was held by a process that died, and is taken as [`Acquired::OwnerDied`].
    pub(crate) fn lock_attempt(
        &self,
        wait: Option<Duration>,
    ) -> Result<Option<Acquired>, LockFailure> {
        let take = if wait.is_some() {
            TAKE_LOCK
        } else {
            nowait(TAKE_LOCK)
        };
        let got = if self.has_consistency_token() {
            match self.operate(&[take, TAKE_TOKEN], wait) {
                Ok(()) => Ok(Some(Acquired::Locked)),
                // EAGAIN: timed out, lock busy, or the token is missing; EFBIG: the set was
                // replaced by one without a token. Either way, look for a dead holder next.
                Err(e) if retry_later(e) => self.try_recover(),
                Err(e) => Err(LockFailure::Os(e)),
            }
        } else {
            match self.operate(&[take], wait) {
                Ok(()) => Ok(Some(Acquired::Locked)),
                Err(e) if retry_later(e) => Ok(None),
                Err(e) => Err(LockFailure::Os(e)),
            }
        };
        if wait.is_some() && matches!(got, Ok(None)) {
            // Held for a whole slice: perhaps by nobody, in a set whose creator died.
            self.repair_if_left_uninitialised();
        }
        got
    }

    /// Takes the lock whose holder died: semaphore 0 is free and the token is missing.
    fn try_recover(&self) -> Result<Option<Acquired>, LockFailure> {
        match self.operate(&[nowait(TAKE_LOCK), TOKEN_MISSING], None) {
            Ok(()) => Ok(Some(Acquired::OwnerDied)),
            Err(e) if retry_later(e) => Ok(None),
            Err(e) => Err(LockFailure::Os(e)),
        }
    }

    /// What gives the lock back: the lock and the consistent token (the one taken, or the one
    /// a dead holder's recovery restores), or the lock alone if the set has no token or a
    /// death taken over (`keep_death`) must stay for the next lock() to report.
    fn give_back_ops(&self, keep_death: bool) -> &'static [SemOp] {
        if self.has_consistency_token() && !keep_death {
            &[GIVE_TOKEN, GIVE_LOCK]
        } else {
            &[GIVE_LOCK]
        }
    }

    /// Gives the lock back (after a recovery too: the death was reported, the lock is
    /// consistent again). With `keep_death`, a death taken over stays for the next locker to
    /// report (the lock was taken for an internal operation, nobody was told).
    pub(crate) fn unlock(&self, keep_death: bool) -> Result<(), Errno> {
        match self.operate(self.give_back_ops(keep_death), None) {
            // The set was replaced by one without a token meanwhile.
            Err(Errno::EFBIG) => self.operate(&[GIVE_LOCK], None),
            other => other,
        }
    }

    /// Takes the lock for a cleanup decision (is this the last detacher?), waiting at most
    /// `wait`: `Ok(None)` if it stayed busy; otherwise whether the previous holder died. Like
    /// every user of the lock it re-creates a set that was removed (its creator may have gone
    /// while the segment lives on); the caller removes what it re-created if the segment turns
    /// out to be gone. Release it with [`Self::unlock_after_cleanup`].
    pub(crate) fn lock_for_cleanup(&self, wait: Duration) -> Result<Option<bool>, Errno> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(WAIT_SLICE);
            let slice = (!left.is_zero()).then_some(left);
            if held::take_over_ended(held::Identity::SysV(self.native_key())) {
                // Held by a thread of this process that ended: ours now, its death kept.
                return Ok(Some(true));
            }
            match self.lock_attempt(slice) {
                Ok(Some(got)) => {
                    held::mark_held(held::Identity::SysV(self.native_key()));
                    return Ok(Some(got == Acquired::OwnerDied));
                }
                Ok(None) if Instant::now() >= deadline => return Ok(None),
                Ok(None) => {}
                Err(LockFailure::Os(e)) => return Err(e),
                Err(_) => return Ok(None),
            }
        }
    }

    /// Releases a lock taken by [`Self::lock_for_cleanup`] (unless the cleanup removed it). A
    /// death taken over stays for the next lock() to report.
    pub(crate) fn unlock_after_cleanup(&self, recovered: bool) {
        if self.is_open() {
            let _ = self.operate_existing(self.give_back_ops(recovered), None);
        }
        held::mark_released(held::Identity::SysV(self.native_key()));
    }

    /// Whether the calling thread holds this lock (through any handle of this process).
    pub(crate) fn held_by_current_thread(&self) -> bool {
        held::is_held(held::Identity::SysV(self.native_key()))
    }
}
