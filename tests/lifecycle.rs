//! The segment lifecycle through the public Rust API, on every backend: create, attach, share
//! bytes, lock, detach, and destruction by the last detacher.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use qsharedmem::{AccessMode, ErrorKind, KeyType, NativeIpcKey, SharedMemory};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique key of the given type (POSIX, System V 'Q', System V 'T' as in Qt's tests). System
/// V keys live in the test's temporary directory, so nothing depends on `$XDG_RUNTIME_DIR`.
fn unique_key(tag: &str, key_type: KeyType) -> NativeIpcKey {
    let name = format!(
        "qsm-rs-{}-{}-{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    if key_type.is_posix() {
        SharedMemory::platform_safe_key(&name, key_type)
    } else {
        let path = std::env::temp_dir().join(name);
        SharedMemory::platform_safe_key(path.to_str().unwrap(), key_type)
    }
}

const TYPES: [KeyType; 3] = [
    KeyType::POSIX_REALTIME,
    KeyType::SYSTEM_V,
    KeyType::from_raw(b'T' as u16),
];

/// A new segment of `size` bytes under a unique key of `key_type`, created read-write.
fn create(tag: &str, key_type: KeyType, size: usize) -> (NativeIpcKey, SharedMemory) {
    let key = unique_key(tag, key_type);
    let mut creator = SharedMemory::with_key(key.clone());
    creator
        .create(size, AccessMode::ReadWrite)
        .unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
    (key, creator)
}

/// [`create`], and a second handle attached to the segment read-write.
fn create_and_attach(
    tag: &str,
    key_type: KeyType,
    size: usize,
) -> (NativeIpcKey, SharedMemory, SharedMemory) {
    let (key, creator) = create(tag, key_type, size);
    let mut other = SharedMemory::with_key(key.clone());
    other
        .attach(AccessMode::ReadWrite)
        .unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
    (key, creator, other)
}

/// Whether the OS objects of `key` still exist.
fn leftovers(key: &NativeIpcKey) -> bool {
    if key.key_type().is_posix() {
        Path::new("/dev/shm")
            .join(key.native_key().trim_start_matches('/'))
            .exists()
    } else {
        Path::new(key.native_key()).exists()
    }
}

#[test]
fn create_attach_share_and_last_detach_destroys() {
    for key_type in TYPES {
        let key = unique_key("basic", key_type);
        let mut creator = SharedMemory::with_key(key.clone());
        creator
            .create(1000, AccessMode::ReadWrite)
            .unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
        assert_eq!(creator.size(), 1000);
        assert!(creator.error().is_none());
        {
            let mut guard = creator.lock().unwrap();
            assert!(!guard.owner_died());
            guard.as_mut_slice().unwrap()[..3].copy_from_slice(b"abc");
        }
        let mut reader = SharedMemory::with_key(key.clone());
        reader.attach(AccessMode::ReadOnly).unwrap();
        assert_eq!(reader.size(), 1000);
        {
            let mut guard = reader.lock().unwrap();
            assert_eq!(&guard.as_slice().unwrap()[..3], b"abc");
            assert!(guard.as_mut_slice().is_none(), "read-only attachment");
        }
        creator.detach().unwrap();
        assert!(
            leftovers(&key),
            "{key_type:?}: still attached by the reader"
        );
        let mut again = SharedMemory::with_key(key.clone());
        assert_eq!(
            again.create(10, AccessMode::ReadWrite).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        reader.detach().unwrap();
        assert!(
            !leftovers(&key),
            "{key_type:?}: the last detach must destroy the segment"
        );
        let mut gone = SharedMemory::with_key(key.clone());
        assert_eq!(
            gone.attach(AccessMode::ReadWrite).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        drop(gone);
        drop(again);
        assert!(
            !leftovers(&key),
            "{key_type:?}: failed attempts leave nothing behind"
        );
    }
}

#[test]
fn qt_error_texts_for_common_failures() {
    let mut fresh = SharedMemory::new();
    let e = fresh.lock().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LockError);
    assert_eq!(e.message(), "QSharedMemory::lock: unable to lock");
    // Qt's semaphore kept the error of that lock() on the empty key: attach() reports it (as
    // PySide6 does), where a fresh handle's attach() reports the segment's empty key.
    let e = fresh.attach(AccessMode::ReadWrite).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyError);
    assert_eq!(
        e.message(),
        "QSharedMemoryPrivate::initKey: unable to set key on lock (QSystemSemaphore::handle: key is empty)"
    );
    let e = SharedMemory::new()
        .attach(AccessMode::ReadWrite)
        .unwrap_err();
    assert_eq!(e.message(), "QSharedMemory::handle: key is empty");
    let e = fresh.create(10, AccessMode::ReadWrite).unwrap_err();
    assert_eq!(
        e.message(),
        "QSharedMemoryPrivate::initKey: unable to set key on lock (QSystemSemaphore::handle: key is empty)"
    );

    let key = unique_key("missing", KeyType::POSIX_REALTIME);
    let mut shm = SharedMemory::with_key(key);
    let e = shm.attach(AccessMode::ReadWrite).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(
        e.message(),
        "QSharedMemory::attach (shm_open): doesn't exist"
    );
    assert_eq!(shm.error_string(), e.message());
    let e = shm.create(0, AccessMode::ReadWrite).unwrap_err();
    assert_eq!(
        e.message(),
        "QSharedMemory::create: create size is less then 0"
    );

    let mut slashed = SharedMemory::with_key(NativeIpcKey::new("/a/b", KeyType::POSIX_REALTIME));
    let e = slashed.create(10, AccessMode::ReadWrite).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownError);
    assert_eq!(
        e.message(),
        "QSharedMemoryPrivate::initKey: unable to set key on lock (QSystemSemaphore::handle: unknown error: Invalid argument)"
    );
}

