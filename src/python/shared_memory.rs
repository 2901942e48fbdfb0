//! `qsharedmem.QSharedMemory`: PySide6's `QSharedMemory` API over the core
//! [`Handle`](crate::Handle).
//!
//! Conversion, GIL release and buffer export only. The handle takes `&self` and never holds its
//! state mutex across a wait or while the interrupt check runs, so any thread may call into it
//! with the GIL held; what may wait runs with the GIL released, re-attaching only to run signal
//! handlers between wait slices (so Ctrl-C works). The hot paths (`lock`, `unlock`, `data`,
//! `constData`, `size`) are in [`super::fast`].

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMemoryView, PyString, PyTuple, PyType};

use super::buffer::SegmentBuffer;
use super::convert::{
    access_mode, detached_interruptible, key_arg, key_type_or, native_key, permissions, size_arg,
    timeout, KeyArg,
};
use super::enums::{self, key_type_from_py, member};
use super::errors::to_py_err;
use super::fast::{self, gil_held, CachedView};
use super::key::PyNativeIpcKey;
use super::notify::{self, notify_err, PyAtomicWord, PyEvent, Word};
use crate::handle::Handle;
use crate::key::KeyType;
use crate::notify::Notifier;
use crate::segment::AccessMode;
use crate::wait::{uninterrupted, Interrupt};
use crate::SharedMemory;

/// `QSharedMemory`: a shared memory segment by key, with Qt 6's API and semantics.
#[pyclass(
    name = "QSharedMemory",
    module = "qsharedmem",
    subclass,
    frozen,
    weakref
)]
pub(crate) struct PySharedMemory {
    handle: Handle,
    /// The base views `data()` and `constData()` hand out new views of (see
    /// [`Self::view_slow`]).
    data_view: CachedView,
    const_view: CachedView,
}

impl PySharedMemory {
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The segment's notifier (an exception if not attached).
    pub(crate) fn notifier(&self, py: Python<'_>) -> PyResult<Notifier> {
        self.handle.notifier().map_err(|e| notify_err(py, e))
    }

    pub(crate) fn views(&self, read_only: bool) -> &CachedView {
        if read_only {
            &self.const_view
        } else {
            &self.data_view
        }
    }

