//! The PyO3 binding, compiled with the `python` feature: converts arguments and results,
//! releases the GIL around waits, maps errors, exports buffers. No shared-memory logic lives
//! here; it is all in the core.

use pyo3::prelude::*;

mod buffer;
mod convert;
mod enums;
mod errors;
mod fast;
mod inspect;
mod key;
mod notify;
mod shared_memory;
mod system_semaphore;

/// The extension module `qsharedmem._qsharedmem`.
#[pymodule]
#[pyo3(name = "_qsharedmem")]
fn qsharedmem_extension(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Everything Python-side the extension uses, once, now: no call imports anything later.
    enums::init(m.py())?;
    errors::init(m.py())?;
    key::register(m)?;
    shared_memory::register(m)?;
    system_semaphore::register(m)?;
    notify::register(m)?;
    inspect::register(m)?;
    Ok(())
}
