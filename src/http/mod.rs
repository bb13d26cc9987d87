//! The HTTP side: a Pingora [`ProxyHttp`] that routes by host and path prefix to upstream
//! groups, admits callers by identity, forwards who the client is, authorizes Kea commands,
//! classifies upstream failures and writes one access-log line per request.
//!
//! Request path: `request_filter` (identity, route, 404, route access 403; Kea routes are
//! served here, see `kea_flow`) → `upstream_peer` (load balancer) →
//! `upstream_request_filter` (forwarding headers) → Pingora proxies → `logging`.
//! Failures: `fail_to_connect` / `error_while_proxy` classify → `fail_to_proxy` answers.

pub mod basic;
pub mod filter;
pub mod kea;
mod kea_flow;
pub mod limit;
pub mod path;
pub mod route;

use crate::audit::AuditSink;
use crate::authz::{Guarded, Identity, Question, Target};
use crate::config::LogFormat;
use crate::identity::{ClientCert, TlsInfo};
use crate::logsafe::{Esc, EscText};
use crate::metrics;
use crate::upstream::{FailureKind, UpstreamGroup};
use async_trait::async_trait;
use bytes::Bytes;
use filter::{EdgeAnswer, HttpAction, HttpFilter, Request as FilterRequest};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use route::{normalize_host, Route, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The HTTP proxy logic of one listener.
pub struct HttpGateway {
    listener: Arc<str>,
    https: bool,
    router: Arc<Router>,
    upstreams: Arc<[UpstreamGroup]>,
    audit: Arc<dyn AuditSink>,
    /// Pingora's HTTP connector and pool, for Kea commands forwarded from a buffer.
    connector: Arc<Connector>,
    /// Metrics of requests answered before a route was found (404), label `route="-"`.
    unrouted: metrics::RouteMetrics,
    metrics: Arc<metrics::Metrics>,
    /// Seconds an HTTP/1 keep-alive connection may sit idle between requests.
    keepalive_secs: u64,
    /// The added authorizer, asked after the route's own rules allowed a request.
    authorizer: Option<Arc<Guarded>>,
    /// Added HTTP filters, in order.
    filters: Arc<[Box<dyn HttpFilter>]>,
    /// How the access line is written.
    log_format: LogFormat,
    /// When this gateway was built (the agent's `status-get` uptime on `kea.services` routes).
    started: Instant,
}

impl HttpGateway {
    /// A gateway for `listener`; `https` is whether the listener terminates TLS.
    pub fn new(
        listener: &str,
        https: bool,
        router: Arc<Router>,
        upstreams: Arc<[UpstreamGroup]>,
        audit: Arc<dyn AuditSink>,
        keepalive: std::time::Duration,
        metrics: Arc<metrics::Metrics>,
    ) -> Self {
        HttpGateway {
            listener: listener.into(),
            https,
            router,
            upstreams,
            audit,
            connector: Arc::new(Connector::new(None)),
            unrouted: metrics::RouteMetrics::new(&metrics, "-"),
            metrics,
            keepalive_secs: keepalive.as_secs().max(1),
            authorizer: None,
            filters: Arc::from(Vec::new()),
            log_format: LogFormat::Text,
            started: Instant::now(),
        }
    }

    /// Writes the access line in `format` (`log_format`; text by default).
    pub fn with_log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// Runs `filters` in every request's phases.
    pub fn with_filters(mut self, filters: Arc<[Box<dyn HttpFilter>]>) -> Self {
        self.filters = filters;
        self
    }

    /// The request as filters see it (`None` before routing).
    fn view<'a>(&'a self, session: &'a Session, ctx: &'a RequestCtx) -> Option<FilterRequest<'a>> {
        let route = ctx.route.as_ref()?;
        Some(FilterRequest {
            listener: &self.listener,
            identity: ctx.identity(),
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            route: &route.name,
            header: session.req_header(),
        })
    }

    /// Applies the added filters' `upstream_request` phase.
    fn filter_upstream(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        req: &mut RequestHeader,
    ) -> Result<()> {
        let Some(view) = self.view(session, ctx) else {
            return Ok(());
        };
        for f in self.filters.iter() {
            if let Err(e) = f.upstream_request(&view, req) {
                return Error::e_explain(
                    ErrorType::InternalError,
                    format!("filter {}: {e}", f.name()),
                );
            }
        }
        Ok(())
    }

    /// Asks `authorizer` about every request (and Kea command) the YAML rules allowed.
    pub fn with_authorizer(mut self, authorizer: Option<Arc<Guarded>>) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// The headers every upstream request gets: `X-Forwarded-For`/`-Proto` (overwritten: the
    /// edge is where the client is known) and, if the route asks, `X-Forwarded-Client-Cert`.
    /// Any incoming `X-Forwarded-Client-Cert`, in any spelling, is removed on every route.
    fn forwarding_headers(
        &self,
        session: &Session,
        route: &Route,
        client: Option<&ClientCert>,
        req: &mut RequestHeader,
    ) -> Result<()> {
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            req.insert_header("x-forwarded-for", ip.to_string())?;
        }
        req.insert_header(
            "x-forwarded-proto",
            if self.https { "https" } else { "http" },
        )?;
        let spellings: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| is_xfcc_spelling(n.as_str()))
            .cloned()
            .collect();
        for name in spellings {
            req.remove_header(&name);
        }
        if let (true, Some(c)) = (route.forward_xfcc, client) {
            if req
                .insert_header("x-forwarded-client-cert", xfcc(c))
                .is_err()
            {
                log::warn!(target: "gatehouse::access", "route {}: client certificate fields cannot form a header; X-Forwarded-Client-Cert not sent", route.name);
            }
        }
        Ok(())
    }

    /// The `Authorization` an upstream request carries: the caller's basic credentials are
    /// the edge's to check and never go on (`routes[].basic_auth`); a group with its own
    /// (`upstreams.<name>.basic_auth`) gets those instead. Other routes pass the header as
    /// sent (Icinga's REST API takes the caller's credentials itself).
    fn upstream_credentials(
        &self,
        route: &Route,
        group: usize,
        req: &mut RequestHeader,
    ) -> Result<()> {
        if route.basic_auth.is_some() {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        if let Some(a) = self.upstreams[group].authorization() {
            req.insert_header(http::header::AUTHORIZATION, a)?;
        }
        Ok(())
    }
}

