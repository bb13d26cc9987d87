//! The audit trail: one typed [`AuditEvent`] for every Kea command (allowed, denied, malformed,
//! answered at the edge), every cluster message the relay denied, every HTTP request refused or
//! answered at the edge (route access, basic credentials, the authorizer, a rate limit, a
//! filter), and every cluster link refused before its upstream connection or replaced by a
//! newer one of its identity, handed to an [`AuditSink`].
//!
//! The built-in sink, [`JsonLines`] (`audit.path`), writes one JSON object per line to a file
//! (appended, one `write` per line so concurrent records never interleave) or to the log
//! target `gatehouse::audit`. Embedders replace it with
//! [`crate::Gatehouse::with_audit_sink`], e.g. to ship events to a SIEM.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

/// What became of an audited command, message, request or link (serialized in snake case:
/// `allowed`, `rate_limited`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Forwarded (a Kea command).
    Allowed,
    /// Refused by a rule, the policy, a filter or the authorizer.
    Denied,
    /// Could not be parsed or was over its size limit.
    Malformed,
    /// Named a `service` the route does not serve (a Kea daemon route).
    Misrouted,
    /// Answered at the edge by a filter.
    Answered,
    /// Basic credentials missing or wrong.
    Unauthorized,
    /// Over a `rate_limit`.
    RateLimited,
    /// A cluster link refused before its upstream connection.
    Refused,
    /// A cluster link closed for a newer one of the same identity.
    Replaced,
}

impl Verdict {
    /// The name as written in the audit line.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Malformed => "malformed",
            Verdict::Misrouted => "misrouted",
            Verdict::Answered => "answered",
            Verdict::Unauthorized => "unauthorized",
            Verdict::RateLimited => "rate_limited",
            Verdict::Refused => "refused",
            Verdict::Replaced => "replaced",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `verdict == "denied"`, as the audit line spells it.
impl PartialEq<&str> for Verdict {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Who a recorded caller was.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Caller {
    /// Verified subject CN.
    pub cn: Option<String>,
    /// SHA-256 of the verified leaf, lowercase hex.
    pub fingerprint: Option<String>,
    /// The basic-auth user (`routes[].basic_auth`), when one authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The verified bearer token (`routes[].bearer`), when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenCaller>,
}

/// What the audit records of a verified bearer token: who issued it to whom, and which one it
/// was (`jti`), so an IdP's own logs can be joined.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TokenCaller {
    /// The `issuers:` key that verified it.
    pub issuer: String,
    /// The `iss` claim.
    pub iss: String,
    /// The `sub` claim.
    pub sub: String,
    /// `client_id` (else `azp`).
    pub client: Option<String>,
    /// The `jti` claim.
    pub jti: Option<String>,
}

/// A Kea command and what became of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeaEvent {
    /// Listener name.
    pub listener: String,
    /// Client address.
    pub client: Option<String>,
    /// Who sent it.
    pub identity: Caller,
    /// Route name.
    pub route: String,
    /// `command`; `None` when the body did not parse.
    pub command: Option<String>,
    /// The services it runs on (`["ca"]` when none was named); `None` when it did not parse.
    pub services: Option<Vec<String>>,
    /// `allowed`, `denied`, `malformed`, `misrouted` (a `service` the route does not serve)
    /// or `answered` (by an added filter).
    pub verdict: Verdict,
    /// HTTP status answered.
    pub status: u16,
    /// Why it was refused, or why a forwarded command has no complete answer (upstream
    /// error, interrupted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Kea's `result` codes, one per service, when it was forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<i64>>,
    /// Each daemon or agent the command was sent to, with its own outcome (one per peer
    /// with `fan_out: all`, one per service on a `kea.services` route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PeerResult>>,
    /// Time from request start to the answer (written with at most 3 decimals).
    #[serde(serialize_with = "three_decimals")]
    pub duration_ms: f64,
}

/// Writes a duration with at most three decimals (a microsecond in `duration_ms`): a float
/// computed from a clock prints as `1.2372130000000001` otherwise.
pub(crate) fn three_decimals<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((v * 1000.0).round() / 1000.0)
}

