//! The part of a JSON-RPC message that policy needs: `method` and whether it has an `id`.
//!
//! This runs once per relayed message, so it is a single pass with no allocation on the
//! common path: std's UTF-8 check, then an exact RFC 8259 scan that validates the whole
//! payload, enforces Icinga's nesting limit (32) as it goes, and keeps only the top-level
//! `method` (borrowed unless it contains escapes) and `id`. It was a full serde pass
//! (`IgnoredAny`) before: ~1 µs per 600-byte check result, half of the relay's CPU per
//! message. The tests hold it to serde_json's verdicts.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// Icinga's maximum JSON nesting depth.
pub const MAX_DEPTH: usize = 32;

/// What was read from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `method`, absent on replies.
    pub method: Option<Cow<'a, str>>,
    /// Whether the message carries a non-null `id` (a request expecting a reply, or a reply).
    pub has_id: bool,
    /// Where the top-level `params` value sits in the payload, if there is one: lets a
    /// rewrite (the relay's `cert_request`) splice one field without building a tree.
    pub params: Option<Range<usize>>,
    /// Offset of the top-level object's closing `}`.
    pub close: usize,
}

/// One member of a JSON object, located in the object's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<'a> {
    /// The key, unescaped.
    pub key: Cow<'a, str>,
    /// From the key's opening quote to the end of the value.
    pub span: Range<usize>,
    /// The value alone.
    pub value: Range<usize>,
}

/// The members of the JSON object `obj` (e.g. a message's `params`), in order, without
/// parsing their values into a tree.
pub fn members(obj: &[u8]) -> Result<Vec<Member<'_>>, MessageError> {
    let text = std::str::from_utf8(obj).map_err(|e| {
        MessageError::InvalidJson(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    let mut s = Scanner { b: obj, i: 0 };
    let mut out = Vec::new();
    s.ws();
    s.eat(b'{', "expected an object")?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
        s.end()?;
        return Ok(out);
    }
    loop {
        s.ws();
        let start = s.i;
        let key = s.string(text)?;
        s.ws();
        s.eat(b':', "expected ':'")?;
        s.ws();
        let value = s.i;
        s.value(2)?;
        out.push(Member {
            key,
            span: start..s.i,
            value: value..s.i,
        });
        s.ws();
        match s.peek() {
            Some(b',') => s.i += 1,
            Some(b'}') => {
                s.i += 1;
                s.end()?;
                return Ok(out);
            }
            _ => return s.err("expected ',' or '}'"),
        }
    }
}

/// Why a payload is not an acceptable JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Not valid JSON (or not UTF-8), with the reason and byte offset.
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

/// Parses the envelope of one payload.
pub fn parse(payload: &[u8]) -> Result<Envelope<'_>, MessageError> {
    let text = std::str::from_utf8(payload).map_err(|e| {
        MessageError::InvalidJson(format!("invalid UTF-8 at byte {}", e.valid_up_to()))
    })?;
    let mut s = Scanner { b: payload, i: 0 };
    s.ws();
    let env = if s.peek() == Some(b'{') {
        s.top_object(text)?
    } else {
        // Tell "valid JSON but not an object" from garbage, for the log.
        s.value(1)?;
        s.end()?;
        return Err(MessageError::NotObject);
    };
    s.end()?;
    Ok(env)
}

