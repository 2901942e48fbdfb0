//! Surviving a shared memory file that shrinks under our mappings.
//!
//! A `MAP_SHARED` mapping of a file stays as long as it was made, but the file need not: if
//! another process `ftruncate`s it (or, for a file whose pages were never reserved, if `/dev/shm`
//! runs full), touching a page past the new end raises `SIGBUS`, and the default action kills
//! the process. A Python program touches the memory through a `memoryview` or a numpy array,
//! where no check can run before the access, so the only place to intercept it is the signal.
//!
//! Every file mapping registers its address range here (a fixed-size, lock-free table: the
//! handler may read it at any instant). A `SIGBUS` handler, installed when the first range is
//! registered, looks the faulting address up: if it lies in a registered range, the handler maps
//! anonymous zero pages over the rest of that range (`MAP_FIXED`, same protection) and flags the
//! range; the faulting access then completes on the zero page, and the owner of the mapping sees
//! the flag ([`lost_pages`]) at its next operation and reports the damage. Every other `SIGBUS`
//! goes to the handler that was installed before ours (Python's `faulthandler`, the Rust
//! runtime's, or the default action), so faults outside our mappings behave as they would
//! without us.
//!
//! The handler only uses async-signal-safe operations: atomic loads and stores, `mmap` and
//! `syscall(SYS_gettid)` (plain system calls on Linux), `sigaction`, `sigpending`,
//! `sigismember` and `raise`.

use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};

/// `si_code` of a `SIGBUS` for an address with no backing page (past the end of the file).
const BUS_ADRERR: c_int = 2;

/// How many mappings can be watched at once: 10,000 attachments in one process fit (each uses
/// one mapping, two when `ReadOnly`). Mappings beyond this work as usual, without the
/// protection. The table is zero-initialised static memory (640 KiB of address space; only
/// the pages of slots in use are ever touched).
const SLOTS: usize = 16_384;

