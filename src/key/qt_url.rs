//! The `QUrl` behaviour `QNativeIpcKey::toString()` and `fromString()` rely on: Qt parses and
//! prints keys with `QUrl`; these are the few `QUrl`/`QUrlQuery` rules those two functions
//! actually exercise (TolerantMode percent handling, UTF-8 decoding, the authority and query
//! checks), by hand, so that odd strings behave as they do in Qt.

use super::{KeyType, NativeIpcKey, ParseKeyError, ParseReason};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

/// Control characters are the only characters besides delimiters that
/// `QUrl::toString(DecodeReserved)` never prints literally.
fn is_control(c: char) -> bool {
    c < ' ' || c == '\x7f'
}

/// The path part of `toString()`: what `QUrl::setPath(TolerantMode)` followed by
/// `toString(DecodeReserved)` makes of the key once Qt has replaced `%` by `%25` (so that it
/// is never decoded) and a leading `//` by `/%2F` (so that it is not read as an authority).
pub(super) fn push_path(out: &mut String, native: &str) {
    let rest = match native.strip_prefix("//") {
        Some(rest) => {
            out.push_str("/%2F");
            rest
        }
        None => native,
    };
    for c in rest.chars() {
        match c {
            '%' | '?' | '#' => push_escaped(out, c as u8),
            c if is_control(c) => push_escaped(out, c as u8),
            c => out.push(c),
        }
    }
}

/// The `legacyKey` value as `QUrlQuery::addQueryItem` + `toString(DecodeReserved)` print it:
/// the query delimiters `&` and `=` and the fragment delimiter `#` are escaped, `?` is not.
pub(super) fn push_query_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '%' | '#' | '&' | '=' => push_escaped(out, c as u8),
            c if is_control(c) => push_escaped(out, c as u8),
            c => out.push(c),
        }
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|d| d as u8)
}

/// The byte `%XX` at `pos` encodes, if there is a well-formed escape there.
fn escape_at(bytes: &[u8], pos: usize) -> Option<u8> {
    match bytes.get(pos..pos + 3)? {
        [b'%', hi, lo] => Some(hex_value(*hi)? << 4 | hex_value(*lo)?),
        _ => None,
    }
}

/// QUrl's TolerantMode rule: one `%` that does not start a `%XX` escape makes Qt treat every
/// `%` of that URL component as a literal percent sign, well-formed escapes included.
fn has_stray_percent(component: &str) -> bool {
    let bytes = component.as_bytes();
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && escape_at(bytes, i).is_none())
}

/// Decodes one UTF-8 sequence at the start of `bytes` the way Qt's `QUtf8Functions` do:
/// no overlong forms, no surrogates, nothing above U+10FFFF, and (for URLs) no Unicode
/// non-characters. Returns the character and the number of bytes used.
fn utf8_sequence(bytes: &[u8], allow_non_characters: bool) -> Option<(char, usize)> {
    let lead = *bytes.first()?;
    let (len, min, initial) = match lead {
        0xc2..=0xdf => (2, 0x80, u32::from(lead & 0x1f)),
        0xe0..=0xef => (3, 0x800, u32::from(lead & 0x0f)),
        0xf0..=0xf4 => (4, 0x1_0000, u32::from(lead & 0x07)),
        _ => return None,
    };
    let mut code = initial;
    for &b in bytes.get(1..len)? {
        if b & 0xc0 != 0x80 {
            return None;
        }
        code = code << 6 | u32::from(b & 0x3f);
    }
    if code < min || (!allow_non_characters && is_non_character(code)) {
        return None;
    }
    // `char::from_u32` rejects exactly the surrogates and values above U+10FFFF.
    char::from_u32(code).map(|c| (c, len))
}

/// Unicode non-characters: U+FDD0..U+FDEF and the last two code points of every plane.
fn is_non_character(code: u32) -> bool {
    (0xfdd0..=0xfdef).contains(&code) || code & 0xfffe == 0xfffe
}

/// `QString::fromUtf8()`: every byte that does not start a valid sequence becomes one
/// U+FFFD, non-characters are accepted, and a leading byte-order mark is dropped.
pub(super) fn qt_from_utf8(bytes: &[u8]) -> String {
    let mut rest = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut out = String::with_capacity(rest.len());
    while let Some(&byte) = rest.first() {
        if byte < 0x80 {
            out.push(char::from(byte));
            rest = &rest[1..];
        } else if let Some((c, len)) = utf8_sequence(rest, true) {
            out.push(c);
            rest = &rest[len..];
        } else {
            out.push(char::REPLACEMENT_CHARACTER);
            rest = &rest[1..];
        }
    }
    out
}

