//! The hot paths of `QSharedMemory` from Python: `lock()`, `unlock()`, `data()`,
//! `constData()` and `size()` as CPython methods of their own.
//!
//! A Python method call is the floor of what a lock taken from Python costs, and
//! `multiprocessing.Lock` sits on it. PyO3's generated methods add their argument parsing, their
//! trampoline (a thread-local GIL count, a panic guard, result conversion) and the class's
//! borrow checks; together several times the cost of the lock itself. These five are plain
//! `METH_NOARGS` / `METH_FASTCALL|METH_KEYWORDS` functions instead, installed on the class at
//! import: without arguments they read the handle's published state (no mutex), take or give
//! back the lock with one atomic read-modify-write each for the robust mutex and Qt's
//! semaphore, and return. Everything else (arguments, waits, errors, first views, forked
//! children) goes to the ordinary slow path, inside PyO3's `Python::attach` and a panic guard.
//!
//! Soundness rests on two facts the code below relies on, each at its `unsafe`:
//! * CPython calls a method descriptor's function only with `self` an instance of the class it
//!   was made for (or a subclass), with the GIL held;
//! * everything the hot paths read through [`Quiescence`] is published by the handle and
//!   freed only after the binding took it back with the GIL held (`Handle::retired`), and a hot
//!   path never releases the GIL: so the GIL is the [`Quiescence`] lock.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use super::shared_memory::PySharedMemory;
use crate::sys::published::Quiescence;

/// A cached `memoryview` of one attachment (a strong reference), and which attachment it shows.
/// Read and written only with the GIL held (the atomics are for `Sync`, not for ordering).
#[derive(Default)]
pub(crate) struct CachedView {
    attachment: AtomicUsize,
    view: AtomicPtr<ffi::PyObject>,
}

impl CachedView {
    /// A new view of the cached one, if it shows `attachment`. GIL held.
    fn view_of(&self, attachment: usize) -> Option<*mut ffi::PyObject> {
        let base = self.view.load(Ordering::Relaxed);
        if base.is_null() || self.attachment.load(Ordering::Relaxed) != attachment {
            return None;
        }
        // SAFETY: `base` is a live memoryview this cache holds a reference to; the GIL is held.
        // A new view of it shares its managed buffer: one allocation, no new export.
        Some(unsafe { ffi::PyMemoryView_FromObject(base) })
    }

    /// Caches `view` (a memoryview of `attachment`); returns the one it replaces. GIL held.
    pub(crate) fn replace(&self, attachment: usize, view: Py<PyAny>) -> Option<Py<PyAny>> {
        let old = self.view.swap(view.into_ptr(), Ordering::Relaxed);
        self.attachment.store(attachment, Ordering::Relaxed);
        // SAFETY: a non-null `old` is the strong reference this cache took over with
        // `into_ptr`; ownership goes back to a `Py`.
        (!old.is_null())
            .then(|| unsafe { Bound::from_owned_ptr(Python::assume_attached(), old).unbind() })
    }

    /// Empties the cache; returns the view it held (to be dropped outside any lock). GIL held.
    pub(crate) fn take(&self) -> Option<Py<PyAny>> {
        let old = self.view.swap(ptr::null_mut(), Ordering::Relaxed);
        self.attachment.store(0, Ordering::Relaxed);
        // SAFETY: as in `replace`.
        (!old.is_null())
            .then(|| unsafe { Bound::from_owned_ptr(Python::assume_attached(), old).unbind() })
    }
}

/// The proof that the GIL is held, for the handle's published state: a `Python` token means
/// that this thread holds the GIL (the stable ABI this builds against has no free-threaded
/// interpreter), and the hot paths below never release it while they read.
pub(crate) fn gil_held(_py: Python<'_>) -> Quiescence {
    // SAFETY: see above: every read of the handle's published state and every reclaim happens
    // with the GIL held, which `_py` proves for this thread.
    unsafe { Quiescence::assume() }
}

/// The handle behind `slf`.
///
/// # Safety
/// `slf` is the `self` CPython passes to a method descriptor of `QSharedMemory`, with the GIL
/// held: an instance of the class or of a subclass.
unsafe fn this<'a>(py: Python<'a>, slf: *mut ffi::PyObject) -> &'a PySharedMemory {
    // SAFETY: the caller's guarantee: `slf` is a live, borrowed `QSharedMemory` (the descriptor
    // checked its type when it was bound), so the unchecked cast is correct; the class is
    // frozen, so `get` needs no borrow flag, and the reference lives as long as the call.
    unsafe {
        pyo3::Borrowed::from_ptr(py, slf)
            .cast_unchecked::<PySharedMemory>()
            .get()
    }
}

