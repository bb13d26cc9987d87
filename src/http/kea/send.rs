//! Where an allowed command goes: the route's target picks the peers (one balanced peer,
//! every peer with `fan_out: all`, one group per `service`, UNIX sockets); a single HTTP peer
//! streams ([`super::stream`]), several are sent and merged by [`super::dispatch`], and on a
//! `kea.services` route a command with no `service` is answered by the agent itself.

use super::dispatch::{self, Dispatch, Endpoint, Reply, Target, TargetError};
use super::flow::{KeaFlow, Record};
use super::{self as kea, agent, KeaPolicy};
use crate::audit::PeerResult;
use crate::config::KeaTarget;
use crate::http::ctx::{balance_key, RequestCtx};
use crate::http::filter::Phases;
use crate::http::forward;
use crate::http::route::Route;
use crate::logsafe::EscText;
use crate::upstream::FailureKind;
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

impl KeaFlow<'_> {
    /// Sends an allowed command where the route's target says and answers the client.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        policy: &KeaPolicy,
        cmd: &kea::Command,
        body: Bytes,
        rec: &mut Record<'_>,
    ) -> Result<()> {
        let (targets, body) = match &policy.target {
            KeaTarget::Services(map) if cmd.services.is_empty() => {
                let answer = self.agent_answer(session, cmd, map);
                return self.answer_held(session, ctx, cmd, rec, answer, None).await;
            }
            target => self.targets_of(session, ctx, route, target, cmd, body)?,
        };
        // One HTTP peer: its answer streams through, whatever its size.
        if let [Target {
            endpoint: Ok(Endpoint::Tcp(addr)),
            group,
            ..
        }] = targets.as_slice()
        {
            let (addr, group) = (*addr, *group);
            let req = targets.into_iter().next().and_then(|t| t.request);
            return self
                .forward_one(session, ctx, cmd, policy, group, addr, req, body, rec)
                .await;
        }
        if let [Target {
            endpoint: Err(TargetError::Upstream(FailureKind::Unavailable)),
            service: None,
            ..
        }] = targets.as_slice()
        {
            let (status, results) = self
                .upstream_failed(
                    session,
                    ctx,
                    route.upstream,
                    FailureKind::Unavailable,
                    "no healthy peer",
                )
                .await?;
            rec.done(status, results);
            return Ok(());
        }
        self.send_all(session, ctx, route, policy, cmd, targets, body, rec)
            .await
    }

    /// Where the command goes, and the body it goes with (`service` cut out for daemons).
    fn targets_of(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        route: &Route,
        target: &KeaTarget,
        cmd: &kea::Command,
        body: Bytes,
    ) -> Result<(Vec<Target>, Bytes)> {
        let all = route.fan_out;
        let map = match target {
            KeaTarget::Agent => {
                let targets = self.targets(session, ctx, route.upstream, None, all, &body)?;
                return Ok((targets, body));
            }
            KeaTarget::Daemon(_) => {
                let body = kea::json::without_service(&body).unwrap_or(body);
                let targets = self.targets(session, ctx, route.upstream, None, all, &body)?;
                return Ok((targets, body));
            }
            KeaTarget::Services(map) => map,
        };
        let body = kea::json::without_service(&body).unwrap_or(body);
        let mut targets = Vec::new();
        for svc in &cmd.services {
            match map.iter().find(|(name, _)| name == svc) {
                Some(&(_, group)) => {
                    targets.extend(self.targets(session, ctx, group, Some(svc), all, &body)?)
                }
                None => targets.push(Target {
                    service: Some(svc.clone()),
                    group: route.upstream,
                    endpoint: Err(TargetError::NotConfigured),
                    request: None,
                }),
            }
        }
        Ok((targets, body))
    }

    /// Several targets (or a UNIX socket): sent by [`Dispatch`], the replies merged, each
    /// peer's part in the audit record.
    #[allow(clippy::too_many_arguments)]
    async fn send_all(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        policy: &KeaPolicy,
        cmd: &kea::Command,
        targets: Vec<Target>,
        body: Bytes,
        rec: &mut Record<'_>,
    ) -> Result<()> {
        let d = Dispatch {
            connector: self.connector,
            upstreams: self.upstreams,
            max_answer: policy.max_answer,
        };
        let replies = d.send(targets, body).await;
        self.count_replies(route, &replies);
        let answer = dispatch::merge(&replies, route.fan_out);
        let peers = replies
            .iter()
            .map(|r| PeerResult {
                peer: r.peer.clone(),
                service: r.service.clone(),
                results: r.results(),
                error: r
                    .outcome
                    .as_ref()
                    .err()
                    .map(|(e, _)| format!("upstream error: {}", e.label())),
            })
            .collect();
        self.answer_held(session, ctx, cmd, rec, answer, Some(peers))
            .await
    }

    /// The targets of one group: every peer with `fan_out: all`, else the one the balancer
    /// picks (TCP) or the next socket (UNIX); each TCP one with its request prepared.
    fn targets(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        group: usize,
        service: Option<&str>,
        all: bool,
        body: &Bytes,
    ) -> Result<Vec<Target>> {
        let g = &self.upstreams[group];
        let target = |endpoint| Target {
            service: service.map(str::to_string),
            group,
            endpoint,
            request: None,
        };
        let mut out = Vec::new();
        if !g.unix_peers().is_empty() {
            let picked = if all {
                g.unix_peers().to_vec()
            } else {
                g.select_unix().into_iter().collect()
            };
            out.extend(picked.into_iter().map(|p| target(Ok(Endpoint::Unix(p)))));
            return Ok(out);
        }
        let addrs: Vec<_> = if all {
            g.addrs().to_vec()
        } else {
            match g.select(balance_key(session, ctx).as_bytes()) {
                Some(a) => vec![a],
                None => {
                    out.push(target(Err(TargetError::Upstream(FailureKind::Unavailable))));
                    return Ok(out);
                }
            }
        };
        for addr in addrs {
            let mut t = target(Ok(Endpoint::Tcp(addr)));
            t.request = Some(self.prepare(session, ctx, group, addr, body)?);
            out.push(t);
        }
        Ok(out)
    }

    /// The agent's own answer on a `kea.services` route.
    fn agent_answer(
        &self,
        session: &Session,
        cmd: &kea::Command,
        map: &[(String, usize)],
    ) -> serde_json::Value {
        let sockets: Vec<agent::Socket> = map
            .iter()
            .map(|(service, group)| {
                let g = &self.upstreams[*group];
                let peer = match (g.addrs().first(), g.unix_peers().first()) {
                    (Some(a), _) => a.to_string(),
                    (None, Some(p)) => format!("unix:{}", p.display()),
                    (None, None) => "-".into(),
                };
                agent::Socket {
                    service: service.clone(),
                    upstream: g.name.to_string(),
                    peer,
                }
            })
            .collect();
        let view = agent::AgentView {
            local: session
                .as_downstream()
                .server_addr()
                .and_then(|a| a.as_inet())
                .copied(),
            sockets: &sockets,
            started: self.started,
        };
        agent::answer(&cmd.command, &view)
    }

    /// Answers a held answer (merged, or the agent's own) after the filters' `kea_answer`
    /// phase.
    async fn answer_held(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        cmd: &kea::Command,
        rec: &mut Record<'_>,
        mut answer: serde_json::Value,
        peers: Option<Vec<PeerResult>>,
    ) -> Result<()> {
        if self.filters.runs(Phases::KEA_ANSWER) {
            if let Some(view) = ctx.view(session, self.listener) {
                let editors = self.filters.kea_editors(&view, cmd);
                self.filters.kea_answer(&editors, &view, cmd, &mut answer);
            }
        }
        let out = Bytes::from(answer.to_string());
        let mut resp = ResponseHeader::build(200, Some(3))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, out.len().to_string())?;
        forward::filter_response(self.filters, self.listener, session, ctx, &mut resp);
        rec.event.peers = peers;
        rec.done(200, kea::result_codes(&out));
        session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(|e| e.into_down())?;
        session
            .write_response_body(Some(out), true)
            .await
            .map_err(|e| e.into_down())?;
        Ok(())
    }

    fn count_replies(&self, route: &Route, replies: &[Reply]) {
        for r in replies {
            let label = r.outcome.as_ref().map_or_else(|(e, _)| e.label(), |_| "ok");
            self.metrics
                .kea_fanout_peers
                .with_label_values(&[&*route.name, r.peer.as_str(), label])
                .inc();
            if let Err((e, detail)) = &r.outcome {
                let group = &self.upstreams[r.group].name;
                log::warn!(target: "gatehouse::upstream", "upstream {group} peer {}: {} ({}) {}", r.peer, r.service.as_deref().map(|s| format!("service {s}")).unwrap_or_default(), e.label(), EscText(detail));
                if let TargetError::Upstream(k) = e {
                    self.metrics.upstream_error(group, k.label());
                }
            }
        }
    }
}
