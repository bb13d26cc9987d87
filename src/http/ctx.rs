//! Per-request state: who is calling (certificate, basic-auth user, bearer token), the route, the peer
//! tried, and what failed; and the views of it that filters and the balancer take.

use super::filter::Request as FilterRequest;
use super::route::Route;
use crate::authz::Identity;
use crate::identity::{ClientCert, TlsInfo};
use crate::upstream::FailureKind;
use pingora_core::protocols::tls::SslDigest;
use pingora_proxy::Session;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Per-request state shared across the filters.
pub struct RequestCtx {
    pub(super) start: Instant,
    /// The basic-auth user, once the route's `basic_auth` checked the credentials.
    pub(super) user: Option<String>,
    /// The bearer token, once the route's `bearer` verified it.
    pub(super) token: Option<std::sync::Arc<crate::identity::BearerToken>>,
    pub(super) tls: Option<Arc<SslDigest>>,
    pub(super) route: Option<Arc<Route>>,
    pub(super) peer: Option<SocketAddr>,
    pub(super) connect_attempts: usize,
    pub(super) failure: Option<FailureKind>,
    /// When the answer being proxied must be whole (`answer_timeout`), set as it is asked.
    pub(super) answer_deadline: Option<Instant>,
}

impl RequestCtx {
    /// A request that has just arrived.
    pub(super) fn new() -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            user: None,
            token: None,
            tls: None,
            route: None,
            peer: None,
            connect_attempts: 0,
            failure: None,
            answer_deadline: None,
        }
    }

    /// The handshake facts of this request's connection (shared, parsed once).
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.tls.as_ref().and_then(|d| d.extension.get::<TlsInfo>())
    }

    /// The verified client certificate, if any.
    pub fn client(&self) -> Option<&ClientCert> {
        self.tls_info().and_then(|t| t.authenticated())
    }

    /// The caller as an audit event records it.
    pub fn caller(&self) -> crate::audit::Caller {
        crate::audit::Caller {
            cn: self.client().and_then(|c| c.cn.clone()),
            fingerprint: self.client().map(|c| c.fingerprint.clone()),
            user: self.user.clone(),
            token: self.token.as_ref().map(|t| crate::audit::TokenCaller {
                issuer: t.issuer.to_string(),
                iss: t.iss.clone(),
                sub: t.sub.clone(),
                client: t.client.clone(),
                jti: t.jti.clone(),
            }),
        }
    }

    /// The caller: a bearer token or a basic-auth user (with the certificate, if any), else
    /// the certificate, else anonymous.
    pub fn identity(&self) -> Identity<'_> {
        if let Some(token) = &self.token {
            return Identity::Token {
                token,
                cert: self.client(),
            };
        }
        match &self.user {
            Some(name) => Identity::User {
                name,
                cert: self.client(),
            },
            None => Identity::of(self.tls_info()),
        }
    }

    pub(super) fn route_name(&self) -> &str {
        self.route.as_ref().map(|r| &*r.name).unwrap_or("-")
    }

    /// The request as filters see it on `listener` (`None` before routing).
    pub(super) fn view<'a>(
        &'a self,
        session: &'a Session,
        listener: &'a str,
    ) -> Option<FilterRequest<'a>> {
        let route = self.route.as_ref()?;
        Some(FilterRequest {
            listener,
            identity: self.identity(),
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            route: &route.name,
            header: session.req_header(),
        })
    }
}

/// What consistent hashing keys on: who the client is, else where it is.
pub(super) fn balance_key(session: &Session, ctx: &RequestCtx) -> String {
    match ctx.client() {
        Some(c) => c.fingerprint.clone(),
        None => session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
    }
}
