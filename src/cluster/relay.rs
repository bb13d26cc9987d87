//! One relayed cluster link: set-up, then two frame pumps until either side ends.
//!
//! Set-up: the client's identity (verified CN, or anonymous) → the anonymous caps → the route
//! by SNI → the upstream identity ([`IdentityMapper`]: `cert_dir/<cn>.crt` by default, or the
//! upstream's own cert for anonymous clients) → a fresh upstream TLS connection (never
//! pooled: links are long-lived).
//!
//! Pumps: each direction reads, decodes whole frames, runs each through the filter chain
//! ([`super::filter`]: the method policy, the `cert_request` rewrite, then added filters), and
//! writes what passes on in one write before reading again, so a slow reader on one side
//! stalls the other instead of growing memory; a direction buffers at most one read's worth
//! (or one message up to the size limit). Frames are forwarded as received unless a filter
//! rewrote them; answers a filter gives at the edge go back through the other pump.

use super::codec::{self, Frame, FrameError};
use super::envelope::{self, MessageError};
use super::filter::{Action, CertRequest, Chain, LinkInfo, Message, MethodPolicy, RpcFilter};
use super::identity::{CertDir, IdentityMapper, Mapped, OwnIdentity};
use super::policy::{Direction, Policy};
use super::{method_index, METHOD_LABELS};
use crate::audit::{AuditEvent, AuditSink, Caller, ClusterEvent, LinkEvent, Verdict};
use crate::authz::{Guarded, Identity, Question, Target};
use crate::config::{ClusterRouteSettings, ClusterSettings, LogFormat, Toward};
use crate::identity::TlsInfo;
use crate::logsafe::{Esc, EscOpt, EscText};
use crate::metrics::{ActiveGuard, Metrics};
use crate::upstream::{FailureKind, UpstreamGroup};
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::{Shutdown, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_core::utils::tls::CertKey;
use prometheus::IntCounter;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// How long closing a link (TLS close_notify both ways) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Read headroom under load; a larger message reserves exactly its own size.
const READ_CHUNK: usize = 16 * 1024;
/// Read headroom of a quiet link: thousands of idle agents must not cost 16 KiB each. A quiet
/// Icinga link carries `event::Heartbeat` and `log::SetLogPosition` (~150–250 bytes).
const READ_IDLE: usize = 256;

struct Limits {
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

    /// Counts, audits and logs a link refused before any upstream connection (one log line
    /// per reason per 10 s: a client can repeat a refusal at will); the caller closes it.
    fn refused(&self, party: &Party<'_>, reason: Refusal, detail: std::fmt::Arguments<'_>) {
        let listener = party.listener;
        let who = party.who;
        self.metrics
            .connections
            .with_label_values(&[listener, "rejected"])
            .inc();
        self.metrics
            .cluster_links_refused
            .with_label_values(&[reason.label()])
            .inc();
        self.audit
            .record(&party.event(Verdict::Refused, format!("{}: {detail}", reason.label())));
        if let Some(more) = self.refusal_log[reason as usize].admit_note() {
            log::warn!(target: "gatehouse::cluster", "listener {listener}: refusing {who}: {detail}{more}");
        }
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

    /// Serves one link on `down` (whose first byte was a digit) until it ends.
    pub async fn serve(&self, listener: &str, mut down: Stream, shutdown: &ShutdownWatch) {
        let info = down
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
        let auth = info.authenticated();
        let cn = auth.and_then(|c| c.cn.as_deref());
        let who = match cn {
            Some(cn) => format!("{}@{addr}", Esc(cn)),
            None => format!("anonymous@{addr}"),
        };
        let sni = info.sni.as_deref().unwrap_or("");
        let party = Party {
            listener,
            who: &who,
            client: &addr,
            cn,
            fingerprint: auth.map(|c| c.fingerprint.as_str()),
            sni,
        };

        let _anon_slot = match cn {
            Some(_) => None,
            None => match self.anonymous.take(ip, &self.limits) {
                Ok(slot) => Some(slot),
                Err(AnonRefusal::Total) => {
                    let max = self.limits.anonymous_max;
                    self.refused(
                        &party,
                        Refusal::AnonymousMaxClients,
                        format_args!(
                            "{max} anonymous links open (cluster.limits.anonymous_max_clients)"
                        ),
                    );
                    return close(down).await;
                }
                Err(AnonRefusal::PerIp) => {
                    let (max, from) = (
                        self.limits.anonymous_per_ip,
                        ip.map_or_else(|| "-".to_string(), |i| i.to_string()),
                    );
                    self.refused(&party, Refusal::AnonymousMaxPerIp, format_args!("{max} anonymous links open from {from} (cluster.limits.anonymous_max_per_ip)"));
                    return close(down).await;
                }
            },
        };
        let Some((route_index, route)) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.sni.matches(sni))
        else {
            self.refused(
                &party,
                Refusal::NoRoute,
                format_args!("no cluster route for SNI {}", EscOpt(Some(sni))),
            );
            return close(down).await;
        };
        // A child route is a parent speaking down: only an identity may use it (the policy's
        // anonymous rule guards the way up, and nothing would guard the way down).
        if route.toward == Toward::Child && cn.is_none() {
            self.refused(&party, Refusal::AnonymousChild, format_args!("the route for SNI {} leads to a child (toward: child), which takes authenticated parents only", EscOpt(Some(sni))));
            return close(down).await;
        }
        let group = &self.upstreams[route.upstream];

        let info = LinkInfo {
            listener,
            // Icinga's rule: a certificate without a CN is no endpoint, so anonymous.
            identity: Identity::from_cert(auth.filter(|c| c.cn.is_some())),
            client_cert: info.client.as_ref().map(|c| &c.cert),
            sni,
            peer: &addr,
            toward: route.toward,
            upstream_cert: None,
        };
        let link_q = Question {
            listener,
            identity: info.identity,
            target: Target::Link {
                sni,
                upstream: &group.name,
            },
        };
        let recheck = match &self.authorizer {
            None => None,
            Some(a) => {
                let d = a.decide(&link_q).await;
                if !d.allow {
                    self.refused(
                        &party,
                        Refusal::Authorizer,
                        format_args!("authorizer {}: {}", a.name(), EscText(&d.reason)),
                    );
                    return close(down).await;
                }
                d.ttl.map(|ttl| (a, ttl))
            }
        };
        let client_cert = match self.identity.upstream_identity(&info).await {
            Mapped::Present(c) => Some(c),
            Mapped::Own => None,
            Mapped::Anonymous => Some(self.anonymous_cert.clone()),
            Mapped::Refuse(why) => {
                self.refused(&party, Refusal::Identity, format_args!("{}", EscText(&why)));
                return close(down).await;
            }
        };
        // Amplification: the master is dialled only for a client that sent one whole, valid
        // message (Icinga's client speaks first: icinga::Hello), not for every connection
        // that opens with a digit.
        let first = match self.first_message(&mut down, cn.is_none()).await {
            Ok(f) => f,
            Err(why) => {
                self.refused(
                    &party,
                    Refusal::NoValidFirstMessage,
                    format_args!("{why}; nothing was sent upstream"),
                );
                return close(down).await;
            }
        };
        let key = cn.unwrap_or(&addr);
        let Some(peer_addr) = group.select(key.as_bytes()) else {
            self.metrics
                .upstream_error(&group.name, FailureKind::Unavailable.label());
            log::warn!(target: "gatehouse::cluster", "{who}: upstream {}: no healthy peer", group.name);
            return close(down).await;
        };
        let mut peer = group.peer(peer_addr);
        if client_cert.is_some() {
            peer.client_cert_key = client_cert;
        }
        // Boxed: the connect future (TCP + TLS handshake state) is large, and inline it would
        // size every link's task for the whole life of the link.
        let up = match Box::pin(self.connector.new_stream(&peer)).await {
            Ok(s) => s,
            Err(e) => {
                let kind = FailureKind::classify(&e);
                self.metrics.upstream_error(&group.name, kind.label());
                log::warn!(target: "gatehouse::upstream", "upstream {} peer {peer_addr}: connect for {who} failed ({}): {e}", group.name, kind.label());
                // Closing makes the agent retry (every 10 s), possibly via a healthier peer.
                return close(down).await;
            }
        };

        let kind = if cn.is_some() {
            "authenticated"
        } else {
            "anonymous"
        };
        let _link_gauge = ActiveGuard::gauge(self.metrics.cluster_links.with_label_values(&[kind]));
        // Icinga keeps every connection an endpoint makes; a second one for the same CN is
        // almost always an agent reconnecting past a link that died silently, so the newest
        // link wins and the oldest beyond the limit is closed.
        // Per identity *and* route: a master dialling two agents, or an agent dialling both
        // masters of its zone by name (one route each), holds one link to each; varying the
        // SNI within one wildcard route opens no more.
        let slot = cn.map(|cn| {
            self.live
                .open(&format!("{cn}\0{route_index}"), self.limits.per_identity)
        });
        if let Some(s) = &slot {
            if s.replaced > 0 {
                self.metrics.cluster_links_replaced.inc_by(s.replaced);
                log::info!(target: "gatehouse::cluster", "{who}: closing {} older link(s) of the same identity on this route (cluster.limits.max_links_per_identity: {})", s.replaced, self.limits.per_identity);
            }
        }
        // The upstream's own certificate: what an agent behind a child route asks to renew.
        let upstream_cert = up.get_ssl().and_then(|s| s.peer_certificate());
        let info = LinkInfo {
            upstream_cert: upstream_cert.as_ref(),
            ..info
        };
        let link = Link {
            info,
            fingerprint: auth.map(|c| c.fingerprint.as_str()),
            who: &who,
            violations: AtomicU32::new(0),
            log: crate::logging::Sampler::new(Duration::from_secs(10)),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            answers: Default::default(),
        };
        let line = LinkLine {
            event: "link_open",
            listener,
            client: Some(addr.as_str()).filter(|a| *a != "-"),
            cn,
            sni: Some(sni).filter(|s| !s.is_empty()),
            upstream: &group.name,
            peer: peer_addr,
            closed: None,
        };
        if self.log_format == LogFormat::Json {
            line.log();
        } else {
            log::info!(target: "gatehouse::cluster", "link open: {who} sni={} → upstream {} peer {peer_addr}", EscOpt(Some(sni)), group.name);
        }
        let started = Instant::now();

        let (mut dr, mut dw) = tokio::io::split(down);
        let (mut ur, mut uw) = tokio::io::split(up);
        let mut sd = shutdown.clone();
        let end = tokio::select! {
            e = self.pump(&link, Direction::Upstream, first, &mut dr, &mut uw) => e,
            e = self.pump(&link, Direction::Downstream, BytesMut::new(), &mut ur, &mut dw) => e,
            e = revoked(recheck, &link_q) => e,
            _ = lifetime(cn.is_none().then_some(self.limits.anonymous_lifetime)) => {
                LinkEnd::Lifetime(self.limits.anonymous_lifetime)
            }
            _ = replaced(slot.as_ref()) => LinkEnd::Replaced,
            _ = shutting_down(&mut sd) => LinkEnd::Shutdown,
        };
        let down = dr.unsplit(dw);
        let up = ur.unsplit(uw);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            tokio::join!(close(down), close(up));
        })
        .await;
        let (up_n, down_n) = (
            link.forwarded[0].load(Ordering::Relaxed),
            link.forwarded[1].load(Ordering::Relaxed),
        );
        // A master that hangs up at once, having said no more than its icinga::Hello, did not
        // take the identity, which is not a network failure: Icinga ≥ 2.15 sends its Hello,
        // then drops a verified certificate whose CN names no Endpoint, and the agent would
        // retry every 10 s with nothing in its log.
        let upstream_hung_up = matches!(end, LinkEnd::Closed(Direction::Downstream))
            || matches!(end, LinkEnd::Io("upstream", _));
        let end = if upstream_hung_up && down_n <= 1 && started.elapsed() < NOT_TAKEN_WITHIN {
            LinkEnd::NotTaken(cn.map(str::to_string))
        } else {
            end
        };
        self.metrics
            .cluster_links_closed
            .with_label_values(&[end.kind()])
            .inc();
        if matches!(end, LinkEnd::Replaced) {
            self.audit.record(&party.event(
                Verdict::Replaced,
                format!(
                    "a newer link of the same identity on this route (cluster.limits.max_links_per_identity: {})",
                    self.limits.per_identity
                ),
            ));
        }
        if self.log_format == LogFormat::Json {
            LinkLine {
                event: "link_closed",
                closed: Some(Closed {
                    duration_s: started.elapsed().as_secs_f64(),
                    messages_up: up_n,
                    messages_down: down_n,
                    end: end.kind(),
                    reason: end.to_string(),
                }),
                ..line
            }
            .log();
        } else {
            log::info!(
                target: "gatehouse::cluster",
                "link closed: {who} after {:.1}s, {up_n} up / {down_n} down messages: {end}",
                started.elapsed().as_secs_f64(),
            );
        }
    }

    /// Moves frames from `r` to `w` until the link must end.
    /// Reads until the client's first message is whole and a JSON-RPC object, within the
    /// link's idle limit and size limit; returns every byte read (that message first), for the
    /// upstream pump to check and send like any other. The error says why there is none.
    async fn first_message(&self, down: &mut Stream, anonymous: bool) -> Result<BytesMut, String> {
        let (limit, idle) = if anonymous {
            (self.limits.anonymous_size, self.limits.anonymous_idle)
        } else {
            (self.limits.size, self.limits.idle)
        };
        let deadline = tokio::time::Instant::now() + idle;
        let mut buf = BytesMut::with_capacity(READ_IDLE);
        loop {
            match codec::decode(&mut buf, limit) {
                Ok(Some(frame)) => {
                    if let Err(e) = envelope::parse(frame.payload()) {
                        self.metrics
                            .cluster_messages
                            .with_label_values(&["upstream", "other", "malformed"])
                            .inc();
                        return Err(if anonymous {
                            format!("malformed message from the anonymous client: {e}")
                        } else {
                            format!("malformed first message from the client: {e}")
                        });
                    }
                    let mut all = BytesMut::with_capacity(frame.raw().len() + buf.len());
                    all.extend_from_slice(frame.raw());
                    all.extend_from_slice(&buf);
                    return Ok(all);
                }
                Ok(None) => {}
                Err(e) => {
                    let verdict = match e {
                        FrameError::TooLarge { .. } => "too_large",
                        _ => "malformed",
                    };
                    self.metrics
                        .cluster_messages
                        .with_label_values(&["upstream", "other", verdict])
                        .inc();
                    return Err(format!("framing error from the client: {e}"));
                }
            }
            if buf.capacity() - buf.len() < READ_IDLE / 4 {
                buf.reserve(READ_CHUNK);
            }
            match tokio::time::timeout_at(deadline, down.read_buf(&mut buf)).await {
                Err(_) => {
                    return Err(format!(
                        "no message from the client for {}s",
                        idle.as_secs_f64()
                    ))
                }
                Ok(Ok(0)) => {
                    return Err("client closed the connection before its first message".into())
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("read: {e}")),
            }
        }
    }

    async fn pump<R, W>(
        &self,
        link: &Link<'_>,
        dir: Direction,
        initial: BytesMut,
        r: &mut R,
        w: &mut W,
    ) -> LinkEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let anon = link.anonymous();
        // Icinga's limits by hierarchy: what comes from a child is capped, what comes from
        // the parent is not (beyond the netstring's 9 digits).
        let from_parent = match link.info.toward {
            Toward::Parent => dir == Direction::Downstream,
            Toward::Child => dir == Direction::Upstream,
        };
        let limit = if anon && dir == Direction::Upstream {
            self.limits.anonymous_size
        } else if from_parent {
            self.limits.parent_size
        } else {
            self.limits.size
        };
        let idle = if anon {
            self.limits.anonymous_idle
        } else {
            self.limits.idle
        };
        // Buffers start small and grow with the traffic (see the read below), so an idle link
        // holds a few hundred bytes per direction and a busy one reads 16 KiB at a time. A
        // link that read one larger message keeps its 16 KiB until its next small read (an
        // Icinga link's next heartbeat), then gives it back.
        let mut buf = initial;
        let mut busy = false;
        // At most one read's worth of frames waits here.
        let mut out = Outbox::default();
        let counters = Counters::new(&self.metrics, dir);
        // Only added filters can answer at the edge; without them the read is awaited alone.
        let answering = self.filters.has_added();
        // Idle = no complete message for `idle`, so trickling bytes cannot keep a link alive.
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            let mut complete = false;
            // What ends the link in this read: the frames checked before it still go out.
            let mut ending = None;
            while ending.is_none() {
                match codec::decode(&mut buf, limit) {
                    Ok(Some(frame)) => {
                        complete = true;
                        if let Err(end) = self.check(link, dir, &frame, &mut out, &counters) {
                            ending = Some(end);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // Oversize apart from broken framing: one is a limit to raise, the
                        // other a broken or hostile peer.
                        let verdict = match e {
                            FrameError::TooLarge { .. } => "too_large",
                            _ => "malformed",
                        };
                        self.metrics
                            .cluster_messages
                            .with_label_values(&[dir.label(), "other", verdict])
                            .inc();
                        ending = Some(LinkEnd::Frame(dir, e));
                    }
                }
            }
            if let Some(end) = ending {
                if !out.is_empty() {
                    // Best effort, bounded like the close itself: the receiver may be what
                    // stalls, and the link ends for `end` either way.
                    let written =
                        tokio::time::timeout(CLOSE_TIMEOUT, out.write_to(w, CLOSE_TIMEOUT)).await;
                    if matches!(written, Ok(Ok(()))) {
                        counters.bytes.inc_by(out.len() as u64);
                    }
                }
                return end;
            }
            if out.held.is_some() && buf.is_empty() {
                // The held message is the only owner of its allocation now: it is freed
                // when written, not kept as this buffer's room.
                buf = BytesMut::new();
            }
            if complete {
                // One clock read per read, not per message.
                deadline = tokio::time::Instant::now() + idle;
            }
            if answering {
                link.take_answers(dir, &mut out.batch);
            }
            if !out.is_empty() {
                // Flush before blocking on the next read: nothing may wait in a buffer. A
                // receiver that takes nothing for the idle limit ends the link: a master that
                // keeps sending but never reads would otherwise hold it, the agent's messages
                // stalled unseen.
                match out.write_to(w, idle).await {
                    Ok(()) => {}
                    Err(None) => return LinkEnd::Stalled(dir, idle),
                    Err(Some(e)) => {
                        return LinkEnd::Io(dir.receiver(), format!("write: {e}"));
                    }
                }
                counters.bytes.inc_by(out.len() as u64);
                out.sent(busy);
            }
            // A link that went quiet gives its busy-sized buffer back: after a config sync or
            // a burst of check results, thousands of idle links must not keep 16 KiB each.
            if buf.is_empty() && buf.capacity() > if busy { 4 * READ_CHUNK } else { READ_IDLE } {
                buf = BytesMut::new();
            }
            // Busy (the last read filled all the room it was given, or was large): read big.
            // Quiet: stay small. A short read alone must not shrink a busy link's reads.
            let want = if busy { READ_CHUNK } else { READ_IDLE };
            let free = buf.capacity() - buf.len();
            // A large message part-read already has room for exactly its rest (the codec
            // reserved it): growing more would double its buffer, a second copy's worth.
            if free == 0 || (free < want / 4 && buf.len() < READ_CHUNK) {
                buf.reserve(want);
            }
            let room = buf.capacity() - buf.len();
            let read = tokio::time::timeout_at(deadline, r.read_buf(&mut buf));
            let read = if answering {
                // Filters may answer the other side's messages through this writer.
                tokio::select! {
                    r = read => r,
                    _ = link.answers[dir as usize].ready.notified() => continue,
                }
            } else {
                read.await
            };
            match read {
                Err(_) => return LinkEnd::Idle(dir, idle),
                Ok(Ok(0)) => return LinkEnd::Closed(dir),
                Ok(Ok(n)) => busy = n == room || n >= READ_IDLE,
                Ok(Err(e)) => return LinkEnd::Io(dir.sender(), format!("read: {e}")),
            }
        }
    }

    /// Checks one frame and appends it (possibly rewritten) to `out`, or drops it.
    fn check(
        &self,
        link: &Link<'_>,
        dir: Direction,
        frame: &Frame,
        out: &mut Outbox,
        counters: &Counters,
    ) -> Result<(), LinkEnd> {
        let env = match envelope::parse(frame.payload()) {
            Ok(e) => e,
            Err(e) => {
                self.metrics
                    .cluster_messages
                    .with_label_values(&[dir.label(), "other", "malformed"])
                    .inc();
                // Anonymous peers are dropped (Icinga's rule). A known peer's malformed message
                // is dropped and, from the client, counts as a violation: forgiven without
                // end, 50,000 of them were 50,000 log lines and the link stayed.
                if link.anonymous() {
                    return Err(LinkEnd::Malformed(dir, e));
                }
                let n = if dir == Direction::Upstream {
                    link.violations.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    0
                };
                if let Some(more) = link.log.admit_note() {
                    log::warn!(target: "gatehouse::cluster", "{}: dropped a malformed {} message: {e}; violation {n}/{}{more}", link.who, dir.label(), self.max_violations);
                }
                if dir == Direction::Upstream && n >= self.max_violations {
                    return Err(LinkEnd::Violations(n));
                }
                return Ok(());
            }
        };
        let method = env.method.as_deref();
        let idx = method_index(method);
        let msg = Message::new(dir, frame.payload(), &env);
        let outcome = self.filters.run(&link.info, &msg);
        match outcome.action {
            Action::Forward => out.forward(frame.raw()),
            Action::Rewrite(p) => {
                log::debug!(target: "gatehouse::cluster", "{}: {} {} message rewritten by {}", link.who, Esc(method.unwrap_or("reply")), dir.label(), outcome.by);
                out.batch.extend_from_slice(&codec::encode(&p));
            }
            Action::Deny(why) => {
                return self.deny(link, dir, method.unwrap_or("-"), METHOD_LABELS[idx], &why);
            }
            Action::Drop => {
                self.metrics
                    .cluster_messages
                    .with_label_values(&[dir.label(), METHOD_LABELS[idx], "dropped"])
                    .inc();
                return Ok(());
            }
            Action::Answer(p) => {
                self.metrics
                    .cluster_messages
                    .with_label_values(&[dir.label(), METHOD_LABELS[idx], "answered"])
                    .inc();
                link.answer(dir, &p);
                return Ok(());
            }
            Action::Close(why) => {
                return Err(LinkEnd::Filter(outcome.by.to_string(), why.into_owned()))
            }
        }
        counters.forwarded[idx].inc();
        link.forwarded[dir as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn deny(
        &self,
        link: &Link<'_>,
        dir: Direction,
        method: &str,
        label: &str,
        why: &str,
    ) -> Result<(), LinkEnd> {
        self.metrics
            .cluster_messages
            .with_label_values(&[dir.label(), label, "denied"])
            .inc();
        let n = link.violations.fetch_add(1, Ordering::Relaxed) + 1;
        self.audit.record(&AuditEvent::Cluster(ClusterEvent {
            listener: link.info.listener.to_string(),
            client: link.info.peer.to_string(),
            identity: Caller {
                cn: link.info.identity.cn().map(str::to_string),
                fingerprint: link.fingerprint.map(str::to_string),
                user: None,
            },
            direction: dir.label(),
            sni: link.info.sni.to_string(),
            toward: match link.info.toward {
                Toward::Parent => "parent",
                Toward::Child => "child",
            },
            method: method.to_string(),
            verdict: Verdict::Denied,
            reason: why.to_string(),
        }));
        log::warn!(target: "gatehouse::cluster", "{}: denied {} {} message ({}); violation {n}/{}", link.who, Esc(method), dir.label(), EscText(why), self.max_violations);
        if n >= self.max_violations {
            return Err(LinkEnd::Violations(n));
        }
        Ok(())
    }
}

/// The hot-path metric children of one direction, resolved once per link (a labelled lookup
/// hashes and locks; an `IntCounter` is one atomic add).
struct Counters {
    forwarded: Vec<IntCounter>,
    bytes: IntCounter,
}

impl Counters {
    fn new(m: &Metrics, dir: Direction) -> Counters {
        Counters {
            forwarded: METHOD_LABELS
                .iter()
                .map(|l| {
                    m.cluster_messages
                        .with_label_values(&[dir.label(), l, "forwarded"])
                })
                .collect(),
            bytes: m.cluster_bytes.with_label_values(&[dir.label()]),
        }
    }
}

/// Per-link state shared by the two pumps.
struct Link<'a> {
    /// What filters see. The client certificate is encoded only when a certificate request
    /// needs it: thousands of idle links would otherwise each hold a PEM copy of a
    /// certificate the TLS session already keeps.
    info: LinkInfo<'a>,
    fingerprint: Option<&'a str>,
    who: &'a str,
    violations: AtomicU32,
    /// One line per 10 s for what the peer can repeat at will (malformed messages).
    log: crate::logging::Sampler,
    forwarded: [AtomicU64; 2],
    /// Framed answers from filters, by the direction whose writer sends them (an answer to
    /// the client goes out with the downstream pump), and the wake-up of that pump.
    answers: [Answers; 2],
}

