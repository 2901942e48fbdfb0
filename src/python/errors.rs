//! Core errors as Python exceptions (`qsharedmem._errors`), for the places where Python needs an
//! exception rather than Qt's `False` + `error()`. The factories are fetched once, when the
//! extension module is initialised ([`init`]).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::error::{Error, QtErrorKind, SemaphoreError};

static ERROR_FOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SEMAPHORE_ERROR_FOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Fetches the exception factories of `qsharedmem._errors` (at module initialisation).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    ERROR_FOR.import(py, "qsharedmem._errors", "error_for")?;
    SEMAPHORE_ERROR_FOR.import(py, "qsharedmem._errors", "semaphore_error_for")?;
    Ok(())
}

/// Calls `factory` with Qt's code, Qt's text and the errno, and returns the exception it makes.
fn exception<K: QtErrorKind>(
    py: Python<'_>,
    factory: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
    error: &crate::QtError<K>,
) -> PyErr {
    let made = factory
        .import(py, "qsharedmem._errors", name)
        .and_then(|f| f.call1((error.kind().qt_value(), error.message(), error.errno())));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(import_failure) => import_failure,
    }
}

/// The exception for `error`: the `SharedMemoryError` subclass matching its Qt code, with
/// `errno`, `strerror` (Qt's text) and `qt_error`.
pub(crate) fn to_py_err(py: Python<'_>, error: &Error) -> PyErr {
    exception(py, &ERROR_FOR, "error_for", error)
}

/// The exception for a `QSystemSemaphore` error: the `SharedMemoryError` subclass of the same
/// name, with `errno`, `strerror` (Qt's text) and `qt_error` (the `SystemSemaphoreError`
/// member).
pub(crate) fn semaphore_to_py_err(py: Python<'_>, error: &SemaphoreError) -> PyErr {
    exception(py, &SEMAPHORE_ERROR_FOR, "semaphore_error_for", error)
}
