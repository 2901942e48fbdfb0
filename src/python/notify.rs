//! `QSharedMemory`'s wait/notify, `qsharedmem.Event`, `qsharedmem.AtomicWord` and the asyncio
//! watcher's mailbox (`_WatchQueue`) over the core's [`crate::notify`].
//!
//! Conversion only: waits run detached from the interpreter, with signal handlers running
//! between slices (Ctrl-C works); a wait whose answer is known already returns without
//! releasing the GIL. The `a*` coroutines are written in Python (`qsharedmem._aio`); the
//! methods here hand over to it.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

use super::convert::{detached_interruptible, timeout};
use super::errors::to_py_err;
use super::shared_memory::PySharedMemory;
use crate::handle::Handle;
use crate::notify::watcher::{self, Source, WatchQueue};
use crate::notify::{AtomicWord, Event, EventId, NotifyError, WaitFor, DEFAULT_SPIN};

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
fn wait_for(wait: Option<&Bound<'_, PyAny>>, spin: Option<&Bound<'_, PyAny>>) -> PyResult<WaitFor> {
    let spin = match spin.filter(|s| !s.is_none()) {
        None => DEFAULT_SPIN,
        Some(s) => timeout(Some(s))?.unwrap_or(Duration::from_secs(3600)),
    };
    Ok(WaitFor::at_most(timeout(wait)?).spinning(spin))
}

/// A generation (or any 32-bit word value) from Python: 0 to 2**32 - 1.
fn word32(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u32> {
    value
        .extract::<u32>()
        .map_err(|_| PyOverflowError::new_err(format!("{what} must be an int from 0 to 2**32 - 1")))
}

/// Runs a wait whose outcome is `Ok(true)` (done), `Ok(false)` (timed out), detached.
fn waiting<F>(py: Python<'_>, wait: F) -> PyResult<bool>
where
    F: FnOnce(&mut dyn FnMut() -> bool) -> Result<bool, NotifyError> + Send,
{
    detached_interruptible(py, wait)?.map_err(|e| notify_err(py, e))
}

// ---------------------------------------------------------------------------------------------
// QSharedMemory's methods (called from its #[pymethods]).

pub(crate) fn generation(py: Python<'_>, handle: &Handle) -> PyResult<u32> {
    handle
        .notifier()
        .map(|n| n.generation())
        .map_err(|e| notify_err(py, e))
}

pub(crate) fn wait_changed(
    py: Python<'_>,
    handle: &Handle,
    generation: &Bound<'_, PyAny>,
    wait: Option<&Bound<'_, PyAny>>,
    spin: Option<&Bound<'_, PyAny>>,
) -> PyResult<bool> {
    let generation = word32(generation, "generation")?;
    let how = wait_for(wait, spin)?;
    let notifier = handle.notifier().map_err(|e| notify_err(py, e))?;
    if notifier.generation() != generation {
        return Ok(true);
    }
    if how.timeout == Some(Duration::ZERO) {
        return Ok(false);
    }
    waiting(py, |interrupt| {
        notifier.wait_changed_with(generation, how, interrupt)
    })
}

pub(crate) fn notify(py: Python<'_>, handle: &Handle, all: bool) -> PyResult<u32> {
    let notifier = handle.notifier().map_err(|e| notify_err(py, e))?;
    Ok(if all {
        notifier.notify_all()
    } else {
        notifier.notify()
    })
}

pub(crate) fn event(py: Python<'_>, handle: &Handle, id: &Bound<'_, PyAny>) -> PyResult<PyEvent> {
    let found = if let Ok(name) = id.cast::<PyString>() {
        handle.event(EventId::Name(name.to_str()?))
    } else if id.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(
            "event() takes a name (str) or an index (int), not bool",
        ));
    } else if let Ok(index) = id.extract::<i64>() {
        let index = usize::try_from(index).map_err(|_| {
            PyValueError::new_err(format!("event index {index} is out of range (0 to 31)"))
        })?;
        handle.event(EventId::Index(index))
    } else {
        return Err(PyTypeError::new_err(format!(
            "event() takes a name (str) or an index (int), not {}",
            id.get_type().name()?
        )));
    };
    found
        .map(|inner| PyEvent { inner })
        .map_err(|e| notify_err(py, e))
}

