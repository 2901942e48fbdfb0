//! Named events in the control block: 32 slots, each a state word (set or clear), a count of
//! sleepers and a name of up to 48 bytes, shared by every process attached.
//!
//! **Naming a slot, across processes.** Finding a name is a scan that takes no lock: a slot's
//! `name_len` is stored (with release ordering) only after its name bytes, so a slot whose
//! length says "named" has its whole name. Naming a new event takes the *namer* word of the
//! notify block (compare-and-swap 0 → our pid), looks once more (another process may have
//! named it meanwhile), then claims the first free slot with a compare-and-swap of its
//! `name_len` (so that a numbered claim, `event(3)`, cannot land on the same slot) after
//! writing the bytes. Two processes naming the same event therefore always end with one slot.
//!
//! A namer killed halfway leaves the namer word holding its pid, and perhaps a slot with bytes
//! but no length (still free: the next namer writes over it). The next process that wants to
//! name an event sees the pid, finds with `kill(pid, 0)` that it is gone, and takes the word
//! over with a compare-and-swap from that very pid: no deadlock, at the cost of one system call
//! after a crash. If the pid belongs to a live process (a namer that is stopped, or a crashed
//! namer's pid taken by a new process within the moment), naming waits up to
//! [`NAMER_WAIT`] and then fails with `EBUSY` instead of waiting forever; events already named
//! keep working.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::waiting::{wait_counted_until, wake_counted, WaitFor};
use crate::segment::control::{Control, EventSlot, EVENT_NAME_MAX};
use crate::sys::{process, Errno};
use crate::wait::{Interrupt, Waited};

/// How long naming an event waits for a live namer before it gives up.
pub const NAMER_WAIT: Duration = Duration::from_secs(2);

/// Why an event could not be found or named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EventLookup {
    /// An index outside `0..32`.
    BadIndex(usize),
    /// An empty name, or one longer than 48 bytes (UTF-8).
    BadName(String),
    /// All 32 slots are in use.
    Full,
    /// A live process has been naming an event for longer than [`NAMER_WAIT`].
    NamerBusy(u32),
}

impl Control {
    /// The slot named `name`, named now if no slot has that name yet.
    pub(crate) fn event_named(&self, name: &str) -> Result<usize, EventLookup> {
        if name.is_empty() || name.len() > EVENT_NAME_MAX {
            return Err(EventLookup::BadName(name.to_owned()));
        }
        if let Some(index) = self.find_event(name) {
            return Ok(index);
        }
        let _namer = self.take_namer()?;
        crate::testpoint::step("event:naming");
        if let Some(index) = self.find_event(name) {
            return Ok(index);
        }
        let len = u32::try_from(name.len()).expect("at most 48 bytes") + 1;
        for (index, slot) in self.events.iter().enumerate() {
            if slot.name_len.load(Ordering::Acquire) != 0 {
                continue;
            }
            for (cell, &byte) in slot.name.iter().zip(name.as_bytes()) {
                cell.store(byte, Ordering::Relaxed);
            }
            // Claimed only now: a numbered claim of this slot in between wins, and we go on.
            if slot
                .name_len
                .compare_exchange(0, len, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(index);
            }
        }
        Err(EventLookup::Full)
    }

    /// The slot `index`, marked in use (numbered) if it was free, so that naming skips it.
    pub(crate) fn event_numbered(&self, index: usize) -> Result<usize, EventLookup> {
        let slot = self.events.get(index).ok_or(EventLookup::BadIndex(index))?;
        let _ = slot
            .name_len
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed);
        Ok(index)
    }

    /// The name of slot `index`, if it has one.
    pub(crate) fn event_name(&self, index: usize) -> Option<String> {
        let slot = self.events.get(index)?;
        let len = usize::try_from(slot.name_len.load(Ordering::Acquire))
            .ok()?
            .checked_sub(1)
            .filter(|&len| len > 0 && len <= EVENT_NAME_MAX)?;
        let bytes: Vec<u8> = slot.name[..len]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        String::from_utf8(bytes).ok()
    }

    fn find_event(&self, name: &str) -> Option<usize> {
        let wanted = u32::try_from(name.len()).ok()? + 1;
        self.events.iter().position(|slot| {
            slot.name_len.load(Ordering::Acquire) == wanted
                && slot
                    .name
                    .iter()
                    .zip(name.as_bytes())
                    .all(|(cell, &byte)| cell.load(Ordering::Relaxed) == byte)
        })
    }

    /// Takes the namer word (see the module documentation); it is given back when the guard
    /// goes.
    fn take_namer(&self) -> Result<NamerGuard<'_>, EventLookup> {
        let word = &self.notify.event_namer;
        let me = process::pid().unsigned_abs();
        let start = Instant::now();
        let mut pause = Duration::from_micros(5);
        loop {
            match word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(NamerGuard { word, me }),
                Err(holder) => {
                    let dead = i32::try_from(holder).is_ok_and(|pid| !process::is_alive(pid));
                    if dead
                        && word
                            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                    {
                        return Ok(NamerGuard { word, me });
                    }
                    if start.elapsed() > NAMER_WAIT {
                        return Err(EventLookup::NamerBusy(holder));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
            }
        }
    }
}

