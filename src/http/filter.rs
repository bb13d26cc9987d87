//! HTTP filters: phases of Gatehouse's one `ProxyHttp` that embedders can join.
//!
//! Pingora's own `HttpModules` can neither answer a request early nor see the session, so, as
//! River and pingap do, Gatehouse runs its own filter list inside its proxy. Filters run in the
//! order added, after routing and after the YAML rules and the authorizer allowed the request:
//! - [`HttpFilter::request`] may answer at the edge (nothing goes upstream);
//! - [`HttpFilter::kea_command`] sees a parsed Kea command on a `kea:` route and may answer it
//!   (the answer is audited and counted like any command);
//! - [`HttpFilter::upstream_request`] may change the request going upstream;
//! - [`HttpFilter::kea_answer`] may edit Kea's (parsed) answer to a command, for the commands
//!   the filter declares with [`HttpFilter::wants_kea_answer`] (only those answers are
//!   buffered; the others stream through untouched);
//! - [`HttpFilter::response`] may change the response header going downstream;
//! - [`HttpFilter::logging`] sees every finished request.
//!
//! The built-in forwarding headers (`X-Forwarded-For`/`-Proto`, the `X-Forwarded-Client-Cert`
//! rules) run before the added `upstream_request` phases.

use super::kea::Command;
use crate::authz::Identity;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::time::Duration;

/// A request as filters see it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The listener's name.
    pub listener: &'a str,
    /// The caller.
    pub identity: Identity<'a>,
    /// The caller's address, when the connection has one.
    pub client: Option<IpAddr>,
    /// The route it matched.
    pub route: &'a str,
    /// The downstream request header (path already normalised).
    pub header: &'a RequestHeader,
}

/// An answer given at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
    /// More response headers (e.g. `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl EdgeAnswer {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> EdgeAnswer {
        EdgeAnswer {
            status,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
            headers: Vec::new(),
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, text: impl Into<String>) -> EdgeAnswer {
        EdgeAnswer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(text.into()),
            headers: Vec::new(),
        }
    }

    /// A refusal the way Gatehouse's own are written: Kea-shaped JSON
    /// (`{"result": status, "text": …}`) when the request is JSON, else a line of text.
    pub fn refusal(req: &Request<'_>, status: u16, text: &str) -> EdgeAnswer {
        let json = req
            .header
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if json {
            EdgeAnswer::json(
                status,
                &serde_json::json!({ "result": status, "text": text }),
            )
        } else {
            EdgeAnswer::text(status, format!("{text}\n"))
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> EdgeAnswer {
        self.headers.push((name, value.into()));
        self
    }
}

/// What a request or command phase decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAction {
    /// Go on: next filter, then upstream.
    Continue,
    /// Answer now; nothing goes upstream.
    Answer(EdgeAnswer),
}

/// An HTTP filter. Every phase has a default that does nothing, so a filter implements only
/// what it needs.
///
/// ```
/// use gatehouse::http::filter::{EdgeAnswer, HttpAction, HttpFilter, Request};
/// use gatehouse::http::kea::Command;
///
/// /// Answers `gatehouse-whoami` at the edge with the caller's identity.
/// struct WhoAmI;
///
/// #[gatehouse::async_trait]
/// impl HttpFilter for WhoAmI {
///     fn name(&self) -> &str {
///         "whoami"
///     }
///     async fn kea_command(&self, req: &Request<'_>, cmd: &Command, _body: &[u8]) -> HttpAction {
///         if cmd.command != "gatehouse-whoami" {
///             return HttpAction::Continue;
///         }
///         let text = req.identity.to_string();
///         HttpAction::Answer(EdgeAnswer::json(200, &serde_json::json!([{ "result": 0, "text": text }])))
///     }
/// }
/// ```
#[async_trait]
pub trait HttpFilter: Send + Sync + 'static {
    /// A short name for logs and audit records.
    fn name(&self) -> &str;

    /// A request on any route, after routing, the YAML rules and the authorizer.
    async fn request(&self, _req: &Request<'_>) -> HttpAction {
        HttpAction::Continue
    }

    /// A Kea command, parsed and allowed, before it is forwarded.
    async fn kea_command(&self, _req: &Request<'_>, _cmd: &Command, _body: &[u8]) -> HttpAction {
        HttpAction::Continue
    }

    /// Whether [`HttpFilter::kea_answer`] should see Kea's answer to `cmd`. Answers no filter
    /// wants are streamed, not parsed.
    fn wants_kea_answer(&self, _req: &Request<'_>, _cmd: &Command) -> bool {
        false
    }

    /// Kea's answer to `cmd` (a list with one element per service, or one object), to edit in
    /// place; it is sent with its new length. Called only when [`HttpFilter::wants_kea_answer`]
    /// said so and the answer is JSON.
    fn kea_answer(&self, _req: &Request<'_>, _cmd: &Command, _answer: &mut serde_json::Value) {}

    /// The request about to go upstream. An `Err` fails the request with 500.
    fn upstream_request(
        &self,
        _req: &Request<'_>,
        _upstream: &mut RequestHeader,
    ) -> Result<(), String> {
        Ok(())
    }

    /// The response header about to go downstream.
    fn response(&self, _req: &Request<'_>, _resp: &mut ResponseHeader) {}

    /// A finished request: its status (0 when nothing was answered) and duration.
    fn logging(&self, _req: &Request<'_>, _status: u16, _elapsed: Duration) {}
}
