//! A real OpenID provider for the JWT bearer-token tests: `tests/oidc/provider.js` (npm
//! `oidc-provider`, installed by `make test` through `scripts/deps.sh`) over HTTPS on
//! 127.0.0.1, issuing JWT access tokens with the client-credentials grant, and
//! `tests/oidc/craft.js`, which signs the hostile tokens a real provider will not issue with
//! the provider's own keys.
//!
//! [`Idp::start`] makes a CA and a 127.0.0.1 server certificate in a temp dir, runs the
//! provider on a [`reserved_port`] (Node binds with `SO_REUSEADDR`, so the reservation holds)
//! and stops it on drop. Everything it runs is bounded in time (`curl --max-time`, a deadline
//! on `node craft.js`). The calls block: an async test may make them from its own thread (the
//! provider is another process, and nothing it waits on runs on the test's runtime).
//!
//! Clients, resources and admin endpoints are listed at the top of `tests/oidc/provider.js`.

use super::env::{in_ci, require_binary, reserved_port};
use super::pki::Pki;
use super::wait::{first_within, POLL};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The client whose tokens carry `groups: ["dhcp-admins"]`: (client id, secret).
pub const ADMIN: (&str, &str) = ("gatehouse-admin", "admin-secret");
/// The client whose tokens carry `groups: ["viewers"]`: (client id, secret).
pub const VIEWER: (&str, &str) = ("gatehouse-viewer", "viewer-secret");

/// How long the provider may take to print its `{issuer, port}` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// curl's own limit (`--max-time`, seconds), and the deadline after which it is killed.
const CURL_MAX_TIME: &str = "10";
const CURL_LIMIT: Duration = Duration::from_secs(15);
/// The deadline of one `node craft.js`.
const CRAFT_LIMIT: Duration = Duration::from_secs(20);

/// `tests/oidc` of this crate.
pub fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// The OpenID provider, running; killed (and reaped) on drop.
pub struct Idp {
    child: Child,
    /// Kept open: the provider (`EXIT_WITH_STDIN=1`) exits when it closes, so it dies with
    /// this process even when that one is killed before the drop.
    _stdin: Option<ChildStdin>,
    issuer: String,
    port: u16,
    ca: PathBuf,
    token_url: String,
    jwks_url: String,
    keys_file: PathBuf,
    log: PathBuf,
    /// Whether the log was printed already (by [`Idp::fail`]).
    log_shown: std::cell::Cell<bool>,
    /// Holds the PKI, the keys file and the log; removed after the provider stopped.
    _dir: tempfile::TempDir,
}

/// What one curl call got.
#[derive(Debug)]
pub struct CurlReply {
    /// HTTP status; 0 when there was no HTTP response (refused, reset, timed out).
    pub status: u16,
    /// The response body.
    pub body: String,
    /// curl's own messages (`-sS`: errors only).
    pub stderr: String,
}

impl Idp {
    /// Starts the provider over HTTPS on 127.0.0.1 and waits (at most 20 s) until it serves
    /// its discovery document. `None` after a loud SKIP when `node`, `curl` or
    /// `tests/oidc/node_modules` is missing; a panic instead under CI (`CI=true`).
    pub fn start() -> Option<Idp> {
        if !installed() {
            return None;
        }
        let started = Instant::now();
        let mut idp = Idp::spawn();
        // Once in CI the provider printed nothing for 20 s while two others, started beside it,
        // came up in under a second; a second start (a fresh port) says whether that repeats.
        idp.issuer = match idp.try_listening() {
            Ok(issuer) => issuer,
            Err(why) => {
                eprintln!(
                    "!!!!! the OpenID provider did not come up ({why}); starting it again. Its log:\n{}",
                    idp.log()
                );
                drop(idp);
                idp = Idp::spawn();
                match idp.try_listening() {
                    Ok(issuer) => issuer,
                    Err(why) => idp.fail(&why),
                }
            }
        };
        idp.discover();
        eprintln!(
            "OpenID provider {} up in {:?} (log {})",
            idp.issuer,
            started.elapsed(),
            idp.log.display()
        );
        Some(idp)
    }

