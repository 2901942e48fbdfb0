//! `QSharedMemory`'s wait/notify, `qsharedmem.Event`, `qsharedmem.AtomicWord` and the asyncio
//! watcher's mailbox (`_WatchQueue`) over the core's [`crate::notify`].
//!
//! Conversion only: waits run detached from the interpreter, with signal handlers running
//! between slices (Ctrl-C works); a wait whose answer is known already returns without
//! releasing the GIL. The `a*` coroutines are written in Python (`qsharedmem._aio`); the
//! methods here hand over to it. The full Python documentation is in `_qsharedmem.pyi`.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

use super::convert::{detached_interruptible, timeout};
use super::errors::to_py_err;
use super::shared_memory::PySharedMemory;
use crate::notify::watcher::{self, Source, WatchQueue};
use crate::notify::{AtomicWord, Event, EventId, NotifyError, WaitFor, Width, DEFAULT_SPIN};
use crate::wait::Interrupt;

/// A core notify error as a Python exception.
pub(crate) fn notify_err(py: Python<'_>, error: NotifyError) -> PyErr {
    match error {
        NotifyError::Segment(e) => to_py_err(py, &e),
        NotifyError::Argument(text) => PyValueError::new_err(text),
        NotifyError::ReadOnly(text) => PyTypeError::new_err(text),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// `timeout` and `spin` in seconds as a wait's shape.
pub(crate) fn wait_for(
    wait: Option<&Bound<'_, PyAny>>,
    spin: Option<&Bound<'_, PyAny>>,
) -> PyResult<WaitFor> {
    let spin = match spin.filter(|s| !s.is_none()) {
        None => DEFAULT_SPIN,
        Some(s) => timeout(Some(s))?.unwrap_or(Duration::from_secs(3600)),
    };
    Ok(WaitFor::at_most(timeout(wait)?).spinning(spin))
}

/// A wait: True at once if `done`, False at once for a zero timeout (both with the GIL held),
/// else `wait` detached (True: done, False: timed out).
pub(crate) fn wait_unless<F>(py: Python<'_>, done: bool, how: WaitFor, wait: F) -> PyResult<bool>
where
    F: FnOnce(WaitFor, Interrupt<'_>) -> Result<bool, NotifyError> + Send,
{
    if done || how.timeout == Some(Duration::ZERO) {
        return Ok(done);
    }
    detached_interruptible(py, |interrupt| wait(how, interrupt))?.map_err(|e| notify_err(py, e))
}

/// The argument of `QSharedMemory.event()`: a name or an index.
pub(crate) fn event_id<'a>(id: &'a Bound<'_, PyAny>) -> PyResult<EventId<'a>> {
    if let Ok(name) = id.cast::<PyString>() {
        return Ok(EventId::Name(name.to_str()?));
    }
    if id.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(
            "event() takes a name (str) or an index (int), not bool",
        ));
    }
    let Ok(index) = id.extract::<i64>() else {
        return Err(PyTypeError::new_err(format!(
            "event() takes a name (str) or an index (int), not {}",
            id.get_type().name()?
        )));
    };
    usize::try_from(index).map(EventId::Index).map_err(|_| {
        PyValueError::new_err(format!("event index {index} is out of range (0 to 31)"))
    })
}

/// The offset argument of `atomic_u32()` / `atomic_u64()`.
pub(crate) fn offset_arg(offset: &Bound<'_, PyAny>) -> PyResult<usize> {
    let offset: i64 = offset
        .extract()
        .map_err(|_| PyTypeError::new_err("the offset must be an int"))?;
    usize::try_from(offset)
        .map_err(|_| PyValueError::new_err(format!("offset {offset} is negative")))
}

/// The coroutine functions of `qsharedmem._aio`, fetched once.
static AIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Calls `qsharedmem._aio.<name>(*args)`: the coroutine (or async context manager) an `a*`
/// method returns.
pub(crate) fn aio<'py, A>(py: Python<'py>, name: &str, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let module = AIO.get_or_try_init(py, || py.import("qsharedmem._aio").map(Bound::unbind))?;
    module.bind(py).getattr(name)?.call1(args)
}

/// `qsharedmem.Event`: one of a segment's 32 events, shared by every process attached.
#[pyclass(name = "Event", module = "qsharedmem", frozen)]
pub(crate) struct PyEvent {
    pub(crate) inner: Event,
}

#[pymethods]
impl PyEvent {
    /// `set() -> bool`: sets the event, waking every waiter; False if it was set already.
    fn set(&self) -> bool {
        self.inner.set()
    }

    /// `clear() -> bool`: clears the event; False if it was clear already.
    fn clear(&self) -> bool {
        self.inner.clear()
    }

    /// `is_set() -> bool`
    fn is_set(&self) -> bool {
        self.inner.is_set()
    }

    /// `wait(timeout=None, *, spin=None) -> bool`: True once the event is set, False on timeout.
    #[pyo3(signature = (timeout = None, *, spin = None))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
        spin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let how = wait_for(timeout, spin)?;
        let event = &self.inner;
        wait_unless(py, event.is_set(), how, |how, i| event.wait_with(how, i))
    }

    /// `await await_set(timeout=None) -> bool`: `wait()` for asyncio.
    #[pyo3(signature = (timeout = None))]
    fn await_set<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        aio(slf.py(), "await_set", (slf, timeout))
    }

    /// The slot number, 0 to 31.
    #[getter]
    fn index(&self) -> usize {
        self.inner.index()
    }

    /// The name, None for a numbered event.
    #[getter]
    fn name(&self) -> Option<String> {
        self.inner.name()
    }

    /// How many processes (threads) sleep in `wait()` now.
    #[getter]
    fn waiters(&self) -> u32 {
        self.inner.waiters()
    }

    fn _token(&self) -> u32 {
        self.inner.token()
    }

    #[pyo3(signature = (token, /))]
    fn _set_since(&self, token: u32) -> bool {
        self.inner.set_since(token)
    }

    fn __repr__(&self) -> String {
        let id = self
            .inner
            .name()
            .map_or_else(|| format!("#{}", self.inner.index()), |n| format!("{n:?}"));
        let state = if self.inner.is_set() { "set" } else { "clear" };
        format!("<qsharedmem.Event {id} {state}>")
    }
}

