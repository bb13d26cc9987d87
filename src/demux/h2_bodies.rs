//! A bound on the gap in an HTTP/2 request body, which Pingora does not have: its downstream
//! read timeout is a no-op for HTTP/2, so a client could open streams with bodies that never
//! finish and hold an upstream connection each for the upstream's `read_timeout`.
//!
//! [`super::PrefixedIo`] feeds this every byte of the connection, both ways, in clear text.
//! Frame headers are read as they pass; payloads are skipped uncopied except the few bytes of
//! the server's `SETTINGS`, `WINDOW_UPDATE` and `GOAWAY`. A client `HEADERS` frame without
//! `END_STREAM` opens a body; every byte of its `DATA` moves it on and `END_STREAM` ends it; a
//! `RST_STREAM` either way, or a server `GOAWAY` below its id, forgets it.
//!
//! Only a client that *could* send is waited on: the client's send window is tracked as HTTP/2
//! flow control sets it (the server's initial window, minus the `DATA` sent, plus the server's
//! `WINDOW_UPDATE`s, per stream and for the connection), so a body held back because Pingora is
//! not reading yet (a slow upstream connect, a slow upstream) never counts as the client's
//! stall; a window update starts the body's clock afresh. When a body that could move has not
//! moved for the limit, reads fail with `TimedOut` and the connection closes with its streams:
//! Pingora cannot end one HTTP/2 stream from below the codec, and a client that stalls a body
//! it may send is either broken or probing.

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
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// The window both sides start with (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;
/// Bodies tracked at most: streams over the connection's `max_concurrent_streams` (at most
/// this many, see `config`) are refused by the codec with a `RST_STREAM` we see.
pub const MAX_TRACKED: usize = 1024;
/// The most of a server control frame's payload kept to read it (SETTINGS carries a few
/// 6-byte entries; WINDOW_UPDATE 4 bytes; GOAWAY's first 4 bytes matter).
const CONTROL_MAX: usize = 256;

/// One frame header, as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// What [`Scanner::feed`] finds.
#[derive(Debug)]
enum Event<'a> {
    /// A frame header.
    Head(Frame),
    /// A piece of the current frame's payload.
    Payload(Frame, &'a [u8]),
    /// The current frame is complete (right after its head when it has no payload).
    End(Frame),
}

/// Finds frames in a byte stream cut anywhere.
#[derive(Debug)]
struct Scanner {
    /// Preface bytes still to pass over.
    preface: usize,
    head: [u8; FRAME_HEAD],
    have: usize,
    /// The frame whose payload is passing, and how much of it is left.
    current: Option<(Frame, usize)>,
}

impl Scanner {
    fn new(preface: usize) -> Self {
        Scanner {
            preface,
            head: [0; FRAME_HEAD],
            have: 0,
            current: None,
        }
    }

