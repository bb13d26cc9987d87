//! One relayed cluster link: admitted, connected, run until either side ends.
//!
//! Admission (`admit`): the client's identity (verified CN, or anonymous) → the anonymous
//! caps → the route by SNI → the authorizer → the upstream identity ([`IdentityMapper`]:
//! `cert_dir/<cn>.crt` by default, or a throwaway certificate for anonymous clients) → one
//! whole, valid first message. Only then a fresh upstream TLS connection (`run`, never
//! pooled: links are long-lived), and the link runs until either side ends.
//!
//! Pumps (`pump`): each direction reads, decodes whole frames, runs each through the filter
//! chain ([`super::filter`]: the method policy, the `cert_request` rewrite, then added
//! filters), and writes what passes on in one write before reading again, so a slow reader
//! on one side stalls the other instead of growing memory; a direction buffers at most one
//! read's worth (or one message up to the size limit). Frames are forwarded as received
//! unless a filter rewrote them; answers a filter gives at the edge go back through the
//! other pump.
//!
//! Bookkeeping of open links (anonymous caps, links per identity) is in `links`; how a
//! link's refusal, opening and end are written, in `log`.

mod admit;
mod links;
mod log;
mod pump;
mod run;

pub(crate) use log::{LINK_END_LABELS, REFUSAL_LABELS};

