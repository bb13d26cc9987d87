//! Serving a Kea route: the command is read (bounded), parsed and authorized *before* any
//! upstream connection exists, so Kea never sees a refused command; an allowed one is
//! forwarded from the buffer with `Content-Length` (Kea answers chunked bodies with 400)
//! through Pingora's HTTP connector and pool.
//!
//! Where it goes is the route's [`KeaTarget`]: one peer, answer streamed back while its
//! `result` codes are read ([`kea::json::ResultScanner`]); or, for several targets (services,
//! `fan_out: all`) and UNIX control sockets, [`kea::dispatch`], answers held and merged. On a
//! `kea.services` route a command with no `service` is the agent's own ([`kea::agent`]).
//!
//! Every command is audited exactly once ([`Record`]), also when the upstream or the client
//! fails half way: the record is written on drop if the outcome never came.
//!
//! Pingora's proxy path can only replay a body it buffered itself (64 KiB), which is why an
//! allowed command is sent from here rather than handed back to the proxy.

use super::ctx::{balance_key, RequestCtx};
use super::filter::HttpFilter;
use super::forward;
use super::kea::dispatch::{self, Dispatch, Endpoint, Reply, Target, TargetError};
use super::kea::{self, agent, command_label, KeaPolicy};
use super::reply::{self, respond};
use super::route::Route;
use crate::audit::{AuditEvent, AuditSink, KeaEvent, PeerResult, Verdict};
use crate::authz::Guarded;
use crate::config::KeaTarget;
use crate::logsafe::EscText;
use crate::metrics::Metrics;
use crate::upstream::FailureKind;
use crate::upstream::UpstreamGroup;
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// Request headers that describe this hop only, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "transfer-encoding",
];

/// The audit record and the command metric of one Kea request, written exactly once, on
/// drop: with the outcome when it came, else with what was known (a forwarded command whose
/// answer never completed says so in `reason`), so no command that may have reached a daemon
/// goes unrecorded.
struct Record<'a> {
    metrics: &'a Metrics,
    audit: &'a dyn AuditSink,
    event: KeaEvent,
    start: Instant,
}

impl<'a> Record<'a> {
    fn new(flow: &KeaFlow<'a>, session: &Session, ctx: &RequestCtx, route: &Route) -> Self {
        Record {
            metrics: flow.metrics,
            audit: flow.audit,
            event: KeaEvent {
                listener: flow.listener.to_string(),
                client: session.client_addr().map(|a| a.to_string()),
                identity: ctx.caller(),
                route: route.name.to_string(),
                command: None,
                services: None,
                verdict: Verdict::Malformed,
                status: 0,
                reason: Some("the request ended before its body was read".into()),
                results: None,
                peers: None,
                duration_ms: 0.0,
            },
            start: ctx.start,
        }
    }

    /// An allowed command about to be forwarded: until the answer completes, the record
    /// says it was interrupted.
    fn allowed(&mut self, cmd: &kea::Command) {
        self.event.command = Some(cmd.command.clone());
        self.event.services = Some(cmd.effective_services().to_vec());
        self.event.verdict = Verdict::Allowed;
        self.event.reason = Some("interrupted before the answer was complete".into());
    }

    fn done(&mut self, status: u16, results: Vec<i64>) {
        self.event.status = status;
        self.event.results = Some(results);
        self.event.reason = None;
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        let e = &mut self.event;
        e.duration_ms = (self.start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        let command = e.command.as_deref().map(command_label).unwrap_or("other");
        self.metrics
            .kea_commands
            .with_label_values(&[&e.route, command, e.verdict.as_str()])
            .inc();
        self.audit.record(&AuditEvent::Kea(e.clone()));
    }
}

/// What serving a Kea route needs of the listener's gateway, borrowed for one request.
pub(super) struct KeaFlow<'a> {
    /// The listener's name (logs, audit, filter views).
    pub(super) listener: &'a str,
    /// Refused commands' log lines, one per 10 s (each is audited in full).
    pub(super) refusal_log: &'a crate::logging::Sampler,
    /// Whether the listener terminates TLS (`X-Forwarded-Proto`).
    pub(super) https: bool,
    /// The upstream table.
    pub(super) upstreams: &'a Arc<[UpstreamGroup]>,
    /// Pingora's connector and pool.
    pub(super) connector: &'a Arc<Connector>,
    /// The metric families.
    pub(super) metrics: &'a Metrics,
    /// Where audit records go.
    pub(super) audit: &'a dyn AuditSink,
    /// Added filters, in order.
    pub(super) filters: &'a [Box<dyn HttpFilter>],
    /// The added authorizer.
    pub(super) authorizer: Option<&'a Guarded>,
    /// When the gateway was built (the agent's `status-get`).
    pub(super) started: Instant,
}

