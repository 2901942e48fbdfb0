//! A value published for readers that take no lock: read-copy-update with an outside lock as
//! the grace period.
//!
//! The hot paths of a handle shared between threads (`lock()`, `unlock()`, `data()` from
//! Python) must not take the handle's state mutex, so they read the current attachment through
//! a [`Published`] pointer instead. A pointer alone is unsafe to follow: another thread may
//! replace the value and drop it meanwhile. The rule that makes it sound: the value's owner
//! never drops a replaced value while a reader may still look at it; it *retires* it, and
//! frees retired values only while it holds the same outside lock that every reader holds for
//! as long as it reads (the Python binding's: the GIL). A [`Quiescence`] is the proof of
//! holding that lock.

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

/// Proof that the caller holds the outside lock that orders readers and reclaimers.
///
/// Not `Send`: it belongs to the thread that holds the lock.
#[derive(Debug)]
pub struct Quiescence {
    _not_send: PhantomData<*const ()>,
}

impl Quiescence {
    /// Asserts that the caller holds the outside lock.
    ///
    /// # Safety
    /// For as long as the returned value lives, the calling thread must hold one lock that
    /// every reader of the [`Published`] values it is used with also holds while it reads, and
    /// that is held whenever retired values are freed (see [`Published::load`]). The Python
    /// binding's is the GIL: every read and every reclaim happens with the GIL held, and a
    /// reader does not release the GIL while it uses what it read.
    #[must_use]
    pub unsafe fn assume() -> Self {
        Self {
            _not_send: PhantomData,
        }
    }
}

/// A pointer to a value owned (through an `Arc`) by someone else, who publishes it here and
/// retires it before dropping it. See the module documentation.
#[derive(Debug)]
pub struct Published<T> {
    ptr: AtomicPtr<T>,
}

impl<T> Default for Published<T> {
    fn default() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

impl<T> Published<T> {
    /// Publishes `value` (or nothing). The caller keeps the `Arc` (and so the value) alive
    /// until it is replaced, and then keeps it in its retired list until a [`Quiescence`]
    /// reclaims it.
    pub fn publish(&self, value: Option<&Arc<T>>) {
        let raw = value.map_or(ptr::null_mut(), |arc| Arc::as_ptr(arc).cast_mut());
        self.ptr.store(raw, Ordering::Release);
    }

    /// Publishes what `from` publishes now, if that is `value` (read from `from` under `held`);
    /// returns whether it did. For a second pointer to the same value (what a lock holds)
    /// without an `Arc` at hand.
    pub fn publish_same<'a>(
        &self,
        from: &Published<T>,
        value: &'a T,
        _held: &'a Quiescence,
    ) -> bool {
        let raw = from.ptr.load(Ordering::Acquire);
        if !ptr::eq(raw, value) {
            return false;
        }
        self.ptr.store(raw, Ordering::Release);
        true
    }

    /// Whether `value` is the published one.
    #[must_use]
    pub fn is(&self, value: &Arc<T>) -> bool {
        ptr::eq(self.ptr.load(Ordering::Acquire), Arc::as_ptr(value))
    }

    /// The published value, for as long as the outside lock is held.
    #[must_use]
    #[inline]
    pub fn load<'a>(&self, _held: &'a Quiescence) -> Option<&'a T> {
        let raw = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer was published from a live `Arc`, whose owner keeps it
        // alive until it is replaced and then until it is reclaimed, which happens only under
        // the outside lock; `_held` proves that this thread holds that lock for 'a, so no
        // reclaim can run before 'a ends.
        unsafe { raw.as_ref() }
    }
}
