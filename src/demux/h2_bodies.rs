//! A bound on the gap between pieces of an HTTP/2 request body, which Pingora does not have:
//! its downstream read timeout is a no-op for HTTP/2, so a client could open streams with
//! bodies that never finish and hold an upstream connection each for the upstream's
//! `read_timeout`.
//!
//! [`super::PrefixedIo`] feeds this every byte of the connection, both ways, in clear text.
//! Only frame headers are read (9 bytes each; payloads are skipped uncopied): a client
//! `HEADERS` frame without `END_STREAM` opens a body, `DATA` moves it on and `END_STREAM`
//! ends it, a `RST_STREAM` either way forgets the stream. While a body is open and has not
//! moved for the limit, reads fail with `TimedOut` and the connection closes with its
//! streams — Pingora cannot end one HTTP/2 stream from below the codec, and a client that
//! stalls a body is either broken or probing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The client connection preface, before its first frame (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEAD: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
/// Bodies tracked at most: streams over the connection's `max_concurrent_streams` are refused
/// by the codec (a `RST_STREAM` we see), so this only bounds a hostile frame sequence.
const MAX_TRACKED: usize = 1024;

/// One frame header, as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Finds frame headers in a byte stream cut anywhere.
#[derive(Debug)]
struct Scanner {
    /// Bytes still to pass over: the preface, or the payload of the last frame.
    skip: usize,
    head: [u8; FRAME_HEAD],
    have: usize,
}

impl Scanner {
    fn new(skip: usize) -> Self {
        Scanner {
            skip,
            head: [0; FRAME_HEAD],
            have: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8], mut on: impl FnMut(Frame)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (FRAME_HEAD - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == FRAME_HEAD {
                let h = &self.head;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.have = 0;
                on(Frame {
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                });
            }
        }
    }
}

/// The open request bodies of one HTTP/2 connection and the clock on them.
#[derive(Debug)]
pub struct BodyWatch {
    limit: Duration,
    from_client: Scanner,
    to_client: Scanner,
    /// Stream → when its body last moved.
    open: HashMap<u32, Instant>,
    /// Allocated once; reset to the oldest open body's deadline when polled.
    timer: Pin<Box<Sleep>>,
}

impl BodyWatch {
    /// For a connection whose first byte (of the preface) is about to be fed.
    pub fn new(limit: Duration) -> Self {
        BodyWatch {
            limit,
            from_client: Scanner::new(PREFACE_LEN),
            to_client: Scanner::new(0),
            open: HashMap::new(),
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Accounts for bytes read from the client.
    pub fn on_read(&mut self, data: &[u8]) {
        let open = &mut self.open;
        let now = Instant::now();
        self.from_client.feed(data, |f| {
            let ends = f.flags & END_STREAM != 0;
            match f.kind {
                HEADERS if ends => {
                    open.remove(&f.stream);
                }
                HEADERS if f.stream != 0 && open.len() < MAX_TRACKED => {
                    open.entry(f.stream).or_insert(now);
                }
                DATA if ends => {
                    open.remove(&f.stream);
                }
                DATA => {
                    if let Some(t) = open.get_mut(&f.stream) {
                        *t = now;
                    }
                }
                RST_STREAM => {
                    open.remove(&f.stream);
                }
                _ => {}
            }
        });
    }

    /// Accounts for bytes written to the client: a stream the server reset (refused over the
    /// stream limit, or answered and cancelled) sends no more body.
    pub fn on_write(&mut self, data: &[u8]) {
        let open = &mut self.open;
        self.to_client.feed(data, |f| {
            if f.kind == RST_STREAM {
                open.remove(&f.stream);
            }
        });
    }

    /// Whether an open body has not moved for the limit; registers `cx` to be woken when the
    /// oldest one will be overdue.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(oldest) = self.open.values().min().copied() else {
            return false;
        };
        let due = oldest + self.limit;
        if Instant::now() >= due {
            return true;
        }
        if self.timer.deadline() != due {
            self.timer.as_mut().reset(due);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    #[cfg(test)]
    fn open_streams(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.open.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[tokio::test]
    async fn bodies_open_with_headers_and_end_with_end_stream_or_a_reset() {
        let mut w = BodyWatch::new(Duration::from_secs(1));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0; 6])); // SETTINGS
        bytes.extend(frame(HEADERS, 0x4, 1, b"hpack")); // a POST: body follows
        bytes.extend(frame(HEADERS, 0x4 | END_STREAM, 3, b"hp")); // a GET
        bytes.extend(frame(HEADERS, 0x4, 5, b"hpack"));
        bytes.extend(frame(HEADERS, 0x4, 7, b"hpack"));
        // Cut everywhere: frame heads and payloads arrive in pieces.
        for piece in bytes.chunks(5) {
            w.on_read(piece);
        }
        assert_eq!(w.open_streams(), vec![1, 5, 7]);
        w.on_read(&frame(DATA, 0, 1, b"part"));
        w.on_read(&frame(DATA, END_STREAM, 1, b"rest"));
        w.on_read(&frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
        assert_eq!(w.open_streams(), vec![7]);
        w.on_write(&frame(0x1, 0x4, 7, b"hp"));
        assert_eq!(
            w.open_streams(),
            vec![7],
            "an answer alone does not end a body"
        );
        w.on_write(&frame(RST_STREAM, 0, 7, &[0, 0, 0, 0]));
        assert!(w.open_streams().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_moving_expires_and_one_that_moves_does_not() {
        let mut w = BodyWatch::new(Duration::from_secs(2));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        w.on_read(PREFACE);
        assert!(!w.poll_expired(&mut cx), "nothing open");
        w.on_read(&frame(HEADERS, 0x4, 1, b"hpack"));
        w.on_read(&frame(HEADERS, 0x4, 3, b"hpack"));
        tokio::time::advance(Duration::from_millis(1500)).await;
        w.on_read(&frame(DATA, 0, 1, b"more"));
        assert!(!w.poll_expired(&mut cx));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(w.poll_expired(&mut cx), "stream 3 has not moved for 2.1 s");
        w.on_read(&frame(DATA, END_STREAM, 3, b""));
        assert!(!w.poll_expired(&mut cx), "stream 1 moved 0.6 s ago");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(w.poll_expired(&mut cx));
    }
}
