//! How a link is written down: why it was refused (`cluster_links_refused{reason}`), how it
//! ended (`cluster_links_closed{end}` and the close line), and the JSON open and close lines.

use crate::cluster::codec::FrameError;
use crate::cluster::envelope::MessageError;
use crate::cluster::policy::Direction;
use crate::logsafe::{Esc, EscText};
use std::fmt;
use std::time::Duration;

/// Why a link was refused before any upstream connection (`cluster_links_refused{reason}`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    AnonymousMaxClients,
    AnonymousMaxPerIp,
    NoRoute,
    AnonymousChild,
    Authorizer,
    Identity,
    NoValidFirstMessage,
}

/// Every `reason` of `gatehouse_cluster_links_refused_total`, in [`Refusal`]'s order.
pub(crate) const REFUSAL_LABELS: [&str; Refusal::COUNT] = [
    "anonymous_max_clients",
    "anonymous_max_per_ip",
    "no_route",
    "anonymous_child",
    "authorizer",
    "identity",
    "no_valid_first_message",
];

/// Every `end` of `gatehouse_cluster_links_closed_total` ([`LinkEnd::kind`]).
pub(crate) const LINK_END_LABELS: [&str; 13] = [
    "closed",
    "idle",
    "framing",
    "malformed",
    "violations",
    "filter",
    "revoked",
    "io",
    "shutdown",
    "replaced",
    "lifetime",
    "stalled",
    "not_taken",
];

impl Refusal {
    pub(super) const COUNT: usize = 7;

    pub(super) fn label(self) -> &'static str {
        REFUSAL_LABELS[self as usize]
    }
}

/// Why a link ended (logged when it closes).
pub(super) enum LinkEnd {
    Closed(Direction),
    Idle(Direction, Duration),
    Frame(Direction, FrameError),
    Malformed(Direction, MessageError),
    Violations(u32),
    /// A filter closed the link: its name and reason.
    Filter(String, String),
    /// The authorizer withdrew its permission: its name and reason.
    Revoked(String, String),
    /// An I/O error on the named side (`client` or `upstream`).
    Io(&'static str, String),
    Shutdown,
    /// A newer link of the same identity took its place.
    Replaced,
    /// An anonymous link reached `anonymous_max_lifetime`.
    Lifetime(Duration),
    /// The receiver of this direction took nothing for the idle limit.
    Stalled(Direction, Duration),
    /// The upstream closed the link at once, having sent at most its Hello: it did not take
    /// the identity presented for this CN (`None`: anonymous).
    NotTaken(Option<String>),
}

impl Direction {
    /// The other way.
    pub(super) fn reverse(self) -> Direction {
        match self {
            Direction::Upstream => Direction::Downstream,
            Direction::Downstream => Direction::Upstream,
        }
    }

    /// The side messages in this direction come from.
    pub(super) fn sender(self) -> &'static str {
        match self {
            Direction::Upstream => "client",
            Direction::Downstream => "upstream",
        }
    }

    /// The side messages in this direction go to.
    pub(super) fn receiver(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "client",
        }
    }
}

impl LinkEnd {
    /// A word for the way the link ended (`end` in JSON lines).
    pub(super) fn kind(&self) -> &'static str {
        match self {
            LinkEnd::Closed(_) => "closed",
            LinkEnd::Idle(..) => "idle",
            LinkEnd::Frame(..) => "framing",
            LinkEnd::Malformed(..) => "malformed",
            LinkEnd::Violations(_) => "violations",
            LinkEnd::Filter(..) => "filter",
            LinkEnd::Revoked(..) => "revoked",
            LinkEnd::Io(..) => "io",
            LinkEnd::Shutdown => "shutdown",
            LinkEnd::Replaced => "replaced",
            LinkEnd::Lifetime(_) => "lifetime",
            LinkEnd::Stalled(..) => "stalled",
            LinkEnd::NotTaken(_) => "not_taken",
        }
    }
}

