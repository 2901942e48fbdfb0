//! `qsharedmem.QSharedMemory`: PySide6's `QSharedMemory` API over the core
//! [`SharedMemory`](crate::SharedMemory).
//!
//! Conversion only. Two rules keep it safe to use from many threads:
//! * the GIL is never held while waiting: operations that may wait (lock, and create, attach,
//!   detach, which take the System V lock) run detached from the interpreter, re-attaching only
//!   to run signal handlers between wait slices (so Ctrl-C works);
//! * the handle's state mutex is never waited for with the GIL held (a thread that finds it
//!   busy waits detached), so a thread blocked in `lock()` can always get the GIL back.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMemoryView, PyString, PyTuple, PyType};

use super::buffer::SegmentBuffer;
use super::enums::{self, int_value, key_type_from_py, member};
use super::errors::to_py_err;
use super::key::{extract_key, PyNativeIpcKey};
use crate::key::KeyType;
use crate::segment::{AccessMode, Attachment};
use crate::shared_memory::LockStart;
use crate::{NativeIpcKey, SharedMemory};

/// `QSharedMemory`: a shared memory segment by key, with Qt 6's API and semantics.
#[pyclass(
    name = "QSharedMemory",
    module = "qsharedmem",
    subclass,
    frozen,
    weakref
)]
pub(crate) struct PySharedMemory {
    inner: Mutex<State>,
}

/// What the handle's mutex protects.
#[derive(Default)]
struct State {
    shm: SharedMemory,
    /// The views `data()` and `constData()` hand out views of.
    views: CachedViews,
}

/// A memoryview of the current attachment for `data()` and one for `constData()`, made on
/// first use. Every call returns a new view of one of them: CPython makes that with one
/// allocation (the new view shares the base's managed buffer, which holds the exporter and
/// with it the attachment), instead of an exporter, a managed buffer and a view.
///
/// A cached view holds its attachment, so it is dropped before anything that may detach (and
/// checked after): the core's detach must remain the last reference, as without the cache.
/// Python objects are made and dropped only outside the mutex, because that may run Python
/// code (a finalizer) that uses this handle.
#[derive(Default)]
struct CachedViews {
    data: Option<CachedView>,
    const_data: Option<CachedView>,
}

struct CachedView {
    /// `Arc::as_ptr` of the attachment the view shows; the view keeps that attachment alive,
    /// so the address cannot be reused while the view is cached.
    attachment: usize,
    view: Py<PyMemoryView>,
}

impl CachedViews {
    fn slot(&mut self, read_only: bool) -> &mut Option<CachedView> {
        if read_only {
            &mut self.const_data
        } else {
            &mut self.data
        }
    }

    /// Takes the views out if they show another attachment than `current`.
    fn take_stale(&mut self, current: Option<&Arc<Attachment>>) -> CachedViews {
        let current = current.map_or(0, |att| Arc::as_ptr(att) as usize);
        let mut stale = CachedViews::default();
        for read_only in [false, true] {
            let slot = self.slot(read_only);
            if slot.as_ref().is_some_and(|c| c.attachment != current) {
                *stale.slot(read_only) = slot.take();
            }
        }
        stale
    }
}

/// Converts an `AccessMode` member or 0/1 (a member of another enum is a `TypeError`).
pub(crate) fn access_mode(obj: &Bound<'_, PyAny>) -> PyResult<AccessMode> {
    match enums::enum_value(
        obj,
        &enums::access_mode_class(obj.py())?,
        "QSharedMemory.AccessMode",
    )? {
        0 => Ok(AccessMode::ReadOnly),
        1 => Ok(AccessMode::ReadWrite),
        other => Err(PyValueError::new_err(format!(
            "{other} is not a valid QSharedMemory.AccessMode"
        ))),
    }
}