/// One target's part of a forwarded Kea command.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerResult {
    /// The peer's address (`127.0.0.1:8000`, `unix:/run/kea/…`; `-` when none was reached).
    pub peer: String,
    /// The service it answered for, when the command named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Its `result` codes (one per service), or `[1]` when it failed.
    pub results: Vec<i64>,
    /// `upstream error: <class>` when it failed (`not_configured`: no group serves the
    /// service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A cluster message the relay refused.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClusterEvent {
    /// Listener name.
    pub listener: String,
    /// Client address.
    pub client: String,
    /// Who the link belongs to.
    pub identity: Caller,
    /// `upstream` (client → its upstream) or `downstream`, along the link.
    pub direction: &'static str,
    /// The endpoint the client dialled (its SNI).
    pub sni: String,
    /// `parent` (the client dialled its parent, the usual way) or `child` (a parent dialled a
    /// child: `downstream` messages then come from the child).
    pub toward: &'static str,
    /// The message's method (`-` for a reply).
    pub method: String,
    /// `denied`.
    pub verdict: Verdict,
    /// The rule or filter that refused it.
    pub reason: String,
}

/// An HTTP request Gatehouse answered itself instead of forwarding it (Kea commands are
/// [`KeaEvent`]s).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HttpEvent {
    /// Listener name.
    pub listener: String,
    /// Client address.
    pub client: Option<String>,
    /// Who sent it.
    pub identity: Caller,
    /// Route name.
    pub route: String,
    /// The request method.
    pub method: String,
    /// The (normalised) request path.
    pub path: String,
    /// HTTP status answered.
    pub status: u16,
    /// `denied` (the route's `allow`/`deny`, or the authorizer), `unauthorized` (basic
    /// credentials missing or wrong), `rate_limited` (`rate_limit`), `answered` (a filter
    /// answered at the edge).
    pub verdict: Verdict,
    /// The rule, authorizer or filter, and why.
    pub reason: String,
}

/// A cluster link refused before its upstream connection, or closed because a newer link of
/// the same identity took its place.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkEvent {
    /// Listener name.
    pub listener: String,
    /// Client address.
    pub client: String,
    /// Who the link belongs to.
    pub identity: Caller,
    /// The endpoint the client dialled (its SNI).
    pub sni: String,
    /// `refused` or `replaced`.
    pub verdict: Verdict,
    /// Why: the limit, route, authorizer or identity that refused it (as
    /// `gatehouse_cluster_links_refused_total{reason}` names it), with the detail.
    pub reason: String,
}

/// One audited event. Serialized with a `kind` field: `kea`, `cluster`, `http` or `link`.
///
/// | kind | when | verdicts |
/// |---|---|---|
/// | `kea` | every Kea command | `allowed`, `denied`, `malformed`, `misrouted`, `answered` |
/// | `cluster` | a cluster message the policy or a filter refused | `denied` |
/// | `http` | an HTTP request answered at the edge | `denied`, `unauthorized`, `rate_limited`, `answered` |
/// | `link` | a cluster link refused before its upstream, or replaced | `refused`, `replaced` |
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AuditEvent {
    /// A Kea command.
    Kea(KeaEvent),
    /// A refused cluster message.
    Cluster(ClusterEvent),
    /// An HTTP request refused or answered at the edge.
    Http(HttpEvent),
    /// A cluster link refused or replaced.
    Link(LinkEvent),
}

/// Where audit events go. Called on the request or link's own task: keep it quick, and
/// queue anything slow (a network hop) behind it.
///
/// ```
/// use gatehouse::audit::{AuditEvent, AuditSink};
/// use std::sync::Mutex;
///
/// /// Keeps the last events in memory, e.g. for an admin page.
/// #[derive(Default)]
/// struct Recent(Mutex<Vec<AuditEvent>>);
///
/// impl AuditSink for Recent {
///     fn record(&self, event: &AuditEvent) {
///         let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
///         if v.len() == 100 {
///             v.remove(0);
///         }
///         v.push(event.clone());
///     }
/// }
/// ```
pub trait AuditSink: Send + Sync + 'static {
    /// Records one event; failures are the sink's to report, never the caller's.
    fn record(&self, event: &AuditEvent);
}

