//! `qsharedmem.QSystemSemaphore`: PySide6's `QSystemSemaphore` API over the core
//! [`SystemSemaphore`](crate::SystemSemaphore).
//!
//! Conversion only. The core's methods take `&self` and never hold its state lock while
//! waiting, so the pyclass needs no lock of its own: one thread can wait in `acquire()` (with
//! the GIL released, running signal handlers between wait slices so that Ctrl-C works) while
//! another calls `release()` on the same object.

use std::ffi::CString;
use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyRuntimeWarning, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::convert::{
    self, detached_interruptible, key_arg, key_type_or, native_key, timeout, KeyArg,
};
use super::enums::{
    self, enum_value, int_value, key_type_from_py, member, semaphore_access_mode_class,
};
use super::errors::semaphore_to_py_err;
use super::key::PyNativeIpcKey;
use super::notify;
use crate::key::KeyType;
use crate::system_semaphore::{AccessMode, NEGATIVE_RELEASE_WARNING};
use crate::{SemaphoreError, SystemSemaphore};

/// `QSystemSemaphore`: a counting semaphore shared between processes by key, with Qt 6's API
/// and semantics.
#[pyclass(
    name = "QSystemSemaphore",
    module = "qsharedmem",
    subclass,
    frozen,
    weakref
)]
pub(crate) struct PySystemSemaphore {
    inner: SystemSemaphore,
}

/// Converts a `QSystemSemaphore.AccessMode` member or 0/1 (`None`: `Open`); a member of
/// another enum (`QSharedMemory.ReadWrite`) is a `TypeError`, as in PySide6.
fn access_mode(obj: Option<&Bound<'_, PyAny>>) -> PyResult<AccessMode> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(AccessMode::Open);
    };
    let value = enum_value(
        obj,
        &semaphore_access_mode_class(obj.py())?,
        "QSystemSemaphore.AccessMode",
    )?;
    u8::try_from(value)
        .ok()
        .and_then(AccessMode::from_qt_value)
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "{value} is not a valid QSystemSemaphore.AccessMode"
            ))
        })
}

/// Converts a C `int` argument (`initialValue`, `n`); `None` gives `default`.
fn c_int(obj: Option<&Bound<'_, PyAny>>, what: &str, default: i32) -> PyResult<i32> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(default);
    };
    let value = int_value(obj, &format!("an int for {what}"))?;
    i32::try_from(value)
        .map_err(|_| PyOverflowError::new_err(format!("{what} {value} does not fit in a C int")))
}

/// The key argument: a `QNativeIpcKey`, or a `str` (`None` is PySide6's null string).
fn key_or_text(obj: &Bound<'_, PyAny>) -> PyResult<KeyArg> {
    if obj.is_none() {
        return Ok(KeyArg::Text(String::new()));
    }
    key_arg(obj)
}

/// A `str` argument (`None` is PySide6's null string, "").
fn text(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    if obj.is_none() {
        return Ok(String::new());
    }
    Ok(obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{what} expects a str")))?
        .to_str()?
        .to_owned())
}

impl PySystemSemaphore {
    /// Takes a token, waiting at most `wait` (`None`: as long as it takes) with the GIL
    /// released and signal handlers running between wait slices.
    fn acquire_impl(&self, py: Python<'_>, wait: Option<Duration>) -> PyResult<bool> {
        // Fast path: one attempt without waiting, with the GIL held.
        match self.inner.try_acquire() {
            Ok(true) => return Ok(true),
            Err(_) => return Ok(false),
            Ok(false) if wait == Some(Duration::ZERO) => return Ok(false),
            Ok(false) => {}
        }
        let sem = &self.inner;
        detached_interruptible(py, |interrupt| {
            sem.acquire_with(wait, interrupt).unwrap_or(false)
        })
    }

    /// The recorded error, for an exception (a generic one if none was recorded).
    fn current_error(&self) -> SemaphoreError {
        self.inner.error().unwrap_or_else(|| {
            SemaphoreError::new(
                crate::SemaphoreErrorKind::UnknownError,
                "QSystemSemaphore::acquire: unable to acquire",
            )
        })
    }
}

