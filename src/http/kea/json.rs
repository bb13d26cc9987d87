//! Byte-level reading of Kea JSON where building a tree would cost the answer's size: the
//! `result` codes of an answer streamed through in chunks ([`ResultScanner`]), and a command
//! with its `service` member cut out, every other byte as sent ([`without_service`]).

use bytes::{Bytes, BytesMut};

/// The `result` codes of a Kea answer read as it streams past, in constant memory: the
/// `result` member of the top-level object, or of each object in the top-level list. Nested
/// `result` members (inside `arguments`) are not codes and are skipped.
#[derive(Debug, Default)]
pub struct ResultScanner {
    /// Open containers: `true` for an object. Only the first two levels are kept.
    stack: Vec<bool>,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// In an object at a level whose members are codes, the next string is a key.
    want_key: bool,
    /// The key being read (first bytes only) and whether it is a key at all.
    key: Option<Vec<u8>>,
    /// The last key read at the code level was `result`; the value comes next.
    pending: bool,
    /// Digits of the code being read.
    number: Option<Vec<u8>>,
    codes: Vec<i64>,
}

impl ResultScanner {
    /// Reads the next chunk of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            self.byte(b);
        }
    }

    /// The codes read so far, in order.
    pub fn codes(&self) -> &[i64] {
        &self.codes
    }

    /// The codes read, taking them.
    pub fn into_codes(mut self) -> Vec<i64> {
        self.end_number();
        self.codes
    }

    /// Whether members at the current level are code level: the top-level object, or an
    /// object directly inside the top-level list.
    fn at_code_level(&self) -> bool {
        matches!(
            (self.depth, self.stack.as_slice()),
            (1, [true]) | (2, [false, true])
        )
    }

    fn end_number(&mut self) {
        if let Some(n) = self.number.take() {
            if let Some(v) = std::str::from_utf8(&n).ok().and_then(|t| t.parse().ok()) {
                self.codes.push(v);
            }
        }
    }

    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
                // An escaped key is never `result` as Kea writes it; keep it from matching.
                if let Some(k) = &mut self.key {
                    k.push(0);
                }
            } else if b == b'"' {
                self.in_string = false;
                if let Some(k) = self.key.take() {
                    self.pending = k == b"result";
                }
            } else if let Some(k) = &mut self.key {
                if k.len() < 8 {
                    k.push(b);
                } else {
                    k.push(0);
                    k.truncate(8);
                }
            }
            return;
        }
        if let Some(n) = &mut self.number {
            if b.is_ascii_digit() || b == b'-' {
                n.push(b);
                if n.len() > 20 {
                    self.number = None;
                }
                return;
            }
            self.end_number();
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.key = (self.want_key && self.at_code_level()).then(Vec::new);
                self.want_key = false;
            }
            b'{' | b'[' => {
                self.pending = false;
                self.depth += 1;
                if self.stack.len() < 2 && self.depth == self.stack.len() + 1 {
                    self.stack.push(b == b'{');
                }
                self.want_key = b == b'{';
            }
            b'}' | b']' => {
                self.pending = false;
                if self.depth == self.stack.len() {
                    self.stack.pop();
                }
                self.depth = self.depth.saturating_sub(1);
                self.want_key = false;
            }
            b',' => {
                self.pending = false;
                self.want_key = self.stack.len() == self.depth && self.stack.last() == Some(&true);
            }
            b':' => {}
            b'-' | b'0'..=b'9' if self.pending => {
                self.pending = false;
                self.number = Some(vec![b]);
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => self.pending = false,
        }
    }
}

