//! Admission: every check a link passes before the master is dialled, cheapest first; a
//! refusal is counted, audited and logged (one line per reason per 10 s) here.

use super::links::{AnonRefusal, AnonSlot};
use super::log::Refusal;
use super::{Client, Party, Relay, READ_CHUNK, READ_IDLE};
use crate::audit::Verdict;
use crate::authz::{Guarded, Identity, Question, Target};
use crate::cluster::codec;
use crate::cluster::envelope;
use crate::cluster::filter::LinkInfo;
use crate::cluster::identity::Mapped;
use crate::cluster::policy::Direction;
use crate::config::{ClusterRouteSettings, Toward};
use crate::logsafe::{EscOpt, EscText};
use bytes::BytesMut;
use pingora_core::protocols::Stream;
use pingora_core::utils::tls::CertKey;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A link let in: what running it needs, all decided before any upstream connection.
pub(super) struct Admitted<'a> {
    /// Index of its cluster route (links are counted per identity *and* route).
    pub(super) route_index: usize,
    pub(super) route: &'a ClusterRouteSettings,
    /// What filters see (the upstream's certificate is added once connected).
    pub(super) info: LinkInfo<'a>,
    /// What the authorizer was asked, asked again when its decision's TTL runs out.
    pub(super) question: Question<'a>,
    pub(super) recheck: Option<(&'a Arc<Guarded>, Duration)>,
    /// The certificate presented upstream (`None`: the upstream's own).
    pub(super) client_cert: Option<Arc<CertKey>>,
    /// Every byte read so far, the valid first message first.
    pub(super) first: BytesMut,
    /// An anonymous link's place under the anonymous caps, held for the link's life.
    pub(super) _anonymous: Option<AnonSlot<'a>>,
}

