//! The HTTP side: a Pingora [`ProxyHttp`] that routes by host and path prefix to upstream
//! groups, admits callers by identity, forwards who the client is, authorizes Kea commands,
//! classifies upstream failures and writes one access-log line per request.
//!
//! Request path: `request_filter` (identity, route, 404, route access 403; Kea routes are
//! served here, see `kea::serve`) → `upstream_peer` (load balancer) →
//! `upstream_request_filter` (forwarding headers) → Pingora proxies → `logging`.
//! Failures: `fail_to_connect` / `error_while_proxy` classify → `fail_to_proxy` answers.

#[doc(hidden)]
pub mod basic;
pub(crate) mod builtin;
mod ctx;
pub mod filter;
mod forward;
pub mod kea;
mod path;
mod reply;
#[doc(hidden)]
pub mod route;

pub(crate) use ctx::RequestCtx;

use crate::audit::{AuditEvent, AuditSink, HttpEvent, Verdict};
use crate::authz::{Guarded, Identity, Question, Target};
use crate::config::LogFormat;
use crate::logsafe::{Esc, EscText};
use crate::metrics;
use crate::upstream::{FailureKind, UpstreamGroup};
use async_trait::async_trait;
use filter::{Chain, Phases};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use route::{normalize_host, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The HTTP proxy logic of one listener.
pub(crate) struct HttpGateway {
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
    /// The HTTP filters, built-in then added, by phase.
    filters: Arc<Chain>,
    /// How the access line is written.
    log_format: LogFormat,
    /// When this gateway was built (the agent's `status-get` uptime on `kea.services` routes).
    started: Instant,
    /// The listener's bounds on a slow client.
    client_bounds: ClientBounds,
    /// One refusal line per kind per 10 s: a client can repeat a refusal at will, and each is
    /// in the access log (and, for Kea commands, the audit) anyway.
    refusal_log: [crate::logging::Sampler; Refused::COUNT],
}

/// What a refusal line is about, for [`HttpGateway::refusal_log`].
#[derive(Debug, Clone, Copy)]
enum Refused {
    Basic,
    Route,
    Authorizer,
    Kea,
    Bearer,
}

impl Refused {
    const COUNT: usize = 5;
}

/// How long a listener waits on a slow client once a request head is in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientBounds {
    /// Longest gap between two pieces of an HTTP/1 request body (`listeners[].body_timeout`;
    /// HTTP/2 bodies are watched below the codec, see `demux`).
    pub body: std::time::Duration,
    /// Longest a write toward the client may wait for it to take bytes
    /// (`listeners[].send_timeout`).
    pub send: std::time::Duration,
}

impl Default for ClientBounds {
    fn default() -> Self {
        ClientBounds {
            body: std::time::Duration::from_secs(30),
            send: std::time::Duration::from_secs(30),
        }
    }
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
            filters: Arc::default(),
            log_format: LogFormat::Text,
            started: Instant::now(),
            client_bounds: ClientBounds::default(),
            refusal_log: std::array::from_fn(|_| {
                crate::logging::Sampler::new(std::time::Duration::from_secs(10))
            }),
        }
    }

    /// Bounds slow clients with `bounds` (the defaults are the config's).
    pub fn with_client_bounds(mut self, bounds: ClientBounds) -> Self {
        self.client_bounds = bounds;
        self
    }

    /// Writes the access line in `format` (`log_format`; text by default).
    pub fn with_log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// Runs `filters` in every request's phases.
    pub(crate) fn with_filters(mut self, filters: Arc<Chain>) -> Self {
        self.filters = filters;
        self
    }

    /// Asks `authorizer` about every request (and Kea command) the YAML rules allowed.
    pub fn with_authorizer(mut self, authorizer: Option<Arc<Guarded>>) -> Self {
        self.authorizer = authorizer;
        self
    }
}

/// The access line in `log_format: json`: the text line's fields, typed, absent ones `null`.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    listener: &'a str,
    client: Option<String>,
    cn: Option<&'a str>,
    /// A verified bearer token's subject.
    sub: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    peer: Option<SocketAddr>,
    status: u16,
    #[serde(serialize_with = "crate::audit::three_decimals")]
    duration_ms: f64,
}

impl HttpGateway {
    /// Records a request answered here instead of forwarded ([`HttpEvent`]).
    fn audit_answer(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        route: &str,
        status: u16,
        verdict: Verdict,
        reason: &str,
    ) {
        self.audit.record(&AuditEvent::Http(HttpEvent {
            listener: self.listener.to_string(),
            client: session.client_addr().map(|a| a.to_string()),
            identity: ctx.caller(),
            route: route.to_string(),
            method: req_method(session).to_string(),
            path: session.req_header().uri.path().to_string(),
            status,
            verdict,
            reason: reason.to_string(),
        }));
    }

