//! `QNativeIpcKey` and Qt's key derivation (`platformSafeKey`, `legacyNativeKey`).
//!
//! Everything here reproduces Qt 6.12 on Linux, because a key is only useful if a Qt process
//! derives, prints and parses exactly the same one: the `toString()` text is what processes pass
//! to each other, and the derived names are the OS objects both sides open. The only system
//! access is reading `TMPDIR`/`XDG_RUNTIME_DIR` and checking (or creating) the runtime directory,
//! as Qt's `QStandardPaths` does.
//!
//! * [`qt_url`]: the `QUrl` rules behind `toString()`/`fromString()`, by hand;
//! * [`qt_paths`]: where Qt puts System V key files (`QDir::tempPath()`,
//!   `QStandardPaths::RuntimeLocation`).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// `QNativeIpcKey::Type`: which kind of OS object a key names.
///
/// Qt's type is a `quint16`: `SystemV` is 0x51 (`'Q'`, also the `ftok` project id), any other
/// value 1..=255 is a System V key with that `ftok` id, 0x100 is POSIX realtime, 0x101 Windows,
/// and 0 is the invalid type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyType(u16);

impl KeyType {
    /// The invalid type (0).
    pub const INVALID: Self = Self(0);
    /// `QNativeIpcKey::Type::SystemV` (0x51).
    pub const SYSTEM_V: Self = Self(0x51);
    /// `QNativeIpcKey::Type::PosixRealtime` (0x100).
    pub const POSIX_REALTIME: Self = Self(0x100);
    /// `QNativeIpcKey::Type::Windows` (0x101).
    pub const WINDOWS: Self = Self(0x101);
    /// `QNativeIpcKey::DefaultTypeForOs`: `PosixRealtime` on every Unix.
    pub const DEFAULT_FOR_OS: Self = Self::POSIX_REALTIME;

    /// `QNativeIpcKey::legacyDefaultTypeForOs()`: `SystemV` on Linux.
    #[must_use]
    pub const fn legacy_default_for_os() -> Self {
        Self::SYSTEM_V
    }

    /// The type with Qt's raw value `raw` (any `u16`; unknown values are kept as they are).
    #[must_use]
    pub const fn from_raw(raw: u16) -> Self {
        Self(raw)
    }

    /// Qt's raw value of this type.
    #[must_use]
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// True for 1..=255: a System V key (whose `ftok` project id is the value).
    #[must_use]
    pub const fn is_system_v(self) -> bool {
        self.0 >= 1 && self.0 <= 0xff
    }

    /// True for `PosixRealtime`.
    #[must_use]
    pub const fn is_posix(self) -> bool {
        self.0 == Self::POSIX_REALTIME.0
    }

    /// The name of Qt's enumerator with this value (`"SystemV"`, `"PosixRealtime"`,
    /// `"Windows"`), or `None` for the values Qt allows but does not name (0, the other System V
    /// ids, unknown values). Bindings use it to print a type the way Qt's enum does.
    #[must_use]
    pub const fn qt_name(self) -> Option<&'static str> {
        match self.0 {
            0x51 => Some("SystemV"),
            0x100 => Some("PosixRealtime"),
            0x101 => Some("Windows"),
            _ => None,
        }
    }

    /// The scheme `toString()` writes for this type, `None` for types Qt cannot print (0 and
    /// values above 255 other than POSIX and Windows).
    fn scheme(self) -> Option<String> {
        match self.0 {
            0x51 => Some("systemv".to_owned()),
            0x100 => Some("posix".to_owned()),
            0x101 => Some("windows".to_owned()),
            // Qt prints `"systemv" + QString::number(-value)`: the minus sign is the dash.
            n @ 1..=0xff => Some(format!("systemv-{n}")),
            _ => None,
        }
    }

    /// The type a `fromString()` scheme names (Qt's `stringToType`), after lower-casing.
    fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "posix" => Some(Self::POSIX_REALTIME),
            "windows" => Some(Self::WINDOWS),
            "systemv" => Some(Self::SYSTEM_V),
            _ => {
                // Qt negates `QStringView::toInt()` of the rest, so it must be "-<digits>" (a
                // "+" parses but comes out negative), leading zeros allowed, value 1..=255.
                let digits = scheme.strip_prefix("systemv-")?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let significant = digits.trim_start_matches('0');
                if significant.len() > 3 {
                    return None;
                }
                match significant.parse::<u16>() {
                    Ok(n @ 1..=0xff) => Some(Self(n)),
                    _ => None,
                }
            }
        }
    }
}

/// Which kind of IPC object a key is derived for (Qt's internal `QtIpcCommon::IpcType`).
///
/// Qt derives different names from the same string for a shared memory segment and for a
/// semaphore, so that a segment and its lock never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpcObject {
    /// A shared memory segment: legacy names start with `qipc_sharedmemory_`, Windows names
    /// with `shm_`.
    SharedMemory,
    /// A system semaphore (also the lock of a shared memory segment): legacy names start with
    /// `qipc_systemsem_`, Windows names with `sem_`.
    SystemSemaphore,
}

impl IpcObject {
    const fn legacy_prefix(self) -> &'static str {
        match self {
            Self::SharedMemory => "qipc_sharedmemory_",
            Self::SystemSemaphore => "qipc_systemsem_",
        }
    }

    const fn windows_prefix(self) -> &'static str {
        match self {
            Self::SharedMemory => "shm_",
            Self::SystemSemaphore => "sem_",
        }
    }
}

/// The OS backend a key type selects on Linux, for shared memory and semaphores alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// POSIX realtime: `shm_open`/`sem_open` names in `/dev/shm`.
    Posix,
    /// System V, with this `ftok` project id.
    SysV { project_id: u8 },
}

impl KeyType {
    /// The backend this key type selects: System V for every value up to 0xff (Qt routes the
    /// invalid type 0 there too: its `ftok` id is then 0, which works), POSIX for
    /// `PosixRealtime`, none for the rest (Windows, unknown values).
    pub(crate) fn backend(self) -> Option<Backend> {
        if self.0 <= 0xff {
            Some(Backend::SysV {
                project_id: self.0 as u8,
            })
        } else if self == Self::POSIX_REALTIME {
            Some(Backend::Posix)
        } else {
            None
        }
    }
}

