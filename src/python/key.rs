//! `qsharedmem.QNativeIpcKey`: PySide6's `QNativeIpcKey` over the core's [`NativeIpcKey`].
//!
//! Conversion only: every rule (string form, equality, the legacy quirks) lives in
//! `crate::key`. The Python surface copies PySide6 6.12 — positional-only arguments, `None`
//! accepted wherever PySide6 takes a `QString` — and adds `repr()`, copying and pickling.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

use super::enums::{key_type_class, key_type_from_py, key_type_to_py};
use crate::key::{KeyType, NativeIpcKey};

/// QNativeIpcKey(), QNativeIpcKey(type), QNativeIpcKey(k, type=DefaultTypeForOs),
/// QNativeIpcKey(other)
///
/// Qt's QNativeIpcKey: the OS-level name of a shared memory segment or system semaphore
/// (nativeKey()) and the kind of OS object it names (type()). toString() and fromString()
/// convert it to and from Qt's string form, which is how processes pass keys to each other.
#[pyclass(name = "QNativeIpcKey", module = "qsharedmem")]
#[derive(Clone)]
pub(crate) struct PyNativeIpcKey {
    inner: NativeIpcKey,
}

impl From<NativeIpcKey> for PyNativeIpcKey {
    fn from(inner: NativeIpcKey) -> Self {
        Self { inner }
    }
}

impl PyNativeIpcKey {
    /// A copy of the core key.
    pub(crate) fn to_core(&self) -> NativeIpcKey {
        self.inner.clone()
    }
}

/// The core key of `obj` if it is a `QNativeIpcKey`, `None` for any other object (so that
/// callers can fall back to other accepted types, such as a `str` legacy key).
pub(crate) fn extract_key(obj: &Bound<'_, PyAny>) -> PyResult<Option<NativeIpcKey>> {
    match obj.cast::<PyNativeIpcKey>() {
        Ok(key) => Ok(Some(key.try_borrow()?.to_core())),
        Err(_) => Ok(None),
    }
}

/// Adds `QNativeIpcKey` to the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNativeIpcKey>()
}

/// The Python expression for a key type: `QNativeIpcKey.Type.SystemV`, or
/// `QNativeIpcKey.Type(84)` for the values Qt does not name.
fn type_repr(key_type: KeyType) -> String {
    match key_type.qt_name() {
        Some(name) => format!("QNativeIpcKey.Type.{name}"),
        None => format!("QNativeIpcKey.Type({})", key_type.raw()),
    }
}

fn str_repr(py: Python<'_>, text: &str) -> PyResult<String> {
    Ok(PyString::new(py, text).repr()?.to_str()?.to_owned())
}

#[pymethods]
impl PyNativeIpcKey {
    /// `QNativeIpcKey()`, `QNativeIpcKey(other)`, `QNativeIpcKey(type)` or
    /// `QNativeIpcKey(k, type=DefaultTypeForOs)`. `None` for `k` is PySide6's null string;
    /// `None` for `type` (or leaving it out) means `DefaultTypeForOs`.
    #[new]
    #[pyo3(signature = (k = None, /, r#type = None))]
    fn new(k: Option<&Bound<'_, PyAny>>, r#type: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let key_type = r#type.map(key_type_from_py).transpose()?;
        let Some(k) = k else {
            // PySide6 reads None as a null QString, i.e. the (k, type) overload with "".
            return Ok(Self::from(match key_type {
                Some(key_type) => NativeIpcKey::empty(key_type),
                None => NativeIpcKey::default(),
            }));
        };
        if let Ok(native) = k.cast::<PyString>() {
            let key_type = key_type.unwrap_or(KeyType::DEFAULT_FOR_OS);
            return Ok(Self::from(NativeIpcKey::new(native.to_str()?, key_type)));
        }
        if key_type.is_some() {
            return Err(PyTypeError::new_err(
                "QNativeIpcKey(): 'type' can only be given together with a str key",
            ));
        }
        if let Some(other) = extract_key(k)? {
            return Ok(Self::from(other));
        }
        match key_type_from_py(k) {
            Ok(key_type) => Ok(Self::from(NativeIpcKey::empty(key_type))),
            Err(err) if err.is_instance_of::<PyTypeError>(k.py()) => {
                Err(PyTypeError::new_err(format!(
                    "QNativeIpcKey() argument must be str, QNativeIpcKey or QNativeIpcKey.Type, \
                     not {}",
                    k.get_type().name()?
                )))
            }
            Err(err) => Err(err),
        }
    }

    /// `QNativeIpcKey.Type`.
    #[classattr]
    #[pyo3(name = "Type")]
    fn type_enum(py: Python<'_>) -> PyResult<Py<PyType>> {
        Ok(key_type_class(py)?.unbind())
    }

    /// `QNativeIpcKey.DefaultTypeForOs`: `Type.PosixRealtime` on Linux.
    #[classattr]
    #[pyo3(name = "DefaultTypeForOs")]
    fn default_type_for_os(py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(key_type_to_py(py, KeyType::DEFAULT_FOR_OS)?.unbind())
    }

