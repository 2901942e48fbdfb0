//! A test-only fault-injection point, for crash tests with a real `SIGKILL` at an exact step.
//!
//! With `QSHAREDMEM_TEST_STOP_AT=<step>` (or `<step>@<n>`: the n-th time that step is reached)
//! in its environment, a process that reaches the named step of create, attach, detach, lock or
//! unlock prints `qsharedmem-test-stop <step> <pid>` on its standard output and stops itself
//! (`SIGSTOP`). A test waits for that line and kills the process there; `SIGCONT` lets it go on
//! (once the process is stopped: it prints first, so a `SIGCONT` right after the line can come
//! before the stop and be lost).
//!
//! The variable is read once, at the first step any thread reaches. Unset (always, outside
//! tests), a step costs one atomic load and a branch.
//!
//! The steps, in the order an operation passes them:
//!
//! | operation | qsharedmem POSIX segments | System V segments |
//! |---|---|---|
//! | create | `create:reserved` (unnamed file sized and reserved), `create:initialised` (control page written, not yet counted), `create:published` (named, counted, mapped) | `create:locked` (Qt's semaphore held), `create:segment` (`shmget` done, not attached), `create:attached` (attached, semaphore still held) |
//! | attach | `attach:opened` (descriptor open, not yet counted), `attach:counted` (`LOCK_SH` held, not mapped), `attach:mapped` | `attach:locked`, `attach:attached` (semaphore still held) |
//! | detach | `detach:begin`, `detach:exclusive` (last one: `LOCK_EX` held, name not yet removed), `detach:unlinked` | `detach:begin`, `detach:locked` (semaphore held, still attached), `detach:unmapped` (`shmdt` done, last-detacher check not yet made), `detach:removed` (segment removed, key file and semaphore not yet) |
//! | lock | `lock:owned` (mutex taken, Qt's semaphore not yet), `lock:acquired` | `lock:acquired` |
//! | unlock | `unlock:begin`, `unlock:semaphore-released` (Qt's semaphore given back, mutex still held), `unlock:released` | `unlock:begin`, `unlock:released` |
//! | notify | `notify:bumped` (generation bumped, sleepers not yet woken) | the same |
//! | naming an event | `event:naming` (the namer word taken, no slot claimed yet) | the same |
//! | opening the lock | — | `lock-set:keyed` (`ftok` of the lock's key file done, `semget` not yet), `lock-set:created` (set created, not yet initialised) |

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::sys::process;

/// The environment variable that names the step to stop at.
pub const STOP_AT_VARIABLE: &str = "QSHAREDMEM_TEST_STOP_AT";

/// The step to stop at and at which of its passes (1 = the first).
struct Target {
    step: String,
    pass: u32,
}

static TARGET: OnceLock<Option<Target>> = OnceLock::new();
static PASSES: AtomicU32 = AtomicU32::new(0);

fn target() -> Option<&'static Target> {
    TARGET
        .get_or_init(|| {
            let value = std::env::var(STOP_AT_VARIABLE).ok()?;
            let (step, pass) = match value.rsplit_once('@') {
                Some((step, n)) => (step, n.parse().ok().filter(|&n| n > 0)?),
                None => (value.as_str(), 1),
            };
            Some(Target {
                step: step.to_owned(),
                pass,
            })
        })
        .as_ref()
}

/// Marks the step `step`; stops the process there if the test hook names it.
/// Set once the variable was read and found unset: then a step is one relaxed load and a
/// branch, inlined into lock() and unlock() (five steps per pair; the `OnceLock` lookup
/// behind [`target`] cost about 1 ns each).
static DISABLED: AtomicBool = AtomicBool::new(false);

#[inline]
pub(crate) fn step(step: &'static str) {
    if !DISABLED.load(Ordering::Relaxed) {
        reached(step);
    }
}

#[cold]
#[inline(never)]
fn reached(step: &'static str) {
    match target() {
        Some(target) => {
            if target.step == step && PASSES.fetch_add(1, Ordering::Relaxed) + 1 == target.pass {
                process::stop_self(&format!("qsharedmem-test-stop {step} {}\n", process::pid()));
            }
        }
        None => DISABLED.store(true, Ordering::Relaxed),
    }
}