/// A timeout in seconds: `None` waits forever, `inf` too; negative or NaN is a `ValueError`.
pub(crate) fn timeout(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if obj.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(
            "timeout must be a number of seconds or None, not bool",
        ));
    }
    let seconds: f64 = obj.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "timeout must be a number of seconds or None, not {}",
            obj.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?;
    if seconds.is_nan() || seconds < 0.0 {
        return Err(PyValueError::new_err(
            "timeout must be a non-negative number of seconds",
        ));
    }
    if seconds.is_infinite() {
        return Ok(None);
    }
    Duration::try_from_secs_f64(seconds)
        .map(Some)
        .map_err(|_| PyOverflowError::new_err("timeout too large"))
}

/// A size for create(): negative values become 0 (Qt's `InvalidSize`, "less then 0"); values
/// past the address space are an `OverflowError`.
fn size_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    let raw = int_value(obj, "an int size")?;
    if raw < 0 {
        return Ok(0);
    }
    usize::try_from(raw)
        .ok()
        .filter(|&s| isize::try_from(s).is_ok())
        .ok_or_else(|| PyOverflowError::new_err("size too large"))
}

/// The key argument of the constructor and `setNativeKey`: a `QNativeIpcKey`, or a string.
pub(crate) enum KeyArg {
    Native(NativeIpcKey),
    Text(String),
}

/// Converts a key argument; any other type is a `TypeError`.
pub(crate) fn key_arg(obj: &Bound<'_, PyAny>) -> PyResult<KeyArg> {
    if let Some(key) = extract_key(obj)? {
        return Ok(KeyArg::Native(key));
    }
    if let Ok(text) = obj.cast::<PyString>() {
        return Ok(KeyArg::Text(text.to_str()?.to_owned()));
    }
    Err(PyTypeError::new_err(format!(
        "key must be a QNativeIpcKey or a str, not {}",
        obj.get_type().name()?
    )))
}

/// Runs `f`, which may wait, detached from the interpreter, handing it an interrupt check that
/// runs Python's signal handlers (the core calls it between wait slices); if a handler raised
/// (KeyboardInterrupt), the check returns true and that exception is the result.
pub(crate) fn detached_interruptible<R: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> bool) -> R + Send,
) -> PyResult<R> {
    let (result, pending) = py.detach(|| {
        let mut pending: Option<PyErr> = None;
        let mut interrupt = || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    pending = Some(e);
                    true
                }
            })
        };
        let result = f(&mut interrupt);
        (result, pending)
    });
    match pending {
        Some(e) => Err(e),
        None => Ok(result),
    }
}

