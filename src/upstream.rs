//! Upstream groups: Pingora load balancers with optional health checks, and the
//! `HttpPeer` each request is sent to (timeouts and the group's own TLS settings).

use crate::config::{
    ConfigError, HealthProbe, LoadBalancing, ProbeKind, UpstreamAuthSettings, UpstreamSettings,
};
use crate::tls::read_ahead::ReadAhead;
use crate::tls::relay_client::SessionKey;
use crate::tls::upstream::UpstreamTlsMaterial;
use arc_swap::ArcSwap;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::services::background::background_service;
use pingora_core::services::ServiceWithDependents;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;
use pingora_http::ResponseHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::Backend;
use pingora_load_balancing::LoadBalancer;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The `Authorization` value that carries `user` and `password` (HTTP basic).
pub fn basic_authorization(user: &str, password: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

/// The most one read below TLS takes on a busy cluster link's upstream side (as
/// `listeners[].read_buffer` on the client side).
const LINK_READ_AHEAD: usize = 64 * 1024;

/// Linear probing bound for hash selection (Pingora's `max_iterations`).
const MAX_SELECT_ITERATIONS: usize = 256;

enum Selector {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Random(Arc<LoadBalancer<Random>>),
    Hash(Arc<LoadBalancer<Consistent>>),
}

/// How every connection to this group's peers is made: timeouts and TLS.
struct PeerTemplate {
    /// Swapped whole on reload; each new peer stamps the material current at that moment.
    tls: Option<ArcSwap<UpstreamTlsMaterial>>,
    connect_timeout: Duration,
    tls_handshake_timeout: Duration,
    read_timeout: Duration,
    /// The bound on a whole answer: not a peer option (Pingora bounds single reads only), it
    /// is checked as the answer arrives ([`UpstreamGroup::answer_timeout`]).
    answer_timeout: Duration,
    idle_timeout: Duration,
    /// The TCP connect, bounded by `connect_timeout` alone.
    l4: Arc<BoundedConnect>,
}

/// A TCP connect bounded by its own timeout. Pingora 0.9 bounds the TCP connect and, again, the
/// TLS handshake by `PeerOptions::connection_timeout`, so one value cannot keep a dead peer's
/// connect short and give a busy peer's handshake time; with this as `custom_l4`,
/// `connection_timeout` bounds the handshake only. (Keepalive and nodelay are still applied by
/// Pingora after the connect.)
#[derive(Debug)]
struct BoundedConnect {
    timeout: Duration,
}

#[async_trait::async_trait]
impl pingora_core::connectors::L4Connect for BoundedConnect {
    async fn connect(
        &self,
        addr: &pingora_core::protocols::l4::socket::SocketAddr,
    ) -> pingora_error::Result<pingora_core::protocols::l4::stream::Stream> {
        use pingora_error::{Error, ErrorType};
        let Some(inet) = addr.as_inet() else {
            return Error::e_explain(
                ErrorType::ConnectError,
                format!("not a TCP address: {addr}"),
            );
        };
        // Pingora's own connect, so refusals and unreachable networks are classified as on
        // every other path (`ConnectRefused`, `ConnectNoRoute`, …).
        let connect = pingora_core::protocols::l4::ext::connect(inet, None);
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(r) => r.map(Into::into),
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!("timeout {:?} connecting to {inet}", self.timeout),
            ),
        }
    }
}

impl PeerTemplate {
    /// The template of group `u`, with its TLS material loaded.
    fn new(u: &UpstreamSettings, tls: Option<UpstreamTlsMaterial>) -> PeerTemplate {
        PeerTemplate {
            tls: tls.map(ArcSwap::from_pointee),
            connect_timeout: u.connect_timeout,
            tls_handshake_timeout: u.tls_handshake_timeout,
            l4: Arc::new(BoundedConnect {
                timeout: u.connect_timeout,
            }),
            read_timeout: u.read_timeout,
            answer_timeout: u.answer_timeout,
            idle_timeout: u.idle_timeout,
        }
    }

    fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut p = HttpPeer::new(addr, self.tls.is_some(), String::new());
        if let Some(t) = &self.tls {
            t.load().apply(&mut p);
        }
        let o = &mut p.options;
        if self.tls.is_some() {
            o.custom_l4 = Some(self.l4.clone());
            o.connection_timeout = Some(self.tls_handshake_timeout);
            o.total_connection_timeout = Some(self.connect_timeout + self.tls_handshake_timeout);
        } else {
            o.connection_timeout = Some(self.connect_timeout);
            o.total_connection_timeout = Some(self.connect_timeout);
        }
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.read_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        p
    }
}

/// One named upstream group.
pub struct UpstreamGroup {
    /// The `upstreams:` key (logs, metric labels).
    pub name: Arc<str>,
    selector: Selector,
    template: PeerTemplate,
    /// How many peers the group has (bounds connect retries).
    pub peer_count: usize,
    /// The peers, in configuration order.
    addrs: Vec<SocketAddr>,
    /// The Kea UNIX control sockets (`unix:` peers), in configuration order.
    unix: Vec<Arc<Path>>,
    /// Round-robin position among `unix`.
    next_unix: AtomicUsize,
    /// `Authorization` sent to every peer (`basic_auth`).
    authorization: Option<String>,
    /// The HTTP health check, rebuilt when the TLS material is reloaded.
    http_check: Option<(HealthProbe, LiveCheck)>,
    /// Each peer's latest health-check result (`None`: the group has no health check).
    probed: Option<Arc<Probed>>,
}

/// What the health check last said about one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerHealth {
    /// Not checked yet (the first pass runs when the server starts).
    Unknown,
    /// Passed its latest check: in the rotation.
    Up,
    /// Failed its latest check: out of the rotation until it passes again.
    Down,
}

/// A group's health-check loop, to be added to the server as a background service.
pub type HealthService = Box<dyn ServiceWithDependents>;

impl UpstreamGroup {
    /// Builds the group `u`; returns it with its health-check service, if any.
    pub fn build(
        u: &UpstreamSettings,
    ) -> Result<(UpstreamGroup, Option<HealthService>), Vec<ConfigError>> {
        let name = u.name.as_str();
        let at = format!("upstreams.{name}");
        let tls = match &u.tls {
            Some(t) => Some(UpstreamTlsMaterial::load(t, &format!("{at}.tls"))?),
            None => None,
        };
        let addrs = &u.peers;
        let authorization = match &u.basic_auth {
            Some(a) => Some(read_authorization(a, &at)?),
            None => None,
        };
        let template = PeerTemplate::new(u, tls);
        let http_check = u
            .health_check
            .as_ref()
            .filter(|h| h.kind == ProbeKind::Http)
            .map(|h| {
                (
                    h.clone(),
                    Arc::new(ArcSwap::from_pointee(http_check(h, &template))),
                )
            });
        let probed = u
            .health_check
            .is_some()
            .then(|| Arc::new(Probed::new(addrs)));
        let hc = u
            .health_check
            .as_ref()
            .zip(probed.clone())
            .map(|(h, probed)| HealthSetup {
                config: h,
                connect_timeout: template.connect_timeout,
                name,
                http: http_check.as_ref().map(|c| c.1.clone()),
                probed,
            });
        let (selector, service) = load_balancer(u.load_balancing, addrs, &at, hc)?;
        Ok((
            UpstreamGroup {
                name: name.into(),
                selector,
                template,
                peer_count: addrs.len() + u.unix.len(),
                addrs: addrs.clone(),
                unix: u.unix.iter().map(|p| Arc::from(p.as_path())).collect(),
                next_unix: AtomicUsize::new(0),
                authorization,
                http_check,
                probed,
            },
            service,
        ))
    }

    /// Picks a healthy peer; `key` drives consistent hashing (ignored otherwise).
    pub fn select(&self, key: &[u8]) -> Option<SocketAddr> {
        let b = match &self.selector {
            Selector::RoundRobin(l) => l.select(key, MAX_SELECT_ITERATIONS),
            Selector::Random(l) => l.select(key, MAX_SELECT_ITERATIONS),
            Selector::Hash(l) => l.select(key, MAX_SELECT_ITERATIONS),
        }?;
        b.addr.as_inet().copied()
    }