/// A link open or close line in `log_format: json`: the text line's fields, typed; the
/// client's `who` split into `cn` (`null` when anonymous) and `client` (its address).
#[derive(serde::Serialize)]
pub(super) struct LinkLine<'a> {
    pub(super) event: &'static str,
    pub(super) listener: &'a str,
    pub(super) client: Option<&'a str>,
    pub(super) cn: Option<&'a str>,
    pub(super) sni: Option<&'a str>,
    pub(super) upstream: &'a str,
    pub(super) peer: std::net::SocketAddr,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub(super) closed: Option<Closed>,
}

/// What a close line adds.
#[derive(serde::Serialize)]
pub(super) struct Closed {
    #[serde(serialize_with = "crate::audit::three_decimals")]
    pub(super) duration_s: f64,
    pub(super) messages_up: u64,
    pub(super) messages_down: u64,
    pub(super) end: &'static str,
    pub(super) reason: String,
}

impl LinkLine<'_> {
    pub(super) fn log(&self) {
        crate::logging::info_json("gatehouse::cluster", "a link line", self);
    }
}

impl fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkEnd::Closed(d) => write!(f, "{} closed the connection", d.sender()),
            LinkEnd::Idle(d, t) => write!(
                f,
                "no message from the {} for {}s",
                d.sender(),
                t.as_secs_f64()
            ),
            LinkEnd::Frame(d, e) => write!(f, "framing error from the {}: {e}", d.sender()),
            LinkEnd::Malformed(d, e) => {
                write!(
                    f,
                    "malformed message from the anonymous {}: {e}",
                    d.sender()
                )
            }
            LinkEnd::Violations(n) => write!(f, "{n} policy violations (cluster.max_violations)"),
            LinkEnd::Filter(by, why) => write!(f, "closed by filter {by}: {}", EscText(why)),
            LinkEnd::Revoked(by, why) => write!(f, "revoked by authorizer {by}: {}", EscText(why)),
            LinkEnd::Io(side, e) => write!(f, "{side} side: {e}"),
            LinkEnd::Shutdown => f.write_str("shutting down"),
            LinkEnd::Stalled(d, t) => write!(
                f,
                "the {} took nothing for {}s ({} messages stalled; cluster.limits.idle_timeout)",
                d.receiver(),
                t.as_secs_f64(),
                d.label()
            ),
            LinkEnd::Lifetime(t) => write!(
                f,
                "an anonymous link open for {}s (cluster.limits.anonymous_max_lifetime)",
                t.as_secs_f64()
            ),
            LinkEnd::Replaced => f.write_str(
                "replaced by a newer link of the same identity (cluster.limits.max_links_per_identity)",
            ),
            LinkEnd::NotTaken(Some(cn)) => write!(
                f,
                "the upstream closed the link at once, having sent at most its Hello: it did not take the identity '{}' (Icinga 2.15 and later drop a certificate whose CN has no Endpoint object on the master; check the Endpoint and the certificate in cluster.upstream_identity.cert_dir)",
                Esc(cn)
            ),
            LinkEnd::NotTaken(None) => f.write_str(
                "the upstream closed the link at once, having sent at most its Hello: it did not take the anonymous client",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_end_is_listed_once() {
        let d = Direction::Upstream;
        let t = Duration::from_secs(1);
        let ends = [
            LinkEnd::Closed(d),
            LinkEnd::Idle(d, t),
            LinkEnd::Frame(d, FrameError::EmptyLength),
            LinkEnd::Malformed(d, MessageError::NotObject),
            LinkEnd::Violations(1),
            LinkEnd::Filter(String::new(), String::new()),
            LinkEnd::Revoked(String::new(), String::new()),
            LinkEnd::Io("upstream", String::new()),
            LinkEnd::Shutdown,
            LinkEnd::Replaced,
            LinkEnd::Lifetime(t),
            LinkEnd::Stalled(d, t),
            LinkEnd::NotTaken(None),
        ];
        let kinds: Vec<&str> = ends.iter().map(LinkEnd::kind).collect();
        assert_eq!(kinds, LINK_END_LABELS);
    }
}
