//! Attaches to a segment, reads the message under the lock and answers it.
//!
//! ```text
//! cargo run --example consumer -- posix:/demo [read-only]
//! ```
//!
//! With `read-only` it attaches `ReadOnly`, prints the message and does not answer.

use qsharedmem::{AccessMode, SharedMemory};

#[path = "common/mailbox.rs"]
mod mailbox;

fn main() {
    let key = mailbox::key_from_args();
    let read_only = std::env::args().nth(2).as_deref() == Some("read-only");
    let mode = if read_only {
        AccessMode::ReadOnly
    } else {
        AccessMode::ReadWrite
    };
    let mut shm = SharedMemory::with_key(key.clone());
    if let Err(e) = shm.attach(mode) {
        eprintln!(
            "consumer: attach({key}) failed: {e} (Qt error {})",
            e.kind().qt_value()
        );
        std::process::exit(1);
    }
    let mut guard = shm.lock().expect("lock");
    if guard.owner_died() {
        println!("NOTE the previous lock holder died while holding the lock");
    }
    let (sequence, text) = mailbox::read_message(guard.as_slice().expect("attached"));
    println!("MESSAGE {sequence} {text}");
    if let Some(bytes) = guard.as_mut_slice() {
        mailbox::write_message(
            bytes,
            &format!("answer from Rust pid {} to: {text}", std::process::id()),
        );
        println!("ANSWERED");
    }
    drop(guard);
    shm.detach().expect("detach");
}
