//! A deadline on each HTTP/1 request head, which Pingora does not have: it times out every
//! single read (60 s) but not the head as a whole, so a slowloris client sending a byte now
//! and then could hold a connection (and a task) forever.
//!
//! The clock starts with the first byte of a request head and stops at the blank line that
//! ends it. Empty lines before a request line (which HTTP/1 parsers skip, RFC 9112 §2.2) are
//! part of the head's time, not its end: `\r\n\r\n` first must not disarm the deadline. It starts again with the first byte read after the response began (a 1xx interim
//! answer does not count), so keep-alive requests get the same deadline. Bytes read between
//! a head and its response (the body, pipelined requests) are not scanned: the deadline can
//! only ever end a connection that is still sending a head. A head begun while an answer is
//! still being written (pipelining) is timed from the last write: Pingora reads it only then.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;
use tokio::time::Sleep;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a head; `newlines` counts line ends in a row (`\r` is skipped) once `started`,
    /// i.e. once a byte other than CR or LF arrived.
    Head { newlines: u8, started: bool },
    /// Head complete, the response not yet begun.
    AwaitingResponse,
    /// Response begun; the next byte read starts a new head.
    Idle,
}

/// The per-connection state; [`super::PrefixedIo`] feeds it what is read and written.
#[derive(Debug)]
pub struct HeadDeadline {
    limit: Duration,
    phase: Phase,
    /// Allocated once per connection and reset for each head; only polled in `Head`.
    timer: Pin<Box<Sleep>>,
}

impl HeadDeadline {
    /// For a connection whose first head has just begun (the demux read its first byte).
    pub fn started(limit: Duration) -> Self {
        HeadDeadline {
            limit,
            phase: Phase::Head {
                newlines: 0,
                started: false,
            },
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Whether the head being read is overdue; registers `cx` to be woken when it will be.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        matches!(self.phase, Phase::Head { .. }) && self.timer.as_mut().poll(cx).is_ready()
    }

    /// Accounts for bytes just read.
    pub fn on_read(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let (mut newlines, mut started) = match self.phase {
            Phase::AwaitingResponse => return,
            Phase::Idle => {
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.limit);
                (0, false)
            }
            Phase::Head { newlines, started } => (newlines, started),
        };
        for &b in data {
            match b {
                b'\n' if started => {
                    newlines += 1;
                    if newlines == 2 {
                        self.phase = Phase::AwaitingResponse;
                        return;
                    }
                }
                b'\n' | b'\r' => {}
                _ => {
                    started = true;
                    newlines = 0;
                }
            }
        }
        self.phase = Phase::Head { newlines, started };
    }

    /// Accounts for bytes just written.
    pub fn on_write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.phase {
            Phase::AwaitingResponse => {
                let interim = data.starts_with(b"HTTP/1.1 1") || data.starts_with(b"HTTP/1.0 1");
                if !interim {
                    self.phase = Phase::Idle;
                }
            }
            // A pipelined head begun while the answer before it is still being written:
            // Pingora reads it only once that answer is out, so its clock starts then.
            Phase::Head { .. } => {
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.limit);
            }
            Phase::Idle => {}
        }
    }

    #[cfg(test)]
    fn armed(&self) -> bool {
        matches!(self.phase, Phase::Head { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_head_arms_until_its_blank_line_and_again_after_the_response() {
        let mut d = HeadDeadline::started(Duration::from_secs(1));
        d.on_read(b"GET / HTTP/1.1\r\nHost: a\r");
        assert!(d.armed());
        d.on_read(b"\n\r\nBODY\r\n\r\n");
        assert!(!d.armed(), "head complete");
        d.on_read(b"more body");
        assert!(!d.armed(), "body bytes are not a head");
        d.on_write(b"HTTP/1.1 100 Continue\r\n\r\n");
        d.on_read(b"still body");
        assert!(!d.armed(), "an interim answer is not the response");
        d.on_write(b"HTTP/1.1 200 OK\r\n");
        assert!(!d.armed(), "idle keep-alive is Pingora's business");
        d.on_read(b"G");
        assert!(d.armed(), "the next head started");
        d.on_read(b"ET / HTTP/1.1\n\n");
        assert!(!d.armed(), "bare line feeds end a head too");
    }

    #[tokio::test]
    async fn leading_empty_lines_do_not_end_a_head() {
        let mut d = HeadDeadline::started(Duration::from_secs(1));
        d.on_read(b"\r\n\r\n\n\n");
        assert!(d.armed(), "empty lines before the request line");
        d.on_read(b"GET / HTTP/1.1\r\n");
        assert!(d.armed());
        d.on_read(b"\r\n");
        assert!(
            !d.armed(),
            "a blank line after the request line ends the head"
        );
        d.on_write(b"HTTP/1.1 200 OK\r\n");
        d.on_read(b"\r\n\r\n");
        assert!(d.armed(), "and before the next one too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_during_a_long_answer_is_timed_from_its_end() {
        let mut d = HeadDeadline::started(Duration::from_secs(1));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        d.on_read(b"GET /big HTTP/1.1\r\n\r\n");
        d.on_write(b"HTTP/1.1 200 OK\r\n");
        d.on_read(b"G"); // the next, pipelined request's first byte
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(500)).await;
            d.on_write(b"more of the big answer");
        }
        assert!(!d.poll_expired(&mut cx), "the server was busy writing");
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(d.poll_expired(&mut cx));
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_head_expires() {
        let mut d = HeadDeadline::started(Duration::from_secs(1));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        d.on_read(b"GET / HTTP/1.1\r\n");
        assert!(!d.poll_expired(&mut cx));
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(d.poll_expired(&mut cx));
    }
}
