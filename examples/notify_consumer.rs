//! Consumes messages that another process (Python, Rust, anything that speaks the layout)
//! produces, sleeping between them instead of polling: the Rust half of the producer/consumer
//! example in `docs/notify.md`.
//!
//! ```text
//! cargo run --example notify_consumer -- posix:/demo
//! ```
//!
//! It waits (up to 30 s) for the segment to be created, so it may start before the producer.
//! Then, for every message: read the generation, look at the message under the lock, and if
//! there is no new one, sleep until the generation changes (the producer's `notify()`). A
//! notification between the look and the sleep makes the sleep return at once, so none is
//! missed. Each message is acknowledged in an atomic word (offset 1024: the last sequence
//! number consumed) that the producer waits on. The message `bye` ends it.
//!
//! Layout: `examples/common/mailbox.rs` (sequence at 8, length at 12, text at 16, under the
//! lock) plus the acknowledgement word at [`ACK`].

use std::time::Duration;

use qsharedmem::{AccessMode, SharedMemory};

#[path = "common/mailbox.rs"]
mod mailbox;

/// The offset of the acknowledgement word (a `u32`, used atomically).
const ACK: usize = 1024;
/// How long any single wait may take before the example gives up.
const PATIENCE: Duration = Duration::from_secs(30);

fn main() {
    let key = mailbox::key_from_args();
    let mut shm = SharedMemory::with_key(key.clone());
    if let Err(e) = shm.attach_timeout(AccessMode::ReadWrite, PATIENCE) {
        eprintln!("notify_consumer: no segment {key} within {PATIENCE:?}: {e}");
        std::process::exit(1);
    }
    let notifier = shm.notifier().expect("the segment's notify generation");
    let ack = shm.atomic_u32(ACK).expect("the acknowledgement word");
    println!("READY");
    let mut seen = 0;
    loop {
        let generation = notifier.generation();
        let (sequence, text) = {
            let guard = shm.lock().expect("lock");
            mailbox::read_message(guard.as_slice().expect("attached"))
        };
        if sequence == seen {
            if !notifier.wait_changed(generation, Some(PATIENCE)) {
                eprintln!("notify_consumer: nothing new within {PATIENCE:?}");
                std::process::exit(1);
            }
            continue;
        }
        seen = sequence;
        println!("GOT {sequence} {text}");
        ack.store(sequence).expect("read-write attachment");
        ack.wake(u32::MAX);
        if text == "bye" {
            break;
        }
    }
    drop((notifier, ack));
    shm.detach().expect("detach");
}