struct Slot {
    /// Owned by one registration (set by [`register`], cleared by [`unregister`]).
    used: AtomicBool,
    /// Sequence number for the handler's reads: odd while the range is being changed.
    seq: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    prot: AtomicI32,
    /// Pages of this range were replaced by zero pages.
    lost: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise `TABLE`
const EMPTY: Slot = Slot {
    used: AtomicBool::new(false),
    seq: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    prot: AtomicI32::new(0),
    lost: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// How many slots are taken: a full table answers at once instead of trying every slot.
static TAKEN: AtomicUsize = AtomicUsize::new(0);
/// Where the next registration starts looking for a free slot.
static NEXT: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The action that was installed before ours (a leaked allocation, replaced on reinstall).
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(ptr::null_mut());
/// The thread (kernel id) that is running the previous action for a signal, 0 if none (see
/// [`pass_on`]).
static PASSING: AtomicI32 = AtomicI32::new(0);

/// Starts watching `[start, start + len)`, mapped with protection `prot`. Returns the slot to
/// pass to [`unregister`] and [`lost_pages`], or `None` if the table is full or the handler
/// could not be installed (the mapping then works without the protection).
pub(crate) fn register(start: *mut u8, len: usize, prot: c_int) -> Option<usize> {
    if !ensure_handler() {
        return None;
    }
    if TAKEN.load(Ordering::Relaxed) >= SLOTS {
        return None;
    }
    let first = NEXT.load(Ordering::Relaxed);
    let index = (0..SLOTS).map(|i| (first + i) % SLOTS).find(|&i| {
        let used = &TABLE[i].used;
        // Read before the compare-and-swap: a taken slot is skipped without a locked write.
        !used.load(Ordering::Relaxed)
            && used
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    })?;
    TAKEN.fetch_add(1, Ordering::Relaxed);
    NEXT.store((index + 1) % SLOTS, Ordering::Relaxed);
    let slot = &TABLE[index];
    write_range(slot, start as usize, start as usize + len, prot);
    slot.lost.store(false, Ordering::Relaxed);
    Some(index)
}

/// Stops watching the range of `slot` (before it is unmapped).
pub(crate) fn unregister(slot: usize) {
    let entry = &TABLE[slot];
    write_range(entry, 0, 0, 0);
    entry.lost.store(false, Ordering::Relaxed);
    entry.used.store(false, Ordering::Release);
    TAKEN.fetch_sub(1, Ordering::Relaxed);
}

/// Whether the handler replaced pages of the range of `slot` with zero pages.
pub(crate) fn lost_pages(slot: usize) -> bool {
    TABLE[slot].lost.load(Ordering::Acquire)
}

/// How many times the handler replaced pages, in any range, since the process started: while
/// it is 0 no mapping lost anything, which a hot path checks with one load instead of asking
/// about each of its mappings.
static EVER_LOST: AtomicUsize = AtomicUsize::new(0);

/// Whether the handler has never replaced pages in this process.
#[inline]
pub fn nothing_ever_lost() -> bool {
    EVER_LOST.load(Ordering::Relaxed) == 0
}

fn write_range(slot: &Slot, start: usize, end: usize, prot: c_int) {
    slot.seq.fetch_add(1, Ordering::Relaxed);
    fence(Ordering::Release);
    slot.start.store(start, Ordering::Relaxed);
    slot.end.store(end, Ordering::Relaxed);
    slot.prot.store(prot, Ordering::Relaxed);
    slot.seq.fetch_add(1, Ordering::Release);
}

/// The registered range containing `addr`: (slot, end, protection).
fn find(addr: usize) -> Option<(usize, usize, c_int)> {
    TABLE.iter().enumerate().find_map(|(index, slot)| {
        if !slot.used.load(Ordering::Relaxed) {
            return None;
        }
        let before = slot.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            // Being registered or unregistered: nobody can be using that mapping right now.
            return None;
        }
        let start = slot.start.load(Ordering::Relaxed);
        let end = slot.end.load(Ordering::Relaxed);
        let prot = slot.prot.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let stable = slot.seq.load(Ordering::Relaxed) == before;
        (stable && start <= addr && addr < end).then_some((index, end, prot))
    })
}

/// Installs the handler unless it is the current one (someone may have replaced it since, for
/// example `faulthandler.enable()` or `faulthandler.disable()`; ours then goes back on top,
/// passing other signals to that one). Returns whether it is installed.
fn ensure_handler() -> bool {
    // No mutex here: a fork() while another thread held it would leave it locked forever in
    // the child. Two threads installing at once are told apart below instead.
    let ours = our_handler();
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a NULL new action only queries; `current` is valid for writes of a sigaction.
    if unsafe { libc::sigaction(libc::SIGBUS, ptr::null(), current.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: sigaction succeeded and filled the struct (it was zeroed before anyway).
    if unsafe { current.assume_init_ref() }.sa_sigaction == ours {
        return true;
    }
    PAGE.store(super::mapping::page_size(), Ordering::Relaxed);
    // SAFETY: an all-zero sigaction is valid (empty mask, no flags); the fields are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ours;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    let previous = Box::into_raw(Box::new(
        // SAFETY: an all-zero sigaction is valid; sigaction overwrites it below.
        unsafe { std::mem::zeroed::<libc::sigaction>() },
    ));
    // SAFETY: `action` is a fully initialised sigaction whose handler has the SA_SIGINFO
    // signature; `previous` is valid for writes of one.
    if unsafe { libc::sigaction(libc::SIGBUS, &action, previous) } != 0 {
        // SAFETY: `previous` came from Box::into_raw above and was not published.
        drop(unsafe { Box::from_raw(previous) });
        return false;
    }
    // SAFETY: sigaction succeeded and wrote the old action into `previous`.
    if unsafe { (*previous).sa_sigaction } == ours {
        // Another thread installed ours in between: its old action is the one to pass on to
        // (recording ours as our predecessor would make the handler call itself).
        // SAFETY: `previous` came from Box::into_raw above and was not published.
        drop(unsafe { Box::from_raw(previous) });
        return true;
    }
    // The old value is leaked on purpose: a handler running on another thread may still read
    // it. This happens once per (re)installation, which only a foreign sigaction call causes.
    PREVIOUS.store(previous, Ordering::Release);
    true
}

/// The address of our handler, as `sa_sigaction` holds it.
fn our_handler() -> usize {
    on_sigbus as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize
}

extern "C" fn on_sigbus(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code == BUS_ADRERR {
        // SAFETY: for SIGBUS with a fault code, si_addr is the faulting address.
        let addr = unsafe { (*info).si_addr() } as usize;
        if let Some((slot, end, prot)) = find(addr) {
            let page = addr & !(PAGE.load(Ordering::Relaxed) - 1);
            // SAFETY: errno is thread-local; the pointer is valid for the thread's lifetime.
            let errno = unsafe { *libc::__errno_location() };
            // SAFETY: `[page, end)` lies inside a live mapping registered by its owner (the
            // sequence check in `find` made sure the range was stable), so replacing it with
            // fresh anonymous memory of the same protection cannot clobber any other object;
            // the owner's `Mapping` still unmaps the whole range when it is dropped.
            let mapped = unsafe {
                libc::mmap(
                    page as *mut c_void,
                    end - page,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            // SAFETY: as above.
            unsafe { *libc::__errno_location() = errno };
            if mapped != libc::MAP_FAILED {
                TABLE[slot].lost.store(true, Ordering::Release);
                EVER_LOST.fetch_add(1, Ordering::Release);
                // Returning re-executes the access, which now finds a zero page.
                return;
            }
        }
    }
    pass_on(signal, info, context, code);
}

/// Hands a `SIGBUS` that is not ours to the action installed before ours.
///
/// A handler installed *after* ours (which we then put back on top) may have saved ours as its
/// own "previous", and when it is done put that back and send itself the signal again (Python's
/// `faulthandler` does: it restores its predecessor and calls `raise`), which would come back
/// here and go round in circles. Two ways back are told apart:
///
/// * The signal is blocked while our handler runs, so such a re-raise stays pending until we
///   return. If, once the previous handler has returned, the signal is pending and its action is
///   ours again, the signal would come straight back: the default action is restored instead,
///   and the pending signal gets it as soon as we return. (A `kill` from elsewhere that happens
///   to arrive during those microseconds, while the previous handler runs, is taken for such a
///   re-raise.)
/// * A handler that unblocks the signal before raising it comes back at once, nested inside
///   its own call: a sent signal (not raised by a fault) that arrives on the thread that is
///   passing one on right now gets the default action.
///
/// Signals sent later, after the previous handler has returned, are passed on again: each
/// `kill` reaches it, as it would without us.
fn pass_on(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void, code: c_int) {
    let sent = code <= 0;
    let previous = PREVIOUS.load(Ordering::Acquire);
    // The raw system call, not glibc's gettid (2.30+), which the manylinux_2_17 wheel cannot
    // reference. SAFETY: SYS_gettid has no arguments or preconditions; syscall(2) only traps
    // into the kernel and sets errno, so it is async-signal-safe.
    let thread = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let looping = sent && PASSING.load(Ordering::Relaxed) == thread;
    // SAFETY: `previous` is NULL or a leaked, never freed sigaction written before publication.
    let handler = match unsafe { previous.as_ref() } {
        Some(action) if !looping => action.sa_sigaction,
        _ => libc::SIG_DFL,
    };
    if handler == libc::SIG_IGN && sent {
        return;
    }
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // The default action (a fault cannot be ignored): restore it and let it happen, by
        // re-executing the faulting access or, for a sent signal, by raising it again (it is
        // blocked until this handler returns).
        restore_default(signal);
        if sent {
            // SAFETY: raise is async-signal-safe.
            unsafe { libc::raise(signal) };
        }
        return;
    }
    // Only the outermost pass-on of a thread marks it (and only one thread at a time: another
    // thread's signal is never taken for our loop).
    let outermost = PASSING
        .compare_exchange(0, thread, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok();
    // SAFETY: `previous` is non-null here (checked by the match above).
    let flags = unsafe { (*previous).sa_flags };
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action was installed with SA_SIGINFO, so its handler has this
        // signature; we pass it exactly what the kernel passed us.
        let function: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(handler) };
        function(signal, info, context);
    } else {
        // SAFETY: without SA_SIGINFO the handler takes the signal number only.
        let function: extern "C" fn(c_int) = unsafe { std::mem::transmute(handler) };
        function(signal);
    }
    if outermost {
        PASSING.store(0, Ordering::Relaxed);
    }
    if pending_for_us(signal) {
        restore_default(signal);
    }
}

/// Installs the default action for `signal` (async-signal-safe).
fn restore_default(signal: c_int) {
    // SAFETY: an all-zero sigaction with SIG_DFL is valid.
    let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
    default.sa_sigaction = libc::SIG_DFL;
    // SAFETY: `default` is a valid sigaction; sigaction is async-signal-safe.
    unsafe { libc::sigaction(signal, &default, ptr::null_mut()) };
}

/// Whether `signal` is pending and would be delivered to our handler when it returns: the
/// previous handler gave the signal back to its own predecessor, which is us. Uses only
/// `sigpending`, `sigismember` and `sigaction` (async-signal-safe).
fn pending_for_us(signal: c_int) -> bool {
    let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `pending` is valid for writes of a sigset_t.
    if unsafe { libc::sigpending(pending.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: sigpending succeeded and filled the set (it was zeroed before anyway).
    if unsafe { libc::sigismember(pending.as_ptr(), signal) } != 1 {
        return false;
    }
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a NULL new action only queries; `current` is valid for writes of a sigaction.
    if unsafe { libc::sigaction(signal, ptr::null(), current.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: sigaction succeeded and filled the struct (it was zeroed before anyway).
    unsafe { current.assume_init_ref() }.sa_sigaction == our_handler()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_until_unregistered() {
        let base = 0x1000_0000usize as *mut u8;
        let slot = register(base, 8192, libc::PROT_READ).unwrap();
        assert_eq!(
            find(0x1000_0000 + 100),
            Some((slot, 0x1000_2000, libc::PROT_READ))
        );
        assert_eq!(find(0x1000_2000), None);
        assert!(!lost_pages(slot));
        unregister(slot);
        assert_eq!(find(0x1000_0000 + 100), None);
    }
}
