//! Semantic validation: references between sections, duplicates, combinations — every
//! problem found, each under its key path — and the parse errors of serde, located.

use super::schema::*;
use super::units::Size;
use super::{ConfigError, ConfigErrors};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
                    "must name http, cluster or both".into(),
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
            if l.protocols.contains(&Protocol::Cluster) && self.cluster.is_none() {
                e(
                    format!("{at}.protocols"),
                    "cluster needs a top-level `cluster:` section".into(),
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

        if let Some(j) = &self.cluster {
            if j.routes.is_empty() {
                e(
                    "cluster.routes".into(),
                    "at least one route is needed".into(),
                );
            }
            for (i, r) in j.routes.iter().enumerate() {
                if !self.upstreams.contains_key(&r.upstream) {
                    e(
                        format!("cluster.routes[{i}].upstream"),
                        format!("unknown upstream `{}`", r.upstream),
                    );
                }
                if let Err(m) = crate::host::HostPattern::parse(&r.sni) {
                    e(format!("cluster.routes[{i}].sni"), m);
                }
            }
            if let Some(id) = &j.upstream_identity {
                if !self.resolve(&id.cert_dir).is_dir() {
                    e(
                        "cluster.upstream_identity.cert_dir".into(),
                        format!("{}: not a directory", self.resolve(&id.cert_dir).display()),
                    );
                }
            }
            for (i, r) in j.policy.iter().flatten().enumerate() {
                if let Err(msg) = crate::authz::Matcher::parse(&r.identity) {
                    e(format!("cluster.policy[{i}].identity"), msg);
                }
                if r.allow.is_none() && r.deny.is_none() {
                    e(
                        format!("cluster.policy[{i}]"),
                        "needs `allow`, `deny` or both".into(),
                    );
                }
            }
            if j.limits.anonymous_max_per_ip == 0 {
                e(
                    "cluster.limits.anonymous_max_per_ip".into(),
                    "must be at least 1 (set anonymous_max_clients: 0 to refuse anonymous links)"
                        .into(),
                );
            }
            if j.limits.certificate_request_size < Size(1024) {
                e(
                    "cluster.limits.certificate_request_size".into(),
                    "must be at least 1KiB".into(),
                );
            }
            if j.limits.anonymous_message_size > j.limits.message_size {
                e(
                    "cluster.limits.anonymous_message_size".into(),
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
