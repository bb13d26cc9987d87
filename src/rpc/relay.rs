//! One relayed cluster link: set-up, then two frame pumps until either side ends.
//!
//! Set-up: the client's identity (verified CN, or anonymous) → the anonymous cap → the route
//! by SNI → the upstream identity (`cert_dir/<cn>.crt`, or the upstream's own cert for
//! anonymous clients) → a fresh upstream TLS connection (never pooled: links are long-lived).
//!
//! Pumps: each direction reads, decodes whole frames, checks them, and writes them on in one
//! write before reading again, so a slow reader on one side stalls the other instead of growing
//! memory; a direction buffers at most one read's worth (or one message up to the size limit). Frames are forwarded as received; only
//! `pki::RequestCertificate` is rewritten (the client's own certificate put into
//! `params.cert_request`, so the master signs the agent's key, not ours).

use super::codec::{self, Frame, FrameError};
use super::envelope::{self, Envelope, MessageError};
use super::policy::{Caller, Direction, Policy, Verdict};
use super::{method_index, METHOD_LABELS};
use crate::audit::Audit;
use crate::config::{Config, ConfigError, JsonRpc, MissingIdentity};
use crate::http::route::HostPattern;
use crate::logsafe::{Esc, EscOpt};
use crate::metrics::{self, ActiveGuard};
use crate::tls::{self, TlsInfo};
use crate::upstream::{FailureKind, UpstreamGroup};
use boring::x509::X509;
use bytes::BytesMut;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::{Shutdown, Stream};
use pingora_core::server::ShutdownWatch;
use pingora_core::utils::tls::CertKey;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long closing a link (TLS close_notify both ways) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Read headroom under load; a larger message reserves exactly its own size.
const READ_CHUNK: usize = 16 * 1024;
/// Read headroom of a quiet link: thousands of idle agents must not cost 16 KiB each.
const READ_IDLE: usize = 1024;

struct Limits {
    anonymous_max: usize,
    anonymous_per_ip: usize,
    anonymous_size: usize,
    cert_request_size: usize,
    size: usize,
    idle: Duration,
    anonymous_idle: Duration,
}

/// Where upstream client certificates for authenticated clients come from.
struct IdentityStore {
    dir: PathBuf,
    missing: MissingIdentity,
}

impl IdentityStore {
    /// `dir/<cn>.crt` + `.key`, read per link so rotated files take effect on the next link.
    fn load(&self, cn: &str) -> Result<Option<Arc<CertKey>>, String> {
        let safe = !cn.is_empty()
            && !cn.starts_with('.')
            && cn
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        if !safe {
            return Err(format!("CN `{}` is not usable as a file name", Esc(cn)));
        }
        let crt = self.dir.join(format!("{cn}.crt"));
        if !crt.exists() {
            return Ok(None);
        }
        let chain = tls::read_certs(&crt)?;
        let key = tls::read_key(&self.dir.join(format!("{cn}.key")))?;
        if !tls::key_matches(&chain[0], &key) {
            return Err(format!(
                "{}: key does not match the certificate",
                crt.display()
            ));
        }
        Ok(Some(Arc::new(CertKey::new(chain, key))))
    }
}

/// The relay shared by every listener that accepts `jsonrpc`.
pub struct Relay {
    routes: Vec<(HostPattern, usize)>,
    upstreams: Arc<[UpstreamGroup]>,
    identity: Option<IdentityStore>,
    limits: Limits,
    policy: Policy,
    max_violations: u32,
    anonymous: AnonLinks,
    connector: TransportConnector,
    audit: Arc<Audit>,
}

