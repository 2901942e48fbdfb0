//! [`find`] and [`lookup`]: segments by any key form a user may type.

use super::list::{ftok_of, list_with_key_files, runtime_dirs};
use super::{InspectError, Scope, SegmentInfo};
use crate::key::{IpcObject, KeyType, NativeIpcKey};
use crate::segment::SegmentKind;
use crate::sys::posix;

/// What a user typed to name a segment.
pub(super) enum Query {
    /// `shmid:<id>`.
    ShmId(i32),
    /// `0x<hex>`: a System V IPC key.
    IpcKey(i32),
    /// A native key, with its type when given in Qt's string form.
    Native {
        native: String,
        key_type: Option<KeyType>,
    },
    /// A plain Qt key: a legacy key (`QSharedMemory("demo")`) or a `platformSafeKey()`
    /// argument.
    Plain(String),
}

impl Query {
    pub(super) fn parse(text: &str) -> Self {
        if let Some(id) = text.strip_prefix("shmid:").and_then(|id| id.parse().ok()) {
            return Self::ShmId(id);
        }
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            if let Ok(key) = u32::from_str_radix(hex, 16) {
                return Self::IpcKey(key as i32);
            }
        }
        if let Some(name) = text.strip_prefix("/dev/shm/") {
            return Self::Native {
                native: format!("/{name}"),
                key_type: Some(KeyType::POSIX_REALTIME),
            };
        }
        if text.starts_with('/') {
            return Self::Native {
                native: text.to_owned(),
                key_type: None,
            };
        }
        if text.contains(':') {
            if let Ok(key) = text.parse::<NativeIpcKey>() {
                if key.is_valid() && !key.is_empty() {
                    return Self::Native {
                        native: key.native_key().to_owned(),
                        key_type: Some(key.key_type()),
                    };
                }
            }
        }
        Self::Plain(text.to_owned())
    }

    pub(super) fn matches(&self, segment: &SegmentInfo) -> bool {
        match self {
            Self::ShmId(id) => segment.shmid == Some(*id),
            Self::IpcKey(key) => segment.ipc_key == Some(*key),
            Self::Native { native, key_type } => native_matches(segment, native, *key_type),
            Self::Plain(key) => {
                segment.qt_key.as_deref() == Some(key.as_str())
                    || plain_key_natives(key)
                        .iter()
                        .any(|(native, key_type)| native_matches(segment, native, *key_type))
            }
        }
    }
}

/// Every native key a plain key can stand for, most likely first.
fn plain_key_natives(key: &str) -> Vec<(String, Option<KeyType>)> {
    let derived = |k: NativeIpcKey| k.native_key().to_owned();
    let mut natives = vec![
        (
            derived(NativeIpcKey::legacy(
                key,
                IpcObject::SharedMemory,
                KeyType::SYSTEM_V,
            )),
            None,
        ),
        (
            derived(NativeIpcKey::legacy(
                key,
                IpcObject::SharedMemory,
                KeyType::POSIX_REALTIME,
            )),
            Some(KeyType::POSIX_REALTIME),
        ),
        (format!("/{key}"), Some(KeyType::POSIX_REALTIME)),
    ];
    natives.extend(
        runtime_dirs()
            .into_iter()
            .map(|dir| (format!("{dir}/{key}"), None)),
    );
    natives
}

fn native_matches(segment: &SegmentInfo, native: &str, key_type: Option<KeyType>) -> bool {
    match segment.kind {
        SegmentKind::Posix | SegmentKind::ForeignPosix => {
            key_type.is_none_or(KeyType::is_posix)
                && posix::shm_file_name(native, false).ok().as_deref() == segment.posix_name()
        }
        SegmentKind::SystemV => {
            let Some(project_id) = segment.project_id() else {
                return false;
            };
            let type_ok =
                key_type.is_none_or(|t| t.is_system_v() && t.raw() == u16::from(project_id));
            type_ok
                && (segment.key_file.as_deref() == Some(native)
                    // A key file outside the directories Qt uses: ask ftok directly.
                    || ftok_of(native, project_id).is_some_and(|key| Some(key) == segment.ipc_key))
        }
    }
}

/// The segments in `scope` that `query` names: a plain Qt key (`demo`: legacy or
/// platform-safe, any backend), a native key (`/demo`, `/tmp/qipc_sharedmemory_…`), Qt's string
/// form (`posix:/demo`, `systemv-84:/path`), a file in `/dev/shm` (`/dev/shm/demo`), a System
/// V IPC key (`0x5100c092`) or segment id (`shmid:2818055`).
///
/// # Errors
/// As [`list`].
pub fn find(query: &str, scope: Scope) -> Result<Vec<SegmentInfo>, InspectError> {
    let query = Query::parse(query);
    let key_file = match &query {
        Query::Native { native, .. } => vec![native.as_str()],
        _ => Vec::new(),
    };
    Ok(list_with_key_files(scope, &key_file)?
        .into_iter()
        .filter(|segment| query.matches(segment))
        .collect())
}

/// The one segment `query` names (see [`find`]).
///
/// # Errors
/// [`InspectError::NotFound`], [`InspectError::Ambiguous`], or as [`list`].
pub fn lookup(query: &str, scope: Scope) -> Result<SegmentInfo, InspectError> {
    let mut found = find(query, scope)?;
    match found.len() {
        0 => Err(InspectError::NotFound {
            query: query.to_owned(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(InspectError::Ambiguous {
            query: query.to_owned(),
            ids: found.iter().map(SegmentInfo::id).collect(),
        }),
    }
}