#[inline]
fn py_bool(value: bool) -> *mut ffi::PyObject {
    // SAFETY: the GIL is held; a new reference to the singleton (an inline increment under the
    // limited API of 3.11, where `Py_NewRef` would be a call).
    unsafe {
        let object = if value {
            ffi::Py_True()
        } else {
            ffi::Py_False()
        };
        ffi::Py_INCREF(object);
        object
    }
}

fn bool_object(py: Python<'_>, value: bool) -> Py<PyAny> {
    pyo3::types::PyBool::new(py, value)
        .to_owned()
        .into_any()
        .unbind()
}

/// Runs a slow path inside PyO3 (its GIL bookkeeping, a panic guard) and hands CPython its
/// result: a new reference, or NULL with the exception set.
fn slow(f: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) -> *mut ffi::PyObject {
    Python::attach(|py| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(py)))
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic in qsharedmem".to_owned());
                Err(pyo3::panic::PanicException::new_err(text))
            });
        match result {
            Ok(value) => value.into_ptr(),
            Err(error) => {
                error.restore(py);
                ptr::null_mut()
            }
        }
    })
}

/// `lock(timeout=None) -> bool`
unsafe extern "C" fn lock(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: called as a method of `QSharedMemory` (see `this`).
    let shm = unsafe { this(py, slf) };
    if nargs == 0 && kwnames.is_null() {
        let quiescent = gil_held(py);
        if shm.handle().try_lock_now(&quiescent).is_some() {
            return py_bool(true);
        }
        // SAFETY: no arguments (so none has to be kept across the hot path's call).
        return unsafe { lock_slow(shm, ptr::null(), 0, ptr::null_mut()) };
    }
    // SAFETY: as this function's own arguments.
    unsafe { lock_slow(shm, args, nargs, kwnames) }
}

/// `lock()` beyond the hot path (kept out of it, so that the hot path's frame stays small).
///
/// # Safety
/// The arguments of a `METH_FASTCALL|METH_KEYWORDS` call, with the GIL held.
#[cold]
#[inline(never)]
unsafe fn lock_slow(
    shm: &PySharedMemory,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    slow(|py| {
        // SAFETY: CPython passes `nargs` positional arguments followed by one per name in
        // `kwnames`, all borrowed for the call.
        let timeout = unsafe { timeout_argument(py, args, nargs, kwnames) }?;
        let timeout = timeout.as_ref().map(|t| t.bind(py));
        shm.lock_slow(py, timeout)
            .map(|locked| bool_object(py, locked))
    })
}

/// The `timeout` argument of `lock()`, positional or by keyword.
///
/// # Safety
/// As for a `METH_FASTCALL|METH_KEYWORDS` function's arguments.
unsafe fn timeout_argument(
    py: Python<'_>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Option<Py<PyAny>>> {
    let keywords = if kwnames.is_null() {
        0
    } else {
        // SAFETY: `kwnames` is a tuple when not NULL.
        unsafe { ffi::PyTuple_Size(kwnames) }
    };
    let positional = usize::try_from(nargs).unwrap_or(0);
    if positional + usize::try_from(keywords).unwrap_or(0) > 1 {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "lock() takes at most 1 argument ({} given)",
            positional + usize::try_from(keywords).unwrap_or(0)
        )));
    }
    // SAFETY: `args` has `nargs + keywords` entries (at most one here).
    let first = (positional + usize::try_from(keywords).unwrap_or(0) == 1)
        .then(|| unsafe { pyo3::Borrowed::from_ptr(py, *args) });
    if keywords == 1 {
        // SAFETY: `kwnames` is a tuple of one str.
        let name = unsafe { pyo3::Borrowed::from_ptr(py, ffi::PyTuple_GetItem(kwnames, 0)) };
        let name: String = name.extract()?;
        if name != "timeout" {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "lock() got an unexpected keyword argument '{name}'"
            )));
        }
    }
    Ok(first.map(|arg| arg.to_owned().unbind()))
}

