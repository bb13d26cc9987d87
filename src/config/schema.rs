//! The serde schema of the YAML file: what each key is, its default, and nothing else.
//! Unknown keys are rejected (`deny_unknown_fields`); what serde cannot check is `lower`'s
//! job, which turns a [`Document`] into the runtime [`super::Config`]. These types never leave
//! `config/`; the value enums they share with the model live in [`super::model`].

use super::model::{
    AllowDeny, Alpn, BearerMode, ClientAuth, FanOut, ForwardIdentity, KeaDefault, LoadBalancing,
    LogFormat, MissingIdentity, PolicyDirection, ProbeKind, Protocol, TlsVersion, Toward,
};
use super::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Process-level settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Where Gatehouse accepts connections.
    pub listeners: Vec<ListenerSection>,
    /// Named groups of upstream peers.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSection>,
    /// HTTP routes, matched by host and longest path prefix.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// The Icinga cluster relay; needed when a listener accepts `cluster`.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// The Prometheus endpoint; absent = no metrics listener.
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// The audit log; absent = the log target `gatehouse::audit`.
    #[serde(default)]
    pub audit: Option<AuditSection>,
    /// `text` (default) or `json`: the access and cluster-link log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Token issuers (OpenID providers) whose JWT access tokens routes may take.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerSection>,
}

/// `issuers.<name>:` — an OpenID provider (or any JWT issuer) and how to get its keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    /// The `iss` its tokens carry, exactly (discovery is read from here).
    pub issuer: String,
    /// The `aud` values accepted: one, or a list.
    pub audience: OneOrMany,
    /// A JWK set URL; without it and `jwks_file`, the discovery document's `jwks_uri`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWK set file instead of fetching one.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Signature algorithms accepted: RS256, ES256, EdDSA (default: all three).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// Token `typ` headers accepted (e.g. `at+jwt`); empty = any.
    #[serde(default)]
    pub typ: Vec<String>,
    /// CA certificates (PEM) the issuer's HTTPS server must chain to; default: the system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Bound on each fetch of the discovery document or keys.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: HumanDuration,
    /// Keys this old are fetched again (in the background; tokens keep verifying).
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: HumanDuration,
    /// Fewest time between two fetches, whatever asks (an unknown `kid`, a failure).
    #[serde(default = "default_min_refresh_interval")]
    pub min_refresh_interval: HumanDuration,
    /// While fetches fail, keys are used this long after the last one that worked; then the
    /// issuer's tokens are refused.
    #[serde(default = "default_max_stale")]
    pub max_stale: HumanDuration,
}

/// One string or a list of them (a bare number reads as its text, as YAML would quote it).
#[derive(Debug, Clone)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = a.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_fetch_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_refresh_interval() -> HumanDuration {
    HumanDuration::secs(900)
}
fn default_min_refresh_interval() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_max_stale() -> HumanDuration {
    HumanDuration::secs(3600)
}

/// `routes[].bearer` — JWT access tokens (`Authorization: Bearer`) as the caller's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerSection {
    /// Keys of `issuers:` whose tokens this route takes.
    pub issuers: Vec<String>,
    /// `token` (default), `token_and_cert` or `token_or_cert`.
    #[serde(default)]
    pub require: BearerMode,
    /// Send the token on to the upstream (default: removed).
    #[serde(default)]
    pub forward: bool,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_bearer_realm")]
    pub realm: String,
}

