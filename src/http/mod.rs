//! The HTTP side: a Pingora [`ProxyHttp`] that routes by host and path prefix to upstream
//! groups, forwards who the client is, classifies upstream failures and writes one
//! access-log line per request.
//!
//! Request path: `request_filter` (identity, route, 404) → `upstream_peer` (load balancer)
//! → `upstream_request_filter` (forwarding headers) → Pingora proxies → `logging`.
//! Failures: `fail_to_connect` / `error_while_proxy` classify → `fail_to_proxy` answers.

pub mod route;

use crate::metrics;
use crate::tls::TlsInfo;
use crate::upstream::{FailureKind, UpstreamGroup};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use route::{normalize_host, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The HTTP proxy logic of one listener.
pub struct HttpGateway {
    listener: Arc<str>,
    https: bool,
    router: Arc<Router>,
    upstreams: Arc<[UpstreamGroup]>,
}

impl HttpGateway {
    /// A gateway for `listener`; `https` is whether the listener terminates TLS.
    pub fn new(
        listener: &str,
        https: bool,
        router: Arc<Router>,
        upstreams: Arc<[UpstreamGroup]>,
    ) -> Self {
        HttpGateway {
            listener: listener.into(),
            https,
            router,
            upstreams,
        }
    }
}

/// Per-request state shared across the filters.
pub struct RequestCtx {
    start: Instant,
    tls: Option<Arc<SslDigest>>,
    route: Option<(Arc<str>, usize)>,
    peer: Option<SocketAddr>,
    connect_attempts: usize,
    failure: Option<FailureKind>,
}

impl RequestCtx {
    /// The handshake facts of this request's connection (shared, parsed once).
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref().and_then(|d| d.extension.get::<TlsInfo>())
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

/// Answers with a short body; Kea-shaped JSON (`{"result": code, "text": ...}`) when the
/// client speaks JSON, so kea-shell and scripts can parse Gatehouse's own errors.
async fn respond(session: &mut Session, status: u16, text: &str) -> Result<()> {
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
            tls: None,
            route: None,
            peer: None,
            connect_attempts: 0,
            failure: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.tls = session.digest().and_then(|d| d.ssl_digest.clone());
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
        match self.router.find(&host, req.uri.path()) {
            Some(r) => {
                ctx.route = Some((r.name.clone(), r.upstream));
                Ok(false)
            }
            None => {
                respond(session, 404, "no route for this host and path").await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some((_, idx)) = ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let group = &self.upstreams[idx];
        ctx.connect_attempts += 1;
        // Consistent hashing keys on who the client is, falling back to where it is.
        let key = match ctx.tls_info().and_then(|t| t.authenticated()) {
            Some(c) => c.fingerprint.clone(),
            None => session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
        };
        let Some(addr) = group.select(key.as_bytes()) else {
            ctx.failure = Some(FailureKind::Unavailable);
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[&group.name, FailureKind::Unavailable.label()])
                .inc();
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
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The edge is where the client is known: overwrite, never trust what it sent.
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
        // Identity headers are only ever built by Gatehouse; strip any the client sent.
        req.remove_header("x-forwarded-client-cert");
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
        let group = ctx.route.as_ref().map(|(_, i)| &self.upstreams[*i]);
        let name = group.map(|g| &*g.name).unwrap_or("?");
        metrics::UPSTREAM_ERRORS
            .with_label_values(&[name, kind.label()])
            .inc();
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
                .map(|(_, i)| &*self.upstreams[*i].name)
                .unwrap_or("?");
            metrics::UPSTREAM_ERRORS
                .with_label_values(&[name, kind.label()])
                .inc();
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
        let route = ctx.route.as_ref().map(|(n, _)| &**n).unwrap_or("-");
        let elapsed = ctx.start.elapsed();
        if status > 0 {
            metrics::HTTP_REQUESTS
                .with_label_values(&[route, metrics::status_class(status)])
                .inc();
            metrics::HTTP_DURATION
                .with_label_values(&[route])
                .observe(elapsed.as_secs_f64());
        }
        let req = session.req_header();
        let client = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let cn = ctx.tls_info().map(|t| t.cn_or_dash()).unwrap_or("-");
        let peer = ctx
            .peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        log::info!(
            target: "gatehouse::access",
            "listener={} client={} cn={} method={} path={} route={} peer={} status={} duration_ms={:.3}",
            self.listener,
            client,
            cn,
            req.method,
            req.uri.path(),
            route,
            peer,
            status,
            elapsed.as_secs_f64() * 1000.0
        );
    }
}