/// `body` (a command that parsed) without its top-level `service` member; every other byte
/// stays as sent. `None` when it has none. Kea 3.2 refuses a `service` that is not its own
/// and 3.0 ignores it, so a daemon never gets one.
pub fn without_service(body: &[u8]) -> Option<Bytes> {
    let mut at = skip_ws(body, 0);
    if body.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    // (start of the member's key, end of its value) for each member, and the service one.
    let mut members: Vec<(usize, usize)> = Vec::new();
    let mut service = None;
    loop {
        at = skip_ws(body, at);
        match body.get(at)? {
            b'}' => break,
            b',' => {
                at += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_start = at;
        let key_end = skip_string(body, at)?;
        let key: String = serde_json::from_slice(&body[key_start..key_end]).ok()?;
        at = skip_ws(body, key_end);
        if body.get(at) != Some(&b':') {
            return None;
        }
        let value_end = skip_value(body, skip_ws(body, at + 1))?;
        if key == "service" {
            service = Some(members.len());
        }
        members.push((key_start, value_end));
        at = value_end;
    }
    let i = service?;
    let (start, end) = members[i];
    // Cut from the end of the member before (its comma goes) or, for the first member, up to
    // the start of the next one.
    let (cut_from, cut_to) = match (i.checked_sub(1).map(|p| members[p]), members.get(i + 1)) {
        (Some((_, prev_end)), _) => (prev_end, end),
        (None, Some(&(next_start, _))) => (start, next_start),
        (None, None) => (start, end),
    };
    let mut out = BytesMut::with_capacity(body.len());
    out.extend_from_slice(&body[..cut_from]);
    out.extend_from_slice(&body[cut_to..]);
    Some(out.freeze())
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(|c| c.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// The index after the string starting at `at` (a `"`).
fn skip_string(b: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index after the value starting at `at`.
fn skip_value(b: &[u8], at: usize) -> Option<usize> {
    match b.get(at)? {
        b'"' => skip_string(b, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while i < b.len() {
                match b[i] {
                    b'"' => {
                        i = skip_string(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = at;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']') && !b[i].is_ascii_whitespace()
            {
                i += 1;
            }
            Some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_scanner_reads_top_level_codes_across_feeds() {
        let mut s = ResultScanner::default();
        s.feed(br#"[ { "arguments": { "result": 7 }, "res"#);
        s.feed(br#"ult": 0 }, { "result": -1, "text": "x" } ]"#);
        assert_eq!(s.codes(), &[0, -1]);
    }

    #[test]
    fn without_service_keeps_every_other_byte() {
        let cut =
            without_service(br#"{"command": "config-get", "service": ["dhcp4"], "arguments": {}}"#);
        assert_eq!(
            &cut.unwrap()[..],
            br#"{"command": "config-get", "arguments": {}}"#
        );
    }

    fn scan_split(answer: &[u8]) -> Vec<i64> {
        // Every split point gives the same codes as one chunk.
        let whole = {
            let mut s = ResultScanner::default();
            s.feed(answer);
            s.into_codes()
        };
        for cut in 0..answer.len() {
            let mut s = ResultScanner::default();
            s.feed(&answer[..cut]);
            s.feed(&answer[cut..]);
            assert_eq!(s.into_codes(), whole, "split at {cut}");
        }
        whole
    }

    #[test]
    fn codes_of_both_answer_shapes_at_any_split() {
        assert_eq!(
            scan_split(br#"[ { "result": 0, "text": "x" }, { "result": 1 } ]"#),
            vec![0, 1]
        );
        assert_eq!(
            scan_split(br#"{ "result": 400, "text": "Bad Request" }"#),
            vec![400]
        );
        assert_eq!(scan_split(br#"{"result":3}"#), vec![3]);
    }

    #[test]
    fn nested_and_string_results_are_not_codes() {
        let answer = br#"[{"arguments":{"result":9,"list":[{"result":8}]},"text":"\"result\": 7","result":2}]"#;
        assert_eq!(scan_split(answer), vec![2]);
        assert_eq!(
            scan_split(br#"[{"text":"result","x":"result","result":"0"}]"#),
            Vec::<i64>::new(),
            "a string value is no code"
        );
        assert_eq!(scan_split(b"garbage"), Vec::<i64>::new());
        assert_eq!(scan_split(br#"[[{"result":1}]]"#), Vec::<i64>::new());
    }

    #[test]
    fn agrees_with_a_full_parse_on_a_large_answer() {
        let mut big = String::from("[");
        for i in 0..2000 {
            if i > 0 {
                big.push(',');
            }
            big.push_str(&format!(
                r#"{{"arguments":{{"leases":[{{"result":{i},"hw-address":"00:11"}}]}},"result":{},"text":"t"}}"#,
                i % 4
            ));
        }
        big.push(']');
        let mut s = ResultScanner::default();
        for c in big.as_bytes().chunks(1000) {
            s.feed(c);
        }
        assert_eq!(s.into_codes(), super::super::result_codes(big.as_bytes()));
    }

    #[test]
    fn service_is_cut_and_everything_else_kept() {
        let cut =
            |b: &str| without_service(b.as_bytes()).map(|v| String::from_utf8(v.to_vec()).unwrap());
        assert_eq!(
            cut(r#"{"service":["dhcp4"],"command":"x"}"#).as_deref(),
            Some(r#"{"command":"x"}"#)
        );
        assert_eq!(
            cut(r#"{ "command" : "x" , "service" : [ "a" , "b" ] }"#).as_deref(),
            Some(r#"{ "command" : "x" }"#)
        );
        assert_eq!(
            cut(r#"{"command":"x","arguments":{"service":["kept"],"s":"}"},"service":[],"z":1}"#)
                .as_deref(),
            Some(r#"{"command":"x","arguments":{"service":["kept"],"s":"}"},"z":1}"#)
        );
        assert_eq!(
            cut(r#"{"servic\u0065":["dhcp6"],"command":"x"}"#).as_deref(),
            Some(r#"{"command":"x"}"#),
            "an escaped key is the same key to Kea"
        );
        assert_eq!(cut(r#"{"service":["dhcp4"]}"#).as_deref(), Some("{}"));
        assert_eq!(cut(r#"{"command":"x"}"#), None);
        for body in [
            r#"{"command":"x","service":["a"],"arguments":{"a":[1,{"b":"\"]"}]}}"#,
            r#"{"service":null,"command":"x"}"#,
        ] {
            let out = cut(body).unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert!(v.get("service").is_none() && v["command"] == "x", "{out}");
        }
    }
}