/// `QUrl::path()` (fully decoded) of a path parsed in TolerantMode. Escapes of ASCII decode
/// to that character; runs of escapes that form valid UTF-8 decode to the character; every
/// other escaped byte becomes U+FFFD (QUrl keeps it encoded, and `FullyDecoded` cannot
/// represent it). Literal characters stay as they are.
pub(super) fn decode_path(path: &str) -> String {
    if has_stray_percent(path) {
        return path.to_owned();
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(byte) = escape_at(bytes, pos) else {
            // A literal character: `path` is a str, so it is one whole UTF-8 sequence.
            let c = path[pos..]
                .chars()
                .next()
                .unwrap_or(char::REPLACEMENT_CHARACTER);
            out.push(c);
            pos += c.len_utf8();
            continue;
        };
        if byte < 0x80 {
            out.push(char::from(byte));
            pos += 3;
            continue;
        }
        // Only consecutive escapes can continue an escaped UTF-8 sequence.
        let mut sequence = [byte, 0, 0, 0];
        let mut available = 1;
        while available < 4 {
            match escape_at(bytes, pos + 3 * available) {
                Some(b) => sequence[available] = b,
                None => break,
            }
            available += 1;
        }
        match utf8_sequence(&sequence[..available], false) {
            Some((c, len)) => {
                out.push(c);
                pos += 3 * len;
            }
            None => {
                out.push(char::REPLACEMENT_CHARACTER);
                pos += 3;
            }
        }
    }
    out
}

/// The bytes of a query key or value as `fromString()` sees them: `QUrlQuery`'s item after
/// `QUrl::fromPercentEncoding()` turned every escape into its byte (values are then read
/// with `QString::fromUtf8()`). With a stray `%` in the query, QUrl has already turned every
/// `%` into `%25`, so the text comes out literally.
fn query_part_bytes(part: &str, stray_percent: bool) -> Vec<u8> {
    let bytes = part.as_bytes();
    if stray_percent {
        return bytes.to_vec();
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut pos = 0;
    while pos < bytes.len() {
        match escape_at(bytes, pos) {
            Some(byte) => {
                decoded.push(byte);
                pos += 3;
            }
            None => {
                decoded.push(bytes[pos]);
                pos += 1;
            }
        }
    }
    decoded
}

/// The scheme `QUrl` finds in front of the first `:`: a letter, then letters, digits, `+`,
/// `-` or `.` (QUrl also lets those three start it), lower-cased. `None` if the text there is
/// not a scheme, in which case QUrl parses the whole string as a relative path.
fn scheme(text: &str) -> Option<String> {
    let valid = !text.is_empty()
        && text.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphabetic()
                || (b.is_ascii_digit() && i > 0)
                || matches!(b, b'+' | b'-' | b'.')
        });
    valid.then(|| text.to_ascii_lowercase())
}

/// `QNativeIpcKey::fromString()` on top of `QUrl(text, QUrl::TolerantMode)`.
pub(super) fn parse(text: &str) -> Result<NativeIpcKey, ParseKeyError> {
    let error = |reason| ParseKeyError { reason };

    // QUrlPrivate::parse: the fragment starts at the first '#', the query at the first '?'
    // before it, and only a ':' before both can end a scheme.
    let (mut colon, mut question, mut hash) = (None, None, None);
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'#' => {
                hash = Some(i);
                break;
            }
            b':' if question.is_none() && colon.is_none() => colon = Some(i),
            b'?' if question.is_none() => question = Some(i),
            _ => {}
        }
    }
    let colon = colon.ok_or(error(ParseReason::NoScheme))?;
    let scheme = scheme(&text[..colon]).ok_or(error(ParseReason::NoScheme))?;
    let key_type = KeyType::from_scheme(&scheme).ok_or(error(ParseReason::UnknownType))?;

    let hier_end = question.or(hash).unwrap_or(text.len());
    let hier = &text[colon + 1..hier_end];
    let path = match hier.strip_prefix("//") {
        Some(rest) => {
            // Qt rejects any user info, host or port. The authority may still be present
            // but empty: "", ":" (no port digits) and an empty user name before '@'.
            let end = rest.find('/').unwrap_or(rest.len());
            if !matches!(&rest[..end], "" | ":" | "@" | "@:") {
                return Err(error(ParseReason::Authority));
            }
            &rest[end..]
        }
        None => hier,
    };

    let mut key = NativeIpcKey::new(decode_path(path), key_type);
    if let Some(question) = question {
        let query = &text[question + 1..hash.unwrap_or(text.len())];
        let stray_percent = has_stray_percent(query);
        // QUrlQuery: items are separated by '&'; a trailing '&' ends the last item rather
        // than starting an empty one, but an empty item elsewhere is an item (named "").
        if !query.is_empty() {
            let items = query.strip_suffix('&').unwrap_or(query);
            for item in items.split('&') {
                let (name, value) = match item.split_once('=') {
                    Some((name, value)) => (name, Some(value)),
                    None => (item, None),
                };
                // Qt compares the name itself (its letters may be escaped), not a
                // `fromUtf8()` reading of it, which would drop a byte-order mark.
                if query_part_bytes(name, stray_percent) != b"legacyKey" {
                    return Err(error(ParseReason::QueryItem));
                }
                // The last legacyKey wins; even an empty one creates Qt's private part.
                let value = value.map(|v| query_part_bytes(v, stray_percent));
                key.legacy = Some(value.map(|v| qt_from_utf8(&v)).unwrap_or_default());
            }
        }
    }
    Ok(key)
}
