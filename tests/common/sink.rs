//! A netstring TLS server that requires client certificates, like an Icinga master: records,
//! echoes, counts, or stalls. Used by the relay tests and the relay benchmark.

use boring::ssl::SslAcceptor;
use bytes::BytesMut;
use gatehouse::cluster::codec;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the sink behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// Record each frame and send it back.
    Echo,
    /// Count frames only (benchmarks).
    Count,
    /// Accept the connection and never read (a stalled master).
    Stall,
    /// Send a heartbeat every 200 ms and never read (a master that talks but takes nothing).
    ChattyStall,
}

/// A running sink on 127.0.0.1 port 0.
pub struct Sink {
    pub addr: SocketAddr,
    pub frames: Arc<Mutex<Vec<Vec<u8>>>>,
    pub client_cns: Arc<Mutex<Vec<Option<String>>>>,
    /// Per connection, in accept order: whether its TLS session was resumed.
    pub resumed: Arc<Mutex<Vec<bool>>>,
    /// Frames received, in every mode that reads.
    pub count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start(acc: SslAcceptor, mode: SinkMode) -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let client_cns = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let resumed = Arc::new(Mutex::new(Vec::new()));
        let (f2, c2, n2, r2, acc) = (
            frames.clone(),
            client_cns.clone(),
            count.clone(),
            resumed.clone(),
            Arc::new(acc),
        );
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let _ = tcp.set_nodelay(true);
                let (frames, cns, count, acc) = (f2.clone(), c2.clone(), n2.clone(), acc.clone());
                let reused = r2.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = tokio_boring::accept(&acc, tcp).await else {
                        return;
                    };
                    let cn = s.ssl().peer_certificate().and_then(|c| super::cn_of(&c));
                    cns.lock().unwrap().push(cn);
                    reused.lock().unwrap().push(s.ssl().session_reused());
                    if mode == SinkMode::Stall {
                        // Holds the connection, never reading: the stalled master under test.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    if mode == SinkMode::ChattyStall {
                        use tokio::io::AsyncWriteExt;
                        let beat = codec::encode(
                            br#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#,
                        );
                        while s.write_all(&beat).await.is_ok() {
                            // The master's pace: it keeps talking, so the link is never idle.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        return;
                    }
                    let mut buf = BytesMut::with_capacity(64 * 1024);
                    loop {
                        let mut echo = Vec::new();
                        while let Ok(Some(f)) = codec::decode(&mut buf, 64 << 20) {
                            count.fetch_add(1, Ordering::Relaxed);
                            if mode == SinkMode::Echo {
                                frames.lock().unwrap().push(f.raw().to_vec());
                                echo.extend_from_slice(f.raw());
                            }
                        }
                        if !echo.is_empty()
                            && (s.write_all(&echo).await.is_err() || s.flush().await.is_err())
                        {
                            return;
                        }
                        if buf.capacity() - buf.len() < 16 * 1024 {
                            buf.reserve(64 * 1024);
                        }
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        Sink {
            addr,
            frames,
            client_cns,
            resumed,
            count,
            task,
        }
    }

    /// Frames recorded so far (Echo mode).
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().unwrap().clone()
    }
}