/// Qt's `QtIpcCommon::isIpcSupported`: whether this OS has a backend for `key_type`. Every type
/// that is neither POSIX nor Windows goes to the System V backend, including 0 and unknown values
/// (Qt dispatches them there too), so derivation still produces a System V name for them.
const fn is_ipc_supported(key_type: KeyType) -> bool {
    const WINDOWS_BACKEND: bool = cfg!(windows);
    const UNIX_BACKENDS: bool = cfg!(unix);
    if key_type.0 == KeyType::WINDOWS.0 {
        WINDOWS_BACKEND
    } else {
        UNIX_BACKENDS
    }
}

/// A native IPC key: Qt's `QNativeIpcKey`.
///
/// It holds the OS-level name (`nativeKey()`), its [`KeyType`], and — for keys made by the
/// legacy functions — the original string they were derived from, which [`to_qt_string`]
/// appends as `?legacyKey=` so that a receiving process can derive the matching lock name.
///
/// ```
/// use qsharedmem::{IpcObject, KeyType, NativeIpcKey};
///
/// // A new-style key: POSIX shared memory object "/demo".
/// let key = NativeIpcKey::platform_safe("demo", IpcObject::SharedMemory, KeyType::POSIX_REALTIME);
/// assert_eq!(key.native_key(), "/demo");
/// assert_eq!(key.to_qt_string(), "posix:/demo");
///
/// // What `QSharedMemory("demo")` uses on Linux: a System V key file in the temp directory
/// // ($TMPDIR, or /tmp when it is unset).
/// let legacy = NativeIpcKey::legacy("demo", IpcObject::SharedMemory, KeyType::SYSTEM_V);
/// let expected = format!(
///     "{}/qipc_sharedmemory_demo89e495e7941cf9e40e6980d14a16bf023ccd4c91",
///     qsharedmem::key::temp_path()
/// );
/// assert_eq!(legacy.native_key(), expected);
/// assert_eq!(legacy.legacy_key(), Some("demo"));
///
/// // The string form carries everything, legacy key included, to another process.
/// let received = NativeIpcKey::from_qt_string(&legacy.to_qt_string());
/// assert_eq!(received, legacy);
/// ```
///
/// [`to_qt_string`]: NativeIpcKey::to_qt_string
#[derive(Clone, Debug)]
pub struct NativeIpcKey {
    native: String,
    key_type: KeyType,
    /// Qt's private `d` pointer and its `legacyKey_`. `Some` once a legacy function (or
    /// `fromString()` with a `legacyKey=` item) made the key, and it stays `Some` — possibly
    /// empty — from then on, because in Qt the mere presence of `d` turns `setType()` into a
    /// no-op.
    legacy: Option<String>,
}

impl NativeIpcKey {
    /// `QNativeIpcKey(key, type)`: the native key `native_key` of type `key_type`, taken
    /// verbatim (nothing is derived or checked).
    #[must_use]
    pub fn new(native_key: impl Into<String>, key_type: KeyType) -> Self {
        Self {
            native: native_key.into(),
            key_type,
            legacy: None,
        }
    }

    /// `QNativeIpcKey(type)`: an empty key of type `key_type`.
    #[must_use]
    pub fn empty(key_type: KeyType) -> Self {
        Self::new(String::new(), key_type)
    }

    /// `nativeKey()`: the OS-level name (a POSIX object name, a System V key file path, ...).
    #[must_use]
    pub fn native_key(&self) -> &str {
        &self.native
    }

    /// `setNativeKey()`: replaces the native key and forgets the legacy key, since it no longer
    /// describes the new name. As in Qt, a key that came from a legacy function keeps its
    /// private part, so [`set_type`](Self::set_type) stays a no-op on it.
    pub fn set_native_key(&mut self, native_key: impl Into<String>) {
        self.native = native_key.into();
        if let Some(legacy) = &mut self.legacy {
            legacy.clear();
        }
    }

    /// `type()`.
    #[must_use]
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// `setType()`. A no-op on keys that came from a legacy function or from a string with a
    /// `legacyKey=` item: Qt 6.12 routes those to an empty `setType_internal()` (verified against
    /// a real Qt), and keys must behave identically in both worlds.
    pub fn set_type(&mut self, key_type: KeyType) {
        if self.legacy.is_none() {
            self.key_type = key_type;
        }
    }