#[derive(Clone)]
pub(crate) enum Word {
    U32(AtomicWord<u32>),
    U64(AtomicWord<u64>),
}

/// `$body` with `$w` bound to the word, whichever its width (`u64::from` is the identity on
/// the 64-bit arm).
macro_rules! each_width {
    ($word:expr, $w:ident => $body:expr) => {
        match $word {
            Word::U32($w) => $body,
            Word::U64($w) => {
                #[allow(clippy::useless_conversion)]
                let result = $body;
                result
            }
        }
    };
}

/// A generation (or any 32-bit word value) from Python: 0 to 2**32 - 1.
pub(crate) fn word32(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u32> {
    value
        .extract::<u32>()
        .map_err(|_| PyOverflowError::new_err(format!("{what} must be an int from 0 to 2**32 - 1")))
}

/// A value for `word`: 0 to 2**bits - 1.
fn word_value<T: Width + TryFrom<u64>>(
    _word: &AtomicWord<T>,
    value: &Bound<'_, PyAny>,
    what: &str,
) -> PyResult<T> {
    let bits = T::BYTES * 8;
    let too_big = || {
        PyOverflowError::new_err(format!(
            "{what} must be an int from 0 to 2**{bits} - 1 for a {bits}-bit word"
        ))
    };
    let v: u64 = value.extract().map_err(|_| too_big())?;
    T::try_from(v).map_err(|_| too_big())
}

/// `delta` for add() on `word`: -(2**bits - 1) to 2**bits - 1, as the two's complement to add.
fn word_delta<T: Width + TryFrom<u64>>(
    _word: &AtomicWord<T>,
    delta: &Bound<'_, PyAny>,
) -> PyResult<T> {
    let bits = T::BYTES * 8;
    let wide: i128 = delta
        .extract()
        .map_err(|_| PyOverflowError::new_err("delta out of range"))?;
    if wide.abs() > (1i128 << bits) - 1 {
        return Err(PyOverflowError::new_err(format!(
            "delta must be between -(2**{bits} - 1) and 2**{bits} - 1"
        )));
    }
    // Two's complement modulo 2**bits (which fits in T): adding it wraps to the subtraction.
    u64::try_from(wide.rem_euclid(1i128 << bits))
        .ok()
        .and_then(|d| T::try_from(d).ok())
        .ok_or_else(|| PyOverflowError::new_err("delta out of range"))
}

/// 32 or 64.
fn bits<T: Width>(_word: &AtomicWord<T>) -> usize {
    T::BYTES * 8
}

/// `qsharedmem.AtomicWord`: an aligned 32- or 64-bit word of a segment's data, used atomically.
#[pyclass(name = "AtomicWord", module = "qsharedmem", frozen)]
pub(crate) struct PyAtomicWord {
    pub(crate) inner: Word,
}

#[pymethods]
impl PyAtomicWord {
    /// `load() -> int`
    fn load(&self) -> u64 {
        each_width!(&self.inner, w => u64::from(w.load()))
    }

    /// `store(value)`; TypeError for a ReadOnly attachment.
    #[pyo3(signature = (value, /))]
    fn store(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        each_width!(&self.inner, w => w.store(word_value(w, value, "value")?))
            .map_err(|e| notify_err(py, e))
    }

    /// `add(delta) -> int`: adds (wrapping around) and returns the value before.
    #[pyo3(signature = (delta, /))]
    fn add(&self, py: Python<'_>, delta: &Bound<'_, PyAny>) -> PyResult<u64> {
        each_width!(&self.inner, w => w.add(word_delta(w, delta)?).map(u64::from))
            .map_err(|e| notify_err(py, e))
    }

    /// `compare_exchange(expected, desired) -> (bool, int)`
    #[pyo3(signature = (expected, desired, /))]
    fn compare_exchange(
        &self,
        py: Python<'_>,
        expected: &Bound<'_, PyAny>,
        desired: &Bound<'_, PyAny>,
    ) -> PyResult<(bool, u64)> {
        let result = each_width!(&self.inner, w => {
            let (e, d) = (word_value(w, expected, "expected")?, word_value(w, desired, "desired")?);
            w.compare_exchange(e, d).map(|r| r.map(u64::from).map_err(u64::from))
        })
        .map_err(|err| notify_err(py, err))?;
        Ok(result.map_or_else(|seen| (false, seen), |seen| (true, seen)))
    }

    /// `wait(expected, timeout=None, *, spin=None) -> bool`: True once the word holds another
    /// value than `expected`, False on timeout.
    #[pyo3(signature = (expected, timeout = None, *, spin = None))]
    fn wait(
        &self,
        py: Python<'_>,
        expected: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        spin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        each_width!(&self.inner, w => {
            let e = word_value(w, expected, "expected")?;
            let how = wait_for(timeout, spin)?;
            wait_unless(py, w.load() != e, how, |how, i| w.wait_with(e, how, i))
        })
    }

    /// `wake(n=1) -> int`: wakes up to `n` waiters (a huge `n`: all); returns how many.
    #[pyo3(signature = (n = 1))]
    fn wake(&self, n: i64) -> PyResult<u32> {
        if n < 1 {
            return Err(PyValueError::new_err("wake() needs n >= 1"));
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(each_width!(&self.inner, w => w.wake(n)))
    }

    /// `await await_changed(expected, timeout=None) -> bool`: `wait()` for asyncio.
    #[pyo3(signature = (expected, timeout = None))]
    fn await_changed<'py>(
        slf: &Bound<'py, Self>,
        expected: &Bound<'py, PyAny>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        each_width!(&slf.get().inner, w => word_value(w, expected, "expected").map(drop))?;
        aio(slf.py(), "await_word", (slf, expected, timeout))
    }

    /// 32 or 64.
    #[getter]
    fn bits(&self) -> usize {
        each_width!(&self.inner, w => bits(w))
    }

    /// The word's offset in the segment's data.
    #[getter]
    fn offset(&self) -> usize {
        each_width!(&self.inner, w => w.offset())
    }

    /// Whether writes are refused (the segment is attached ReadOnly).
    #[getter]
    fn readonly(&self) -> bool {
        !each_width!(&self.inner, w => w.is_writable())
    }

    fn __repr__(&self) -> String {
        let (bits, offset, value) = (self.bits(), self.offset(), self.load());
        format!("<qsharedmem.AtomicWord u{bits} at offset {offset}: {value}>")
    }
}

/// `_WatchQueue`: one event loop's mailbox of the process-wide watcher thread
/// (`crate::notify::watcher`); `qsharedmem._aio` watches `fileno()` and takes the completed
/// registrations.
#[pyclass(name = "_WatchQueue", module = "qsharedmem", frozen)]
pub(crate) struct PyWatchQueue {
    queue: Arc<WatchQueue>,
}

impl PyWatchQueue {
    fn watch(&self, source: Source) -> PyResult<u64> {
        watcher::watch(&self.queue, source).map_err(PyErr::from)
    }
}

#[pymethods]
impl PyWatchQueue {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(Self {
            queue: WatchQueue::new()?,
        })
    }

    /// The descriptor that is readable while completed registrations wait to be taken.
    fn fileno(&self) -> i32 {
        self.queue.fd()
    }

    /// The ids of the registrations completed since the last call.
    fn take(&self) -> Vec<u64> {
        self.queue.take_done()
    }

    /// Registers a wait for `shm`'s generation to differ from `generation`.
    #[pyo3(signature = (shm, generation, /))]
    fn watch_generation(&self, shm: &Bound<'_, PySharedMemory>, generation: u32) -> PyResult<u64> {
        let notifier = shm.get().notifier(shm.py())?;
        self.watch(Source::Generation {
            notifier,
            generation,
        })
    }

    /// Registers a wait for `event` to be set after `token` was read.
    #[pyo3(signature = (event, token, /))]
    fn watch_event(&self, event: &Bound<'_, PyEvent>, token: u32) -> PyResult<u64> {
        self.watch(Source::Event {
            event: event.get().inner.clone(),
            token,
        })
    }

    /// Registers a wait for `word` to hold another value than `expected`.
    #[pyo3(signature = (word, expected, /))]
    fn watch_word(&self, word: &Bound<'_, PyAtomicWord>, expected: u64) -> PyResult<u64> {
        self.watch(match &word.get().inner {
            Word::U32(w) => Source::Word32 {
                word: w.clone(),
                // The low 32 bits: `_aio` passes a value checked to fit.
                #[allow(clippy::cast_possible_truncation)]
                expected: expected as u32,
            },
            Word::U64(w) => Source::Word64 {
                word: w.clone(),
                expected,
            },
        })
    }

    /// Forgets a registration (completed or not).
    #[staticmethod]
    #[pyo3(signature = (id, /))]
    fn cancel(id: u64) {
        watcher::cancel(id);
    }

    /// How many registrations the watcher holds in this process (tests).
    #[staticmethod]
    fn waiting() -> usize {
        watcher::waiting()
    }
}

/// How many times a sleeping waiter of this process found its word changed only when its
/// 100 ms slice ended, instead of being woken: a diagnostic for tests.
#[pyfunction]
fn _late_wakeups() -> u64 {
    crate::notify::late_wakeups()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_late_wakeups, m)?)?;
    m.add_class::<PyEvent>()?;
    m.add_class::<PyAtomicWord>()?;
    m.add_class::<PyWatchQueue>()?;
    Ok(())
}