    /// The peer for one request to `addr`.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        self.template.peer(addr)
    }

    /// A fresh connection to `addr` for a cluster link, presenting `cert` (`None`: the
    /// group's own `client_cert`). Over TLS it is the relay's own client
    /// ([`crate::tls::relay_client`]): Pingora's TCP connect and TLS handshake, one context
    /// per group, a session offered when this peer handed one to the same certificate
    /// before, and the read-ahead below TLS. `true`: the session was resumed.
    pub(crate) async fn connect_link(
        &self,
        connector: &TransportConnector,
        addr: SocketAddr,
        cert: Option<Arc<CertKey>>,
    ) -> pingora_error::Result<(Stream, bool)> {
        use pingora_error::{Error, ErrorType, OrErr};
        let t = &self.template;
        let Some(tls) = t.tls.as_ref().map(|m| m.load_full()) else {
            return Ok((connector.new_stream(&t.peer(addr)).await?, false));
        };
        let mut tcp = HttpPeer::new(addr, false, String::new());
        tcp.options.connection_timeout = Some(t.connect_timeout);
        tcp.options.total_connection_timeout = Some(t.connect_timeout);
        let l4 = connector.new_stream(&tcp).await?;
        let presented = cert.or_else(|| tls.client().cloned());
        let key = SessionKey::new(addr, presented.as_deref().map(|c| c.leaf()));
        let conf = tls
            .relay_client()
            .configure(&tls.peer_tls(), presented.as_deref(), key)
            .or_err(ErrorType::InternalError, "the relay's TLS settings")?;
        let below = ReadAhead::new(l4, LINK_READ_AHEAD);
        let hs = pingora_core::protocols::tls::client::handshake(conf, tls.sni(), below, None);
        let s = match tokio::time::timeout(t.tls_handshake_timeout, hs).await {
            Ok(r) => r?,
            Err(_) => {
                let limit = t.tls_handshake_timeout;
                let why = format!("TLS handshake with {addr}, timeout {limit:?}");
                return Error::e_explain(ErrorType::ConnectTimedout, why);
            }
        };
        let resumed = s.ssl().session_reused();
        Ok((Box::new(s), resumed))
    }

    /// The `Host` a request built by Gatehouse itself names: the group's TLS SNI when set,
    /// else the peer address.
    pub fn host_header(&self, addr: SocketAddr) -> String {
        match self.template.tls.as_ref().map(|t| t.load()) {
            Some(t) if !t.sni().is_empty() => t.sni().to_string(),
            _ => addr.to_string(),
        }
    }

    /// Every peer, in configuration order (healthy or not).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The `Authorization` value every request to this group's peers carries
    /// (`upstreams.<name>.basic_auth`), if any.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// The group's Kea UNIX control sockets (`unix:` peers), in configuration order; a group
    /// has these or TCP peers, never both.
    pub fn unix_peers(&self) -> &[Arc<Path>] {
        &self.unix
    }

    /// The next UNIX control socket, in turns (these peers have no health check: a dead
    /// socket answers its slot with an error at once).
    pub fn select_unix(&self) -> Option<Arc<Path>> {
        if self.unix.is_empty() {
            return None;
        }
        let i = self.next_unix.fetch_add(1, Ordering::Relaxed) % self.unix.len();
        Some(self.unix[i].clone())
    }

    /// What the health check says about each peer, in configuration order; `None` when the
    /// group has no `health_check` (its peers are never probed). A peer is `Up` only when its
    /// latest check passed *and* the load balancer has it in the rotation. `/readyz` reads
    /// this (`health`).
    pub fn peer_health(&self) -> Option<Vec<(SocketAddr, PeerHealth)>> {
        let probed = self.probed.as_ref()?;
        Some(
            self.addrs
                .iter()
                .map(|&a| {
                    let h = match probed.get(a) {
                        PeerHealth::Up if !self.in_rotation(a) => PeerHealth::Down,
                        h => h,
                    };
                    (a, h)
                })
                .collect(),
        )
    }

    /// Whether the load balancer would pick `addr` (healthy and enabled).
    fn in_rotation(&self, addr: SocketAddr) -> bool {
        match &self.selector {
            Selector::RoundRobin(l) => lb_ready(l, addr),
            Selector::Random(l) => lb_ready(l, addr),
            Selector::Hash(l) => lb_ready(l, addr),
        }
    }

    /// The bound on each read and write to a peer.
    pub fn read_timeout(&self) -> Duration {
        self.template.read_timeout
    }

    /// The bound on a whole answer, head and body, from the request sent
    /// (`upstreams.<name>.answer_timeout`).
    pub fn answer_timeout(&self) -> Duration {
        self.template.answer_timeout
    }

    /// How long pooled idle connections to this group are kept.
    pub fn idle_timeout(&self) -> Duration {
        self.template.idle_timeout
    }

    /// The TLS material new connections use (none for plaintext groups).
    pub fn tls(&self) -> Option<Arc<UpstreamTlsMaterial>> {
        self.template.tls.as_ref().map(|t| t.load_full())
    }

    /// Switches new connections (and the HTTP health check) to freshly loaded TLS material.
    /// Pooled connections made with the old material are not reused: the pool key changes
    /// with it (see [`UpstreamTlsMaterial`]'s `group_key`).
    pub fn set_tls(&self, tls: UpstreamTlsMaterial) {
        let Some(live) = &self.template.tls else {
            return;
        };
        live.store(Arc::new(tls));
        if let Some((hc, check)) = &self.http_check {
            check.store(Arc::new(http_check(hc, &self.template)));
        }
    }
}