    /// Whether the answer being proxied is still within its group's `answer_timeout`
    /// (checked at its head and at every piece of its body; a peer that sends nothing at all
    /// meets `read_timeout` first). The clock starts when the request is sent upstream and
    /// again when its body has gone out: a long upload is not the answer's time.
    fn answer_in_time(&self, ctx: &mut RequestCtx) -> Result<()> {
        let Some(deadline) = ctx.answer_deadline else {
            return Ok(());
        };
        if Instant::now() < deadline {
            return Ok(());
        }
        ctx.answer_deadline = None;
        let limit = ctx
            .route
            .as_ref()
            .map(|r| r.answer_timeout(&self.upstreams))
            .unwrap_or_default();
        // Counted and logged once, by `error_while_proxy`, as an upstream timeout.
        Err(Error::explain(
            ErrorType::ReadTimedout,
            format!("no whole answer within answer_timeout ({limit:?})"),
        )
        .into_up())
    }
}

impl HttpGateway {
    /// The listener's bounds on this session.
    fn bound_session(&self, session: &mut Session) {
        // Pingora reads the next request head with no time limit once a client asked for
        // keep-alive: bound the idle wait (ignored for HTTP/2, closed by h2_idle_timeout).
        session.set_keepalive(Some(self.keepalive_secs));
        // HTTP/1 only (a no-op for HTTP/2): each body read, and each write toward a client
        // that stopped reading, is bounded; our own early answers and Kea answers included.
        session.set_read_timeout(Some(self.client_bounds.body));
        session.set_write_timeout(Some(self.client_bounds.send));
        // A request sent behind another on one HTTP/1 connection is answered after it, in
        // order (RFC 9112 §9.3.2), not dropped with the connection.
        session.as_downstream_mut().set_pipelining_enabled(true);
    }

    /// The route for the request's host and path.
    fn route_of(&self, session: &Session) -> Option<Arc<route::Route>> {
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
        self.router.find(&host, req.uri.path()).cloned()
    }

    /// `routes[].basic_auth`: the user, or a 401 (credentials are taken over TLS only).
    async fn basic_auth(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &route::Route,
    ) -> Result<bool> {
        let Some(auth) = &route.basic_auth else {
            return Ok(false);
        };
        let header = authorization(session);
        let user = match (self.https, header) {
            (true, Some(h)) => auth.check(Some(h)).await,
            _ => None,
        };
        if let Some(u) = user {
            ctx.user = Some(u);
            return Ok(false);
        }
        if header.is_some() {
            if let Some(more) = self.refusal_log[Refused::Basic as usize].admit_note() {
                log::warn!(target: "gatehouse::access", "listener {}: route {}: basic credentials refused ({}){more}", self.listener, route.name, Identity::of(ctx.tls_info()));
            }
        }
        let text = if self.https {
            "Unauthorized"
        } else {
            "Unauthorized: basic credentials are taken over TLS only"
        };
        let why = if header.is_some() {
            "basic credentials refused"
        } else {
            "no basic credentials"
        };
        self.audit_answer(session, ctx, &route.name, 401, Verdict::Unauthorized, why);
        reply::unauthorized(session, text, &auth.challenge()).await?;
        Ok(true)
    }

