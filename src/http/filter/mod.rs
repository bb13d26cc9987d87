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
//!
//! A filter says which phases it implements ([`HttpFilter::phases`]); the gateway's `Chain`
//! calls a filter only in those, and a phase no filter declared costs a request nothing (no
//! view built, no future boxed).

mod chain;

pub(crate) use chain::Chain;

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

/// The phases of an [`HttpFilter`], as a set: `Phases::REQUEST | Phases::RESPONSE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Phases(u8);

impl Phases {
    /// No phase.
    pub const NONE: Phases = Phases(0);
    /// [`HttpFilter::request`].
    pub const REQUEST: Phases = Phases(1);
    /// [`HttpFilter::kea_command`].
    pub const KEA_COMMAND: Phases = Phases(1 << 1);
    /// [`HttpFilter::wants_kea_answer`] and [`HttpFilter::kea_answer`].
    pub const KEA_ANSWER: Phases = Phases(1 << 2);
    /// [`HttpFilter::upstream_request`].
    pub const UPSTREAM_REQUEST: Phases = Phases(1 << 3);
    /// [`HttpFilter::response`].
    pub const RESPONSE: Phases = Phases(1 << 4);
    /// [`HttpFilter::logging`].
    pub const LOGGING: Phases = Phases(1 << 5);
    /// Every phase (the default of [`HttpFilter::phases`]).
    pub const ALL: Phases = Phases((1 << 6) - 1);

    /// Whether every phase of `other` is in `self`.
    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;

    fn bitor(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }
}

/// An HTTP filter. Every phase has a default that does nothing, so a filter implements only
/// what it needs, and says which with [`HttpFilter::phases`] (by default all of them: a filter
/// that does not say is called everywhere and pays a boxed future per request in the async
/// ones).
///
/// ```
/// use gatehouse::http::filter::{EdgeAnswer, HttpAction, HttpFilter, Phases, Request};
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
///     fn phases(&self) -> Phases {
///         Phases::KEA_COMMAND
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

    /// The phases this filter implements; it is called in those only. A phase left out is
    /// never called, even if implemented.
    fn phases(&self) -> Phases {
        Phases::ALL
    }

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

    /// The request about to go upstream. An `Err` fails the request with 500 (and is logged
    /// with the filter's name).
    fn upstream_request(
        &self,
        _req: &Request<'_>,
        _upstream: &mut RequestHeader,
    ) -> crate::Result<()> {
        Ok(())
    }

    /// The response header about to go downstream.
    fn response(&self, _req: &Request<'_>, _resp: &mut ResponseHeader) {}

    /// A finished request: its status (0 when nothing was answered) and duration.
    fn logging(&self, _req: &Request<'_>, _status: u16, _elapsed: Duration) {}
}