/// Envoy's `X-Forwarded-Client-Cert` element for `c`:
/// `Hash=<sha256>;Subject="<DN>";URI=<uri>;DNS=<name>` (URI and DNS repeated per SAN).
///
/// The Subject is RFC 4514-escaped ([`ClientCert::subject`]) and always quoted; URI and DNS
/// values are quoted when they hold a separator. Inside quotes `"` and `\` are
/// backslash-escaped and control characters written as `\xHH`, so no field can end early,
/// add an element, or break the header.
pub fn xfcc(c: &ClientCert) -> String {
    fn quoted(v: &str) -> String {
        let mut out = String::with_capacity(v.len() + 2);
        out.push('"');
        for ch in v.chars() {
            match ch {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(ch);
                }
                ch if ch.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in ch.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                ch => out.push(ch),
            }
        }
        out.push('"');
        out
    }
    fn value(v: &str) -> String {
        if v.contains([',', ';', '=', '"', '\\', ' ']) || v.chars().any(char::is_control) {
            quoted(v)
        } else {
            v.to_string()
        }
    }
    let mut parts = vec![
        format!("Hash={}", c.fingerprint),
        format!("Subject={}", quoted(&c.subject)),
    ];
    parts.extend(c.uris.iter().map(|u| format!("URI={}", value(u))));
    parts.extend(c.dns.iter().map(|d| format!("DNS={}", value(d))));
    parts.join(";")
}

/// Whether a request header name is a spelling of `X-Forwarded-Client-Cert` that a backend
/// might fold into it (any case, `_` for `-`: nginx, CGI and some frameworks treat them alike).
fn is_xfcc_spelling(name: &str) -> bool {
    const XFCC: &[u8] = b"x-forwarded-client-cert";
    name.len() == XFCC.len()
        && name.bytes().zip(XFCC).all(|(a, &b)| {
            let a = a.to_ascii_lowercase();
            a == b || (a == b'_' && b == b'-')
        })
}

/// The access line in `log_format: json`: the text line's fields, typed, absent ones `null`.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    listener: &'a str,
    client: Option<String>,
    cn: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    peer: Option<SocketAddr>,
    status: u16,
    duration_ms: f64,
}

/// Per-request state shared across the filters.
pub struct RequestCtx {
    start: Instant,
    /// The basic-auth user, once the route's `basic_auth` checked the credentials.
    user: Option<String>,
    tls: Option<Arc<SslDigest>>,
    route: Option<Arc<Route>>,
    peer: Option<SocketAddr>,
    connect_attempts: usize,
    failure: Option<FailureKind>,
}