    /// legacyDefaultTypeForOs() -> QNativeIpcKey.Type: the type Qt < 6.6 used, SystemV on
    /// Linux.
    #[staticmethod]
    #[pyo3(name = "legacyDefaultTypeForOs")]
    fn legacy_default_type_for_os(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        key_type_to_py(py, KeyType::legacy_default_for_os())
    }

    /// nativeKey() -> str: the OS-level name (a POSIX object name, a System V key file, ...).
    #[pyo3(name = "nativeKey")]
    fn native_key(&self) -> &str {
        self.inner.native_key()
    }

    /// setNativeKey(newKey): replaces the native key; a legacy key is forgotten.
    #[pyo3(name = "setNativeKey", signature = (new_key, /))]
    fn set_native_key(&mut self, new_key: Option<String>) {
        self.inner.set_native_key(new_key.unwrap_or_default());
    }

    /// type() -> QNativeIpcKey.Type: the kind of OS object the key names.
    #[pyo3(name = "type")]
    fn key_type<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        key_type_to_py(py, self.inner.key_type())
    }

    /// setType(type): changes the key type (ignored on legacy keys, as in Qt).
    #[pyo3(name = "setType", signature = (r#type, /))]
    fn set_type(&mut self, r#type: &Bound<'_, PyAny>) -> PyResult<()> {
        self.inner.set_type(key_type_from_py(r#type)?);
        Ok(())
    }

    /// isEmpty() -> bool: whether the native key is empty.
    #[pyo3(name = "isEmpty")]
    fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// isValid() -> bool: whether the type is valid (not 0); the native key is not checked.
    #[pyo3(name = "isValid")]
    fn is_valid(&self) -> bool {
        self.inner.is_valid()
    }

    /// toString() -> str: Qt's string form, e.g. 'posix:/demo' ('' for an invalid type).
    #[pyo3(name = "toString")]
    fn to_qt_string(&self) -> String {
        self.inner.to_qt_string()
    }

    /// fromString(string) -> QNativeIpcKey: parses Qt's string form; an invalid key if it
    /// cannot be parsed.
    #[staticmethod]
    #[pyo3(name = "fromString", signature = (string, /))]
    fn from_qt_string(string: Option<&str>) -> Self {
        Self::from(NativeIpcKey::from_qt_string(string.unwrap_or_default()))
    }

    /// swap(other): exchanges the contents of the two keys.
    #[pyo3(signature = (other, /))]
    fn swap(slf: &Bound<'_, Self>, other: &Bound<'_, Self>) -> PyResult<()> {
        if slf.is(other) {
            return Ok(());
        }
        std::mem::swap(
            &mut slf.try_borrow_mut()?.inner,
            &mut other.try_borrow_mut()?.inner,
        );
        Ok(())
    }

    /// `==` and `!=`. Like PySide6, a `str` compares as `QNativeIpcKey(str)` (Qt's implicit
    /// constructor, type `DefaultTypeForOs`); other types are not comparable.
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let other = match extract_key(other)? {
            Some(key) => key,
            None => match other.cast::<PyString>() {
                Ok(text) => NativeIpcKey::new(text.to_str()?, KeyType::DEFAULT_FOR_OS),
                Err(_) => return Ok(py.NotImplemented()),
            },
        };
        let result = match op {
            CompareOp::Eq => self.inner == other,
            CompareOp::Ne => self.inner != other,
            _ => return Ok(py.NotImplemented()),
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }

    fn __hash__(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.inner.hash(&mut hasher);
        hasher.finish()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let (native, key_type, _) = self.inner.to_parts();
        let mut repr = format!(
            "QNativeIpcKey({}, {}",
            str_repr(py, native)?,
            type_repr(key_type)
        );
        if let Some(legacy) = self.inner.legacy_key() {
            repr.push_str(&format!(", legacyKey={}", str_repr(py, legacy)?));
        }
        repr.push(')');
        Ok(repr)
    }

    fn __copy__(&self) -> Self {
        self.clone()
    }

    #[pyo3(signature = (_memo, /))]
    fn __deepcopy__(&self, _memo: &Bound<'_, PyDict>) -> Self {
        self.clone()
    }

    /// Pickles as `(QNativeIpcKey, (), (native, type value, legacy))`: the legacy part is kept
    /// exactly, including the empty-but-present state that makes `setType()` a no-op.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let this = slf.try_borrow()?;
        let (native, key_type, legacy) = this.inner.to_parts();
        let state = (native, key_type.raw(), legacy).into_pyobject(py)?;
        (slf.get_type(), PyTuple::empty(py), state).into_pyobject(py)
    }

    #[pyo3(signature = (state, /))]
    fn __setstate__(&mut self, state: (String, u16, Option<String>)) {
        let (native, raw_type, legacy) = state;
        self.inner = NativeIpcKey::from_parts(native, KeyType::from_raw(raw_type), legacy);
    }
}
