//! [`AtomicWord`]: an aligned 32- or 64-bit word of a segment's *data*, used atomically, that a
//! process can wait on and wake, so that programs in any language build their own protocol on
//! the same bytes (a Rust `AtomicU32` at that offset, C11 `atomic_uint`, C++ `std::atomic_ref`).
//!
//! Every operation is sequentially consistent. Waiting sleeps on a futex, so a waker must call
//! [`AtomicWord::wake`] after changing the word (there is no room for a sleeper count in the
//! user's bytes, so a wake always enters the kernel; about a microsecond).
//!
//! The kernel can only sleep on 32-bit words. A 64-bit word sleeps on its low half: a change
//! that leaves the low half as it was is still seen by a waiter that is woken (`wake()`), or at
//! the end of its current 100 ms slice, never missed.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::waiting::{wait_until, WaitFor, Watched};
use super::NotifyError;
use crate::segment::Attachment;
use crate::sys::futex::{self, FutexWord};
use crate::sys::mapping::Mapping;
use crate::wait::{uninterrupted, Interrupt, Waited};

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// The widths an [`AtomicWord`] can have: `u32` and `u64`.
pub trait Width:
    sealed::Sealed + Copy + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// The width in bytes (also the alignment a word needs).
    const BYTES: usize;
    #[doc(hidden)]
    fn load(map: &Mapping, offset: usize) -> Self;
    #[doc(hidden)]
    fn store(map: &Mapping, offset: usize, value: Self);
    #[doc(hidden)]
    fn fetch_add(map: &Mapping, offset: usize, delta: Self) -> Self;
    #[doc(hidden)]
    fn compare_exchange(
        map: &Mapping,
        offset: usize,
        current: Self,
        new: Self,
    ) -> Result<Self, Self>;
    /// The offset of the 32 bits the kernel sleeps on, and their value in `value`.
    #[doc(hidden)]
    fn sleep_word(offset: usize, value: Self) -> (usize, u32);
}

