//! Building your own edge: every HTTP request, Kea command and cluster link is also put to an
//! external decision service (OPA / Consul style) before Gatehouse lets it through.
//!
//! The service gets `POST <DECISION_URL>` with
//! `{"input": {"listener": …, "identity": {"cn": …, "fingerprint": …}, "target": {"kind": "http" | "kea" | "link", …}}}`
//! and answers `{"result": {"allow": bool, "reason": "…", "ttl_ms": N}}` (or `{"result": bool}`).
//! Gatehouse bounds each call (2 s), denies when the service fails or is slow, caches answers
//! for `ttl_ms`, and asks again about a live cluster link when its `ttl_ms` runs out — closing
//! the link if the answer turned to deny.
//!
//! ```sh
//! DECISION_URL=http://127.0.0.1:8181/v1/data/gatehouse/decision \
//!   cargo run --example decision_authorizer -- -c conf/icinga-edge.yaml
//! ```
//! Only plain `http://host:port/path` URLs on this host are supported: it is an example.

use gatehouse::authz::{Authorizer, Decision, Question, Target};
use gatehouse::{Error, Gatehouse, RunOptions};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Asks the decision service at `addr` + `path`.
struct DecisionService {
    addr: String,
    path: String,
}

impl DecisionService {
    fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
        let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(DecisionService {
            addr: addr.to_string(),
            path: format!("/{path}"),
        })
    }

    fn input(q: &Question<'_>) -> Value {
        let identity = match (q.identity.cert(), q.identity.user()) {
            (Some(c), user) => json!({ "cn": c.cn, "fingerprint": c.fingerprint, "user": user }),
            (None, Some(user)) => json!({ "user": user }),
            (None, None) => json!({ "anonymous": true }),
        };
        let target = match q.target {
            Target::Http {
                route,
                method,
                path,
            } => json!({ "kind": "http", "route": route, "method": method, "path": path }),
            Target::Kea {
                route,
                command,
                services,
            } => json!({ "kind": "kea", "route": route, "command": command, "services": services }),
            Target::Link { sni, upstream } => {
                json!({ "kind": "link", "sni": sni, "upstream": upstream })
            }
        };
        json!({ "input": { "listener": q.listener, "identity": identity, "target": target } })
    }

    /// One HTTP/1.1 exchange; the service closes the connection after answering.
    async fn post(&self, body: &[u8]) -> gatehouse::Result<Value> {
        let io = |e: std::io::Error| {
            Error::extension(format!("decision service {}", self.addr)).because(e)
        };
        let mut s = TcpStream::connect(&self.addr).await.map_err(io)?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).await.map_err(io)?;
        s.write_all(body).await.map_err(io)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(io)?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| Error::extension("no HTTP answer from the decision service"))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(Error::extension(format!(
                "decision service answered {}",
                head.lines().next().unwrap_or("")
            )));
        }
        serde_json::from_str(body)
            .map_err(|e| Error::extension("decision service: not JSON").because(e))
    }
}

#[gatehouse::async_trait]
impl Authorizer for DecisionService {
    fn name(&self) -> &str {
        "decision-service"
    }

    async fn authorize(&self, q: &Question<'_>) -> gatehouse::Result<Decision> {
        let body = serde_json::to_vec(&Self::input(q))
            .map_err(|e| Error::extension("decision input").because(e))?;
        let v = self.post(&body).await?;
        let r = &v["result"];
        let (allow, reason, ttl) = match r {
            Value::Bool(b) => (*b, None, None),
            Value::Object(_) => (
                r["allow"]
                    .as_bool()
                    .ok_or_else(|| Error::extension("result.allow is not a boolean"))?,
                r["reason"].as_str().map(str::to_string),
                r["ttl_ms"].as_u64(),
            ),
            _ => return Err(Error::extension("no result in the decision")),
        };
        let d = if allow {
            Decision::allow()
        } else {
            Decision::deny(reason.unwrap_or_else(|| "denied by the decision service".into()))
        };
        Ok(match ttl {
            Some(ms) => d.with_ttl(Duration::from_millis(ms)),
            None => d,
        })
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    let ([_, flag, file], Ok(url)) = (&args[..], std::env::var("DECISION_URL")) else {
        eprintln!("usage: DECISION_URL=http://HOST:PORT/PATH decision_authorizer -c FILE");
        return ExitCode::from(2);
    };
    let service = match DecisionService::from_url(&url) {
        Ok(s) if flag == "-c" => s,
        Ok(_) => {
            eprintln!("usage: DECISION_URL=http://HOST:PORT/PATH decision_authorizer -c FILE");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("DECISION_URL: {e}");
            return ExitCode::from(2);
        }
    };
    let run = Gatehouse::load(file.as_ref())
        .and_then(|g| g.with_authorizer(service).run(&RunOptions::default()));
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}
