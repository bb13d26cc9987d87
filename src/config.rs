//! The YAML configuration: schema, units (durations, sizes) and semantic validation.
//!
//! Parsing and validation are separate steps (as in River): serde turns the file into
//! [`Config`], rejecting unknown keys with the key path and line; [`Config::validate`] then
//! checks what serde cannot (references between sections, duplicates, combinations) and
//! reports *every* problem, each naming its key path. Loading the certificates the config
//! names is the TLS module's job ([`crate::tls`]), reported the same way.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One problem in a configuration, located by its key path (`upstreams.kea.tls.ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, with `[i]` for list items; empty when the whole file is at fault.
    pub path: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl ConfigError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file the problems are in.
    pub file: PathBuf,
    /// The problems, in the order found.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem(s) found",
            self.file.display(),
            self.errors.len()
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === units ===

/// A duration written as `500ms`, `10s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Parses `500ms`, `10s`, `1.5s`, `5m`, `1h`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration `{s}`: missing unit (ms, s, m or h)"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration `{s}`: `{num}` is not a number"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            other => {
                return Err(format!(
                    "invalid duration `{s}`: unknown unit `{other}` (use ms, s, m or h)"
                ))
            }
        };
        if !secs.is_finite() || secs > 1e9 {
            return Err(format!("invalid duration `{s}`: out of range"));
        }
        Ok(Duration(std::time::Duration::from_secs_f64(secs)))
    }

    /// The value as a `std` duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    const fn secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A byte size written as `1024`, `512KiB`, `1MiB`, `1GiB` (or decimal `kB`/`MB`/`GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Parses a size with an optional binary or decimal unit.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid size `{s}`: expected a whole number and a unit like 1MiB")
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "invalid size `{s}`: unknown unit `{other}` (use B, KiB, MiB, GiB, kB, MB, GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("invalid size `{s}`: too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

// === schema ===

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-level settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Where Gatehouse accepts connections.
    pub listeners: Vec<Listener>,
    /// Named groups of upstream peers.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    /// HTTP routes, matched by host and longest path prefix.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The Icinga cluster relay; needed when a listener accepts `jsonrpc`.
    #[serde(default)]
    pub jsonrpc: Option<JsonRpc>,
    /// The Prometheus endpoint; absent = no metrics listener.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// The audit log; absent = the log target `gatehouse::audit`.
    #[serde(default)]
    pub audit: Option<Audit>,
    /// The folder relative paths resolve against (the config file's folder); set by the loader.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `server:` — process settings handed to Pingora.
///
/// `Serialize` lists the keys for the test that every one of them reaches Pingora's
/// `ServerConf` (see `server::server_conf`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads per service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Pid file (also used by `--daemon`).
    #[serde(default = "default_pid_file")]
    pub pid_file: PathBuf,
    /// Unix socket used to hand listeners over during a graceful upgrade.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: PathBuf,
    /// After a stop signal, how long to keep accepting before closing listeners.
    #[serde(default = "default_grace")]
    pub grace_period: Duration,
    /// After listeners close, how long in-flight work may take to finish.
    #[serde(default = "default_grace")]
    pub graceful_shutdown_timeout: Duration,
    /// Where the process logs when daemonized.
    #[serde(default)]
    pub error_log: Option<PathBuf>,
    /// Let idle worker threads steal tasks from busy ones (Pingora's default). Off pins each
    /// connection to the thread that accepted it, which under load piles connections onto one
    /// thread (README, Performance: p99 several times worse measured off).
    #[serde(default = "yes")]
    pub work_stealing: bool,
}

fn default_threads() -> usize {
    2
}
fn default_pid_file() -> PathBuf {
    PathBuf::from("/tmp/gatehouse.pid")
}
fn default_upgrade_sock() -> PathBuf {
    PathBuf::from("/tmp/gatehouse_upgrade.sock")
}
fn default_grace() -> Duration {
    Duration::secs(5)
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            threads: default_threads(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
            grace_period: default_grace(),
            graceful_shutdown_timeout: default_grace(),
            error_log: None,
            work_stealing: true,
        }
    }
}