/// `unlock() -> bool`
unsafe extern "C" fn unlock(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: called as a method of `QSharedMemory` (see `this`).
    let shm = unsafe { this(py, slf) };
    let quiescent = gil_held(py);
    if shm.handle().unlock_now(&quiescent).is_some() {
        return py_bool(true);
    }
    unlock_slow(shm)
}

/// `unlock()` beyond the hot path.
#[cold]
#[inline(never)]
fn unlock_slow(shm: &PySharedMemory) -> *mut ffi::PyObject {
    slow(|py| Ok(bool_object(py, shm.unlock_slow(py))))
}

/// `data()` and `constData()`: a new view of the cached view of the current attachment.
fn view(slf: *mut ffi::PyObject, read_only: bool) -> *mut ffi::PyObject {
    // SAFETY: CPython calls the methods below with the GIL held.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: called as a method of `QSharedMemory` (see `this`).
    let shm = unsafe { this(py, slf) };
    let quiescent = gil_held(py);
    if let Some(attachment) = shm.handle().attachment_now(&quiescent) {
        if let Some(view) = shm
            .views(read_only)
            .view_of(ptr::from_ref(attachment) as usize)
        {
            return view;
        }
    }
    slow(|py| shm.view_slow(py, read_only))
}

/// `data() -> memoryview | None`
unsafe extern "C" fn data(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    view(slf, false)
}

/// `constData() -> memoryview | None`
unsafe extern "C" fn const_data(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    view(slf, true)
}

/// `size() -> int`
unsafe extern "C" fn size(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the GIL held.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: called as a method of `QSharedMemory` (see `this`).
    let shm = unsafe { this(py, slf) };
    let quiescent = gil_held(py);
    let size = match shm.handle().attachment_now(&quiescent) {
        Some(attachment) => attachment.size(),
        None => shm.handle().size(),
    };
    // SAFETY: the GIL is held; a new int.
    unsafe { ffi::PyLong_FromSize_t(size) }
}

/// A method table entry that may be shared between threads (CPython only reads it).
struct MethodDef(ffi::PyMethodDef);

// SAFETY: the entries point to static strings and functions and are never written after they
// are built.
unsafe impl Sync for MethodDef {}

const fn noargs(
    name: &'static CStr,
    doc: &'static CStr,
    f: unsafe extern "C" fn(*mut ffi::PyObject, *mut ffi::PyObject) -> *mut ffi::PyObject,
) -> MethodDef {
    MethodDef(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: f },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: doc.as_ptr(),
    })
}

static METHODS: [MethodDef; 5] = [
    MethodDef(ffi::PyMethodDef {
        ml_name: c"lock".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: lock,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: c"lock($self, /, timeout=None)\n--\n\nTakes the segment's cross-process lock, \
waiting at most `timeout` seconds (None: for as long as it takes), with the GIL released and \
Ctrl-C working. Returns False with error() LockError on failure."
            .as_ptr(),
    }),
    noargs(
        c"unlock",
        c"unlock($self, /)\n--\n\nReleases the lock; False if this handle does not hold it.",
        unlock,
    ),
    noargs(
        c"data",
        c"data($self, /)\n--\n\nThe segment's memory (read-only for ReadOnly attachments), or \
None when not attached.",
        data,
    ),
    noargs(
        c"constData",
        c"constData($self, /)\n--\n\nThe segment's memory, read-only, or None when not attached.",
        const_data,
    ),
    noargs(
        c"size",
        c"size($self, /)\n--\n\nThe segment's size in bytes, 0 when not attached.",
        size,
    ),
];

/// Installs the hot-path methods on the `QSharedMemory` class.
pub(crate) fn install(class: &Bound<'_, PyType>) -> PyResult<()> {
    let py = class.py();
    for MethodDef(def) in &METHODS {
        // SAFETY: `def` is a static, valid method definition that outlives the class; the
        // type pointer is the live class; the GIL is held. CPython does not write through the
        // pointer.
        let descriptor = unsafe {
            let raw = ffi::PyDescr_NewMethod(class.as_type_ptr(), ptr::from_ref(def).cast_mut());
            Bound::from_owned_ptr_or_err(py, raw)?
        };
        // SAFETY: `ml_name` points to a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(def.ml_name.cast::<c_char>()) };
        class.setattr(name.to_str().expect("ASCII method names"), descriptor)?;
    }
    Ok(())
}