fn lb_ready<S>(lb: &LoadBalancer<S>, addr: SocketAddr) -> bool
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let backends = lb.backends();
    let all = backends.get_backend();
    all.iter()
        .find(|b| b.addr.as_inet() == Some(&addr))
        .is_some_and(|b| backends.ready(b))
}

/// The latest health-check result of each peer of a group, written by [`Recorded`]
/// (`PeerHealth as u8`; a group has a handful of peers, so a list).
struct Probed(Vec<(SocketAddr, AtomicU8)>);

impl Probed {
    fn new(addrs: &[SocketAddr]) -> Probed {
        let unknown = PeerHealth::Unknown as u8;
        Probed(addrs.iter().map(|&a| (a, AtomicU8::new(unknown))).collect())
    }

    fn set(&self, target: &Backend, ok: bool) {
        let h = if ok { PeerHealth::Up } else { PeerHealth::Down };
        for (a, state) in &self.0 {
            if target.addr.as_inet() == Some(a) {
                state.store(h as u8, Ordering::Release);
            }
        }
    }

    fn get(&self, addr: SocketAddr) -> PeerHealth {
        let state = self.0.iter().find(|(a, _)| *a == addr);
        match state.map(|(_, s)| s.load(Ordering::Acquire)) {
            Some(s) if s == PeerHealth::Up as u8 => PeerHealth::Up,
            Some(s) if s == PeerHealth::Down as u8 => PeerHealth::Down,
            _ => PeerHealth::Unknown,
        }
    }
}

/// A health check that also records each result, so `/readyz` can tell "not checked yet"
/// from "healthy" (Pingora starts every peer healthy, before its first check).
struct Recorded {
    inner: Box<dyn HealthCheck + Send + Sync>,
    probed: Arc<Probed>,
}