/// One listening address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name used in logs and metric labels.
    pub name: String,
    /// `127.0.0.1:5665` or `[::1]:5665`.
    pub address: String,
    /// TLS termination; absent = plaintext (for tests and local sidecars only).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// What the listener accepts, told apart by the first byte: `http`, `jsonrpc`.
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
    /// How long a client may take to send its first byte after the handshake.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout: Duration,
    /// How long an HTTP/1 client may take to send one request head (slowloris guard).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Per-connection read buffer below TLS. It only has to hold a record header and a small
    /// record: larger reads bypass it. Pingora's default (64 KiB) stays resident per idle link.
    #[serde(default = "default_read_buffer")]
    pub read_buffer: Size,
    /// An HTTP/1 keep-alive connection idle this long between requests, or an HTTP/2
    /// connection with no open stream this long, is closed. Whole seconds (rounded up).
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Duration,
    /// Requests served on one HTTP/1 connection before it is closed (`Connection: close` on
    /// the last answer), so per-connection memory is freed now and then (nginx's
    /// `keepalive_requests`).
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u32,
}

/// A protocol a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2 (anything whose first byte is not a digit).
    Http,
    /// Icinga 2 cluster JSON-RPC in netstrings (first byte is a digit).
    Jsonrpc,
}

fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Http]
}
fn default_first_byte_timeout() -> Duration {
    Duration::secs(10)
}
fn default_header_timeout() -> Duration {
    Duration::secs(10)
}
fn default_read_buffer() -> Size {
    Size(1024)
}
fn default_keepalive_timeout() -> Duration {
    Duration::secs(60)
}
fn default_keepalive_requests() -> u32 {
    1000
}

/// Whether and how clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a certificate signed by `client_ca`.
    Required,
    /// Any certificate (or none) is accepted; only a verified one makes the client authenticated.
    Optional,
    /// No certificate is requested.
    None,
}

/// Lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "tls1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "tls1.3")]
    Tls13,
}

/// `listeners[].tls:` — downstream TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM chain, leaf first: used when no `sni_certs` entry matches.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// Certificates chosen by the SNI the client sent.
    #[serde(default)]
    pub sni_certs: Vec<SniCert>,
    /// Client certificate policy.
    #[serde(default = "default_client_auth")]
    pub client_auth: ClientAuth,
    /// CA bundle that client certificates are verified against.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Lowest accepted protocol version.
    #[serde(default = "default_min_version")]
    pub min_version: TlsVersion,
    /// Key-exchange groups, BoringSSL syntax (`X25519:P-256`).
    #[serde(default)]
    pub curves: Option<String>,
    /// ALPN protocols offered, in preference order: `h2`, `http/1.1`.
    #[serde(default)]
    pub alpn: Option<Vec<String>>,
    /// Session tickets and the session cache. Default: on when the listener carries `http`,
    /// off for `jsonrpc` only (see [`ListenerTls::resumption`]).
    #[serde(default)]
    pub session_resumption: Option<bool>,
}

impl ListenerTls {
    /// Whether clients of a listener carrying `protocols` may resume TLS sessions. Icinga 2
    /// never resumes, so on a cluster-only port a ticket would be minted on every handshake and,
    /// BoringSSL sending TLS 1.3 tickets with the server's first write, held by every idle link.
    pub fn resumption(&self, protocols: &[Protocol]) -> bool {
        self.session_resumption
            .unwrap_or_else(|| protocols.contains(&Protocol::Http))
    }
}

fn default_client_auth() -> ClientAuth {
    ClientAuth::Required
}
fn default_min_version() -> TlsVersion {
    TlsVersion::Tls12
}

/// A certificate served for the listed SNI names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// Exact names (case-insensitive) or `*.example.org` globs.
    pub names: Vec<String>,
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// How a peer is picked from an upstream group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Each peer in turn.
    #[default]
    RoundRobin,
    /// A peer at random.
    Random,
    /// The same client identity (CN, else address) sticks to the same peer.
    ConsistentHash,
}

/// `upstreams.<name>:` — a group of equivalent peers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` socket addresses.
    pub peers: Vec<String>,
    /// Peer selection.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Active health checking; absent = every peer is assumed healthy.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// TCP connect plus TLS handshake budget.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Longest wait for any read from the peer (response headers or body).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Duration,
    /// Longest time a pooled idle connection is kept (keep under the peer's own).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Upstream TLS; absent = plaintext.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