    /// `isEmpty()`: the native key is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.native.is_empty()
    }

    /// `isValid()`: the type is not the invalid type 0. The native key is not checked, as in Qt.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.key_type != KeyType::INVALID
    }

    /// The original string a legacy key was derived from (`QSharedMemory::key()` in Qt), or
    /// `None` if there is none or it is empty.
    #[must_use]
    pub fn legacy_key(&self) -> Option<&str> {
        self.legacy.as_deref().filter(|legacy| !legacy.is_empty())
    }

    /// The complete state, legacy part included exactly as Qt keeps it (`Some("")` is a key
    /// whose private part exists but is empty). For bindings that must round-trip a key
    /// through serialization without losing how `set_type` behaves on it.
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn to_parts(&self) -> (&str, KeyType, Option<&str>) {
        (&self.native, self.key_type, self.legacy.as_deref())
    }

    /// The inverse of [`to_parts`](Self::to_parts).
    #[cfg_attr(not(feature = "python"), allow(dead_code))]
    pub(crate) fn from_parts(native: String, key_type: KeyType, legacy: Option<String>) -> Self {
        Self {
            native,
            key_type,
            legacy,
        }
    }

    /// `toString()`: Qt's string form, `"<type>:<percent-encoded native key>"` plus
    /// `?legacyKey=…` for legacy keys, e.g. `posix:/demo` or `systemv-84:/tmp/x`. Types Qt
    /// cannot print (0, and unknown values above 255) give `""`, as Qt's null string.
    #[must_use]
    pub fn to_qt_string(&self) -> String {
        let Some(scheme) = self.key_type.scheme() else {
            return String::new();
        };
        let mut out = scheme;
        out.push(':');
        qt_url::push_path(&mut out, &self.native);
        if let Some(legacy) = self.legacy_key() {
            out.push_str("?legacyKey=");
            qt_url::push_query_value(&mut out, legacy);
        }
        out
    }

    /// `QNativeIpcKey::fromString()`: parses Qt's string form. Like Qt, a string that cannot be
    /// parsed gives an invalid key (type 0, empty); use [`str::parse`] to get the reason instead.
    #[must_use]
    pub fn from_qt_string(text: &str) -> Self {
        text.parse()
            .unwrap_or_else(|_| Self::empty(KeyType::INVALID))
    }

    /// `QSharedMemory::platformSafeKey()` / `QSystemSemaphore::platformSafeKey()`: the key Qt ≥
    /// 6.6 derives from `key` for `object`. POSIX: `"/" + key`. System V: `key` if it is an
    /// absolute path, else [`runtime_dir()`]` + "/" + key`. Windows: `shm_`/`sem_` + key, after
    /// a `Local\`/`Global\` prefix. An empty `key`, or a type this OS does not support, gives an
    /// empty key of that type.
    #[must_use]
    pub fn platform_safe(key: &str, object: IpcObject, key_type: KeyType) -> Self {
        Self::platform_safe_in(key, object, key_type, runtime_dir)
    }

    /// [`platform_safe`](Self::platform_safe) with the runtime directory supplied by the caller
    /// (only asked for when needed: looking it up may create a directory).
    fn platform_safe_in(
        key: &str,
        object: IpcObject,
        key_type: KeyType,
        runtime_dir: impl FnOnce() -> String,
    ) -> Self {
        let mut result = Self::empty(key_type);
        if key.is_empty() || !is_ipc_supported(key_type) {
            return result;
        }
        result.native = match key_type {
            KeyType::POSIX_REALTIME => format!("/{key}"),
            KeyType::WINDOWS => windows_name(key, object),
            _ if key.starts_with('/') => key.to_owned(),
            _ => format!("{}/{key}", runtime_dir()),
        };
        result
    }

    /// `QSharedMemory::legacyNativeKey()` / `QSystemSemaphore::legacyNativeKey()`: the key Qt 4.4
    /// to 6.5 used for `key` (and Qt 6 still uses for `QSharedMemory(QString)`): `qipc_…_` +
    /// the ASCII letters of `key` + the SHA-1 of its UTF-8, as a file in [`temp_path()`] (System
    /// V) or as `/name` (POSIX). The result remembers `key` as its legacy key. An empty `key`, or
    /// a type this OS does not support, gives an empty key of that type.
    #[must_use]
    pub fn legacy(key: &str, object: IpcObject, key_type: KeyType) -> Self {
        Self::legacy_in(key, object, key_type, temp_path)
    }

    /// [`legacy`](Self::legacy) with the temporary directory supplied by the caller.
    fn legacy_in(
        key: &str,
        object: IpcObject,
        key_type: KeyType,
        temp_dir: impl FnOnce() -> String,
    ) -> Self {
        let mut result = Self::empty(key_type);
        if key.is_empty() || !is_ipc_supported(key_type) {
            return result;
        }
        let hex = sha1_smol::Sha1::from(key.as_bytes()).digest().to_string();
        let mut name = String::with_capacity(object.legacy_prefix().len() + key.len() + hex.len());
        name.push_str(object.legacy_prefix());
        name.extend(key.chars().filter(char::is_ascii_alphabetic));
        name.push_str(&hex);
        result.native = match key_type {
            KeyType::WINDOWS => name,
            KeyType::POSIX_REALTIME => format!("/{name}"),
            _ => format!("{}/{name}", temp_dir()),
        };
        result.legacy = Some(key.to_owned());
        result
    }
}

/// The Windows object name Qt's `platformSafeKey` builds: a `Local\` or `Global\` namespace
/// prefix stays in front, then `shm_`/`sem_`, then the rest (at most `MAX_PATH` UTF-16 units on
/// Windows).
fn windows_name(key: &str, object: IpcObject) -> String {
    let (namespace, rest) = ["Local\\", "Global\\"]
        .iter()
        .find_map(|prefix| key.strip_prefix(prefix).map(|rest| (*prefix, rest)))
        .unwrap_or(("", key));
    let name = format!("{namespace}{}{rest}", object.windows_prefix());
    if cfg!(windows) {
        const MAX_PATH: usize = 260;
        String::from_utf16_lossy(&name.encode_utf16().take(MAX_PATH).collect::<Vec<_>>())
    } else {
        name
    }
}

impl Default for NativeIpcKey {
    /// `QNativeIpcKey()`: an empty key of [`KeyType::DEFAULT_FOR_OS`].
    fn default() -> Self {
        Self::empty(KeyType::DEFAULT_FOR_OS)
    }
}

impl PartialEq for NativeIpcKey {
    /// Qt's `comparesEqual`: same type, same native key and same legacy key, where a key without
    /// legacy data counts as having an empty one. So a legacy key differs from a plain key with
    /// the same name, and a legacy key whose native key was reset equals a plain one again.
    fn eq(&self, other: &Self) -> bool {
        self.key_type == other.key_type
            && self.native == other.native
            && self.legacy.as_deref().unwrap_or("") == other.legacy.as_deref().unwrap_or("")
    }
}

impl Eq for NativeIpcKey {}

impl Hash for NativeIpcKey {
    /// Like Qt's `qHash`, only the native key and the type: the legacy key is already encoded in
    /// the native key, and leaving it out keeps the hash consistent with equality.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.native.hash(state);
        self.key_type.hash(state);
    }
}

impl fmt::Display for NativeIpcKey {
    /// The same text as [`NativeIpcKey::to_qt_string`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_qt_string())
    }
}

impl FromStr for NativeIpcKey {
    type Err = ParseKeyError;

    /// Parses Qt's string form like `QNativeIpcKey::fromString()`, but reports why a string is
    /// rejected instead of returning an invalid key.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        qt_url::parse(text)
    }
}