    /// `routes[].bearer`: the verified token becomes the caller, or the request is answered:
    /// 401 with an RFC 6750 challenge (no token, or one that did not verify), 403 (no
    /// certificate where the route needs both), 503 (the issuer's keys cannot be had).
    async fn bearer_auth(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &route::Route,
    ) -> Result<bool> {
        let Some(bearer) = &route.bearer else {
            return Ok(false);
        };
        let realm = &bearer.realm;
        let headers = &session.req_header().headers;
        if headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            // One would be checked and another forwarded (RFC 6750 §2: one method, once).
            let why = "more than one Authorization header";
            let challenge = format!("Bearer realm=\"{realm}\", error=\"invalid_request\"");
            self.audit_answer(session, ctx, &route.name, 400, Verdict::Denied, why);
            reply::with_challenge(session, 400, why, &challenge).await?;
            return Ok(true);
        }
        let header = authorization(session);
        let outcome = if self.https {
            bearer.check(header).await
        } else {
            crate::token::Outcome::Absent
        };
        let (status, text, challenge, why) = match outcome {
            crate::token::Outcome::Verified(t) => {
                ctx.token = Some(t);
                if bearer.mode != crate::config::BearerMode::TokenAndCert || ctx.client().is_some()
                {
                    return Ok(false);
                }
                let text = "this route needs a client certificate as well as a token";
                (403, text, None, text.to_string())
            }
            crate::token::Outcome::Absent => {
                if bearer.mode == crate::config::BearerMode::TokenOrCert && ctx.client().is_some() {
                    return Ok(false);
                }
                let text = if self.https {
                    "Unauthorized: a bearer token is required"
                } else {
                    "Unauthorized: bearer tokens are taken over TLS only"
                };
                let challenge = format!("Bearer realm=\"{realm}\"");
                (401, text, Some(challenge), "no bearer token".to_string())
            }
            crate::token::Outcome::Refused(r, issuer) => {
                let issuer = issuer.as_deref().unwrap_or("-").to_string();
                if let Some(more) = self.refusal_log[Refused::Bearer as usize].admit_note() {
                    log::warn!(target: "gatehouse::access", "listener {}: route {}: bearer token refused ({}, issuer {issuer}){more}", self.listener, route.name, r.label());
                }
                let why = format!("bearer token refused: {} (issuer {issuer})", r.label());
                if r == crate::token::Refusal::KeysUnavailable {
                    (503, r.description(), None, why)
                } else {
                    let challenge = format!(
                        "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                        r.description()
                    );
                    (401, r.description(), Some(challenge), why)
                }
            }
        };
        let verdict = if status == 401 {
            Verdict::Unauthorized
        } else {
            Verdict::Denied
        };
        self.audit_answer(session, ctx, &route.name, status, verdict, &why);
        match challenge {
            Some(c) => reply::unauthorized(session, text, &c).await?,
            None => reply::respond(session, status, text).await?,
        }
        Ok(true)
    }

    /// The route's `allow`/`deny`: a 403 for a caller it does not admit.
    async fn route_access(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &route::Route,
    ) -> Result<bool> {
        if route.access.admits(ctx.identity()) {
            return Ok(false);
        }
        let who = ctx.identity().to_string();
        if let Some(more) = self.refusal_log[Refused::Route as usize].admit_note() {
            log::warn!(target: "gatehouse::access", "listener {}: route {} refused {who} for {} {}{more}", self.listener, route.name, Esc(req_method(session)), Esc(session.req_header().uri.path()));
        }
        let text = format!("route '{}' is not allowed for {who}", route.name);
        self.audit_answer(session, ctx, &route.name, 403, Verdict::Denied, &text);
        reply::respond(session, 403, &text).await?;
        Ok(true)
    }

    /// The added authorizer, asked once the YAML rules allowed the request: a 403 if it denies.
    async fn ask_authorizer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &route::Route,
    ) -> Result<bool> {
        let Some(a) = &self.authorizer else {
            return Ok(false);
        };
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
        if d.allow {
            return Ok(false);
        }
        let who = ctx.identity().to_string();
        if let Some(more) = self.refusal_log[Refused::Authorizer as usize].admit_note() {
            log::warn!(target: "gatehouse::access", "listener {}: route {}: authorizer {} refused {who}: {}{more}", self.listener, route.name, a.name(), EscText(&d.reason));
        }
        let why = format!("authorizer {}: {}", a.name(), d.reason);
        self.audit_answer(session, ctx, &route.name, 403, Verdict::Denied, &why);
        reply::respond(session, 403, &d.reason).await?;
        Ok(true)
    }

    /// The filters' `request` phase: an edge answer, audited (a 429 as `rate_limited`).
    async fn request_filters(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &route::Route,
    ) -> Result<bool> {
        if !self.filters.runs(Phases::REQUEST) {
            return Ok(false);
        }
        let edge = match ctx.view(session, &self.listener) {
            Some(view) => self.filters.request(&view).await,
            None => None,
        };
        let Some((filter, a)) = edge else {
            return Ok(false);
        };
        log::debug!(target: "gatehouse::access", "listener {}: route {}: answered by filter {filter}", self.listener, route.name);
        let verdict = if a.status == 429 {
            Verdict::RateLimited
        } else {
            Verdict::Answered
        };
        let why = format!("filter {filter}");
        self.audit_answer(session, ctx, &route.name, a.status, verdict, &why);
        reply::answer(session, a).await?;
        Ok(true)
    }
}