use super::filter::{CertRequest, Chain, MethodPolicy, RpcFilter};
use super::identity::{CertDir, IdentityMapper, OwnIdentity};
use super::policy::Policy;
use crate::audit::{AuditEvent, AuditSink, Caller, LinkEvent, Verdict};
use crate::authz::Guarded;
use crate::config::{ClusterRouteSettings, ClusterSettings, LogFormat};
use crate::identity::TlsInfo;
use crate::logsafe::Esc;
use crate::metrics::Metrics;
use crate::upstream::UpstreamGroup;
use links::{AnonLinks, LiveLinks};
use log::Refusal;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::{Shutdown, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_core::utils::tls::CertKey;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long closing a link (TLS close_notify both ways) may take.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Read headroom under load; a larger message reserves exactly its own size.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Read headroom of a quiet link: thousands of idle agents must not cost 16 KiB each. A quiet
/// Icinga link carries `event::Heartbeat` and `log::SetLogPosition` (~150–250 bytes).
pub(super) const READ_IDLE: usize = 256;

pub(super) struct Limits {
    per_identity: usize,
    anonymous_max: usize,
    anonymous_per_ip: usize,
    anonymous_size: usize,
    /// From the child side of a link.
    size: usize,
    /// From the parent side.
    parent_size: usize,
    idle: Duration,
    anonymous_idle: Duration,
    anonymous_lifetime: Duration,
}

/// The relay shared by every listener that accepts `cluster`.
pub struct Relay {
    routes: Vec<ClusterRouteSettings>,
    upstreams: Arc<[UpstreamGroup]>,
    identity: Box<dyn IdentityMapper>,
    authorizer: Option<Arc<Guarded>>,
    metrics: Arc<Metrics>,
    limits: Limits,
    filters: Chain,
    max_violations: u32,
    anonymous: AnonLinks,
    live: LiveLinks,
    connector: TransportConnector,
    audit: Arc<dyn AuditSink>,
    /// How link open and close lines are written.
    log_format: LogFormat,
    /// One refusal line per reason per 10 s.
    refusal_log: [crate::logging::Sampler; Refusal::COUNT],
    /// What anonymous clients present upstream ([`Mapped::Anonymous`]): self-signed, made at
    /// start.
    anonymous_cert: Arc<CertKey>,
}

impl Relay {
    /// Builds the relay from `cluster:`; its routes index `upstreams`.
    pub fn new(
        j: &ClusterSettings,
        upstreams: Arc<[UpstreamGroup]>,
        audit: Arc<dyn AuditSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Relay, boring::error::ErrorStack> {
        let l = &j.limits;
        let anonymous = crate::pki::self_signed(&crate::pki::CertSpec::new(ANONYMOUS_CN))?;
        let anonymous_cert = Arc::new(CertKey::new(vec![anonymous.cert], anonymous.key));
        Ok(Relay {
            routes: j.routes.clone(),
            upstreams,
            identity: match &j.upstream_identity {
                Some(id) => Box::new(CertDir::new(id.cert_dir.clone(), id.missing)),
                None => Box::new(OwnIdentity),
            },
            authorizer: None,
            metrics,
            limits: Limits {
                per_identity: l.max_links_per_identity,
                anonymous_max: l.anonymous_max_clients,
                anonymous_per_ip: l.anonymous_max_per_ip,
                anonymous_size: l.anonymous_message_size,
                size: l.message_size,
                parent_size: l.parent_message_size,
                idle: l.idle_timeout,
                anonymous_idle: l.anonymous_idle_timeout,
                anonymous_lifetime: l.anonymous_max_lifetime,
            },
            filters: Chain::new(
                MethodPolicy::new(Policy::new(&j.policy)),
                CertRequest::new(l.certificate_request_size),
            ),
            max_violations: j.max_violations,
            anonymous: AnonLinks::default(),
            live: LiveLinks::default(),
            connector: TransportConnector::new(None),
            audit,
            log_format: LogFormat::Text,
            refusal_log: std::array::from_fn(|_| {
                crate::logging::Sampler::new(Duration::from_secs(10))
            }),
            anonymous_cert,
        })
    }

    /// Writes link open and close lines in `format` (`log_format`; text by default).
    pub fn set_log_format(&mut self, format: LogFormat) {
        self.log_format = format;
    }

    /// Replaces the upstream identity mapping (`cluster.upstream_identity` by default).
    pub fn set_identity_mapper(&mut self, m: Box<dyn IdentityMapper>) {
        self.identity = m;
    }

    /// Asks `a` about every link (after routing), and again whenever its decision expires.
    pub fn set_authorizer(&mut self, a: Arc<Guarded>) {
        self.authorizer = Some(a);
    }

    /// Sends audit events to `sink`.
    pub fn set_audit_sink(&mut self, sink: Arc<dyn AuditSink>) {
        self.audit = sink;
    }

    /// Adds a cluster message filter after the built-in ones.
    pub fn add_filter(&mut self, f: Box<dyn RpcFilter>) {
        self.filters.add(f);
    }

    /// Serves one link on `down` (whose first byte was a digit) until it ends: admitted
    /// (identity, caps, route, authorizer, upstream identity, a valid first message), then
    /// connected upstream, then run until either side ends.
    pub async fn serve(&self, listener: &str, mut down: Stream, shutdown: &ShutdownWatch) {
        let client = Client::of(&down);
        let party = client.party(listener);
        let Some(admitted) = self.admit(&client, &party, &mut down).await else {
            return close(down).await;
        };
        let Some((up, peer)) = self.connect(&client, &admitted).await else {
            return close(down).await;
        };
        self.run(&party, admitted, down, up, peer, shutdown).await;
    }
}

/// The CN of the self-signed certificate anonymous clients present upstream: the name the
/// master logs for them ("client certificate not signed by CA").
pub const ANONYMOUS_CN: &str = "gatehouse-anonymous";

/// Who is on the other end of a link, read once from its TLS session and socket.
pub(super) struct Client {
    tls: TlsInfo,
    /// The peer address, `-` when there is none.
    addr: String,
    ip: Option<IpAddr>,
    /// `cn@address` or `anonymous@address`, for log lines.
    who: String,
}

impl Client {
    fn of(down: &Stream) -> Client {
        let tls = down
            .get_ssl_digest()
            .and_then(|d| d.extension.get::<TlsInfo>().cloned())
            .or_else(|| down.get_ssl().map(TlsInfo::from_ssl))
            .unwrap_or(TlsInfo {
                sni: None,
                client: None,
            });
        let peer = down
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let addr = peer
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let ip = peer.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
        let who = match tls.authenticated().and_then(|c| c.cn.as_deref()) {
            Some(cn) => format!("{}@{addr}", Esc(cn)),
            None => format!("anonymous@{addr}"),
        };
        Client { tls, addr, ip, who }
    }

    /// The verified CN; `None`: anonymous.
    fn cn(&self) -> Option<&str> {
        self.tls.authenticated().and_then(|c| c.cn.as_deref())
    }

    /// The SNI the client sent (empty when none).
    fn sni(&self) -> &str {
        self.tls.sni.as_deref().unwrap_or("")
    }

    fn party<'a>(&'a self, listener: &'a str) -> Party<'a> {
        Party {
            listener,
            who: &self.who,
            client: &self.addr,
            cn: self.cn(),
            fingerprint: self.tls.authenticated().map(|c| c.fingerprint.as_str()),
            sni: self.sni(),
        }
    }
}

/// Who a link is, as its refusal or replacement is recorded.
pub(super) struct Party<'a> {
    listener: &'a str,
    /// `cn@address` or `anonymous@address`, for log lines.
    who: &'a str,
    client: &'a str,
    cn: Option<&'a str>,
    fingerprint: Option<&'a str>,
    sni: &'a str,
}

impl Party<'_> {
    fn event(&self, verdict: Verdict, reason: String) -> AuditEvent {
        AuditEvent::Link(LinkEvent {
            listener: self.listener.to_string(),
            client: self.client.to_string(),
            identity: Caller {
                cn: self.cn.map(str::to_string),
                fingerprint: self.fingerprint.map(str::to_string),
                user: None,
                ..Caller::default()
            },
            sni: self.sni.to_string(),
            verdict,
            reason,
        })
    }
}

/// Sends TLS close_notify (a plain drop sends none) and drops the stream.
pub(crate) async fn close(mut s: Stream) {
    Shutdown::shutdown(&mut *s).await;
}
