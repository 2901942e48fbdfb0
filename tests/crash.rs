//! Crash behaviour through the Rust API, with real processes: a child takes the lock and is
//! SIGKILLed while holding it; the parent's next lock succeeds and its guard reports that the
//! owner died — once. The child is this test binary run again with `QSM_CHILD` set.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use qsharedmem::{AccessMode, KeyType, NativeIpcKey, SharedMemory};

const CHILD_ENV: &str = "QSM_CHILD_HOLD_LOCK";

/// In the child: attach, lock, write a marker, announce, and wait to be killed.
fn child_main(key: &str) -> ! {
    let key = NativeIpcKey::from_str(key).expect("key");
    let mut shm = SharedMemory::with_key(key);
    shm.attach(AccessMode::ReadWrite).expect("attach");
    let mut guard = shm.lock().expect("lock");
    guard.as_mut_slice().expect("rw")[0] = 0xAA;
    println!("LOCKED");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn unique_key(key_type: KeyType) -> NativeIpcKey {
    let name = format!("qsm-rs-{}-crash-{}", std::process::id(), key_type.raw());
    if key_type.is_posix() {
        SharedMemory::platform_safe_key(&name, key_type)
    } else {
        SharedMemory::platform_safe_key(std::env::temp_dir().join(name).to_str().unwrap(), key_type)
    }
}

#[test]
fn killed_holder_is_reported_once_by_the_next_guard() {
    if let Ok(key) = std::env::var(CHILD_ENV) {
        child_main(&key);
    }
    for key_type in [KeyType::POSIX_REALTIME, KeyType::SYSTEM_V] {
        let key = unique_key(key_type);
        let mut shm = SharedMemory::with_key(key.clone());
        shm.create(64, AccessMode::ReadWrite).expect("create");

        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "killed_holder_is_reported_once_by_the_next_guard",
                "--nocapture",
            ])
            .env(CHILD_ENV, key.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains("LOCKED")),
            "{key_type:?}: child never locked"
        );
        // The child holds the lock: a bounded attempt fails...
        assert!(shm.lock_timeout(Duration::from_millis(50)).is_err());
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        // ...and after its death the next lock succeeds and says what happened.
        let guard = shm
            .lock_timeout(Duration::from_secs(10))
            .expect("lock after the holder died");
        assert!(guard.owner_died(), "{key_type:?}: owner death not reported");
        assert_eq!(
            guard.as_slice().unwrap()[0],
            0xAA,
            "{key_type:?}: the holder's write is visible"
        );
        drop(guard);
        let guard = shm.lock().expect("lock again");
        assert!(!guard.owner_died(), "{key_type:?}: reported twice");
        drop(guard);
        shm.detach().expect("detach");
        drop(shm);
        let gone = if key_type.is_posix() {
            !std::path::Path::new("/dev/shm")
                .join(key.native_key().trim_start_matches('/'))
                .exists()
        } else {
            !std::path::Path::new(key.native_key()).exists()
        };
        assert!(gone, "{key_type:?}: the last detach must remove everything");
    }
}