fn default_bearer_realm() -> String {
    "gatehouse".into()
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
    /// After SIGTERM (Pingora closes the listeners at once), how long work in flight gets.
    #[serde(default = "default_grace")]
    pub grace_period: HumanDuration,
    /// Then the runtimes shut down: tasks still running are dropped at their next await, and
    /// this bounds how long a blocked thread may delay the exit.
    #[serde(default = "default_grace")]
    pub graceful_shutdown_timeout: HumanDuration,
    /// Where the process logs when daemonized.
    #[serde(default)]
    pub error_log: Option<PathBuf>,
    /// Let idle worker threads steal tasks from busy ones (Pingora's default). Off pins each
    /// connection to the thread that accepted it, which under load piles connections onto one
    /// thread (docs/performance.md: worse on every measure with it off).
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
fn default_grace() -> HumanDuration {
    HumanDuration::secs(5)
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
pub struct ListenerSection {
    /// Name used in logs and metric labels.
    pub name: String,
    /// `127.0.0.1:5665` or `[::1]:5665`.
    pub address: String,
    /// TLS termination; absent = plaintext (for tests and local sidecars only).
    #[serde(default)]
    pub tls: Option<ListenerTlsSection>,
    /// What the listener accepts, told apart by the first byte: `http`, `cluster`.
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
    /// How long a client may take to send its first byte after the handshake.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout: HumanDuration,
    /// How long an HTTP/1 client may take to send one request head (slowloris guard).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// Per-connection read buffer below TLS. It only has to hold a record header and a small
    /// record: larger reads bypass it. Pingora's default (64 KiB) stays resident per idle link.
    /// Default: 1 KiB on listeners carrying HTTP, none on `[cluster]`-only ones.
    #[serde(default)]
    pub read_buffer: Option<ByteSize>,
    /// An HTTP/1 keep-alive connection idle this long between requests, or an HTTP/2
    /// connection with no open stream this long, is closed. Whole seconds (rounded up).
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: HumanDuration,
    /// Requests served on one HTTP/1 connection before it is closed (`Connection: close` on
    /// the last answer), so per-connection memory is freed now and then (nginx's
    /// `keepalive_requests`).
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u32,
    /// Connections open at once per caller (CN or certificate fingerprint, else client IP); absent = no limit.
    #[serde(default)]
    pub max_connections_per_identity: Option<usize>,
    /// From accept to a finished TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Connections still in the TLS handshake per client address; more are closed at accept.
    #[serde(default = "default_max_handshakes_per_ip")]
    pub max_handshakes_per_ip: usize,
    /// Connections open at once on this listener; absent = a share of the descriptor limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Longest gap between two pieces of a request body (HTTP/1 and HTTP/2).
    #[serde(default = "default_body_timeout")]
    pub body_timeout: HumanDuration,
    /// Longest a write toward a client may wait for it to take bytes (nginx's `send_timeout`).
    #[serde(default = "default_send_timeout")]
    pub send_timeout: HumanDuration,
    /// HTTP/2 streams (so upstream requests) open at once on one connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

fn default_body_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_send_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_max_concurrent_streams() -> u32 {
    32
}

fn default_handshake_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_max_handshakes_per_ip() -> usize {
    64
}
fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Http]
}
fn default_first_byte_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_keepalive_timeout() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_keepalive_requests() -> u32 {
    1000
}

/// `listeners[].tls:` — downstream TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    /// PEM chain, leaf first: used when no `sni_certs` entry matches.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// Certificates chosen by the SNI the client sent.
    #[serde(default)]
    pub sni_certs: Vec<SniCertSection>,
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
    /// off for `cluster` only (resolved by `lower`).
    #[serde(default)]
    pub session_resumption: Option<bool>,
    /// Reload this block when one of its files changes (`reload::watch`), as SIGHUP would.
    #[serde(default)]
    pub watch: bool,
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
pub struct SniCertSection {
    /// Exact names (case-insensitive) or `*.example.org` globs.
    pub names: Vec<String>,
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `upstreams.<name>:` — a group of equivalent peers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `host:port` socket addresses, or `unix:/path` Kea control sockets.
    pub peers: Vec<String>,
    /// Peer selection.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Active health checking; absent = every peer is assumed healthy.
    #[serde(default)]
    pub health_check: Option<HealthCheckSection>,
    /// TCP connect budget.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// TLS handshake budget, after the TCP connect: a master busy with a reconnect storm
    /// answers late but answers.
    #[serde(default = "default_tls_handshake_timeout")]
    pub tls_handshake_timeout: HumanDuration,
    /// Longest wait for any read from the peer (response headers or body).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: HumanDuration,
    /// Longest a whole answer (head and body) may take, from the request sent upstream.
    #[serde(default = "default_answer_timeout")]
    pub answer_timeout: HumanDuration,
    /// Longest time a pooled idle connection is kept (keep under the peer's own).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// UpstreamSection TLS; absent = plaintext.
    #[serde(default)]
    pub tls: Option<UpstreamTlsSection>,
    /// HTTP basic credentials sent to every peer (a Kea daemon that requires them).
    #[serde(default)]
    pub basic_auth: Option<UpstreamAuthSection>,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::secs(2)
}
fn default_tls_handshake_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_read_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_answer_timeout() -> HumanDuration {
    HumanDuration::secs(300)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::secs(20)
}

/// `upstreams.<name>.health_check:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `tcp` or `http`.
    pub kind: ProbeKind,
    /// Time between checks.
    #[serde(default = "default_hc_interval")]
    pub interval: HumanDuration,
    /// Path requested by `http` checks.
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Host header of `http` checks (default: the SNI, else `localhost`).
    #[serde(default)]
    pub host: Option<String>,
}