impl PySharedMemory {
    /// Runs `f` on the core handle. Never waits for the handle's mutex with the GIL held.
    fn with_state<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut SharedMemory) -> R + Send,
    ) -> R {
        self.with_full_state(py, |state| f(&mut state.shm))
    }

    fn with_full_state<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut State) -> R + Send,
    ) -> R {
        match self.inner.try_lock() {
            Ok(mut state) => f(&mut state),
            Err(TryLockError::Poisoned(poisoned)) => f(&mut poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => {
                py.detach(|| f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner)))
            }
        }
    }

    /// The state if the mutex is free right now (the GIL is held: never wait for it here).
    fn try_state(&self) -> Option<MutexGuard<'_, State>> {
        match self.inner.try_lock() {
            Ok(state) => Some(state),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// `data()` (`read_only` false) and `constData()`: a new view of the cached view of the
    /// current attachment, making that on first use (see [`CachedViews`]).
    fn view<'py>(&self, py: Python<'py>, read_only: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(mut state) = self.try_state() else {
            // Busy (another thread waits in lock() or attach()): an uncached view.
            return match self.with_state(py, |s| s.attachment().cloned()) {
                Some(att) => Ok(Some(
                    SegmentBuffer::memoryview(py, att, read_only)?.into_any(),
                )),
                None => Ok(None),
            };
        };
        let Some(att) = state.shm.attachment().cloned() else {
            return Ok(None);
        };
        let key = Arc::as_ptr(&att) as usize;
        if let Some(cached) = state.views.slot(read_only).as_ref() {
            if cached.attachment == key {
                let base = cached.view.clone_ref(py);
                drop(state);
                return Ok(Some(PyMemoryView::from(base.bind(py).as_any())?.into_any()));
            }
        }
        drop(state);
        let base = SegmentBuffer::memoryview(py, att, read_only)?;
        let view = PyMemoryView::from(base.as_any())?.into_any();
        let replaced = self.try_state().and_then(|mut state| {
            let current = state.shm.attachment().map(|a| Arc::as_ptr(a) as usize);
            (current == Some(key)).then(|| {
                state.views.slot(read_only).replace(CachedView {
                    attachment: key,
                    view: base.unbind(),
                })
            })
        });
        drop(replaced); // outside the mutex
        Ok(Some(view))
    }

    /// Drops the cached views, before an operation that may detach.
    fn forget_views(&self, py: Python<'_>) {
        let views = self.with_full_state(py, |state| std::mem::take(&mut state.views));
        drop(views);
    }

    /// Runs an operation that may wait, detached from the interpreter, with an interrupt check
    /// that runs Python's signal handlers; a handler's exception (KeyboardInterrupt) wins.
    /// The operation may detach: the cached views are dropped first.
    fn waiting<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut SharedMemory, &mut dyn FnMut() -> bool) -> R + Send,
    ) -> PyResult<R> {
        self.forget_views(py);
        self.waiting_keeping_views(py, f)
    }

    /// [`Self::waiting`] for an operation that never detaches (lock()).
    fn waiting_keeping_views<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut SharedMemory, &mut dyn FnMut() -> bool) -> R + Send,
    ) -> PyResult<R> {
        let (result, stale) = detached_interruptible(py, |interrupt| {
            let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let result = f(&mut state.shm, interrupt);
            // Views another thread cached meanwhile, of what this operation detached.
            let state = &mut *state;
            let stale = state.views.take_stale(state.shm.attachment());
            (result, stale)
        })?;
        drop(stale);
        Ok(result)
    }

    /// Replaces the handle's state (`__init__`, also when called again on a live handle: the
    /// old state detaches like a destroyed handle, with the GIL released).
    fn reset(&self, py: Python<'_>, shm: SharedMemory) {
        self.forget_views(py);
        let old = self.with_state(py, |s| std::mem::replace(s, shm));
        py.detach(move || drop(old));
    }

    fn lock_impl(&self, py: Python<'_>, wait: Option<Duration>) -> PyResult<bool> {
        // Fast path: one attempt with the GIL held (no syscall for an uncontended mutex).
        let first = self.with_state(py, |s| s.try_lock_raw().map(|got| got.is_some()));
        match first {
            Ok(true) => return Ok(true),
            Err(_) => return Ok(false),
            Ok(false) => {}
        }
        if wait == Some(Duration::ZERO) {
            return Ok(self.with_state(py, |s| {
                s.lock_with(Some(Duration::ZERO), &mut || false).is_ok()
            }));
        }
        // The wait runs without the handle's mutex: held through the wait, a child forked by
        // another thread meanwhile would find it locked forever, and hang on any use of the
        // handle. The wait keeps the segment alive by itself.
        //
        // And the lock, once taken, never waits for the handle's mutex: another thread may
        // hold that mutex while it waits for this very lock (a System V attach() or detach()
        // locks internally), and each would wait for the other forever. If the handle is busy,
        // the lock is given back and the whole lock() starts again.
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            let pending = match self.with_state(py, SharedMemory::lock_start) {
                Ok(LockStart::Done(_)) => return Ok(true),
                Ok(LockStart::Wait(pending)) => pending,
                Err(_) => return Ok(false),
            };
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let outcome = detached_interruptible(py, |interrupt| pending.wait(left, interrupt))?;
            let Ok(got) = outcome else {
                // Nothing taken: recording the failure may wait for the handle.
                return Ok(self.with_state(py, |s| s.lock_finish(&pending, outcome).is_ok()));
            };
            if let Some(mut state) = self.try_state_patiently() {
                return Ok(state.shm.lock_finish(&pending, Ok(got)).is_ok());
            }
            pending.give_back(got);
            // Let the busy thread have the lock, and the handle, before trying again.
            py.detach(|| drop(self.inner.lock()));
        }
    }

    /// The handle's state if it is free now or within a few microseconds (never waits longer
    /// with the GIL held).
    fn try_state_patiently(&self) -> Option<MutexGuard<'_, State>> {
        for _ in 0..100 {
            if let Some(state) = self.try_state() {
                return Some(state);
            }
            std::hint::spin_loop();
        }
        None
    }
}

