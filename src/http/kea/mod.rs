//! Kea: parse `{"command", "service", "arguments"}`, decide per identity, and send what is
//! allowed where the route says — a Control Agent (as sent), one daemon (`kea.daemon`:
//! `service` checked and removed), or the daemon of each service (`kea.services`: Gatehouse
//! is the agent, its own commands answered in `agent`).
//!
//! Inside: `json` reads answers' result codes as they stream and cuts `service` out of a
//! command byte-exactly; `dispatch` is the one step that sends a command to a list of
//! targets (services, or every peer with `fan_out: all`) and merges typed replies.

pub(crate) mod agent;
pub(crate) mod dispatch;
mod flow;
#[doc(hidden)]
pub mod import;
pub(crate) mod json;
mod send;
mod serve;
mod stream;

pub(crate) use flow::KeaFlow;

use crate::authz::{FirstMatch, Identity};
use crate::config::{AllowDeny, KeaDefault, KeaSettings, KeaTarget};
use crate::glob;
use serde::Deserialize;

/// Kea 2.x commands: the bounded `command` label of `gatehouse_kea_commands_total`.
pub(crate) const KNOWN_COMMANDS: &[&str] = &[
    "build-report",
    "cache-clear",
    "cache-get",
    "cache-get-by-id",
    "cache-insert",
    "cache-load",
    "cache-remove",
    "cache-size",
    "cache-write",
    "class-add",
    "class-del",
    "class-get",
    "class-list",
    "class-update",
    "config-backend-pull",
    "config-get",
    "config-reload",
    "config-set",
    "config-test",
    "config-write",
    "dhcp-disable",
    "dhcp-enable",
    "ha-continue",
    "ha-heartbeat",
    "ha-maintenance-cancel",
    "ha-maintenance-notify",
    "ha-maintenance-start",
    "ha-reset",
    "ha-scopes",
    "ha-sync",
    "ha-sync-complete-notify",
    "lease4-add",
    "lease4-del",
    "lease4-get",
    "lease4-get-all",
    "lease4-get-by-client-id",
    "lease4-get-by-hostname",
    "lease4-get-by-hw-address",
    "lease4-get-page",
    "lease4-resend-ddns",
    "lease4-update",
    "lease4-wipe",
    "lease6-add",
    "lease6-bulk-apply",
    "lease6-del",
    "lease6-get",
    "lease6-get-all",
    "lease6-get-by-duid",
    "lease6-get-by-hostname",
    "lease6-get-page",
    "lease6-resend-ddns",
    "lease6-update",
    "lease6-wipe",
    "leases-reclaim",
    "libreload",
    "list-commands",
    "network4-add",
    "network4-del",
    "network4-get",
    "network4-list",
    "network4-subnet-add",
    "network4-subnet-del",
    "network6-add",
    "network6-del",
    "network6-get",
    "network6-list",
    "network6-subnet-add",
    "network6-subnet-del",
    "reservation-add",
    "reservation-del",
    "reservation-get",
    "reservation-get-all",
    "reservation-get-by-hostname",
    "reservation-get-by-id",
    "reservation-get-page",
    "server-tag-get",
    "shutdown",
    "stat-lease4-get",
    "stat-lease6-get",
    "statistic-get",
    "statistic-get-all",
    "statistic-remove",
    "statistic-remove-all",
    "statistic-reset",
    "statistic-reset-all",
    "statistic-sample-age-set",
    "statistic-sample-age-set-all",
    "statistic-sample-count-set",
    "statistic-sample-count-set-all",
    "status-get",
    "subnet4-add",
    "subnet4-del",
    "subnet4-delta-add",
    "subnet4-delta-del",
    "subnet4-get",
    "subnet4-list",
    "subnet4-update",
    "subnet6-add",
    "subnet6-del",
    "subnet6-delta-add",
    "subnet6-delta-del",
    "subnet6-get",
    "subnet6-list",
    "subnet6-update",
    "version-get",
];

/// The metric label for a command: itself if Kea knows it, else `other`.
#[doc(hidden)]
pub fn command_label(command: &str) -> &'static str {
    KNOWN_COMMANDS
        .iter()
        .find(|c| **c == command)
        .copied()
        .unwrap_or("other")
}

/// A parsed Kea command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `command`.
    pub command: String,
    /// `service` as sent (on a `kea.daemon` route: the daemon when none was sent); empty = the
    /// Control Agent itself (see [`Command::effective_services`]).
    pub services: Vec<String>,
}

/// The service name standing for the Control Agent itself: a command with no `service` runs
/// there (`config-get` then returns the agent's own config, sockets and auth clients).
pub(crate) const CONTROL_AGENT: &str = "ca";

