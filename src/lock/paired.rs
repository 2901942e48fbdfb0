//! The lock of a POSIX segment: the robust mutex first, then Qt's named semaphore for the key.
//!
//! Qt's `QSharedMemory::lock()` takes only the semaphore (`sem_wait` on `/dev/shm/sem.<name>`),
//! which stays taken forever if its holder dies. qsharedmem processes take the robust mutex
//! first and the semaphore second, so that among them the mutex decides and a dead holder is
//! noticed, and Qt processes are excluded by the semaphore. The mutex's block records, in one
//! word, the holder's pid and where it is with the semaphore:
//!
//! | state | meaning |
//! |---|---|
//! | `NONE` | the holder does not hold the semaphore (or the segment has none) |
//! | `PENDING` | about to take it, or taking it |
//! | `HELD` | holds it |
//! | `RELEASING` | about to give it back, or giving it back |
//!
//! The next locker after a death (the mutex says so) settles the dead holder's semaphore:
//! `HELD` means the token is the dead holder's, so it is given back (`sem_post`), and neither Qt
//! processes nor we stay blocked. `PENDING` and `RELEASING` leave a window of a few
//! instructions in which the token may or may not have moved; the semaphore's value settles it
//! when it is 1 (the token is free: nothing to do), and when it is 0 and no process other than
//! qsharedmem's attachers maps the semaphore (nobody else can have the token: the dead holder
//! had it). Otherwise (a Qt process may hold it) the doubt is recorded and settled later, by a
//! locker whose wait for the semaphore times out once no such process is left: a token is
//! never given back unless it is certain that it was lost, because one too many would let a
//! Qt process and a qsharedmem process in at the same time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::robust_mutex::RobustLock;
use crate::sys::namedsem::NamedSemaphore;
use crate::sys::Errno;

const NONE: u32 = 0;
const PENDING: u32 = 1;
const HELD: u32 = 2;
const RELEASING: u32 = 3;
const STAGE: u32 = 3;

fn word(pid: u32, stage: u32) -> u32 {
    (pid << 2) | stage
}

/// Qt's semaphore as the second half of the lock, and how to tell whether a process that is
/// not one of qsharedmem's attachers may hold it (a `/proc` scan: only ever asked after a
/// holder died).
pub(crate) struct Partner<'a> {
    /// The open semaphore.
    pub(crate) sem: &'a NamedSemaphore,
    /// True if a process other than this one and qsharedmem's attachers maps the semaphore.
    pub(crate) others_may_hold: &'a dyn Fn() -> bool,
}

impl RobustLock {
    /// With the mutex just taken: takes the semaphore too, if it is free now. `Ok(false)`: it
    /// is not (a Qt process holds it); then wait with [`Self::wait_partner`] or give up with
    /// [`Self::abandon`].
    #[inline(always)]
    pub(crate) fn take_partner(&self, sem: &NamedSemaphore, pid: u32) -> Result<bool, Errno> {
        self.state.store(word(pid, PENDING), Ordering::Relaxed);
        match sem.try_wait() {
            Ok(()) => {
                self.state.store(word(pid, HELD), Ordering::Release);
                Ok(true)
            }
            Err(Errno::EAGAIN) => Ok(false),
            Err(e) => {
                self.state.store(word(pid, NONE), Ordering::Release);
                Err(e)
            }
        }
    }

