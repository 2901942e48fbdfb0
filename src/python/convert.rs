//! Python arguments to core types (and the GIL dance of waits): what every binding class
//! shares.

use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::enums;
use super::key::extract_key;
use crate::key::KeyType;
use crate::segment::{AccessMode, Permissions};
use crate::NativeIpcKey;

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

/// A size for create(), converted as PySide6 converts its `qsizetype`: an `int` (or anything
/// with `__index__`, `bool` included: `create(True)` is size 1); negative values become 0
/// (Qt's `InvalidSize`, "less then 0"); values past the address space, and numbers that are
/// no integers (`float`, `Decimal`...), are an `OverflowError`; anything else a `TypeError`.
pub(crate) fn size_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    if !obj.hasattr("__index__")? {
        if is_number(obj) {
            return Err(PyOverflowError::new_err(format!(
                "create(): the size must be an integer, not {}",
                obj.get_type().name()?
            )));
        }
        return Err(PyTypeError::new_err(format!(
            "create(): expected an int size, got {}",
            obj.get_type().name()?
        )));
    }
    let raw: i64 = obj
        .call_method0("__index__")?
        .extract()
        .map_err(|_| PyOverflowError::new_err("create(): size too large"))?;
    if raw < 0 {
        return Ok(0);
    }
    usize::try_from(raw)
        .ok()
        .filter(|&s| isize::try_from(s).is_ok())
        .ok_or_else(|| PyOverflowError::new_err("create(): size too large"))
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

/// A key type argument (a `QNativeIpcKey.Type` member or an int); `None` gives `default`.
pub(crate) fn key_type_or(obj: Option<&Bound<'_, PyAny>>, default: KeyType) -> PyResult<KeyType> {
    obj.filter(|t| !t.is_none())
        .map_or(Ok(default), enums::key_type_from_py)
}

/// The key of `setNativeKey(key, type=None)`: a `QNativeIpcKey` (no type allowed), or a native
/// key string of `type` (`legacyDefaultTypeForOs()` if not given).
pub(crate) fn native_key(key: KeyArg, r#type: Option<&Bound<'_, PyAny>>) -> PyResult<NativeIpcKey> {
    let r#type = r#type.filter(|t| !t.is_none());
    match key {
        KeyArg::Native(_) if r#type.is_some() => Err(PyTypeError::new_err(
            "setNativeKey(QNativeIpcKey) takes no type argument",
        )),
        KeyArg::Native(native) => Ok(native),
        KeyArg::Text(text) => Ok(NativeIpcKey::new(
            text,
            key_type_or(r#type, KeyType::legacy_default_for_os())?,
        )),
    }
}

/// The permission bits and group of `create(..., permissions=, group=)`.
pub(crate) fn permissions(
    py: Python<'_>,
    mode: Option<&Bound<'_, PyAny>>,
    group: Option<&Bound<'_, PyAny>>,
) -> PyResult<Permissions> {
    let mode = mode.filter(|m| !m.is_none());
    let group = group.filter(|g| !g.is_none());
    if mode.is_none() && group.is_none() {
        return Ok(Permissions::default());
    }
    let bits = match mode {
        Some(mode) => {
            let bits = enums::int_value(mode, "an int of permission bits")?;
            u32::try_from(bits)
                .ok()
                .filter(|b| *b <= 0o777)
                .ok_or_else(|| {
                    pyo3::exceptions::PyValueError::new_err(
                        "permissions must be permission bits, 0 to 0o777",
                    )
                })?
        }
        None => 0o600,
    };
    let gid = match group {
        None => None,
        Some(g) if g.is_instance_of::<PyString>() => {
            let entry = py.import("grp")?.call_method1("getgrnam", (g,))?;
            Some(entry.getattr("gr_gid")?.extract::<u32>()?)
        }
        Some(g) => {
            Some(enums::int_value(g, "a group name or id")?).and_then(|id| u32::try_from(id).ok())
        }
    };
    Ok(Permissions::exactly(bits, gid))
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

/// Python's `PyNumber_Check`: `complex`, or anything with `__int__` or `__float__` (those
/// with `__index__` were taken already).
fn is_number(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<pyo3::types::PyComplex>()
        || obj.hasattr("__int__").unwrap_or(false)
        || obj.hasattr("__float__").unwrap_or(false)
}
