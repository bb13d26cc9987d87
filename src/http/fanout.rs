//! Kea fan-out (`routes[].kea.fan_out: all`): an allowed command goes to every peer of the
//! route's upstream group at once, and the answer is one list — every peer's answer
//! elements in peer order, each tagged with `"peer"`. Kea's Control Agent does this for its
//! local daemons (`"service": ["dhcp4", "dhcp6"]`); this does it across hosts.
//!
//! Built as an [`HttpFilter`] whose `kea_command` phase answers at the edge: the YAML rules
//! (and any authorizer) have decided before it runs, so a denied command reaches no peer.
//! It is registered after the filters an embedder adds, so theirs still see the command.

use super::filter::{EdgeAnswer, HttpAction, HttpFilter, Request};
use super::kea::Command;
use super::kea_flow::{upstream_request, RESULT_CAPTURE};
use crate::metrics::Metrics;
use crate::upstream::{FailureKind, UpstreamGroup};
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The filter's name (logs, and how the audit tells a fan-out from an edge answer).
pub const NAME: &str = "kea-fan-out";

/// Why one peer contributed no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerError {
    /// Connect, TLS, read or the group's `read_timeout` (see [`FailureKind`]).
    Upstream(FailureKind),
    /// Answered, but not with a JSON list or object.
    NotJson,
    /// Answered with a non-2xx status.
    Status(u16),
}

impl PeerError {
    /// The metric label and the class in `"upstream error: <class>"`.
    fn label(self) -> &'static str {
        match self {
            PeerError::Upstream(k) => k.label(),
            PeerError::NotJson => "not_json",
            PeerError::Status(_) => "status",
        }
    }
}

/// The built-in filter behind `fan_out: all`.
pub struct KeaFanOut {
    /// Route name → index into `upstreams`.
    routes: HashMap<String, usize>,
    upstreams: Arc<[UpstreamGroup]>,
    connector: Arc<Connector>,
    metrics: Arc<Metrics>,
}

impl KeaFanOut {
    /// For the given (route name, upstream index) pairs.
    pub fn new(
        routes: impl IntoIterator<Item = (String, usize)>,
        upstreams: Arc<[UpstreamGroup]>,
        metrics: Arc<Metrics>,
    ) -> KeaFanOut {
        KeaFanOut {
            routes: routes.into_iter().collect(),
            upstreams,
            connector: Arc::new(Connector::new(None)),
            metrics,
        }
    }
}

#[async_trait::async_trait]
impl HttpFilter for KeaFanOut {
    fn name(&self) -> &str {
        NAME
    }

    async fn kea_command(&self, req: &Request<'_>, cmd: &Command, body: &[u8]) -> HttpAction {
        let Some(&g) = self.routes.get(req.route) else {
            return HttpAction::Continue;
        };
        let group = &self.upstreams[g];
        let body = Bytes::copy_from_slice(body);
        // One task per peer, all at once; each bounded by the group's read_timeout.
        let tasks: Vec<_> = group
            .addrs()
            .iter()
            .map(|&addr| {
                let (upstreams, connector) = (self.upstreams.clone(), self.connector.clone());
                let (header, body) = (req.header.clone(), body.clone());
                tokio::spawn(async move {
                    let group = &upstreams[g];
                    match tokio::time::timeout(
                        group.read_timeout(),
                        ask(&connector, group, addr, &header, body),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(PeerError::Upstream(FailureKind::Timeout)),
                    }
                })
            })
            .collect();
        let mut merged = Vec::new();
        for (task, &addr) in tasks.into_iter().zip(group.addrs()) {
            let outcome = task
                .await
                .unwrap_or(Err(PeerError::Upstream(FailureKind::Other)));
            let peer = addr.to_string();
            let label = match &outcome {
                Ok(_) => "ok",
                Err(e) => e.label(),
            };
            self.metrics
                .kea_fanout_peers
                .with_label_values(&[req.route, &peer, label])
                .inc();
            match outcome {
                Ok(elements) => merged.extend(elements.into_iter().map(|mut e| {
                    if let Value::Object(m) = &mut e {
                        m.insert("peer".into(), Value::String(peer.clone()));
                    }
                    e
                })),
                Err(e) => {
                    log::warn!(target: "gatehouse::upstream", "upstream {} peer {peer}: fan-out of '{}' failed ({})", group.name, crate::logsafe::Esc(&cmd.command), e.label());
                    if let PeerError::Upstream(k) = e {
                        self.metrics.upstream_error(&group.name, k.label());
                    }
                    merged.push(json!({
                        "result": 1,
                        "text": format!("upstream error: {}", e.label()),
                        "peer": peer,
                    }));
                }
            }
        }
        HttpAction::Answer(EdgeAnswer::json(200, &Value::Array(merged)))
    }
}

/// Sends the command to one peer over the group's TLS settings and pool; its answer elements.
async fn ask(
    connector: &Connector,
    group: &UpstreamGroup,
    addr: SocketAddr,
    down: &pingora_http::RequestHeader,
    body: Bytes,
) -> Result<Vec<Value>, PeerError> {
    let upstream = |e: Box<pingora_error::Error>| PeerError::Upstream(FailureKind::classify(&e));
    let peer = group.peer(addr);
    let req = upstream_request(down, &group.host_header(addr), &body).map_err(upstream)?;
    let (mut up, _reused) = connector.get_http_session(&peer).await.map_err(upstream)?;
    up.write_request_header(Box::new(req))
        .await
        .map_err(upstream)?;
    up.write_request_body(body, true).await.map_err(upstream)?;
    up.finish_request_body().await.map_err(upstream)?;
    up.read_response_header().await.map_err(upstream)?;
    let status = up.response_header().map_or(0, |h| h.status.as_u16());
    let mut answer = BytesMut::new();
    while let Some(chunk) = up.read_response_body().await.map_err(upstream)? {
        if answer.len() + chunk.len() > RESULT_CAPTURE {
            return Err(PeerError::Upstream(FailureKind::Other));
        }
        answer.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(up, &peer, Some(group.idle_timeout()))
        .await;
    if !(200..300).contains(&status) {
        return Err(PeerError::Status(status));
    }
    match serde_json::from_slice::<Value>(&answer) {
        Ok(Value::Array(elements)) => Ok(elements),
        Ok(one @ Value::Object(_)) => Ok(vec![one]),
        _ => Err(PeerError::NotJson),
    }
}
