//! The serde schema of the YAML file: what each key is, its default, and nothing else.
//! Unknown keys are rejected (`deny_unknown_fields`); what serde cannot check is
//! validation's job (`Config::validate`).

use super::units::{Duration, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// The Icinga cluster relay; needed when a listener accepts `cluster`.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
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
    /// What the listener accepts, told apart by the first byte: `http`, `cluster`.
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
    Cluster,
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
    /// off for `cluster` only (see [`ListenerTls::resumption`]).
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

/// `cluster:` — the Icinga 2 cluster relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Which upstream a link goes to, by the SNI the client sent; first match wins.
    pub routes: Vec<ClusterRoute>,
    /// Client certificates presented upstream on behalf of authenticated clients.
    #[serde(default)]
    pub upstream_identity: Option<UpstreamIdentity>,
    /// Sizes, caps and idle timeouts.
    #[serde(default)]
    pub limits: ClusterLimits,
    /// Method policy; absent = Icinga's own rules (see `default_cluster_policy`).
    #[serde(default)]
    pub policy: Option<Vec<ClusterPolicyRule>>,
    /// Denied messages tolerated on one link before it is closed.
    #[serde(default = "default_max_violations")]
    pub max_violations: u32,
}

fn default_max_violations() -> u32 {
    10
}

/// `cluster.routes[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRoute {
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

/// `cluster.upstream_identity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamIdentity {
    /// Folder of `<cn>.crt` + `<cn>.key`, presented upstream for client `<cn>`.
    pub cert_dir: PathBuf,
    /// When `<cn>.crt` is absent.
    #[serde(default)]
    pub missing: MissingIdentity,
}

/// `cluster.limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLimits {
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
    #[serde(default = "default_cluster_idle")]
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
fn default_cluster_idle() -> Duration {
    Duration::secs(60)
}
fn default_anon_idle() -> Duration {
    Duration::secs(10)
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            anonymous_max_clients: default_anon_clients(),
            anonymous_max_per_ip: default_anon_per_ip(),
            certificate_request_size: default_cert_request_size(),
            anonymous_message_size: default_anon_size(),
            message_size: default_msg_size(),
            idle_timeout: default_cluster_idle(),
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

/// `cluster.policy[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPolicyRule {
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
pub fn default_cluster_policy() -> Vec<ClusterPolicyRule> {
    let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    vec![
        ClusterPolicyRule {
            identity: "anonymous".into(),
            direction: PolicyDirection::Upstream,
            allow: list(&[
                "icinga::Hello",
                "event::Heartbeat",
                "pki::RequestCertificate",
            ]),
            deny: None,
        },
        ClusterPolicyRule {
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