#[async_trait::async_trait]
impl HealthCheck for Recorded {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let result = self.inner.check(target).await;
        self.probed.set(target, result.is_ok());
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.inner.health_status_change(target, healthy).await
    }

    fn backend_summary(&self, target: &Backend) -> String {
        self.inner.backend_summary(target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// An HTTP health check with the same TLS, client identity and timeouts as real traffic.
fn http_check(hc: &HealthProbe, template: &PeerTemplate) -> HttpHealthCheck {
    let host = hc
        .host
        .clone()
        .or_else(|| template.tls.as_ref().map(|t| t.load().sni().to_string()))
        .unwrap_or_else(|| "localhost".into());
    let mut check = HttpHealthCheck::new(&host, template.tls.is_some());
    check.peer_template = template.peer(SocketAddr::from(([0, 0, 0, 0], 1)));
    check.req.set_uri(hc.path.clone());
    check.validator = Some(Box::new(|resp: &ResponseHeader| {
        if resp.status.is_success() {
            Ok(())
        } else {
            pingora_error::Error::e_explain(
                pingora_error::ErrorType::HTTPStatus(resp.status.as_u16()),
                "health check expects 2xx",
            )
        }
    }));
    check
}

/// The current [`http_check`]; the load balancer owns this box, the group keeps the handle.
struct LiveHttpCheck(LiveCheck);

#[async_trait::async_trait]
impl HealthCheck for LiveHttpCheck {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let current = self.0.load_full();
        current.check(target).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.0.load().health_threshold(success)
    }
}

/// A group's health-check settings, as [`with_health`] needs them.
struct HealthSetup<'a> {
    config: &'a HealthProbe,
    connect_timeout: Duration,
    name: &'a str,
    /// The live HTTP check (None: TCP).
    http: Option<LiveCheck>,
    /// Where each result is recorded.
    probed: Arc<Probed>,
}

type LiveCheck = Arc<ArcSwap<HttpHealthCheck>>;

/// Attaches the configured health check; a checked balancer runs as a background service.
fn with_health<S>(
    mut lb: LoadBalancer<S>,
    setup: Option<HealthSetup<'_>>,
) -> (Arc<LoadBalancer<S>>, Option<HealthService>)
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let Some(HealthSetup {
        config: hc,
        connect_timeout,
        name,
        http,
        probed,
    }) = setup
    else {
        return (Arc::new(lb), None);
    };
    let inner: Box<dyn HealthCheck + Send + Sync> = match http {
        Some(live) => Box::new(LiveHttpCheck(live)),
        // Liveness only: a TCP connect, no TLS (BasicPeer cannot carry a client cert).
        None => {
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(connect_timeout);
            check
        }
    };
    lb.set_health_check(Box::new(Recorded { inner, probed }));
    lb.health_check_frequency = Some(hc.interval);
    // Every peer at once: one hanging peer (an HTTP check may wait `read_timeout`) must not
    // hold back the others' results, nor a group's readiness at startup.
    lb.parallel_health_check = true;
    let svc = background_service(&format!("health check {name}"), lb);
    let task = svc.task();
    (task, Some(Box::new(svc)))
}

/// The group's load balancer for `policy`, with its health check attached.
fn load_balancer(
    policy: LoadBalancing,
    addrs: &[SocketAddr],
    at: &str,
    hc: Option<HealthSetup<'_>>,
) -> Result<(Selector, Option<HealthService>), Vec<ConfigError>> {
    Ok(match policy {
        LoadBalancing::RoundRobin => {
            let (l, s) = with_health(lb::<RoundRobin>(addrs, at)?, hc);
            (Selector::RoundRobin(l), s)
        }
        LoadBalancing::Random => {
            let (l, s) = with_health(lb::<Random>(addrs, at)?, hc);
            (Selector::Random(l), s)
        }
        LoadBalancing::ConsistentHash => {
            let (l, s) = with_health(lb::<Consistent>(addrs, at)?, hc);
            (Selector::Hash(l), s)
        }
    })
}

/// `a` as an `Authorization` value; the password is the first line of its file.
fn read_authorization(a: &UpstreamAuthSettings, at: &str) -> Result<String, Vec<ConfigError>> {
    let text = std::fs::read_to_string(&a.password_file).map_err(|e| {
        vec![ConfigError::new(
            format!("{at}.basic_auth.password_file"),
            format!("{}: {e}", a.password_file.display()),
        )]
    })?;
    let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if password.is_empty() {
        return Err(vec![ConfigError::new(
            format!("{at}.basic_auth.password_file"),
            format!(
                "{}: the first line (the password) is empty",
                a.password_file.display()
            ),
        )]);
    }
    Ok(basic_authorization(&a.user, password))
}

