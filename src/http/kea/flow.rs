//! What serving a Kea command needs: the gateway's parts borrowed for one request
//! ([`KeaFlow`]), the command's audit record ([`Record`], written exactly once, on drop: also
//! when the upstream or the client fails half way), and the HTTP/1.1 request Kea is sent.

use super::{self as kea, command_label};
use crate::audit::{AuditEvent, AuditSink, KeaEvent, Verdict};
use crate::authz::Guarded;
use crate::http::ctx::RequestCtx;
use crate::http::filter::Chain;
use crate::http::forward;
use crate::http::reply::respond;
use crate::http::route::Route;
use crate::metrics::Metrics;
use crate::upstream::FailureKind;
use crate::upstream::UpstreamGroup;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_error::Result;
use pingora_http::RequestHeader;
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
pub(super) struct Record<'a> {
    metrics: &'a Metrics,
    audit: &'a dyn AuditSink,
    pub(super) event: KeaEvent,
    start: Instant,
}

impl<'a> Record<'a> {
    pub(super) fn new(
        flow: &KeaFlow<'a>,
        session: &Session,
        ctx: &RequestCtx,
        route: &Route,
    ) -> Self {
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
    pub(super) fn allowed(&mut self, cmd: &kea::Command) {
        self.event.command = Some(cmd.command.clone());
        self.event.services = Some(cmd.effective_services().to_vec());
        self.event.verdict = Verdict::Allowed;
        self.event.reason = Some("interrupted before the answer was complete".into());
    }

    pub(super) fn done(&mut self, status: u16, results: Vec<i64>) {
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
pub(crate) struct KeaFlow<'a> {
    /// The listener's name (logs, audit, filter views).
    pub(crate) listener: &'a str,
    /// Refused commands' log lines, one per 10 s (each is audited in full).
    pub(crate) refusal_log: &'a crate::logging::Sampler,
    /// Whether the listener terminates TLS (`X-Forwarded-Proto`).
    pub(crate) https: bool,
    /// The upstream table.
    pub(crate) upstreams: &'a Arc<[UpstreamGroup]>,
    /// Pingora's connector and pool.
    pub(crate) connector: &'a Arc<Connector>,
    /// The metric families.
    pub(crate) metrics: &'a Metrics,
    /// Where audit records go.
    pub(crate) audit: &'a dyn AuditSink,
    /// The filters, by phase.
    pub(crate) filters: &'a Chain,
    /// The added authorizer.
    pub(crate) authorizer: Option<&'a Guarded>,
    /// When the gateway was built (the agent's `status-get`).
    pub(crate) started: Instant,
}

impl KeaFlow<'_> {
    /// The request for peer `addr` of group `group`: Kea's HTTP/1.1 framing (its Host,
    /// `Content-Length`), the forwarding headers, and the added filters' `upstream_request`
    /// edits.
    pub(super) fn prepare(
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
            forward::upstream_credentials(route, g, ctx.token.is_some(), &mut req)?;
        }
        forward::filter_upstream(self.filters, self.listener, session, ctx, &mut req)?;
        Ok(req)
    }

    /// Counts, logs and answers an upstream failure on the buffered path.
    pub(super) async fn upstream_failed(
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
pub(super) fn set_peer_results(rec: &mut Record<'_>, results: &[i64], failed: Option<FailureKind>) {
    if let Some(p) = rec.event.peers.as_mut().and_then(|p| p.first_mut()) {
        p.results = if failed.is_some() && results.is_empty() {
            vec![1]
        } else {
            results.to_vec()
        };
        p.error = failed.map(|k| format!("upstream error: {}", k.label()));
    }
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

/// The error of an answer that took longer than its `answer_timeout` (`limit`).
pub(super) fn answer_overdue(limit: std::time::Duration) -> Box<pingora_error::Error> {
    pingora_error::Error::explain(
        pingora_error::ErrorType::ReadTimedout,
        format!("no whole answer within answer_timeout ({limit:?})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn kea_gets_http11_with_host_and_length_whatever_the_client_spoke() {
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
