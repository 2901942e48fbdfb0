//! The inspection functions behind `qsharedmem ls / info / rm / gc`, for Python: segments become
//! plain, JSON-ready dicts (their keys and values are typed as `_SegmentDict` in
//! `_qsharedmem.pyi`), failures become qsharedmem's exceptions. All logic is in
//! [`crate::inspect`]; the work runs detached from the interpreter.

use std::time::UNIX_EPOCH;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::errors::to_py_err;
use crate::error::{Error, ErrorKind};
use crate::inspect::{self, GcOutcome, InspectError, LockInfo, Scope, SegmentInfo};
use crate::segment::SegmentKind;
use crate::sys::Errno;

fn scope(all_users: bool) -> Scope {
    if all_users {
        Scope::AllUsers
    } else {
        Scope::CurrentUser
    }
}

/// The qsharedmem exception for `error`: `NotFoundError`, `PermissionDeniedError`,
/// `InvalidKeyError` (ambiguous key), or `SharedMemoryError` with `errno` `EBUSY` (in use).
fn to_exception(py: Python<'_>, error: &InspectError) -> PyErr {
    let errno = error.errno();
    let kind = match error {
        InspectError::NotFound { .. } => ErrorKind::NotFound,
        InspectError::Ambiguous { .. } => ErrorKind::KeyError,
        _ if errno == Errno::EACCES.raw() || errno == Errno::EPERM.raw() => {
            ErrorKind::PermissionDenied
        }
        _ => ErrorKind::UnknownError,
    };
    to_py_err(
        py,
        &Error::with_errno(kind, error.to_string(), Errno::from_raw(errno)),
    )
}

fn kind_name(kind: SegmentKind) -> &'static str {
    match kind {
        SegmentKind::Posix => "qsharedmem",
        SegmentKind::ForeignPosix => "posix",
        SegmentKind::SystemV => "systemv",
    }
}

fn lock_to_dict<'py>(py: Python<'py>, lock: &LockInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("state", lock.state.as_str())?;
    d.set_item("holder", lock.holder)?;
    d.set_item("suspects", &lock.suspects)?;
    d.set_item("primitive", &lock.primitive)?;
    d.set_item("value", lock.value)?;
    d.set_item("waiters", lock.waiters)?;
    d.set_item("owner_deaths", lock.owner_deaths)?;
    Ok(d)
}

fn segment_to_dict<'py>(py: Python<'py>, s: &SegmentInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", s.id())?;
    d.set_item("kind", kind_name(s.kind))?;
    d.set_item("origin", s.origin.as_str())?;
    d.set_item("native_key", s.native_key())?;
    d.set_item("key_type", s.key.as_ref().map(|k| k.key_type().raw()))?;
    d.set_item("key", s.key.as_ref().map(|k| k.to_qt_string()))?;
    d.set_item("legacy_key", s.key.as_ref().and_then(|k| k.legacy_key()))?;
    d.set_item("qt_key", &s.qt_key)?;
    d.set_item("file", &s.file)?;
    d.set_item("key_file", &s.key_file)?;
    d.set_item("shmid", s.shmid)?;
    d.set_item("ipc_key", s.ipc_key.map(|k| k as u32))?;
    d.set_item("size", s.size)?;
    d.set_item("file_size", s.file_size)?;
    d.set_item("control_file", &s.control_file)?;
    d.set_item("notify_waiters", s.notify_waiters)?;
    d.set_item("generation", s.generation)?;
    let events = PyList::empty(py);
    for event in &s.events {
        let e = PyDict::new(py);
        e.set_item("name", &event.name)?;
        e.set_item("set", event.set)?;
        e.set_item("waiters", event.waiters)?;
        events.append(e)?;
    }
    d.set_item("events", events)?;
    d.set_item("attachments", s.attachments)?;
    d.set_item("pids", &s.pids)?;
    d.set_item("last_pid", s.last_pid)?;
    d.set_item("lock", lock_to_dict(py, &s.lock)?)?;
    d.set_item("creator_pid", s.creator_pid)?;
    d.set_item("creator_alive", s.creator_alive)?;
    let created = s
        .created
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    d.set_item("created", created)?;
    d.set_item("uid", s.uid)?;
    d.set_item("user", &s.user)?;
    d.set_item("mode", s.mode)?;
    d.set_item("usage", s.usage.as_str())?;
    d.set_item("orphan", s.is_orphan())?;
    d.set_item("note", &s.note)?;
    Ok(d)
}