fn lb<S>(addrs: &[SocketAddr], at: &str) -> Result<LoadBalancer<S>, Vec<ConfigError>>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    LoadBalancer::try_from_iter(addrs.iter().copied())
        .map_err(|e| vec![ConfigError::new(format!("{at}.peers"), e.to_string())])
}

/// Why talking to an upstream failed, in the bounded classes operators alert on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The peer's certificate failed verification (wrong CA, name mismatch, expired).
    InvalidCert,
    /// The TLS handshake failed otherwise (e.g. the peer refused our client certificate).
    Handshake,
    /// Connect, handshake or read took too long.
    Timeout,
    /// The peer refused the TCP connection.
    Refused,
    /// No healthy peer was left to try (counted as `other`).
    Unavailable,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Classifies a Pingora error.
    pub fn classify(e: &pingora_error::Error) -> FailureKind {
        use pingora_error::ErrorType::*;
        match e.etype() {
            InvalidCert => FailureKind::InvalidCert,
            TLSHandshakeFailure | HandshakeError | TLSWantX509Lookup => FailureKind::Handshake,
            ConnectTimedout | TLSHandshakeTimedout | ReadTimedout | WriteTimedout => {
                FailureKind::Timeout
            }
            ConnectRefused => FailureKind::Refused,
            ConnectNoRoute => FailureKind::Unavailable,
            // Under TLS 1.3 the server's "certificate required" alert arrives after the
            // handshake, on our first read: it is a handshake failure all the same.
            ReadError | ConnectionClosed if is_tls_alert(e) => FailureKind::Handshake,
            _ => FailureKind::Other,
        }
    }

    /// Every value [`FailureKind::label`] returns.
    pub const LABELS: [&'static str; 5] =
        ["invalid_cert", "handshake", "timeout", "refused", "other"];

    /// The metric label (`gatehouse_upstream_errors_total{kind}`): one of [`FailureKind::LABELS`].
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::InvalidCert => "invalid_cert",
            FailureKind::Handshake => "handshake",
            FailureKind::Timeout => "timeout",
            FailureKind::Refused => "refused",
            FailureKind::Unavailable | FailureKind::Other => "other",
        }
    }

    /// The HTTP status answered to the client: 504 for timeouts, 503 when no peer is up.
    pub fn status(self) -> u16 {
        match self {
            FailureKind::Timeout => 504,
            FailureKind::Unavailable => 503,
            _ => 502,
        }
    }

    /// The short text answered to the client; names the class, never internals.
    pub fn message(self) -> String {
        match self {
            FailureKind::Unavailable => "upstream unavailable: no healthy peer".into(),
            k => format!("upstream error: {}", k.label()),
        }
    }
}

fn is_tls_alert(e: &pingora_error::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e
        .cause
        .as_deref()
        .map(|c| c as &(dyn std::error::Error + 'static));
    let mut text = e
        .context
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default();
    while let Some(c) = cause {
        text.push_str(&c.to_string());
        cause = c.source();
    }
    let t = text.to_ascii_uppercase();
    t.contains("CERTIFICATE_REQUIRED") || t.contains("TLSV1_ALERT") || t.contains("SSLV3_ALERT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_probed_peer_is_unknown_until_its_first_check() {
        let yaml = "listeners: [{ name: edge, address: '127.0.0.1:5665' }]\n\
                    upstreams: { kea: { peers: ['127.0.0.1:8000'], health_check: { kind: tcp } } }";
        let config = Config::parse(yaml, ".".as_ref()).unwrap();
        let (kea, _check_loop) = UpstreamGroup::build(&config.upstreams[0]).unwrap();
        // Until the check loop (a server background service) has run once, nothing is known.
        let peer = "127.0.0.1:8000".parse().unwrap();
        assert_eq!(kea.peer_health(), Some(vec![(peer, PeerHealth::Unknown)]));
    }
}
