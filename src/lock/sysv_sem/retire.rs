//! Retiring a set before its removal: a remover marks the set's "initialised" semaphore before
//! it unlinks the key file, so that a remover killed between the two steps leaves a set that
//! the next remover recognises (nobody can find it by key any more) and removes.

use crate::sys::sysv::{self, SemOp};

/// The value of the "initialised" semaphore of a set that is being removed: [`retire`] adds
/// this much to it (1: initialised) before the key file goes. Distinctive ("QS"), so that no
/// set of another program is mistaken for one of ours.
const RETIRED: i32 = 0x5153;

/// The "initialised" semaphore of a set of qsharedmem's layouts (its last), if it has one:
/// locks have 3 semaphores (lock, token, flag), counting semaphores 2 (value, flag).
fn flag_of(count: u64) -> Option<i32> {
    matches!(count, 2 | 3).then(|| i32::try_from(count).map_or(0, |n| n - 1))
}

/// Marks the set `id` as being removed (its remover holds it, or owns it).
pub(super) fn retire(id: i32) {
    let Some(flag) = sysv::sem_count(id).ok().and_then(flag_of) else {
        return;
    };
    let mark = SemOp {
        num: flag as u16,
        delta: (RETIRED - 1) as i16,
        undo: false,
        no_wait: true,
    };
    let _ = sysv::sem_op(id, &[mark], None);
}

/// Whether a set is being removed, and by whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retirement {
    /// It is not.
    Live,
    /// By a process that is still alive (it will be gone in a moment).
    InProgress,
    /// By a process that died before it could finish.
    Abandoned,
}

pub(super) fn retirement(id: i32) -> Retirement {
    let Some(flag) = sysv::sem_count(id).ok().and_then(flag_of) else {
        return Retirement::Live;
    };
    if sysv::sem_value(id, flag) != Ok(RETIRED) {
        return Retirement::Live;
    }
    // The last process that operated on the flag is the one that retired the set.
    match sysv::sem_last_pid(id, flag) {
        Ok(pid) if pid > 0 && crate::sys::process::is_alive(pid) => Retirement::InProgress,
        _ => Retirement::Abandoned,
    }
}

/// Removes this user's sets whose remover died between unlinking their key file and removing
/// them: nobody can find those by key any more, so every remover looks for them (they are rare:
/// this reads `/proc/sysvipc/sem` and asks only about sets of our layouts).
pub(crate) fn remove_abandoned_sets() {
    let Ok(sets) = sysv::list_semaphore_sets() else {
        return;
    };
    let me = crate::sys::process::euid();
    for set in sets {
        if set.uid == me
            && flag_of(set.count).is_some()
            && retirement(set.id) == Retirement::Abandoned
        {
            let _ = sysv::sem_remove(set.id);
        }
    }
}
