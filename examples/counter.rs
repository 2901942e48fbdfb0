//! Attaches to a segment and increments the counter at offset 0 `N` times under the lock,
//! with a deliberate gap between read and write, so that a missing lock would lose updates.
//!
//! ```text
//! cargo run --example counter -- posix:/demo 10000
//! ```

use qsharedmem::{AccessMode, SharedMemory};

#[path = "common/mailbox.rs"]
mod mailbox;

fn main() {
    let key = mailbox::key_from_args();
    let rounds = mailbox::number_arg(2, 1000);
    let mut shm = SharedMemory::with_key(key.clone());
    if let Err(e) = shm.attach(AccessMode::ReadWrite) {
        eprintln!("counter: attach({key}) failed: {e}");
        std::process::exit(1);
    }
    println!("READY");
    for _ in 0..rounds {
        let mut guard = shm.lock().expect("lock");
        let bytes = guard.as_mut_slice().expect("read-write");
        let value = mailbox::read_u64(bytes, mailbox::COUNTER);
        std::hint::black_box(&value);
        std::thread::yield_now();
        bytes[mailbox::COUNTER..mailbox::COUNTER + 8].copy_from_slice(&(value + 1).to_le_bytes());
    }
    shm.detach().expect("detach");
    println!("DONE {rounds}");
}