#[pymethods]
impl PySharedMemory {
    /// Python subclasses (`class Mine(QSharedMemory)`) have constructors of their own and call
    /// `super().__init__(key)`, as with PySide6: so `__new__` accepts any arguments and makes an
    /// empty handle, and `__init__` sets the key.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self {
            inner: Mutex::new(State::default()),
        }
    }

    /// `QSharedMemory()`, `QSharedMemory(key: QNativeIpcKey)`, `QSharedMemory(key: str)`.
    #[pyo3(signature = (key = None, parent = None))]
    fn __init__(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        parent: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        // `parent` exists for drop-in compatibility with PySide6 (a QObject parent); there is no
        // object tree here, so it is accepted and not used.
        let _ = parent;
        let shm = match key.filter(|k| !k.is_none()).map(key_arg).transpose()? {
            None => SharedMemory::new(),
            Some(KeyArg::Native(key)) => SharedMemory::with_key(key),
            Some(KeyArg::Text(text)) => SharedMemory::with_legacy_key(&text),
        };
        self.reset(py, shm);
        Ok(())
    }

    #[classattr]
    #[allow(non_snake_case)]
    fn AccessMode(py: Python<'_>) -> PyResult<Py<PyType>> {
        Ok(enums::access_mode_class(py)?.unbind())
    }

    #[classattr]
    #[allow(non_snake_case)]
    fn SharedMemoryError(py: Python<'_>) -> PyResult<Py<PyType>> {
        Ok(enums::shared_memory_error_class(py)?.unbind())
    }

    /// `create(size, mode=ReadWrite) -> bool`
    #[pyo3(signature = (size, mode = None))]
    fn create(
        &self,
        py: Python<'_>,
        size: &Bound<'_, PyAny>,
        mode: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let size = size_arg(size)?;
        let mode = mode.map(access_mode).transpose()?.unwrap_or_default();
        self.waiting(py, |s, interrupt| {
            s.create_with(size, mode, interrupt).is_ok()
        })
    }

    /// `attach(mode=ReadWrite) -> bool`
    #[pyo3(signature = (mode = None))]
    fn attach(&self, py: Python<'_>, mode: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let mode = mode.map(access_mode).transpose()?.unwrap_or_default();
        self.waiting(py, |s, interrupt| s.attach_with(mode, interrupt).is_ok())
    }

    /// `detach() -> bool`
    fn detach(&self, py: Python<'_>) -> PyResult<bool> {
        self.waiting(py, |s, interrupt| s.detach_with(interrupt).is_ok())
    }

    /// `remove() -> bool` (not in Qt): removes the segment's key now, as
    /// `multiprocessing.shared_memory.SharedMemory.unlink()` does; attachments keep working and
    /// the memory is freed by the last detach. False + `error()` if there was nothing to
    /// remove (`NotFound`) or it failed.
    fn remove(&self, py: Python<'_>) -> PyResult<bool> {
        self.waiting(py, |s, interrupt| s.remove_with(interrupt).is_ok())
    }

    /// The exception for the last recorded error (`None` for `NoError`): the
    /// `qsharedmem.SharedMemoryError` subclass with `errno`, Qt's text and `qt_error`.
    fn _exception<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let error = self.with_state(py, |s| s.error().cloned())?;
        Some(
            to_py_err(py, &error)
                .into_value(py)
                .into_bound(py)
                .into_any(),
        )
    }

    /// `isAttached() -> bool`
    #[pyo3(name = "isAttached")]
    fn is_attached(&self, py: Python<'_>) -> bool {
        self.with_state(py, |s| s.is_attached())
    }

    /// `data() -> memoryview | None`: the segment's memory (read-only for ReadOnly attachments).
    fn data<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.view(py, false)
    }

    /// `constData() -> memoryview | None`: the segment's memory, read-only.
    #[pyo3(name = "constData")]
    fn const_data<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.view(py, true)
    }

    /// `size() -> int`
    fn size(&self, py: Python<'_>) -> usize {
        self.with_state(py, |s| s.size())
    }

    /// `lock(timeout=None) -> bool`: waits at most `timeout` seconds (None: for as long as it
    /// takes), with the GIL released and Ctrl-C working.
    #[pyo3(signature = (timeout = None))]
    fn lock(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let wait = self::timeout(timeout)?;
        self.lock_impl(py, wait)
    }

    /// `unlock() -> bool`
    fn unlock(&self, py: Python<'_>) -> bool {
        self.with_state(py, |s| s.unlock().is_ok())
    }

    /// `lockOwnerDied() -> bool`: whether the last successful lock() found that the previous
    /// holder died while holding the lock.
    #[pyo3(name = "lockOwnerDied")]
    fn lock_owner_died(&self, py: Python<'_>) -> bool {
        self.with_state(py, |s| s.lock_owner_died())
    }

    /// `error() -> QSharedMemory.SharedMemoryError`
    fn error<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let code = self.with_state(py, |s| s.error().map_or(0, |e| e.kind().qt_value()));
        member(&enums::shared_memory_error_class(py)?, u32::from(code))
    }

    /// `errorString() -> str`
    #[pyo3(name = "errorString")]
    fn error_string(&self, py: Python<'_>) -> String {
        self.with_state(py, |s| s.error_string().to_owned())
    }

    /// `key() -> str`: the legacy key ("" if the native key was not derived from one).
    fn key(&self, py: Python<'_>) -> String {
        self.with_state(py, |s| s.key().unwrap_or_default().to_owned())
    }

    /// `setKey(key: str)`: `setNativeKey(legacyNativeKey(key))`.
    #[pyo3(name = "setKey")]
    fn set_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let text = key
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("setKey() expects a str"))?
            .to_str()?
            .to_owned();
        let new_key = SharedMemory::legacy_native_key(&text, KeyType::legacy_default_for_os());
        self.waiting(py, move |s, _| {
            let _ = s.set_native_key(new_key);
        })
    }

    /// `nativeKey() -> str`
    #[pyo3(name = "nativeKey")]
    fn native_key(&self, py: Python<'_>) -> String {
        self.with_state(py, |s| s.native_key().to_owned())
    }

    /// `nativeIpcKey() -> QNativeIpcKey`
    #[pyo3(name = "nativeIpcKey")]
    fn native_ipc_key(&self, py: Python<'_>) -> PyNativeIpcKey {
        PyNativeIpcKey::from_core(self.with_state(py, |s| s.native_ipc_key().clone()))
    }

    /// `setNativeKey(key: QNativeIpcKey)` or `setNativeKey(key: str, type=legacyDefaultTypeForOs())`
    #[pyo3(name = "setNativeKey", signature = (key, r#type = None))]
    fn set_native_key(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let new_key = match key_arg(key)? {
            KeyArg::Native(native) => {
                if r#type.is_some() {
                    return Err(PyTypeError::new_err(
                        "setNativeKey(QNativeIpcKey) takes no type argument",
                    ));
                }
                native
            }
            KeyArg::Text(text) => {
                let key_type = r#type
                    .map(key_type_from_py)
                    .transpose()?
                    .unwrap_or(KeyType::legacy_default_for_os());
                NativeIpcKey::new(text, key_type)
            }
        };
        self.waiting(py, move |s, _| {
            let _ = s.set_native_key(new_key);
        })
    }

    /// `QSharedMemory.platformSafeKey(key, type=QNativeIpcKey.DefaultTypeForOs)`
    #[staticmethod]
    #[pyo3(name = "platformSafeKey", signature = (key, r#type = None))]
    fn platform_safe_key(key: &str, r#type: Option<&Bound<'_, PyAny>>) -> PyResult<PyNativeIpcKey> {
        let key_type = r#type
            .map(key_type_from_py)
            .transpose()?
            .unwrap_or(KeyType::DEFAULT_FOR_OS);
        Ok(PyNativeIpcKey::from_core(SharedMemory::platform_safe_key(
            key, key_type,
        )))
    }

    /// `QSharedMemory.legacyNativeKey(key, type=QNativeIpcKey.legacyDefaultTypeForOs())`
    #[staticmethod]
    #[pyo3(name = "legacyNativeKey", signature = (key, r#type = None))]
    fn legacy_native_key(key: &str, r#type: Option<&Bound<'_, PyAny>>) -> PyResult<PyNativeIpcKey> {
        let key_type = r#type
            .map(key_type_from_py)
            .transpose()?
            .unwrap_or(KeyType::legacy_default_for_os());
        Ok(PyNativeIpcKey::from_core(SharedMemory::legacy_native_key(
            key, key_type,
        )))
    }

    /// `QSharedMemory.isKeyTypeSupported(type) -> bool`
    #[staticmethod]
    #[pyo3(name = "isKeyTypeSupported")]
    fn is_key_type_supported(r#type: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(SharedMemory::is_key_type_supported(key_type_from_py(
            r#type,
        )?))
    }

    /// `with shm:` returns the handle; leaving the block unlocks (if locked) and detaches.
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.waiting(py, |s, interrupt| {
            if s.is_locked() {
                let _ = s.unlock();
            }
            if s.is_attached() {
                let _ = s.detach_with(interrupt);
            }
        })?;
        Ok(false)
    }

    /// `with shm.locked(timeout=None):` holds the lock for the block; raises
    /// `qsharedmem.LockTimeoutError` (a `TimeoutError`) or `qsharedmem.LockError` if it cannot
    /// be taken.
    #[pyo3(signature = (timeout = None))]
    fn locked(slf: Bound<'_, Self>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<LockedContext> {
        let wait = self::timeout(timeout)?;
        Ok(LockedContext {
            shm: slf.unbind(),
            wait,
        })
    }

    /// Pickling rebuilds the handle from its key in the receiving process and attaches it
    /// again (with the same access mode) if it was attached. The memory itself is never copied.
    /// A subclass keeps its type and its instance attributes (`__dict__`), and its own
    /// `__init__` is not called, as for any pickled object.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let (key, mode) = slf.get().with_state(py, |s| {
            let mode = s.attachment().map(|a| u8::from(a.is_writable()));
            (s.native_ipc_key().clone(), mode)
        });
        let rebuild = py
            .import("qsharedmem._qsharedmem")?
            .getattr("_rebuild_qsharedmemory")?;
        let args = (slf.get_type(), PyNativeIpcKey::from_core(key), mode);
        let state = match slf.getattr(intern!(py, "__dict__")) {
            Ok(dict) if dict.is_truthy()? => dict,
            _ => py.None().into_bound(py),
        };
        PyTuple::new(py, [rebuild, args.into_pyobject(py)?.into_any(), state])
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        // A subclass shows its own name.
        let class = slf.get_type().qualname()?;
        let (key, attached, size) = slf.get().with_state(slf.py(), |s| {
            (s.native_ipc_key().to_qt_string(), s.is_attached(), s.size())
        });
        Ok(if attached {
            format!("<{class} {key:?} attached, {size} bytes>")
        } else {
            format!("<{class} {key:?} not attached>")
        })
    }

    /// Makes the handle independent of the parent after `fork()` (called from an
    /// `os.register_at_fork` hook; every operation also does it by itself).
    fn _after_fork(&self, py: Python<'_>) {
        self.with_state(py, SharedMemory::after_fork);
    }
}

