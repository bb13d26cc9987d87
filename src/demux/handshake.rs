//! The TLS handshake of a listener, run here rather than in Pingora's accept loop, whose bound
//! is a fixed 60 s: one IP opening thousands of connections that never start TLS would hold a
//! descriptor each for that long, until the process has none left (for `/metrics` either).
//!
//! Every accepted connection passes, in order: the listener's `max_connections` (open at once,
//! this connection's place held until it ends), the client address's `max_handshakes_per_ip`
//! (handshakes under way), then Pingora's own `handshake_with_callback` (certificate by SNI,
//! identity) bounded by `handshake_timeout` from accept. Each outcome is counted in
//! `gatehouse_handshakes_total{listener, result}` and logged with the peer, sampled.

use crate::logging::Sampler;
use crate::metrics::Metrics;
use crate::tls::read_ahead::ReadAhead;
use crate::tls::ListenerAcceptor;
use pingora_core::protocols::Stream;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Indices into [`RESULTS`].
const OK: usize = 0;
const TIMEOUT: usize = 1;
const FAILED: usize = 2;
const OVER_IP: usize = 3;
const OVER_LISTENER: usize = 4;

/// The results counted, in `gatehouse_handshakes_total`'s `result` label.
const RESULTS: [&str; 5] = [
    "ok",
    "timeout",
    "failed",
    "over_ip_limit",
    "over_listener_limit",
];

/// One listener's handshakes.
pub struct Handshakes {
    listener: Arc<str>,
    tls: Option<ListenerAcceptor>,
    timeout: Duration,
    per_ip_max: usize,
    in_handshake: Mutex<HashMap<IpAddr, usize>>,
    max_connections: usize,
    open: Arc<AtomicUsize>,
    counters: [prometheus::IntCounter; 5],
    /// One sampler per result that is logged (timeout, failed, the two refusals).
    log: [Sampler; 5],
    /// Failed handshakes: one sampler per cause (`tls::handshake_failure_cause`).
    failed_log: Vec<Sampler>,
    /// The most one read below TLS takes while a connection is busy (`read_buffer`), and
    /// whether an idle connection keeps its 1 KiB quiet buffer (where HTTP is spoken).
    read_ahead: (usize, bool),
}

/// A connection's place among the listener's `max_connections`, held until it ends.
pub struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A handshake's place among its address's `max_handshakes_per_ip`, held while it runs.
struct InHandshake<'a> {
    of: &'a Handshakes,
    ip: Option<IpAddr>,
}

impl Drop for InHandshake<'_> {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut m = self
            .of
            .in_handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

impl Handshakes {
    /// For listener `listener`: `tls` absent on a plaintext listener (only `max_connections`
    /// applies there). Every result's counter exists at 0 from here on.
    pub fn new(
        listener: &str,
        tls: Option<ListenerAcceptor>,
        timeout: Duration,
        per_ip_max: usize,
        max_connections: usize,
        metrics: &Metrics,
    ) -> Handshakes {
        let counters = RESULTS.map(|r| metrics.handshakes.with_label_values(&[listener, r]));
        Handshakes {
            listener: listener.into(),
            tls,
            timeout,
            per_ip_max,
            in_handshake: Mutex::new(HashMap::new()),
            max_connections,
            open: Arc::new(AtomicUsize::new(0)),
            counters,
            log: RESULTS.map(|_| Sampler::new(Duration::from_secs(10))),
            failed_log: (0..=crate::tls::HANDSHAKE_FAILURES.len())
                .map(|_| Sampler::new(Duration::from_secs(10)))
                .collect(),
            read_ahead: (crate::tls::read_ahead::QUIET, false),
        }
    }

    /// Reads below TLS take up to `cap` bytes while a connection is busy
    /// ([`crate::tls::read_ahead`]); with `keep_quiet` an idle connection keeps 1 KiB.
    pub fn with_read_ahead(mut self, cap: usize, keep_quiet: bool) -> Handshakes {
        self.read_ahead = (cap, keep_quiet);
        self
    }

    fn count(&self, result: usize, peer: &str, detail: &dyn std::fmt::Display) {
        self.counters[result].inc();
        if result == OK {
            return;
        }
        if let Some(more) = self.log[result].admit_note() {
            log::warn!(target: "gatehouse::tls", "listener {}: {peer}: handshake {}: {detail}{more}", self.listener, RESULTS[result]);
        }
    }

    /// The connection after its handshake, with its place among `max_connections`; `None`
    /// when it was refused or the handshake did not finish (counted and logged here).
    pub async fn accept(&self, stream: Stream, accepted: Instant) -> Option<(Stream, Place)> {
        let addr = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let peer = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.count(
                OVER_LISTENER,
                &peer,
                &format_args!(
                    "{} connections open (listeners[].max_connections); closed at accept",
                    self.max_connections
                ),
            );
            return None;
        }
        let place = Place(self.open.clone());
        let Some(tls) = &self.tls else {
            return Some((stream, place));
        };
        let ip = addr.map(|a| a.ip());
        let _slot = {
            let mut m = self.in_handshake.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ip) = ip {
                let n = m.entry(ip).or_insert(0);
                if *n >= self.per_ip_max {
                    drop(m);
                    self.count(OVER_IP, &peer, &format_args!("{} handshakes of this address under way (listeners[].max_handshakes_per_ip); closed at accept", self.per_ip_max));
                    return None;
                }
                *n += 1;
            }
            InHandshake { of: self, ip }
        };
        let left = self.timeout.saturating_sub(accepted.elapsed());
        // Records are read through a buffer that is large only while the connection is busy.
        let below = match self.read_ahead {
            (cap, true) => ReadAhead::new(stream, cap).keeping_quiet_buffer(),
            (cap, false) => ReadAhead::new(stream, cap),
        };
        let callbacks = tls.callbacks_for(&peer);
        let hs = pingora_core::protocols::tls::server::handshake_with_callback(
            &tls.acceptor,
            below,
            &callbacks,
        );
        match tokio::time::timeout(left, hs).await {
            Ok(Ok(s)) => {
                self.count(OK, &peer, &"");
                Some((Box::new(s), place))
            }
            Ok(Err(e)) => {
                self.counters[FAILED].inc();
                let text = e.to_string();
                let (cause, words) = crate::tls::handshake_failure_cause(&text);
                if let Some(more) = self.failed_log[cause].admit_note() {
                    let text = crate::logsafe::EscText(&text);
                    if words.is_empty() {
                        log::warn!(target: "gatehouse::tls", "listener {}: {peer}: handshake failed: {text}{more}", self.listener);
                    } else {
                        log::warn!(target: "gatehouse::tls", "listener {}: {peer}: handshake failed: {words} ({text}){more}", self.listener);
                    }
                }
                None
            }
            Err(_) => {
                self.count(
                    TIMEOUT,
                    &peer,
                    &format_args!(
                        "not finished within {:?} of accept (listeners[].handshake_timeout)",
                        self.timeout
                    ),
                );
                None
            }
        }
    }
}
