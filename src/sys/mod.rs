//! The operating-system layer: the only code in the crate that calls libc.
//!
//! Every function here is a thin, safe wrapper over one or a few system calls. Functions return
//! [`Errno`] on failure; the core (`segment`, `lock`, `shared_memory`) decides what a failure
//! means and turns it into Qt's error codes and texts. Every `unsafe` block carries a
//! `// SAFETY:` comment naming the invariant that makes it sound.
//!
//! Only Linux is implemented; the layout keeps one module per OS facility so that other
//! platforms can be added later.
#![allow(unsafe_code)]

mod cvt;
pub mod futex;
pub mod mapping;
pub mod mutex;
pub mod namedsem;
pub mod posix;
pub mod process;
pub mod procfs;
pub mod published;
pub(crate) mod sigbus;
pub mod sysv;
pub mod wakeup;

pub use cvt::{strerror, Errno, SysResult};