impl Relay {
    /// Builds the relay from `jsonrpc:`; `index` maps upstream names to `upstreams`.
    pub fn new(
        cfg: &Config,
        j: &JsonRpc,
        upstreams: Arc<[UpstreamGroup]>,
        index: &HashMap<String, usize>,
        audit: Arc<Audit>,
    ) -> Result<Relay, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut routes = Vec::new();
        for (i, r) in j.routes.iter().enumerate() {
            match (HostPattern::parse(&r.sni), index.get(&r.upstream)) {
                (Ok(p), Some(&u)) => routes.push((p, u)),
                (Err(m), _) => errs.push(ConfigError::new(format!("jsonrpc.routes[{i}].sni"), m)),
                (_, None) => errs.push(ConfigError::new(
                    format!("jsonrpc.routes[{i}].upstream"),
                    format!("unknown upstream `{}`", r.upstream),
                )),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let l = &j.limits;
        Ok(Relay {
            routes,
            upstreams,
            identity: j.upstream_identity.as_ref().map(|id| IdentityStore {
                dir: cfg.resolve(&id.cert_dir),
                missing: id.missing,
            }),
            limits: Limits {
                anonymous_max: l.anonymous_max_clients,
                anonymous_per_ip: l.anonymous_max_per_ip,
                anonymous_size: l.anonymous_message_size.0 as usize,
                cert_request_size: usize::try_from(l.certificate_request_size.0)
                    .unwrap_or(usize::MAX),
                size: l.message_size.0 as usize,
                idle: l.idle_timeout.get(),
                anonymous_idle: l.anonymous_idle_timeout.get(),
            },
            policy: match &j.policy {
                Some(rules) => Policy::new(rules),
                None => Policy::icinga_defaults(),
            },
            max_violations: j.max_violations,
            anonymous: AnonLinks::default(),
            connector: TransportConnector::new(None),
            audit,
        })
    }

    /// Serves one link on `down` (whose first byte was a digit) until it ends.
    pub async fn serve(&self, listener: &str, down: Stream, shutdown: &ShutdownWatch) {
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

        let _anon_slot = match cn {
            Some(_) => None,
            None => match self.anonymous.take(ip, &self.limits) {
                Ok(slot) => Some(slot),
                Err(AnonRefusal::Total) => {
                    log::warn!(target: "gatehouse::rpc", "listener {listener}: refusing {who}: {} anonymous links open (jsonrpc.limits.anonymous_max_clients)", self.limits.anonymous_max);
                    return reject(listener, down, "anonymous_max_clients").await;
                }
                Err(AnonRefusal::PerIp) => {
                    log::warn!(target: "gatehouse::rpc", "listener {listener}: refusing {who}: {} anonymous links open from {} (jsonrpc.limits.anonymous_max_per_ip)", self.limits.anonymous_per_ip, ip.map_or_else(|| "-".to_string(), |i| i.to_string()));
                    return reject(listener, down, "anonymous_max_per_ip").await;
                }
            },
        };
        let sni = info.sni.as_deref().unwrap_or("");
        let Some(&(_, up_idx)) = self.routes.iter().find(|(p, _)| p.matches(sni)) else {
            log::warn!(target: "gatehouse::rpc", "listener {listener}: refusing {who}: no jsonrpc route for SNI {}", EscOpt(Some(sni)));
            return reject(listener, down, "no_route").await;
        };
        let group = &self.upstreams[up_idx];

        let client_cert = match (cn, &self.identity) {
            (Some(cn), Some(store)) => match store.load(cn) {
                Ok(Some(ck)) => Some(ck),
                Ok(None) if store.missing == MissingIdentity::Own => None,
                Ok(None) => {
                    log::warn!(target: "gatehouse::rpc", "listener {listener}: refusing {who}: no {}.crt in jsonrpc.upstream_identity.cert_dir (missing: reject)", Esc(cn));
                    return reject(listener, down, "identity").await;
                }
                Err(e) => {
                    log::error!(target: "gatehouse::rpc", "listener {listener}: refusing {who}: upstream identity: {e}");
                    return reject(listener, down, "identity").await;
                }
            },
            _ => None,
        };
        let key = cn.unwrap_or(&addr);
        let Some(peer_addr) = group.select(key.as_bytes()) else {
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[&group.name, FailureKind::Unavailable.label()])
                .inc();
            log::warn!(target: "gatehouse::rpc", "{who}: upstream {}: no healthy peer", group.name);
            return close(down).await;
        };
        let mut peer = group.peer(peer_addr);
        if client_cert.is_some() {
            peer.client_cert_key = client_cert;
        }
        let up = match self.connector.new_stream(&peer).await {
            Ok(s) => s,
            Err(e) => {
                let kind = FailureKind::classify(&e);
                metrics::UPSTREAM_ERRORS
                    .with_label_values(&[&group.name, kind.label()])
                    .inc();
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
        let _link_gauge = ActiveGuard::gauge(metrics::RPC_LINKS.with_label_values(&[kind]));
        let link = Link {
            listener,
            addr: &addr,
            fingerprint: auth.map(|c| c.fingerprint.as_str()),
            caller: Caller {
                cn,
                uris: auth.map(|c| c.uris.as_slice()).unwrap_or(&[]),
            },
            anonymous: cn.is_none(),
            who: &who,
            client_cert: info.client.as_ref().map(|c| &c.cert),
            violations: AtomicU32::new(0),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
        };
        log::info!(target: "gatehouse::rpc", "link open: {who} sni={} → upstream {} peer {peer_addr}", EscOpt(Some(sni)), group.name);
        let started = Instant::now();

        let (mut dr, mut dw) = tokio::io::split(down);
        let (mut ur, mut uw) = tokio::io::split(up);
        let mut sd = shutdown.clone();
        let end = tokio::select! {
            e = self.pump(&link, Direction::Upstream, &mut dr, &mut uw) => e,
            e = self.pump(&link, Direction::Downstream, &mut ur, &mut dw) => e,
            _ = shutting_down(&mut sd) => LinkEnd::Shutdown,
        };
        let down = dr.unsplit(dw);
        let up = ur.unsplit(uw);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            tokio::join!(close(down), close(up));
        })
        .await;
        log::info!(
            target: "gatehouse::rpc",
            "link closed: {who} after {:.1}s, {} up / {} down messages: {end}",
            started.elapsed().as_secs_f64(),
            link.forwarded[0].load(Ordering::Relaxed),
            link.forwarded[1].load(Ordering::Relaxed),
        );
    }