fn default_connect_timeout() -> Duration {
    Duration::secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::secs(20)
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` over the upstream's own TLS settings answers 2xx.
    Http,
}

/// `upstreams.<name>.health_check:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `tcp` or `http`.
    pub kind: HealthCheckKind,
    /// Time between checks.
    #[serde(default = "default_hc_interval")]
    pub interval: Duration,
    /// Path requested by `http` checks.
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Host header of `http` checks (default: the SNI, else `localhost`).
    #[serde(default)]
    pub host: Option<String>,
}

fn default_hc_interval() -> Duration {
    Duration::secs(5)
}
fn default_hc_path() -> String {
    "/".into()
}

/// Upstream ALPN choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamAlpn {
    /// HTTP/1.1 only.
    #[default]
    H1,
    /// HTTP/2 only.
    H2,
    /// HTTP/2 preferred, HTTP/1.1 accepted.
    H2h1,
}

/// `upstreams.<name>.tls:` — this upstream's own trust and client identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// CA bundle the peer's certificate is verified against (default: system store).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain presented to the peer (leaf first).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// SNI sent, and the name the peer's certificate is checked against.
    pub sni: String,
    /// Verify the peer's chain.
    #[serde(default = "yes")]
    pub verify_cert: bool,
    /// Verify the peer's name against `sni` (or `alt_cn`).
    #[serde(default = "yes")]
    pub verify_hostname: bool,
    /// Another name accepted in the peer's certificate.
    #[serde(default)]
    pub alt_cn: Option<String>,
    /// Key-exchange groups, BoringSSL syntax.
    #[serde(default)]
    pub curves: Option<String>,
    /// Send a second key share in the ClientHello.
    #[serde(default = "yes")]
    pub second_keyshare: bool,
    /// Application protocol spoken to the peer.
    #[serde(default)]
    pub alpn: UpstreamAlpn,
}

fn yes() -> bool {
    true
}

/// `routes[]:` — which upstream serves a host and path prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name used in logs and metric labels.
    pub name: String,
    /// Exact host, `*.example.org`, or `*` (any).
    #[serde(default = "any_host")]
    pub host: String,
    /// Path prefix; the longest matching prefix wins.
    #[serde(default = "root_path")]
    pub path_prefix: String,
    /// Key of `upstreams:`.
    pub upstream: String,
    /// Identities admitted (any match admits); absent = everyone the listener accepts.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Identities refused; wins over `allow`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Tell the upstream who the client is.
    #[serde(default)]
    pub forward_identity: ForwardIdentity,
    /// Kea command-level authorization for this route.
    #[serde(default)]
    pub kea: Option<KeaRoute>,
}

/// How the client identity is passed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardIdentity {
    /// Nothing (any incoming `X-Forwarded-Client-Cert` is still removed).
    #[default]
    None,
    /// Envoy's `X-Forwarded-Client-Cert: Hash=…;Subject="…";URI=…;DNS=…`.
    Xfcc,
}

/// `routes[].kea` — what each identity may ask a Kea Control Agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeaRoute {
    /// Largest command body read (413 beyond).
    #[serde(default = "default_kea_body")]
    pub max_body: Size,
    /// The first rule whose identity matches decides.
    #[serde(default)]
    pub rules: Vec<KeaRule>,
    /// For identities no rule matches.
    #[serde(default)]
    pub default: KeaDefault,
}

fn default_kea_body() -> Size {
    Size(1 << 20)
}

/// Verdict for identities no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeaDefault {
    /// Refuse (403).
    #[default]
    Deny,
    /// Forward.
    Allow,
}

/// `routes[].kea.rules[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeaRule {
    /// Identity matchers (`cn:`, `dns:`, `spiffe://`, `fingerprint:sha256:`, `anonymous`).
    pub identity: Vec<String>,
    /// Commands (globs); absent = any command.
    #[serde(default)]
    pub commands: Option<AllowDeny>,
    /// Services (`dhcp4`, `dhcp6`, `d2`, …); absent = any service.
    #[serde(default)]
    pub services: Option<AllowDeny>,
}

/// A glob allow list and deny list; deny wins, and an absent allow list allows everything.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AllowDeny {
    /// Only these pass.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// These never pass.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `audit:` — where the audit log of Kea commands and denied cluster messages goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// JSON-lines file, appended to; absent = the log target `gatehouse::audit`.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