    /// Makes the PKI in a temp dir and runs the provider on a reserved port; the [`Idp`] it
    /// returns (issuer and URLs still empty) stops it on drop, a panic included.
    fn spawn() -> Idp {
        let dir = tempfile::tempdir().expect("a temp dir for the OpenID provider");
        let pki = Pki::new(dir.path(), "idp");
        pki.server("server", &[]);
        let (cert, key) = pki.paths("server");
        let keys_file = dir.path().join("keys.json");
        let log = dir.path().join("provider.log");
        let out = std::fs::File::create(&log).expect("creating the OpenID provider's log");
        let err = out
            .try_clone()
            .expect("a second handle on the OpenID provider's log");
        let port = reserved_port();
        let mut child = Command::new("node")
            .arg(oidc_dir().join("provider.js"))
            .current_dir(oidc_dir())
            .env("PORT", port.to_string())
            .env("TLS_CERT", &cert)
            .env("TLS_KEY", &key)
            .env("KEYS_FILE", &keys_file)
            .env("EXIT_WITH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("running node tests/oidc/provider.js");
        let stdin = child.stdin.take();
        Idp {
            child,
            _stdin: stdin,
            issuer: String::new(),
            port,
            ca: pki.ca_path(),
            token_url: String::new(),
            jwks_url: String::new(),
            keys_file,
            log,
            log_shown: std::cell::Cell::new(false),
            _dir: dir,
        }
    }

    /// Waits for the provider's `{issuer, port}` line; returns the issuer, or what went wrong
    /// (with the process's state when it is still there).
    fn try_listening(&mut self) -> Result<String, String> {
        let (log, port) = (self.log.clone(), self.port);
        let child = &mut self.child;
        let line = first_within(START_TIMEOUT, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let line = text.lines().find_map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .filter(|v| v.get("issuer").is_some())
            });
            match (line, child.try_wait()) {
                (Some(line), _) => Some(Ok(line)),
                (None, Ok(Some(status))) => Some(Err(format!("exited with {status}"))),
                (None, _) => None,
            }
        });
        let line = match line {
            Some(Ok(line)) => line,
            Some(Err(story)) => {
                return Err(format!(
                    "the OpenID provider {story} before it listened on 127.0.0.1:{port}"
                ))
            }
            None => {
                let pid = self.child.id();
                let state = |f: &str| {
                    std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default()
                };
                return Err(format!(
                    "the OpenID provider printed no {{issuer, port}} line within {START_TIMEOUT:?} (pid {pid}, wchan {:?}, stat {:?})",
                    state("wchan"),
                    state("stat").trim()
                ));
            }
        };
        let issuer = line["issuer"].as_str().unwrap_or_default();
        if issuer != format!("https://127.0.0.1:{port}") || line["port"] != port {
            return Err(format!(
                "the OpenID provider says {line}, asked for https on 127.0.0.1:{port}"
            ));
        }
        Ok(issuer.to_string())
    }

    /// Reads the token endpoint and the JWKS URL from the discovery document.
    fn discover(&mut self) {
        let discovery = self.get_json(&format!("{}/.well-known/openid-configuration", self.issuer));
        let field = |name: &str| -> String {
            discovery[name]
                .as_str()
                .unwrap_or_else(|| self.fail(&format!("discovery has no {name}: {discovery}")))
                .to_string()
        };
        if field("issuer") != self.issuer {
            self.fail(&format!("discovery names another issuer: {discovery}"));
        }
        let (token_url, jwks_url) = (field("token_endpoint"), field("jwks_uri"));
        self.token_url = token_url;
        self.jwks_url = jwks_url;
    }

    /// `https://127.0.0.1:PORT`, the `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA (PEM) that signed the provider's server certificate: Gatehouse's issuer `ca:`,
    /// curl's `--cacert`.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca
    }

    /// Its `jwks_uri` (from the discovery document).
    pub fn jwks_url(&self) -> &str {
        &self.jwks_url
    }

    /// Its `token_endpoint` (from the discovery document).
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The provider's PRIVATE JWKS, rewritten on every rotation (what `craft.js` signs with).
    pub fn keys_file(&self) -> &Path {
        &self.keys_file
    }

    /// What the provider printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with `what` and the provider's log.
    pub fn fail(&self, what: &str) -> ! {
        self.log_shown.set(true);
        panic!(
            "{what}\n----- OpenID provider log ({}) -----\n{}-----",
            self.log.display(),
            self.log()
        )
    }

    /// A JWT access token for `client_id`/`secret` (client-credentials grant) whose audience
    /// is what `resource` maps to (`urn:gatehouse`, `urn:gatehouse:es256`, ...).
    pub fn token(&self, client_id: &str, secret: &str, resource: &str) -> String {
        let r = self.curl(
            &[
                "--fail-with-body",
                "-u",
                &format!("{client_id}:{secret}"),
                "--data-urlencode",
                "grant_type=client_credentials",
                "--data-urlencode",
                &format!("resource={resource}"),
            ],
            &self.token_url,
        );
        if r.status != 200 {
            self.fail(&format!("token for {client_id} ({resource}): {r:?}"));
        }
        let reply: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| self.fail(&format!("token reply is not JSON ({e}): {r:?}")));
        reply["access_token"]
            .as_str()
            .unwrap_or_else(|| self.fail(&format!("token reply without access_token: {reply}")))
            .to_string()
    }

    /// New RSA, EC and Ed25519 keys with new kids, signing from now on; the old ones stay in
    /// the JWKS unless `drop_old`. Returns the kids now published, the new ones first.
    pub fn rotate(&self, drop_old: bool) -> Vec<String> {
        let path = if drop_old {
            "/__admin/rotate?drop_old=1"
        } else {
            "/__admin/rotate"
        };
        let reply = self.admin(path);
        reply["kids"]
            .as_array()
            .unwrap_or_else(|| self.fail(&format!("rotate reply without kids: {reply}")))
            .iter()
            .map(|k| k.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Makes the JWKS and the discovery document fail: `how` = `"503"` (an HTTP 503) or
    /// `"reset"` (the connection is reset). Tokens are still issued.
    pub fn down(&self, how: &str) {
        assert!(
            how == "503" || how == "reset",
            "Idp::down: how is \"503\" or \"reset\", not {how:?}"
        );
        self.admin(&format!("/__admin/down?how={how}"));
    }

    /// Ends [`Idp::down`].
    pub fn up(&self) {
        self.admin("/__admin/up");
    }

    /// GET `url` with the provider's CA: whatever the answer (status 0: no HTTP response).
    pub fn get(&self, url: &str) -> CurlReply {
        self.curl(&[], url)
    }

    /// The provider's public JWKS (GET [`Idp::jwks_url`], which must answer 200).
    pub fn jwks(&self) -> Value {
        self.get_json(&self.jwks_url)
    }

    /// The crafted tokens of `tests/oidc/craft.js`, by case (`valid`, `expired`, `alg_none`,
    /// ...), signed with the provider's current keys. `real_token`, a token the provider
    /// issued, is the base of `tampered_payload`/`tampered_signature`; `extra` (an object) is
    /// merged into every crafted token's claims, each case's own claims still winning.
    pub fn craft(&self, real_token: Option<&str>, extra: Option<Value>) -> HashMap<String, String> {
        let mut cmd = Command::new("node");
        cmd.arg(oidc_dir().join("craft.js"))
            .current_dir(oidc_dir())
            .arg(&self.keys_file)
            .arg(&self.issuer)
            .arg(real_token.unwrap_or("-"));
        if let Some(extra) = &extra {
            assert!(
                extra.is_object(),
                "Idp::craft: extra is a JSON object, not {extra}"
            );
            cmd.arg(extra.to_string());
        }
        let out = output_within(cmd, CRAFT_LIMIT, "node tests/oidc/craft.js");
        if !out.status.success() {
            self.fail(&format!(
                "node tests/oidc/craft.js failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            self.fail(&format!(
                "craft.js printed no {{case: token}} object ({e}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        })
    }

    /// curl `args` `url`, trusting the provider's CA.
    fn curl(&self, args: &[&str], url: &str) -> CurlReply {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", CURL_MAX_TIME, "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(&self.ca)
            .args(args)
            .arg(url);
        let out = output_within(cmd, CURL_LIMIT, &format!("curl {url}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        CurlReply {
            status: code.trim().parse().unwrap_or(0),
            body: body.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// GET `url`, which must answer 200 with JSON.
    fn get_json(&self, url: &str) -> Value {
        let r = self.get(url);
        if r.status != 200 {
            self.fail(&format!("GET {url}: {r:?}"));
        }
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| self.fail(&format!("GET {url}: not JSON ({e}): {r:?}")))
    }

    /// POST an admin `path` (`/__admin/...`), which must answer 200 with JSON.
    fn admin(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.issuer);
        let r = self.curl(&["-X", "POST"], &url);
        if r.status != 200 {
            self.fail(&format!("POST {url}: {r:?}"));
        }
        serde_json::from_str(&r.body)
            .unwrap_or_else(|e| self.fail(&format!("POST {url}: not JSON ({e}): {r:?}")))
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The temp dir (and the log with it) goes next: show the log of a failed test.
        if std::thread::panicking() && !self.log_shown.get() {
            eprintln!(
                "----- OpenID provider log ({}) -----\n{}-----",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Whether `node`, `curl` and the provider's npm packages are there; if not, a loud SKIP (a
/// panic under CI).
fn installed() -> bool {
    if !require_binary("node") || !require_binary("curl") {
        return false;
    }
    let modules = oidc_dir().join("node_modules");
    if modules.join("oidc-provider").is_dir() && modules.join("jose").is_dir() {
        return true;
    }
    let msg = format!(
        "\n!!!!! SKIPPED: {} is missing or incomplete (run `make test`, which installs it, \
         or `npm ci --prefix tests/oidc`) !!!!!\n",
        modules.display()
    );
    if in_ci() {
        panic!("{msg} (CI=true: peer tests may not skip)");
    }
    eprintln!("{msg}");
    false
}

/// A JWT's header and payload, decoded (the signature is not checked).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let part = |i: usize| -> Value {
        let b64 = token
            .split('.')
            .nth(i)
            .unwrap_or_else(|| panic!("not a JWT (no part {i}): {token}"));
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap_or_else(|e| panic!("JWT part {i} is not base64url ({e}): {token}"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("JWT part {i} is not JSON ({e}): {token}"))
    };
    (part(0), part(1))
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) and kills it when it is still running
/// after `limit`, panicking with `what`.
fn output_within(mut cmd: Command, limit: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    // Read both pipes while waiting: a child that fills one would block forever.
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: still running after {limit:?}, killed");
            }
            Err(e) => panic!("{what}: waiting for it: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().expect("the stdout reader thread"),
        stderr: stderr.join().expect("the stderr reader thread"),
    }
}
