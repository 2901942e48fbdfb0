//! Core errors as Python exceptions (`qsharedmem._errors`), for the places where Python needs an
//! exception rather than Qt's `False` + `error()`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::error::Error;

/// The exception for `error`: the `SharedMemoryError` subclass matching its Qt code, with
/// `errno`, `strerror` (Qt's text) and `qt_error`.
pub(crate) fn to_py_err(py: Python<'_>, error: &Error) -> PyErr {
    static ERROR_FOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let made = ERROR_FOR
        .import(py, "qsharedmem._errors", "error_for")
        .and_then(|f| f.call1((error.kind().qt_value(), error.message(), error.errno())));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(import_failure) => import_failure,
    }
}
