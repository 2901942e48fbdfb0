//! Core errors as Python exceptions (`qsharedmem._errors`), for the places where Python needs an
//! exception rather than Qt's `False` + `error()`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::error::{Error, SemaphoreError};

/// Calls the factory `name` of `qsharedmem._errors` (imported once into `cell`) with Qt's code,
/// Qt's text and the errno, and returns the exception it makes.
fn exception(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
    (code, message, errno): (u8, &str, Option<i32>),
) -> PyErr {
    let made = cell
        .import(py, "qsharedmem._errors", name)
        .and_then(|f| f.call1((code, message, errno)));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(import_failure) => import_failure,
    }
}

/// The exception for `error`: the `SharedMemoryError` subclass matching its Qt code, with
/// `errno`, `strerror` (Qt's text) and `qt_error`.
pub(crate) fn to_py_err(py: Python<'_>, error: &Error) -> PyErr {
    static ERROR_FOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let parts = (error.kind().qt_value(), error.message(), error.errno());
    exception(py, &ERROR_FOR, "error_for", parts)
}

/// The exception for a `QSystemSemaphore` error: the `SharedMemoryError` subclass of the same
/// name, with `errno`, `strerror` (Qt's text) and `qt_error` (the `SystemSemaphoreError`
/// member).
pub(crate) fn semaphore_to_py_err(py: Python<'_>, error: &SemaphoreError) -> PyErr {
    static ERROR_FOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let parts = (error.kind().qt_value(), error.message(), error.errno());
    exception(py, &ERROR_FOR, "semaphore_error_for", parts)
}
