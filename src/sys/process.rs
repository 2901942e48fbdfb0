//! Processes and threads: pids, liveness, the calling thread's id, and fork detection.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Once;

/// This process's pid, once asked for (0: not yet, or cleared by a fork).
static PID: AtomicI32 = AtomicI32::new(0);

/// The calling process's pid (`getpid`).
///
/// Cached: glibc no longer caches it, and a system call costs more than the whole uncontended
/// lock this is recorded for. The fork handler clears the cache in the child.
#[must_use]
#[inline]
pub fn pid() -> i32 {
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    pid_uncached()
}

#[cold]
#[inline(never)]
fn pid_uncached() -> i32 {
    // Installs the fork handler that clears the cache before the cache is filled.
    let _ = fork_generation();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    PID.store(pid, Ordering::Relaxed);
    pid
}

thread_local! {
    /// The calling thread's token; see [`thread_token`].
    static THREAD_TOKEN: ThreadToken = ThreadToken::new();
}

/// A cheap identity of the calling thread, for "is this the thread that took it?" checks on
/// hot paths: `pthread_self()`, one load from the thread's control block. Unique among the
/// threads alive at any moment (a new thread may reuse an ended one's).
#[must_use]
#[inline]
pub fn thread_self() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// A number that no other thread of this process ever had (unlike thread ids, which the
/// kernel and the C library reuse), with a notice when its thread ends: see
/// [`set_thread_exit_hook`].
struct ThreadToken(u64);

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
static THREAD_EXIT_HOOK: std::sync::OnceLock<fn(u64)> = std::sync::OnceLock::new();

impl ThreadToken {
    fn new() -> Self {
        Self(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed))
    }
}

impl Drop for ThreadToken {
    fn drop(&mut self) {
        if let Some(hook) = THREAD_EXIT_HOOK.get() {
            hook(self.0);
        }
    }
}

/// The calling thread's token: unique for the life of the process. 0 while the thread is
/// ending (its token is gone then).
#[must_use]
pub fn thread_token() -> u64 {
    THREAD_TOKEN.try_with(|token| token.0).unwrap_or(0)
}

/// Sets the function called with a thread's token when that thread ends (only for threads that
/// asked for their token). Set once; later calls are ignored.
pub fn set_thread_exit_hook(hook: fn(u64)) {
    let _ = THREAD_EXIT_HOOK.set(hook);
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
    // Async-signal-safe: atomic operations only.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    PID.store(0, Ordering::Relaxed);
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

/// [`fork_generation`] without making sure the fork handler is registered: for hot paths of
/// objects that already called [`fork_generation`] (every handle does when it is made).
#[inline]
#[must_use]
pub fn fork_generation_cached() -> u64 {
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
    }

    #[test]
    fn thread_identities_differ_between_threads_and_tokens_are_never_reused() {
        assert_eq!(pid(), pid());
        // SAFETY: getpid has no preconditions.
        assert_eq!(pid(), unsafe { libc::getpid() });
        let (main_self, main_token) = (thread_self(), thread_token());
        assert_eq!(thread_token(), main_token);
        let other = std::thread::spawn(|| (thread_self(), thread_token()))
            .join()
            .unwrap();
        assert_ne!(other.0, main_self);
        assert_ne!(other.1, main_token);
        let later = std::thread::spawn(thread_token).join().unwrap();
        assert!(later != other.1 && later != main_token);
    }

    #[test]
    fn a_forked_child_sees_its_own_pid() {
        let parent_pid = pid();
        // SAFETY: the child only calls getpid, reads atomics, and leaves with _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            // SAFETY: getpid has no preconditions.
            let ok = pid() != parent_pid && pid() == unsafe { libc::getpid() };
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `child` is our child process; `status` is valid for writes.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