    fn feed(&mut self, mut data: &[u8], mut on: impl FnMut(Event<'_>)) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                data = &data[n..];
                continue;
            }
            if let Some((frame, left)) = &mut self.current {
                let n = (*left).min(data.len());
                on(Event::Payload(*frame, &data[..n]));
                *left -= n;
                data = &data[n..];
                if *left == 0 {
                    on(Event::End(*frame));
                    self.current = None;
                }
                continue;
            }
            let n = (FRAME_HEAD - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == FRAME_HEAD {
                let h = &self.head;
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                let frame = Frame {
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.have = 0;
                on(Event::Head(frame));
                if len == 0 {
                    on(Event::End(frame));
                } else {
                    self.current = Some((frame, len));
                }
            }
        }
    }
}

/// One open request body.
#[derive(Debug, Clone, Copy)]
struct Body {
    /// When it last moved, or last got room to.
    last: Instant,
    /// What the client may still send on it (flow control).
    window: i64,
}

/// The open request bodies of one HTTP/2 connection and the clock on them.
#[derive(Debug)]
pub struct BodyWatch {
    limit: Duration,
    from_client: Scanner,
    to_client: Scanner,
    open: HashMap<u32, Body>,
    /// What the client may still send on the connection as a whole.
    conn_window: i64,
    /// The server's `SETTINGS_INITIAL_WINDOW_SIZE`: each new stream's window.
    initial_window: i64,
    /// The last stream id of the server's `GOAWAY`: no stream above it is served.
    last_stream: Option<u32>,
    /// The payload of the server control frame passing (`SETTINGS`, `WINDOW_UPDATE`, `GOAWAY`).
    control: Vec<u8>,
    /// Allocated once; reset to the oldest movable body's deadline when polled.
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
            conn_window: DEFAULT_WINDOW,
            initial_window: DEFAULT_WINDOW,
            last_stream: None,
            control: Vec::new(),
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Accounts for bytes read from the client.
    pub fn on_read(&mut self, data: &[u8]) {
        let now = Instant::now();
        let (open, conn_window) = (&mut self.open, &mut self.conn_window);
        let (initial, last_stream) = (self.initial_window, self.last_stream);
        self.from_client.feed(data, |e| match e {
            Event::Head(f) => match f.kind {
                HEADERS if f.flags & END_STREAM != 0 => {
                    open.remove(&f.stream);
                }
                HEADERS
                    if f.stream != 0
                        && last_stream.is_none_or(|l| f.stream <= l)
                        && open.len() < MAX_TRACKED =>
                {
                    open.entry(f.stream).or_insert(Body {
                        last: now,
                        window: initial,
                    });
                }
                DATA => {
                    if let Some(b) = open.get_mut(&f.stream) {
                        b.last = now;
                    }
                }
                RST_STREAM => {
                    open.remove(&f.stream);
                }
                _ => {}
            },
            Event::Payload(f, bytes) if f.kind == DATA => {
                let n = bytes.len() as i64;
                *conn_window -= n;
                if let Some(b) = open.get_mut(&f.stream) {
                    b.window -= n;
                    b.last = now;
                }
            }
            Event::End(f) if f.kind == DATA && f.flags & END_STREAM != 0 => {
                open.remove(&f.stream);
            }
            _ => {}
        });
    }

