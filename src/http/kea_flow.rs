//! Serving a Kea route: the command is read (bounded), parsed and authorized *before* any
//! upstream connection exists, so Kea never sees a refused command; an allowed one is
//! forwarded from the buffer with `Content-Length` (Kea answers chunked bodies with 400)
//! through Pingora's HTTP connector and pool, and the answer streamed back while its
//! `result` codes are read for the audit log.
//!
//! Pingora's proxy path can only replay a body it buffered itself (64 KiB), which is why an
//! allowed command is sent from here rather than handed back to the proxy.

use super::kea::{self, command_label, KeaPolicy};
use super::route::Route;
use super::{balance_key, respond, HttpGateway, RequestCtx};
use crate::audit::{AuditEvent, Caller, KeaEvent};
use crate::logsafe::EscText;
use crate::upstream::FailureKind;
use bytes::{Bytes, BytesMut};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Kea's answer kept for reading result codes; the rest is streamed without a copy.
pub(super) const RESULT_CAPTURE: usize = 1 << 20;

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

impl HttpGateway {
    /// Serves one request on a route with a `kea:` block; the response is always written.
    pub(super) async fn serve_kea(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        policy: &KeaPolicy,
    ) -> Result<()> {
        let who = crate::authz::Identity::of(ctx.tls_info()).to_string();
        let outcome = self.decide_kea(session, ctx, policy).await?;
        let mut peers = None;
        let (cmd, verdict, status, reason, results) = match outcome {
            Decision::Refused {
                status,
                text,
                cmd,
                verdict,
            } => {
                respond(session, status, &text).await?;
                log::warn!(target: "gatehouse::access", "listener {}: route {}: {who}: {}", self.listener, route.name, EscText(&text));
                (cmd, verdict, status, Some(text), None)
            }
            Decision::Allowed(cmd, body) => {
                match self.filter_command(session, ctx, &cmd, &body).await {
                    Some((by, a)) => {
                        let status = a.status;
                        let results = kea::result_codes(&a.body);
                        super::answer(session, a).await?;
                        log::info!(target: "gatehouse::access", "listener {}: route {}: {who}: command answered by filter {by}", self.listener, route.name);
                        (Some(cmd), "answered", status, None, Some(results))
                    }
                    None if route.fan_out => {
                        let (status, results, per_peer) =
                            self.forward_fanout(session, ctx, route, &cmd, body).await?;
                        peers = per_peer;
                        (Some(cmd), "allowed", status, None, Some(results))
                    }
                    None => {
                        let (status, results) = self
                            .forward_buffered(session, ctx, route, &cmd, body)
                            .await?;
                        (Some(cmd), "allowed", status, None, Some(results))
                    }
                }
            }
        };
        let command = cmd.as_ref().map(|c| c.command.as_str());
        self.metrics
            .kea_commands
            .with_label_values(&[
                &route.name,
                command.map(command_label).unwrap_or("other"),
                verdict,
            ])
            .inc();
        self.audit.record(&AuditEvent::Kea(KeaEvent {
            listener: self.listener.to_string(),
            client: session.client_addr().map(|a| a.to_string()),
            identity: Caller {
                cn: ctx.client().and_then(|c| c.cn.clone()),
                fingerprint: ctx.client().map(|c| c.fingerprint.clone()),
            },
            route: route.name.to_string(),
            command: command.map(str::to_string),
            services: cmd.as_ref().map(|c| c.effective_services().to_vec()),
            verdict,
            status,
            reason,
            results,
            peers,
            duration_ms: ctx.start.elapsed().as_secs_f64() * 1000.0,
        }));
        Ok(())
    }

