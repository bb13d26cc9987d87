//! Building your own edge: Gatehouse with two cluster message filters of its own.
//!
//! - `Redact` rewrites `password=…` in `event::CheckResult` messages (plugin output that
//!   leaked a credential) to `password=***` before the master stores it;
//! - `Ping` answers `example::Ping` at the edge, without going upstream.
//!
//! Every other message passes byte-identical, and the YAML features (method policy,
//! `cert_request` rewrite, `cert_dir` identities, audit) still apply: they are filters and
//! mappers of the same kind, registered first.
//!
//! ```sh
//! cargo run --example redact_filter -- -c conf/icinga-edge.yaml
//! ```

use gatehouse::cluster::envelope;
use gatehouse::cluster::filter::{Action, Interest, LinkInfo, Message, RpcFilter};
use gatehouse::{Gatehouse, RunOptions};
use std::process::ExitCode;

/// Masks the value after `password=` in check results.
struct Redact;

const NEEDLE: &[u8] = b"password=";

impl RpcFilter for Redact {
    fn name(&self) -> &str {
        "redact"
    }

    fn interest(&self) -> Interest {
        Interest::methods(["event::CheckResult"]).upstream_only()
    }

    fn on_message(&self, _link: &LinkInfo<'_>, msg: &Message<'_>) -> Action {
        let p = msg.payload();
        if !p.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
            return Action::Forward; // the common case: no copy at all
        }
        let mut out = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < p.len() {
            if p[i..].starts_with(NEEDLE) {
                out.extend_from_slice(NEEDLE);
                i += NEEDLE.len();
                // The value ends where the word does; `"` and `\` end it too, so the JSON
                // string around it stays valid.
                while i < p.len() && !matches!(p[i], b'"' | b'\\' | b' ' | b',' | b';' | b'&') {
                    i += 1;
                }
                out.extend_from_slice(b"***");
            } else {
                out.push(p[i]);
                i += 1;
            }
        }
        Action::Rewrite(out)
    }
}

/// Answers `example::Ping` with `{"result":{"pong":true}}`, echoing its `id`.
struct Ping;

impl RpcFilter for Ping {
    fn name(&self) -> &str {
        "ping"
    }

    fn interest(&self) -> Interest {
        Interest::methods(["example::Ping"]).upstream_only()
    }

    fn on_message(&self, link: &LinkInfo<'_>, msg: &Message<'_>) -> Action {
        let id = envelope::members(msg.payload())
            .ok()
            .and_then(|ms| ms.into_iter().find(|m| m.key == "id"))
            .map(|m| String::from_utf8_lossy(&msg.payload()[m.value]).into_owned())
            .unwrap_or_else(|| "null".into());
        let who = serde_json::Value::from(link.identity.to_string());
        Action::Answer(
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"pong":true,"you":{who}}}}}"#)
                .into_bytes(),
        )
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    let [_, flag, file] = &args[..] else {
        eprintln!("usage: redact_filter -c FILE");
        return ExitCode::from(2);
    };
    if flag != "-c" {
        eprintln!("usage: redact_filter -c FILE");
        return ExitCode::from(2);
    }
    let run = Gatehouse::load(file.as_ref()).and_then(|g| {
        g.with_rpc_filter(Redact)
            .with_rpc_filter(Ping)
            .run(&RunOptions::default())
    });
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}
