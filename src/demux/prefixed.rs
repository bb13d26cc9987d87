//! A stream that replays bytes already read before reading from the inner stream.
//!
//! Pingora's TLS stream cannot peek, so protocol detection reads the first byte and hands the
//! connection on wrapped in [`PrefixedIo`]; the next layer never knows detection happened.
//! Every `IO` trait is forwarded, so identity (`get_ssl`, `get_ssl_digest`) and ALPN survive.
//! For HTTP/1 it also keeps the request-head deadline ([`HeadDeadline`]), since it sees every
//! byte read and written.

use super::head_deadline::HeadDeadline;
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef, ALPN};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
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
    head: Option<Box<WatchedHeads>>,
}

/// An HTTP/1 connection's [`HeadDeadline`] and what to say when it passes.
#[derive(Debug)]
struct WatchedHeads {
    deadline: HeadDeadline,
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
            head: None,
        }
    }

    /// Ends the connection (a read error) when an HTTP/1 request head takes longer than
    /// `limit`; the prefix is the start of the first head. `timeouts` counts it.
    pub fn with_head_deadline(
        mut self,
        limit: Duration,
        timeouts: IntCounter,
        listener: Arc<str>,
        peer: String,
    ) -> Self {
        let mut deadline = HeadDeadline::started(limit);
        deadline.on_read(&self.prefix);
        self.head = Some(Box::new(WatchedHeads {
            deadline,
            timeouts,
            listener,
            peer,
            expired: false,
        }));
        self
    }
}

impl WatchedHeads {
    fn overdue(&mut self) -> io::Error {
        if !self.expired {
            self.expired = true;
            self.timeouts.inc();
            log::info!(target: "gatehouse::demux", "listener {}: {} did not finish a request head within {:?}; closing", self.listener, self.peer, self.deadline.limit());
        }
        io::Error::new(io::ErrorKind::TimedOut, "request head not complete in time")
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
        let Some(head) = &mut this.head else {
            return Pin::new(&mut *this.inner).poll_read(cx, buf);
        };
        if head.deadline.poll_expired(cx) {
            return Poll::Ready(Err(head.overdue()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            head.deadline.on_read(&buf.filled()[before..]);
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
        if let (Some(head), Poll::Ready(Ok(n))) = (&mut self.head, &r) {
            head.deadline.on_write(&buf[..*n]);
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
        if let (Some(head), Poll::Ready(Ok(n))) = (&mut self.head, &r) {
            if *n > 0 {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                head.deadline.on_write(&first[..first.len().min(*n)]);
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for PrefixedIo {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for PrefixedIo {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for PrefixedIo {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for PrefixedIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for PrefixedIo {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for PrefixedIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

// Peeking is only used for h2c detection on plaintext; "not supported" is a valid answer.
#[async_trait]
impl Peek for PrefixedIo {}
