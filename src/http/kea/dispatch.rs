//! The one forwarding step for answers held whole: a command sent to a list of targets at
//! once, each target's answer typed, merged in target order. Dispatch by `service` (one target
//! per daemon, `kea.services`) and `fan_out: all` (one target per peer of a group) are both
//! this; so is a daemon behind a UNIX control socket (its answer is checked whole).
//!
//! Every target is bounded by its group's `read_timeout` for the whole exchange and by the
//! route's `kea.max_answer` in size; a target that fails fills its slot with a Kea-shaped
//! error element, as the Control Agent did for a daemon it could not reach.

use crate::upstream::{FailureKind, UpstreamGroup};
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use serde_json::{json, Value};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where one copy of a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Control Agent's or daemon's HTTP(S) control socket.
    Tcp(SocketAddr),
    /// A daemon's UNIX control socket (bare JSON: the command, then one answer).
    Unix(Arc<Path>),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One copy of a command: for which service (on `kea.services` routes), to which group and
/// endpoint, with the HTTP request prepared for it (TCP endpoints).
pub struct Target {
    /// The `service` this copy serves, when dispatching by service.
    pub service: Option<String>,
    /// Index of the upstream group.
    pub group: usize,
    /// Where it goes, or why it cannot go (a service no group serves, no healthy peer):
    /// its slot is then that error.
    pub endpoint: Result<Endpoint, TargetError>,
    /// The request head for a TCP endpoint.
    pub request: Option<RequestHeader>,
}

/// Why a target contributed no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// Connect, TLS, read, or the group's `read_timeout` (see [`FailureKind`]).
    Upstream(FailureKind),
    /// Answered, but not with a JSON list or object.
    NotJson,
    /// Answered with a non-2xx status.
    Status(u16),
    /// Answered more than the route's `kea.max_answer`.
    TooLarge,
    /// No upstream serves the service.
    NotConfigured,
}

impl TargetError {
    /// The metric label and the class in `"upstream error: <class>"`.
    pub fn label(self) -> &'static str {
        match self {
            TargetError::Upstream(k) => k.label(),
            TargetError::NotJson => "not_json",
            TargetError::Status(_) => "status",
            TargetError::TooLarge => "too_large",
            TargetError::NotConfigured => "not_configured",
        }
    }
}

/// What one target answered.
pub struct Reply {
    /// The service it served, if dispatching by service.
    pub service: Option<String>,
    /// Index of the group it was sent to.
    pub group: usize,
    /// The endpoint's label (`127.0.0.1:8000`, `unix:/run/kea/…`, `-` when none).
    pub peer: String,
    /// Its answer's elements, or why there are none (with a detail for the log).
    pub outcome: Result<Vec<Value>, (TargetError, String)>,
}

impl Reply {
    /// The `result` codes this target contributed (`[1]` for a failure, as its slot says).
    pub fn results(&self) -> Vec<i64> {
        match &self.outcome {
            Ok(elements) => elements
                .iter()
                .filter_map(|e| e.get("result").and_then(Value::as_i64))
                .collect(),
            Err(_) => vec![1],
        }
    }
}

/// Shared by every copy of one command.
pub struct Dispatch<'a> {
    /// Pingora's connector and pool for HTTP endpoints.
    pub connector: &'a Arc<Connector>,
    /// The upstream table.
    pub upstreams: &'a Arc<[UpstreamGroup]>,
    /// Largest answer read from one target.
    pub max_answer: usize,
}