#[derive(Default)]
struct Answers {
    frames: Mutex<Vec<u8>>,
    ready: tokio::sync::Notify,
}

impl Link<'_> {
    fn anonymous(&self) -> bool {
        self.info.identity.cert().is_none()
    }

    /// Queues `payload` (framed) back to the sender of messages travelling in `dir`.
    fn answer(&self, dir: Direction, payload: &[u8]) {
        let to = &self.answers[dir.reverse() as usize];
        to.frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(&codec::encode(payload));
        to.ready.notify_one();
    }

    /// Moves queued answers for the writer of `dir` into `out`.
    fn take_answers(&self, dir: Direction, out: &mut Vec<u8>) {
        let mut q = self.answers[dir as usize]
            .frames
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        out.append(&mut q);
    }
}

/// An upstream that closes a link this soon after it opened, having sent at most its Hello,
/// did not take the identity ([`LinkEnd::NotTaken`]).
const NOT_TAKEN_WITHIN: Duration = Duration::from_secs(10);

/// The CN of the self-signed certificate anonymous clients present upstream: the name the
/// master logs for them ("client certificate not signed by CA").
pub const ANONYMOUS_CN: &str = "gatehouse-anonymous";

/// Who a link is, as its refusal or replacement is recorded.
struct Party<'a> {
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
            },
            sni: self.sni.to_string(),
            verdict,
            reason,
        })
    }
}

