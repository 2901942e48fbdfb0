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
//! ```
//! use qsharedmem::{AccessMode, KeyType, SharedMemory};
//!
//! # let name = format!("crate-doc-{}", std::process::id());
//! let key = SharedMemory::platform_safe_key(&name, KeyType::POSIX_REALTIME);
//! let mut shm = SharedMemory::with_key(key);
//! shm.create(4096, AccessMode::ReadWrite)?;
//! let mut guard = shm.lock()?; // RAII; owner_died() if the previous holder crashed
//! guard.as_mut_slice().unwrap()[..5].copy_from_slice(b"hello");
//! assert!(!guard.owner_died());
//! # Ok::<(), qsharedmem::Error>(())
//! ```
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
pub mod system_semaphore;
mod testpoint;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, ErrorKind, Result, SemaphoreError, SemaphoreErrorKind};
pub use key::{IpcObject, KeyType, NativeIpcKey};
pub use lock::LockGuard;
pub use segment::AccessMode;
pub use shared_memory::SharedMemory;
pub use system_semaphore::SystemSemaphore;