impl Dispatch<'_> {
    /// Sends `body` to every target at once and returns their replies in target order.
    pub async fn send(&self, targets: Vec<Target>, body: Bytes) -> Vec<Reply> {
        let tasks: Vec<_> = targets
            .into_iter()
            .map(|t| {
                let (upstreams, connector, body) =
                    (self.upstreams.clone(), self.connector.clone(), body.clone());
                let max = self.max_answer;
                let peer = t
                    .endpoint
                    .as_ref()
                    .map_or_else(|_| "-".to_string(), Endpoint::to_string);
                let (service, group) = (t.service.clone(), t.group);
                let task = tokio::spawn(async move {
                    let group = &upstreams[t.group];
                    let endpoint = match t.endpoint {
                        Ok(e) => e,
                        Err(e) => return Err((e, String::new())),
                    };
                    let asked = async {
                        match (endpoint, t.request) {
                            (Endpoint::Tcp(addr), Some(req)) => {
                                ask_http(&connector, group, addr, req, body, max).await
                            }
                            (Endpoint::Unix(path), _) => ask_unix(&path, body, max).await,
                            (Endpoint::Tcp(_), None) => Err((
                                TargetError::Upstream(FailureKind::Other),
                                "no request".into(),
                            )),
                        }
                    };
                    match tokio::time::timeout(group.read_timeout(), asked).await {
                        Ok(r) => r,
                        Err(_) => Err((
                            TargetError::Upstream(FailureKind::Timeout),
                            format!("no whole answer within {:?}", group.read_timeout()),
                        )),
                    }
                });
                (service, group, peer, task)
            })
            .collect();
        let mut replies = Vec::with_capacity(tasks.len());
        for (service, group, peer, task) in tasks {
            let outcome = task.await.unwrap_or_else(|e| {
                Err((TargetError::Upstream(FailureKind::Other), e.to_string()))
            });
            replies.push(Reply {
                service,
                group,
                peer,
                outcome,
            });
        }
        replies
    }
}

/// One list in target order: each target's elements (tagged with `"peer"` when `tag_peers`),
/// a failed target's slot a Kea-shaped error.
pub fn merge(replies: &[Reply], tag_peers: bool) -> Value {
    let mut merged = Vec::new();
    for r in replies {
        let tag = |mut e: Value| {
            if let (true, Value::Object(m)) = (tag_peers, &mut e) {
                m.insert("peer".into(), Value::String(r.peer.clone()));
            }
            e
        };
        match &r.outcome {
            Ok(elements) => merged.extend(elements.iter().cloned().map(tag)),
            Err((TargetError::NotConfigured, _)) => merged.push(tag(json!({
                "result": 1,
                "text": format!(
                    "forwarding socket is not configured for the server type {}",
                    r.service.as_deref().unwrap_or("-")
                ),
            }))),
            // The agent's words for a daemon it could not reach, with the class.
            Err((e, _)) => merged.push(tag(json!({
                "result": 1,
                "text": match &r.service {
                    Some(svc) => format!("unable to forward command to the {svc} service: upstream error: {}", e.label()),
                    None => format!("upstream error: {}", e.label()),
                },
            }))),
        }
    }
    Value::Array(merged)
}

