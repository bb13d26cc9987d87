//! What a listener does with a connection once TLS is up: read the first byte (within
//! `first_byte_timeout`), decide the protocol, and hand the connection — with that byte
//! replayed ([`PrefixedIo`]) — to the HTTP proxy or the JSON-RPC relay.
//!
//! An ASCII digit starts a netstring (Icinga cluster JSON-RPC); anything else is HTTP (an
//! HTTP/2 preface starts with `P`). This is Icinga 2's own rule for its port 5665.

mod head_deadline;
mod prefixed;

pub use prefixed::PrefixedIo;

use crate::cluster::Relay;
use crate::config::Protocol;
use crate::http::HttpGateway;
use crate::metrics::{ActiveGuard, Metrics};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::tls::ALPN;
use pingora_core::protocols::{Shutdown, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The Pingora app behind one listener.
pub struct ListenerApp {
    name: Arc<str>,
    http: Option<Arc<HttpProxy<HttpGateway>>>,
    cluster: Option<Arc<Relay>>,
    first_byte_timeout: Duration,
    header_timeout: Duration,
    metrics: Arc<Metrics>,
    /// `gatehouse_http_header_timeouts_total{listener}`, resolved once.
    head_timeouts: prometheus::IntCounter,
}

impl ListenerApp {
    /// An app for listener `name`; `http` / `cluster` are set for the protocols it accepts.
    pub fn new(
        name: &str,
        http: Option<HttpProxy<HttpGateway>>,
        cluster: Option<Arc<Relay>>,
        first_byte_timeout: Duration,
        header_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        ListenerApp {
            name: name.into(),
            http: http.map(Arc::new),
            cluster,
            first_byte_timeout,
            header_timeout,
            head_timeouts: metrics.http_head_timeouts.with_label_values(&[name]),
            metrics,
        }
    }

    fn accepts(&self, p: Protocol) -> bool {
        match p {
            Protocol::Http => self.http.is_some(),
            Protocol::Cluster => self.cluster.is_some(),
        }
    }
}

fn peer(stream: &Stream) -> String {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "-".into())
}

async fn refuse(metrics: &Metrics, listener: &str, mut stream: Stream, label: &str) {
    metrics
        .connections
        .with_label_values(&[listener, label])
        .inc();
    Shutdown::shutdown(&mut *stream).await;
}

#[async_trait]
impl ServerApp for ListenerApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.first_byte_timeout, stream.read(&mut first)).await {
            Err(_) => {
                log::info!(target: "gatehouse::demux", "listener {}: {} sent nothing within {:?} after the handshake; closing", self.name, peer(&stream), self.first_byte_timeout);
                refuse(&self.metrics, &self.name, stream, "timeout").await;
                return None;
            }
            // Closed (or broken) before saying anything, e.g. a TLS probe: nothing to serve.
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
        }
        let proto = if first[0].is_ascii_digit() {
            Protocol::Cluster
        } else {
            Protocol::Http
        };
        if !self.accepts(proto) {
            log::info!(target: "gatehouse::demux", "listener {}: {} speaks {proto:?} (first byte 0x{:02x}), which this listener does not accept; closing", self.name, peer(&stream), first[0]);
            refuse(&self.metrics, &self.name, stream, "rejected").await;
            return None;
        }
        // HTTP/2 frames its own headers; only HTTP/1 heads need the deadline.
        let h1 = proto == Protocol::Http && !matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let who = h1.then(|| peer(&stream));
        let mut io = PrefixedIo::new(first.to_vec(), stream);
        if let Some(who) = who {
            io = io.with_head_deadline(
                self.header_timeout,
                self.head_timeouts.clone(),
                self.name.clone(),
                who,
            );
        }
        let io: Stream = Box::new(io);
        match (proto, &self.http, &self.cluster) {
            (Protocol::Cluster, _, Some(cluster)) => {
                let _active = ActiveGuard::open(&self.metrics, &self.name, "cluster");
                cluster.serve(&self.name, io, shutdown).await;
                None
            }
            (_, Some(http), _) => {
                let _active = ActiveGuard::open(&self.metrics, &self.name, "http");
                // The HTTP app runs the whole keep-alive loop itself and returns None.
                http.process_new(io, shutdown).await
            }
            _ => None,
        }
    }

    async fn cleanup(&self) {
        if let Some(http) = &self.http {
            ServerApp::cleanup(&**http).await
        }
    }
}