#[pymethods]
impl PySystemSemaphore {
    /// `QSystemSemaphore(key, /, initialValue=0, mode=QSystemSemaphore.Open)`: `key` is a
    /// `QNativeIpcKey`, or a `str` legacy key (`legacyNativeKey(key)`, as PySide6 reads a
    /// string).
    ///
    /// `permissions` and `group` (not in Qt): who may use a semaphore this object creates
    /// (Qt's 0600 by default), as for `QSharedMemory.create`.
    #[new]
    #[pyo3(signature = (key, /, initialValue = None, mode = None, *, permissions = None, group = None))]
    #[allow(non_snake_case)]
    fn new(
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        initialValue: Option<&Bound<'_, PyAny>>,
        mode: Option<&Bound<'_, PyAny>>,
        permissions: Option<&Bound<'_, PyAny>>,
        group: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let key = key_or_text(key)?;
        let initial = c_int(initialValue, "initialValue", 0)?;
        let mode = access_mode(mode)?;
        let permissions = convert::permissions(py, permissions, group)?;
        let key = match key {
            KeyArg::Native(key) => key,
            KeyArg::Text(text) => {
                SystemSemaphore::legacy_native_key(&text, KeyType::legacy_default_for_os())
            }
        };
        let inner = SystemSemaphore::with_permissions(key, initial, mode, permissions);
        Ok(Self { inner })
    }

    /// `acquire(timeout=None) -> bool`: takes a token, waiting at most `timeout` seconds
    /// (None: as long as it takes), with the GIL released and Ctrl-C working. False with
    /// `error()` set if the semaphore is unusable; False with `NoError` on timeout.
    #[pyo3(signature = (timeout = None))]
    fn acquire(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let wait = self::timeout(timeout)?;
        self.acquire_impl(py, wait)
    }

