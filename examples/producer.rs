//! Creates a segment, posts a message under the lock, and waits for an answer.
//!
//! ```text
//! cargo run --example producer -- posix:/demo            # or systemv:/tmp/demo
//! cargo run --example consumer -- posix:/demo            # in another terminal
//! python -c "import qsharedmem ..."                      # or a Python or Qt peer
//! ```
//!
//! Prints `READY` once the segment exists and the message is posted, then the answer.

use std::io::Write;
use std::time::Duration;

use qsharedmem::{AccessMode, SharedMemory};

#[path = "common/mailbox.rs"]
mod mailbox;

fn main() {
    let key = mailbox::key_from_args();
    let mut shm = SharedMemory::with_key(key.clone());
    if let Err(e) = shm.create(4096, AccessMode::ReadWrite) {
        eprintln!(
            "producer: create({key}) failed: {e} (Qt error {})",
            e.kind().qt_value()
        );
        std::process::exit(1);
    }
    let posted = {
        let mut guard = shm.lock().expect("lock");
        mailbox::write_message(
            guard.as_mut_slice().expect("read-write"),
            &format!("hello from Rust pid {}", std::process::id()),
        )
    };
    println!("READY {key}");
    std::io::stdout().flush().expect("stdout");

    // Wait for a peer to answer (a new sequence number), checking under the lock.
    loop {
        let answer = {
            let guard = shm.lock_timeout(Duration::from_secs(30)).expect("lock");
            let (sequence, text) = mailbox::read_message(guard.as_slice().expect("attached"));
            (sequence != posted).then_some(text)
        };
        if let Some(text) = answer {
            println!("ANSWER {text}");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    shm.detach().expect("detach");
}