fn segments_to_list<'py>(
    py: Python<'py>,
    segments: &[SegmentInfo],
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    segments.iter().map(|s| segment_to_dict(py, s)).collect()
}

/// Runs an inspection detached from the interpreter; its error as qsharedmem's exception.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, InspectError> + Send,
) -> PyResult<T> {
    py.detach(f).map_err(|e| to_exception(py, &e))
}

/// Every shared memory segment of this user (of every user with `all_users`).
#[pyfunction]
#[pyo3(signature = (all_users = false))]
fn list_segments(py: Python<'_>, all_users: bool) -> PyResult<Vec<Bound<'_, PyDict>>> {
    segments_to_list(py, &detached(py, || inspect::list(scope(all_users)))?)
}

/// The segments `key` names (a Qt key, a native key, Qt's string form, a System V id...).
#[pyfunction]
#[pyo3(signature = (key, all_users = false))]
fn find_segments<'py>(
    py: Python<'py>,
    key: &str,
    all_users: bool,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    segments_to_list(py, &detached(py, || inspect::find(key, scope(all_users)))?)
}

/// A copy of the first `length` bytes of the one segment `key` names.
#[pyfunction]
#[pyo3(signature = (key, length = 256, all_users = false))]
fn read_segment<'py>(
    py: Python<'py>,
    key: &str,
    length: usize,
    all_users: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = detached(py, || {
        inspect::preview(&inspect::lookup(key, scope(all_users))?, length)
    })?;
    Ok(PyBytes::new(py, &bytes))
}

/// Removes the one segment `key` names, with its key file and lock.
#[pyfunction]
#[pyo3(signature = (key, force = false, all_users = false))]
fn remove_segment<'py>(
    py: Python<'py>,
    key: &str,
    force: bool,
    all_users: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let (segment, removed) = detached(py, || inspect::remove_key(key, scope(all_users), force))?;
    let d = PyDict::new(py);
    d.set_item("segment", segment_to_dict(py, &segment)?)?;
    d.set_item("removed", removed)?;
    Ok(d)
}

fn outcome_to_dict<'py>(py: Python<'py>, outcome: &GcOutcome) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("segment", segment_to_dict(py, &outcome.segment)?)?;
    d.set_item("removed", &outcome.removed)?;
    d.set_item("skipped", outcome.skipped.as_ref().map(ToString::to_string))?;
    d.set_item("errno", outcome.skipped.as_ref().map(InspectError::errno))?;
    Ok(d)
}

/// Removes the orphans `predicate` accepts (all without one); never a segment in use.
#[pyfunction]
#[pyo3(signature = (dry_run = false, predicate = None, all_users = false))]
fn collect_garbage<'py>(
    py: Python<'py>,
    dry_run: bool,
    predicate: Option<Py<PyAny>>,
    all_users: bool,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let mut predicate_error: Option<PyErr> = None;
    let mut accept = |segment: &SegmentInfo| -> bool {
        let Some(predicate) = &predicate else {
            return true;
        };
        if predicate_error.is_some() {
            return false;
        }
        Python::attach(|py| {
            let verdict = segment_to_dict(py, segment)
                .and_then(|d| predicate.call1(py, (d,)))
                .and_then(|v| v.is_truthy(py));
            verdict.unwrap_or_else(|e| {
                predicate_error = Some(e);
                false
            })
        })
    };
    let outcomes = detached(py, || {
        inspect::collect_garbage(scope(all_users), dry_run, &mut accept)
    })?;
    if let Some(error) = predicate_error {
        return Err(error);
    }
    outcomes.iter().map(|o| outcome_to_dict(py, o)).collect()
}

/// `(free, total)`: bytes of the file system behind /dev/shm.
#[pyfunction]
fn shm_space(py: Python<'_>) -> PyResult<(u64, u64)> {
    inspect::shm_space().map_err(|e| to_exception(py, &e))
}

/// Adds the inspection functions to the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(list_segments, m)?)?;
    m.add_function(wrap_pyfunction!(find_segments, m)?)?;
    m.add_function(wrap_pyfunction!(read_segment, m)?)?;
    m.add_function(wrap_pyfunction!(remove_segment, m)?)?;
    m.add_function(wrap_pyfunction!(collect_garbage, m)?)?;
    m.add_function(wrap_pyfunction!(shm_space, m)?)?;
    Ok(())
}
