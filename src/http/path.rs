//! Request paths normalised before routing, so that a route and the upstream agree on which
//! resource is meant.
//!
//! Icinga 2's REST API percent-decodes each segment and skips empty ones, so `/v1//actions`
//! and `/v1/%61ctions` reach `/v1/actions` there while a router matching raw bytes would send
//! them past a stricter `/v1/actions` route. Gatehouse routes and forwards the normalised path
//! (Envoy's `normalize_path` + `merge_slashes`): unreserved `%XX` decoded (RFC 3986 §6.2.2.2),
//! other escapes kept with upper-case hex, runs of `/` merged, `.` segments removed and `..`
//! resolved (§5.2.4). A `..` above the root, a broken `%` escape or a path that is not UTF-8
//! is refused. The query is not touched.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `..` would climb above `/`.
    AboveRoot,
    /// The path's bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::BadEscape => f.write_str("invalid path: broken percent-encoding"),
            PathError::AboveRoot => f.write_str("invalid path: `..` above the root"),
            PathError::NotUtf8 => f.write_str("invalid path: not UTF-8"),
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` is already in normal form: no `%`, no `//`, no `.` or `..` segment. This is
/// the hot path (almost every request), checked without allocating.
fn is_normal(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('%')
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..")
}

/// The normal form of an origin-form `path` (no query). Paths that do not start with `/`
/// (`*` for `OPTIONS *`) are returned unchanged.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Decode unreserved escapes; re-emit the others in upper case.
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h << 4 | l;
            if unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else {
            // Whole UTF-8 sequences are copied char by char.
            let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
            decoded.push(ch);
            i += ch.len_utf8();
        }
    }
    // 2. Merge slashes and resolve dot segments.
    let trailing = decoded.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn what_icinga_would_read_is_what_we_route() {
        assert_eq!(n("/v1//actions"), "/v1/actions");
        assert_eq!(n("//v1/actions"), "/v1/actions");
        assert_eq!(n("/v1/%61ctions/x"), "/v1/actions/x");
        assert_eq!(n("/v1/%2e/actions"), "/v1/actions");
        assert_eq!(n("/v1/./actions"), "/v1/actions");
        assert_eq!(n("/v1/foo/../actions/"), "/v1/actions/");
        assert_eq!(n("/v1/foo/%2E%2E/actions"), "/v1/actions");
        assert_eq!(n("/v1/a%2fb"), "/v1/a%2Fb", "reserved escapes stay");
        assert_eq!(n("/v1/a%20b"), "/v1/a%20b");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/v1/actions", "/v1/actions/", "/a.b/c..d/.e", "*"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize("/../etc"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/ü/%C3%BC"), "/ü/%C3%BC");
    }
}