#[test]
fn detach_while_locked_releases_and_views_outlive_detach() {
    for key_type in TYPES {
        let (key, mut a) = create("views", key_type, 64);
        let keep = a.attachment().unwrap().clone();
        a.lock_with(None, &mut || false).unwrap();
        a.detach().unwrap();
        assert!(!a.is_locked());
        // The attachment (a Python view, say) keeps the memory mapped and the segment alive.
        assert!(leftovers(&key));
        let mut b = SharedMemory::with_key(key.clone());
        b.attach(AccessMode::ReadWrite).unwrap();
        let mut guard = b.lock_timeout(std::time::Duration::from_secs(5)).unwrap();
        guard.as_mut_slice().unwrap()[0] = 7;
        drop(guard);
        assert_eq!(unsafe_free_read(&keep), 7);
        drop(keep);
        b.detach().unwrap();
        assert!(!leftovers(&key), "{key_type:?}");
    }
}

fn unsafe_free_read(att: &qsharedmem::segment::Attachment) -> u8 {
    let mut out = [0u8];
    // A raw pointer read through the public API is the caller's business; the test reads one
    // byte while nobody writes.
    out[0] = unsafe_read(att.as_ptr());
    out[0]
}

#[allow(unsafe_code)]
fn unsafe_read(p: *mut u8) -> u8 {
    // SAFETY: `p` points into a live mapping of at least one byte, and no writer is active.
    unsafe { p.read_volatile() }
}

#[test]
fn relock_through_second_handle_on_same_thread_fails_instead_of_hanging() {
    for key_type in TYPES {
        let (key, mut a, mut b) = create_and_attach("relock", key_type, 16);
        a.lock_with(None, &mut || false).unwrap();
        let e = b.lock_with(None, &mut || false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LockError, "{key_type:?}");
        assert!(e.message().contains("already holds"), "{}", e.message());
        a.unlock().unwrap();
        assert!(b
            .lock_with(Some(std::time::Duration::from_secs(1)), &mut || false)
            .is_ok());
        b.unlock().unwrap();
        drop(a);
        drop(b);
        assert!(!leftovers(&key), "{key_type:?}");
    }
}

#[test]
fn lock_timeout_on_a_held_lock() {
    for key_type in TYPES {
        // Attach first: like Qt's, a System V attach() takes the lock and would wait for it.
        let (key, mut a, mut b) = create_and_attach("timeout", key_type, 16);
        a.lock_with(None, &mut || false).unwrap();
        let b = std::thread::spawn(move || {
            let e = b
                .lock_with(Some(std::time::Duration::from_millis(50)), &mut || false)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::LockError);
            assert_eq!(b.error().unwrap().kind(), ErrorKind::LockError);
            b
        })
        .join()
        .unwrap();
        a.unlock().unwrap();
        drop(a);
        drop(b);
        assert!(!leftovers(&key), "{key_type:?}");
    }
}

#[test]
fn handles_and_keys_are_send_and_sync_guards_stay_on_their_thread() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SharedMemory>();
    send_sync::<NativeIpcKey>();
    send_sync::<qsharedmem::Error>();
    // LockGuard is !Send: checked by the compile-fail doctest on `LockGuard`.
}

/// Writes `bytes` at the start of the segment, under the lock.
fn put(shm: &mut SharedMemory, bytes: &[u8]) {
    shm.lock().unwrap().as_mut_slice().unwrap()[..bytes.len()].copy_from_slice(bytes);
}

