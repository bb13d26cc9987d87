//! The Control Agent's own commands, answered at the edge on a `kea.services` route (a
//! command with no `service`): Gatehouse is the agent there. Clients that discover the
//! daemons through the agent's `config-get` (kea-exporter reads
//! `Control-agent.control-sockets`) keep working; the agent's configuration-changing commands
//! are refused, Kea-shaped: Gatehouse's configuration is its YAML file.

use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::time::Instant;

/// The agent commands answered here, as `list-commands` names them.
pub const COMMANDS: &[&str] = &[
    "build-report",
    "config-get",
    "list-commands",
    "status-get",
    "version-get",
];

/// One mapped service as the agent's `config-get` shows it.
pub struct Socket {
    /// The service name (`dhcp4`).
    pub service: String,
    /// The `upstreams:` key behind it.
    pub upstream: String,
    /// Its first peer: `127.0.0.1:8004` or `unix:/run/kea/…`.
    pub peer: String,
}

/// What the agent's answers describe: where it listens, what it maps, since when.
pub struct AgentView<'a> {
    /// The connection's local address (the agent's `http-host` and `http-port`).
    pub local: Option<SocketAddr>,
    /// The mapped services, in name order.
    pub sockets: &'a [Socket],
    /// When this process started serving.
    pub started: Instant,
}

/// The answer to agent command `command` (always a one-element list, as the agent's).
pub fn answer(command: &str, view: &AgentView<'_>) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    let one = match command {
        "list-commands" => json!({ "result": 0, "arguments": COMMANDS }),
        "version-get" => json!({
            "result": 0,
            "text": version,
            "arguments": { "extended": format!("Gatehouse {version}: the Kea Control Agent's place, mTLS and per-identity command rules") },
        }),
        "build-report" => json!({ "result": 0, "text": format!("Gatehouse {version}") }),
        "status-get" => json!({
            "result": 0,
            "arguments": {
                "pid": std::process::id(),
                "uptime": view.started.elapsed().as_secs(),
                "reload": view.started.elapsed().as_secs(),
            },
        }),
        "config-get" => json!({ "result": 0, "arguments": { "Control-agent": config(view) } }),
        "config-set" | "config-write" | "config-reload" | "config-test" | "shutdown" => json!({
            "result": 1,
            "text": format!("'{command}' is not supported here: Gatehouse answers for the Control Agent, and its configuration is its YAML file"),
        }),
        other => json!({ "result": 2, "text": format!("'{other}' command not supported.") }),
    };
    Value::Array(vec![one])
}

/// The agent's configuration as its `config-get` has it: where it listens and one
/// `control-sockets` entry per mapped service.
fn config(view: &AgentView<'_>) -> Value {
    let mut sockets = Map::new();
    for s in view.sockets {
        let entry = match s.peer.strip_prefix("unix:") {
            Some(path) => {
                json!({ "socket-type": "unix", "socket-name": path, "upstream": s.upstream })
            }
            None => {
                json!({ "socket-type": "http", "socket-address": s.peer, "upstream": s.upstream })
            }
        };
        sockets.insert(s.service.clone(), entry);
    }
    json!({
        "http-host": view.local.map(|a| a.ip().to_string()),
        "http-port": view.local.map(|a| a.port()),
        "control-sockets": sockets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_get_names_every_mapped_service_as_the_agent_did() {
        let sockets = [
            Socket {
                service: "dhcp4".into(),
                upstream: "k4".into(),
                peer: "127.0.0.1:8004".into(),
            },
            Socket {
                service: "dhcp6".into(),
                upstream: "k6".into(),
                peer: "unix:/run/kea/k6.sock".into(),
            },
        ];
        let view = AgentView {
            local: "127.0.0.1:5665".parse().ok(),
            sockets: &sockets,
            started: Instant::now(),
        };
        let a = answer("config-get", &view);
        let ca = &a[0]["arguments"]["Control-agent"];
        assert_eq!(a[0]["result"], 0);
        assert_eq!(ca["http-port"], 5665);
        assert_eq!(ca["control-sockets"]["dhcp4"]["socket-type"], "http");
        assert_eq!(
            ca["control-sockets"]["dhcp6"]["socket-name"],
            "/run/kea/k6.sock"
        );
        assert_eq!(
            answer("list-commands", &view)[0]["arguments"],
            json!(COMMANDS)
        );
        assert_eq!(answer("config-set", &view)[0]["result"], 1);
        assert_eq!(answer("lease4-get", &view)[0]["result"], 2);
        assert_eq!(
            answer("status-get", &view)[0]["arguments"]["pid"],
            std::process::id()
        );
    }
}