impl Command {
    /// The services the command runs on: as sent, or `ca` when none is named, so
    /// a `services` allow list without `ca` refuses commands aimed at the agent itself.
    pub fn effective_services(&self) -> &[String] {
        static CA: once_cell::sync::Lazy<[String; 1]> =
            once_cell::sync::Lazy::new(|| [CONTROL_AGENT.to_string()]);
        if self.services.is_empty() {
            &CA[..]
        } else {
            &self.services
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    command: String,
    #[serde(default)]
    service: Option<Vec<String>>,
    #[serde(default, rename = "arguments")]
    _arguments: Option<serde::de::IgnoredAny>,
}

/// Parses a command body; the error is what a client should be told.
#[doc(hidden)]
pub fn parse(body: &[u8]) -> Result<Command, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty body: expected {\"command\": ...}".into());
    }
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("malformed command: {e}"))?;
    if raw.command.is_empty() {
        return Err("malformed command: `command` is empty".into());
    }
    Ok(Command {
        command: raw.command,
        services: raw.service.unwrap_or_default(),
    })
}

struct Rule {
    commands: Option<AllowDeny>,
    services: Option<AllowDeny>,
}

fn permits(list: &AllowDeny, name: &str) -> bool {
    !list.deny.iter().any(|g| glob::matches(g, name))
        && list
            .allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|g| glob::matches(g, name)))
}

/// A route's Kea rules, compiled, and what stands behind the route.
#[doc(hidden)]
pub struct KeaPolicy {
    /// Largest body read.
    pub max_body: usize,
    /// Largest answer held whole (merges, filtered answers).
    pub max_answer: usize,
    /// An agent, one daemon, or a daemon per service.
    pub target: KeaTarget,
    rules: FirstMatch<Rule>,
    default_allow: bool,
}

impl KeaPolicy {
    /// From the route's `kea:` settings.
    pub fn new(k: &KeaSettings) -> KeaPolicy {
        KeaPolicy {
            max_body: k.max_body,
            max_answer: k.max_answer,
            target: k.target.clone(),
            rules: FirstMatch::new(
                k.rules
                    .iter()
                    .map(|r| {
                        let rule = Rule {
                            commands: r.commands.clone(),
                            services: r.services.clone(),
                        };
                        (r.identity.clone(), rule)
                    })
                    .collect(),
            ),
            default_allow: k.default == KeaDefault::Allow,
        }
    }

    /// On a `kea.daemon` route, the command as the rules see it: no `service` means the
    /// daemon; one naming the daemon is kept; anything else is refused (the text says why)
    /// and never forwarded. Other routes take the command as sent.
    pub fn bind_service(&self, cmd: &mut Command) -> Result<(), String> {
        let KeaTarget::Daemon(daemon) = &self.target else {
            return Ok(());
        };
        match cmd.services.as_slice() {
            [] => {
                cmd.services = vec![daemon.clone()];
                Ok(())
            }
            [one] if one == daemon => Ok(()),
            _ => Err(format!(
                "service {:?} is not served here: this route's upstream is the {daemon} daemon (send no `service`, or [\"{daemon}\"])",
                cmd.services
            )),
        }
    }

    /// `Ok` to forward, or the refusal text (naming the caller, e.g. `cn=dashboard-1`).
    /// The first rule whose identity matches decides.
    pub fn decide(&self, who: Identity<'_>, cmd: &Command) -> Result<(), String> {
        let Some((_, rule)) = self.rules.find(who, |_| true) else {
            return if self.default_allow {
                Ok(())
            } else {
                Err(format!(
                    "command '{}' is not allowed for {who}",
                    cmd.command
                ))
            };
        };
        if let Some(c) = &rule.commands {
            if !permits(c, &cmd.command) {
                return Err(format!(
                    "command '{}' is not allowed for {who}",
                    cmd.command
                ));
            }
        }
        if let Some(s) = &rule.services {
            if let Some(bad) = cmd.effective_services().iter().find(|svc| !permits(s, svc)) {
                return Err(format!("service '{bad}' is not allowed for {who}"));
            }
        }
        Ok(())
    }
}

impl KeaPolicy {
    /// Whether `who` may run `command` on `services` under these rules.
    pub fn may_run(&self, who: Identity<'_>, command: &str, services: &[String]) -> bool {
        let cmd = Command {
            command: command.to_string(),
            services: services.to_vec(),
        };
        self.decide(who, &cmd).is_ok()
    }
}

