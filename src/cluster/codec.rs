//! Netstring framing with Icinga 2's exact reader rules (`lib/base/netstring.cpp`).
//!
//! `<len>:<payload>,` — 1 to 9 ASCII digits, no leading zero before more digits, nothing but
//! digits before `:`, `len` within the link's limit, `,` after the payload. The decoder works
//! on a growing buffer across partial reads and pipelined frames; a decoded [`Frame`] keeps
//! the bytes exactly as received so a relayed message is forwarded without re-serialization.
//! The length limit is enforced as soon as the header is read, before any payload is buffered.
//!
//! Errors are a small enum, not a boxed error: they are hit during normal operation (hostile
//! or broken peers), and `Ok(None)` ("need more bytes") is the common case on the hot path.

use bytes::{Bytes, BytesMut};
use std::fmt;

/// Longest length prefix Icinga accepts.
pub const MAX_DIGITS: usize = 9;

/// One complete netstring as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
    header_len: usize,
}

impl Frame {
    /// The whole netstring (`len:payload,`), as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The payload between `:` and `,`.
    pub fn payload(&self) -> &[u8] {
        &self.raw[self.header_len..self.raw.len() - 1]
    }
}

/// Why a byte stream is not valid netstring framing. Every variant closes the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// `:` with no digits before it.
    EmptyLength,
    /// A `0` followed by more digits.
    LeadingZero,
    /// A 10th digit.
    TooManyDigits,
    /// A byte that is neither a digit nor `:` in the length prefix.
    BadLengthByte(u8),
    /// The announced payload exceeds the link's limit.
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The link's limit.
        limit: usize,
    },
    /// The byte after the payload is not `,`.
    MissingComma(u8),
}

impl FrameError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::EmptyLength => "empty_length",
            FrameError::LeadingZero => "leading_zero",
            FrameError::TooManyDigits => "too_many_digits",
            FrameError::BadLengthByte(_) => "bad_length_byte",
            FrameError::TooLarge { .. } => "too_large",
            FrameError::MissingComma(_) => "missing_comma",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::EmptyLength => f.write_str("netstring with an empty length"),
            FrameError::LeadingZero => f.write_str("netstring length with a leading zero"),
            FrameError::TooManyDigits => {
                write!(f, "netstring length longer than {MAX_DIGITS} digits")
            }
            FrameError::BadLengthByte(b) => {
                write!(f, "netstring length contains byte 0x{b:02x}")
            }
            FrameError::TooLarge { len, limit } => {
                write!(
                    f,
                    "message of {len} bytes exceeds the limit of {limit} bytes"
                )
            }
            FrameError::MissingComma(b) => {
                write!(f, "netstring not terminated by ',' (got 0x{b:02x})")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses the length prefix at the start of `buf`.
/// `Ok(None)`: more bytes needed; `Ok(Some((len, header_len)))` with `header_len` including `:`.
fn header(buf: &[u8], limit: usize) -> Result<Option<(usize, usize)>, FrameError> {
    let mut len: usize = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b':' if i == 0 => return Err(FrameError::EmptyLength),
            b':' => {
                if len > limit {
                    return Err(FrameError::TooLarge { len, limit });
                }
                return Ok(Some((len, i + 1)));
            }
            b'0'..=b'9' => {
                if i == MAX_DIGITS {
                    return Err(FrameError::TooManyDigits);
                }
                if i == 1 && buf[0] == b'0' {
                    return Err(FrameError::LeadingZero);
                }
                len = len * 10 + usize::from(b - b'0');
            }
            other => return Err(FrameError::BadLengthByte(other)),
        }
    }
    // Incomplete header: a partial length already over the limit can be refused now.
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(None)
}

/// Takes one complete frame off the front of `buf`, or `Ok(None)` if more bytes are needed.
pub fn decode(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, FrameError> {
    let Some((len, header_len)) = header(buf, limit)? else {
        return Ok(None);
    };
    let total = header_len + len + 1;
    if buf.len() < total {
        // Reserve once for the whole frame instead of growing read by read.
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let comma = buf[total - 1];
    if comma != b',' {
        return Err(FrameError::MissingComma(comma));
    }
    Ok(Some(Frame {
        raw: buf.split_to(total).freeze(),
        header_len,
    }))
}

/// Frames `payload` as a netstring.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(s: &[u8], limit: usize) -> Result<Option<Frame>, FrameError> {
        decode(&mut BytesMut::from(s), limit)
    }

    #[test]
    fn reader_rules() {
        let f = dec(b"5:hello,", 100).unwrap().unwrap();
        assert_eq!(f.payload(), b"hello");
        assert_eq!(&f.raw()[..], b"5:hello,");
        assert_eq!(dec(b"0:,", 100).unwrap().unwrap().payload(), b"");
        assert_eq!(dec(b":x,", 100), Err(FrameError::EmptyLength));
        assert_eq!(dec(b"05:hello,", 100), Err(FrameError::LeadingZero));
        assert_eq!(
            dec(b"1234567890:", usize::MAX),
            Err(FrameError::TooManyDigits)
        );
        assert!(
            dec(b"123456789", usize::MAX).unwrap().is_none(),
            "9 digits are fine"
        );
        assert_eq!(dec(b"1a:x,", 100), Err(FrameError::BadLengthByte(b'a')));
        assert_eq!(dec(b" 1:x,", 100), Err(FrameError::BadLengthByte(b' ')));
        assert_eq!(dec(b"-1:x,", 100), Err(FrameError::BadLengthByte(b'-')));
        assert_eq!(dec(b"5:hello;", 100), Err(FrameError::MissingComma(b';')));
        assert_eq!(
            dec(b"101:", 100),
            Err(FrameError::TooLarge {
                len: 101,
                limit: 100
            })
        );
        // Refused before the colon, as soon as the digits exceed the limit.
        assert_eq!(
            dec(b"1000", 100),
            Err(FrameError::TooLarge {
                len: 1000,
                limit: 100
            })
        );
        assert_eq!(
            dec(b"100:", 100).unwrap(),
            None,
            "exactly the limit is fine"
        );
    }

    #[test]
    fn partial_reads_and_pipelining() {
        let wire = b"3:abc,4:defg,1:x,";
        // One byte at a time.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire {
            buf.extend_from_slice(&[b]);
            while let Some(f) = decode(&mut buf, 100).unwrap() {
                got.push(f.payload().to_vec());
            }
        }
        assert_eq!(got, vec![b"abc".to_vec(), b"defg".to_vec(), b"x".to_vec()]);
        assert!(buf.is_empty());
        // All at once.
        let mut buf = BytesMut::from(&wire[..]);
        let mut n = 0;
        while decode(&mut buf, 100).unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn icinga_capture_frames() {
        let hb = br#"57:{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}},"#;
        let f = dec(hb, 1 << 20).unwrap().unwrap();
        assert_eq!(f.payload().len(), 57);
    }

    proptest! {
        #[test]
        fn round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
                      split in 1usize..64) {
            let wire: Vec<u8> = payloads.iter().flat_map(|p| encode(p)).collect();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Some(f) = decode(&mut buf, 1000).unwrap() {
                    prop_assert_eq!(&f.raw()[..], &encode(f.payload())[..]);
                    out.push(f.payload().to_vec());
                }
            }
            prop_assert_eq!(out, payloads);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&data[..]);
            let _ = decode(&mut buf, 16);
        }
    }
}
