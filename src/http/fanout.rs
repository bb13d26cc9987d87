//! Kea fan-out (`routes[].kea.fan_out: all`): an allowed command goes to every peer of the
//! route's upstream group at once, and the answer is one list — every peer's answer
//! elements in peer order, each tagged with `"peer"`. Kea's Control Agent does this for its
//! local daemons (`"service": ["dhcp4", "dhcp6"]`); this does it across hosts.
//!
//! It is the forwarding step of a fan-out route (`kea_flow` calls it where a plain route
//! forwards to one peer), so everything a forwarded command gets applies to each peer's copy:
//! the YAML rules and the authorizer decided before, added filters' `kea_command` phase ran
//! first, every copy carries the forwarding headers and the filters' `upstream_request`
//! edits, and the merged answer goes through the filters' `kea_answer` phase (so
//! `list-commands` is cut per caller here too).

use super::kea_flow::RESULT_CAPTURE;
use crate::metrics::Metrics;
use crate::upstream::{FailureKind, UpstreamGroup};
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// Why one peer contributed no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerError {
    /// Connect, TLS, read or the group's `read_timeout` (see [`FailureKind`]).
    Upstream(FailureKind),
    /// Answered, but not with a JSON list or object.
    NotJson,
    /// Answered with a non-2xx status.
    Status(u16),
    /// Answered more than the 1 MiB Gatehouse reads of a Kea answer.
    TooLarge,
}

impl PeerError {
    /// The metric label and the class in `"upstream error: <class>"`.
    fn label(self) -> &'static str {
        match self {
            PeerError::Upstream(k) => k.label(),
            PeerError::NotJson => "not_json",
            PeerError::Status(_) => "status",
            PeerError::TooLarge => "too_large",
        }
    }
}

/// Sends `requests` (one prepared request per peer of `group`, in peer order) at once and
/// merges the answers; a peer that fails contributes `{"result": 1, "text": "upstream
/// error: <class>", "peer": …}`. Nothing waits longer than the group's `read_timeout`.
pub(super) async fn fan_out(
    connector: &Arc<Connector>,
    upstreams: &Arc<[UpstreamGroup]>,
    group_index: usize,
    requests: Vec<(SocketAddr, RequestHeader)>,
    body: Bytes,
    route: &str,
    metrics: &Metrics,
) -> Value {
    let group = &upstreams[group_index];
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(addr, req)| {
            let (upstreams, connector, body) = (upstreams.clone(), connector.clone(), body.clone());
            let task = tokio::spawn(async move {
                let group = &upstreams[group_index];
                match tokio::time::timeout(
                    group.read_timeout(),
                    ask(&connector, group, addr, req, body),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err((PeerError::Upstream(FailureKind::Timeout), String::new())),
                }
            });
            (addr, task)
        })
        .collect();
    let mut merged = Vec::new();
    for (addr, task) in tasks {
        let outcome = task
            .await
            .unwrap_or_else(|e| Err((PeerError::Upstream(FailureKind::Other), e.to_string())));
        let peer = addr.to_string();
        let label = outcome.as_ref().map_or_else(|(e, _)| e.label(), |_| "ok");
        metrics
            .kea_fanout_peers
            .with_label_values(&[route, &peer, label])
            .inc();
        match outcome {
            Ok(elements) => merged.extend(elements.into_iter().map(|mut e| {
                if let Value::Object(m) = &mut e {
                    m.insert("peer".into(), Value::String(peer.clone()));
                }
                e
            })),
            Err((e, detail)) => {
                log::warn!(target: "gatehouse::upstream", "upstream {} peer {peer}: fan-out failed ({}) {detail}", group.name, e.label());
                if let PeerError::Upstream(k) = e {
                    metrics.upstream_error(&group.name, k.label());
                }
                merged.push(json!({
                    "result": 1,
                    "text": format!("upstream error: {}", e.label()),
                    "peer": peer,
                }));
            }
        }
    }
    Value::Array(merged)
}

/// Sends one prepared request to one peer over the group's TLS settings and pool; its
/// answer elements, or why not (with the underlying error for the log).
async fn ask(
    connector: &Connector,
    group: &UpstreamGroup,
    addr: SocketAddr,
    req: RequestHeader,
    body: Bytes,
) -> Result<Vec<Value>, (PeerError, String)> {
    let upstream = |e: Box<pingora_error::Error>| {
        (
            PeerError::Upstream(FailureKind::classify(&e)),
            e.to_string(),
        )
    };
    let peer = group.peer(addr);
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
            return Err((PeerError::TooLarge, format!("over {RESULT_CAPTURE} bytes")));
        }
        answer.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(up, &peer, Some(group.idle_timeout()))
        .await;
    if !(200..300).contains(&status) {
        return Err((PeerError::Status(status), format!("status {status}")));
    }
    match serde_json::from_slice::<Value>(&answer) {
        Ok(Value::Array(elements)) => Ok(elements),
        Ok(one @ Value::Object(_)) => Ok(vec![one]),
        _ => Err((PeerError::NotJson, String::new())),
    }
}