/// A [`Width`]'s writing operations on its atomic type: the same for every width (only
/// loading, which a read-only mapping must allow, and the word the kernel sleeps on differ).
macro_rules! write_ops {
    ($atomic:ty) => {
        fn store(map: &Mapping, offset: usize, value: Self) {
            map.shared::<$atomic>(offset).store(value, Ordering::SeqCst);
        }
        fn fetch_add(map: &Mapping, offset: usize, delta: Self) -> Self {
            map.shared::<$atomic>(offset)
                .fetch_add(delta, Ordering::SeqCst)
        }
        fn compare_exchange(
            map: &Mapping,
            offset: usize,
            current: Self,
            new: Self,
        ) -> Result<Self, Self> {
            map.shared::<$atomic>(offset).compare_exchange(
                current,
                new,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
        }
    };
}

impl Width for u32 {
    const BYTES: usize = 4;
    fn load(map: &Mapping, offset: usize) -> Self {
        map.futex_word(offset).load()
    }
    write_ops!(AtomicU32);
    fn sleep_word(offset: usize, value: Self) -> (usize, u32) {
        (offset, value)
    }
}

impl Width for u64 {
    const BYTES: usize = 8;
    fn load(map: &Mapping, offset: usize) -> Self {
        map.load_u64(offset)
    }
    write_ops!(AtomicU64);
    fn sleep_word(offset: usize, value: Self) -> (usize, u32) {
        // The low half: at the word's address on little-endian machines, after the high half
        // on big-endian ones. The truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let low = value as u32;
        if cfg!(target_endian = "little") {
            (offset, low)
        } else {
            (offset + 4, low)
        }
    }
}

/// An aligned word of a segment's data at a fixed offset, used atomically. It keeps the
/// attachment (and so the mapping) alive: it stays valid after the handle detaches.
#[derive(Clone, Debug)]
pub struct AtomicWord<T: Width> {
    attachment: Arc<Attachment>,
    offset: usize,
    _width: PhantomData<T>,
}

impl<T: Width> AtomicWord<T> {
    /// The word at `offset` of `attachment`'s data.
    ///
    /// # Errors
    /// [`NotifyError::Argument`] if `offset` is not a multiple of the width or the word does
    /// not fit in the segment.
    pub fn new(attachment: Arc<Attachment>, offset: usize) -> Result<Self, NotifyError> {
        let width = T::BYTES;
        if offset % width != 0 {
            return Err(NotifyError::Argument(format!(
                "offset {offset} is not a multiple of {width}: a {}-bit atomic word must be \
                 aligned",
                width * 8
            )));
        }
        let size = attachment.size();
        if offset.checked_add(width).is_none_or(|end| end > size) {
            return Err(NotifyError::Argument(format!(
                "a {width}-byte word at offset {offset} does not fit in the {size}-byte segment"
            )));
        }
        Ok(Self {
            attachment,
            offset,
            _width: PhantomData,
        })
    }

    /// The offset of the word in the segment's data.
    #[must_use]
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the word can be written (the attachment is `ReadWrite`).
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.attachment.is_writable()
    }

    fn map(&self) -> &Mapping {
        self.attachment.data_mapping()
    }

    fn writable(&self, operation: &str) -> Result<&Mapping, NotifyError> {
        if self.attachment.is_writable() {
            Ok(self.map())
        } else {
            Err(NotifyError::ReadOnly(format!(
                "cannot {operation} an atomic word of a segment attached ReadOnly"
            )))
        }
    }

    /// The value now.
    #[must_use]
    pub fn load(&self) -> T {
        T::load(self.map(), self.offset)
    }

    /// Stores `value`.
    ///
    /// # Errors
    /// [`NotifyError::ReadOnly`] for a `ReadOnly` attachment.
    pub fn store(&self, value: T) -> Result<(), NotifyError> {
        T::store(self.writable("store to")?, self.offset, value);
        Ok(())
    }

    /// Adds `delta` (wrapping around); returns the value before.
    ///
    /// # Errors
    /// [`NotifyError::ReadOnly`] for a `ReadOnly` attachment.
    pub fn add(&self, delta: T) -> Result<T, NotifyError> {
        Ok(T::fetch_add(self.writable("add to")?, self.offset, delta))
    }

    /// Stores `new` if the word holds `current`: `Ok(Ok(current))` if it did, `Ok(Err(actual))`
    /// with the value it held otherwise.
    ///
    /// # Errors
    /// [`NotifyError::ReadOnly`] for a `ReadOnly` attachment.
    pub fn compare_exchange(&self, current: T, new: T) -> Result<Result<T, T>, NotifyError> {
        Ok(T::compare_exchange(
            self.writable("compare and exchange")?,
            self.offset,
            current,
            new,
        ))
    }

    /// Waits while the word holds `expected`, at most `timeout` (`None`: as long as it takes):
    /// true once it holds another value (at once if it does already), false on timeout.
    #[must_use]
    pub fn wait(&self, expected: T, timeout: Option<Duration>) -> bool {
        matches!(
            self.wait_with(expected, WaitFor::at_most(timeout), &mut uninterrupted),
            Ok(true)
        )
    }

    /// [`Self::wait`] with the spin and an interrupt check between slices.
    ///
    /// # Errors
    /// [`NotifyError::Interrupted`] when the check asked to stop; an OS error from the futex.
    pub fn wait_with(
        &self,
        expected: T,
        how: WaitFor,
        interrupt: Interrupt<'_>,
    ) -> Result<bool, NotifyError> {
        let (sleep_offset, sleep_value) = T::sleep_word(self.offset, expected);
        let watched = Watched::Plain(self.map().futex_word(sleep_offset));
        let ready = || {
            let now = self.load();
            (now != expected).then_some(())
        };
        match wait_until(watched, sleep_value, &ready, how, interrupt) {
            Ok(Waited::Got(())) => Ok(true),
            Ok(Waited::TimedOut) => Ok(false),
            Ok(Waited::Interrupted) => Err(NotifyError::Interrupted),
            Err(errno) => Err(NotifyError::os("wait", errno)),
        }
    }

    /// Wakes up to `count` processes or threads waiting on the word (`u32::MAX`: all of them);
    /// returns how many it woke. Call it after changing the word.
    pub fn wake(&self, count: u32) -> u32 {
        let (sleep_offset, _) = T::sleep_word(self.offset, self.load());
        futex::wake(self.map().futex_word(sleep_offset), count).unwrap_or(0)
    }

    /// The futex word a waiter sleeps on and the value it holds while the word holds
    /// `expected` (for the asyncio watcher).
    pub(crate) fn sleep_word(&self, expected: T) -> (FutexWord<'_>, u32) {
        let (sleep_offset, value) = T::sleep_word(self.offset, expected);
        (self.map().futex_word(sleep_offset), value)
    }
}