/// Why a string is not a valid `QNativeIpcKey` string form (see [`NativeIpcKey::from_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseKeyError {
    reason: ParseReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParseReason {
    NoScheme,
    UnknownType,
    Authority,
    QueryItem,
}

impl fmt::Display for ParseKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.reason {
            ParseReason::NoScheme => "invalid native IPC key string: no \"<type>:\" prefix",
            ParseReason::UnknownType => "invalid native IPC key string: unknown key type",
            ParseReason::Authority => {
                "invalid native IPC key string: a host, user or port is not allowed"
            }
            ParseReason::QueryItem => {
                "invalid native IPC key string: the only query item allowed is legacyKey"
            }
        })
    }
}

impl std::error::Error for ParseKeyError {}

mod qt_paths;
mod qt_url;

pub use qt_paths::{runtime_dir, temp_path};

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::qt_paths::{check_runtime_dir, clean_path, is_clean, temp_path_from};
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    const T84: KeyType = KeyType::from_raw(84);
    const T255: KeyType = KeyType::from_raw(0xff);

    fn hash_of(key: &NativeIpcKey) -> u64 {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        hasher.finish()
    }

    fn legacy_tmp(key: &str, object: IpcObject, key_type: KeyType) -> NativeIpcKey {
        NativeIpcKey::legacy_in(key, object, key_type, || "/tmp".to_owned())
    }

    // tst_qnativeipckey::defaultTypes
    #[test]
    fn default_types() {
        assert_eq!(KeyType::SYSTEM_V.raw(), u16::from(b'Q'));
        assert_eq!(KeyType::DEFAULT_FOR_OS, KeyType::POSIX_REALTIME);
        assert_eq!(KeyType::legacy_default_for_os(), KeyType::SYSTEM_V);
        assert!(KeyType::SYSTEM_V.is_system_v() && T84.is_system_v() && T255.is_system_v());
        assert!(!KeyType::INVALID.is_system_v() && !KeyType::POSIX_REALTIME.is_system_v());
        assert_eq!(KeyType::WINDOWS.qt_name(), Some("Windows"));
        assert_eq!(T84.qt_name(), None);
    }

    // tst_qnativeipckey::construct
    #[test]
    fn construct() {
        let invalid = NativeIpcKey::empty(KeyType::INVALID);
        assert!(!invalid.is_valid());
        assert!(invalid.is_empty());

        let check_default = |key: &NativeIpcKey| {
            assert!(key.is_valid());
            assert!(key.is_empty());
            assert_eq!(key.key_type(), KeyType::DEFAULT_FOR_OS);
            assert_eq!(key.native_key(), "");
        };
        let key = NativeIpcKey::default();
        check_default(&key);
        let copy = key.clone();
        check_default(&copy);
        let moved = copy;
        check_default(&moved);
        let mut assigned = NativeIpcKey::default();
        assigned.set_type(KeyType::INVALID);
        assigned.set_native_key("something else");
        assigned = key.clone();
        check_default(&assigned);

        let dummy = NativeIpcKey::new("dummy", KeyType::DEFAULT_FOR_OS);
        let check_dummy = |key: &NativeIpcKey| {
            assert!(key.is_valid());
            assert!(!key.is_empty());
            assert_eq!(key.native_key(), "dummy");
            assert_eq!(key.key_type(), KeyType::DEFAULT_FOR_OS);
        };
        check_dummy(&dummy);
        check_dummy(&dummy.clone());
        let mut assigned = NativeIpcKey::default();
        assigned.set_type(KeyType::INVALID);
        assigned.set_native_key("something else");
        assigned.clone_from(&dummy);
        check_dummy(&assigned);
    }

    // tst_qnativeipckey::getSetCheck
    #[test]
    fn get_set_check() {
        let mut key = NativeIpcKey::new("key1", KeyType::WINDOWS);
        assert!(key.is_valid());
        assert!(!key.is_empty());
        assert_eq!(key.native_key(), "key1");
        assert_eq!(key.key_type(), KeyType::WINDOWS);

        key.set_type(KeyType::SYSTEM_V);
        assert!(key.is_valid());
        assert_eq!(key.key_type(), KeyType::SYSTEM_V);

        key.set_native_key("key2");
        assert_eq!(key.native_key(), "key2");
        assert_eq!(key.key_type(), KeyType::SYSTEM_V);
    }

    // tst_qnativeipckey::equality
    #[test]
    fn equality() {
        let mut key1 = NativeIpcKey::default();
        let mut key2 = NativeIpcKey::default();
        assert_eq!(key1, key2);

        key1.set_native_key("key1");
        assert_ne!(key1, key2);
        key2.set_type(KeyType::INVALID);
        assert_ne!(key1, key2);
        key2.set_native_key(key1.native_key());
        assert_ne!(key1, key2);
        key2.set_type(KeyType::DEFAULT_FOR_OS);
        assert_eq!(key1, key2);

        let key3 = legacy_tmp("key1", IpcObject::SharedMemory, KeyType::DEFAULT_FOR_OS);
        assert_ne!(key3, key1);
        assert_ne!(key3, key2);
        let mut key1 = key3.clone();
        assert_eq!(key3, key1);
        // Same native key and type, but setNativeKey dropped the legacy key.
        key1.set_native_key(key3.native_key());
        assert_ne!(key3, key1);
        // A reset legacy key equals a plain key with the same native key and type.
        assert_eq!(key1, NativeIpcKey::new(key3.native_key(), key3.key_type()));
    }

    // tst_qnativeipckey::hash
    #[test]
    fn hash() {
        let key1 = NativeIpcKey::default();
        let key2 = key1.clone();
        assert_eq!(hash_of(&key1), hash_of(&key2));
        let key3 = NativeIpcKey::new("a", KeyType::SYSTEM_V);
        assert_eq!(hash_of(&key3), hash_of(&key3.clone()));
        // The legacy key is excluded, as in qHash.
        let legacy = legacy_tmp("demo", IpcObject::SharedMemory, KeyType::SYSTEM_V);
        let plain = NativeIpcKey::new(legacy.native_key(), legacy.key_type());
        assert_ne!(legacy, plain);
        assert_eq!(hash_of(&legacy), hash_of(&plain));
    }

    // tst_qnativeipckey::swap
    #[test]
    fn swap() {
        let mut key1 = NativeIpcKey::new("key1", KeyType::POSIX_REALTIME);
        let mut key2 = NativeIpcKey::new("key2", KeyType::WINDOWS);
        std::mem::swap(&mut key1, &mut key2);
        assert_eq!(key1.native_key(), "key2");
        assert_eq!(key1.key_type(), KeyType::WINDOWS);
        assert_eq!(key2.native_key(), "key1");
        assert_eq!(key2.key_type(), KeyType::POSIX_REALTIME);

        let mut legacy = legacy_tmp("key3", IpcObject::SharedMemory, KeyType::SYSTEM_V);
        let legacy_copy = legacy.clone();
        std::mem::swap(&mut key1, &mut legacy);
        assert_eq!(key1, legacy_copy);
        assert_eq!(legacy.native_key(), "key2");
        assert_eq!(key1.legacy_key(), Some("key3"));
        assert_eq!(legacy.legacy_key(), None);
    }

    /// The rows shared with the Python tests (tests/data/qt_keys.json): `data::table(name)`.
    mod data {
        include!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/qt_keys.rs"
        ));
    }

    fn raw_type(value: &data::Json) -> KeyType {
        KeyType::from_raw(u16::try_from(value.int()).unwrap())
    }

    /// The prefixes of tst_qnativeipckey::toString: (prefix, key type).
    fn prefixes() -> Vec<(String, KeyType)> {
        let rows = data::table("prefixes");
        rows.iter()
            .map(|row| (row[0].str().to_owned(), raw_type(&row[1])))
            .collect()
    }

    // tst_qnativeipckey::toString
    #[test]
    fn to_string_rows() {
        assert_eq!(NativeIpcKey::empty(KeyType::INVALID).to_qt_string(), "");
        assert_eq!(
            NativeIpcKey::new("x", KeyType::from_raw(0x102)).to_qt_string(),
            ""
        );
        for (prefix, key_type) in prefixes() {
            for row in data::table("to_string") {
                let (name, native, encoded) = (row[0].str(), row[1].str(), row[2].str());
                let key = NativeIpcKey::new(native, key_type);
                assert_eq!(
                    key.to_qt_string(),
                    format!("{prefix}:{encoded}"),
                    "{prefix}-{name}"
                );
                assert_eq!(key.to_string(), key.to_qt_string());
            }
        }
    }

    #[test]
    fn to_string_extra_rows() {
        let posix =
            |native: &str| NativeIpcKey::new(native, KeyType::POSIX_REALTIME).to_qt_string();
        assert_eq!(posix("a b"), "posix:a b");
        assert_eq!(posix("tab\there"), "posix:tab%09here");
        assert_eq!(posix("a=b&c"), "posix:a=b&c");
        assert_eq!(posix("\n\x7f\u{80}\u{9f}"), "posix:%0A%7F\u{80}\u{9f}");
        assert_eq!(posix("\0"), "posix:%00");
        assert_eq!(
            posix("[]@!$&'()*+,;=<>\"^{|}~`"),
            "posix:[]@!$&'()*+,;=<>\"^{|}~`"
        );
        assert_eq!(posix("//%"), "posix:/%2F%25");
        assert_eq!(posix("a//b"), "posix:a//b");
    }

    // tst_qnativeipckey::fromString: every toString row, reversed
    #[test]
    fn from_string_rows() {
        for (prefix, key_type) in prefixes() {
            for row in data::table("to_string") {
                let (name, native, encoded) = (row[0].str(), row[1].str(), row[2].str());
                let text = format!("{prefix}:{encoded}");
                let key = NativeIpcKey::from_qt_string(&text);
                assert_eq!(key, NativeIpcKey::new(native, key_type), "{prefix}-{name}");
                assert!(key.is_valid());
            }
        }
    }

    #[test]
    fn from_string_extra_rows() {
        for row in data::table("from_string") {
            let (text, native, key_type) = (row[1].str(), row[2].str(), raw_type(&row[3]));
            let key: NativeIpcKey = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(key, NativeIpcKey::new(native, key_type), "{text}");
        }

        for row in data::table("from_string_invalid") {
            let text = row[1].str();
            assert!(text.parse::<NativeIpcKey>().is_err(), "{text:?} parsed");
            let key = NativeIpcKey::from_qt_string(text);
            assert!(!key.is_valid(), "{text:?}");
            assert!(key.is_empty(), "{text:?}");
            assert_eq!(key, NativeIpcKey::empty(KeyType::INVALID));
        }
    }

    #[test]
    fn from_string_percent_decoding() {
        let native = |text: &str| NativeIpcKey::from_qt_string(text).native_key().to_owned();
        // One stray '%' makes every '%' of the path literal.
        assert_eq!(native("posix:/a%zz%41"), "/a%zz%41");
        assert_eq!(native("posix:/a%4"), "/a%4");
        assert_eq!(native("posix:%"), "%");
        // Invalid UTF-8 escapes: one U+FFFD per byte, in the path non-characters too.
        assert_eq!(native("posix:/%E2%82%41"), "/\u{fffd}\u{fffd}A");
        assert_eq!(native("posix:/%E2%82"), "/\u{fffd}\u{fffd}");
        assert_eq!(native("posix:/%ED%A0%80"), "/\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(native("posix:/%C0%80"), "/\u{fffd}\u{fffd}");
        assert_eq!(native("posix:/%EF%BF%BF"), "/\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(native("posix:/%EF%B7%90"), "/\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(native("posix:/%C3\u{e9}"), "/\u{fffd}\u{e9}");
        assert_eq!(native("posix:/\u{ffff}"), "/\u{ffff}");
        assert_eq!(native("posix:%EF%BB%BFx"), "\u{feff}x");
        assert_eq!(native("posix:%00%0a"), "\0\n");
        assert_eq!(native("posix:a\tb"), "a\tb");

        let legacy = |text: &str| {
            NativeIpcKey::from_qt_string(text)
                .legacy
                .unwrap_or_default()
        };
        assert_eq!(legacy("posix:/a?legacyKey=%EF%BB%BFx"), "x");
        assert_eq!(legacy("posix:/a?legacyKey=\u{feff}x"), "x");
        assert_eq!(legacy("posix:/a?legacyKey=x%EF%BB%BF"), "x\u{feff}");
        assert_eq!(legacy("posix:/a?legacyKey=a%00b"), "a\0b");
        assert_eq!(legacy("posix:/a?legacyKey=%EF%BF%BF"), "\u{ffff}");
        assert_eq!(legacy("posix:/a?legacyKey=%EF%B7%90"), "\u{fdd0}");
        assert_eq!(legacy("posix:/a?legacyKey=%E2%82%41"), "\u{fffd}\u{fffd}A");
        assert_eq!(
            legacy("posix:/a?legacyKey=%F4%90%80%80"),
            "\u{fffd}".repeat(4)
        );
        assert_eq!(legacy("posix:/a?legacyKey=%zz%41"), "%zz%41");
        assert_eq!(legacy("posix:/a?legacyKey=a+b"), "a+b");
        assert_eq!(legacy("posix:/a?legacyKey=a%3Db%26c"), "a=b&c");
        assert_eq!(legacy("posix:/a?legacyKey=a=b"), "a=b");
        assert_eq!(legacy("posix:/a?%6CegacyKey=b"), "b");
        assert_eq!(legacy("posix:/a?legacyKey=x&legacyKey=y"), "y");
        assert_eq!(legacy("posix:/a?legacyKey=x&"), "x");
        assert_eq!(legacy("posix:/a?legacyKey=x#y"), "x");
        assert_eq!(
            NativeIpcKey::from_qt_string("posix:/a?legacyKey")
                .legacy
                .as_deref(),
            Some("")
        );
        assert_eq!(NativeIpcKey::from_qt_string("posix:/a?").legacy, None);
    }

    #[test]
    fn empty_legacy_query_item_freezes_type() {
        // An empty legacyKey item still creates Qt's private part: setType becomes a no-op,
        // but the key equals (and prints as) a plain key.
        let mut key = NativeIpcKey::from_qt_string("systemv:/a?legacyKey=");
        assert_eq!(key, NativeIpcKey::new("/a", KeyType::SYSTEM_V));
        assert_eq!(key.to_qt_string(), "systemv:/a");
        key.set_type(KeyType::POSIX_REALTIME);
        assert_eq!(key.key_type(), KeyType::SYSTEM_V);
    }

    // tst_qnativeipckey::legacyKeys
    #[test]
    fn legacy_keys() {
        for key_type in [KeyType::DEFAULT_FOR_OS, KeyType::legacy_default_for_os()] {
            for row in data::table("legacy_keys") {
                let legacy = row[1].str();
                let key = legacy_tmp(legacy, IpcObject::SharedMemory, key_type);
                assert_eq!(key.key_type(), key_type, "{legacy:?}");
                let text = key.to_qt_string();
                let parsed = NativeIpcKey::from_qt_string(&text);
                assert_eq!(parsed, key, "{legacy:?} via {text:?}");
                assert_eq!(parsed.legacy_key(), key.legacy_key());
                if !legacy.is_empty() {
                    let mut query = String::from("?legacyKey=");
                    qt_url::push_query_value(&mut query, legacy);
                    assert!(text.contains(&query), "{text:?} lacks {query:?}");
                }
            }
        }
        let tmp = |key: &str| legacy_tmp(key, IpcObject::SharedMemory, KeyType::SYSTEM_V);
        for (legacy, query) in [
            ("?#", "legacyKey=?%23"),
            ("#?", "legacyKey=%23?"),
            ("%", "legacyKey=%25"),
            ("a b", "legacyKey=a b"),
            ("x+y", "legacyKey=x+y"),
            ("\t\x7f", "legacyKey=%09%7F"),
        ] {
            let text = tmp(legacy).to_qt_string();
            assert_eq!(text.split_once('?').unwrap().1, query, "{legacy:?}");
        }
    }

    #[test]
    fn parts_round_trip() {
        let mut frozen = NativeIpcKey::from_qt_string("systemv:/a?legacyKey=");
        let keys = [
            NativeIpcKey::new("/x", T84),
            legacy_tmp("demo", IpcObject::SharedMemory, KeyType::SYSTEM_V),
            frozen.clone(),
        ];
        for key in keys {
            let (native, key_type, legacy) = key.to_parts();
            let back =
                NativeIpcKey::from_parts(native.to_owned(), key_type, legacy.map(str::to_owned));
            assert_eq!(back, key);
            assert_eq!(back.legacy, key.legacy);
        }
        frozen.set_type(KeyType::POSIX_REALTIME);
        assert_eq!(frozen.to_parts(), ("/a", KeyType::SYSTEM_V, Some("")));
    }

    #[test]
    fn legacy_key_accessors_and_set_type() {
        let mut key = legacy_tmp("demo", IpcObject::SharedMemory, KeyType::SYSTEM_V);
        assert_eq!(
            key.to_qt_string(),
            "systemv:/tmp/qipc_sharedmemory_demo89e495e7941cf9e40e6980d14a16bf023ccd4c91\
             ?legacyKey=demo"
        );
        key.set_type(KeyType::POSIX_REALTIME);
        assert_eq!(
            key.key_type(),
            KeyType::SYSTEM_V,
            "setType is a no-op on legacy keys"
        );
        key.set_native_key("x");
        assert_eq!(key.legacy_key(), None);
        assert_eq!(key.to_qt_string(), "systemv:x");
        key.set_type(KeyType::POSIX_REALTIME);
        assert_eq!(
            key.key_type(),
            KeyType::SYSTEM_V,
            "still a no-op after setNativeKey"
        );

        let posix = legacy_tmp("a=b&c", IpcObject::SharedMemory, KeyType::POSIX_REALTIME);
        assert_eq!(
            posix.to_qt_string(),
            "posix:/qipc_sharedmemory_abce7f83b453de7fc6999253b1505b10aae9b62bfea\
             ?legacyKey=a%3Db%26c"
        );
    }

    // qt-semantics.md §2.3 worked examples
    #[test]
    fn derivation_examples() {
        let rt = || "/run/user/1000".to_owned();
        let cases: &[(&str, &str)] = &[
            ("demo", "demo89e495e7941cf9e40e6980d14a16bf023ccd4c91"),
            ("abc", "abca9993e364706816aba3e25717850c26c9cd0d89d"),
            ("my.app-1", "myappe9f3d4837fa2920853f52e1a5496e2c0b3070758"),
            ("Noël", "Nolf74a492d6bd59d7591144462d27aa3e29d1701c1"),
            ("klogshm", "klogshmfb1af3dd737ffaabf27e9cc69efabf7be177b28f"),
        ];
        for &(input, tail) in cases {
            let shm = IpcObject::SharedMemory;
            let sem = IpcObject::SystemSemaphore;
            assert_eq!(
                legacy_tmp(input, shm, KeyType::SYSTEM_V).native_key(),
                format!("/tmp/qipc_sharedmemory_{tail}")
            );
            assert_eq!(
                legacy_tmp(input, sem, KeyType::SYSTEM_V).native_key(),
                format!("/tmp/qipc_systemsem_{tail}")
            );
            assert_eq!(
                legacy_tmp(input, shm, KeyType::POSIX_REALTIME).native_key(),
                format!("/qipc_sharedmemory_{tail}")
            );
            assert_eq!(
                legacy_tmp(input, sem, KeyType::POSIX_REALTIME).native_key(),
                format!("/qipc_systemsem_{tail}")
            );
            // Other System V ids use the same file; the id only changes ftok().
            let t84 = legacy_tmp(input, shm, T84);
            assert_eq!(t84.native_key(), format!("/tmp/qipc_sharedmemory_{tail}"));
            assert_eq!(t84.key_type(), T84);
            assert_eq!(t84.legacy_key(), Some(input));

            let safe = |object, key_type| {
                NativeIpcKey::platform_safe_in(input, object, key_type, rt)
                    .native_key()
                    .to_owned()
            };
            assert_eq!(safe(shm, KeyType::POSIX_REALTIME), format!("/{input}"));
            assert_eq!(safe(sem, KeyType::POSIX_REALTIME), format!("/{input}"));
            assert_eq!(
                safe(shm, KeyType::SYSTEM_V),
                format!("/run/user/1000/{input}")
            );
            assert_eq!(safe(sem, T84), format!("/run/user/1000/{input}"));
            assert_eq!(windows_name(input, shm), format!("shm_{input}"));
            assert_eq!(windows_name(input, sem), format!("sem_{input}"));
        }
        assert_eq!(
            windows_name("Global\\demo", IpcObject::SharedMemory),
            "Global\\shm_demo"
        );
        assert_eq!(
            windows_name("Local\\demo", IpcObject::SystemSemaphore),
            "Local\\sem_demo"
        );
        assert_eq!(
            windows_name("local\\demo", IpcObject::SharedMemory),
            "shm_local\\demo"
        );
    }

    #[test]
    fn derivation_edge_cases() {
        let never = || -> String { panic!("directory looked up needlessly") };
        for key_type in [
            KeyType::SYSTEM_V,
            KeyType::POSIX_REALTIME,
            KeyType::WINDOWS,
            T84,
        ] {
            // An empty input gives an empty key of the requested type, without legacy data.
            let legacy = NativeIpcKey::legacy_in("", IpcObject::SharedMemory, key_type, never);
            assert_eq!(legacy, NativeIpcKey::empty(key_type));
            assert_eq!(legacy.legacy, None);
            let safe = NativeIpcKey::platform_safe_in("", IpcObject::SharedMemory, key_type, never);
            assert_eq!(safe, NativeIpcKey::empty(key_type));
        }
        // Windows is not supported on Linux: an empty key of that type, no legacy data.
        let windows =
            NativeIpcKey::legacy_in("demo", IpcObject::SharedMemory, KeyType::WINDOWS, never);
        assert_eq!(windows.to_qt_string(), "windows:");
        assert_eq!(windows.legacy, None);
        let windows = NativeIpcKey::platform_safe_in(
            "demo",
            IpcObject::SharedMemory,
            KeyType::WINDOWS,
            never,
        );
        assert_eq!(windows.to_qt_string(), "windows:");
        // An absolute System V key is used as it is.
        let abs = NativeIpcKey::platform_safe_in("/x/y", IpcObject::SharedMemory, T84, never);
        assert_eq!(abs.native_key(), "/x/y");
        // Qt routes the invalid type (and unknown types) to the System V backend.
        let zero = legacy_tmp("demo", IpcObject::SharedMemory, KeyType::INVALID);
        assert!(zero.native_key().starts_with("/tmp/qipc_sharedmemory_demo"));
        assert!(!zero.is_valid());
        assert_eq!(zero.to_qt_string(), "");
    }

    #[test]
    fn parse_error_display() {
        let err = "nope".parse::<NativeIpcKey>().unwrap_err();
        assert!(err.to_string().contains("prefix"));
        let err = "posix:/a?b".parse::<NativeIpcKey>().unwrap_err();
        assert!(err.to_string().contains("legacyKey"));
        let err = "posix://h/a".parse::<NativeIpcKey>().unwrap_err();
        assert!(err.to_string().contains("host"));
        let err = "systemv-0:".parse::<NativeIpcKey>().unwrap_err();
        assert!(err.to_string().contains("type"));
    }

    // Expected values observed with QDir::cleanPath() of Qt 6.12.
    #[test]
    fn clean_path_matches_qt() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("/tmp", "/tmp"),
            ("/tmp/", "/tmp"),
            ("/tmp/../tmp//x/..", "/tmp"),
            ("a/..", "."),
            ("a/../..", ".."),
            ("./", "."),
            (".", "."),
            ("..", ".."),
            ("//", "/"),
            ("//a", "/a"),
            ("///a//", "/a"),
            ("a//b/", "a/b"),
            ("/..", "/.."),
            ("/../a", "/../a"),
            ("../a/../..", "../.."),
            ("a/./b/.", "a/b"),
            ("/a/b/../../..", "/.."),
            (".a/..b/...", ".a/..b/..."),
            ("~/x", "~/x"),
            ("/../..", "/../.."),
            ("/a/../..", "/.."),
            ("/./..", "/.."),
            ("/.../..", "/"),
            ("/a/./../../b", "/../b"),
            ("a/../../b/..", ".."),
            ("../../.", "../.."),
            ("./..", ".."),
            (".//..", ".."),
            ("/.", "/"),
            ("/./", "/"),
            ("/./.", "/"),
            ("a/b/../../../c", "../c"),
            ("/a/b/../../../c/..", "/.."),
            ("..//..", ".."),
            ("./a/../../", ".."),
            ("/a/..", "/"),
            ("/a/../", "/"),
            ("a//..", "."),
            ("a//../b", "b"),
            ("//..", "/.."),
            ("..//", "../"),
            ("../..//", "../../"),
            ("x/..//..", ".."),
            ("..///..", ".."),
            (".././/..", "../.."),
            ("..//../..", "../.."),
            ("../..//..", "../.."),
            ("/..//..", "/.."),
            ("/a//..", "/"),
            ("/a//../..", "/.."),
            ("a/b//..", "a"),
            ("a/b//../..", "."),
            ("..//a", "..//a"),
            ("..//./..", "../.."),
            (".//..//..", ".."),
            ("../a//..", ".."),
            ("../a//../..", "../.."),
            ("a/..//..", ".."),
            ("/..//a", "/..//a"),
            ("..//a/..", "../"),
            ("..//..//..", "../.."),
        ];
        for &(input, expected) in cases {
            assert_eq!(clean_path(input), expected, "cleanPath({input:?})");
        }
    }

    // Expected values observed with QDir::tempPath() of Qt 6.12, current directory /tmp/fuzz.
    #[test]
    fn temp_path_rules() {
        let cases: &[(&str, &str)] = &[
            ("", "/tmp"),
            ("/tmp/../tmp//x/..", "/tmp"),
            ("/nonexistent/", "/nonexistent"),
            ("/tmp/link", "/tmp/link"),
            ("relative/./dir", "/tmp/fuzz/relative/dir"),
            ("..", "/tmp"),
            (".", "/tmp/fuzz"),
            ("./", "/tmp/fuzz"),
            ("/", "/"),
            ("//", "/"),
            ("/a//", "/a/"),
            ("../...///", "/tmp/.../"),
            ("//b.y/x...///", "/b.y/x.../"),
            ("./////..//x../", "/tmp/x.."),
            (".y", "/tmp/fuzz/.y"),
            ("a.y////x../.", "/tmp/fuzz/a.y/x.."),
            ("////a../é...//", "/a../é.../"),
        ];
        for &(tmpdir, expected) in cases {
            let got = temp_path_from(tmpdir, || "/tmp/fuzz".to_owned());
            assert_eq!(got, expected, "TMPDIR={tmpdir:?}");
        }
        // Only relative values need the current directory.
        let never = || -> String { panic!("current directory looked up needlessly") };
        assert_eq!(temp_path_from("/var/tmp", never), "/var/tmp");
        assert_eq!(temp_path_from("", never), "/tmp");
        assert!(is_clean("/a/b/") && is_clean("/.../x") && is_clean("/..a"));
        assert!(!is_clean("/a//b") && !is_clean("/a/./b") && !is_clean("/a/..") && !is_clean("/."));
        assert!(!is_clean("/...y/.") && !is_clean("/.../.."));
        assert_eq!(temp_path_from("/...../..//", || unreachable!()), "//");
        assert_eq!(temp_path_from("/...y/.", || unreachable!()), "/...y");
    }

    #[test]
    fn runtime_dir_check() {
        let base = std::env::temp_dir().join(format!("qsharedmem-key-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir(&base).unwrap();
        let path = |name: &str| base.join(name).to_str().unwrap().to_owned();

        // Missing: created with mode 0700 and accepted.
        let fresh = path("fresh");
        assert!(check_runtime_dir(&fresh));
        assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        // Existing with the right mode: accepted again.
        assert!(check_runtime_dir(&fresh));
        // Wrong mode: rejected, and not repaired (Qt 6 does not chmod).
        let loose = path("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(!check_runtime_dir(&loose));
        assert_eq!(fs::metadata(&loose).unwrap().mode() & 0o777, 0o755);
        // A symlink to a good directory: rejected.
        let link = path("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(!check_runtime_dir(&link));
        // A dangling symlink and a regular file: rejected.
        let dangling = path("dangling");
        std::os::unix::fs::symlink(path("nowhere"), &dangling).unwrap();
        assert!(!check_runtime_dir(&dangling));
        let file = path("file");
        fs::write(&file, b"").unwrap();
        assert!(!check_runtime_dir(&file));
        // A missing parent: mkdir fails with ENOENT.
        assert!(!check_runtime_dir(&path("missing/child")));

        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn runtime_dir_is_usable_or_empty() {
        let dir = runtime_dir();
        if !dir.is_empty() {
            let meta = fs::symlink_metadata(&dir).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.mode() & 0o777, 0o700);
        }
    }

    #[test]
    fn qt_utf8_decoding() {
        assert_eq!(
            qt_url::qt_from_utf8(b"\xef\xbb\xbfa\xef\xbb\xbf"),
            "a\u{feff}"
        );
        assert_eq!(qt_url::qt_from_utf8(b"\xe2\x82A"), "\u{fffd}\u{fffd}A");
        assert_eq!(qt_url::qt_from_utf8(b"\xf0\x9f\x98\x80"), "\u{1f600}");
        assert_eq!(qt_url::qt_from_utf8(b"\xf5\x80"), "\u{fffd}\u{fffd}");
    }
}