impl KeaFlow<'_> {
    /// Serves one request on a route with a `kea:` block; the response is always written.
    pub(super) async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        policy: &KeaPolicy,
    ) -> Result<()> {
        let who = ctx.identity().to_string();
        let mut rec = Record::new(self, session, ctx, route);
        match self.decide_kea(session, ctx, policy).await? {
            Decision::Refused {
                status,
                text,
                cmd,
                verdict,
            } => {
                rec.event.command = cmd.as_ref().map(|c| c.command.clone());
                rec.event.services = cmd.as_ref().map(|c| c.effective_services().to_vec());
                rec.event.verdict = verdict;
                rec.event.status = status;
                rec.event.reason = Some(text.clone());
                if let Some(more) = self.refusal_log.admit_note() {
                    log::warn!(target: "gatehouse::access", "listener {}: route {}: {who}: {}{more}", self.listener, route.name, EscText(&text));
                }
                respond(session, status, &text).await
            }
            Decision::Allowed(cmd, body) => {
                rec.allowed(&cmd);
                if let Some((by, a)) = self.filter_command(session, ctx, &cmd, &body).await {
                    rec.event.verdict = Verdict::Answered;
                    rec.done(a.status, kea::result_codes(&a.body));
                    reply::answer(session, a).await?;
                    log::info!(target: "gatehouse::access", "listener {}: route {}: {who}: command answered by filter {by}", self.listener, route.name);
                    return Ok(());
                }
                let r = self
                    .forward(session, ctx, route, policy, &cmd, body, &mut rec)
                    .await;
                if let Err(e) = &r {
                    let done = rec.event.reason.is_none();
                    rec.event.reason = Some(if done {
                        format!("answered, then the client connection failed: {e}")
                    } else {
                        format!("interrupted: {e}")
                    });
                }
                r
            }
        }
    }

    /// Sends an allowed command where the route's target says and answers the client.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        policy: &KeaPolicy,
        cmd: &kea::Command,
        body: Bytes,
        rec: &mut Record<'_>,
    ) -> Result<()> {
        let all = route.fan_out;
        let (targets, body) = match &policy.target {
            KeaTarget::Agent => (
                self.targets(session, ctx, route.upstream, None, all, &body)?,
                body,
            ),
            KeaTarget::Daemon(_) => {
                let body = kea::json::without_service(&body).unwrap_or(body);
                (
                    self.targets(session, ctx, route.upstream, None, all, &body)?,
                    body,
                )
            }
            KeaTarget::Services(map) if cmd.services.is_empty() => {
                let answer = self.agent_answer(session, cmd, map);
                return self.answer_held(session, ctx, cmd, rec, answer, None).await;
            }
            KeaTarget::Services(map) => {
                let body = kea::json::without_service(&body).unwrap_or(body);
                let mut targets = Vec::new();
                for svc in &cmd.services {
                    match map.iter().find(|(name, _)| name == svc) {
                        Some(&(_, group)) => targets.extend(self.targets(
                            session,
                            ctx,
                            group,
                            Some(svc),
                            all,
                            &body,
                        )?),
                        None => targets.push(Target {
                            service: Some(svc.clone()),
                            group: route.upstream,
                            endpoint: Err(TargetError::NotConfigured),
                            request: None,
                        }),
                    }
                }
                (targets, body)
            }
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
        let d = Dispatch {
            connector: self.connector,
            upstreams: self.upstreams,
            max_answer: policy.max_answer,
        };
        let replies = d.send(targets, body).await;
        self.count_replies(route, &replies);
        let answer = dispatch::merge(&replies, all);
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
        if let Some(view) = ctx.view(session, self.listener) {
            for f in self.filters.iter() {
                if f.wants_kea_answer(&view, cmd) {
                    f.kea_answer(&view, cmd, &mut answer);
                }
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

    /// The added filters' `kea_command` phase: the first answer, and who gave it.
    async fn filter_command(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        cmd: &kea::Command,
        body: &[u8],
    ) -> Option<(String, super::filter::EdgeAnswer)> {
        let view = ctx.view(session, self.listener)?;
        for f in self.filters.iter() {
            if let super::filter::HttpAction::Answer(a) = f.kea_command(&view, cmd, body).await {
                return Some((f.name().to_string(), a));
            }
        }
        None
    }

    async fn decide_kea(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        policy: &KeaPolicy,
    ) -> Result<Decision> {
        let body = match read_body(session, policy.max_body).await? {
            Some(b) => b,
            None => {
                return Ok(Decision::Refused {
                    status: 413,
                    text: format!(
                        "request body exceeds {} bytes (routes[].kea.max_body)",
                        policy.max_body
                    ),
                    cmd: None,
                    verdict: Verdict::Malformed,
                })
            }
        };
        let mut cmd = match kea::parse(&body) {
            Ok(c) => c,
            Err(text) => {
                return Ok(Decision::Refused {
                    status: 400,
                    text,
                    cmd: None,
                    verdict: Verdict::Malformed,
                })
            }
        };
        if let Err(text) = policy.bind_service(&mut cmd) {
            return Ok(Decision::Refused {
                status: 400,
                text,
                cmd: Some(cmd),
                verdict: Verdict::Misrouted,
            });
        }
        let who = ctx.identity();
        match policy.decide(who, &cmd) {
            Ok(()) => {
                if let (Some(a), Some(route)) = (self.authorizer, &ctx.route) {
                    let q = crate::authz::Question {
                        listener: self.listener,
                        identity: who,
                        target: crate::authz::Target::Kea {
                            route: &route.name,
                            command: &cmd.command,
                            services: cmd.effective_services(),
                        },
                    };
                    let d = a.decide(&q).await;
                    if !d.allow {
                        return Ok(Decision::Refused {
                            status: 403,
                            text: d.reason.into_owned(),
                            cmd: Some(cmd),
                            verdict: Verdict::Denied,
                        });
                    }
                }
                Ok(Decision::Allowed(cmd, body))
            }
            Err(text) => Ok(Decision::Refused {
                status: 403,
                text,
                cmd: Some(cmd),
                verdict: Verdict::Denied,
            }),
        }
    }

    /// Sends the buffered command to one HTTP peer and streams the answer back (held only
    /// when a filter edits it), reading its result codes as it passes.
    #[allow(clippy::too_many_arguments)]
    async fn forward_one(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        cmd: &kea::Command,
        policy: &KeaPolicy,
        group_index: usize,
        addr: std::net::SocketAddr,
        req: Option<RequestHeader>,
        body: Bytes,
        rec: &mut Record<'_>,
    ) -> Result<()> {
        let group = &self.upstreams[group_index];
        ctx.peer = Some(addr);
        rec.event.peers = Some(vec![PeerResult {
            peer: addr.to_string(),
            service: cmd
                .services
                .first()
                .filter(|_| cmd.services.len() == 1)
                .cloned(),
            results: Vec::new(),
            error: None,
        }]);
        let peer = group.peer(addr);
        let req = match req {
            Some(r) => r,
            None => self.prepare(session, ctx, group_index, addr, &body)?,
        };
        // `answer_timeout` bounds the whole exchange; `read_timeout` only each read in it.
        let limit = ctx.route.as_ref().map_or_else(
            || group.answer_timeout(),
            |r| r.answer_timeout(self.upstreams),
        );
        let deadline = tokio::time::Instant::now() + limit;
        let sent = async {
            let (mut up, _reused) = self.connector.get_http_session(&peer).await?;
            // Pingora's proxy sets these from the peer; a session used directly gets none.
            up.set_read_timeout(peer.options.read_timeout);
            up.set_write_timeout(peer.options.write_timeout);
            up.write_request_header(Box::new(req)).await?;
            up.write_request_body(body, true).await?;
            up.finish_request_body().await?;
            up.read_response_header().await?;
            Ok::<_, Box<pingora_error::Error>>(up)
        };
        let mut up = match tokio::time::timeout_at(deadline, sent)
            .await
            .unwrap_or_else(|_| Err(answer_overdue(limit)))
        {
            Ok(up) => up,
            Err(e) => {
                let kind = FailureKind::classify(&e);
                return self
                    .failed_one(session, ctx, rec, group_index, kind, &e.to_string())
                    .await;
            }
        };
        let Some(head) = up.response_header() else {
            return self
                .failed_one(
                    session,
                    ctx,
                    rec,
                    group_index,
                    FailureKind::Other,
                    "no response header",
                )
                .await;
        };
        let mut resp: ResponseHeader = head.clone();
        let status = resp.status.as_u16();
        resp.remove_header("connection");
        resp.remove_header("keep-alive");
        let editors: Vec<usize> = match ctx.view(session, self.listener) {
            Some(view) => (0..self.filters.len())
                .filter(|&i| self.filters[i].wants_kea_answer(&view, cmd))
                .collect(),
            None => Vec::new(),
        };
        if !editors.is_empty() {
            let edited = tokio::time::timeout_at(
                deadline,
                self.edit_answer(session, ctx, cmd, &editors, &mut up, policy.max_answer),
            )
            .await
            .unwrap_or_else(|_| Err((FailureKind::Timeout, answer_overdue(limit).to_string())));
            let answer = match edited {
                Ok(a) => a,
                Err((kind, why)) => {
                    let detail = format!("answer unreadable for the filters: {why}");
                    return self
                        .failed_one(session, ctx, rec, group_index, kind, &detail)
                        .await;
                }
            };
            resp.remove_header("transfer-encoding");
            resp.insert_header("content-length", answer.len().to_string())?;
            forward::filter_response(self.filters, self.listener, session, ctx, &mut resp);
            self.connector
                .release_http_session(up, &peer, Some(group.idle_timeout()))
                .await;
            let results = kea::result_codes(&answer);
            set_peer_results(rec, &results, None);
            rec.done(status, results);
            session
                .write_response_header(Box::new(resp), false)
                .await
                .map_err(|e| e.into_down())?;
            session
                .write_response_body(Some(answer), true)
                .await
                .map_err(|e| e.into_down())?;
            return Ok(());
        }
        forward::filter_response(self.filters, self.listener, session, ctx, &mut resp);
        rec.event.status = status;
        session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(|e| e.into_down())?;
        let mut scan = kea::json::ResultScanner::default();
        loop {
            let read = tokio::time::timeout_at(deadline, up.read_response_body())
                .await
                .unwrap_or_else(|_| Err(answer_overdue(limit)));
            match read {
                Ok(Some(chunk)) => {
                    scan.feed(&chunk);
                    session
                        .write_response_body(Some(chunk), false)
                        .await
                        .map_err(|e| e.into_down())?;
                }
                Ok(None) => break,
                Err(e) => {
                    // Headers are out: all that is left is to count, log and cut the response.
                    let kind = FailureKind::classify(&e);
                    self.metrics.upstream_error(&group.name, kind.label());
                    log::warn!(target: "gatehouse::upstream", "upstream {} peer {addr}: response body failed ({}): {e}", group.name, kind.label());
                    rec.event.results = Some(scan.codes().to_vec());
                    set_peer_results(rec, scan.codes(), Some(kind));
                    ctx.failure = Some(kind);
                    return Err(e.into_up());
                }
            }
        }
        let results = scan.into_codes();
        set_peer_results(rec, &results, None);
        rec.done(status, results);
        session
            .write_response_body(None, true)
            .await
            .map_err(|e| e.into_down())?;
        self.connector
            .release_http_session(up, &peer, Some(group.idle_timeout()))
            .await;
        Ok(())
    }

    /// An upstream failure of a single forward: answered, recorded.
    async fn failed_one(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rec: &mut Record<'_>,
        group: usize,
        kind: FailureKind,
        detail: &str,
    ) -> Result<()> {
        set_peer_results(rec, &[], Some(kind));
        rec.event.reason = Some(format!("upstream error: {}", kind.label()));
        let (status, _) = self
            .upstream_failed(session, ctx, group, kind, detail)
            .await?;
        rec.event.status = status;
        rec.event.results = Some(Vec::new());
        Ok(())
    }

    /// The request for peer `addr` of group `group`: Kea's HTTP/1.1 framing (its Host,
    /// `Content-Length`), the forwarding headers, and the added filters' `upstream_request`
    /// edits.
    fn prepare(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        group: usize,
        addr: std::net::SocketAddr,
        body: &Bytes,
    ) -> Result<RequestHeader> {
        let g = &self.upstreams[group];
        let mut req = upstream_request(session.req_header(), &g.host_header(addr), body)?;
        if let Some(route) = &ctx.route {
            forward::forwarding_headers(self.https, session, route, ctx.client(), &mut req)?;
            forward::upstream_credentials(route, g, &mut req)?;
        }
        if !self.filters.is_empty() {
            forward::filter_upstream(self.filters, self.listener, session, ctx, &mut req)?;
        }
        Ok(req)
    }

    /// Reads Kea's whole answer (at most `max` bytes) and lets the filters at `editors` edit
    /// it; an answer that is not JSON goes back as it came.
    async fn edit_answer(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        cmd: &kea::Command,
        editors: &[usize],
        up: &mut pingora_core::protocols::http::client::HttpSession,
        max: usize,
    ) -> std::result::Result<Bytes, (FailureKind, String)> {
        let mut body = BytesMut::new();
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > max {
                        return Err((
                            FailureKind::Other,
                            format!("larger than {max} bytes (kea.max_answer)"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err((FailureKind::classify(&e), e.to_string())),
            }
        }
        let body = body.freeze();
        let (Ok(mut answer), Some(view)) = (
            serde_json::from_slice::<serde_json::Value>(&body),
            ctx.view(session, self.listener),
        ) else {
            return Ok(body);
        };
        for &i in editors {
            self.filters[i].kea_answer(&view, cmd, &mut answer);
        }
        Ok(Bytes::from(answer.to_string()))
    }

    /// Counts, logs and answers an upstream failure on the buffered path.
    async fn upstream_failed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        group: usize,
        kind: FailureKind,
        detail: &str,
    ) -> Result<(u16, Vec<i64>)> {
        let group = &*self.upstreams[group].name;
        self.metrics.upstream_error(group, kind.label());
        let peer = ctx
            .peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        log::warn!(target: "gatehouse::upstream", "upstream {group} peer {peer}: {} ({detail})", kind.label());
        ctx.failure = Some(kind);
        respond(session, kind.status(), &kind.message()).await?;
        Ok((kind.status(), Vec::new()))
    }
}

/// Fills the single peer's part of a forwarded command's record.
fn set_peer_results(rec: &mut Record<'_>, results: &[i64], failed: Option<FailureKind>) {
    if let Some(p) = rec.event.peers.as_mut().and_then(|p| p.first_mut()) {
        p.results = if failed.is_some() && results.is_empty() {
            vec![1]
        } else {
            results.to_vec()
        };
        p.error = failed.map(|k| format!("upstream error: {}", k.label()));
    }
}

enum Decision {
    Allowed(kea::Command, Bytes),
    Refused {
        status: u16,
        text: String,
        cmd: Option<kea::Command>,
        verdict: Verdict,
    },
}

/// The HTTP/1.1 request Kea gets for a downstream request of any version: Kea's HTTP/1 parser
/// answers 400 to an `HTTP/2` request line, a missing `Host` or a chunked body, which is what
/// an h2 client (curl's default over TLS) or a chunked upload would otherwise send it.
/// End-to-end headers are copied; `Host` names the upstream (its SNI, else the peer).
pub(super) fn upstream_request(
    down: &RequestHeader,
    host: &str,
    body: &Bytes,
) -> Result<RequestHeader> {
    let target = down.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = RequestHeader::build(down.method.clone(), target.as_bytes(), None)?;
    for (name, value) in down.headers.iter() {
        if name == http::header::HOST || HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        req.append_header(name.clone(), value.clone())?;
    }
    req.insert_header(http::header::HOST, host)?;
    req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    req.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    Ok(req)
}

/// Reads the whole request body; `None` if it exceeds `max` (nothing more is read then).
async fn read_body(session: &mut Session, max: usize) -> Result<Option<Bytes>> {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // We read the body ourselves, so we owe the client its go-ahead (curl waits 1 s).
        session
            .as_downstream_mut()
            .write_continue_response()
            .await?;
    }
    let mut buf = BytesMut::new();
    // A client error: `body_timeout` (Pingora's read timeout) answers 408, counted as such.
    while let Some(chunk) = session
        .as_downstream_mut()
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        if buf.len() + chunk.len() > max {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

/// The error of an answer that took longer than its `answer_timeout` (`limit`).
fn answer_overdue(limit: std::time::Duration) -> Box<pingora_error::Error> {
    pingora_error::Error::explain(
        pingora_error::ErrorType::ReadTimedout,
        format!("no whole answer within answer_timeout ({limit:?})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kea_gets_http11_with_host_and_length_whatever_the_client_spoke() {
        let mut down = RequestHeader::build("POST", b"/", None).unwrap();
        down.set_version(http::Version::HTTP_2);
        down.set_uri("https://edge.example:5665/?x=1".parse().unwrap());
        down.insert_header("content-type", "application/json")
            .unwrap();
        down.insert_header("te", "trailers").unwrap();
        down.insert_header("authorization", "Basic eA==").unwrap();
        let body = Bytes::from_static(br#"{"command":"version-get"}"#);
        let up = upstream_request(&down, "kea.internal", &body).unwrap();
        assert_eq!(up.version, http::Version::HTTP_11);
        assert_eq!(up.uri.to_string(), "/?x=1");
        let h = |n: &str| up.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("host").as_deref(), Some("kea.internal"));
        assert_eq!(h("content-length"), Some(body.len().to_string()));
        assert_eq!(h("authorization").as_deref(), Some("Basic eA=="));
        assert_eq!(h("te"), None, "hop-by-hop headers stay on this hop");
        assert_eq!(h("transfer-encoding"), None);
    }
}
