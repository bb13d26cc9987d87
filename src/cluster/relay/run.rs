//! A link once admitted: the upstream connection, the two pumps and everything else that can
//! end the link (the authorizer's recheck, the anonymous lifetime, a newer link of the same
//! identity, shutdown), then the close and its record.

use super::admit::Admitted;
use super::links::LiveSlot;
use super::log::{Closed, LinkEnd, LinkLine};
use super::pump::Link;
use super::{close, Client, Party, Relay, CLOSE_TIMEOUT};
use crate::audit::Verdict;
use crate::authz::{Guarded, Question};
use crate::cluster::filter::LinkInfo;
use crate::cluster::policy::Direction;
use crate::config::LogFormat;
use crate::logsafe::EscOpt;
use crate::metrics::ActiveGuard;
use crate::upstream::FailureKind;
use bytes::BytesMut;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An upstream that closes a link this soon after it opened, having sent at most its Hello,
/// did not take the identity ([`LinkEnd::NotTaken`]).
pub(super) const NOT_TAKEN_WITHIN: Duration = Duration::from_secs(10);

impl Relay {
    /// A fresh upstream TLS connection for an admitted link (never pooled: links are
    /// long-lived), to the peer its identity hashes to; `None` (logged) when there is none.
    pub(super) async fn connect(
        &self,
        client: &Client,
        admitted: &Admitted<'_>,
    ) -> Option<(Stream, SocketAddr)> {
        let group = &self.upstreams[admitted.route.upstream];
        let key = client.cn().unwrap_or(&client.addr);
        let who = &client.who;
        let Some(peer_addr) = group.select(key.as_bytes()) else {
            self.metrics
                .upstream_error(&group.name, FailureKind::Unavailable.label());
            log::warn!(target: "gatehouse::cluster", "{who}: upstream {}: no healthy peer", group.name);
            return None;
        };
        // Boxed: the connect future (TCP + TLS handshake state) is large, and inline it would
        // size every link's task for the whole life of the link.
        let cert = admitted.client_cert.clone();
        match Box::pin(group.connect_link(&self.connector, peer_addr, cert)).await {
            Ok((s, resumed)) => {
                let session = if resumed { "resumed" } else { "full" };
                self.metrics
                    .cluster_upstream_handshakes
                    .with_label_values(&[&group.name, session])
                    .inc();
                Some((s, peer_addr))
            }
            Err(e) => {
                let kind = FailureKind::classify(&e);
                self.metrics.upstream_error(&group.name, kind.label());
                log::warn!(target: "gatehouse::upstream", "upstream {} peer {peer_addr}: connect for {who} failed ({}): {e}", group.name, kind.label());
                // Closing makes the agent retry (every 10 s), possibly via a healthier peer.
                None
            }
        }
    }