/// Why a link was refused before any upstream connection (`cluster_links_refused{reason}`).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    AnonymousMaxClients,
    AnonymousMaxPerIp,
    NoRoute,
    AnonymousChild,
    Authorizer,
    Identity,
    NoValidFirstMessage,
}

/// Every `reason` of `gatehouse_cluster_links_refused_total`, in [`Refusal`]'s order.
pub(crate) const REFUSAL_LABELS: [&str; Refusal::COUNT] = [
    "anonymous_max_clients",
    "anonymous_max_per_ip",
    "no_route",
    "anonymous_child",
    "authorizer",
    "identity",
    "no_valid_first_message",
];

/// Every `end` of `gatehouse_cluster_links_closed_total` ([`LinkEnd::kind`]).
pub(crate) const LINK_END_LABELS: [&str; 13] = [
    "closed",
    "idle",
    "framing",
    "malformed",
    "violations",
    "filter",
    "revoked",
    "io",
    "shutdown",
    "replaced",
    "lifetime",
    "stalled",
    "not_taken",
];

impl Refusal {
    const COUNT: usize = 7;

    fn label(self) -> &'static str {
        REFUSAL_LABELS[self as usize]
    }
}

/// Why a link ended (logged when it closes).
enum LinkEnd {
    Closed(Direction),
    Idle(Direction, Duration),
    Frame(Direction, FrameError),
    Malformed(Direction, MessageError),
    Violations(u32),
    /// A filter closed the link: its name and reason.
    Filter(String, String),
    /// The authorizer withdrew its permission: its name and reason.
    Revoked(String, String),
    /// An I/O error on the named side (`client` or `upstream`).
    Io(&'static str, String),
    Shutdown,
    /// A newer link of the same identity took its place.
    Replaced,
    /// An anonymous link reached `anonymous_max_lifetime`.
    Lifetime(Duration),
    /// The receiver of this direction took nothing for the idle limit.
    Stalled(Direction, Duration),
    /// The upstream closed the link at once, having sent at most its Hello: it did not take
    /// the identity presented for this CN (`None`: anonymous).
    NotTaken(Option<String>),
}

impl Direction {
    /// The other way.
    fn reverse(self) -> Direction {
        match self {
            Direction::Upstream => Direction::Downstream,
            Direction::Downstream => Direction::Upstream,
        }
    }

