//! Identity-aware `list-commands`, the built-in filter every `kea:` route gets.

use crate::http::filter::{HttpFilter, Phases, Request};
use crate::http::kea::{Command, KeaPolicy};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Identity-aware `list-commands`, the built-in [`HttpFilter`] every `kea:` route gets: Kea
/// lists every command it knows, so the answer's `arguments` are cut to the commands the
/// caller's rule lets it run (on the services it asked about). An added [`crate::authz::Authorizer`]
/// is not consulted here: it still decides each command when it is sent.
pub struct CommandList {
    routes: HashMap<String, Arc<KeaPolicy>>,
}

impl CommandList {
    /// For the Kea routes given as (route name, its rules).
    pub fn new(routes: impl IntoIterator<Item = (String, Arc<KeaPolicy>)>) -> CommandList {
        CommandList {
            routes: routes.into_iter().collect(),
        }
    }
}

#[async_trait::async_trait]
impl HttpFilter for CommandList {
    fn name(&self) -> &str {
        "list-commands"
    }

    fn phases(&self) -> Phases {
        Phases::KEA_ANSWER
    }

    fn wants_kea_answer(&self, req: &Request<'_>, cmd: &Command) -> bool {
        cmd.command == "list-commands" && self.routes.contains_key(req.route)
    }

    fn kea_answer(&self, req: &Request<'_>, cmd: &Command, answer: &mut Value) {
        let Some(policy) = self.routes.get(req.route) else {
            return;
        };
        let services = cmd.effective_services();
        let cut = |element: &mut Value| {
            if let Some(Value::Array(names)) = element.get_mut("arguments") {
                names.retain(|n| {
                    n.as_str()
                        .is_some_and(|name| policy.may_run(req.identity, name, services))
                });
            }
        };
        match answer {
            Value::Array(elements) => elements.iter_mut().for_each(cut),
            element => cut(element),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Identity;
    use crate::http::kea::test_support::{cert, cmd, policy};

    /// The Control Agent answers `list-commands` with one object, a daemon's with a list: both
    /// are cut, other routes and other commands are left alone.
    #[test]
    fn command_list_cuts_both_answer_shapes() {
        let p = Arc::new(policy(
            "rules:\n  - { identity: [\"cn:dash\"], commands: { allow: [\"*-get\", \"list-commands\"] } }\n",
        ));
        let f = CommandList::new([("kea".to_string(), p)]);
        let dash = cert("dash");
        let header = pingora_http::RequestHeader::build("POST", b"/", None).unwrap();
        let req = |route| Request {
            listener: "l",
            identity: Identity::Verified(&dash),
            client: None,
            route,
            header: &header,
        };
        let lc = cmd("list-commands", &[]);
        assert!(f.wants_kea_answer(&req("kea"), &lc));
        assert!(!f.wants_kea_answer(&req("other"), &lc));
        assert!(!f.wants_kea_answer(&req("kea"), &cmd("config-get", &[])));
        let mut one = serde_json::json!({"result": 0, "arguments": ["config-get", "config-set", "list-commands"]});
        f.kea_answer(&req("kea"), &lc, &mut one);
        assert_eq!(
            one["arguments"],
            serde_json::json!(["config-get", "list-commands"])
        );
        let mut list = serde_json::json!([{"result": 0, "arguments": ["shutdown", "status-get"]}]);
        f.kea_answer(&req("kea"), &cmd("list-commands", &["dhcp4"]), &mut list);
        assert_eq!(list[0]["arguments"], serde_json::json!(["status-get"]));
    }
}
