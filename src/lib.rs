//! # qsharedmem
//!
//! Qt 6's `QSharedMemory`, `QNativeIpcKey` and `QSystemSemaphore` for Rust (and, with the
//! `python` feature, for Python), without Qt: the same keys, the same OS objects, the same error
//! codes and texts, so a Rust program, a Python program and a running Qt 6 application that use
//! the same key share the same memory and the same lock.
//!
//! Where Qt is unsafe, this crate is not: a segment is destroyed when the last process detaches
//! (also when processes crash), the lock of a crashed holder is recovered and reported, waits can
//! time out, and a `ReadOnly` attachment can never be written.
//!
//! Layers, pointing down: [`SharedMemory`] (the Qt-shaped handle) → [`segment`] and [`lock`]
//! (the OS objects and their lifecycle) → `sys` (the only code that calls libc).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod error;
pub mod inspect;
pub mod key;
pub mod lock;
pub mod segment;
mod semaphore;
mod shared_memory;
mod sys;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, ErrorKind, Result, SemaphoreError, SemaphoreErrorKind};
pub use key::{IpcObject, KeyType, NativeIpcKey};
pub use lock::LockGuard;
pub use segment::AccessMode;
pub use shared_memory::SharedMemory;