/// The first `n` bytes of the segment, read under the lock.
fn get(shm: &mut SharedMemory, n: usize) -> Vec<u8> {
    shm.lock().unwrap().as_slice().unwrap()[..n].to_vec()
}

#[test]
fn remove_takes_the_name_now_and_attachments_keep_working() {
    for key_type in TYPES {
        let (key, mut creator) = create("remove", key_type, 100);
        put(&mut creator, b"abc");
        let mut reader = SharedMemory::with_key(key.clone());
        reader.attach(AccessMode::ReadOnly).unwrap();

        creator
            .remove()
            .unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
        assert!(creator.error().is_none());
        if key_type.is_posix() {
            assert!(!leftovers(&key), "the name is gone at once");
        }
        let mut late = SharedMemory::with_key(key.clone());
        assert_eq!(
            late.attach(AccessMode::ReadWrite).unwrap_err().kind(),
            ErrorKind::NotFound,
            "{key_type:?}: nobody can attach by key any more"
        );
        // Both attachments still share the memory.
        put(&mut creator, b"xyz");
        assert_eq!(get(&mut reader, 3), b"xyz", "{key_type:?}");

        // A second removal of the same segment, from any handle, is NotFound.
        let e = reader.remove().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{key_type:?}");
        assert_eq!(e.message(), "QSharedMemory::remove: doesn't exist");
        assert_eq!(reader.error().unwrap().kind(), ErrorKind::NotFound);

        // The key is free for a new segment, which the old handles never touch.
        let mut successor = SharedMemory::with_key(key.clone());
        successor.create(10, AccessMode::ReadWrite).unwrap();
        put(&mut successor, b"new");
        assert_eq!(
            get(&mut reader, 3),
            b"xyz",
            "{key_type:?}: still the old segment"
        );
        creator.detach().unwrap();
        reader.detach().unwrap();
        assert_eq!(
            creator.remove().unwrap_err().kind(),
            ErrorKind::NotFound,
            "{key_type:?}: its segment was removed already"
        );
        let mut check = SharedMemory::with_key(key.clone());
        check.attach(AccessMode::ReadOnly).unwrap();
        assert_eq!(get(&mut check, 3), b"new", "{key_type:?}");
        drop(check);
        drop(successor);
        assert!(!leftovers(&key), "{key_type:?}: the last detach cleans up");
    }
}

