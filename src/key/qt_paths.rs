//! Where Qt puts System V key files: `QDir::tempPath()` (legacy keys) and
//! `QStandardPaths::writableLocation(RuntimeLocation)` (new keys), ported from Qt 6.12.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};

use super::qt_url;
use crate::sys::process;

/// `QDir::tempPath()` on Linux, as Qt 6.12 computes it: `/tmp` if `$TMPDIR` is unset or empty;
/// otherwise `$TMPDIR` without one trailing slash, made absolute against the current directory
/// and cleaned with `QDir::cleanPath()` (Qt's `QFileSystemEngine::absoluteName()`: an absolute
/// path that is already clean is kept as it is, and a path that still ends in `/` keeps one
/// trailing slash). Symlinks are not resolved and existence is not checked. Legacy System V key
/// files are created here.
#[must_use]
pub fn temp_path() -> String {
    temp_path_from(&env_var("TMPDIR"), current_dir)
}

pub(super) fn temp_path_from(tmpdir: &str, current_dir: impl FnOnce() -> String) -> String {
    if tmpdir.is_empty() {
        return "/tmp".to_owned();
    }
    let temp = match tmpdir.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => tmpdir,
    };
    absolute_name(temp, current_dir)
}

/// Qt's `QFileSystemEngine::currentPath()`: `getcwd`, or `""` if that fails.
fn current_dir() -> String {
    std::env::current_dir()
        .map(|dir| qt_url::qt_from_utf8(dir.as_os_str().as_bytes()))
        .unwrap_or_default()
}

/// Qt's `QFileSystemEngine::absoluteName()` on Unix.
fn absolute_name(path: &str, current_dir: impl FnOnce() -> String) -> String {
    let absolute = path.starts_with('/');
    if absolute && is_clean(path) {
        return path.to_owned();
    }
    let mut result = if absolute {
        String::new()
    } else {
        current_dir()
    };
    if !path.is_empty() && path != "." {
        if !result.is_empty() && !result.ends_with('/') {
            result.push('/');
        }
        result.push_str(path);
    }
    if result == "/" {
        return result;
    }
    let is_dir = result.ends_with('/');
    let mut cleaned = clean_path(&result);
    if is_dir {
        cleaned.push('/');
    }
    cleaned
}

/// Qt's `QFileSystemEntry::isClean()`: no `//`, and no `.` or `..` segment. A trailing slash
/// is clean.
pub(super) fn is_clean(path: &str) -> bool {
    let mut dots = 0;
    let mut dot_ok = true;
    let mut slash_ok = true;
    for c in path.chars() {
        if c == '/' {
            if dots == 1 || dots == 2 || !slash_ok {
                return false;
            }
            dots = 0;
            slash_ok = false;
            dot_ok = true;
        } else if dot_ok {
            slash_ok = true;
            if c == '.' {
                dots += 1;
                if dots > 2 {
                    dot_ok = false;
                }
            } else {
                dots = 0;
                dot_ok = false;
            }
        }
    }
    dots != 1 && dots != 2
}

/// `QStandardPaths::writableLocation(RuntimeLocation)` on Linux, Qt 6.12 rules: `$XDG_RUNTIME_DIR`
/// if it is an absolute path and passes Qt's check (created 0700 if missing; otherwise it must be
/// a real directory, not a symlink, owned by the effective user, with mode exactly 0700 — Qt
/// rejects a wrong one rather than fixing it), else [`temp_path()`]` + "/runtime-<user>"` under
/// the same check, else `""`. New-style System V key files are created here.
///
/// Unlike Qt, nothing is printed when falling back.
#[must_use]
pub fn runtime_dir() -> String {
    let from_env = env_var("XDG_RUNTIME_DIR");
    if from_env.starts_with('/') && check_runtime_dir(&from_env) {
        return from_env;
    }
    let user = process::user_name(process::euid()).unwrap_or_default();
    let fallback = format!("{}/runtime-{user}", temp_path());
    if check_runtime_dir(&fallback) {
        fallback
    } else {
        String::new()
    }
}

/// Qt's `checkXdgRuntimeDir()`. It creates the directory first instead of checking whether it
/// exists, because a check before `mkdir` would race with another process creating it.
pub(super) fn check_runtime_dir(path: &str) -> bool {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => return true,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(_) => return false,
    }
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    !meta.file_type().is_symlink()
        && meta.is_dir()
        && meta.uid() == process::euid()
        && meta.mode() & 0o777 == 0o700
}

