//! Processes and threads: pids, liveness, the calling thread's id, and fork detection.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Once;

/// This process's pid, once asked for (0: not yet, or cleared by a fork).
static PID: AtomicI32 = AtomicI32::new(0);

/// The calling process's pid (`getpid`).
///
/// Cached: glibc no longer caches it, and a system call costs more than the whole uncontended
/// lock this is recorded for. The fork handler clears the cache in the child.
#[must_use]
pub fn pid() -> i32 {
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // Installs the fork handler that clears the cache before the cache is filled.
    let _ = fork_generation();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    PID.store(pid, Ordering::Relaxed);
    pid
}

thread_local! {
    /// The calling thread's id and the fork generation it was read in (0: not read yet).
    static THREAD_ID: Cell<(u64, i32)> = const { Cell::new((0, 0)) };
}

/// The calling thread's kernel thread id (`gettid`).
///
/// Cached per thread (the lock records it on every acquisition); a fork gives the child's
/// thread a new id, so the cache is keyed by the fork generation.
#[must_use]
pub fn thread_id() -> i32 {
    let generation = fork_generation();
    THREAD_ID
        .try_with(|cache| match cache.get() {
            (cached_generation, tid) if tid != 0 && cached_generation == generation => tid,
            _ => {
                let tid = gettid();
                cache.set((generation, tid));
                tid
            }
        })
        // During thread teardown the cache is gone; ask the kernel.
        .unwrap_or_else(|_| gettid())
}

fn gettid() -> i32 {
    // Through syscall(2), not libc::gettid: glibc exports gettid only since 2.30, and the wheel
    // is built for manylinux_2_17, where the unversioned reference would fail at import.
    // SAFETY: SYS_gettid takes no arguments, has no preconditions and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    // A thread id is a pid_t, which the kernel returns widened to a long.
    tid as i32
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

    #[test]
    fn cached_ids_match_the_kernel() {
        assert_eq!(pid(), pid());
        // SAFETY: getpid has no preconditions.
        assert_eq!(pid(), unsafe { libc::getpid() });
        assert_eq!(thread_id(), gettid());
        let main = thread_id();
        let other = std::thread::spawn(|| (thread_id(), gettid()))
            .join()
            .unwrap();
        assert_eq!(other.0, other.1);
        assert_ne!(other.0, main);
    }

    #[test]
    fn a_forked_child_sees_its_own_ids() {
        let (parent_pid, parent_tid) = (pid(), thread_id());
        // SAFETY: the child only calls getpid/gettid, reads atomics and a thread-local that this
        // thread already initialised, and leaves with _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            let ok = pid() != parent_pid
                // SAFETY: getpid has no preconditions.
                && pid() == unsafe { libc::getpid() }
                && thread_id() != parent_tid
                && thread_id() == gettid();
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `child` is our child process; `status` is valid for writes.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