impl RequestCtx {
    /// The handshake facts of this request's connection (shared, parsed once).
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref().and_then(|d| d.extension.get::<TlsInfo>())
    }

    /// The verified client certificate, if any.
    pub fn client(&self) -> Option<&ClientCert> {
        self.tls_info().and_then(|t| t.authenticated())
    }

    /// The caller: a basic-auth user (with the certificate, if any), else the certificate,
    /// else anonymous.
    pub fn identity(&self) -> Identity<'_> {
        match &self.user {
            Some(name) => Identity::User {
                name,
                cert: self.client(),
            },
            None => Identity::of(self.tls_info()),
        }
    }

    fn route_name(&self) -> &str {
        self.route.as_ref().map(|r| &*r.name).unwrap_or("-")
    }
}

fn req_method(session: &Session) -> &str {
    session.req_header().method.as_str()
}

/// Routes and forwards the normal form of the request path ([`path::normalize`]).
fn normalize_request_path(session: &mut Session) -> std::result::Result<(), path::PathError> {
    let req = session.req_header();
    if !req.raw_path_is_utf8() {
        return Err(path::PathError::NotUtf8);
    }
    let uri = &req.uri;
    let normal = match path::normalize(uri.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(e),
    };
    let pq = match uri.query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    match http::Uri::from_parts(parts) {
        Ok(u) => {
            session.req_header_mut().set_uri(u);
            Ok(())
        }
        Err(_) => Err(path::PathError::BadEscape),
    }
}

/// What consistent hashing keys on: who the client is, else where it is.
fn balance_key(session: &Session, ctx: &RequestCtx) -> String {
    match ctx.client() {
        Some(c) => c.fingerprint.clone(),
        None => session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
    }
}

