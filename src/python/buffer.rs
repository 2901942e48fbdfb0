//! The buffer exporter behind `data()` and `constData()`.
//!
//! A `SegmentBuffer` owns a reference to the attachment (the mapping plus whatever keeps the
//! attachment counted). Every `memoryview` made from it holds a strong reference to the
//! exporter (`Py_buffer.obj`), so the memory stays mapped for as long as any view exists, even
//! after `detach()`: a use-after-unmap from Python is impossible by construction.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyMemoryView;

use crate::segment::Attachment;

/// Exports one attachment's data through the buffer protocol.
#[pyclass(frozen, module = "qsharedmem", name = "_SegmentBuffer")]
pub(crate) struct SegmentBuffer {
    /// Always `Some` until the exporter is dropped.
    attachment: Option<Arc<Attachment>>,
    read_only: bool,
}

impl SegmentBuffer {
    /// A `memoryview` of the attachment's data; read-only if `read_only` or if the attachment
    /// is mapped read-only.
    pub(crate) fn memoryview(
        py: Python<'_>,
        attachment: Arc<Attachment>,
        read_only: bool,
    ) -> PyResult<Bound<'_, PyMemoryView>> {
        let read_only = read_only || !attachment.is_writable();
        let exporter = Bound::new(
            py,
            Self {
                attachment: Some(attachment),
                read_only,
            },
        )?;
        PyMemoryView::from(exporter.as_any())
    }
}

#[pymethods]
impl SegmentBuffer {
    /// `bf_getbuffer`.
    ///
    /// # Safety
    /// `view` must be a valid `Py_buffer` to fill: CPython's buffer protocol guarantees it.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let attachment = this
            .attachment
            .as_ref()
            .ok_or_else(|| PyBufferError::new_err("released"))?;
        let len = ffi::Py_ssize_t::try_from(attachment.size())
            .map_err(|_| PyBufferError::new_err("segment too large for a buffer"))?;
        // SAFETY: `view` is the non-null Py_buffer CPython passes to bf_getbuffer.
        // `PyBuffer_FillInfo` stores a new strong reference to `slf` in `view.obj`, which keeps
        // this exporter — and through `self.attachment` the mapping — alive until the buffer is
        // released; `buf`/`len` describe the attachment's data, which lies inside its mapping.
        // It refuses a writable request on read-only data with BufferError.
        let ret = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                attachment.as_ptr().cast::<c_void>(),
                len,
                c_int::from(this.read_only),
                flags,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(PyErr::fetch(slf.py()))
        }
    }
}

impl Drop for SegmentBuffer {
    fn drop(&mut self) {
        if let Some(attachment) = self.attachment.take() {
            if Arc::strong_count(&attachment) == 1 {
                // The last view of a detached handle: this detaches for real, which may wait
                // briefly for the System V lock, so the GIL is released meanwhile.
                Python::attach(|py| py.detach(move || drop(attachment)));
            }
        }
    }
}
