//! Who may send which JSON-RPC method in which direction.
//!
//! Rules are tried in order; the **first rule whose identity and direction match decides**:
//! a method in its `deny` list is denied; otherwise, if it has an `allow` list, the method is
//! allowed only if listed; a rule with only `deny` allows everything else. No matching rule
//! → allowed. Replies (no `method`) are never filtered: they answer the other side's requests.

use crate::config::{PolicyDirection, RpcPolicyRule};
use crate::glob;

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client toward the upstream (agent → master).
    Upstream,
    /// From the upstream toward the client (master → agent).
    Downstream,
}

impl Direction {
    /// The metric / log label.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        }
    }
}

/// Who a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMatch {
    /// Clients without a verified certificate.
    Anonymous,
    /// Everyone (`"*"`), anonymous included.
    Any,
    /// Authenticated clients whose CN matches the glob.
    Cn(String),
    /// Authenticated clients with a URI SAN starting with this `spiffe://` prefix.
    Spiffe(String),
}

impl IdentityMatch {
    /// `anonymous`, `*`, `spiffe://…` or a CN glob.
    pub fn parse(s: &str) -> IdentityMatch {
        match s {
            "anonymous" => IdentityMatch::Anonymous,
            "*" => IdentityMatch::Any,
            s if s.starts_with("spiffe://") => IdentityMatch::Spiffe(s.to_string()),
            s => IdentityMatch::Cn(s.to_string()),
        }
    }

    fn matches(&self, who: &Caller<'_>) -> bool {
        match (self, who.cn) {
            (IdentityMatch::Any, _) => true,
            (IdentityMatch::Anonymous, cn) => cn.is_none(),
            (IdentityMatch::Cn(g), Some(cn)) => glob::matches(g, cn),
            (IdentityMatch::Spiffe(p), Some(_)) => who.uris.iter().any(|u| u.starts_with(p)),
            (_, None) => false,
        }
    }
}

/// The caller as policy sees it: a CN only when authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Verified CN; `None` = anonymous.
    pub cn: Option<&'a str>,
    /// URI SANs of the verified certificate.
    pub uris: &'a [String],
}

#[derive(Debug, Clone)]
struct Rule {
    identity: IdentityMatch,
    direction: PolicyDirection,
    allow: Option<Vec<String>>,
    deny: Vec<String>,
}

/// An ordered rule list.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// The outcome for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Drop it; the index of the deciding rule.
    Deny(usize),
}

impl Policy {
    /// Builds a policy from the configured rules.
    pub fn new(rules: &[RpcPolicyRule]) -> Policy {
        Policy {
            rules: rules
                .iter()
                .map(|r| Rule {
                    identity: IdentityMatch::parse(&r.identity),
                    direction: r.direction,
                    allow: r.allow.clone(),
                    deny: r.deny.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Icinga's own rules, applied when the config has no `policy:` key: anonymous clients
    /// may only say hello, heartbeat and ask for a certificate; no client may push config,
    /// certificates or commands toward its parent.
    pub fn icinga_defaults() -> Policy {
        Policy::new(&crate::config::default_rpc_policy())
    }

    /// Decides one message. `method` is `None` for replies, which always pass.
    pub fn decide(&self, who: &Caller<'_>, dir: Direction, method: Option<&str>) -> Verdict {
        let Some(method) = method else {
            return Verdict::Allow;
        };
        for (i, r) in self.rules.iter().enumerate() {
            let dir_ok = matches!(
                (r.direction, dir),
                (PolicyDirection::Both, _)
                    | (PolicyDirection::Upstream, Direction::Upstream)
                    | (PolicyDirection::Downstream, Direction::Downstream)
            );
            if !dir_ok || !r.identity.matches(who) {
                continue;
            }
            if r.deny.iter().any(|g| glob::matches(g, method)) {
                return Verdict::Deny(i);
            }
            return match &r.allow {
                Some(list) if !list.iter().any(|g| glob::matches(g, method)) => Verdict::Deny(i),
                _ => Verdict::Allow,
            };
        }
        Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANON: Caller<'static> = Caller {
        cn: None,
        uris: &[],
    };

    fn agent(cn: &'static str) -> Caller<'static> {
        Caller {
            cn: Some(cn),
            uris: &[],
        }
    }

    #[test]
    fn icinga_defaults() {
        let p = Policy::icinga_defaults();
        let up = Direction::Upstream;
        assert_eq!(p.decide(&ANON, up, Some("icinga::Hello")), Verdict::Allow);
        assert_eq!(
            p.decide(&ANON, up, Some("event::Heartbeat")),
            Verdict::Allow
        );
        assert_eq!(
            p.decide(&ANON, up, Some("pki::RequestCertificate")),
            Verdict::Allow
        );
        assert_eq!(
            p.decide(&ANON, up, Some("event::CheckResult")),
            Verdict::Deny(0)
        );
        assert_eq!(p.decide(&ANON, up, None), Verdict::Allow, "replies pass");
        let a = agent("agent1");
        assert_eq!(p.decide(&a, up, Some("event::CheckResult")), Verdict::Allow);
        assert_eq!(p.decide(&a, up, Some("config::Update")), Verdict::Deny(1));
        assert_eq!(
            p.decide(&a, up, Some("event::ExecuteCommand")),
            Verdict::Deny(1)
        );
        // Downstream is unrestricted by default: the master pushes config and commands down.
        let down = Direction::Downstream;
        assert_eq!(p.decide(&a, down, Some("config::Update")), Verdict::Allow);
        assert_eq!(
            p.decide(&ANON, down, Some("pki::UpdateCertificate")),
            Verdict::Allow
        );
    }

    #[test]
    fn identity_matchers_and_first_match() {
        let rules: Vec<RpcPolicyRule> = serde_yaml::from_str(
            r#"
- { identity: "agent-*", direction: both, deny: ["event::*"] }
- { identity: "spiffe://example.org/ops/", direction: upstream, allow: ["config::*"] }
- { identity: "*", direction: downstream, allow: ["icinga::Hello"] }
"#,
        )
        .unwrap();
        let p = Policy::new(&rules);
        let up = Direction::Upstream;
        assert_eq!(
            p.decide(&agent("agent-7"), up, Some("event::Heartbeat")),
            Verdict::Deny(0)
        );
        assert_eq!(
            p.decide(&agent("agent-7"), up, Some("config::Update")),
            Verdict::Allow
        );
        let uris = ["spiffe://example.org/ops/alice".to_string()];
        let ops = Caller {
            cn: Some("alice"),
            uris: &uris,
        };
        assert_eq!(p.decide(&ops, up, Some("config::Update")), Verdict::Allow);
        assert_eq!(
            p.decide(&ops, up, Some("event::Heartbeat")),
            Verdict::Deny(1)
        );
        // SPIFFE and CN matchers never match anonymous clients; "*" does.
        assert_eq!(
            p.decide(&ANON, up, Some("event::Heartbeat")),
            Verdict::Allow
        );
        assert_eq!(
            p.decide(&ANON, Direction::Downstream, Some("x")),
            Verdict::Deny(2)
        );
    }
}