#[test]
fn a_removed_segment_is_cleaned_up_by_its_last_detach() {
    for key_type in TYPES {
        let (key, mut creator, mut other) = create_and_attach("remove-last", key_type, 100);
        other.remove().unwrap();
        creator.detach().unwrap();
        assert_eq!(get(&mut other, 1), [0]);
        other.detach().unwrap();
        assert!(
            !leftovers(&key),
            "{key_type:?}: no key file, no segment, no lock left"
        );
        // Removing once more, attached or not, is NotFound.
        assert_eq!(other.remove().unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(creator.remove().unwrap_err().kind(), ErrorKind::NotFound);
    }
}

#[test]
fn remove_after_the_last_detach_has_nothing_left_to_do() {
    for key_type in TYPES {
        let (key, mut shm) = create("close-unlink", key_type, 10);
        shm.detach().unwrap();
        assert!(!leftovers(&key));
        // multiprocessing's `close(); unlink()`: the close destroyed the segment already.
        shm.remove().unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
        // ... and a second unlink() is an error, as in multiprocessing.
        assert_eq!(shm.remove().unwrap_err().kind(), ErrorKind::NotFound);
        assert!(!leftovers(&key), "{key_type:?}");
    }
}

#[test]
fn remove_by_key_without_attaching() {
    for key_type in TYPES {
        let key = unique_key("remove-by-key", key_type);
        let mut never = SharedMemory::with_key(key.clone());
        let e = never.remove().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{key_type:?}");
        assert!(
            !leftovers(&key),
            "{key_type:?}: a failed remove leaves nothing"
        );

        let mut creator = SharedMemory::with_key(key.clone());
        creator.create(10, AccessMode::ReadWrite).unwrap();
        let mut remover = SharedMemory::with_key(key.clone());
        remover
            .remove()
            .unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
        assert!(!remover.is_attached());
        assert_eq!(
            SharedMemory::with_key(key.clone())
                .attach(AccessMode::ReadOnly)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        assert_eq!(remover.remove().unwrap_err().kind(), ErrorKind::NotFound);
        put(&mut creator, b"still");
        drop(creator);
        assert!(!leftovers(&key), "{key_type:?}");
    }
}

#[test]
fn remove_unlinks_a_foreign_posix_segment() {
    let key = unique_key("foreign", KeyType::POSIX_REALTIME);
    let path = Path::new("/dev/shm").join(key.native_key().trim_start_matches('/'));
    std::fs::write(&path, [7u8; 100]).unwrap();
    let mut shm = SharedMemory::with_key(key.clone());
    shm.attach(AccessMode::ReadWrite).unwrap();
    assert_eq!(shm.size(), 100, "a foreign segment's size is its file size");
    shm.detach().unwrap();
    assert!(path.exists(), "detach never unlinks a foreign segment");
    shm.remove().unwrap();
    assert!(!path.exists());
    assert_eq!(
        shm.remove().unwrap_err().kind(),
        ErrorKind::NotFound,
        "nothing destroyed a foreign segment but this remove()"
    );

    std::fs::write(&path, [1u8; 10]).unwrap();
    let mut attached = SharedMemory::with_key(key.clone());
    attached.attach(AccessMode::ReadOnly).unwrap();
    attached.remove().unwrap();
    assert!(!path.exists());
    assert_eq!(
        get(&mut attached, 2),
        [1, 1],
        "the mapping outlives the name"
    );
    drop(attached);
    drop(shm);
    let sem =
        Path::new("/dev/shm").join(format!("sem.{}", key.native_key().trim_start_matches('/')));
    assert!(
        !sem.exists(),
        "Qt's lock semaphore for the key is cleaned up"
    );
}

#[test]
fn concurrent_removes_of_one_segment_unlink_exactly_once() {
    for round in 0..20 {
        let key = unique_key("race", KeyType::POSIX_REALTIME);
        let mut creator = SharedMemory::with_key(key.clone());
        creator.create(10, AccessMode::ReadWrite).unwrap();
        let barrier = std::sync::Barrier::new(3);
        let outcomes: Vec<bool> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..3)
                .map(|_| {
                    let key = key.clone();
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let mut shm = SharedMemory::with_key(key);
                        shm.attach(AccessMode::ReadWrite).unwrap();
                        barrier.wait();
                        shm.remove().is_ok()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(
            outcomes.iter().filter(|ok| **ok).count(),
            1,
            "round {round}: {outcomes:?}"
        );
        drop(creator);
        assert!(!leftovers(&key));
    }
}

#[test]
fn a_read_only_creator_is_counted_like_everyone_else() {
    // Its lock used to sit on the description its control page is mapped from, which outlived
    // the attachment and made its own last detach fail to see itself as the last.
    for key_type in TYPES {
        let key = unique_key("ro-creator", key_type);
        let mut creator = SharedMemory::with_key(key.clone());
        creator.create(10, AccessMode::ReadOnly).unwrap();
        let mut writer = SharedMemory::with_key(key.clone());
        writer.attach(AccessMode::ReadWrite).unwrap();
        put(&mut writer, b"w");
        writer.detach().unwrap();
        assert!(leftovers(&key), "{key_type:?}: the creator still holds it");
        assert_eq!(get(&mut creator, 1), b"w");
        creator.detach().unwrap();
        assert!(
            !leftovers(&key),
            "{key_type:?}: the last detach destroys it"
        );
    }
}

#[test]
fn a_second_remove_from_a_detached_handle_is_not_found() {
    for key_type in TYPES {
        let (key, mut creator, mut other) = create_and_attach("remove-twice", key_type, 10);
        other.detach().unwrap(); // not the last: the creator is still attached
        creator
            .remove()
            .unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
        // This process removed the name already: a second remove finds nothing.
        let e = other.remove().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{key_type:?}");
        assert_eq!(other.error().unwrap().kind(), ErrorKind::NotFound);
        assert_eq!(creator.remove().unwrap_err().kind(), ErrorKind::NotFound);
        creator.detach().unwrap();
        assert!(!leftovers(&key), "{key_type:?}");
        assert_eq!(creator.remove().unwrap_err().kind(), ErrorKind::NotFound);
    }
}

#[test]
fn remove_after_the_segment_went_with_a_last_detach_succeeds_once() {
    for key_type in TYPES {
        let (key, mut first, mut last) = create_and_attach("remove-after-last", key_type, 10);
        first.detach().unwrap();
        last.detach().unwrap(); // destroys the segment and its name
        assert!(!leftovers(&key), "{key_type:?}");
        // multiprocessing's close(); unlink(): what unlink() was for has happened.
        first
            .remove()
            .unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
        assert_eq!(first.remove().unwrap_err().kind(), ErrorKind::NotFound);
        last.remove()
            .unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
    }
}