    /// `await aacquire(timeout=None) -> bool`: `acquire()` for asyncio (see `qsharedmem._aio`).
    #[pyo3(signature = (timeout = None))]
    fn aacquire<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = self::timeout(timeout)?;
        notify::aio(slf.py(), "aacquire", (slf, timeout))
    }

    /// One attempt without waiting: True if a token was taken; False if none is free, or if
    /// the semaphore is unusable (`error()` says so).
    fn _try_acquire(&self) -> bool {
        self.inner.try_acquire().unwrap_or(false)
    }

    /// `release(n=1) -> bool`: gives `n` tokens back. `release(0)` is True and does nothing; a
    /// negative `n` warns (RuntimeWarning, Qt's qWarning text) and returns False.
    #[pyo3(signature = (n = None))]
    fn release(&self, py: Python<'_>, n: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let n = c_int(n, "n", 1)?;
        match self.inner.release(n) {
            Ok(()) => Ok(true),
            Err(_) if n < 0 => {
                let message = CString::new(NEGATIVE_RELEASE_WARNING)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?;
                PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &message, 1)?;
                Ok(false)
            }
            Err(_) => Ok(false),
        }
    }

    /// `error() -> QSystemSemaphore.SystemSemaphoreError`
    fn error<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let code = self.inner.error().map_or(0, |e| e.kind().qt_value());
        member(&enums::semaphore_error_class(py)?, u32::from(code))
    }

    /// `errorString() -> str`
    #[pyo3(name = "errorString")]
    fn error_string(&self) -> String {
        self.inner.error_string()
    }

    /// `key() -> str`: the legacy key ("" if the native key was not derived from one).
    fn key(&self) -> String {
        self.inner.key().unwrap_or_default()
    }

    /// `setKey(key, /, initialValue=0, mode=QSystemSemaphore.Open)`:
    /// `setNativeKey(legacyNativeKey(key), initialValue, mode)`.
    #[pyo3(name = "setKey", signature = (key, /, initialValue = None, mode = None))]
    #[allow(non_snake_case)]
    fn set_key(
        &self,
        key: &Bound<'_, PyAny>,
        initialValue: Option<&Bound<'_, PyAny>>,
        mode: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let key = text(key, "setKey()")?;
        let initial = c_int(initialValue, "initialValue", 0)?;
        let _ = self.inner.set_key(&key, initial, access_mode(mode)?);
        Ok(())
    }

    /// `nativeIpcKey() -> QNativeIpcKey`
    #[pyo3(name = "nativeIpcKey")]
    fn native_ipc_key(&self) -> PyNativeIpcKey {
        self.inner.native_ipc_key().into()
    }

    /// `setNativeKey(key: QNativeIpcKey, /, initialValue=0, mode=Open)` or
    /// `setNativeKey(key: str, /, initialValue=0, mode=Open, type=legacyDefaultTypeForOs())`
    #[pyo3(
        name = "setNativeKey",
        signature = (key, /, initialValue = None, mode = None, r#type = None)
    )]
    #[allow(non_snake_case)]
    fn set_native_key(
        &self,
        key: &Bound<'_, PyAny>,
        initialValue: Option<&Bound<'_, PyAny>>,
        mode: Option<&Bound<'_, PyAny>>,
        r#type: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let initial = c_int(initialValue, "initialValue", 0)?;
        let mode = access_mode(mode)?;
        let key = native_key(key_or_text(key)?, r#type)?;
        let _ = self.inner.set_native_key(key, initial, mode);
        Ok(())
    }

    /// `QSystemSemaphore.platformSafeKey(key, /, type=QNativeIpcKey.DefaultTypeForOs)`
    #[staticmethod]
    #[pyo3(name = "platformSafeKey", signature = (key, /, r#type = None))]
    fn platform_safe_key(key: &str, r#type: Option<&Bound<'_, PyAny>>) -> PyResult<PyNativeIpcKey> {
        let key_type = key_type_or(r#type, KeyType::DEFAULT_FOR_OS)?;
        Ok(SystemSemaphore::platform_safe_key(key, key_type).into())
    }

    /// `QSystemSemaphore.legacyNativeKey(key, /, type=QNativeIpcKey.legacyDefaultTypeForOs())`
    #[staticmethod]
    #[pyo3(name = "legacyNativeKey", signature = (key, /, r#type = None))]
    fn legacy_native_key(key: &str, r#type: Option<&Bound<'_, PyAny>>) -> PyResult<PyNativeIpcKey> {
        let key_type = key_type_or(r#type, KeyType::legacy_default_for_os())?;
        Ok(SystemSemaphore::legacy_native_key(key, key_type).into())
    }

    /// `QSystemSemaphore.isKeyTypeSupported(type, /) -> bool`
    #[staticmethod]
    #[pyo3(name = "isKeyTypeSupported", signature = (r#type, /))]
    fn is_key_type_supported(r#type: &Bound<'_, PyAny>) -> PyResult<bool> {
        key_type_from_py(r#type).map(SystemSemaphore::is_key_type_supported)
    }

    /// `with sem:` acquires a token (waiting as long as it takes, Ctrl-C working) and releases
    /// it when the block ends. Raises a `qsharedmem.SharedMemoryError` subclass (with Qt's
    /// text) if the semaphore is unusable.
    fn __enter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        let py = slf.py();
        if !slf.get().acquire_impl(py, None)? {
            return Err(semaphore_to_py_err(py, &slf.get().current_error()));
        }
        Ok(slf)
    }

    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc_value: &Bound<'_, PyAny>,
        _traceback: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        match self.inner.release(1) {
            // A failed release does not hide the exception that ended the block.
            Err(error) if exc_type.is_none() => Err(semaphore_to_py_err(py, &error)),
            _ => Ok(false),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<QSystemSemaphore {:?}>",
            self.inner.native_ipc_key().to_qt_string()
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySystemSemaphore>()?;
    let py = m.py();
    enums::expose(
        &py.get_type::<PySystemSemaphore>(),
        [
            ("AccessMode", enums::semaphore_access_mode_class(py)?),
            ("SystemSemaphoreError", enums::semaphore_error_class(py)?),
        ],
    )
}