/// The request's `Authorization` value, as sent.
fn authorization(session: &Session) -> Option<&[u8]> {
    session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
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

#[async_trait]
impl ProxyHttp for HttpGateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.tls = session.digest().and_then(|d| d.ssl_digest.clone());
        self.bound_session(session);
        if let Err(e) = normalize_request_path(session) {
            reply::respond(session, 400, &e.to_string()).await?;
            return Ok(true);
        }
        let Some(route) = self.route_of(session) else {
            reply::respond(session, 404, "no route for this host and path").await?;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        // Each step answers (and audits) a refusal itself; `true`: the request is answered.
        if self.basic_auth(session, ctx, &route).await?
            || self.bearer_auth(session, ctx, &route).await?
            || self.route_access(session, ctx, &route).await?
            || self.ask_authorizer(session, ctx, &route).await?
            || self.request_filters(session, ctx, &route).await?
        {
            return Ok(true);
        }
        if let Some(kea) = &route.kea {
            let flow = kea::KeaFlow {
                listener: &self.listener,
                https: self.https,
                upstreams: &self.upstreams,
                connector: &self.connector,
                metrics: &self.metrics,
                audit: &*self.audit,
                filters: &self.filters,
                authorizer: self.authorizer.as_deref(),
                started: self.started,
                refusal_log: &self.refusal_log[Refused::Kea as usize],
            };
            flow.serve(session, ctx, &route, kea).await?;
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
        let Some(addr) = group.select(ctx::balance_key(session, ctx).as_bytes()) else {
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
        forward::forwarding_headers(self.https, session, route, ctx.client(), req)?;
        forward::upstream_credentials(
            route,
            &self.upstreams[route.upstream],
            ctx.token.is_some(),
            req,
        )?;
        ctx.answer_deadline = Some(Instant::now() + route.answer_timeout(&self.upstreams));
        forward::filter_upstream(&self.filters, &self.listener, session, ctx, req)?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if end_of_stream {
            if let (Some(deadline), Some(route)) = (&mut ctx.answer_deadline, &ctx.route) {
                *deadline = Instant::now() + route.answer_timeout(&self.upstreams);
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.answer_in_time(ctx)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        self.answer_in_time(ctx).map(|()| None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::filter_response(&self.filters, &self.listener, session, ctx, resp);
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
                ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::WriteTimedout
                | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => 0,
            // A body that stopped coming (`body_timeout`).
            (None, ErrorType::ReadTimedout, ErrorSource::Downstream) => 408,
            (None, _, ErrorSource::Downstream) => 400,
            (None, _, ErrorSource::Upstream) => 502,
            (None, _, _) => 500,
        };
        if ctx.failure.is_none() && e.esource() == &ErrorSource::Downstream {
            let phase = match e.etype() {
                ErrorType::ReadTimedout => Some("body"),
                ErrorType::WriteTimedout => Some("send"),
                _ => None,
            };
            if let Some(phase) = phase {
                self.metrics
                    .http_client_timeouts
                    .with_label_values(&[&self.listener, phase])
                    .inc();
            }
        }
        if code > 0 {
            let text = match ctx.failure {
                Some(kind) => kind.message(),
                None => http::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_string(),
            };
            if let Err(err) = reply::respond(session, code, &text).await {
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
        if self.filters.runs(Phases::LOGGING) {
            if let Some(view) = ctx.view(session, &self.listener) {
                self.filters.logging(&view, status, elapsed);
            }
        }
        // The line is built only if it will be written: this runs on every request.
        if !log::log_enabled!(target: "gatehouse::access", log::Level::Info) {
            return;
        }
        let req = session.req_header();
        let client = session.client_addr();
        let cn = ctx.client().and_then(|c| c.cn.as_deref());
        let sub = ctx.token.as_ref().map(|t| t.sub.as_str());
        if self.log_format == LogFormat::Json {
            let line = AccessLine {
                listener: &self.listener,
                client: client.map(|a| a.to_string()),
                cn,
                sub,
                method: req.method.as_str(),
                path: req.uri.path(),
                route: ctx.route.as_ref().map(|r| &*r.name),
                peer: ctx.peer,
                status,
                // Written to the microsecond (three decimals), as the text line.
                duration_ms: elapsed.as_secs_f64() * 1e3,
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
            "listener={} client={} cn={} sub={} method={} path={} route={} peer={} status={} duration_ms={:.3}",
            self.listener,
            client,
            crate::logsafe::EscOpt(cn),
            crate::logsafe::EscOpt(sub),
            Esc(req.method.as_str()),
            Esc(req.uri.path()),
            route,
            peer,
            status,
            elapsed.as_secs_f64() * 1000.0
        );
    }
}