    /// Moves frames from `r` to `w` until the link must end.
    async fn pump<R, W>(&self, link: &Link<'_>, dir: Direction, r: &mut R, w: &mut W) -> LinkEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let anon = link.anonymous;
        let limit = if anon && dir == Direction::Upstream {
            self.limits.anonymous_size
        } else {
            self.limits.size
        };
        let idle = if anon {
            self.limits.anonymous_idle
        } else {
            self.limits.idle
        };
        // Buffers start small and grow with the traffic (see the read below), so an idle link
        // holds about 1 KiB per direction and a busy one reads 16 KiB at a time.
        let mut buf = BytesMut::new();
        let mut busy = false;
        // Frames checked in one pass go out in one write: one TLS record and syscall per batch
        // instead of per message. At most one read's worth of frames waits here.
        let mut out = Vec::new();
        let counters = Counters::new(dir);
        // Idle = no complete message for `idle`, so trickling bytes cannot keep a link alive.
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            let mut complete = false;
            loop {
                match codec::decode(&mut buf, limit) {
                    Ok(Some(frame)) => {
                        complete = true;
                        if let Err(end) = self.check(link, dir, &frame, &mut out, &counters) {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        metrics::RPC_MESSAGES
                            .with_label_values(&[dir.label(), "other", "malformed"])
                            .inc();
                        return LinkEnd::Frame(dir, e);
                    }
                }
            }
            if complete {
                // One clock read per read, not per message.
                deadline = tokio::time::Instant::now() + idle;
            }
            if !out.is_empty() {
                let written = w.write_all(&out).await;
                // Flush before blocking on the next read: nothing may wait in a buffer.
                if let Err(e) = async {
                    written?;
                    w.flush().await
                }
                .await
                {
                    return LinkEnd::Io(dir.receiver(), format!("write: {e}"));
                }
                counters.bytes.inc_by(out.len() as u64);
                out.clear();
                if out.capacity() > 4 * READ_CHUNK {
                    out = Vec::new(); // after a large message, give the memory back
                }
            }
            if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
                buf = BytesMut::new();
            }
            // Busy (the last read filled all the room it was given, or was large): read big.
            // Quiet: stay small. A short read alone must not shrink a busy link's reads.
            let want = if busy { READ_CHUNK } else { READ_IDLE };
            if buf.capacity() - buf.len() < want / 4 {
                buf.reserve(want);
            }
            let room = buf.capacity() - buf.len();
            match tokio::time::timeout_at(deadline, r.read_buf(&mut buf)).await {
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
        out: &mut Vec<u8>,
        counters: &Counters,
    ) -> Result<(), LinkEnd> {
        let env = match envelope::parse(frame.payload()) {
            Ok(e) => e,
            Err(e) => {
                metrics::RPC_MESSAGES
                    .with_label_values(&[dir.label(), "other", "malformed"])
                    .inc();
                // Icinga's semantics: anonymous peers are dropped, known peers are forgiven.
                if link.anonymous {
                    return Err(LinkEnd::Malformed(dir, e));
                }
                log::warn!(target: "gatehouse::rpc", "{}: dropped a malformed {} message: {e}", link.who, dir.label());
                return Ok(());
            }
        };
        let method = env.method.as_deref();
        let idx = method_index(method);
        if let Verdict::Deny(rule) = self.policy.decide(&link.caller, dir, method) {
            return self.deny(
                link,
                dir,
                method.unwrap_or("-"),
                METHOD_LABELS[idx],
                &format!("jsonrpc.policy[{rule}]"),
            );
        }
        if dir == Direction::Upstream && method == Some("pki::RequestCertificate") {
            let label = METHOD_LABELS[idx];
            if frame.payload().len() > self.limits.cert_request_size {
                let why = format!(
                    "larger than {} bytes (jsonrpc.limits.certificate_request_size)",
                    self.limits.cert_request_size
                );
                return self.deny(link, dir, "pki::RequestCertificate", label, &why);
            }
            match with_cert_request(frame.payload(), &env, link.client_cert) {
                Ok(Some(rewritten)) => {
                    log::info!(target: "gatehouse::rpc", "{}: pki::RequestCertificate forwarded with the client's own certificate", link.who);
                    out.extend_from_slice(&rewritten);
                }
                Ok(None) => out.extend_from_slice(frame.raw()),
                Err(why) => return self.deny(link, dir, "pki::RequestCertificate", label, why),
            }
        } else {
            out.extend_from_slice(frame.raw());
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
        metrics::RPC_MESSAGES
            .with_label_values(&[dir.label(), label, "denied"])
            .inc();
        let n = link.violations.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rec = serde_json::Map::new();
        rec.insert("kind".into(), "jsonrpc".into());
        rec.insert("listener".into(), link.listener.into());
        rec.insert("client".into(), link.addr.into());
        rec.insert(
            "identity".into(),
            serde_json::json!({ "cn": link.caller.cn, "fingerprint": link.fingerprint }),
        );
        rec.insert("direction".into(), dir.label().into());
        rec.insert("method".into(), method.into());
        rec.insert("verdict".into(), "denied".into());
        rec.insert("reason".into(), why.into());
        self.audit.record(rec);
        log::warn!(target: "gatehouse::rpc", "{}: denied {} {} message ({why}); violation {n}/{}", link.who, Esc(method), dir.label(), self.max_violations);
        if n >= self.max_violations {
            return Err(LinkEnd::Violations(n));
        }
        Ok(())
    }
}

/// Puts the client's certificate into `params.cert_request` unless the client set a
/// non-empty one (a satellite forwarding a request does): `null`, `""` or any non-string
/// counts as not set, or the master would judge (and maybe sign) the edge's own certificate.
/// Only that field is spliced, from the envelope's offsets: the message is never parsed into
/// a tree. `Ok(None)`: forward unchanged. `Err`: must not be forwarded.
fn with_cert_request(
    payload: &[u8],
    env: &Envelope<'_>,
    client_cert: Option<&X509>,
) -> Result<Option<Vec<u8>>, &'static str> {
    let params = match &env.params {
        None => None,
        Some(span) => {
            let obj = &payload[span.clone()];
            if obj.first() != Some(&b'{') {
                return Err("certificate request params is not an object");
            }
            let members =
                envelope::members(obj).map_err(|_| "unparseable certificate request params")?;
            let set = members.iter().any(|m| {
                let v = &obj[m.value.clone()];
                m.key == "cert_request" && v.len() > 2 && v[0] == b'"'
            });
            if set {
                return Ok(None);
            }
            Some((span.clone(), obj, members))
        }
    };
    let cert =
        client_cert.ok_or("certificate request from a client that presented no certificate")?;
    let pem = cert
        .to_pem()
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or("cannot encode the client's certificate")?;
    let field = format!("\"cert_request\":{}", serde_json::Value::String(pem));
    let mut out = Vec::with_capacity(payload.len() + field.len() + 16);
    match params {
        // The method is a member, so the object is not empty: a comma goes first.
        None => {
            out.extend_from_slice(&payload[..env.close]);
            out.extend_from_slice(b",\"params\":{");
            out.extend_from_slice(field.as_bytes());
            out.push(b'}');
            out.extend_from_slice(&payload[env.close..]);
        }
        Some((span, obj, members)) => {
            out.extend_from_slice(&payload[..span.start]);
            out.push(b'{');
            for m in members.iter().filter(|m| m.key != "cert_request") {
                out.extend_from_slice(&obj[m.span.clone()]);
                out.push(b',');
            }
            out.extend_from_slice(field.as_bytes());
            out.push(b'}');
            out.extend_from_slice(&payload[span.end..]);
        }
    }
    Ok(Some(codec::encode(&out)))
}

/// The hot-path metric children of one direction, resolved once per link (a labelled lookup
/// hashes and locks; an `IntCounter` is one atomic add).
struct Counters {
    forwarded: Vec<IntCounter>,
    bytes: IntCounter,
}

impl Counters {
    fn new(dir: Direction) -> Counters {
        Counters {
            forwarded: METHOD_LABELS
                .iter()
                .map(|m| metrics::RPC_MESSAGES.with_label_values(&[dir.label(), m, "forwarded"]))
                .collect(),
            bytes: metrics::RPC_BYTES.with_label_values(&[dir.label()]),
        }
    }
}

/// Per-link state shared by the two pumps.
struct Link<'a> {
    listener: &'a str,
    addr: &'a str,
    fingerprint: Option<&'a str>,
    caller: Caller<'a>,
    anonymous: bool,
    who: &'a str,
    /// Encoded only when a certificate request needs it: thousands of idle links would
    /// otherwise each hold a PEM copy of a certificate the TLS session already keeps.
    client_cert: Option<&'a X509>,
    violations: AtomicU32,
    forwarded: [AtomicU64; 2],
}