impl Drop for PySharedMemory {
    fn drop(&mut self) {
        // Like Qt's destructor this detaches and releases the lock; that may wait (briefly) for
        // the System V lock, so the GIL is released meanwhile.
        let State { shm, views } =
            std::mem::take(self.inner.get_mut().unwrap_or_else(PoisonError::into_inner));
        // The cached views go first, so that the core's detach is the last reference.
        drop(views);
        Python::attach(|py| py.detach(move || drop(shm)));
    }
}

/// The context manager returned by `QSharedMemory.locked()`.
#[pyclass(module = "qsharedmem", name = "_LockedContext")]
pub(crate) struct LockedContext {
    shm: Py<PySharedMemory>,
    wait: Option<Duration>,
}

#[pymethods]
impl LockedContext {
    fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySharedMemory>> {
        let shm = self.shm.bind(py);
        if !shm.get().lock_impl(py, self.wait)? {
            let error = shm.get().with_state(py, |s| s.error().cloned());
            let error = error.unwrap_or_else(|| {
                crate::Error::new(
                    crate::ErrorKind::LockError,
                    "QSharedMemory::lock: unable to lock",
                )
            });
            return Err(to_py_err(py, &error));
        }
        Ok(shm.clone())
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.shm.bind(py).get().with_state(py, |s| {
            let _ = s.unlock();
        });
        false
    }
}