fn wants_json(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Most of an unread request body read (and dropped) before an answer sent ahead of it.
const SETTLE_MAX: usize = 64 * 1024;
/// How long reading it may take.
const SETTLE_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads what is left of the request body, up to [`SETTLE_MAX`] within [`SETTLE_TIME`], before
/// an answer sent without it (a refusal, a 401, an edge answer): an HTTP/2 stream answered
/// while the client still sends is reset, which curl reports as a framing error instead of the
/// answer. Larger or slower bodies are not waited for.
async fn settle_body(session: &mut Session) {
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && !session.is_body_done() {
        // The client waits for our go-ahead before it sends: answering now is what it expects.
        return;
    }
    let settle = async {
        let mut read = 0usize;
        while read <= SETTLE_MAX {
            match session.as_downstream_mut().read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(SETTLE_TIME, settle).await;
}

/// Writes a filter's answer.
async fn answer(session: &mut Session, a: EdgeAnswer) -> Result<()> {
    settle_body(session).await;
    let mut resp = ResponseHeader::build(a.status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, a.content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, a.body.len().to_string())?;
    for (name, value) in a.headers {
        resp.insert_header(name, value)?;
    }
    session
        .as_downstream_mut()
        .write_error_response(resp, a.body)
        .await
}

/// `401` with `WWW-Authenticate`, Kea-shaped as the agent answered
/// (`{"result": 401, "text": "Unauthorized"}`) for JSON clients.
async fn unauthorized(session: &mut Session, text: &str, challenge: &str) -> Result<()> {
    settle_body(session).await;
    let (body, ctype) = if wants_json(session) {
        let v = serde_json::json!({ "result": 401, "text": text });
        (Bytes::from(v.to_string()), "application/json")
    } else {
        (
            Bytes::from(format!("{text}\n")),
            "text/plain; charset=utf-8",
        )
    };
    let mut resp = ResponseHeader::build(401, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, ctype)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::WWW_AUTHENTICATE, challenge)?;
    session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
}

/// Answers with a short body; Kea-shaped JSON (`{"result": code, "text": ...}`) when the
/// client speaks JSON, so kea-shell and scripts can parse Gatehouse's own errors.
async fn respond(session: &mut Session, status: u16, text: &str) -> Result<()> {
    settle_body(session).await;
    let (body, ctype) = if wants_json(session) {
        let v = serde_json::json!({ "result": status, "text": text });
        (Bytes::from(v.to_string()), "application/json")
    } else {
        (
            Bytes::from(format!("{text}\n")),
            "text/plain; charset=utf-8",
        )
    };
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, ctype)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
}

#[async_trait]
impl ProxyHttp for HttpGateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            user: None,
            tls: None,
            route: None,
            peer: None,
            connect_attempts: 0,
            failure: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.tls = session.digest().and_then(|d| d.ssl_digest.clone());
        // Pingora reads the next request head with no time limit once a client asked for
        // keep-alive: bound the idle wait (ignored for HTTP/2, closed by h2_idle_timeout).
        session.set_keepalive(Some(self.keepalive_secs));
        if let Err(e) = normalize_request_path(session) {
            respond(session, 400, &e.to_string()).await?;
            return Ok(true);
        }
        let req = session.req_header();
        // HTTP/2 carries the host in :authority (the URI), HTTP/1 in the Host header.
        let host = req
            .uri
            .host()
            .map(normalize_host)
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(normalize_host)
            })
            .unwrap_or_default();
        let Some(route) = self.router.find(&host, req.uri.path()).cloned() else {
            respond(session, 404, "no route for this host and path").await?;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        if let Some(auth) = &route.basic_auth {
            let header = session
                .req_header()
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            let user = match (self.https, header) {
                (true, Some(h)) => auth.check(Some(h)).await,
                _ => None,
            };
            match user {
                Some(u) => ctx.user = Some(u),
                None => {
                    if header.is_some() {
                        log::warn!(target: "gatehouse::access", "listener {}: route {}: basic credentials refused ({})", self.listener, route.name, Identity::of(ctx.tls_info()));
                    }
                    let text = if self.https {
                        "Unauthorized"
                    } else {
                        "Unauthorized: basic credentials are taken over TLS only"
                    };
                    unauthorized(session, text, &auth.challenge()).await?;
                    return Ok(true);
                }
            }
        }
        if !route.access.admits(ctx.identity()) {
            let who = ctx.identity().to_string();
            log::warn!(target: "gatehouse::access", "listener {}: route {} refused {who} for {} {}", self.listener, route.name, Esc(req_method(session)), Esc(session.req_header().uri.path()));
            respond(
                session,
                403,
                &format!("route '{}' is not allowed for {who}", route.name),
            )
            .await?;
            return Ok(true);
        }
        if let Some(a) = &self.authorizer {
            let req = session.req_header();
            let q = Question {
                listener: &self.listener,
                identity: ctx.identity(),
                target: Target::Http {
                    route: &route.name,
                    method: req.method.as_str(),
                    path: req.uri.path(),
                },
            };
            let d = a.decide(&q).await;
            if !d.allow {
                let who = ctx.identity().to_string();
                log::warn!(target: "gatehouse::access", "listener {}: route {}: authorizer {} refused {who}: {}", self.listener, route.name, a.name(), EscText(&d.reason));
                respond(session, 403, &d.reason).await?;
                return Ok(true);
            }
        }
        if !self.filters.is_empty() {
            let mut edge = None;
            if let Some(view) = self.view(session, ctx) {
                for f in self.filters.iter() {
                    if let HttpAction::Answer(a) = f.request(&view).await {
                        log::debug!(target: "gatehouse::access", "listener {}: route {}: answered by filter {}", self.listener, route.name, f.name());
                        edge = Some(a);
                        break;
                    }
                }
            }
            if let Some(a) = edge {
                answer(session, a).await?;
                return Ok(true);
            }
        }
        if let Some(kea) = &route.kea {
            self.serve_kea(session, ctx, &route, kea).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = &ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let group = &self.upstreams[route.upstream];
        ctx.connect_attempts += 1;
        let Some(addr) = group.select(balance_key(session, ctx).as_bytes()) else {
            ctx.failure = Some(FailureKind::Unavailable);
            self.metrics
                .upstream_error(&group.name, FailureKind::Unavailable.label());
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("upstream {}: no healthy peer", group.name),
            );
        };
        ctx.peer = Some(addr);
        Ok(Box::new(group.peer(addr)))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "upstream request without a route");
        };
        self.forwarding_headers(session, route, ctx.client(), req)?;
        self.upstream_credentials(route, route.upstream, req)?;
        if !self.filters.is_empty() {
            self.filter_upstream(session, ctx, req)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !self.filters.is_empty() {
            if let Some(view) = self.view(session, ctx) {
                for f in self.filters.iter() {
                    f.response(&view, resp);
                }
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let kind = FailureKind::classify(&e);
        let group = ctx.route.as_ref().map(|r| &self.upstreams[r.upstream]);
        let name = group.map(|g| &*g.name).unwrap_or("?");
        self.metrics.upstream_error(name, kind.label());
        log::warn!(
            target: "gatehouse::upstream",
            "upstream {name} peer {}: connect failed ({}): {e}",
            peer._address,
            kind.label()
        );
        ctx.failure = Some(kind);
        // Another peer may be up: retry dead or slow connects across the group once each.
        let peers = group.map(|g| g.peer_count).unwrap_or(1);
        if matches!(kind, FailureKind::Refused | FailureKind::Timeout)
            && ctx.connect_attempts < peers
        {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if e.esource() == &ErrorSource::Upstream {
            let kind = FailureKind::classify(&e);
            let name = ctx
                .route
                .as_ref()
                .map(|r| &*self.upstreams[r.upstream].name)
                .unwrap_or("?");
            self.metrics.upstream_error(name, kind.label());
            log::warn!(
                target: "gatehouse::upstream",
                "upstream {name} peer {}: failed while proxying ({}): {e}",
                peer._address,
                kind.label()
            );
            ctx.failure = Some(kind);
        }
        // Pingora's default retry policy: never replay non-idempotent requests.
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match (ctx.failure, e.etype(), e.esource()) {
            (Some(kind), _, _) => kind.status(),
            (None, ErrorType::HTTPStatus(code), _) => *code,
            (
                None,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => 0,
            (None, _, ErrorSource::Downstream) => 400,
            (None, _, ErrorSource::Upstream) => 502,
            (None, _, _) => 500,
        };
        if code > 0 {
            let text = match ctx.failure {
                Some(kind) => kind.message(),
                None => http::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_string(),
            };
            if let Err(err) = respond(session, code, &text).await {
                log::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx.route_name();
        let elapsed = ctx.start.elapsed();
        if status > 0 {
            match &ctx.route {
                Some(r) => r.metrics.observe(status, elapsed.as_secs_f64()),
                None => self.unrouted.observe(status, elapsed.as_secs_f64()),
            }
        }
        if !self.filters.is_empty() {
            if let Some(view) = self.view(session, ctx) {
                for f in self.filters.iter() {
                    f.logging(&view, status, elapsed);
                }
            }
        }
        // The line is built only if it will be written: this runs on every request.
        if !log::log_enabled!(target: "gatehouse::access", log::Level::Info) {
            return;
        }
        let req = session.req_header();
        let client = session.client_addr();
        let cn = ctx.client().and_then(|c| c.cn.as_deref());
        if self.log_format == LogFormat::Json {
            let line = AccessLine {
                listener: &self.listener,
                client: client.map(|a| a.to_string()),
                cn,
                method: req.method.as_str(),
                path: req.uri.path(),
                route: ctx.route.as_ref().map(|r| &*r.name),
                peer: ctx.peer,
                status,
                // Microseconds, as the text line's three decimals.
                duration_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            };
            crate::logging::info_json("gatehouse::access", "an access line", &line);
            return;
        }
        let client = client.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        let peer = ctx
            .peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        log::info!(
            target: "gatehouse::access",
            "listener={} client={} cn={} method={} path={} route={} peer={} status={} duration_ms={:.3}",
            self.listener,
            client,
            crate::logsafe::EscOpt(cn),
            Esc(req.method.as_str()),
            Esc(req.uri.path()),
            route,
            peer,
            status,
            elapsed.as_secs_f64() * 1000.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, CertSpec};

    #[test]
    fn xfcc_fields_cannot_break_out() {
        let ca = Ca::new("t").unwrap();
        let leaf = ca
            .issue(
                &CertSpec::new(r#"a,b;c="d"\e"#)
                    .dns(&["x.example.org"])
                    .uris(&["spiffe://example.org/a;b"]),
            )
            .unwrap();
        let c = ClientCert::from_x509(leaf.cert, true);
        let h = xfcc(&c);
        assert!(
            h.contains(r#";Subject="CN=a\\,b\\;c=\\\"d\\\"\\\\e";"#),
            "{h}"
        );
        assert!(h.contains(r#";URI="spiffe://example.org/a;b";"#), "{h}");
        assert!(h.ends_with(";DNS=x.example.org"), "{h}");
        assert!(http::HeaderValue::from_str(&h).is_ok());
    }

    #[test]
    fn every_xfcc_spelling_is_recognised() {
        for n in [
            "x-forwarded-client-cert",
            "x_forwarded_client_cert",
            "x_forwarded-client_cert",
            "X-Forwarded-Client-Cert",
        ] {
            assert!(is_xfcc_spelling(n), "{n}");
        }
        for n in [
            "x-forwarded-client-certs",
            "x-forwarded-for",
            "xforwardedclientcert",
        ] {
            assert!(!is_xfcc_spelling(n), "{n}");
        }
    }
}