    /// The side messages in this direction come from.
    fn sender(self) -> &'static str {
        match self {
            Direction::Upstream => "client",
            Direction::Downstream => "upstream",
        }
    }

    /// The side messages in this direction go to.
    fn receiver(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "client",
        }
    }
}

impl LinkEnd {
    /// A word for the way the link ended (`end` in JSON lines).
    fn kind(&self) -> &'static str {
        match self {
            LinkEnd::Closed(_) => "closed",
            LinkEnd::Idle(..) => "idle",
            LinkEnd::Frame(..) => "framing",
            LinkEnd::Malformed(..) => "malformed",
            LinkEnd::Violations(_) => "violations",
            LinkEnd::Filter(..) => "filter",
            LinkEnd::Revoked(..) => "revoked",
            LinkEnd::Io(..) => "io",
            LinkEnd::Shutdown => "shutdown",
            LinkEnd::Replaced => "replaced",
            LinkEnd::Lifetime(_) => "lifetime",
            LinkEnd::Stalled(..) => "stalled",
            LinkEnd::NotTaken(_) => "not_taken",
        }
    }
}

/// A link open or close line in `log_format: json`: the text line's fields, typed; the
/// client's `who` split into `cn` (`null` when anonymous) and `client` (its address).
#[derive(serde::Serialize)]
struct LinkLine<'a> {
    event: &'static str,
    listener: &'a str,
    client: Option<&'a str>,
    cn: Option<&'a str>,
    sni: Option<&'a str>,
    upstream: &'a str,
    peer: std::net::SocketAddr,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    closed: Option<Closed>,
}