/// One HTTP endpoint: the prepared request over the group's TLS settings and pool.
async fn ask_http(
    connector: &Connector,
    group: &UpstreamGroup,
    addr: SocketAddr,
    req: RequestHeader,
    body: Bytes,
    max: usize,
) -> Result<Vec<Value>, (TargetError, String)> {
    let upstream = |e: Box<pingora_error::Error>| {
        (
            TargetError::Upstream(FailureKind::classify(&e)),
            e.to_string(),
        )
    };
    let peer = group.peer(addr);
    let (mut up, _reused) = connector.get_http_session(&peer).await.map_err(upstream)?;
    up.set_read_timeout(peer.options.read_timeout);
    up.set_write_timeout(peer.options.write_timeout);
    up.write_request_header(Box::new(req))
        .await
        .map_err(upstream)?;
    up.write_request_body(body, true).await.map_err(upstream)?;
    up.finish_request_body().await.map_err(upstream)?;
    up.read_response_header().await.map_err(upstream)?;
    let status = up.response_header().map_or(0, |h| h.status.as_u16());
    let mut answer = BytesMut::new();
    while let Some(chunk) = up.read_response_body().await.map_err(upstream)? {
        if answer.len() + chunk.len() > max {
            return Err((
                TargetError::TooLarge,
                format!("over {max} bytes (kea.max_answer)"),
            ));
        }
        answer.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(up, &peer, Some(group.idle_timeout()))
        .await;
    if !(200..300).contains(&status) {
        return Err((TargetError::Status(status), format!("status {status}")));
    }
    elements(&answer)
}

/// One UNIX control socket: write the command, read one JSON answer (Kea closes the
/// connection after it; a complete JSON value ends the read as well).
async fn ask_unix(
    path: &Path,
    body: Bytes,
    max: usize,
) -> Result<Vec<Value>, (TargetError, String)> {
    let io = |e: std::io::Error| {
        let kind = match e.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                FailureKind::Refused
            }
            _ => FailureKind::Other,
        };
        (TargetError::Upstream(kind), e.to_string())
    };
    let mut s = tokio::net::UnixStream::connect(path).await.map_err(io)?;
    s.write_all(&body).await.map_err(io)?;
    let mut answer = BytesMut::with_capacity(4096);
    loop {
        let n = s.read_buf(&mut answer).await.map_err(io)?;
        if answer.len() > max {
            return Err((
                TargetError::TooLarge,
                format!("over {max} bytes (kea.max_answer)"),
            ));
        }
        if n == 0 {
            break;
        }
        // Kea writes its answer and closes; a whole object also ends it, so a daemon that
        // keeps the socket open does not cost the read timeout.
        if answer.last() == Some(&b'}') && serde_json::from_slice::<Value>(&answer).is_ok() {
            break;
        }
    }
    if answer.iter().all(u8::is_ascii_whitespace) {
        return Err((
            TargetError::Upstream(FailureKind::Other),
            "closed without an answer".into(),
        ));
    }
    elements(&answer)
}

/// A Kea answer's elements: a list (HTTP), or one object (UNIX sockets, Kea's own errors).
fn elements(answer: &[u8]) -> Result<Vec<Value>, (TargetError, String)> {
    match serde_json::from_slice::<Value>(answer) {
        Ok(Value::Array(elements)) => Ok(elements),
        Ok(one @ Value::Object(_)) => Ok(vec![one]),
        Ok(_) => Err((TargetError::NotJson, "not a list or object".into())),
        Err(e) => Err((TargetError::NotJson, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(service: &str, peer: &str, outcome: Result<Vec<Value>, TargetError>) -> Reply {
        Reply {
            service: Some(service.into()),
            group: 0,
            peer: peer.into(),
            outcome: outcome.map_err(|e| (e, String::new())),
        }
    }

    #[test]
    fn merged_in_target_order_with_failed_slots_kea_shaped() {
        let replies = [
            reply("dhcp6", "a", Ok(vec![json!({"result": 0, "text": "six"})])),
            reply("d2", "-", Err(TargetError::NotConfigured)),
            reply(
                "dhcp4",
                "b",
                Err(TargetError::Upstream(FailureKind::Timeout)),
            ),
        ];
        let m = merge(&replies, false);
        assert_eq!(
            m,
            json!([
                {"result": 0, "text": "six"},
                {"result": 1, "text": "forwarding socket is not configured for the server type d2"},
                {"result": 1, "text": "unable to forward command to the dhcp4 service: upstream error: timeout"},
            ])
        );
        assert_eq!(merge(&replies[..1], true)[0]["peer"], "a");
        assert_eq!(replies[0].results(), vec![0]);
        assert_eq!(replies[2].results(), vec![1]);
    }

    #[test]
    fn answer_shapes() {
        assert_eq!(elements(br#"[{"result":0}]"#).unwrap().len(), 1);
        assert_eq!(elements(br#"{"result":0}"#).unwrap().len(), 1);
        assert_eq!(elements(b"42").unwrap_err().0, TargetError::NotJson);
        assert_eq!(elements(b"{garbage").unwrap_err().0, TargetError::NotJson);
    }
}
