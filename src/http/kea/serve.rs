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
//!
//! This file is the entry ([`KeaFlow::serve`]): read, parse, decide, then the filters'
//! `kea_command` phase; `send` and `stream` forward what was allowed.

use super::flow::{KeaFlow, Record};
use super::{self as kea, KeaPolicy};
use crate::audit::Verdict;
use crate::http::ctx::RequestCtx;
use crate::http::filter::{EdgeAnswer, Phases};
use crate::http::reply::{self, respond};
use crate::http::route::Route;
use crate::logsafe::EscText;
use bytes::{Bytes, BytesMut};
use pingora_error::Result;
use pingora_proxy::Session;

impl KeaFlow<'_> {
    /// Serves one request on a route with a `kea:` block; the response is always written.
    pub(crate) async fn serve(
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

    /// The added filters' `kea_command` phase: the first answer, and who gave it.
    async fn filter_command(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        cmd: &kea::Command,
        body: &[u8],
    ) -> Option<(String, EdgeAnswer)> {
        if !self.filters.runs(Phases::KEA_COMMAND) {
            return None;
        }
        let view = ctx.view(session, self.listener)?;
        let (by, answer) = self.filters.kea_command(&view, cmd, body).await?;
        Some((by.to_string(), answer))
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