struct NamerGuard<'a> {
    word: &'a AtomicU32,
    me: u32,
}

impl Drop for NamerGuard<'_> {
    fn drop(&mut self) {
        // Only if it is still ours (a namer that took it over from us, believing us dead, owns it).
        let _ = self
            .word
            .compare_exchange(self.me, 0, Ordering::Release, Ordering::Relaxed);
    }
}

/// What an event's state word says: bit 0 set, the bits above count the `set()`s.
const SET: u32 = 1;

impl EventSlot {
    /// Sets the event and wakes everyone waiting for it; false if it was set already.
    pub(crate) fn set(&self) -> bool {
        let mut state = self.state.load(Ordering::SeqCst);
        loop {
            if state & SET != 0 {
                return false;
            }
            let next = state.wrapping_add(2) | SET;
            match self
                .state
                .compare_exchange(state, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        wake_counted(&self.state, &self.waiters, u32::MAX);
        true
    }

    /// Clears the event; false if it was clear already.
    pub(crate) fn clear(&self) -> bool {
        self.state.fetch_and(!SET, Ordering::SeqCst) & SET != 0
    }

    /// Whether the event is set.
    pub(crate) fn is_set(&self) -> bool {
        self.state.load(Ordering::SeqCst) & SET != 0
    }

    /// The state word now: [`Self::set_since`] tells whether a `set()` came after it.
    pub(crate) fn token(&self) -> u32 {
        self.state.load(Ordering::SeqCst)
    }

    /// Whether the event is set now, or was set after `token` was read (and cleared again).
    pub(crate) fn set_since(&self, token: u32) -> bool {
        let now = self.state.load(Ordering::SeqCst);
        now & SET != 0 || now >> 1 != token >> 1
    }

    /// Waits until the event is set (true), or was set since the wait began even if it was
    /// cleared again; false once `how.timeout` passed.
    pub(crate) fn wait(&self, how: WaitFor, interrupt: Interrupt<'_>) -> Result<Waited<()>, Errno> {
        let token = self.token();
        // A `clear()` of a clear event changes nothing, so the word holds `token` until a set.
        let ready = || self.set_since(token).then_some(());
        wait_counted_until(&self.state, &self.waiters, token, &ready, how, interrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mapping::Mapping;
    use crate::wait::uninterrupted;

    fn block() -> Mapping {
        Mapping::anonymous_shared(crate::segment::control::CONTROL_SIZE).unwrap()
    }

    #[test]
    fn names_are_found_again_and_numbers_are_kept_apart() {
        let map = block();
        let control = map.shared::<Control>(0);
        assert_eq!(control.event_numbered(0), Ok(0));
        assert_eq!(control.event_named("ready"), Ok(1), "slot 0 is numbered");
        assert_eq!(control.event_named("done"), Ok(2));
        assert_eq!(control.event_named("ready"), Ok(1));
        assert_eq!(control.event_name(1).as_deref(), Some("ready"));
        assert_eq!(control.event_name(0), None);
        assert_eq!(control.event_numbered(32), Err(EventLookup::BadIndex(32)));
        assert!(matches!(
            control.event_named(""),
            Err(EventLookup::BadName(_))
        ));
        assert!(matches!(
            control.event_named(&"x".repeat(49)),
            Err(EventLookup::BadName(_))
        ));
        for i in 3..32 {
            assert_eq!(control.event_named(&format!("e{i}")), Ok(i));
        }
        assert_eq!(control.event_named("one too many"), Err(EventLookup::Full));
    }

    #[test]
    fn a_dead_namer_is_taken_over() {
        let map = block();
        let control = map.shared::<Control>(0);
        // A pid that cannot be alive: above the kernel's maximum.
        control
            .notify
            .event_namer
            .store(0x7fff_fff0, Ordering::SeqCst);
        assert_eq!(control.event_named("after a crash"), Ok(0));
        assert_eq!(control.notify.event_namer.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_set_then_clear_still_ends_a_wait_that_began_before() {
        let map = block();
        let slot = &map.shared::<Control>(0).events[0];
        let token = slot.token();
        assert!(!slot.set_since(token));
        assert!(slot.set());
        assert!(!slot.set(), "set already");
        assert!(slot.clear());
        assert!(!slot.is_set());
        assert!(slot.set_since(token));
        let how = WaitFor::at_most(Some(Duration::from_millis(20)));
        assert_eq!(slot.wait(how, &mut uninterrupted), Ok(Waited::TimedOut));
        slot.set();
        assert_eq!(slot.wait(how, &mut uninterrupted), Ok(Waited::Got(())));
    }
}
