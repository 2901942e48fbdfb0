//! `qsharedmem::exit`: a process that ends with it (no destructors run) and is the last holder
//! of its segments removes them first, however many attachments of them it has. The test runs
//! itself again as the exiting child.

use std::path::Path;
use std::process::Command;

use qsharedmem::{AccessMode, KeyType, SharedMemory};

const CHILD: &str = "QSHAREDMEM_EXIT_TEST_CHILD";

fn names(pid: u32) -> Vec<String> {
    (0..2).map(|n| format!("qsm-rs-{pid}-exit-{n}")).collect()
}

/// In the child: two segments, three attachments each, then `qsharedmem::exit` with the
/// handles still alive (their destructors never run).
fn child(parent: u32) -> ! {
    let mut handles = Vec::new();
    for name in &names(parent) {
        let key = SharedMemory::platform_safe_key(name, KeyType::POSIX_REALTIME);
        let mut creator = SharedMemory::with_key(key.clone());
        creator.create(100, AccessMode::ReadWrite).unwrap();
        let mut writer = SharedMemory::with_key(key.clone());
        writer.attach(AccessMode::ReadWrite).unwrap();
        let mut reader = SharedMemory::with_key(key);
        reader.attach(AccessMode::ReadOnly).unwrap();
        handles.extend([creator, writer, reader]);
    }
    assert!(names(parent)
        .iter()
        .all(|n| Path::new("/dev/shm").join(n).exists()));
    std::mem::forget(handles);
    qsharedmem::exit(7)
}

#[test]
fn the_last_process_removes_its_segments_at_exit_with_several_attachments_each() {
    if let Ok(parent) = std::env::var(CHILD) {
        child(parent.parse().unwrap());
    }
    let me = std::process::id();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_last_process_removes_its_segments_at_exit_with_several_attachments_each",
            "--nocapture",
        ])
        .env(CHILD, me.to_string())
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(7),
        "the child exits through qsharedmem::exit"
    );
    for name in names(me) {
        for file in [name.clone(), format!("{name}.qsm"), format!("sem.{name}")] {
            assert!(
                !Path::new("/dev/shm").join(&file).exists(),
                "{file} must be removed at exit"
            );
        }
    }
}