/// The `result` codes of Kea's answer: a list (one per service), or one object.
#[doc(hidden)]
pub fn result_codes(body: &[u8]) -> Vec<i64> {
    #[derive(Deserialize)]
    struct Answer {
        result: Option<i64>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Answers {
        List(Vec<Answer>),
        One(Answer),
    }
    match serde_json::from_slice::<Answers>(body) {
        Ok(Answers::List(l)) => l.into_iter().filter_map(|a| a.result).collect(),
        Ok(Answers::One(a)) => a.result.into_iter().collect(),
        Err(_) => Vec::new(),
    }
}

/// What the Kea unit tests here and in `command_list` build their cases from.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Command, KeaPolicy};
    use crate::identity::ClientCert;
    use crate::pki::{Ca, CertSpec};

    /// A route's rules from their YAML.
    pub(crate) fn policy(yaml: &str) -> KeaPolicy {
        KeaPolicy::new(&crate::config::kea_from_yaml(yaml))
    }

    /// A verified certificate with CN `cn`.
    pub(crate) fn cert(cn: &str) -> ClientCert {
        let ca = Ca::new("t").unwrap();
        ClientCert::from_x509(ca.issue(&CertSpec::new(cn)).unwrap().cert, true)
    }

    /// Command `c` on services `svc`.
    pub(crate) fn cmd(c: &str, svc: &[&str]) -> Command {
        Command {
            command: c.into(),
            services: svc.iter().map(|s| s.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{cert, cmd, policy};
    use super::*;
    use crate::identity::ClientCert;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse(br#"{"command":"config-get","service":["dhcp4"],"arguments":{"x":1}}"#),
            Ok(cmd("config-get", &["dhcp4"]))
        );
        assert_eq!(
            parse(br#"{"command":"version-get"}"#),
            Ok(cmd("version-get", &[]))
        );
        assert!(parse(b"").is_err());
        assert!(parse(b"{").unwrap_err().starts_with("malformed command"));
        assert!(parse(br#"{"service":["dhcp4"]}"#).is_err());
        assert!(parse(br#"{"command":5}"#).is_err());
        assert!(parse(br#"{"command":"x","service":"dhcp4"}"#).is_err());
        assert!(parse(br#"[{"command":"x"}]"#).is_err());
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = policy(
            r#"
rules:
  - identity: ["cn:dashboard-*"]
    commands: { allow: ["*-get", "list-commands", "status-get", "version-get", "lease4-get*"] }
    services: { allow: [dhcp4] }
  - identity: ["cn:ops-admin"]
    commands: { allow: ["*"], deny: ["shutdown"] }
  - identity: ["cn:*"]
    commands: { allow: ["*"] }
default: deny
"#,
        );
        let d = cert("dashboard-1");
        let ok = |c: &ClientCert, command: Command| p.decide(Identity::Verified(c), &command);
        assert!(ok(&d, cmd("config-get", &["dhcp4"])).is_ok());
        assert_eq!(
            ok(&d, cmd("list-commands", &[])),
            Err("service 'ca' is not allowed for cn=dashboard-1".into()),
            "no service = the Control Agent itself"
        );
        assert!(ok(&d, cmd("lease4-get-all", &["dhcp4"])).is_ok());
        assert_eq!(
            ok(&d, cmd("config-set", &["dhcp4"])),
            Err("command 'config-set' is not allowed for cn=dashboard-1".into())
        );
        assert_eq!(
            ok(&d, cmd("config-get", &["dhcp6"])),
            Err("service 'dhcp6' is not allowed for cn=dashboard-1".into())
        );
        let ca_too = policy("rules: [{ identity: ['cn:*'], services: { allow: [ca, dhcp4] } }]\n");
        assert!(ca_too
            .decide(Identity::Verified(&d), &cmd("config-get", &[]))
            .is_ok());
        let admin = cert("ops-admin");
        assert!(ok(&admin, cmd("config-write", &["dhcp4"])).is_ok());
        assert!(
            ok(&admin, cmd("shutdown", &["dhcp4"])).is_err(),
            "deny wins in a rule"
        );
        // The first matching rule decides: ops-admin never falls through to `cn:*`.
        assert!(ok(&cert("someone"), cmd("shutdown", &[])).is_ok());
        assert!(
            p.decide(Identity::Anonymous, &cmd("version-get", &[]))
                .is_err(),
            "default deny"
        );
        let open = policy("default: allow\n");
        assert!(open
            .decide(Identity::Anonymous, &cmd("shutdown", &[]))
            .is_ok());
    }

    #[test]
    fn result_codes_and_labels() {
        assert_eq!(
            result_codes(br#"[ { "result": 0, "text": "x" }, { "result": 1 } ]"#),
            vec![0, 1]
        );
        assert_eq!(
            result_codes(br#"{ "result": 400, "text": "Bad Request" }"#),
            vec![400]
        );
        assert_eq!(result_codes(b"garbage"), Vec::<i64>::new());
        assert_eq!(command_label("config-get"), "config-get");
        assert_eq!(command_label("evil-command-123"), "other");
    }
}