    /// Runs a connected link until it ends, then closes both sides and writes its end.
    pub(super) async fn run(
        &self,
        party: &Party<'_>,
        admitted: Admitted<'_>,
        down: Stream,
        up: Stream,
        peer: SocketAddr,
        shutdown: &ShutdownWatch,
    ) {
        let cn = party.cn;
        let kind = if cn.is_some() {
            "authenticated"
        } else {
            "anonymous"
        };
        let _link_gauge = ActiveGuard::gauge(self.metrics.cluster_links.with_label_values(&[kind]));
        let slot = self.live_slot(party, admitted.route_index);
        // The upstream's own certificate: what an agent behind a child route asks to renew.
        let upstream_cert = up.get_ssl().and_then(|s| s.peer_certificate());
        let link = Link {
            info: LinkInfo {
                upstream_cert: upstream_cert.as_ref(),
                ..admitted.info
            },
            fingerprint: party.fingerprint,
            who: party.who,
            violations: AtomicU32::new(0),
            log: crate::logging::Sampler::new(Duration::from_secs(10)),
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            answers: Default::default(),
        };
        let group = &self.upstreams[admitted.route.upstream];
        let line = LinkLine {
            event: "link_open",
            listener: party.listener,
            client: Some(party.client).filter(|a| *a != "-"),
            cn,
            sni: Some(party.sni).filter(|s| !s.is_empty()),
            upstream: &group.name,
            peer,
            closed: None,
        };
        if self.log_format == LogFormat::Json {
            line.log();
        } else {
            log::info!(target: "gatehouse::cluster", "link open: {} sni={} → upstream {} peer {peer}", party.who, EscOpt(Some(party.sni)), group.name);
        }
        let started = Instant::now();
        let (mut dr, mut dw) = tokio::io::split(down);
        let (mut ur, mut uw) = tokio::io::split(up);
        let mut sd = shutdown.clone();
        let end = tokio::select! {
            e = self.pump(&link, Direction::Upstream, admitted.first, &mut dr, &mut uw) => e,
            e = self.pump(&link, Direction::Downstream, BytesMut::new(), &mut ur, &mut dw) => e,
            e = revoked(admitted.recheck, &admitted.question) => e,
            _ = lifetime(cn.is_none().then_some(self.limits.anonymous_lifetime)) => {
                LinkEnd::Lifetime(self.limits.anonymous_lifetime)
            }
            _ = replaced(slot.as_ref()) => LinkEnd::Replaced,
            _ = shutting_down(&mut sd) => LinkEnd::Shutdown,
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            tokio::join!(close(dr.unsplit(dw)), close(ur.unsplit(uw)));
        })
        .await;
        self.finish(party, &link, line, end, started);
    }

    /// The link's place among its identity's links on this route; older ones beyond
    /// `max_links_per_identity` are told to close.
    pub(super) fn live_slot(&self, party: &Party<'_>, route_index: usize) -> Option<LiveSlot<'_>> {
        // Icinga keeps every connection an endpoint makes; a second one for the same CN is
        // almost always an agent reconnecting past a link that died silently, so the newest
        // link wins and the oldest beyond the limit is closed.
        // Per identity *and* route: a master dialling two agents, or an agent dialling both
        // masters of its zone by name (one route each), holds one link to each; varying the
        // SNI within one wildcard route opens no more.
        let slot = party.cn.map(|cn| {
            self.live
                .open(&format!("{cn}\0{route_index}"), self.limits.per_identity)
        });
        if let Some(s) = &slot {
            if s.replaced > 0 {
                self.metrics.cluster_links_replaced.inc_by(s.replaced);
                log::info!(target: "gatehouse::cluster", "{}: closing {} older link(s) of the same identity on this route (cluster.limits.max_links_per_identity: {})", party.who, s.replaced, self.limits.per_identity);
            }
        }
        slot
    }

    /// Counts, audits (a replaced link) and logs how a link ended.
    pub(super) fn finish(
        &self,
        party: &Party<'_>,
        link: &Link<'_>,
        line: LinkLine<'_>,
        end: LinkEnd,
        started: Instant,
    ) {
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
            LinkEnd::NotTaken(party.cn.map(str::to_string))
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
                "link closed: {} after {:.1}s, {up_n} up / {down_n} down messages: {end}",
                party.who,
                started.elapsed().as_secs_f64(),
            );
        }
    }
}

/// Resolves after `limit` (never without one).
pub(super) async fn lifetime(limit: Option<Duration>) {
    match limit {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// Resolves when a newer link of the same identity displaced this one (never for anonymous
/// links, which have no slot).
pub(super) async fn replaced(slot: Option<&LiveSlot<'_>>) {
    match slot {
        Some(s) => s.close.notified().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the added authorizer, asked again each time its decision's TTL runs out,
/// no longer allows the link (never, without an authorizer or a TTL).
pub(super) async fn revoked(
    recheck: Option<(&Arc<Guarded>, Duration)>,
    q: &Question<'_>,
) -> LinkEnd {
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
pub(super) async fn shutting_down(sd: &mut ShutdownWatch) {
    while !*sd.borrow() {
        if sd.changed().await.is_err() {
            return;
        }
    }
}