fn any_host() -> String {
    "*".into()
}
fn root_path() -> String {
    "/".into()
}

/// `jsonrpc:` — the Icinga 2 cluster relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRpc {
    /// Which upstream a link goes to, by the SNI the client sent; first match wins.
    pub routes: Vec<RpcRoute>,
    /// Client certificates presented upstream on behalf of authenticated clients.
    #[serde(default)]
    pub upstream_identity: Option<UpstreamIdentity>,
    /// Sizes, caps and idle timeouts.
    #[serde(default)]
    pub limits: RpcLimits,
    /// Method policy; absent = Icinga's own rules (see `default_rpc_policy`).
    #[serde(default)]
    pub policy: Option<Vec<RpcPolicyRule>>,
    /// Denied messages tolerated on one link before it is closed.
    #[serde(default = "default_max_violations")]
    pub max_violations: u32,
}

fn default_max_violations() -> u32 {
    10
}

/// `jsonrpc.routes[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcRoute {
    /// Exact name, `*.example.org`, or `*` (anything, including no SNI).
    pub sni: String,
    /// Key of `upstreams:`.
    pub upstream: String,
}

/// What to do when `cert_dir` has no certificate for an authenticated client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MissingIdentity {
    /// Close the link (the master would otherwise see the wrong identity).
    #[default]
    Reject,
    /// Connect with the upstream's own client certificate.
    Own,
}

/// `jsonrpc.upstream_identity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamIdentity {
    /// Folder of `<cn>.crt` + `<cn>.key`, presented upstream for client `<cn>`.
    pub cert_dir: PathBuf,
    /// When `<cn>.crt` is absent.
    #[serde(default)]
    pub missing: MissingIdentity,
}

/// `jsonrpc.limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcLimits {
    /// Most anonymous links open at once; more are refused.
    #[serde(default = "default_anon_clients")]
    pub anonymous_max_clients: usize,
    /// Most anonymous links open at once from one client IP, so one host cannot take every
    /// anonymous slot; more are refused.
    #[serde(default = "default_anon_per_ip")]
    pub anonymous_max_per_ip: usize,
    /// Largest `pki::RequestCertificate` (a CSR message is a few KiB); larger ones are denied
    /// before the client's certificate is spliced in.
    #[serde(default = "default_cert_request_size")]
    pub certificate_request_size: Size,
    /// Largest message from an anonymous client.
    #[serde(default = "default_anon_size")]
    pub anonymous_message_size: Size,
    /// Largest message otherwise (either direction).
    #[serde(default = "default_msg_size")]
    pub message_size: Size,
    /// An authenticated link with no message from one side for this long is closed.
    #[serde(default = "default_rpc_idle")]
    pub idle_timeout: Duration,
    /// The same for anonymous links.
    #[serde(default = "default_anon_idle")]
    pub anonymous_idle_timeout: Duration,
}

fn default_anon_clients() -> usize {
    16
}
fn default_anon_per_ip() -> usize {
    2
}
fn default_cert_request_size() -> Size {
    Size(64 << 10)
}
fn default_anon_size() -> Size {
    Size(1 << 20)
}
fn default_msg_size() -> Size {
    Size(16 << 20)
}
fn default_rpc_idle() -> Duration {
    Duration::secs(60)
}
fn default_anon_idle() -> Duration {
    Duration::secs(10)
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            anonymous_max_clients: default_anon_clients(),
            anonymous_max_per_ip: default_anon_per_ip(),
            certificate_request_size: default_cert_request_size(),
            anonymous_message_size: default_anon_size(),
            message_size: default_msg_size(),
            idle_timeout: default_rpc_idle(),
            anonymous_idle_timeout: default_anon_idle(),
        }
    }
}

/// Which messages a policy rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDirection {
    /// Client → upstream.
    Upstream,
    /// Upstream → client.
    Downstream,
    /// Either way.
    #[default]
    Both,
}

