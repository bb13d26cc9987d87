//! A read buffer below TLS that is large only while a connection is busy.
//!
//! BoringSSL reads exactly what it is missing: a record's 5-byte header, then its body, two
//! `read` calls per record (`SSL_set_read_ahead` is a no-op in BoringSSL), plus, at the end of
//! each burst, one more that finds nothing (tokio clears readiness only after a short read).
//! Under [`ReadAhead`] one `read` takes what the socket has, up to the buffer, and the records
//! in it are served from memory.
//!
//! The buffer follows the traffic, as the relay's own buffers do: a quiet connection reads
//! into [`QUIET`] bytes (a heartbeat record, header and body, in one read) and frees them as
//! soon as the socket is empty, so thousands of idle links hold nothing; a read that fills
//! them or is large makes the connection busy, and a busy one reads up to `cap` bytes at a
//! time and keeps that buffer between its bursts (zeroed once per busy spell, not per read).
//!
//! Writes pass through untouched.

use pingora_core::protocols::Stream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The buffer of a quiet connection: a heartbeat or a small request, header and body.
pub(crate) const QUIET: usize = 1024;
/// A read this large means the connection is busy.
const BUSY_READ: usize = 2048;

/// `inner` with a read buffer of `cap` bytes while the link is busy (see the module docs).
#[derive(Debug)]
pub(crate) struct ReadAhead {
    inner: Stream,
    cap: usize,
    /// `buf[at..end]`: read from the socket, not yet taken by the reader above.
    buf: Option<Box<[u8]>>,
    at: usize,
    end: usize,
    /// The last read was large (see [`BUSY_READ`]).
    busy: bool,
    /// Keep the quiet buffer while idle too: an HTTP keep-alive connection reads a request
    /// at a time and would otherwise allocate it again for each.
    keep_quiet: bool,
}

impl ReadAhead {
    /// Reads of up to `cap` bytes at a time; with `cap` 0 every read passes straight through.
    pub(crate) fn new(inner: Stream, cap: usize) -> ReadAhead {
        ReadAhead {
            inner,
            cap,
            buf: None,
            at: 0,
            end: 0,
            busy: false,
            keep_quiet: false,
        }
    }

    /// Keeps the quiet buffer ([`QUIET`]) while the connection is idle (HTTP listeners: what
    /// Pingora's own 1 KiB buffer cost them); cluster links give it back.
    pub(crate) fn keeping_quiet_buffer(mut self) -> ReadAhead {
        self.keep_quiet = true;
        self
    }