/// Bytes that end a run of plain string content.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The end of the run of plain string bytes starting at `i`: the index of the first `"`, `\`
/// or control character, or `b.len()`.
///
/// Strings are most of a check result's bytes, so they are skipped eight bytes per step
/// (SWAR): each mask flags, in a byte's high bit, a byte that is `"`, `\` or below 0x20. A
/// flag can be spurious only in a byte *after* a genuine one in the same mask (borrows move
/// upwards), so the lowest flag of the union is always the first stop byte.
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    const fn has_zero(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGH
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let stops = has_zero(w ^ (ONES * b'"' as u64))
            | has_zero(w ^ (ONES * b'\\' as u64))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if stops != 0 {
            return i + (stops.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if STOP[c as usize] {
            break;
        }
        i += 1;
    }
    i
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

type Res<T> = Result<T, MessageError>;

impl<'a> Scanner<'a> {
    fn err<T>(&self, what: &str) -> Res<T> {
        Err(MessageError::InvalidJson(format!(
            "{what} at byte {}",
            self.i
        )))
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8, what: &str) -> Res<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    fn end(&mut self) -> Res<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("trailing characters")
        }
    }

    /// The top-level object: validates it and keeps `method` and `id`.
    fn top_object(&mut self, text: &'a str) -> Res<Envelope<'a>> {
        let mut env = Envelope {
            method: None,
            has_id: false,
            params: None,
            close: 0,
        };
        let mut seen_method = false;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            env.close = self.i;
            self.i += 1;
            return Ok(env);
        }
        loop {
            self.ws();
            let key = self.string(text)?;
            self.ws();
            self.eat(b':', "expected ':'")?;
            self.ws();
            match key.as_ref() {
                "method" => {
                    // Two `method` keys would let the relay and Icinga disagree on which counts.
                    if seen_method {
                        return self.err("duplicate field `method`");
                    }
                    seen_method = true;
                    match self.peek() {
                        Some(b'"') => env.method = Some(self.string(text)?),
                        Some(b'n') => self.literal(b"null")?,
                        None => return self.err("unexpected end"),
                        _ => return self.err("`method` must be a string"),
                    }
                }
                "id" => {
                    env.has_id = self.peek() != Some(b'n');
                    self.value(2)?;
                }
                "params" => {
                    // As with `method`: which of two would Icinga read?
                    if env.params.is_some() {
                        return self.err("duplicate field `params`");
                    }
                    let start = self.i;
                    self.value(2)?;
                    env.params = Some(start..self.i);
                }
                _ => self.value(2)?,
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    env.close = self.i;
                    self.i += 1;
                    return Ok(env);
                }
                _ => return self.err("expected ',' or '}'"),
            }
        }
    }

    /// Any value at nesting `depth` (containers count from 1).
    fn value(&mut self, depth: usize) -> Res<()> {
        match self.peek() {
            Some(b'{') | Some(b'[') if depth > MAX_DEPTH => Err(MessageError::TooDeep),
            Some(b'{') => self.container(depth, b'}', true),
            Some(b'[') => self.container(depth, b']', false),
            Some(b'"') => self.skip_string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("expected a value"),
            None => self.err("unexpected end"),
        }
    }

    fn container(&mut self, depth: usize, close: u8, object: bool) -> Res<()> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if object {
                if self.peek() != Some(b'"') {
                    return self.err("expected a key");
                }
                self.skip_string()?;
                self.ws();
                self.eat(b':', "expected ':'")?;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or a closing bracket"),
            }
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Res<()> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, and within f64's range
    /// (serde_json refuses `1e400` or a 400-digit integer; so does the relay).
    fn number(&mut self) -> Res<()> {
        let start = self.i;
        self.number_grammar()?;
        let lit = &self.b[start..self.i];
        // Only a long literal or one with an exponent can overflow.
        if lit.len() > 15 || lit.iter().any(|c| matches!(c, b'e' | b'E')) {
            let finite = std::str::from_utf8(lit)
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(f64::is_finite);
            if !finite {
                return self.err("number out of range");
            }
        }
        Ok(())
    }

    fn number_grammar(&mut self) -> Res<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("invalid number");
            }
        }
        Ok(())
    }

    /// Skips a string, validating its escapes.
    fn skip_string(&mut self) -> Res<()> {
        self.scan_string().map(|_| ())
    }

    /// Scans a string starting at `"`; returns (content start, content end, had escapes).
    fn scan_string(&mut self) -> Res<(usize, usize, bool)> {
        self.eat(b'"', "expected '\"'")?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = plain_run(self.b, self.i);
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok((start, self.i - 1, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                // A high surrogate must be followed by a low one.
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return self.err("lone leading surrogate");
                                }
                                self.i += 2;
                                if !(0xDC00..0xE000).contains(&self.hex4()?) {
                                    return self.err("invalid surrogate pair");
                                }
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return self.err("lone trailing surrogate");
                            }
                        }
                        _ => return self.err("invalid escape"),
                    }
                }
                // The fast loop stops only at `"`, `\` or a control character.
                Some(_) => return self.err("control character in string"),
            }
        }
    }

    fn hex4(&mut self) -> Res<u32> {
        let Some(h) = self.b.get(self.i..self.i + 4) else {
            return self.err("short unicode escape");
        };
        let mut v = 0u32;
        for &c in h {
            let d = (c as char).to_digit(16);
            match d {
                Some(d) => v = v * 16 + d,
                None => return self.err("invalid unicode escape"),
            }
        }
        self.i += 4;
        Ok(v)
    }

    /// A string's value: borrowed from `text` unless it has escapes.
    fn string(&mut self, text: &'a str) -> Res<Cow<'a, str>> {
        let open = self.i;
        let (start, end, escaped) = self.scan_string()?;
        if !escaped {
            return Ok(Cow::Borrowed(&text[start..end]));
        }
        serde_json::from_str::<String>(&text[open..self.i])
            .map(Cow::Owned)
            .map_err(|e| MessageError::InvalidJson(e.to_string()))
    }
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
    fn plain_run_stops_at_the_first_stop_byte() {
        // Every stop byte at every offset, after plain bytes that include high (UTF-8) bytes
        // and bytes just above the stop values, with more stop bytes after it.
        let stops: Vec<u8> = (0u8..0x20).chain([b'"', b'\\']).collect();
        for &stop in &stops {
            for at in 0..20 {
                for start in 0..3.min(at + 1) {
                    let mut b: Vec<u8> = (0..at)
                        .map(|k| [b'a', 0xc3, b'#', b']', 0x20, 0xff][k % 6])
                        .collect();
                    b.push(stop);
                    b.extend_from_slice(b"x\"\x01yz");
                    assert_eq!(
                        plain_run(&b, start),
                        at,
                        "stop {stop:#x} at {at} from {start}"
                    );
                }
            }
        }
        assert_eq!(plain_run(b"abcdefghijk", 0), 11);
        assert_eq!(plain_run(b"abcdefghijk", 11), 11);
        assert_eq!(plain_run(b"", 0), 0);
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
            parse(br#"{"method":"a","params":{},"params":{"x":1}}"#),
            Err(MessageError::InvalidJson(_))
        ));
        assert!(matches!(
            parse(br#"{"method":5}"#),
            Err(MessageError::InvalidJson(_))
        ));
    }

    /// The scanner's verdict must match serde_json's on the same bytes.
    fn serde_verdict(p: &[u8]) -> Result<(Option<String>, bool), &'static str> {
        let v: serde_json::Value = match serde_json::from_slice(p) {
            Ok(v) => v,
            Err(_) => return Err("invalid"),
        };
        fn depth(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        if depth(&v) > MAX_DEPTH {
            return Err("deep");
        }
        let Some(o) = v.as_object() else {
            return Err("not object");
        };
        let method = match o.get("method") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("invalid"),
        };
        Ok((method, o.get("id").is_some_and(|i| !i.is_null())))
    }

    fn ours(p: &[u8]) -> Result<(Option<String>, bool), &'static str> {
        match parse(p) {
            Ok(e) => Ok((e.method.map(|m| m.into_owned()), e.has_id)),
            Err(MessageError::InvalidJson(_)) => Err("invalid"),
            Err(MessageError::NotObject) => Err("not object"),
            Err(MessageError::TooDeep) => Err("deep"),
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("(method|id|params|[a-z\\\\\"]{0,4})", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_serde_on_values(v in json_value()) {
            let text = serde_json::to_vec(&v).unwrap();
            proptest::prop_assert_eq!(ours(&text), serde_verdict(&text));
        }

        #[test]
        fn agrees_with_serde_on_mutations(pos in 0usize..80, byte in proptest::prelude::any::<u8>(), cut in 0usize..90) {
            let base = br#"{"jsonrpc":"2.0","method":"event::Heartbeat","id":7,"params":{"a":[1,-2.5e3,true,null,"x\u00e9"]}}"#;
            let mut m = base.to_vec();
            let p = pos % m.len();
            m[p] = byte;
            m.truncate(cut.max(1).min(m.len()));
            proptest::prop_assert_eq!(ours(&m), serde_verdict(&m));
        }
    }

    #[test]
    fn huge_integer_literal_is_out_of_range() {
        let big = format!("{{\"a\":{}}}", "4".repeat(316));
        assert!(
            matches!(parse(big.as_bytes()), Err(MessageError::InvalidJson(e)) if e.contains("out of range"))
        );
        assert!(
            parse(b"{\"a\":123456789012345678901234567890}").is_ok(),
            "large but finite"
        );
        assert!(parse(b"{\"a\":1e308}").is_ok());
    }

    #[test]
    fn strict_grammar() {
        for bad in [
            &b"{\"a\":01}"[..],
            b"{\"a\":1.}",
            b"{\"a\":-}",
            b"{\"a\":1e}",
            b"{\"a\":.5}",
            b"{\"a\":tru}",
            b"{\"a\":[1,]}",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{a:1}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":\"\\udc00\"}",
            b"{\"a\":\"\x01\"}",
            b"{} {}",
            b"{\"method\":null,\"method\":\"x\"}",
            // Found by `make fuzz`: numbers beyond f64 are invalid for serde_json.
            b"{\"a\":1e400}",
            b"{\"a\":-1e309}",
        ] {
            assert!(
                matches!(parse(bad), Err(MessageError::InvalidJson(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let ok =
            parse(b" {\"method\":\"a\",\"id\":null,\"x\":[-0.5E+3,{\"y\":\"\\ud83d\\ude00\"}]} ")
                .unwrap();
        assert_eq!((ok.method.as_deref(), ok.has_id), (Some("a"), false));
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