fn default_hc_interval() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_hc_path() -> String {
    "/".into()
}

/// `upstreams.<name>.tls:` — this upstream's own trust and client identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
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
    /// Removed (refused when set): Pingora 0.9.1 applies it only when built with its
    /// post-quantum `pq_use_second_keyshare` feature, so it never had an effect here.
    #[serde(default)]
    pub second_keyshare: Option<bool>,
    /// Application protocol spoken to the peer.
    #[serde(default)]
    pub alpn: Alpn,
    /// Reload this block when one of its files changes (`reload::watch`), as SIGHUP would.
    #[serde(default)]
    pub watch: bool,
}

fn yes() -> bool {
    true
}

/// `routes[]:` — which upstream serves a host and path prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Name used in logs and metric labels.
    pub name: String,
    /// Exact host, `*.example.org`, or `*` (any).
    #[serde(default = "any_host")]
    pub host: String,
    /// Path prefix; the longest matching prefix wins.
    #[serde(default = "root_path")]
    pub path_prefix: String,
    /// Key of `upstreams:`; absent only on a `kea.services` route (each service names its own).
    #[serde(default)]
    pub upstream: Option<String>,
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
    pub kea: Option<KeaSection>,
    /// Requests per caller (CN when verified, else client IP) on this route.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSection>,
    /// Ask for HTTP basic credentials, as Kea's Control Agent did (`authentication`).
    #[serde(default)]
    pub basic_auth: Option<BasicAuthSection>,
    /// Take JWT access tokens from these issuers (`Authorization: Bearer`).
    #[serde(default)]
    pub bearer: Option<BearerSection>,
    /// This route's bound on a whole answer, instead of its upstream's `answer_timeout` (a
    /// stream such as Icinga's `/v1/events`).
    #[serde(default)]
    pub answer_timeout: Option<HumanDuration>,
}

/// `routes[].basic_auth` — users who must give HTTP basic credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSection {
    /// `name:bcrypt-hash` lines (`gatehouse kea hash-password` writes a hash).
    pub users_file: PathBuf,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_realm() -> String {
    "kea-control-agent".into()
}

/// `upstreams.<name>.basic_auth` — the credentials Gatehouse gives the group's peers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuthSection {
    /// The user name.
    pub user: String,
    /// A file whose first line is the password.
    pub password_file: PathBuf,
}

/// `routes[].rate_limit` — a token bucket per caller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Sustained rate.
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet spell (default: one second's worth, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `routes[].kea` — what each identity may ask a Kea Control Agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeaSection {
    /// The route's upstream is this one Kea daemon (`dhcp4`, `dhcp6`, `d2`, …), not an agent.
    #[serde(default)]
    pub daemon: Option<String>,
    /// Gatehouse is the Control Agent: each `service` name → the `upstreams:` key of its daemon.
    #[serde(default)]
    pub services: Option<std::collections::BTreeMap<String, String>>,
    /// Largest answer held whole (merged answers of several daemons or peers, filtered answers).
    #[serde(default = "default_kea_answer")]
    pub max_answer: ByteSize,
    /// `all`: send each allowed command to every peer of the upstream, in parallel, and
    /// answer one list (default `none`: one peer, picked by the load balancer).
    #[serde(default)]
    pub fan_out: FanOut,
    /// Largest command body read (413 beyond).
    #[serde(default = "default_kea_body")]
    pub max_body: ByteSize,
    /// The first rule whose identity matches decides.
    #[serde(default)]
    pub rules: Vec<KeaRuleSection>,
    /// For identities no rule matches.
    #[serde(default)]
    pub default: KeaDefault,
}

fn default_kea_body() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_kea_answer() -> ByteSize {
    ByteSize(64 << 20)
}