    /// Waits at most `slice` for the semaphore (the mutex is held, the state is `PENDING`).
    pub(crate) fn wait_partner(
        &self,
        partner: &Partner<'_>,
        pid: u32,
        slice: Duration,
    ) -> Result<bool, Errno> {
        match partner.sem.wait_for(slice) {
            Ok(()) => {
                self.state.store(word(pid, HELD), Ordering::Release);
                Ok(true)
            }
            Err(Errno::ETIMEDOUT | Errno::EINTR) => {
                self.settle_doubt(partner);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Records a holder that took the semaphore before the mutex: a creator that called
    /// `lock()` before `create()` takes the new segment's mutex before publishing it.
    pub(crate) fn note_holder_with_partner(&self, pid: u32) {
        self.state.store(word(pid, HELD), Ordering::Release);
    }

    /// Records a holder that has no semaphore to take (a segment without one).
    pub(crate) fn note_holder(&self, pid: u32) {
        self.state.store(word(pid, NONE), Ordering::Release);
    }

    /// Gives up a lock whose semaphore could not be had in time: the mutex goes back.
    pub(crate) fn abandon(&self) -> Result<(), Errno> {
        self.state.store(NONE, Ordering::Release);
        self.unlock_mutex()
    }

    /// Unlocks: the semaphore first (if held), then the mutex.
    #[inline]
    pub(crate) fn release(&self, sem: Option<&NamedSemaphore>) -> Result<(), Errno> {
        let state = self.state.load(Ordering::Relaxed);
        if state & STAGE == HELD {
            if let Some(sem) = sem {
                self.state
                    .store(word(state >> 2, RELEASING), Ordering::Relaxed);
                if let Err(e) = sem.post() {
                    self.state.store(state, Ordering::Relaxed);
                    return Err(e);
                }
                crate::testpoint::step("unlock:semaphore-released");
            }
        }
        self.state.store(NONE, Ordering::Release);
        self.unlock_mutex()
    }

    /// With the mutex just taken from a dead holder: settles what the dead holder had of the
    /// semaphore (see the module documentation). The state is ours afterwards.
    pub(crate) fn recover_partner(&self, partner: &Partner<'_>) {
        let dead = self.state.load(Ordering::Acquire);
        self.state.store(NONE, Ordering::Release);
        let give_back = match dead & STAGE {
            NONE => false,
            HELD => true,
            // PENDING, RELEASING: the token moved or not.
            _ => match partner.sem.value() {
                Ok(free) if free > 0 => false,
                Ok(_) if !(partner.others_may_hold)() => true,
                Ok(_) => {
                    self.doubt.store((dead >> 2).max(1), Ordering::Release);
                    false
                }
                Err(_) => false,
            },
        };
        if give_back {
            let _ = partner.sem.post();
        }
    }

    /// A doubt left by [`Self::recover_partner`] is settled once the semaphore is still taken
    /// and nobody but qsharedmem's attachers maps it any more: the token is the dead holder's.
    fn settle_doubt(&self, partner: &Partner<'_>) {
        if self.doubt.load(Ordering::Acquire) == 0 {
            return;
        }
        if partner.sem.value() == Ok(0) && !(partner.others_may_hold)() {
            self.doubt.store(0, Ordering::Release);
            let _ = partner.sem.post();
        }
    }

    /// The pid of a dead holder that may still have the semaphore (0: none), for inspection.
    pub(crate) fn doubtful_holder(&self) -> i32 {
        i32::try_from(self.doubt.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Whether the recorded holder holds Qt's semaphore, for inspection.
    pub(crate) fn holds_partner(&self) -> bool {
        self.state.load(Ordering::Relaxed) & STAGE == HELD
    }

    /// The raw state word (holder pid and semaphore stage), to be carried over by
    /// [`Self::inherit_dead_holder`].
    pub(crate) fn state_word(&self) -> u32 {
        self.state.load(Ordering::Relaxed)
    }

    /// A new lock that replaces the lock of an orphan (a segment whose processes all died,
    /// reclaimed by `create()`), with the old lock's state word and doubt: settles what its
    /// dead holder had of the semaphore, as the next locker would have. `HELD`: the token is the
    /// dead holder's, given back now; `PENDING`/`RELEASING`, or a doubt already recorded: the
    /// doubt moves to the new lock, whose lockers settle it (see the module documentation).
    /// Only on a lock nobody else knows yet.
    pub(crate) fn inherit_dead_holder(
        &self,
        dead_state: u32,
        dead_doubt: u32,
        sem: &NamedSemaphore,
    ) {
        let pid = dead_state >> 2;
        match dead_state & STAGE {
            HELD => {
                let _ = sem.post();
            }
            PENDING | RELEASING => self.doubt.store(pid.max(1), Ordering::Relaxed),
            _ => {}
        }
        if dead_doubt != 0 {
            self.doubt.store(dead_doubt, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mapping::Mapping;
    use crate::sys::namedsem::{self, OpenMode};

    struct Fixture {
        page: std::sync::Arc<Mapping>,
        name: String,
        sem: NamedSemaphore,
    }

    impl Fixture {
        fn new(tag: &str) -> Self {
            let page = std::sync::Arc::new(Mapping::anonymous_shared(4096).unwrap());
            page.shared::<RobustLock>(0).init().unwrap();
            let name = format!("/qsm-paired-test-{}-{tag}", std::process::id());
            let _ = namedsem::unlink(&name);
            let sem = NamedSemaphore::open(&name, OpenMode::NEW_LOCK).unwrap();
            Self { page, name, sem }
        }

        fn lock(&self) -> &RobustLock {
            self.page.shared::<RobustLock>(0)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = namedsem::unlink(&self.name);
        }
    }

    #[test]
    fn lock_takes_and_unlock_gives_back_the_semaphore() {
        let f = Fixture::new("basic");
        assert!(f.lock().try_lock().unwrap().is_some());
        assert!(f.lock().take_partner(&f.sem, 42).unwrap());
        assert_eq!(f.sem.value(), Ok(0));
        assert_eq!(f.lock().holder(), 42);
        assert!(f.lock().holds_partner());
        f.lock().release(Some(&f.sem)).unwrap();
        assert_eq!(f.sem.value(), Ok(1));
        assert_eq!(f.lock().holder(), 0);
    }

    /// A thread that takes the lock, moves the state to `stage` (taking the semaphore's token
    /// if `took_token`) and ends holding the mutex: a dead owner. Joined, so that the kernel has
    /// processed its robust list (scoped threads report completion before they exit).
    fn die_in(f: &Fixture, stage: u32, took_token: bool) {
        let page = std::sync::Arc::clone(&f.page);
        let name = f.name.clone();
        std::thread::spawn(move || {
            let lock = page.shared::<RobustLock>(0);
            assert!(lock.try_lock().unwrap().is_some());
            if took_token {
                let sem = NamedSemaphore::open(&name, OpenMode::Existing).unwrap();
                sem.try_wait().unwrap();
            }
            lock.state.store(word(7, stage), Ordering::Release);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_dead_holders_semaphore_is_given_back_exactly_when_it_had_it() {
        let never = || false;
        for (stage, took, value_after) in [
            (HELD, true, 1),
            (PENDING, false, 1),
            (PENDING, true, 1),
            (RELEASING, true, 1),
            (NONE, false, 1),
        ] {
            let f = Fixture::new("dead");
            die_in(&f, stage, took);
            let partner = Partner {
                sem: &f.sem,
                others_may_hold: &never,
            };
            assert_eq!(
                f.lock().try_lock().unwrap(),
                Some(super::super::Acquired::OwnerDied)
            );
            f.lock().recover_partner(&partner);
            assert_eq!(f.sem.value(), Ok(value_after), "stage {stage} took {took}");
            assert_eq!(f.lock().doubtful_holder(), 0);
            f.lock().abandon().unwrap();
        }
    }

    #[test]
    fn a_doubt_is_kept_while_another_process_may_hold_the_semaphore() {
        let f = Fixture::new("doubt");
        die_in(&f, PENDING, true);
        let others = std::cell::Cell::new(true);
        let may_hold = || others.get();
        let partner = Partner {
            sem: &f.sem,
            others_may_hold: &may_hold,
        };
        assert!(f.lock().try_lock().unwrap().is_some());
        f.lock().recover_partner(&partner);
        assert_eq!(f.sem.value(), Ok(0), "never given back while in doubt");
        assert_eq!(f.lock().doubtful_holder(), 7);
        assert!(!f.lock().take_partner(&f.sem, 1).unwrap());
        assert!(!f
            .lock()
            .wait_partner(&partner, 1, Duration::from_millis(5))
            .unwrap());
        assert_eq!(f.sem.value(), Ok(0));
        others.set(false);
        assert!(!f
            .lock()
            .wait_partner(&partner, 1, Duration::from_millis(5))
            .unwrap());
        assert_eq!(f.sem.value(), Ok(1), "settled once nobody else maps it");
        assert!(f
            .lock()
            .wait_partner(&partner, 1, Duration::from_millis(5))
            .unwrap());
        f.lock().release(Some(&f.sem)).unwrap();
        assert_eq!(f.sem.value(), Ok(1));
    }
}
