//! A stream that replays bytes already read before reading from the inner stream.
//!
//! Pingora's TLS stream cannot peek, so protocol detection reads the first byte and hands the
//! connection on wrapped in [`PrefixedIo`]; the next layer never knows detection happened.
//! Every `IO` trait is forwarded, so identity (`get_ssl`, `get_ssl_digest`) and ALPN survive.
//! For HTTP/1 it also keeps the request-head deadline ([`HeadDeadline`]), and for HTTP/2 the
//! request-body gap ([`BodyWatch`]), since it sees every byte read and written.

use super::h2_bodies::BodyWatch;
use super::head_deadline::HeadDeadline;
use bytes::{Buf, Bytes};
use pingora_core::protocols::Stream;
use prometheus::IntCounter;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `prefix` first, then `inner`.
#[derive(Debug)]
pub struct PrefixedIo {
    prefix: Bytes,
    inner: Stream,
    watch: Option<Box<Watched>>,
}

/// The clock a connection runs on what passes through it: a connection speaks one protocol.
#[derive(Debug)]
enum Clock {
    /// HTTP/1: each request head, first byte to blank line.
    Head(HeadDeadline),
    /// HTTP/2: the gap in each open request body.
    Bodies(BodyWatch),
}

/// A connection's [`Clock`] and what to say when it runs out.
#[derive(Debug)]
struct Watched {
    clock: Clock,
    timeouts: IntCounter,
    listener: Arc<str>,
    peer: String,
    expired: bool,
}

impl PrefixedIo {
    /// Replays `prefix` before reading on from `inner`.
    pub fn new(prefix: impl Into<Bytes>, inner: Stream) -> Self {
        PrefixedIo {
            prefix: prefix.into(),
            inner,
            watch: None,
        }
    }

    /// Ends the connection (a read error) when an HTTP/1 request head takes longer than
    /// `limit`; the prefix is the start of the first head. `timeouts` counts it.
    pub fn with_head_deadline(
        self,
        limit: Duration,
        timeouts: IntCounter,
        listener: Arc<str>,
        peer: String,
    ) -> Self {
        self.watched(
            Clock::Head(HeadDeadline::started(limit)),
            timeouts,
            listener,
            peer,
        )
    }

    /// Ends the connection (a read error) when an HTTP/2 request body does not move for
    /// `limit`; the prefix is the start of the client preface. `timeouts` counts it.
    pub fn with_body_watch(
        self,
        limit: Duration,
        timeouts: IntCounter,
        listener: Arc<str>,
        peer: String,
    ) -> Self {
        self.watched(
            Clock::Bodies(BodyWatch::new(limit)),
            timeouts,
            listener,
            peer,
        )
    }

    fn watched(
        mut self,
        mut clock: Clock,
        timeouts: IntCounter,
        listener: Arc<str>,
        peer: String,
    ) -> Self {
        clock.on_read(&self.prefix);
        self.watch = Some(Box::new(Watched {
            clock,
            timeouts,
            listener,
            peer,
            expired: false,
        }));
        self
    }
}

impl Clock {
    fn on_read(&mut self, data: &[u8]) {
        match self {
            Clock::Head(h) => h.on_read(data),
            Clock::Bodies(b) => b.on_read(data),
        }
    }

    fn on_write(&mut self, data: &[u8]) {
        match self {
            Clock::Head(h) => h.on_write(data),
            Clock::Bodies(b) => b.on_write(data),
        }
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Clock::Head(h) => h.poll_expired(cx),
            Clock::Bodies(b) => b.poll_expired(cx),
        }
    }
}

impl Watched {
    fn overdue(&mut self) -> io::Error {
        let (what, error) = match &self.clock {
            Clock::Head(h) => (
                format!("did not finish a request head within {:?}", h.limit()),
                "request head not complete in time",
            ),
            Clock::Bodies(b) => (
                format!(
                    "sent no piece of an HTTP/2 request body within {:?} (body_timeout)",
                    b.limit()
                ),
                "request body stalled",
            ),
        };
        if !self.expired {
            self.expired = true;
            self.timeouts.inc();
            log::info!(target: "gatehouse::demux", "listener {}: {} {what}; closing", self.listener, self.peer);
        }
        io::Error::new(io::ErrorKind::TimedOut, error)
    }
}

impl AsyncRead for PrefixedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        let Some(watch) = &mut this.watch else {
            return Pin::new(&mut *this.inner).poll_read(cx, buf);
        };
        if watch.clock.poll_expired(cx) {
            return Poll::Ready(Err(watch.overdue()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            watch.clock.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for PrefixedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let (Some(watch), Poll::Ready(Ok(n))) = (&mut self.watch, &r) {
            watch.clock.on_write(&buf[..*n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs);
        if let (Some(watch), Poll::Ready(Ok(n))) = (&mut self.watch, &r) {
            // Every byte written, in order: an HTTP/2 frame header may sit in any slice.
            let mut left = *n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = b.len().min(left);
                watch.clock.on_write(&b[..take]);
                left -= take;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

crate::tls::read_ahead::forward_io_traits!(PrefixedIo);