/// What a close line adds.
#[derive(serde::Serialize)]
struct Closed {
    #[serde(serialize_with = "crate::audit::three_decimals")]
    duration_s: f64,
    messages_up: u64,
    messages_down: u64,
    end: &'static str,
    reason: String,
}

impl LinkLine<'_> {
    fn log(&self) {
        crate::logging::info_json("gatehouse::cluster", "a link line", self);
    }
}

impl fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkEnd::Closed(d) => write!(f, "{} closed the connection", d.sender()),
            LinkEnd::Idle(d, t) => write!(
                f,
                "no message from the {} for {}s",
                d.sender(),
                t.as_secs_f64()
            ),
            LinkEnd::Frame(d, e) => write!(f, "framing error from the {}: {e}", d.sender()),
            LinkEnd::Malformed(d, e) => {
                write!(
                    f,
                    "malformed message from the anonymous {}: {e}",
                    d.sender()
                )
            }
            LinkEnd::Violations(n) => write!(f, "{n} policy violations (cluster.max_violations)"),
            LinkEnd::Filter(by, why) => write!(f, "closed by filter {by}: {}", EscText(why)),
            LinkEnd::Revoked(by, why) => write!(f, "revoked by authorizer {by}: {}", EscText(why)),
            LinkEnd::Io(side, e) => write!(f, "{side} side: {e}"),
            LinkEnd::Shutdown => f.write_str("shutting down"),
            LinkEnd::Stalled(d, t) => write!(
                f,
                "the {} took nothing for {}s ({} messages stalled; cluster.limits.idle_timeout)",
                d.receiver(),
                t.as_secs_f64(),
                d.label()
            ),
            LinkEnd::Lifetime(t) => write!(
                f,
                "an anonymous link open for {}s (cluster.limits.anonymous_max_lifetime)",
                t.as_secs_f64()
            ),
            LinkEnd::Replaced => f.write_str(
                "replaced by a newer link of the same identity (cluster.limits.max_links_per_identity)",
            ),
            LinkEnd::NotTaken(Some(cn)) => write!(
                f,
                "the upstream closed the link at once, having sent at most its Hello: it did not take the identity '{}' (Icinga 2.15 and later drop a certificate whose CN has no Endpoint object on the master; check the Endpoint and the certificate in cluster.upstream_identity.cert_dir)",
                Esc(cn)
            ),
            LinkEnd::NotTaken(None) => f.write_str(
                "the upstream closed the link at once, having sent at most its Hello: it did not take the anonymous client",
            ),
        }
    }
}