impl Relay {
    /// Admits a link, or refuses it (counted, audited, logged; the caller closes it). The
    /// checks run cheapest first, and the master is dialled only after all of them.
    pub(super) async fn admit<'a>(
        &'a self,
        client: &'a Client,
        party: &Party<'a>,
        down: &mut Stream,
    ) -> Option<Admitted<'a>> {
        let cn = client.cn();
        let anonymous = match cn {
            Some(_) => None,
            None => Some(self.anonymous_slot(client, party)?),
        };
        let (route_index, route) = self.route_of(client, party)?;
        let auth = client.tls.authenticated();
        let info = LinkInfo {
            listener: party.listener,
            // Icinga's rule: a certificate without a CN is no endpoint, so anonymous.
            identity: Identity::from_cert(auth.filter(|c| c.cn.is_some())),
            client_cert: client.tls.client.as_ref().map(|c| &c.cert),
            sni: client.sni(),
            peer: &client.addr,
            toward: route.toward,
            upstream_cert: None,
        };
        let question = Question {
            listener: party.listener,
            identity: info.identity,
            target: Target::Link {
                sni: client.sni(),
                upstream: &self.upstreams[route.upstream].name,
            },
        };
        let recheck = self.ask_authorizer(&question, party).await?;
        let client_cert = self.upstream_identity(&info, party).await?;
        // Amplification: the master is dialled only for a client that sent one whole, valid
        // message (Icinga's client speaks first: icinga::Hello), not for every connection
        // that opens with a digit.
        let first = match self.first_message(down, cn.is_none()).await {
            Ok(f) => f,
            Err(why) => {
                let detail = format_args!("{why}; nothing was sent upstream");
                self.refused(party, Refusal::NoValidFirstMessage, detail);
                return None;
            }
        };
        Some(Admitted {
            route_index,
            route,
            info,
            question,
            recheck,
            client_cert,
            first,
            _anonymous: anonymous,
        })
    }

    /// An anonymous link's place under `anonymous_max_clients` and `anonymous_max_per_ip`.
    pub(super) fn anonymous_slot(
        &self,
        client: &Client,
        party: &Party<'_>,
    ) -> Option<AnonSlot<'_>> {
        let l = &self.limits;
        match self
            .anonymous
            .take(client.ip, l.anonymous_max, l.anonymous_per_ip)
        {
            Ok(slot) => Some(slot),
            Err(AnonRefusal::Total) => {
                let max = self.limits.anonymous_max;
                self.refused(
                    party,
                    Refusal::AnonymousMaxClients,
                    format_args!(
                        "{max} anonymous links open (cluster.limits.anonymous_max_clients)"
                    ),
                );
                None
            }
            Err(AnonRefusal::PerIp) => {
                let (max, from) = (
                    self.limits.anonymous_per_ip,
                    client.ip.map_or_else(|| "-".to_string(), |i| i.to_string()),
                );
                self.refused(party, Refusal::AnonymousMaxPerIp, format_args!("{max} anonymous links open from {from} (cluster.limits.anonymous_max_per_ip)"));
                None
            }
        }
    }

    /// The cluster route for the client's SNI.
    pub(super) fn route_of(
        &self,
        client: &Client,
        party: &Party<'_>,
    ) -> Option<(usize, &ClusterRouteSettings)> {
        let sni = client.sni();
        let Some((index, route)) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.sni.matches(sni))
        else {
            let detail = format_args!("no cluster route for SNI {}", EscOpt(Some(sni)));
            self.refused(party, Refusal::NoRoute, detail);
            return None;
        };
        // A child route is a parent speaking down: only an identity may use it (the policy's
        // anonymous rule guards the way up, and nothing would guard the way down).
        if route.toward == Toward::Child && client.cn().is_none() {
            self.refused(party, Refusal::AnonymousChild, format_args!("the route for SNI {} leads to a child (toward: child), which takes authenticated parents only", EscOpt(Some(sni))));
            return None;
        }
        Some((index, route))
    }

    /// The added authorizer's decision on the link: `None` refused, else how to recheck it.
    pub(super) async fn ask_authorizer(
        &self,
        question: &Question<'_>,
        party: &Party<'_>,
    ) -> Option<Option<(&Arc<Guarded>, Duration)>> {
        let Some(a) = &self.authorizer else {
            return Some(None);
        };
        let d = a.decide(question).await;
        if !d.allow {
            let detail = format_args!("authorizer {}: {}", a.name(), EscText(&d.reason));
            self.refused(party, Refusal::Authorizer, detail);
            return None;
        }
        Some(d.ttl.map(|ttl| (a, ttl)))
    }

    /// The certificate the link presents upstream (`Some(None)`: the upstream's own).
    pub(super) async fn upstream_identity(
        &self,
        info: &LinkInfo<'_>,
        party: &Party<'_>,
    ) -> Option<Option<Arc<CertKey>>> {
        match self.identity.upstream_identity(info).await {
            Mapped::Present(c) => Some(Some(c)),
            Mapped::Own => Some(None),
            Mapped::Anonymous => Some(Some(self.anonymous_cert.clone())),
            Mapped::Refuse(why) => {
                self.refused(party, Refusal::Identity, format_args!("{}", EscText(&why)));
                None
            }
        }
    }

    /// Counts, audits and logs a link refused before any upstream connection (one log line
    /// per reason per 10 s: a client can repeat a refusal at will); the caller closes it.
    pub(super) fn refused(
        &self,
        party: &Party<'_>,
        reason: Refusal,
        detail: std::fmt::Arguments<'_>,
    ) {
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

    /// Reads until the client's first message is whole and a JSON-RPC object, within the
    /// link's idle limit and size limit; returns every byte read (that message first), for the
    /// upstream pump to check and send like any other. The error says why there is none.
    pub(super) async fn first_message(
        &self,
        down: &mut Stream,
        anonymous: bool,
    ) -> Result<BytesMut, String> {
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
                    self.count_frame_error(Direction::Upstream, &e);
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
}