/// `routes[].kea.rules[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeaRuleSection {
    /// Identity matchers (`cn:`, `dns:`, `spiffe://`, `fingerprint:sha256:`, `anonymous`).
    pub identity: Vec<String>,
    /// Commands (globs); absent = any command.
    #[serde(default)]
    pub commands: Option<AllowDeny>,
    /// Services (`dhcp4`, `dhcp6`, `d2`, …); absent = any service.
    #[serde(default)]
    pub services: Option<AllowDeny>,
}

/// `audit:` — where the audit log of Kea commands and denied cluster messages goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
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
    pub routes: Vec<ClusterRouteSection>,
    /// Client certificates presented upstream on behalf of authenticated clients.
    #[serde(default)]
    pub upstream_identity: Option<UpstreamIdentitySection>,
    /// Sizes, caps and idle timeouts.
    #[serde(default)]
    pub limits: ClusterLimitsSection,
    /// Method policy; absent = Icinga's own rules (`lower::icinga_policy`).
    #[serde(default)]
    pub policy: Option<Vec<PolicyRuleSection>>,
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
pub struct ClusterRouteSection {
    /// `parent` (default: the client is a child dialling its parent) or `child` (a parent
    /// dialling a child through Gatehouse); the method policy's directions follow it.
    #[serde(default)]
    pub toward: Toward,
    /// Exact name, `*.example.org`, or `*` (anything, including no SNI).
    pub sni: String,
    /// Key of `upstreams:`.
    pub upstream: String,
}

/// `cluster.upstream_identity`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamIdentitySection {
    /// Folder of `<cn>.crt` + `<cn>.key`, presented upstream for client `<cn>`.
    pub cert_dir: PathBuf,
    /// When `<cn>.crt` is absent.
    #[serde(default)]
    pub missing: MissingIdentity,
}

/// `cluster.limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLimitsSection {
    /// Authenticated links open at once per identity (CN) and route; a newer one closes the
    /// oldest.
    #[serde(default = "one")]
    pub max_links_per_identity: usize,
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
    pub certificate_request_size: ByteSize,
    /// Largest message from an anonymous client.
    #[serde(default = "default_anon_size")]
    pub anonymous_message_size: ByteSize,
    /// Largest message from the child side of a link (an agent on a `toward: parent` route):
    /// Icinga's own limit on messages from child zones.
    #[serde(default = "default_msg_size")]
    pub message_size: ByteSize,
    /// Largest message from the parent side (the master): Icinga takes any size from its
    /// parent, up to the 9 digits of a netstring length.
    #[serde(default = "default_parent_msg_size")]
    pub parent_message_size: ByteSize,
    /// An authenticated link with no message from one side for this long is closed.
    #[serde(default = "default_cluster_idle")]
    pub idle_timeout: HumanDuration,
    /// The same for anonymous links.
    #[serde(default = "default_anon_idle")]
    pub anonymous_idle_timeout: HumanDuration,
    /// The longest an anonymous link may stay open, busy or not (enrollment takes seconds).
    #[serde(default = "default_anon_lifetime")]
    pub anonymous_max_lifetime: HumanDuration,
}

fn one() -> usize {
    1
}
fn default_anon_clients() -> usize {
    16
}
fn default_anon_per_ip() -> usize {
    2
}
fn default_cert_request_size() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_anon_size() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_msg_size() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_parent_msg_size() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_cluster_idle() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_anon_idle() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_anon_lifetime() -> HumanDuration {
    HumanDuration::secs(300)
}

impl Default for ClusterLimitsSection {
    fn default() -> Self {
        ClusterLimitsSection {
            max_links_per_identity: one(),
            anonymous_max_clients: default_anon_clients(),
            anonymous_max_per_ip: default_anon_per_ip(),
            certificate_request_size: default_cert_request_size(),
            anonymous_message_size: default_anon_size(),
            message_size: default_msg_size(),
            parent_message_size: default_parent_msg_size(),
            idle_timeout: default_cluster_idle(),
            anonymous_idle_timeout: default_anon_idle(),
            anonymous_max_lifetime: default_anon_lifetime(),
        }
    }
}

/// `cluster.policy[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRuleSection {
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

/// `metrics:` — the Prometheus scrape endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Plain-HTTP address serving `/metrics`, `/healthz` and `/readyz`.
    pub address: String,
}
