//! What a listener does with a connection once TLS is up: read the first byte (within
//! `first_byte_timeout`), decide the protocol, and hand the connection — with that byte
//! replayed ([`PrefixedIo`]) — to the HTTP proxy or the JSON-RPC relay.
//!
//! An ASCII digit starts a netstring (Icinga cluster JSON-RPC); anything else is HTTP (an
//! HTTP/2 preface starts with `P`). This is Icinga 2's own rule for its port 5665.

mod h2_bodies;
mod handshake;
mod head_deadline;
mod prefixed;

pub use handshake::Handshakes;
pub use prefixed::PrefixedIo;

use crate::authz::Identity;
use crate::cluster::Relay;
use crate::config::Protocol;
use crate::http::HttpGateway;
use crate::identity::TlsInfo;
use crate::metrics::{ActiveGuard, Metrics};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::tls::ALPN;
use pingora_core::protocols::{Shutdown, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    /// The gap allowed in an HTTP/2 request body (HTTP/1 bodies are Pingora's, see `http`).
    body_timeout: Duration,
    /// `gatehouse_http_client_timeouts_total{listener,phase="body"}`, resolved once.
    body_timeouts: prometheus::IntCounter,
    /// `max_connections_per_identity`, with the connections open per caller.
    per_identity: Option<PerIdentity>,
    /// One refusal line per kind per 10 s (identity cap, silent, wrong protocol).
    refusal_log: [crate::logging::Sampler; 3],
    /// The TLS handshake and the accept-time caps (`handshake_timeout`, `max_handshakes_per_ip`,
    /// `max_connections`); `None` only for an app built without them (TLS done elsewhere).
    handshakes: Option<Handshakes>,
}

/// Connections open per caller key, capped.
struct PerIdentity {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl PerIdentity {
    /// A place for one more connection of `key`, or `None` at the cap.
    fn take(&self, key: String) -> Option<PerIdentitySlot<'_>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PerIdentitySlot { of: self, key })
    }
}

/// One connection's place in [`PerIdentity`]; released on drop (keys leave the map at zero).
struct PerIdentitySlot<'a> {
    of: &'a PerIdentity,
    key: String,
}

impl Drop for PerIdentitySlot<'_> {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
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
            body_timeout: Duration::from_secs(30),
            body_timeouts: metrics
                .http_client_timeouts
                .with_label_values(&[name, "body"]),
            metrics,
            per_identity: None,
            refusal_log: std::array::from_fn(|_| {
                crate::logging::Sampler::new(Duration::from_secs(10))
            }),
            handshakes: None,
        }
    }

    /// Closes an HTTP/2 connection whose request body does not move for `limit`.
    pub fn with_body_timeout(mut self, limit: Duration) -> Self {
        self.body_timeout = limit;
        self
    }

    /// Runs the TLS handshake (if any) and the accept-time caps here.
    pub fn with_handshakes(mut self, h: Handshakes) -> Self {
        self.handshakes = Some(h);
        self
    }

    /// Caps the connections each caller (CN or fingerprint, else client IP) may hold open at once; one more
    /// is closed right after the handshake.
    pub fn with_max_per_identity(mut self, max: Option<usize>) -> Self {
        self.per_identity = max.map(|max| PerIdentity {
            max,
            open: Mutex::default(),
        });
        self
    }

    fn accepts(&self, p: Protocol) -> bool {
        match p {
            Protocol::Http => self.http.is_some(),
            Protocol::Cluster => self.cluster.is_some(),
        }
    }

    /// The connection's place under `max_connections_per_identity`; `Err` at the cap (logged).
    fn take_identity_slot(&self, stream: &Stream) -> Result<Option<PerIdentitySlot<'_>>, ()> {
        let Some(cap) = &self.per_identity else {
            return Ok(None);
        };
        let info = stream
            .get_ssl_digest()
            .and_then(|d| d.extension.get::<TlsInfo>().cloned());
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let key = Identity::of(info.as_ref()).limit_key(ip);
        match cap.take(key) {
            Some(slot) => Ok(Some(slot)),
            None => {
                if let Some(more) = self.refusal_log[0].admit_note() {
                    log::warn!(target: "gatehouse::demux", "listener {}: {} ({}) already has {} connections open (max_connections_per_identity); closing{more}", self.name, peer(stream), Identity::of(info.as_ref()), cap.max);
                }
                Err(())
            }
        }
    }

    /// `stream` with the `first` byte put back, and the HTTP client watch its protocol needs.
    fn replay_first_byte(&self, stream: Stream, first: [u8; 1], proto: Protocol) -> Stream {
        // HTTP/2 frames its own headers; only HTTP/1 heads need the deadline.
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let who = (proto == Protocol::Http).then(|| peer(&stream));
        let mut io = PrefixedIo::new(first.to_vec(), stream);
        match who {
            Some(who) if h2 => {
                io = io.with_body_watch(
                    self.body_timeout,
                    self.body_timeouts.clone(),
                    self.name.clone(),
                    who,
                );
            }
            Some(who) => {
                io = io.with_head_deadline(
                    self.header_timeout,
                    self.head_timeouts.clone(),
                    self.name.clone(),
                    who,
                );
            }
            None => {}
        }
        Box::new(io)
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
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = std::time::Instant::now();
        let (mut stream, _place) = match &self.handshakes {
            Some(h) => {
                let (s, p) = h.accept(stream, accepted).await?;
                (s, Some(p))
            }
            None => (stream, None),
        };
        let _slot = match self.take_identity_slot(&stream) {
            Ok(slot) => slot,
            Err(()) => {
                refuse(&self.metrics, &self.name, stream, "over_identity_limit").await;
                return None;
            }
        };
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.first_byte_timeout, stream.read(&mut first)).await {
            Err(_) => {
                if let Some(more) = self.refusal_log[1].admit_note() {
                    log::info!(target: "gatehouse::demux", "listener {}: {} sent nothing within {:?} after the handshake; closing{more}", self.name, peer(&stream), self.first_byte_timeout);
                }
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
            if let Some(more) = self.refusal_log[2].admit_note() {
                log::info!(target: "gatehouse::demux", "listener {}: {} speaks {proto:?} (first byte 0x{:02x}), which this listener does not accept; closing{more}", self.name, peer(&stream), first[0]);
            }
            refuse(&self.metrics, &self.name, stream, "rejected").await;
            return None;
        }
        let io = self.replay_first_byte(stream, first, proto);
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