/// Why a link ended (logged when it closes).
enum LinkEnd {
    Closed(Direction),
    Idle(Direction, Duration),
    Frame(Direction, FrameError),
    Malformed(Direction, MessageError),
    Violations(u32),
    /// An I/O error on the named side (`client` or `upstream`).
    Io(&'static str, String),
    Shutdown,
}

impl Direction {
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
            LinkEnd::Violations(n) => write!(f, "{n} policy violations (jsonrpc.max_violations)"),
            LinkEnd::Io(side, e) => write!(f, "{side} side: {e}"),
            LinkEnd::Shutdown => f.write_str("shutting down"),
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

async fn reject(listener: &str, down: Stream, reason: &str) {
    metrics::CONNECTIONS
        .with_label_values(&[listener, "rejected"])
        .inc();
    metrics::RPC_LINKS_REFUSED
        .with_label_values(&[reason])
        .inc();
    close(down).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(req: &[u8], cert: Option<&X509>) -> Result<Option<Vec<u8>>, &'static str> {
        let env = envelope::parse(req).unwrap();
        with_cert_request(req, &env, cert)
    }

    fn payload_of(framed: &[u8]) -> serde_json::Value {
        let mut b = BytesMut::from(framed);
        let f = codec::decode(&mut b, 1 << 20).unwrap().unwrap();
        serde_json::from_slice(f.payload()).unwrap()
    }

