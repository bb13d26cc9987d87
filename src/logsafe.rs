//! The one way a client-controlled string is written into a log line.
//!
//! Every value a client chooses — SNI, certificate CN, HTTP method and path, Kea command and
//! service, cluster method names — is logged through [`Esc`], so no value can end the line and
//! forge another (`"x\n[… INFO gatehouse::audit] {…}"`), nor split a `key=value` field.
//! Audit records are JSON and escaped by the encoder instead.

use std::fmt::{self, Write};

/// A string escaped for one log line: control characters as `\n`, `\r`, `\t`, `\u{…}`;
/// spaces as `\x20`; `"` and `\` backslash-escaped; every other character as is.
/// Borrowing and allocation-free: the common, clean value is written in one `write_str`.
///
/// ```
/// use gatehouse::logsafe::Esc;
/// assert_eq!(Esc("agent1").to_string(), "agent1");
/// assert_eq!(Esc("x\n[forged]").to_string(), "x\\n[forged]");
/// assert_eq!(Esc("a b").to_string(), "a\\x20b");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Esc<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control() || c.is_whitespace() || c == '"' || c == '\\'
}

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if !s.chars().any(needs_escape) {
            return f.write_str(s);
        }
        for c in s.chars() {
            match c {
                ' ' => f.write_str("\\x20")?,
                c if needs_escape(c) => write!(f, "{}", c.escape_debug())?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A sentence that embeds client-chosen values (a refusal text such as
/// `command '…' is not allowed for cn=…`), escaped for one log line: control characters and
/// `\` as [`Esc`] writes them, spaces and quotes kept so the sentence stays readable.
///
/// ```
/// use gatehouse::logsafe::EscText;
/// assert_eq!(EscText("command 'x\ny' is not allowed").to_string(), "command 'x\\ny' is not allowed");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct EscText<'a>(pub &'a str);

impl fmt::Display for EscText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let special = |c: char| c.is_control() || c == '\\' || (c.is_whitespace() && c != ' ');
        if !s.chars().any(special) {
            return f.write_str(s);
        }
        for c in s.chars() {
            if special(c) {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// [`Esc`] for an optional value: `-` when absent or empty.
#[derive(Debug, Clone, Copy)]
pub struct EscOpt<'a>(pub Option<&'a str>);

impl fmt::Display for EscOpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) if !s.is_empty() => Esc(s).fmt(f),
            _ => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_client_chosen_ends_a_line() {
        assert_eq!(Esc("agent1").to_string(), "agent1");
        assert_eq!(Esc("agent\n1").to_string(), "agent\\n1");
        assert_eq!(Esc("a b\"c\\").to_string(), "a\\x20b\\\"c\\\\");
        assert_eq!(Esc("\r\u{7}\u{2028}").to_string(), "\\r\\u{7}\\u{2028}");
        assert_eq!(Esc("dhcp4-ü").to_string(), "dhcp4-ü");
        for evil in [
            "x\r\n[2026 INFO gatehouse::audit] {}",
            "\u{85}next",
            "a\u{b}b",
        ] {
            let out = Esc(evil).to_string();
            assert!(!out.chars().any(|c| c.is_control()), "{out:?}");
        }
        assert_eq!(
            EscText("service 'a\r\nb' is \"x\"").to_string(),
            "service 'a\\r\\nb' is \"x\""
        );
        assert_eq!(EscOpt(None).to_string(), "-");
        assert_eq!(EscOpt(Some("")).to_string(), "-");
        assert_eq!(EscOpt(Some("a\nb")).to_string(), "a\\nb");
    }
}