/// The built-in sink: JSON lines with a `time` field first.
///
/// To a file (`audit.path`) every event is written. To the log target, the refusals a client
/// can repeat at will (`http` and `link` events) are sampled like the log lines they
/// accompany: the first of each kind per 10 s, the next one written carrying `held_back`,
/// the number not written in between; `kea` and `cluster` events are always written.
pub struct JsonLines {
    file: Option<Mutex<File>>,
    /// `http`, `link`: for the log target only.
    repeatable: [crate::logging::Sampler; 2],
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a AuditEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    held_back: Option<u64>,
}

impl JsonLines {
    /// Appends to `path`, or logs to `gatehouse::audit` when `None`.
    pub fn open(path: Option<&Path>) -> std::io::Result<JsonLines> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
            None => None,
        };
        Ok(JsonLines {
            file,
            repeatable: Self::samplers(),
        })
    }

    /// The log target only (never fails).
    pub fn log() -> JsonLines {
        JsonLines {
            file: None,
            repeatable: Self::samplers(),
        }
    }

    fn samplers() -> [crate::logging::Sampler; 2] {
        std::array::from_fn(|_| crate::logging::Sampler::new(std::time::Duration::from_secs(10)))
    }
}

impl AuditSink for JsonLines {
    fn record(&self, event: &AuditEvent) {
        let sampler = match event {
            AuditEvent::Http(_) => Some(&self.repeatable[0]),
            AuditEvent::Link(_) => Some(&self.repeatable[1]),
            AuditEvent::Kea(_) | AuditEvent::Cluster(_) => None,
        };
        let held_back = match sampler.filter(|_| self.file.is_none()) {
            None => None,
            Some(s) => match s.admit() {
                None => return,
                Some(0) => None,
                Some(n) => Some(n),
            },
        };
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event,
            held_back,
        };
        let Ok(text) = serde_json::to_string(&line) else {
            log::error!(target: "gatehouse::audit", "cannot encode an audit event: {event:?}");
            return;
        };
        match &self.file {
            Some(f) => {
                let mut buf = text.into_bytes();
                buf.push(b'\n');
                let result = match f.lock() {
                    Ok(mut file) => file.write_all(&buf),
                    Err(poisoned) => poisoned.into_inner().write_all(&buf),
                };
                if let Err(e) = result {
                    log::error!(target: "gatehouse::audit", "cannot write the audit log: {e}");
                }
            }
            // Marked as a JSON document: a JSON-lines logger nests it under `audit`.
            None => log::info!(target: "gatehouse::audit", json = "audit"; "{text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_written_as_named() {
        use Verdict::*;
        for v in [
            Allowed,
            Denied,
            Malformed,
            Misrouted,
            Answered,
            Unauthorized,
            RateLimited,
            Refused,
            Replaced,
        ] {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
            assert!(v == v.as_str());
        }
    }

    #[test]
    fn durations_are_written_with_three_decimals_at_most() {
        #[derive(Serialize)]
        struct D(#[serde(serialize_with = "three_decimals")] f64);
        for (v, want) in [
            (1.2372130000000001, "1.237"),
            (0.1 + 0.2, "0.3"),
            (12.0, "12.0"),
        ] {
            assert_eq!(serde_json::to_string(&D(v)).unwrap(), want);
        }
    }

    #[test]
    fn json_lines_have_time_and_kind_first_class() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let sink = JsonLines::open(Some(&path)).unwrap();
        sink.record(&AuditEvent::Cluster(ClusterEvent {
            listener: "l".into(),
            client: "127.0.0.1:1".into(),
            identity: Caller {
                cn: Some("agent\n1".into()),
                fingerprint: None,
                user: None,
                token: None,
            },
            direction: "upstream",
            sni: "master1".into(),
            toward: "parent",
            method: "config::Update".into(),
            verdict: Verdict::Denied,
            reason: "cluster.policy[1]".into(),
        }));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().count(),
            1,
            "a newline in a value stays escaped"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], "cluster");
        assert_eq!(v["identity"]["cn"], "agent\n1");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v.get("results").is_none());
    }
}
