//! Who may send which JSON-RPC method in which direction.
//!
//! Rules name callers with [`crate::authz::Matcher`]s like every other rule, and are tried in
//! order; the **first rule whose identity and direction match decides** (`FirstMatch`):
//! a method in its `deny` list is denied; otherwise, if it has an `allow` list, the method is
//! allowed only if listed; a rule with only `deny` allows everything else. No matching rule
//! → allowed. Replies (no `method`) are never filtered: they answer the other side's requests.

use crate::authz::{FirstMatch, Identity};
use crate::config::{PolicyDirection, PolicyRule};
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

#[derive(Debug, Clone)]
struct Rule {
    direction: PolicyDirection,
    allow: Option<Vec<String>>,
    deny: Vec<String>,
}

impl Rule {
    fn applies(&self, dir: Direction) -> bool {
        matches!(
            (self.direction, dir),
            (PolicyDirection::Both, _)
                | (PolicyDirection::Upstream, Direction::Upstream)
                | (PolicyDirection::Downstream, Direction::Downstream)
        )
    }
}

/// An ordered rule list.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: FirstMatch<Rule>,
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
    pub fn new(rules: &[PolicyRule]) -> Policy {
        Policy {
            rules: FirstMatch::new(
                rules
                    .iter()
                    .map(|r| {
                        let rule = Rule {
                            direction: r.direction,
                            allow: r.allow.clone(),
                            deny: r.deny.clone(),
                        };
                        (vec![r.identity.clone()], rule)
                    })
                    .collect(),
            ),
        }
    }

    /// Icinga's own rules, applied when the config has no `policy:` key: anonymous clients
    /// may only say hello, heartbeat and ask for a certificate; no client may push config,
    /// certificates or commands toward its parent.
    pub fn icinga_defaults() -> Policy {
        Policy::new(&crate::config::icinga_policy())
    }

    /// Decides one message. `method` is `None` for replies, which always pass.
    pub fn decide(&self, who: Identity<'_>, dir: Direction, method: Option<&str>) -> Verdict {
        let Some(method) = method else {
            return Verdict::Allow;
        };
        let Some((i, r)) = self.rules.find(who, |r| r.applies(dir)) else {
            return Verdict::Allow;
        };
        if r.deny.iter().any(|g| glob::matches(g, method)) {
            return Verdict::Deny(i);
        }
        match &r.allow {
            Some(list) if !list.iter().any(|g| glob::matches(g, method)) => Verdict::Deny(i),
            _ => Verdict::Allow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClientCert;
    use crate::pki::{Ca, CertSpec};

    const ANON: Identity<'static> = Identity::Anonymous;

    fn cert(cn: &str, uris: &[&str]) -> ClientCert {
        let ca = Ca::new("t").unwrap();
        ClientCert::from_x509(ca.issue(&CertSpec::new(cn).uris(uris)).unwrap().cert, true)
    }

    #[test]
    fn icinga_defaults() {
        let p = Policy::icinga_defaults();
        let up = Direction::Upstream;
        assert_eq!(p.decide(ANON, up, Some("icinga::Hello")), Verdict::Allow);
        assert_eq!(p.decide(ANON, up, Some("event::Heartbeat")), Verdict::Allow);
        assert_eq!(
            p.decide(ANON, up, Some("pki::RequestCertificate")),
            Verdict::Allow
        );
        assert_eq!(
            p.decide(ANON, up, Some("event::CheckResult")),
            Verdict::Deny(0)
        );
        assert_eq!(p.decide(ANON, up, None), Verdict::Allow, "replies pass");
        let c = cert("agent1", &[]);
        let a = Identity::Verified(&c);
        assert_eq!(p.decide(a, up, Some("event::CheckResult")), Verdict::Allow);
        assert_eq!(p.decide(a, up, Some("config::Update")), Verdict::Deny(1));
        assert_eq!(
            p.decide(a, up, Some("event::ExecuteCommand")),
            Verdict::Deny(1)
        );
        // Downstream is unrestricted by default: the master pushes config and commands down.
        let down = Direction::Downstream;
        assert_eq!(p.decide(a, down, Some("config::Update")), Verdict::Allow);
        assert_eq!(
            p.decide(ANON, down, Some("pki::UpdateCertificate")),
            Verdict::Allow
        );
    }

    #[test]
    fn identity_matchers_and_first_match() {
        let rules = crate::config::policy_from_yaml(
            r#"
- { identity: "cn:agent-*", direction: both, deny: ["event::*"] }
- { identity: "spiffe://example.org/ops/", direction: upstream, allow: ["config::*"] }
- { identity: "*", direction: downstream, allow: ["icinga::Hello"] }
"#,
        );
        let p = Policy::new(&rules);
        let up = Direction::Upstream;
        let a7 = cert("agent-7", &[]);
        let agent = Identity::Verified(&a7);
        assert_eq!(
            p.decide(agent, up, Some("event::Heartbeat")),
            Verdict::Deny(0)
        );
        assert_eq!(p.decide(agent, up, Some("config::Update")), Verdict::Allow);
        let alice = cert("alice", &["spiffe://example.org/ops/alice"]);
        let ops = Identity::Verified(&alice);
        assert_eq!(p.decide(ops, up, Some("config::Update")), Verdict::Allow);
        assert_eq!(
            p.decide(ops, up, Some("event::Heartbeat")),
            Verdict::Deny(1)
        );
        // CN and SPIFFE matchers never match anonymous clients; "*" does.
        assert_eq!(p.decide(ANON, up, Some("event::Heartbeat")), Verdict::Allow);
        assert_eq!(
            p.decide(ANON, Direction::Downstream, Some("x")),
            Verdict::Deny(2)
        );
    }
}