    /// Whether a buffer is held now.
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }

    /// Hands out what is buffered.
    fn drain_into(&mut self, out: &mut ReadBuf<'_>) {
        if let Some(buf) = &self.buf {
            let n = out.remaining().min(self.end - self.at);
            out.put_slice(&buf[self.at..self.at + n]);
            self.at += n;
        }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.end {
            this.drain_into(out);
            return Poll::Ready(Ok(()));
        }
        let size = if this.busy {
            this.cap
        } else {
            QUIET.min(this.cap)
        };
        // A reader that asks for a buffer's worth or more gains nothing from a copy.
        if out.remaining() >= size {
            return Pin::new(&mut *this.inner).poll_read(cx, out);
        }
        if this.buf.as_ref().is_some_and(|b| b.len() != size) {
            this.buf = None; // drained (`at == end`): the size follows the traffic
        }
        let buf = this
            .buf
            .get_or_insert_with(|| vec![0; size].into_boxed_slice());
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *this.inner).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                (this.at, this.end) = (0, n);
                this.busy = n == size || n >= BUSY_READ;
                this.drain_into(out);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let kept = this.keep_quiet && this.buf.as_ref().is_some_and(|b| b.len() == QUIET);
                if !this.busy && !kept {
                    // Quiet: nothing is buffered (everything read was handed out), so the
                    // buffer can go until the connection speaks again.
                    this.buf = None;
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Forwards Pingora's stream traits (all but reading and writing) of `$t` to its `inner`
/// stream, so a wrapper below or above TLS keeps identity, digests and ALPN. Peeking is "not
/// supported": bytes held by the wrapper would be skipped.
macro_rules! forward_io_traits {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl pingora_core::protocols::Shutdown for $t {
            async fn shutdown(&mut self) {
                pingora_core::protocols::Shutdown::shutdown(&mut *self.inner).await
            }
        }

        impl pingora_core::protocols::UniqueID for $t {
            fn id(&self) -> pingora_core::protocols::UniqueIDType {
                self.inner.id()
            }
        }

        impl pingora_core::protocols::Ssl for $t {
            fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
                self.inner.get_ssl()
            }

            fn get_ssl_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::tls::SslDigest>> {
                self.inner.get_ssl_digest()
            }

            fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::tls::ALPN> {
                self.inner.selected_alpn_proto()
            }
        }

        impl pingora_core::protocols::GetTimingDigest for $t {
            fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                self.inner.get_timing_digest()
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                self.inner.get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                self.inner.get_write_pending_time()
            }
        }

        impl pingora_core::protocols::GetProxyDigest for $t {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
                self.inner.get_proxy_digest()
            }

            fn set_proxy_digest(
                &mut self,
                digest: pingora_core::protocols::raw_connect::ProxyDigest,
            ) {
                self.inner.set_proxy_digest(digest)
            }
        }

        impl pingora_core::protocols::GetSocketDigest for $t {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                self.inner.get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
                self.inner.set_socket_digest(digest)
            }
        }

        #[async_trait::async_trait]
        impl pingora_core::protocols::Peek for $t {}
    };
}

pub(crate) use forward_io_traits;

forward_io_traits!(ReadAhead);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether a read on `ra` is pending (the socket is empty) for 20 ms.
    async fn pending(ra: &mut ReadAhead) -> bool {
        let mut one = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(20), ra.read(&mut one))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn reads_follow_the_traffic_and_a_quiet_link_holds_nothing() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut ra = ReadAhead::new(Box::new(rx), 8192);
        // Quiet: a small record, header and body, comes in one socket read.
        tx.write_all(b"heartbeat").await.unwrap();
        let mut head = [0u8; 5];
        ra.read_exact(&mut head).await.unwrap();
        assert_eq!((ra.end, ra.busy), (9, false));
        let mut body = [0u8; 4];
        ra.read_exact(&mut body).await.unwrap();
        assert_eq!(&[&head[..], &body[..]].concat(), b"heartbeat");
        assert!(pending(&mut ra).await);
        assert!(!ra.holds_buffer(), "a quiet link gives its buffer back");
        // Busy: the quiet buffer fills, and the next read takes up to `cap` at once.
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        tx.write_all(&data).await.unwrap();
        let mut got = vec![0u8; 5];
        ra.read_exact(&mut got).await.unwrap();
        assert_eq!((ra.end, ra.busy), (QUIET, true));
        let mut rest = vec![0u8; QUIET - 5 + 10];
        ra.read_exact(&mut rest).await.unwrap();
        assert_eq!(ra.end, 6000 - QUIET, "the rest came in one read");
        got.extend_from_slice(&rest);
        let mut tail = vec![0u8; 6000 - got.len()];
        ra.read_exact(&mut tail).await.unwrap();
        got.extend_from_slice(&tail);
        assert_eq!(got, data);
        assert!(pending(&mut ra).await);
        assert!(
            ra.holds_buffer(),
            "a busy link keeps its buffer between bursts"
        );
    }

    #[tokio::test]
    async fn an_http_connection_keeps_its_quiet_buffer_between_requests() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut ra = ReadAhead::new(Box::new(rx), 8192).keeping_quiet_buffer();
        tx.write_all(b"GET / HTTP/1.1").await.unwrap();
        let mut req = [0u8; 14];
        ra.read_exact(&mut req).await.unwrap();
        assert!(pending(&mut ra).await);
        assert!(ra.holds_buffer(), "kept for the next request");
    }
}