/// Open anonymous links, in total and per client IP (entries leave the map at zero, so it
/// holds at most `anonymous_max_clients` addresses).
#[derive(Default)]
struct AnonLinks(Mutex<AnonCount>);

#[derive(Default)]
struct AnonCount {
    total: usize,
    per_ip: HashMap<Option<IpAddr>, usize>,
}

enum AnonRefusal {
    Total,
    PerIp,
}

impl AnonLinks {
    fn take(&self, ip: Option<IpAddr>, l: &Limits) -> Result<AnonSlot<'_>, AnonRefusal> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= l.anonymous_max {
            return Err(AnonRefusal::Total);
        }
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= l.anonymous_per_ip {
            return Err(AnonRefusal::PerIp);
        }
        c.per_ip.insert(ip, from_ip + 1);
        c.total += 1;
        Ok(AnonSlot { links: self, ip })
    }
}

/// One anonymous link's place in [`AnonLinks`]; released on drop.
struct AnonSlot<'a> {
    links: &'a AnonLinks,
    ip: Option<IpAddr>,
}

impl Drop for AnonSlot<'_> {
    fn drop(&mut self) {
        let mut c = self.links.0.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A live link's id and the signal that closes it.
type LiveLink = (u64, Arc<Notify>);

/// Open authenticated links per (CN, route), oldest first, for `max_links_per_identity`.
#[derive(Default)]
struct LiveLinks {
    by_cn: Mutex<HashMap<String, VecDeque<LiveLink>>>,
    next: AtomicU64,
}

impl LiveLinks {
    /// Registers a link of `cn`; the oldest ones beyond `max` are told to close.
    fn open(&self, cn: &str, max: usize) -> LiveSlot<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let mut m = self.by_cn.lock().unwrap_or_else(|p| p.into_inner());
        let links = m.entry(cn.to_string()).or_default();
        links.push_back((id, close.clone()));
        let mut replaced = 0;
        while links.len() > max.max(1) {
            if let Some((_, old)) = links.pop_front() {
                // A stored permit: the old link sees it even if it is not waiting yet.
                old.notify_one();
                replaced += 1;
            }
        }
        LiveSlot {
            links: self,
            cn: cn.to_string(),
            id,
            close,
            replaced,
        }
    }
}