    /// `alock` or `alocked` of the asyncio helpers, with the timeout checked here so that a bad
    /// one raises at the call, not in the task.
    fn async_lock<'py>(
        slf: &Bound<'py, Self>,
        helper: &str,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = self::timeout(timeout)?;
        notify::aio(slf.py(), helper, (slf, timeout))
    }

    /// Drops the cached views (they hold the attachment), before an operation that may detach.
    fn forget_views(&self, py: Python<'_>) {
        let old = (self.data_view.take(), self.const_view.take());
        drop(old);
        let _ = py;
    }

    /// Frees what the handle retired, with the GIL released (a last detach may wait).
    fn reclaim(&self, py: Python<'_>) {
        let retired = self.handle.retired(&gil_held(py));
        py.detach(move || drop(retired));
    }

    /// Runs an operation that may wait or change the attachment: the cached views go first,
    /// the operation runs with the GIL released (with an interrupt check that runs Python's
    /// signal handlers; a handler's exception wins), what it retired is freed afterwards.
    fn waiting<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Handle, Interrupt<'_>) -> R + Send,
    ) -> PyResult<R> {
        self.forget_views(py);
        let result = detached_interruptible(py, |interrupt| f(&self.handle, interrupt));
        self.reclaim(py);
        result
    }

    /// `lock(timeout)` beyond the hot path.
    pub(crate) fn lock_slow(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let wait = self::timeout(timeout)?;
        if let Some(_owner_died) = self.handle.try_lock_now(&gil_held(py)) {
            return Ok(true);
        }
        if wait == Some(Duration::ZERO) {
            return Ok(self.handle.lock_with(wait, &mut uninterrupted).is_ok());
        }
        detached_interruptible(py, |interrupt| {
            self.handle.lock_with(wait, interrupt).is_ok()
        })
    }

    /// `unlock()` beyond the hot path.
    pub(crate) fn unlock_slow(&self, py: Python<'_>) -> bool {
        // Detached: if another thread holds the lock, unlock() first lets it finish ending.
        py.detach(|| self.handle.unlock().is_ok())
    }

    /// `data()` (`read_only` false) and `constData()` beyond the hot path: makes the base view of
    /// the current attachment (one exporter, one managed buffer), caches it, and returns a new
    /// view of it. Every later call returns a new view of the cached one: CPython makes that
    /// with one allocation.
    pub(crate) fn view_slow(&self, py: Python<'_>, read_only: bool) -> PyResult<Py<PyAny>> {
        let Some(attachment) = self.handle.attachment() else {
            return Ok(py.None());
        };
        let key = Arc::as_ptr(&attachment) as usize;
        let base = SegmentBuffer::memoryview(py, attachment, read_only)?;
        let view = PyMemoryView::from(base.as_any())?.into_any().unbind();
        // Cached only if it still shows the current attachment (another thread may have
        // detached meanwhile).
        let current = self
            .handle
            .attachment_now(&gil_held(py))
            .map(|a| std::ptr::from_ref(a) as usize);
        if current == Some(key) {
            let replaced = self.views(read_only).replace(key, base.into_any().unbind());
            drop(replaced);
        }
        Ok(view)
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
            handle: Handle::new(),
            data_view: CachedView::default(),
            const_view: CachedView::default(),
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
        let key = match key.filter(|k| !k.is_none()).map(key_arg).transpose()? {
            None => None,
            Some(KeyArg::Native(key)) => Some(key),
            Some(KeyArg::Text(text)) => Some(SharedMemory::legacy_native_key(
                &text,
                KeyType::legacy_default_for_os(),
            )),
        };
        // A live handle re-initialised detaches like a destroyed one, with the GIL released.
        self.waiting(py, move |handle, _| handle.reset(key))
    }

    /// `create(size, mode=ReadWrite, *, permissions=None, group=None) -> bool`
    #[pyo3(signature = (size, mode = None, *, permissions = None, group = None))]
    fn create(
        &self,
        py: Python<'_>,
        size: &Bound<'_, PyAny>,
        mode: Option<&Bound<'_, PyAny>>,
        permissions: Option<&Bound<'_, PyAny>>,
        group: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let size = size_arg(size)?;
        let mode = mode.map(access_mode).transpose()?.unwrap_or_default();
        let permissions = self::permissions(py, permissions, group)?;
        self.waiting(py, |handle, interrupt| {
            handle
                .create_with(size, mode, permissions, interrupt)
                .is_ok()
        })
    }

    /// `attach(mode=ReadWrite, timeout=None) -> bool`; with a timeout (seconds, `inf`: as long
    /// as it takes) it waits for the segment to be created.
    #[pyo3(signature = (mode = None, timeout = None))]
    fn attach(
        &self,
        py: Python<'_>,
        mode: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let mode = mode.map(access_mode).transpose()?.unwrap_or_default();
        let wait = match timeout.filter(|t| !t.is_none()) {
            None => None,
            Some(t) => Some(self::timeout(Some(t))?.unwrap_or(Duration::MAX)),
        };
        self.waiting(py, |handle, interrupt| match wait {
            None => handle.attach_with(mode, None, interrupt).is_ok(),
            Some(wait) => handle.attach_when_created(mode, wait, interrupt).is_ok(),
        })
    }

    /// `detach() -> bool`
    fn detach(&self, py: Python<'_>) -> PyResult<bool> {
        self.waiting(py, |handle, interrupt| {
            handle.detach_with(interrupt).is_ok()
        })
    }

    /// `remove() -> bool` (not in Qt): removes the segment's key now, as
    /// `multiprocessing.shared_memory.SharedMemory.unlink()` does; attachments keep working and
    /// the memory is freed by the last detach. False + `error()` if there was nothing to
    /// remove (`NotFound`) or it failed.
    fn remove(&self, py: Python<'_>) -> PyResult<bool> {
        self.waiting(py, |handle, interrupt| {
            handle.remove_with(interrupt).is_ok()
        })
    }

    /// The exception for the last recorded error (`None` for `NoError`): the
    /// `qsharedmem.SharedMemoryError` subclass with `errno`, Qt's text and `qt_error`.
    fn _exception<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let error = self.handle.error()?;
        Some(
            to_py_err(py, &error)
                .into_value(py)
                .into_bound(py)
                .into_any(),
        )
    }

    /// `isAttached() -> bool`
    #[pyo3(name = "isAttached")]
    fn is_attached(&self) -> bool {
        self.handle.is_attached()
    }

    /// `lockOwnerDied() -> bool`: whether the last successful lock() found that the previous
    /// holder died while holding the lock.
    #[pyo3(name = "lockOwnerDied")]
    fn lock_owner_died(&self) -> bool {
        self.handle.lock_owner_died()
    }

    /// `error() -> QSharedMemory.SharedMemoryError`
    fn error<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let code = self.handle.error().map_or(0, |e| e.kind().qt_value());
        member(&enums::shared_memory_error_class(py)?, u32::from(code))
    }

    /// `errorString() -> str`
    #[pyo3(name = "errorString")]
    fn error_string(&self) -> String {
        self.handle.error_string()
    }

    /// `key() -> str`: the legacy key ("" if the native key was not derived from one).
    fn key(&self) -> String {
        self.handle.key().unwrap_or_default()
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
        self.waiting(py, move |handle, _| {
            let _ = handle.set_native_key(new_key);
        })
    }

    /// `nativeKey() -> str`
    #[pyo3(name = "nativeKey")]
    fn native_key(&self) -> String {
        self.handle.native_key()
    }

    /// `nativeIpcKey() -> QNativeIpcKey`
    #[pyo3(name = "nativeIpcKey")]
    fn native_ipc_key(&self) -> PyNativeIpcKey {
        self.handle.native_ipc_key().into()
    }

    /// `setNativeKey(key: QNativeIpcKey)` or `setNativeKey(key: str, type=legacyDefaultTypeForOs())`
    #[pyo3(name = "setNativeKey", signature = (key, r#type = None))]
    fn set_native_key(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        r#type: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let new_key = native_key(key_arg(key)?, r#type)?;
        self.waiting(py, move |handle, _| {
            let _ = handle.set_native_key(new_key);
        })
    }

    /// `QSharedMemory.platformSafeKey(key, type=QNativeIpcKey.DefaultTypeForOs)`
    #[staticmethod]
    #[pyo3(name = "platformSafeKey", signature = (key, r#type = None))]
    fn platform_safe_key(key: &str, r#type: Option<&Bound<'_, PyAny>>) -> PyResult<PyNativeIpcKey> {
        let key_type = key_type_or(r#type, KeyType::DEFAULT_FOR_OS)?;
        Ok(SharedMemory::platform_safe_key(key, key_type).into())
    }

    /// `QSharedMemory.legacyNativeKey(key, type=QNativeIpcKey.legacyDefaultTypeForOs())`
    #[staticmethod]
    #[pyo3(name = "legacyNativeKey", signature = (key, r#type = None))]
    fn legacy_native_key(key: &str, r#type: Option<&Bound<'_, PyAny>>) -> PyResult<PyNativeIpcKey> {
        let key_type = key_type_or(r#type, KeyType::legacy_default_for_os())?;
        Ok(SharedMemory::legacy_native_key(key, key_type).into())
    }

    /// `QSharedMemory.isKeyTypeSupported(type) -> bool`
    #[staticmethod]
    #[pyo3(name = "isKeyTypeSupported")]
    fn is_key_type_supported(r#type: &Bound<'_, PyAny>) -> PyResult<bool> {
        key_type_from_py(r#type).map(SharedMemory::is_key_type_supported)
    }

    /// `with shm:` returns the handle; leaving the block unlocks (if locked) and detaches.
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.waiting(py, |handle, interrupt| {
            if handle.is_locked() {
                let _ = handle.unlock();
            }
            if handle.is_attached() {
                let _ = handle.detach_with(interrupt);
            }
        })?;
        Ok(false)
    }

    /// `with shm.locked(timeout=None):` holds the lock for the block; raises
    /// `qsharedmem.LockTimeoutError` (a `TimeoutError`) or `qsharedmem.LockError` if it cannot
    /// be taken.
    #[pyo3(signature = (timeout = None))]
    fn locked(slf: Bound<'_, Self>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<LockedContext> {
        // Checked now, so that a bad timeout fails at the `with` line.
        let _ = self::timeout(timeout)?;
        Ok(LockedContext {
            shm: slf.unbind(),
            timeout: timeout.map(|t| t.clone().unbind()),
        })
    }

    /// Pickling rebuilds the handle from its key in the receiving process and attaches it
    /// again (with the same access mode) if it was attached. The memory itself is never copied.
    /// A subclass keeps its type and its instance attributes (`__dict__`), and its own
    /// `__init__` is not called, as for any pickled object.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let handle = &slf.get().handle;
        let mode = handle.attachment().map(|a| u8::from(a.is_writable()));
        let key = handle.native_ipc_key();
        let rebuild = py
            .import("qsharedmem._qsharedmem")?
            .getattr("_rebuild_qsharedmemory")?;
        let args = (slf.get_type(), PyNativeIpcKey::from(key), mode);
        let state = match slf.getattr(intern!(py, "__dict__")) {
            Ok(dict) if dict.is_truthy()? => dict,
            _ => py.None().into_bound(py),
        };
        PyTuple::new(py, [rebuild, args.into_pyobject(py)?.into_any(), state])
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        // A subclass shows its own name.
        let class = slf.get_type().qualname()?;
        let handle = &slf.get().handle;
        let key = handle.native_ipc_key().to_qt_string();
        Ok(match handle.attachment() {
            Some(att) => format!("<{class} {key:?} attached, {} bytes>", att.size()),
            None => format!("<{class} {key:?} not attached>"),
        })
    }

    // -- wait and notify (conversions in src/python/notify.rs) ---------------------------------

    /// `generation() -> int`: the segment's notify generation.
    fn generation(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.notifier(py)?.generation())
    }

    /// `wait_changed(generation, timeout=None, *, spin=None) -> bool`
    #[pyo3(signature = (generation, timeout = None, *, spin = None))]
    fn wait_changed(
        &self,
        py: Python<'_>,
        generation: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        spin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let generation = notify::word32(generation, "generation")?;
        let how = notify::wait_for(timeout, spin)?;
        let n = self.notifier(py)?;
        notify::wait_unless(py, n.generation() != generation, how, |how, i| {
            n.wait_changed_with(generation, how, i)
        })
    }

    /// `notify() -> int`: bumps the generation, wakes one waiter; returns how many it woke.
    fn notify(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.notifier(py)?.notify())
    }

    /// `notify_all() -> int`: bumps the generation, wakes every waiter.
    fn notify_all(&self, py: Python<'_>) -> PyResult<u32> {
        Ok(self.notifier(py)?.notify_all())
    }

    /// `event(name_or_index) -> Event`
    #[pyo3(signature = (name_or_index, /))]
    fn event(&self, py: Python<'_>, name_or_index: &Bound<'_, PyAny>) -> PyResult<PyEvent> {
        let id = notify::event_id(name_or_index)?;
        let inner = self.handle.event(id).map_err(|e| notify_err(py, e))?;
        Ok(PyEvent { inner })
    }

    /// `atomic_u32(offset) -> AtomicWord`
    #[pyo3(signature = (offset, /))]
    fn atomic_u32(&self, py: Python<'_>, offset: &Bound<'_, PyAny>) -> PyResult<PyAtomicWord> {
        let offset = notify::offset_arg(offset)?;
        let word = self
            .handle
            .atomic_word(offset)
            .map_err(|e| notify_err(py, e))?;
        Ok(PyAtomicWord {
            inner: Word::U32(word),
        })
    }

    /// `atomic_u64(offset) -> AtomicWord`
    #[pyo3(signature = (offset, /))]
    fn atomic_u64(&self, py: Python<'_>, offset: &Bound<'_, PyAny>) -> PyResult<PyAtomicWord> {
        let offset = notify::offset_arg(offset)?;
        let word = self
            .handle
            .atomic_word(offset)
            .map_err(|e| notify_err(py, e))?;
        Ok(PyAtomicWord {
            inner: Word::U64(word),
        })
    }

    /// `await await_changed(generation, timeout=None) -> bool`
    #[pyo3(signature = (generation, timeout = None))]
    fn await_changed<'py>(
        slf: &Bound<'py, Self>,
        generation: &Bound<'py, PyAny>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        notify::aio(slf.py(), "await_changed", (slf, generation, timeout))
    }

    /// `await alock(timeout=None) -> bool`
    #[pyo3(signature = (timeout = None))]
    fn alock<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::async_lock(slf, "alock", timeout)
    }

    /// `async with alocked(timeout=None):`
    #[pyo3(signature = (timeout = None))]
    fn alocked<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::async_lock(slf, "alocked", timeout)
    }

    /// One attempt for an asyncio task: True taken, False busy (also when this handle holds
    /// it), None failed (`error()`); `record_busy` records a busy lock as a time-out.
    #[pyo3(signature = (record_busy = false))]
    fn _try_lock(&self, record_busy: bool) -> Option<bool> {
        let attempt = self.handle.try_lock_for_task(record_busy);
        attempt.map(|taken| taken.is_some()).ok()
    }

    /// Makes the handle independent of the parent after `fork()` (called from an
    /// `os.register_at_fork` hook; every operation also does it by itself).
    fn _after_fork(&self) {
        self.handle.after_fork();
    }
}

