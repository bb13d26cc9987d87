//! Building your own edge: a Kea command Gatehouse answers itself.
//!
//! `{"command": "gatehouse-whoami"}` is answered at the edge, Kea-shaped, with who the caller
//! is as Gatehouse sees it (CN, SANs, fingerprint) — handy when debugging certificates and
//! rules. Every other command goes to Kea under the YAML rules as usual. The answered command
//! is still authorized by those rules first (list it, or use `default: allow`), audited
//! (`"verdict": "answered"`) and counted (`gatehouse_kea_commands_total{verdict="answered"}`).
//!
//! ```sh
//! cargo run --example kea_whoami -- -c conf/kea-rbac.yaml
//! ```

use gatehouse::http::filter::{EdgeAnswer, HttpAction, HttpFilter, Phases, Request};
use gatehouse::http::kea::Command;
use gatehouse::{Gatehouse, RunOptions};
use serde_json::json;
use std::process::ExitCode;

/// Answers `gatehouse-whoami`.
struct WhoAmI;

#[gatehouse::async_trait]
impl HttpFilter for WhoAmI {
    fn name(&self) -> &str {
        "whoami"
    }

    fn phases(&self) -> Phases {
        Phases::KEA_COMMAND
    }

    async fn kea_command(&self, req: &Request<'_>, cmd: &Command, _body: &[u8]) -> HttpAction {
        if cmd.command != "gatehouse-whoami" {
            return HttpAction::Continue;
        }
        let arguments = match (req.identity.cert(), req.identity.user()) {
            (Some(c), user) => json!({
                "cn": c.cn,
                "subject": c.subject,
                "dns": c.dns,
                "uris": c.uris,
                "fingerprint": c.fingerprint,
                "user": user,
                "route": req.route,
            }),
            (None, Some(user)) => json!({ "user": user, "route": req.route }),
            (None, None) => json!({ "anonymous": true, "route": req.route }),
        };
        let answer =
            json!([{ "result": 0, "text": req.identity.to_string(), "arguments": arguments }]);
        HttpAction::Answer(EdgeAnswer::json(200, &answer))
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    let [_, flag, file] = &args[..] else {
        eprintln!("usage: kea_whoami -c FILE");
        return ExitCode::from(2);
    };
    if flag != "-c" {
        eprintln!("usage: kea_whoami -c FILE");
        return ExitCode::from(2);
    }
    let run = Gatehouse::load(file.as_ref())
        .and_then(|g| g.with_http_filter(WhoAmI).run(&RunOptions::default()));
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}