/// Unpickling helper: a `cls` handle with `key` (made without calling a subclass's
/// `__init__`), then `attach(mode)` if the pickled handle was attached.
#[pyfunction]
#[pyo3(signature = (cls, key, mode))]
pub(crate) fn _rebuild_qsharedmemory<'py>(
    cls: &Bound<'py, PyType>,
    key: &Bound<'py, PyAny>,
    mode: Option<u8>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let shm = cls.call_method1(intern!(py, "__new__"), (cls,))?;
    let handle = shm.cast::<PySharedMemory>()?.get();
    handle.__init__(py, Some(key), None)?;
    if let Some(mode) = mode {
        let mode = if mode == 0 {
            AccessMode::ReadOnly
        } else {
            AccessMode::ReadWrite
        };
        let attached = handle.waiting(py, |s, interrupt| s.attach_with(mode, interrupt))?;
        if let Err(error) = attached {
            return Err(to_py_err(py, &error));
        }
    }
    Ok(shm)
}

/// `os.register_at_fork(before=...)` hook: every qsharedmem POSIX attachment prepares a lock
/// for the child, so that the child counts as attached from the moment of the fork.
#[pyfunction]
fn _before_fork() {
    crate::segment::prepare_all_for_fork();
}

/// `os.register_at_fork(after_in_parent=...)` hook: closes the parent's copies of what
/// `_before_fork` prepared.
#[pyfunction]
fn _after_fork_in_parent() {
    crate::segment::after_fork_in_parent_all();
}

/// `os.register_at_fork(after_in_child=...)` hook: every inherited qsharedmem POSIX attachment
/// gets a lock of the child's own, so neither process's detach destroys a segment the other
/// still uses.
#[pyfunction]
fn _after_fork_in_child() {
    crate::segment::rehome_all_after_fork();
}

/// Exit hook (atexit, and multiprocessing's finalizers in forked children, which leave with
/// `os._exit`): the last holder of a qsharedmem POSIX segment removes its name.
#[pyfunction]
fn _release_at_exit() {
    crate::segment::release_all_at_exit();
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_parent, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(_release_at_exit, m)?)?;
    m.add_class::<PySharedMemory>()?;
    enums::expose_members(
        &m.py().get_type::<PySharedMemory>(),
        [
            enums::access_mode_class(m.py())?,
            enums::shared_memory_error_class(m.py())?,
        ],
    )?;
    m.add_class::<LockedContext>()?;
    m.add_class::<SegmentBuffer>()?;
    m.add_function(wrap_pyfunction!(_rebuild_qsharedmemory, m)?)?;
    Ok(())
}
