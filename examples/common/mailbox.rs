//! The message layout the examples share with each other and with the Python side
//! (tests/api/test_rust_python_interop.py), so that each can talk to the other:
//!
//! ```text
//! offset 0   u64  counter   incremented under the lock by `counter`
//! offset 8   u32  sequence  bumped by whoever writes a message
//! offset 12  u32  length    of the message
//! offset 16  ...  message   UTF-8
//! ```
//!
//! All integers are little-endian. Every access happens under the segment's lock.

#![allow(dead_code)] // each example uses part of it

use std::str::FromStr;

use qsharedmem::NativeIpcKey;

pub const COUNTER: usize = 0;
pub const SEQUENCE: usize = 8;
pub const LENGTH: usize = 12;
pub const MESSAGE: usize = 16;

/// Reads a little-endian `u32` at `at`.
pub fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads a little-endian `u64` at `at`.
pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The current message and its sequence number.
pub fn read_message(bytes: &[u8]) -> (u32, String) {
    let len = (read_u32(bytes, LENGTH) as usize).min(bytes.len() - MESSAGE);
    let text = String::from_utf8_lossy(&bytes[MESSAGE..MESSAGE + len]).into_owned();
    (read_u32(bytes, SEQUENCE), text)
}

/// Replaces the message and bumps the sequence number; returns the new sequence number.
pub fn write_message(bytes: &mut [u8], text: &str) -> u32 {
    let room = bytes.len() - MESSAGE;
    let text = &text.as_bytes()[..text.len().min(room)];
    bytes[MESSAGE..MESSAGE + text.len()].copy_from_slice(text);
    bytes[LENGTH..LENGTH + 4].copy_from_slice(&(text.len() as u32).to_le_bytes());
    let sequence = read_u32(bytes, SEQUENCE).wrapping_add(1);
    bytes[SEQUENCE..SEQUENCE + 4].copy_from_slice(&sequence.to_le_bytes());
    sequence
}

/// Parses the key argument: Qt's `QNativeIpcKey::toString()` form (`posix:/name`,
/// `systemv:/path`), which every peer (Qt, Python, Rust) can print and read.
pub fn key_from_args() -> NativeIpcKey {
    let text = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!(
            "usage: {} <key, e.g. posix:/demo or systemv:/tmp/demo> [...]",
            program()
        );
        std::process::exit(2);
    });
    NativeIpcKey::from_str(&text).unwrap_or_else(|e| {
        eprintln!("{}: bad key {text:?}: {e}", program());
        std::process::exit(2);
    })
}

/// The n-th argument parsed as a number, or `default`.
pub fn number_arg(n: usize, default: u64) -> u64 {
    std::env::args().nth(n).map_or(default, |a| {
        a.parse().unwrap_or_else(|_| {
            eprintln!("{}: argument {n} must be a number, got {a:?}", program());
            std::process::exit(2);
        })
    })
}

fn program() -> String {
    std::env::args().next().unwrap_or_default()
}
