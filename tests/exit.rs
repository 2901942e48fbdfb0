//! The exit-time release (`segment::release_all_at_exit`, what Python's atexit and
//! multiprocessing's finalizers call): a process that is the last holder of a segment removes
//! it, however many attachments of it the process has. Alone in its test binary, because it
//! releases every attachment of the process.

use std::path::Path;

use qsharedmem::{AccessMode, KeyType, SharedMemory};

#[test]
fn the_last_process_removes_its_segments_at_exit_with_several_attachments_each() {
    let names: Vec<String> = (0..2)
        .map(|n| format!("qsm-rs-{}-exit-{n}", std::process::id()))
        .collect();
    let mut handles = Vec::new();
    for name in &names {
        let key = SharedMemory::platform_safe_key(name, KeyType::POSIX_REALTIME);
        let mut creator = SharedMemory::with_key(key.clone());
        creator.create(100, AccessMode::ReadWrite).unwrap();
        let mut writer = SharedMemory::with_key(key.clone());
        writer.attach(AccessMode::ReadWrite).unwrap();
        let mut reader = SharedMemory::with_key(key);
        reader.attach(AccessMode::ReadOnly).unwrap();
        handles.extend([creator, writer, reader]);
    }
    let file = |name: &String| Path::new("/dev/shm").join(name);
    assert!(names.iter().all(|n| file(n).exists()));

    qsharedmem::segment::release_all_at_exit();
    for name in &names {
        assert!(!file(name).exists(), "{name} must be removed at exit");
    }
    // The attachments stay mapped and usable until the process is gone.
    assert_eq!(handles[0].lock().unwrap().as_slice().unwrap()[0], 0);
    drop(handles);
}
