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
//! ## Layers
//!
//! Pointing down, no module using one above it:
//!
//! ```text
//! shared_memory, system_semaphore, inspect     the façades: Qt's API, the CLI's survey
//!   handle                                      Qt's state machine, thread-safe; Qt's texts
//!     notify/{waiting,events,words,watcher}     wait/notify, events, atomic words, asyncio's
//!                                               watcher thread
//!     segment/{posix,sysv,sysv_notify,control,registry}   the OS objects and their lifecycle
//!       lock/{robust_mutex,paired,sysv_sem,posix_sem,held}   the lock primitives
//!         key/{qt_url,qt_paths}, error, wait    values, Qt's key rules, waiting in slices
//!           sys/                                the only calls into libc
//! ```
//!
//! ## Ending a program
//!
//! A segment is destroyed by the last detach, which destructors do. `std::process::exit`
//! runs no destructors: a program that is the last user of a segment and leaves that way
//! would leave it behind (the next `create()` of the key reclaims it). Drop the handles first,
//! or end with [`exit`], which removes the segments this process is the last to hold and then
//! calls `std::process::exit`. Leaving through `main`'s return drops everything anyway.
//!
//! ## Soundness
//!
//! `unsafe` code lives in `sys` (each block names its invariant), in the Python binding's
//! buffer export and hot paths, and in [`LockGuard`]'s two slice accessors. What makes the
//! rest safe:
//!
//! * Shared memory that other processes write is only ever seen through types made of atomics
//!   (the control block, the notify words): every cross-process read is an atomic load, and
//!   nothing another process writes there can make a Rust value invalid.
//! * The segment's *data* is handed out as a slice only by a [`LockGuard`], which exists only
//!   while the handle holds the cross-process lock; every cooperating writer writes only under
//!   it. Without the lock there is only [`SharedMemory::as_ptr`], a raw pointer.
//! * A mapping is unmapped only when its last reference goes: memory handed to Python stays
//!   mapped while a view of it exists. A file that shrinks under a mapping turns the lost
//!   pages into private zero pages instead of a `SIGBUS`.
//! * What another process can still do: a process of the same user that writes into a
//!   segment's control block (not its data: Qt and other peers never touch the control block)
//!   can corrupt the robust mutex, and a mutex whose robust-list pointers were overwritten
//!   makes the C library write through them when it is unlocked. Such a process could also
//!   `ptrace` us; this is not defended.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod error;
pub mod handle;
pub mod inspect;
pub mod key;
pub(crate) mod lock;
pub mod notify;
pub mod segment;
mod shared_memory;
mod sys;
pub mod system_semaphore;
mod testpoint;
pub mod wait;

#[cfg(feature = "python")]
mod python;

pub use error::{
    Error, ErrorKind, QtError, QtErrorKind, Result, SemaphoreError, SemaphoreErrorKind,
};
pub use handle::Handle;
pub use key::{IpcObject, KeyType, NativeIpcKey};
pub use notify::{AtomicWord, Event, EventId, Notifier, NotifyError, WaitFor};
pub use segment::{AccessMode, Permissions};
pub use shared_memory::{LockGuard, SharedMemory};
pub use system_semaphore::SystemSemaphore;

/// Ends the process like `std::process::exit(code)`, after removing the segments this process
/// is the last to hold (their destructors would have; `std::process::exit` runs none).
pub fn exit(code: i32) -> ! {
    segment::registry::release_all_at_exit();
    std::process::exit(code)
}
