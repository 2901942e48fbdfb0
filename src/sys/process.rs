//! Processes and threads: pids, liveness, the calling thread's id, and fork detection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// The calling process's pid (`getpid`).
#[must_use]
pub fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The calling thread's kernel thread id (`gettid`).
#[must_use]
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The effective user id (`geteuid`).
#[must_use]
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Whether a process with this pid exists (`kill(pid, 0)`; a process we may not signal still
/// exists). Pids ≤ 0 never name one process and are reported as not alive.
#[must_use]
pub fn is_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is delivered.
    let ret = unsafe { libc::kill(pid, 0) };
    ret == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER_FORK_HANDLER: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: a single atomic increment.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// A number that changes in a child process after every `fork()`. State recorded with one value
/// and checked against a later value tells whether it was inherited through a fork (and so
/// belongs to the parent: its flock, its lock ownership).
#[must_use]
pub fn fork_generation() -> u64 {
    REGISTER_FORK_HANDLER.call_once(|| {
        // SAFETY: the handler is a plain `extern "C" fn` that only performs an atomic
        // increment, which is allowed in a child after fork; the other handlers are NULL.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// Writes `marker` to standard output (unbuffered, one `write`) and stops the calling process
/// with `SIGSTOP`; it continues when it receives `SIGCONT`. For the test hook
/// (`crate::testpoint`), so that a test can kill the process at an exact step.
pub fn stop_self(marker: &str) {
    let bytes = marker.as_bytes();
    let mut written = 0;
    while written < bytes.len() {
        // SAFETY: the pointer and length describe the live, initialised rest of `bytes`.
        let ret = unsafe {
            libc::write(
                libc::STDOUT_FILENO,
                bytes[written..].as_ptr().cast(),
                bytes.len() - written,
            )
        };
        match usize::try_from(ret) {
            Ok(n) if n > 0 => written += n,
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => break,
        }
    }
    // SAFETY: raising a signal on the calling process has no memory-safety preconditions.
    unsafe { libc::raise(libc::SIGSTOP) };
}

/// The user name of `uid` from the password database, if there is an entry.
#[must_use]
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given; getpwuid_r writes only into them.
    let ret = unsafe {
        libc::getpwuid_r(
            uid,
            pwd.as_mut_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if ret != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success `result` points to `pwd`, whose `pw_name` points into `buf`, a valid
    // NUL-terminated string that lives until the end of this function.
    let name = unsafe { std::ffi::CStr::from_ptr((*result).pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_nonsense_is_not() {
        assert!(is_alive(pid()));
        assert!(!is_alive(0));
        assert!(!is_alive(-1));
        assert_eq!(fork_generation(), fork_generation());
        assert!(thread_id() > 0);
    }
}