/// One authenticated link's place in [`LiveLinks`]; released on drop.
struct LiveSlot<'a> {
    links: &'a LiveLinks,
    cn: String,
    id: u64,
    close: Arc<Notify>,
    /// How many older links this one displaced.
    replaced: u64,
}

impl Drop for LiveSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.links.by_cn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(links) = m.get_mut(&self.cn) {
            links.retain(|(id, _)| *id != self.id);
            if links.is_empty() {
                m.remove(&self.cn);
            }
        }
    }
}

/// Resolves when a newer link of the same identity displaced this one (never for anonymous
/// links, which have no slot).
/// Writes all of `buf` and flushes; `Err(None)` when a write or the flush made no progress for
/// `stall` (the receiver takes nothing), `Err(Some(e))` on an I/O error.
async fn write_with_progress<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut buf: &[u8],
    stall: Duration,
) -> Result<(), Option<std::io::Error>> {
    while !buf.is_empty() {
        let write = w.write(buf);
        tokio::pin!(write);
        // A write that goes through at once (the common case) arms no timer.
        let n = match poll_once(write.as_mut()).await {
            Some(r) => r,
            None => match tokio::time::timeout(stall, write).await {
                Err(_) => return Err(None),
                Ok(r) => r,
            },
        };
        match n {
            Ok(0) => return Err(Some(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => buf = &buf[n..],
            Err(e) => return Err(Some(e)),
        }
    }
    let flush = w.flush();
    tokio::pin!(flush);
    let r = match poll_once(flush.as_mut()).await {
        Some(r) => r,
        None => match tokio::time::timeout(stall, flush).await {
            Err(_) => return Err(None),
            Ok(r) => r,
        },
    };
    r.map_err(Some)
}

/// `f` polled once: its output if it is ready now, else `None` (its waker stays registered,
/// so awaiting it afterwards loses nothing).
async fn poll_once<F: std::future::Future>(mut f: std::pin::Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// What one pass of a pump sends on. Frames checked in one pass go out in one write (one TLS
/// record and syscall per batch instead of per message); a large forwarded message is sent
/// from the read buffer itself rather than copied into the batch, so a direction whose
/// receiver blocks holds that message once, not twice.
#[derive(Default)]
struct Outbox {
    /// A large message forwarded as read (it goes first: it was the first of its pass).
    held: Option<Bytes>,
    batch: Vec<u8>,
}

impl Outbox {
    /// Appends a frame forwarded unchanged.
    fn forward(&mut self, raw: &Bytes) {
        if self.held.is_none() && self.batch.is_empty() && raw.len() >= READ_CHUNK {
            self.held = Some(raw.clone());
        } else {
            self.batch.extend_from_slice(raw);
        }
    }

    fn is_empty(&self) -> bool {
        self.held.is_none() && self.batch.is_empty()
    }

    fn len(&self) -> usize {
        self.held.as_ref().map_or(0, Bytes::len) + self.batch.len()
    }

    /// Writes everything, in order; see [`write_with_progress`].
    async fn write_to<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        stall: Duration,
    ) -> Result<(), Option<std::io::Error>> {
        if let Some(h) = &self.held {
            write_with_progress(w, h, stall).await?;
        }
        if !self.batch.is_empty() {
            write_with_progress(w, &self.batch, stall).await?;
        }
        Ok(())
    }

    /// Empties it; the batch keeps its room only while the link is busy and it is small.
    fn sent(&mut self, busy: bool) {
        self.held = None;
        self.batch.clear();
        if !busy || self.batch.capacity() > 4 * READ_CHUNK {
            self.batch = Vec::new(); // a quiet link (or one after a large message) holds none
        }
    }
}

/// Resolves after `limit` (never without one).
async fn lifetime(limit: Option<Duration>) {
    match limit {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

async fn replaced(slot: Option<&LiveSlot<'_>>) {
    match slot {
        Some(s) => s.close.notified().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the added authorizer, asked again each time its decision's TTL runs out,
/// no longer allows the link (never, without an authorizer or a TTL).
async fn revoked(recheck: Option<(&Arc<Guarded>, Duration)>, q: &Question<'_>) -> LinkEnd {
    let Some((a, mut ttl)) = recheck else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(ttl).await;
        let d = a.recheck(q).await;
        if !d.allow {
            return LinkEnd::Revoked(a.name().to_string(), d.reason.into_owned());
        }
        // A decision without a TTL holds for the rest of the link.
        match d.ttl {
            Some(t) => ttl = t,
            None => return std::future::pending().await,
        }
    }
}

/// Resolves when the server starts shutting down (or the watch is gone).
async fn shutting_down(sd: &mut ShutdownWatch) {
    while !*sd.borrow() {
        if sd.changed().await.is_err() {
            return;
        }
    }
}

/// Sends TLS close_notify (a plain drop sends none) and drops the stream.
pub(crate) async fn close(mut s: Stream) {
    Shutdown::shutdown(&mut *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_end_is_listed_once() {
        let d = Direction::Upstream;
        let t = Duration::from_secs(1);
        let ends = [
            LinkEnd::Closed(d),
            LinkEnd::Idle(d, t),
            LinkEnd::Frame(d, FrameError::EmptyLength),
            LinkEnd::Malformed(d, MessageError::NotObject),
            LinkEnd::Violations(1),
            LinkEnd::Filter(String::new(), String::new()),
            LinkEnd::Revoked(String::new(), String::new()),
            LinkEnd::Io("upstream", String::new()),
            LinkEnd::Shutdown,
            LinkEnd::Replaced,
            LinkEnd::Lifetime(t),
            LinkEnd::Stalled(d, t),
            LinkEnd::NotTaken(None),
        ];
        let kinds: Vec<&str> = ends.iter().map(LinkEnd::kind).collect();
        assert_eq!(kinds, LINK_END_LABELS);
    }

    fn limits(max: usize, per_ip: usize) -> Limits {
        Limits {
            per_identity: 1,
            anonymous_max: max,
            anonymous_per_ip: per_ip,
            anonymous_size: 0,
            size: 0,
            parent_size: 0,
            idle: Duration::ZERO,
            anonymous_idle: Duration::ZERO,
            anonymous_lifetime: Duration::ZERO,
        }
    }

    #[test]
    fn anonymous_slots() {
        let links = AnonLinks::default();
        let l = limits(3, 2);
        let (a, b) = (
            Some(IpAddr::from([10, 0, 0, 1])),
            Some(IpAddr::from([10, 0, 0, 2])),
        );
        let a1 = links.take(a, &l).ok().unwrap();
        let _a2 = links.take(a, &l).ok().unwrap();
        assert!(matches!(links.take(a, &l), Err(AnonRefusal::PerIp)));
        let _b1 = links.take(b, &l).ok().unwrap();
        assert!(matches!(links.take(b, &l), Err(AnonRefusal::Total)));
        drop(a1);
        assert!(links.take(a, &l).is_ok());
        let c = links.0.lock().unwrap();
        assert_eq!(
            (c.total, c.per_ip.len()),
            (2, 2),
            "released slots leave the map"
        );
    }
}