    /// The added filters' `kea_command` phase: the first answer, and who gave it.
    async fn filter_command(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        cmd: &kea::Command,
        body: &[u8],
    ) -> Option<(String, super::filter::EdgeAnswer)> {
        let view = self.view(session, ctx)?;
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
                    verdict: "malformed",
                })
            }
        };
        let cmd = match kea::parse(&body) {
            Ok(c) => c,
            Err(text) => {
                return Ok(Decision::Refused {
                    status: 400,
                    text,
                    cmd: None,
                    verdict: "malformed",
                })
            }
        };
        let who = crate::authz::Identity::of(ctx.tls_info());
        match policy.decide(who, &cmd) {
            Ok(()) => {
                if let (Some(a), Some(route)) = (&self.authorizer, &ctx.route) {
                    let q = crate::authz::Question {
                        listener: &self.listener,
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
                            verdict: "denied",
                        });
                    }
                }
                Ok(Decision::Allowed(cmd, body))
            }
            Err(text) => Ok(Decision::Refused {
                status: 403,
                text,
                cmd: Some(cmd),
                verdict: "denied",
            }),
        }
    }

    /// Sends the buffered command upstream and streams the answer back.
    /// Returns the status answered and Kea's `result` codes.
    async fn forward_buffered(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        cmd: &kea::Command,
        body: Bytes,
    ) -> Result<(u16, Vec<i64>)> {
        let group = &self.upstreams[route.upstream];
        let Some(addr) = group.select(balance_key(session, ctx).as_bytes()) else {
            return self
                .upstream_failed(session, ctx, FailureKind::Unavailable, "no healthy peer")
                .await;
        };
        ctx.peer = Some(addr);
        let peer = group.peer(addr);

        let req = self.prepare(session, ctx, route, addr, &body)?;

        let sent = async {
            let (mut up, _reused) = self.connector.get_http_session(&peer).await?;
            up.write_request_header(Box::new(req)).await?;
            up.write_request_body(body, true).await?;
            up.finish_request_body().await?;
            up.read_response_header().await?;
            Ok::<_, Box<pingora_error::Error>>(up)
        }
        .await;
        let mut up = match sent {
            Ok(up) => up,
            Err(e) => {
                let kind = FailureKind::classify(&e);
                return self
                    .upstream_failed(session, ctx, kind, &e.to_string())
                    .await;
            }
        };
        let Some(head) = up.response_header() else {
            return self
                .upstream_failed(session, ctx, FailureKind::Other, "no response header")
                .await;
        };
        let mut resp: ResponseHeader = head.clone();
        let status = resp.status.as_u16();
        resp.remove_header("connection");
        resp.remove_header("keep-alive");
        let editors: Vec<usize> = match self.view(session, ctx) {
            Some(view) => (0..self.filters.len())
                .filter(|&i| self.filters[i].wants_kea_answer(&view, cmd))
                .collect(),
            None => Vec::new(),
        };
        if !editors.is_empty() {
            let answer = match self.edit_answer(session, ctx, cmd, &editors, &mut up).await {
                Ok(a) => a,
                Err((kind, why)) => {
                    let detail = format!("answer unreadable for the filters: {why}");
                    return self.upstream_failed(session, ctx, kind, &detail).await;
                }
            };
            resp.remove_header("transfer-encoding");
            resp.insert_header("content-length", answer.len().to_string())?;
            self.filter_response(session, ctx, &mut resp);
            session.write_response_header(Box::new(resp), false).await?;
            session
                .write_response_body(Some(answer.clone()), true)
                .await?;
            self.connector
                .release_http_session(up, &peer, Some(group.idle_timeout()))
                .await;
            return Ok((status, kea::result_codes(&answer)));
        }
        self.filter_response(session, ctx, &mut resp);
        session.write_response_header(Box::new(resp), false).await?;
        let mut captured = BytesMut::new();
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    if captured.len() < RESULT_CAPTURE {
                        captured.extend_from_slice(&chunk);
                    }
                    session.write_response_body(Some(chunk), false).await?;
                }
                Ok(None) => break,
                Err(e) => {
                    // Headers are out: all that is left is to count, log and cut the response.
                    let kind = FailureKind::classify(&e);
                    self.metrics.upstream_error(&group.name, kind.label());
                    log::warn!(target: "gatehouse::upstream", "upstream {} peer {addr}: response body failed ({}): {e}", group.name, kind.label());
                    return Err(e);
                }
            }
        }
        session.write_response_body(None, true).await?;
        self.connector
            .release_http_session(up, &peer, Some(group.idle_timeout()))
            .await;
        Ok((status, kea::result_codes(&captured)))
    }

    /// Sends the command to every peer of the route's group at once (`fan_out: all`), each
    /// copy prepared like a single forward (Host, forwarding headers, filters), and answers
    /// the merged list after the filters' `kea_answer` phase. Returns the status, the result
    /// codes and each peer's part.
    async fn forward_fanout(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        cmd: &kea::Command,
        body: Bytes,
    ) -> Result<(u16, Vec<i64>, Option<Vec<crate::audit::PeerResult>>)> {
        let group = &self.upstreams[route.upstream];
        let mut requests = Vec::with_capacity(group.addrs().len());
        for &addr in group.addrs() {
            requests.push((addr, self.prepare(session, ctx, route, addr, &body)?));
        }
        let mut answer = super::fanout::fan_out(
            &self.connector,
            &self.upstreams,
            route.upstream,
            requests,
            body,
            &route.name,
            &self.metrics,
        )
        .await;
        if let Some(view) = self.view(session, ctx) {
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
        self.filter_response(session, ctx, &mut resp);
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(out.clone()), true).await?;
        Ok((200, kea::result_codes(&out), kea::peer_results(&out)))
    }

    /// The request for peer `addr`: Kea's HTTP/1.1 framing (its Host, `Content-Length`),
    /// the forwarding headers, and the added filters' `upstream_request` edits.
    fn prepare(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        route: &Route,
        addr: std::net::SocketAddr,
        body: &Bytes,
    ) -> Result<RequestHeader> {
        let group = &self.upstreams[route.upstream];
        let mut req = upstream_request(session.req_header(), &group.host_header(addr), body)?;
        self.forwarding_headers(session, route, ctx.client(), &mut req)?;
        if !self.filters.is_empty() {
            self.filter_upstream(session, ctx, &mut req)?;
        }
        Ok(req)
    }

    /// Applies the added filters' `response` phase.
    fn filter_response(&self, session: &Session, ctx: &RequestCtx, resp: &mut ResponseHeader) {
        if let Some(view) = self.view(session, ctx) {
            for f in self.filters.iter() {
                f.response(&view, resp);
            }
        }
    }

    /// Reads Kea's whole answer (at most [`RESULT_CAPTURE`] bytes) and lets the filters at
    /// `editors` edit it; an answer that is not JSON goes back as it came.
    async fn edit_answer(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        cmd: &kea::Command,
        editors: &[usize],
        up: &mut pingora_core::protocols::http::client::HttpSession,
    ) -> std::result::Result<Bytes, (FailureKind, String)> {
        let mut body = BytesMut::new();
        loop {
            match up.read_response_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > RESULT_CAPTURE {
                        return Err((
                            FailureKind::Other,
                            format!("larger than {RESULT_CAPTURE} bytes"),
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
            self.view(session, ctx),
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
        kind: FailureKind,
        detail: &str,
    ) -> Result<(u16, Vec<i64>)> {
        let route = ctx.route.clone();
        let group = route
            .as_ref()
            .map(|r| &*self.upstreams[r.upstream].name)
            .unwrap_or("?");
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

enum Decision {
    Allowed(kea::Command, Bytes),
    Refused {
        status: u16,
        text: String,
        cmd: Option<kea::Command>,
        verdict: &'static str,
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
    while let Some(chunk) = session.as_downstream_mut().read_request_body().await? {
        if buf.len() + chunk.len() > max {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
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
