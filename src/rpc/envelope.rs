//! The part of a JSON-RPC message that policy needs: `method` and whether it has an `id`.
//!
//! The payload is validated as JSON by serde while everything but `method` and `id` is skipped
//! (`IgnoredAny`), so no tree is built. Icinga's nesting limit (32) is checked first by a byte
//! scan, which also keeps serde's recursion far below its own limit.

use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Icinga's maximum JSON nesting depth.
pub const MAX_DEPTH: usize = 32;

/// What was read from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `method`, absent on replies.
    pub method: Option<Cow<'a, str>>,
    /// Whether the message carries an `id` (a request expecting a reply, or a reply).
    pub has_id: bool,
}

/// Why a payload is not an acceptable JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Not valid JSON (or not UTF-8), with serde's reason.
    InvalidJson(String),
    /// Valid JSON, but not an object.
    NotObject,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl MessageError {
    /// A short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            MessageError::InvalidJson(_) => "invalid_json",
            MessageError::NotObject => "not_object",
            MessageError::TooDeep => "too_deep",
        }
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            MessageError::NotObject => f.write_str("message is not a JSON object"),
            MessageError::TooDeep => write!(f, "JSON nested deeper than {MAX_DEPTH}"),
        }
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<IgnoredAny>,
}

/// Parses the envelope of one payload.
pub fn parse(payload: &[u8]) -> Result<Envelope<'_>, MessageError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if !within_depth(payload, MAX_DEPTH) {
        return Err(MessageError::TooDeep);
    }
    if first != Some(&b'{') {
        // Tell "valid JSON but not an object" from garbage, for the log.
        return Err(match serde_json::from_slice::<IgnoredAny>(payload) {
            Ok(_) => MessageError::NotObject,
            Err(e) => MessageError::InvalidJson(e.to_string()),
        });
    }
    let raw: Raw<'_> =
        serde_json::from_slice(payload).map_err(|e| MessageError::InvalidJson(e.to_string()))?;
    Ok(Envelope {
        method: raw.method,
        has_id: raw.id.is_some(),
    })
}

/// Whether brackets nest at most `max` deep, ignoring those inside strings.
fn within_depth(s: &[u8], max: usize) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in s {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_method_and_id() {
        let e = parse(br#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#).unwrap();
        assert_eq!(e.method.as_deref(), Some("event::Heartbeat"));
        assert!(!e.has_id);
        let e = parse(br#"{"id":"7","result":{"status_code":0}}"#).unwrap();
        assert_eq!(e.method, None);
        assert!(e.has_id);
        let e = parse(br#"{"method":"a\u003a\u003ab"}"#).unwrap();
        assert_eq!(e.method.as_deref(), Some("a::b"));
    }

    #[test]
    fn rejects_bad_messages() {
        assert_eq!(parse(b"[1,2]"), Err(MessageError::NotObject));
        assert_eq!(parse(b"\"x\""), Err(MessageError::NotObject));
        assert!(matches!(
            parse(b"{\"method\":"),
            Err(MessageError::InvalidJson(_))
        ));
        assert!(matches!(
            parse(b"{\"method\":\"\xff\"}"),
            Err(MessageError::InvalidJson(_))
        ));
        assert!(matches!(parse(b""), Err(MessageError::InvalidJson(_))));
        assert!(
            matches!(
                parse(br#"{"method":"a","method":"b"}"#),
                Err(MessageError::InvalidJson(_))
            ),
            "duplicate method keys are ambiguous"
        );
        assert!(matches!(
            parse(br#"{"method":5}"#),
            Err(MessageError::InvalidJson(_))
        ));
    }

    #[test]
    fn depth_limit() {
        let nest = |n: usize| {
            let mut s = String::from("{\"method\":\"x\",\"p\":");
            s.push_str(&"[".repeat(n - 1));
            s.push_str(&"]".repeat(n - 1));
            s.push('}');
            s
        };
        assert!(parse(nest(32).as_bytes()).is_ok());
        assert_eq!(parse(nest(33).as_bytes()), Err(MessageError::TooDeep));
        // Brackets inside strings do not count.
        let s = format!("{{\"method\":\"{}\"}}", "[".repeat(100));
        assert!(parse(s.as_bytes()).is_ok());
        let s = format!("{{\"method\":\"\\\"{}\"}}", "[".repeat(100));
        assert!(parse(s.as_bytes()).is_ok());
    }
}