    /// Accounts for bytes written to the client: resets and `GOAWAY` end bodies, `SETTINGS`
    /// and `WINDOW_UPDATE` give the client room to send.
    pub fn on_write(&mut self, data: &[u8]) {
        let mut ended = Vec::new();
        let control = &mut self.control;
        self.to_client.feed(data, |e| match e {
            Event::Head(f) if matches!(f.kind, SETTINGS | WINDOW_UPDATE | GOAWAY) => {
                control.clear();
            }
            Event::Payload(f, bytes) if matches!(f.kind, SETTINGS | WINDOW_UPDATE | GOAWAY) => {
                let room = CONTROL_MAX.saturating_sub(control.len());
                control.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Event::End(f) if matches!(f.kind, RST_STREAM | SETTINGS | WINDOW_UPDATE | GOAWAY) => {
                ended.push(f);
            }
            _ => {}
        });
        for f in ended {
            self.server_frame(f);
        }
    }

    /// A complete server frame that changes what the client may send.
    fn server_frame(&mut self, f: Frame) {
        let now = Instant::now();
        let word = |b: &[u8]| -> Option<u32> {
            Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?) & 0x7fff_ffff)
        };
        match f.kind {
            RST_STREAM => {
                self.open.remove(&f.stream);
            }
            WINDOW_UPDATE => {
                let Some(inc) = word(&self.control) else {
                    return;
                };
                let inc = i64::from(inc);
                if f.stream == 0 {
                    self.conn_window += inc;
                    // Room for every body: each gets a fresh period to use it.
                    for b in self.open.values_mut() {
                        b.last = now;
                    }
                } else if let Some(b) = self.open.get_mut(&f.stream) {
                    b.window += inc;
                    b.last = now;
                }
            }
            SETTINGS if f.flags & ACK == 0 => {
                for entry in self.control.chunks_exact(6) {
                    if u16::from_be_bytes([entry[0], entry[1]]) != SETTINGS_INITIAL_WINDOW_SIZE {
                        continue;
                    }
                    let value =
                        i64::from(u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]));
                    let delta = value - self.initial_window;
                    self.initial_window = value;
                    for b in self.open.values_mut() {
                        b.window += delta;
                    }
                }
            }
            GOAWAY => {
                let Some(last) = word(&self.control) else {
                    return;
                };
                self.last_stream = Some(last);
                self.open.retain(|&id, _| id <= last);
            }
            _ => {}
        }
    }

    /// Whether a body the client could move has not moved for the limit; registers `cx` to
    /// be woken when the oldest one will be overdue.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.conn_window <= 0 {
            return false; // the client may send nothing: the wait is the server's
        }
        let Some(oldest) = self
            .open
            .values()
            .filter(|b| b.window > 0)
            .map(|b| b.last)
            .min()
        else {
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
    async fn bodies_open_with_headers_and_end_with_end_stream_a_reset_or_a_goaway() {
        let mut w = BodyWatch::new(Duration::from_secs(1));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, 0x4, 1, b"hpack")); // a POST: body follows
        bytes.extend(frame(HEADERS, 0x4 | END_STREAM, 3, b"hp")); // a GET
        bytes.extend(frame(HEADERS, 0x4, 5, b"hpack"));
        bytes.extend(frame(HEADERS, 0x4, 7, b"hpack"));
        bytes.extend(frame(HEADERS, 0x4, 9, b"hpack"));
        // Cut everywhere: frame heads and payloads arrive in pieces.
        for piece in bytes.chunks(5) {
            w.on_read(piece);
        }
        assert_eq!(w.open_streams(), vec![1, 5, 7, 9]);
        w.on_read(&frame(DATA, 0, 1, b"part"));
        w.on_read(&frame(DATA, END_STREAM, 1, b"rest"));
        w.on_read(&frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
        assert_eq!(w.open_streams(), vec![7, 9]);
        w.on_write(&frame(HEADERS, 0x4, 7, b"hp"));
        assert_eq!(
            w.open_streams(),
            vec![7, 9],
            "an answer alone does not end a body"
        );
        for piece in frame(RST_STREAM, 0, 7, &[0, 0, 0, 0]).chunks(3) {
            w.on_write(piece);
        }
        assert_eq!(w.open_streams(), vec![9]);
        w.on_write(&frame(GOAWAY, 0, 0, &[0, 0, 0, 7, 0, 0, 0, 0]));
        assert!(
            w.open_streams().is_empty(),
            "above the GOAWAY's last stream"
        );
        w.on_read(&frame(HEADERS, 0x4, 11, b"hpack"));
        assert!(
            w.open_streams().is_empty(),
            "a stream the server will not serve"
        );
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
        // A DATA frame's payload arriving byte by byte is progress, not only its head.
        let data = frame(DATA, 0, 1, b"more");
        w.on_read(&data[..FRAME_HEAD + 1]);
        tokio::time::advance(Duration::from_millis(1000)).await;
        w.on_read(&data[FRAME_HEAD + 1..]);
        assert!(w.poll_expired(&mut cx), "stream 3 has not moved for 2.5 s");
        w.on_read(&frame(DATA, END_STREAM, 3, b""));
        assert!(!w.poll_expired(&mut cx), "stream 1 moved just now");
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert!(w.poll_expired(&mut cx));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_without_window_waits_for_the_server_not_the_client() {
        let mut w = BodyWatch::new(Duration::from_secs(2));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        w.on_read(PREFACE);
        // The server's SETTINGS: a 16 KiB initial window.
        let settings = [0, 4, 0, 0, 0x40, 0];
        w.on_write(&frame(SETTINGS, 0, 0, &settings));
        w.on_read(&frame(HEADERS, 0x4, 1, b"hpack"));
        w.on_read(&frame(DATA, 0, 1, &[b'x'; 16 * 1024]));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(
            !w.poll_expired(&mut cx),
            "the stream's window is used up: the server is not reading"
        );
        // The server reads and gives room: the client has the limit from now on.
        w.on_write(&frame(WINDOW_UPDATE, 0, 1, &[0, 0, 0x40, 0]));
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(!w.poll_expired(&mut cx));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(w.poll_expired(&mut cx), "room for 2.1 s and nothing sent");
        // The connection window: used up by another stream, every body waits on the server.
        let mut w = BodyWatch::new(Duration::from_secs(2));
        w.on_read(PREFACE);
        w.on_read(&frame(HEADERS, 0x4, 1, b"hpack"));
        w.on_read(&frame(HEADERS, 0x4, 3, b"hpack"));
        for _ in 0..4 {
            w.on_read(&frame(DATA, 0, 3, &[b'y'; 16_384]));
        }
        w.on_read(&frame(DATA, 0, 3, &[b'y'; 16_383]));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!w.poll_expired(&mut cx), "no connection window left");
        w.on_write(&frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]));
        assert!(!w.poll_expired(&mut cx), "room just given");
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert!(w.poll_expired(&mut cx));
    }
}