/// `jsonrpc.policy[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcPolicyRule {
    /// An identity matcher, as everywhere: `cn:<glob>`, `dns:<glob>`, `spiffe://…`,
    /// `fingerprint:sha256:<hex>`, `anonymous`, or `"*"` (everyone).
    pub identity: String,
    /// Default `both`.
    #[serde(default)]
    pub direction: PolicyDirection,
    /// Only these methods (globs) pass.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// These methods (globs) are dropped.
    #[serde(default)]
    pub deny: Option<Vec<String>>,
}

/// Icinga's own rules as a policy: anonymous clients may only say hello, heartbeat and ask for
/// a certificate; nobody pushes config, certificates or commands toward its parent.
pub fn default_rpc_policy() -> Vec<RpcPolicyRule> {
    let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    vec![
        RpcPolicyRule {
            identity: "anonymous".into(),
            direction: PolicyDirection::Upstream,
            allow: list(&[
                "icinga::Hello",
                "event::Heartbeat",
                "pki::RequestCertificate",
            ]),
            deny: None,
        },
        RpcPolicyRule {
            identity: "*".into(),
            direction: PolicyDirection::Upstream,
            allow: None,
            deny: list(&[
                "config::Update",
                "config::UpdateObject",
                "config::DeleteObject",
                "pki::UpdateCertificate",
                "event::SetRemovalInfo",
                "event::ExecuteCommand",
            ]),
        },
    ]
}

/// `metrics:` — the Prometheus scrape endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Plain-HTTP address serving the metrics on every path.
    pub address: String,
}

// === loading and validation ===

