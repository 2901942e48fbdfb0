//! A Rust program that ends with `std::process::exit` (which runs no destructors) as the last
//! user of a segment: what it leaves behind, and the calls that prevent it (README, "Exiting
//! a Rust program"). The program is this test binary run again with `QSM_CHILD_EXIT` set: it
//! creates a segment, does what the mode says, and calls `std::process::exit(0)`.

use std::process::{Command, Stdio};
use std::str::FromStr;

use qsharedmem::{AccessMode, ErrorKind, KeyType, NativeIpcKey, SharedMemory};

const CHILD_ENV: &str = "QSM_CHILD_EXIT";
const TEST_NAME: &str = "the_last_user_exiting_with_process_exit";

/// In the child: `<mode> <key>`. Modes: `exit` (nothing first), `drop` (`drop(shm)` first),
/// `release` (`qsharedmem::exit` instead of `std::process::exit`, with the creating handle and
/// two more attachments alive: no destructor runs).
fn child_main(spec: &str) -> ! {
    let (mode, key) = spec.split_once(' ').expect("mode and key");
    let key = NativeIpcKey::from_str(key).expect("key");
    let mut shm = SharedMemory::with_key(key.clone());
    shm.create(64, AccessMode::ReadWrite).expect("create");
    shm.lock().expect("lock").as_mut_slice().expect("rw")[0] = 0x5A;
    match mode {
        "exit" => {}
        "drop" => drop(shm),
        "release" => {
            let mut writer = SharedMemory::with_key(key.clone());
            writer.attach(AccessMode::ReadWrite).expect("attach");
            let mut reader = SharedMemory::with_key(key);
            reader.attach(AccessMode::ReadOnly).expect("attach");
            // As handles that cannot be reached would be.
            std::mem::forget([shm, writer, reader]);
            qsharedmem::exit(0);
        }
        other => panic!("unknown mode {other}"),
    }
    std::process::exit(0);
}

fn key(key_type: KeyType, mode: &str) -> NativeIpcKey {
    let name = format!(
        "qsm-rs-{}-pexit-{mode}-{}",
        std::process::id(),
        key_type.raw()
    );
    if key_type.is_posix() {
        SharedMemory::platform_safe_key(&name, key_type)
    } else {
        SharedMemory::platform_safe_key(std::env::temp_dir().join(name).to_str().unwrap(), key_type)
    }
}

fn run_child(mode: &str, key: &NativeIpcKey) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture"])
        .env(CHILD_ENV, format!("{mode} {key}"))
        .stdout(Stdio::null()) // the child's test harness lines
        .status()
        .expect("run the child");
    assert!(status.success(), "{mode} {key}: child failed: {status}");
}

/// Whether the child left its segment behind. Attaching to find out makes this process its
/// last user, so the detach removes whatever is left.
fn left_behind(key: &NativeIpcKey) -> bool {
    let mut shm = SharedMemory::with_key(key.clone());
    match shm.attach(AccessMode::ReadWrite) {
        Ok(()) => {
            assert_eq!(
                shm.lock().unwrap().as_slice().unwrap()[0],
                0x5A,
                "{key}: not ours"
            );
            shm.detach().expect("detach");
            true
        }
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("{key}: attach: {e}"),
    }
}

#[test]
fn the_last_user_exiting_with_process_exit() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_main(&spec);
    }
    for key_type in [KeyType::POSIX_REALTIME, KeyType::SYSTEM_V] {
        // Nothing called first: the segment outlives its last user (an orphan, which the next
        // create() reclaims and `qsharedmem gc` removes).
        let orphaned = key(key_type, "exit");
        run_child("exit", &orphaned);
        assert!(
            left_behind(&orphaned),
            "{key_type:?}: exit without drop left nothing?"
        );
        assert!(
            !left_behind(&orphaned),
            "{key_type:?}: the check did not clean up"
        );

        // drop(shm) before exit: the last detach removes it, on both backends.
        let dropped = key(key_type, "drop");
        run_child("drop", &dropped);
        assert!(
            !left_behind(&dropped),
            "{key_type:?}: drop(shm) before exit left it"
        );

        // qsharedmem::exit: removes the POSIX segments this process is the last to hold
        // (data, control block and Qt's semaphore), however many attachments it has; System V
        // segments, which outlive their processes by design, stay as with Qt.
        let released = key(key_type, "release");
        run_child("release", &released);
        if key_type.is_posix() {
            let name = released.native_key().trim_start_matches('/');
            for file in [
                name.to_owned(),
                format!("{name}.qsm"),
                format!("sem.{name}"),
            ] {
                assert!(
                    !std::path::Path::new("/dev/shm").join(&file).exists(),
                    "{file} must be removed at exit"
                );
            }
        }
        assert_eq!(
            left_behind(&released),
            !key_type.is_posix(),
            "{key_type:?}: qsharedmem::exit covers qsharedmem's POSIX segments, not System V"
        );
    }
}