pub(crate) fn atomic(
    py: Python<'_>,
    handle: &Handle,
    offset: &Bound<'_, PyAny>,
    bits: u32,
) -> PyResult<PyAtomicWord> {
    let offset: i64 = offset
        .extract()
        .map_err(|_| PyTypeError::new_err("the offset must be an int"))?;
    let offset = usize::try_from(offset)
        .map_err(|_| PyValueError::new_err(format!("offset {offset} is negative")))?;
    let inner = if bits == 32 {
        handle.atomic_word::<u32>(offset).map(Word::U32)
    } else {
        handle.atomic_word::<u64>(offset).map(Word::U64)
    };
    inner
        .map(|inner| PyAtomicWord { inner })
        .map_err(|e| notify_err(py, e))
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

/// `_try_lock(record_busy=False)`: see `Handle::try_lock_for_task`; True taken, False busy,
/// None failed (error() says why).
pub(crate) fn try_lock_for_task(handle: &Handle, record_busy: bool) -> Option<bool> {
    match handle.try_lock_for_task(record_busy) {
        Ok(Some(_)) => Some(true),
        Ok(None) => Some(false),
        Err(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Event

/// `qsharedmem.Event`: one of a segment's 32 events, shared by every process attached (see
/// `QSharedMemory.event`).
#[pyclass(name = "Event", module = "qsharedmem", frozen)]
pub(crate) struct PyEvent {
    inner: Event,
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

    /// `wait(timeout=None, *, spin=None) -> bool`: True once the event is set (also if a
    /// `set()` was undone by a `clear()` before this waiter woke), False on timeout.
    #[pyo3(signature = (timeout = None, *, spin = None))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
        spin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let how = wait_for(timeout, spin)?;
        if self.inner.is_set() {
            return Ok(true);
        }
        if how.timeout == Some(Duration::ZERO) {
            return Ok(false);
        }
        let event = &self.inner;
        waiting(py, |interrupt| event.wait_with(how, interrupt))
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

// ---------------------------------------------------------------------------------------------
// AtomicWord

#[derive(Clone)]
enum Word {
    U32(AtomicWord<u32>),
    U64(AtomicWord<u64>),
}

/// `qsharedmem.AtomicWord`: an aligned 32- or 64-bit word of a segment's data, used atomically
/// (see `QSharedMemory.atomic_u32`).
#[pyclass(name = "AtomicWord", module = "qsharedmem", frozen)]
pub(crate) struct PyAtomicWord {
    inner: Word,
}

impl PyAtomicWord {
    fn width(&self) -> u32 {
        match self.inner {
            Word::U32(_) => 32,
            Word::U64(_) => 64,
        }
    }

    /// A value for this word: 0 to 2**bits - 1.
    fn value(&self, value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
        let bits = self.width();
        let too_big = || {
            PyOverflowError::new_err(format!(
                "{what} must be an int from 0 to 2**{bits} - 1 for a {bits}-bit word"
            ))
        };
        let v: u64 = value.extract().map_err(|_| too_big())?;
        if bits == 32 && v > u64::from(u32::MAX) {
            return Err(too_big());
        }
        Ok(v)
    }

    /// `delta` for add(): -(2**bits - 1) to 2**bits - 1, as the two's complement to add.
    fn delta(&self, delta: &Bound<'_, PyAny>) -> PyResult<u64> {
        let bits = self.width();
        let wide: i128 = delta
            .extract()
            .map_err(|_| PyOverflowError::new_err("delta out of range"))?;
        let limit = (1i128 << bits) - 1;
        if wide.abs() > limit {
            return Err(PyOverflowError::new_err(format!(
                "delta must be between -(2**{bits} - 1) and 2**{bits} - 1"
            )));
        }
        // Two's complement modulo 2**bits: adding it wraps to the subtraction.
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
        Ok((wide.rem_euclid(1i128 << bits)) as u64)
    }
}

#[pymethods]
impl PyAtomicWord {
    /// `load() -> int`
    fn load(&self) -> u64 {
        match &self.inner {
            Word::U32(w) => u64::from(w.load()),
            Word::U64(w) => w.load(),
        }
    }

    /// `store(value)`; TypeError for a ReadOnly attachment.
    #[pyo3(signature = (value, /))]
    fn store(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = self.value(value, "value")?;
        match &self.inner {
            Word::U32(w) => w.store(narrow(v)),
            Word::U64(w) => w.store(v),
        }
        .map_err(|e| notify_err(py, e))
    }

    /// `add(delta) -> int`: adds (wrapping around; a negative delta subtracts) and returns the
    /// value before.
    #[pyo3(signature = (delta, /))]
    fn add(&self, py: Python<'_>, delta: &Bound<'_, PyAny>) -> PyResult<u64> {
        let d = self.delta(delta)?;
        match &self.inner {
            Word::U32(w) => w.add(narrow(d)).map(u64::from),
            Word::U64(w) => w.add(d),
        }
        .map_err(|e| notify_err(py, e))
    }

    /// `compare_exchange(expected, desired) -> (bool, int)`: stores `desired` if the word
    /// holds `expected`; returns whether it did and the value it held.
    #[pyo3(signature = (expected, desired, /))]
    fn compare_exchange(
        &self,
        py: Python<'_>,
        expected: &Bound<'_, PyAny>,
        desired: &Bound<'_, PyAny>,
    ) -> PyResult<(bool, u64)> {
        let (e, d) = (
            self.value(expected, "expected")?,
            self.value(desired, "desired")?,
        );
        let result = match &self.inner {
            Word::U32(w) => w
                .compare_exchange(narrow(e), narrow(d))
                .map(|r| r.map(u64::from).map_err(u64::from)),
            Word::U64(w) => w.compare_exchange(e, d),
        }
        .map_err(|err| notify_err(py, err))?;
        Ok(match result {
            Ok(seen) => (true, seen),
            Err(seen) => (false, seen),
        })
    }

    /// `wait(expected, timeout=None, *, spin=None) -> bool`: waits while the word holds
    /// `expected`; True once it holds another value, False on timeout.
    #[pyo3(signature = (expected, timeout = None, *, spin = None))]
    fn wait(
        &self,
        py: Python<'_>,
        expected: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
        spin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let e = self.value(expected, "expected")?;
        let how = wait_for(timeout, spin)?;
        if self.load() != e {
            return Ok(true);
        }
        if how.timeout == Some(Duration::ZERO) {
            return Ok(false);
        }
        let word = self.inner.clone();
        waiting(py, move |interrupt| match &word {
            Word::U32(w) => w.wait_with(narrow(e), how, interrupt),
            Word::U64(w) => w.wait_with(e, how, interrupt),
        })
    }

    /// `wake(n=1) -> int`: wakes up to `n` waiters (a huge `n`: all); returns how many.
    #[pyo3(signature = (n = 1))]
    fn wake(&self, n: i64) -> PyResult<u32> {
        if n < 1 {
            return Err(PyValueError::new_err("wake() needs n >= 1"));
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(match &self.inner {
            Word::U32(w) => w.wake(n),
            Word::U64(w) => w.wake(n),
        })
    }

    /// `await await_changed(expected, timeout=None) -> bool`: `wait()` for asyncio.
    #[pyo3(signature = (expected, timeout = None))]
    fn await_changed<'py>(
        slf: &Bound<'py, Self>,
        expected: &Bound<'py, PyAny>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().value(expected, "expected")?;
        aio(slf.py(), "await_word", (slf, expected, timeout))
    }

    /// 32 or 64.
    #[getter]
    fn bits(&self) -> u32 {
        self.width()
    }

    /// The word's offset in the segment's data.
    #[getter]
    fn offset(&self) -> usize {
        match &self.inner {
            Word::U32(w) => w.offset(),
            Word::U64(w) => w.offset(),
        }
    }

    /// Whether writes are refused (the segment is attached ReadOnly).
    #[getter]
    fn readonly(&self) -> bool {
        !match &self.inner {
            Word::U32(w) => w.is_writable(),
            Word::U64(w) => w.is_writable(),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<qsharedmem.AtomicWord u{} at offset {}: {}>",
            self.width(),
            self.offset(),
            self.load()
        )
    }
}

/// The low 32 bits; only called with values checked to fit.
#[allow(clippy::cast_possible_truncation)]
fn narrow(value: u64) -> u32 {
    value as u32
}

// ---------------------------------------------------------------------------------------------
// The watcher's mailbox

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
    fn watch_generation(
        &self,
        py: Python<'_>,
        shm: &Bound<'_, PySharedMemory>,
        generation: u32,
    ) -> PyResult<u64> {
        let notifier = shm
            .get()
            .handle()
            .notifier()
            .map_err(|e| notify_err(py, e))?;
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
                expected: narrow(expected),
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
/// 100 ms slice ended, instead of being woken (0 unless a notifier died or stalled in between):
/// a diagnostic for tests.
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