impl Drop for PySharedMemory {
    fn drop(&mut self) {
        // The cached views go first, so that the core's detach is the last reference; like
        // Qt's destructor the handle then detaches and releases the lock, which may wait
        // (briefly) for the System V lock, so the GIL is released meanwhile.
        let views = (self.data_view.take(), self.const_view.take());
        let handle = std::mem::take(&mut self.handle);
        Python::attach(|py| {
            drop(views);
            py.detach(move || drop(handle));
        });
    }
}

/// The context manager returned by `QSharedMemory.locked()`.
#[pyclass(module = "qsharedmem", name = "_LockedContext")]
pub(crate) struct LockedContext {
    shm: Py<PySharedMemory>,
    timeout: Option<Py<PyAny>>,
}

#[pymethods]
impl LockedContext {
    fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySharedMemory>> {
        let shm = self.shm.bind(py);
        let timeout = self.timeout.as_ref().map(|t| t.bind(py));
        if !shm.get().lock_slow(py, timeout)? {
            let error = shm.get().handle.error().unwrap_or_else(|| {
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
        let _ = self.shm.bind(py).get().handle.unlock();
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
        let attached = handle.waiting(py, |h, interrupt| h.attach_with(mode, None, interrupt))?;
        if let Err(error) = attached {
            return Err(to_py_err(py, &error));
        }
    }
    Ok(shm)
}

/// `os.register_at_fork(before=...)` hook: every counted POSIX attachment prepares a lock for
/// the child, so that the child counts as attached from the moment of the fork.
#[pyfunction]
fn _before_fork() {
    crate::segment::registry::prepare_all_for_fork();
}

/// `os.register_at_fork(after_in_parent=...)` hook: closes the parent's copies of what
/// `_before_fork` prepared.
#[pyfunction]
fn _after_fork_in_parent() {
    crate::segment::registry::after_fork_in_parent_all();
}

/// `os.register_at_fork(after_in_child=...)` hook: every inherited POSIX attachment gets a
/// lock of the child's own, so neither process's detach destroys a segment the other still
/// uses.
#[pyfunction]
fn _after_fork_in_child() {
    crate::segment::registry::rehome_all_after_fork();
}

/// Exit hook (atexit, and multiprocessing's finalizers in forked children, which leave with
/// `os._exit`): the last holder of a POSIX segment removes its names.
#[pyfunction]
fn _release_at_exit() {
    crate::segment::registry::release_all_at_exit();
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_parent, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(_release_at_exit, m)?)?;
    m.add_class::<PySharedMemory>()?;
    let class = m.py().get_type::<PySharedMemory>();
    fast::install(&class)?;
    enums::expose(
        &class,
        [
            ("AccessMode", enums::access_mode_class(m.py())?),
            (
                "SharedMemoryError",
                enums::shared_memory_error_class(m.py())?,
            ),
        ],
    )?;
    m.add_class::<LockedContext>()?;
    m.add_class::<SegmentBuffer>()?;
    m.add_function(wrap_pyfunction!(_rebuild_qsharedmemory, m)?)?;
    Ok(())
}
