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
    let e = fresh.attach(AccessMode::ReadWrite).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyError);
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
        let key = unique_key("views", key_type);
        let mut a = SharedMemory::with_key(key.clone());
        a.create(64, AccessMode::ReadWrite).unwrap();
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
        let key = unique_key("relock", key_type);
        let mut a = SharedMemory::with_key(key.clone());
        a.create(16, AccessMode::ReadWrite).unwrap();
        let mut b = SharedMemory::with_key(key.clone());
        b.attach(AccessMode::ReadWrite).unwrap();
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
        let key = unique_key("timeout", key_type);
        let mut a = SharedMemory::with_key(key.clone());
        a.create(16, AccessMode::ReadWrite).unwrap();
        // Attach first: like Qt's, a System V attach() takes the lock and would wait for it.
        let mut b = SharedMemory::with_key(key.clone());
        b.attach(AccessMode::ReadWrite).unwrap();
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
