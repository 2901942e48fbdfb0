//! Qt's enums live in Python (`qsharedmem._enums`, `IntEnum`s); this module converts between
//! them and the core's types. The classes are fetched once, when the extension module is
//! initialised ([`init`]); no call imports anything.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyType};

use crate::key::KeyType;

/// The enum class `name` from `qsharedmem._enums`, imported once.
fn enum_class<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
) -> PyResult<Bound<'py, PyType>> {
    cell.import(py, "qsharedmem._enums", name).cloned()
}

macro_rules! enum_class_fn {
    ($(#[$attr:meta])* $fn_name:ident, $py_name:literal) => {
        /// The Python enum class of the same name in `qsharedmem._enums`.
        $(#[$attr])*
        pub(crate) fn $fn_name(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
            static CELL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
            enum_class(py, &CELL, $py_name)
        }
    };
}

enum_class_fn!(key_type_class, "KeyType");
enum_class_fn!(access_mode_class, "AccessMode");
enum_class_fn!(shared_memory_error_class, "SharedMemoryError");
enum_class_fn!(semaphore_access_mode_class, "SystemSemaphoreAccessMode");
enum_class_fn!(semaphore_error_class, "SystemSemaphoreError");

/// Fetches every enum class (and `enum.Enum`), at module initialisation.
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    key_type_class(py)?;
    access_mode_class(py)?;
    shared_memory_error_class(py)?;
    semaphore_access_mode_class(py)?;
    semaphore_error_class(py)?;
    ENUM.import(py, "enum", "Enum")?;
    Ok(())
}

static ENUM: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Makes each enum class an attribute of `class` under its name (`QSharedMemory.AccessMode`), and
/// each of its members as well (`QSharedMemory.ReadOnly` next to
/// `QSharedMemory.AccessMode.ReadOnly`), as in PySide6.
pub(crate) fn expose<'py>(
    class: &Bound<'py, PyType>,
    enum_classes: impl IntoIterator<Item = (&'static str, Bound<'py, PyType>)>,
) -> PyResult<()> {
    for (name, enum_class) in enum_classes {
        class.setattr(name, &enum_class)?;
        for member in enum_class.try_iter()? {
            let member = member?;
            class.setattr(member.getattr("name")?.cast::<PyString>()?, member)?;
        }
    }
    Ok(())
}

/// The member of `class` with integer value `value`.
pub(crate) fn member<'py>(class: &Bound<'py, PyType>, value: u32) -> PyResult<Bound<'py, PyAny>> {
    class.call1((value,))
}

/// `QNativeIpcKey.Type` member for a core key type.
pub(crate) fn key_type_to_py(py: Python<'_>, key_type: KeyType) -> PyResult<Bound<'_, PyAny>> {
    member(&key_type_class(py)?, u32::from(key_type.raw()))
}

/// A key type from a `QNativeIpcKey.Type` member or a plain integer 0..=0xffff.
pub(crate) fn key_type_from_py(obj: &Bound<'_, PyAny>) -> PyResult<KeyType> {
    let raw = enum_value(obj, &key_type_class(obj.py())?, "QNativeIpcKey.Type")?;
    u16::try_from(raw)
        .map(KeyType::from_raw)
        .map_err(|_| PyValueError::new_err(format!("{raw} is not a valid QNativeIpcKey.Type")))
}

/// The integer value of a member of `class` or of a plain `int`. A member of another enum is a
/// `TypeError` (as in PySide6), not its integer value: `create(10, QNativeIpcKey.Type.SystemV)`
/// is a mistake, not access mode 81.
pub(crate) fn enum_value(
    obj: &Bound<'_, PyAny>,
    class: &Bound<'_, PyType>,
    what: &str,
) -> PyResult<i64> {
    let enum_base = ENUM.import(obj.py(), "enum", "Enum")?;
    if obj.is_instance(enum_base)? && !obj.is_instance(class)? {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "expected {what}, got {}",
            obj.get_type().qualname()?
        )));
    }
    int_value(obj, what)
}

/// The integer value of an enum member or `int` (not `bool`, not `float`).
pub(crate) fn int_value(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    if obj.is_instance_of::<pyo3::types::PyBool>() || !obj.hasattr("__index__")? {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "expected {what}, got {}",
            obj.get_type().name()?
        )));
    }
    obj.call_method0("__index__")?.extract::<i64>()
}