/// An environment variable as Qt's `qEnvironmentVariable()` reads it: UTF-8 with Qt's
/// replacement of invalid bytes; unset reads as empty.
fn env_var(name: &str) -> String {
    std::env::var_os(name)
        .map(|value| qt_url::qt_from_utf8(value.as_bytes()))
        .unwrap_or_default()
}

/// `QDir::cleanPath()` on Unix: Qt 6's `qt_normalizePathSegments()` in local-path mode, then the
/// trailing slash removed. Purely lexical. Ported step by step, because Qt's algorithm has
/// observable quirks the textbook one lacks: a `..` that cannot go up is kept (also after the
/// root: `/..` stays `/..`), and the segment after such a `..` keeps a doubled slash
/// (`..//a` stays `..//a`).
pub(super) fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    let mut chars: Vec<char> = path.chars().collect();
    normalize_path_segments(&mut chars);
    if chars.len() > 1 && chars.last() == Some(&'/') {
        chars.pop();
    }
    chars.into_iter().collect()
}

/// Qt's in-place `qt_normalizePathSegments()` (local paths, not URLs): `read` runs ahead of
/// `write` in the same buffer.
fn normalize_path_segments(path: &mut Vec<char>) {
    #[derive(PartialEq)]
    enum Segment {
        Other,
        Dot,
        DotDot,
    }
    let prefix = usize::from(path.first() == Some(&'/'));
    let end = path.len();
    // Qt reads one past the end, where its string has a terminating NUL.
    let at = |path: &[char], i: usize| path.get(i).copied().unwrap_or('\0');

    // Find the first "." or ".." segment or doubled slash; a path without one is already clean.
    let mut first = prefix;
    let mut last_was_slash = true;
    while first < end {
        let c = path[first];
        if last_was_slash && c == '.' {
            let next = at(path, first + 1);
            if first + 1 == end || next == '/' {
                break;
            }
            if next == '.' && (first + 2 == end || at(path, first + 2) == '/') {
                break;
            }
        }
        if last_was_slash && c == '/' && first > 0 {
            first -= 1; // let the loop below swallow all the slashes
            break;
        }
        last_was_slash = c == '/';
        first += 1;
    }
    if first == end {
        return;
    }

    let mut start = prefix;
    let mut write = first;
    let mut read = first;
    loop {
        // Copy one slash, skip the others.
        if at(path, read) == '/' {
            path[write] = '/';
            write += 1;
            read += 1;
            while read < end && path[read] == '/' {
                read += 1;
            }
        }
        let segment = if at(path, read) != '.' {
            Segment::Other
        } else if read + 1 == end || at(path, read + 1) == '/' {
            Segment::Dot
        } else if at(path, read + 1) == '.' && (read + 2 == end || at(path, read + 2) == '/') {
            Segment::DotDot
        } else {
            Segment::Other
        };
        match segment {
            Segment::Other => {
                while read < end && path[read] != '/' {
                    path[write] = path[read];
                    write += 1;
                    read += 1;
                }
                if read < end {
                    continue;
                }
                break;
            }
            Segment::DotDot if write == start => {
                // Nothing left to go up from: keep the ".." and re-root after it.
                path[write] = '.';
                path[write + 1] = '.';
                write += 2;
                if read + 2 != end {
                    path[write] = '/';
                    write += 1;
                    read += 1;
                }
                start = write;
                read += 2;
                if read < end {
                    continue;
                }
                break;
            }
            Segment::DotDot => {
                if write > start {
                    write -= 1;
                }
                while write > start && path[write - 1] != '/' {
                    write -= 1;
                }
                read += 2;
            }
            Segment::Dot => read += 1,
        }
        if read != end && write > start && path[write - 1] == '/' {
            write -= 1;
        }
        if write == start {
            // Never turn a relative path into an absolute one.
            if read != end && path[read] == '/' {
                read += 1;
            }
            while prefix == 0 && read != end && path[read] == '/' {
                read += 1;
            }
        }
        if read >= end {
            break;
        }
    }
    path.truncate(write);
    if path.is_empty() {
        path.push('.');
    }
}