    #[test]
    fn cert_request_rewrite() {
        let agent = crate::pki::self_signed(&crate::pki::CertSpec::new("agent1")).unwrap();
        let pem = String::from_utf8(agent.cert_pem()).unwrap();
        let cert = Some(&agent.cert);
        let req = br#"{"jsonrpc":"2.0","method":"pki::RequestCertificate","params":{"ticket":"abc"},"id":"1"}"#;
        let v = payload_of(&rewrite(req, cert).unwrap().unwrap());
        assert_eq!(v["params"]["cert_request"], pem.as_str());
        assert_eq!(v["params"]["ticket"], "abc");
        assert_eq!(v["id"], "1");
        // A client-set cert_request is left alone.
        let own = br#"{"method":"pki::RequestCertificate","params":{"cert_request":"X"}}"#;
        assert_eq!(rewrite(own, cert), Ok(None));
        // null, "" or a non-string count as absent, and the result has one cert_request.
        for unset in [
            &br#"{"method":"pki::RequestCertificate","params":{"cert_request":null,"ticket":"t"}}"#[..],
            br#"{"method":"pki::RequestCertificate","params":{"ticket":"t", "cert_request" : ""}}"#,
            br#"{"method":"pki::RequestCertificate","params":{"cert_\u0072equest":5,"ticket":"t"}}"#,
        ] {
            let out = rewrite(unset, cert).unwrap().unwrap();
            let text = String::from_utf8_lossy(&out);
            assert_eq!(text.matches("cert_").count(), 1, "{text}");
            let v = payload_of(&out);
            assert_eq!(v["params"]["cert_request"], pem.as_str());
            assert_eq!(v["params"]["ticket"], "t");
        }
        // No params, or empty params: added.
        for bare in [
            &br#"{"method":"pki::RequestCertificate"}"#[..],
            br#"{"method":"pki::RequestCertificate","params":{}}"#,
        ] {
            let v = payload_of(&rewrite(bare, cert).unwrap().unwrap());
            assert_eq!(v["params"]["cert_request"], pem.as_str());
        }
        // No client certificate: refused rather than letting the master judge ours.
        assert!(rewrite(req, None).is_err());
        let null = br#"{"method":"pki::RequestCertificate","params":{"cert_request":null}}"#;
        assert!(rewrite(null, None).is_err());
        // params that are not an object cannot carry a certificate.
        let odd = br#"{"method":"pki::RequestCertificate","params":[1]}"#;
        assert!(rewrite(odd, cert).is_err());
    }

    fn limits(max: usize, per_ip: usize) -> Limits {
        Limits {
            anonymous_max: max,
            anonymous_per_ip: per_ip,
            anonymous_size: 0,
            cert_request_size: 0,
            size: 0,
            idle: Duration::ZERO,
            anonymous_idle: Duration::ZERO,
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
