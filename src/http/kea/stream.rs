//! One HTTP peer: the command is sent from its buffer and the answer streamed back while its
//! `result` codes are read ([`super::json::ResultScanner`]), or held and edited when a filter
//! asked to see it.

use super::flow::{answer_overdue, set_peer_results, KeaFlow, Record};
use super::{self as kea, KeaPolicy};
use crate::audit::PeerResult;
use crate::http::ctx::RequestCtx;
use crate::http::filter::Phases;
use crate::http::forward;
use crate::upstream::FailureKind;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

impl KeaFlow<'_> {
    /// Sends the buffered command to one HTTP peer and streams the answer back (held only
    /// when a filter edits it), reading its result codes as it passes.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward_one(
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
        let req = match req {
            Some(r) => r,
            None => self.prepare(session, ctx, group_index, addr, &body)?,
        };
        let one = One::new(self, ctx, group_index, addr);
        let up = match one.send(self, req, body).await {
            Ok(up) => up,
            Err(e) => {
                let kind = FailureKind::classify(&e);
                let detail = e.to_string();
                return self
                    .failed_one(session, ctx, rec, group_index, kind, &detail)
                    .await;
            }
        };
        let Some(head) = up.response_header() else {
            let kind = FailureKind::Other;
            return self
                .failed_one(session, ctx, rec, group_index, kind, "no response header")
                .await;
        };
        let mut resp: ResponseHeader = head.clone();
        resp.remove_header("connection");
        resp.remove_header("keep-alive");
        let editors = match ctx.view(session, self.listener) {
            Some(view) if self.filters.runs(Phases::KEA_ANSWER) => {
                self.filters.kea_editors(&view, cmd)
            }
            _ => Vec::new(),
        };
        if editors.is_empty() {
            return self
                .answer_streamed(session, ctx, &one, up, resp, rec)
                .await;
        }
        let edit = Edit {
            cmd,
            editors: &editors,
            max: policy.max_answer,
        };
        self.answer_edited(session, ctx, &one, up, resp, edit, rec)
            .await
    }

    /// Kea's answer held whole, edited by the filters that asked, sent with its new length.
    #[allow(clippy::too_many_arguments)]
    async fn answer_edited(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        one: &One,
        mut up: HttpSession,
        mut resp: ResponseHeader,
        edit: Edit<'_>,
        rec: &mut Record<'_>,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let edited = tokio::time::timeout_at(
            one.deadline,
            self.edit_answer(session, ctx, edit.cmd, edit.editors, &mut up, edit.max),
        )
        .await
        .unwrap_or_else(|_| Err((FailureKind::Timeout, answer_overdue(one.limit).to_string())));
        let answer = match edited {
            Ok(a) => a,
            Err((kind, why)) => {
                let detail = format!("answer unreadable for the filters: {why}");
                return self
                    .failed_one(session, ctx, rec, one.group, kind, &detail)
                    .await;
            }
        };
        resp.remove_header("transfer-encoding");
        resp.insert_header("content-length", answer.len().to_string())?;
        forward::filter_response(self.filters, self.listener, session, ctx, &mut resp);
        let idle = self.upstreams[one.group].idle_timeout();
        self.connector
            .release_http_session(up, &one.peer, Some(idle))
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
            .map_err(|e| e.into_down())
    }

    /// Kea's answer streamed through as it comes, its result codes read on the way.
    async fn answer_streamed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        one: &One,
        mut up: HttpSession,
        mut resp: ResponseHeader,
        rec: &mut Record<'_>,
    ) -> Result<()> {
        rec.event.status = resp.status.as_u16();
        forward::filter_response(self.filters, self.listener, session, ctx, &mut resp);
        session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(|e| e.into_down())?;
        let mut scan = kea::json::ResultScanner::default();
        loop {
            let read = tokio::time::timeout_at(one.deadline, up.read_response_body())
                .await
                .unwrap_or_else(|_| Err(answer_overdue(one.limit)));
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
                    let group = &self.upstreams[one.group].name;
                    self.metrics.upstream_error(group, kind.label());
                    log::warn!(target: "gatehouse::upstream", "upstream {group} peer {}: response body failed ({}): {e}", one.addr, kind.label());
                    rec.event.results = Some(scan.codes().to_vec());
                    set_peer_results(rec, scan.codes(), Some(kind));
                    ctx.failure = Some(kind);
                    return Err(e.into_up());
                }
            }
        }
        let results = scan.into_codes();
        set_peer_results(rec, &results, None);
        rec.done(rec.event.status, results);
        session
            .write_response_body(None, true)
            .await
            .map_err(|e| e.into_down())?;
        let idle = self.upstreams[one.group].idle_timeout();
        self.connector
            .release_http_session(up, &one.peer, Some(idle))
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

    /// Reads Kea's whole answer (at most `max` bytes) and lets the filters at `editors` edit
    /// it; an answer that is not JSON goes back as it came.
    async fn edit_answer(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        cmd: &kea::Command,
        editors: &[usize],
        up: &mut HttpSession,
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
        self.filters.kea_answer(editors, &view, cmd, &mut answer);
        Ok(Bytes::from(answer.to_string()))
    }
}

/// The one peer a command goes to, and the bound on the whole exchange.
struct One {
    group: usize,
    addr: std::net::SocketAddr,
    peer: HttpPeer,
    /// The route's `answer_timeout` (`read_timeout` bounds only each read in it).
    limit: std::time::Duration,
    deadline: tokio::time::Instant,
}

impl One {
    fn new(flow: &KeaFlow<'_>, ctx: &RequestCtx, group: usize, addr: std::net::SocketAddr) -> One {
        let g = &flow.upstreams[group];
        let limit = ctx
            .route
            .as_ref()
            .map_or_else(|| g.answer_timeout(), |r| r.answer_timeout(flow.upstreams));
        One {
            group,
            addr,
            peer: g.peer(addr),
            limit,
            deadline: tokio::time::Instant::now() + limit,
        }
    }

    /// Connects (or reuses a pooled connection), sends the request and reads the answer's
    /// head, all within the deadline.
    async fn send(
        &self,
        flow: &KeaFlow<'_>,
        req: RequestHeader,
        body: Bytes,
    ) -> Result<HttpSession> {
        let sent = async {
            let (mut up, _reused) = flow.connector.get_http_session(&self.peer).await?;
            // Pingora's proxy sets these from the peer; a session used directly gets none.
            up.set_read_timeout(self.peer.options.read_timeout);
            up.set_write_timeout(self.peer.options.write_timeout);
            up.write_request_header(Box::new(req)).await?;
            up.write_request_body(body, true).await?;
            up.finish_request_body().await?;
            up.read_response_header().await?;
            Ok::<_, Box<pingora_error::Error>>(up)
        };
        tokio::time::timeout_at(self.deadline, sent)
            .await
            .unwrap_or_else(|_| Err(answer_overdue(self.limit)))
    }
}

/// What editing a held answer needs: the command, the filters that asked, the size bound.
struct Edit<'a> {
    cmd: &'a kea::Command,
    editors: &'a [usize],
    max: usize,
}