impl Config {
    /// Reads and parses `file`, then validates it; every problem is reported at once.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: file.to_path_buf(),
            errors,
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| fail(vec![ConfigError::new("", format!("cannot read file: {e}"))]))?;
        let base = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let cfg = Config::parse(&text, &base).map_err(|e| fail(vec![e]))?;
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(fail(errors))
        }
    }

    /// Parses YAML text; `base_dir` is where relative paths resolve.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(yaml_error)?;
        cfg.base_dir = base_dir.to_path_buf();
        Ok(cfg)
    }

    /// Resolves a path from the file against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Checks what the schema cannot: references, duplicates and combinations.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut e = |p: String, m: String| errs.push(ConfigError::new(p, m));

        if self.server.threads == 0 {
            e("server.threads".into(), "must be at least 1".into());
        }
        if self.listeners.is_empty() {
            e("listeners".into(), "at least one listener is needed".into());
        }
        let mut names = HashSet::new();
        let mut addrs: BTreeMap<SocketAddr, String> = BTreeMap::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if l.name.is_empty() || !names.insert(l.name.as_str()) {
                e(
                    format!("{at}.name"),
                    format!("listener name `{}` is empty or used twice", l.name),
                );
            }
            match l.address.parse::<SocketAddr>() {
                Err(_) => e(
                    format!("{at}.address"),
                    format!(
                        "`{}` is not an IP:port address (IPv6 as [::1]:5665)",
                        l.address
                    ),
                ),
                Ok(a) => {
                    if let Some(prev) = addrs.insert(a, at.clone()) {
                        e(
                            format!("{at}.address"),
                            format!("{a} is already used by {prev}"),
                        );
                    }
                }
            }
            if l.protocols.is_empty() {
                e(
                    format!("{at}.protocols"),
                    "must name http, jsonrpc or both".into(),
                );
            }
            // Below 1 KiB most TLS records take several reads; above 1 MiB it is resident
            // memory per idle connection for no gain (larger reads bypass the buffer anyway).
            if !(1024..=1024 * 1024).contains(&l.read_buffer.0) {
                e(
                    format!("{at}.read_buffer"),
                    format!("{} bytes is outside 1KiB..=1MiB", l.read_buffer.0),
                );
            }
            if l.keepalive_timeout.get() < std::time::Duration::from_secs(1) {
                e(
                    format!("{at}.keepalive_timeout"),
                    "must be at least 1s".into(),
                );
            }
            if l.keepalive_requests == 0 {
                e(
                    format!("{at}.keepalive_requests"),
                    "must be at least 1".into(),
                );
            }
            if l.protocols.contains(&Protocol::Jsonrpc) && self.jsonrpc.is_none() {
                e(
                    format!("{at}.protocols"),
                    "jsonrpc needs a top-level `jsonrpc:` section".into(),
                );
            }
            if let Some(t) = &l.tls {
                if t.client_auth != ClientAuth::None && t.client_ca.is_none() {
                    e(
                        format!("{at}.tls.client_ca"),
                        format!("required when client_auth is {:?}", t.client_auth).to_lowercase(),
                    );
                }
                if let Some(alpn) = &t.alpn {
                    for (j, p) in alpn.iter().enumerate() {
                        if p != "h2" && p != "http/1.1" {
                            e(
                                format!("{at}.tls.alpn[{j}]"),
                                format!("unknown protocol `{p}` (use h2 or http/1.1)"),
                            );
                        }
                    }
                    if alpn.is_empty() {
                        e(
                            format!("{at}.tls.alpn"),
                            "must name at least one protocol".into(),
                        );
                    }
                }
                for (j, s) in t.sni_certs.iter().enumerate() {
                    if s.names.is_empty() {
                        e(
                            format!("{at}.tls.sni_certs[{j}].names"),
                            "must list at least one name".into(),
                        );
                    }
                }
            }
        }

        for (name, u) in &self.upstreams {
            let at = format!("upstreams.{name}");
            if u.peers.is_empty() {
                e(format!("{at}.peers"), "at least one peer is needed".into());
            }
            for (j, p) in u.peers.iter().enumerate() {
                if p.parse::<SocketAddr>().is_err() {
                    e(
                        format!("{at}.peers[{j}]"),
                        format!("`{p}` is not an IP:port address"),
                    );
                }
            }
            if let Some(hc) = &u.health_check {
                if !hc.path.starts_with('/') {
                    e(
                        format!("{at}.health_check.path"),
                        "must start with /".into(),
                    );
                }
            }
            if let Some(t) = &u.tls {
                if t.client_cert.is_some() != t.client_key.is_some() {
                    e(
                        format!("{at}.tls"),
                        "client_cert and client_key go together".into(),
                    );
                }
                if t.sni.is_empty() && (t.verify_cert || t.verify_hostname) {
                    e(
                        format!("{at}.tls.sni"),
                        "an empty SNI disables verification: set it, or set verify_cert and verify_hostname to false".into(),
                    );
                }
            }
        }

        let mut route_names = HashSet::new();
        let mut route_keys = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !route_names.insert(r.name.as_str()) {
                e(
                    format!("{at}.name"),
                    format!("route name `{}` is used twice", r.name),
                );
            }
            if !self.upstreams.contains_key(&r.upstream) {
                e(
                    format!("{at}.upstream"),
                    format!("unknown upstream `{}`", r.upstream),
                );
            }
            if !r.path_prefix.starts_with('/') {
                e(format!("{at}.path_prefix"), "must start with /".into());
            }
            if let Err(m) = crate::host::HostPattern::parse(&r.host) {
                e(format!("{at}.host"), m);
            }
            for (j, m) in r.allow.iter().flatten().enumerate() {
                if let Err(msg) = crate::authz::Matcher::parse(m) {
                    e(format!("{at}.allow[{j}]"), msg);
                }
            }
            for (j, m) in r.deny.iter().enumerate() {
                if let Err(msg) = crate::authz::Matcher::parse(m) {
                    e(format!("{at}.deny[{j}]"), msg);
                }
            }
            if let Some(k) = &r.kea {
                for (j, rule) in k.rules.iter().enumerate() {
                    if rule.identity.is_empty() {
                        e(
                            format!("{at}.kea.rules[{j}].identity"),
                            "must list at least one identity".into(),
                        );
                    }
                    for (n, m) in rule.identity.iter().enumerate() {
                        if let Err(msg) = crate::authz::Matcher::parse(m) {
                            e(format!("{at}.kea.rules[{j}].identity[{n}]"), msg);
                        }
                    }
                }
            }
            if !route_keys.insert((r.host.to_ascii_lowercase(), r.path_prefix.as_str())) {
                e(
                    at.clone(),
                    format!(
                        "host `{}` and path_prefix `{}` are already routed by an earlier route",
                        r.host, r.path_prefix
                    ),
                );
            }
        }

        if let Some(j) = &self.jsonrpc {
            if j.routes.is_empty() {
                e(
                    "jsonrpc.routes".into(),
                    "at least one route is needed".into(),
                );
            }
            for (i, r) in j.routes.iter().enumerate() {
                if !self.upstreams.contains_key(&r.upstream) {
                    e(
                        format!("jsonrpc.routes[{i}].upstream"),
                        format!("unknown upstream `{}`", r.upstream),
                    );
                }
                if let Err(m) = crate::host::HostPattern::parse(&r.sni) {
                    e(format!("jsonrpc.routes[{i}].sni"), m);
                }
            }
            if let Some(id) = &j.upstream_identity {
                if !self.resolve(&id.cert_dir).is_dir() {
                    e(
                        "jsonrpc.upstream_identity.cert_dir".into(),
                        format!("{}: not a directory", self.resolve(&id.cert_dir).display()),
                    );
                }
            }
            for (i, r) in j.policy.iter().flatten().enumerate() {
                if let Err(msg) = crate::authz::Matcher::parse(&r.identity) {
                    e(format!("jsonrpc.policy[{i}].identity"), msg);
                }
                if r.allow.is_none() && r.deny.is_none() {
                    e(
                        format!("jsonrpc.policy[{i}]"),
                        "needs `allow`, `deny` or both".into(),
                    );
                }
            }
            if j.limits.anonymous_max_per_ip == 0 {
                e(
                    "jsonrpc.limits.anonymous_max_per_ip".into(),
                    "must be at least 1 (set anonymous_max_clients: 0 to refuse anonymous links)"
                        .into(),
                );
            }
            if j.limits.certificate_request_size < Size(1024) {
                e(
                    "jsonrpc.limits.certificate_request_size".into(),
                    "must be at least 1KiB".into(),
                );
            }
            if j.limits.anonymous_message_size > j.limits.message_size {
                e(
                    "jsonrpc.limits.anonymous_message_size".into(),
                    "must not exceed message_size".into(),
                );
            }
        }

        if let Some(Audit { path: Some(p) }) = &self.audit {
            let p = self.resolve(p);
            if !p
                .parent()
                .is_some_and(|d| d.as_os_str().is_empty() || d.is_dir())
            {
                e(
                    "audit.path".into(),
                    format!("{}: the folder does not exist", p.display()),
                );
            }
        }

        if let Some(m) = &self.metrics {
            match m.address.parse::<SocketAddr>() {
                Err(_) => e(
                    "metrics.address".into(),
                    format!("`{}` is not an IP:port address", m.address),
                ),
                Ok(a) => {
                    if let Some(prev) = addrs.get(&a) {
                        e(
                            "metrics.address".into(),
                            format!("{a} is already used by {prev}"),
                        );
                    }
                }
            }
        }
        errs
    }
}

/// Reports a parse error under its full key path (serde_yaml alone stops at the parent map
/// for errors raised inside a value), with the line where the parser gives one.
fn yaml_error(err: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let line = inner.location().map(|l| l.line());
    let mut msg = inner.to_string();
    // serde_yaml prefixes its own (shorter) path and suffixes the position: drop both.
    if let Some((head, rest)) = msg.split_once(": ") {
        if !head.contains(' ') {
            msg = rest.to_string();
        }
    }
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    if let Some(l) = line {
        msg.push_str(&format!(" (line {l})"));
    }
    let path = if path == "." { String::new() } else { path };
    ConfigError::new(path, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("500ms").unwrap().get().as_millis(), 500);
        assert_eq!(Duration::parse("10s").unwrap().get().as_secs(), 10);
        assert_eq!(Duration::parse("1.5s").unwrap().get().as_millis(), 1500);
        assert_eq!(Duration::parse("2m").unwrap().get().as_secs(), 120);
        assert_eq!(Duration::parse("1h").unwrap().get().as_secs(), 3600);
        assert!(Duration::parse("10").unwrap_err().contains("missing unit"));
        assert!(Duration::parse("10x").unwrap_err().contains("unknown unit"));
        assert!(Duration::parse("s").unwrap_err().contains("not a number"));
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("1MiB").unwrap().0, 1 << 20);
        assert_eq!(Size::parse("512KiB").unwrap().0, 512 << 10);
        assert_eq!(Size::parse("1000").unwrap().0, 1000);
        assert_eq!(Size::parse("2MB").unwrap().0, 2_000_000);
        assert!(Size::parse("1 parsec").is_err());
        assert!(Size::parse("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }
}
