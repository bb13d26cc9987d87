//! `gatehouse kea import-agent`: a Kea Control Agent's configuration as Gatehouse's — the
//! listener (address, TLS, `cert-required`), one upstream group per `control-sockets` entry, a
//! `kea.services` route mapping the agent's service names to them, and the agent's basic-auth
//! clients as a users file of bcrypt hashes. Kea's JSON takes `//`, `#` and `/* */` comments.

use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What an import produces: the YAML text, and the users file's text when the agent had
/// basic-auth clients.
#[derive(Debug)]
pub struct Imported {
    /// The Gatehouse configuration.
    pub yaml: String,
    /// `name:bcrypt-hash` lines, to be written where the YAML's `users_file` says.
    pub users: Option<String>,
}

/// Imports the agent configuration `text` (read from `file`: relative names in it, such as
/// `password-file`, resolve against the agent's `authentication.directory` or the file's
/// folder). `users_file` is where the caller will write [`Imported::users`].
pub fn import_agent(text: &str, file: &Path, users_file: &Path) -> Result<Imported, String> {
    let json = strip_comments(text);
    let doc: Value = serde_json::from_str(&json)
        .map_err(|e| format!("{}: not Kea JSON: {e}", file.display()))?;
    let ca = doc
        .get("Control-agent")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{}: no `Control-agent` object", file.display()))?;

    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Made by `gatehouse kea import-agent {}`: the Control Agent's configuration as\n\
         # Gatehouse's. The agent let every client that got in run every command: narrow that\n\
         # with `kea.rules` (docs/authorization.md), then `gatehouse check -c <this file>`.\n",
        file.display()
    );
    write_listener(&mut y, ca);
    let services = write_upstreams(&mut y, ca, file)?;
    let users = write_route(&mut y, ca, &services, file, users_file)?;
    Ok(Imported { yaml: y, users })
}

/// The string value of `m[k]`, if it is one.
fn str_of(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_string)
}

/// `s` as a quoted YAML scalar (a JSON string is one), whatever it holds.
fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// The `listeners:` section: the agent's address and, when it had them, its TLS files.
fn write_listener(y: &mut String, ca: &Map<String, Value>) {
    let host = str_of(ca, "http-host").unwrap_or_else(|| "127.0.0.1".into());
    let port = ca.get("http-port").and_then(Value::as_u64).unwrap_or(8000);
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let _ = writeln!(
        y,
        "listeners:\n  - name: kea\n    address: {}",
        quote(&address)
    );
    let tls_files = (
        str_of(ca, "cert-file"),
        str_of(ca, "key-file"),
        str_of(ca, "trust-anchor"),
    );
    match tls_files {
        (Some(cert), Some(key), anchor) => {
            let _ = writeln!(
                y,
                "    tls:\n      cert: {}\n      key: {}",
                quote(&cert),
                quote(&key)
            );
            let required = ca
                .get("cert-required")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if let Some(a) = anchor {
                let _ = writeln!(
                    y,
                    "      client_auth: {}    # the agent's cert-required: {required}\n      client_ca: {}    # a CA file (the agent also took a folder)",
                    if required { "required" } else { "optional" },
                    quote(&a)
                );
            }
        }
        _ => {
            let _ = writeln!(
                y,
                "    # The agent had no TLS. Gatehouse needs a certificate to take basic credentials\n    # or to know callers by certificate:\n    # tls: {{ cert: server.crt, key: server.key, client_auth: required, client_ca: ca.crt }}"
            );
        }
    }
}

/// The `upstreams:` section, one group per control socket; returns the service names.
fn write_upstreams(
    y: &mut String,
    ca: &Map<String, Value>,
    file: &Path,
) -> Result<Vec<String>, String> {
    let sockets = ca
        .get("control-sockets")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{}: Control-agent has no `control-sockets`", file.display()))?;
    if sockets.is_empty() {
        return Err(format!("{}: `control-sockets` is empty", file.display()));
    }
    let _ = writeln!(y, "\nupstreams:");
    let mut services = Vec::new();
    for (service, s) in sockets {
        let (kind, peer) = socket_peer(service, s, file)?;
        let _ = writeln!(y, "  {service}:\n    peers: [{}]", quote(&peer));
        if kind == "https" {
            let _ = writeln!(
                y,
                "    # https: add `tls: {{ ca, client_cert, client_key, sni }}` for this daemon"
            );
        }
        services.push(service.clone());
    }
    Ok(services)
}

/// One `control-sockets` entry as its `socket-type` and the peer Gatehouse names it by.
fn socket_peer(service: &str, s: &Value, file: &Path) -> Result<(String, String), String> {
    let s = s.as_object().ok_or_else(|| {
        format!(
            "{}: control-sockets.{service} is not an object",
            file.display()
        )
    })?;
    let kind = str_of(s, "socket-type").unwrap_or_else(|| "unix".into());
    let peer = match kind.as_str() {
        "unix" => {
            let name = str_of(s, "socket-name").ok_or_else(|| {
                format!(
                    "{}: control-sockets.{service} has no socket-name",
                    file.display()
                )
            })?;
            format!("unix:{name}")
        }
        "http" | "https" => {
            let addr = str_of(s, "socket-address").unwrap_or_else(|| "127.0.0.1".into());
            let port = s.get("socket-port").and_then(Value::as_u64).unwrap_or(8000);
            format!("{addr}:{port}")
        }
        other => {
            return Err(format!(
                "{}: control-sockets.{service}: socket-type `{other}` is not unix, http or https",
                file.display()
            ))
        }
    };
    Ok((kind, peer))
}

/// The `routes:` section (one `kea.services` route); returns the agent's users file, if any.
fn write_route(
    y: &mut String,
    ca: &Map<String, Value>,
    services: &[String],
    file: &Path,
    users_file: &Path,
) -> Result<Option<String>, String> {
    let folder = file.parent().unwrap_or(Path::new("."));
    let _ = writeln!(y, "\nroutes:\n  - name: kea\n    path_prefix: /");
    let users = match ca.get("authentication").and_then(Value::as_object) {
        Some(auth) => {
            let realm = str_of(auth, "realm").unwrap_or_else(|| "kea-control-agent".into());
            let dir = str_of(auth, "directory")
                .map(PathBuf::from)
                .unwrap_or_else(|| folder.to_path_buf());
            let users = users_of(auth, &dir, file)?;
            let _ = writeln!(
                y,
                "    basic_auth:                        # the agent's authentication.clients\n      users_file: {}\n      realm: {}",
                quote(&users_file.display().to_string()),
                quote(&realm)
            );
            Some(users)
        }
        None => None,
    };
    let _ = writeln!(y, "    kea:\n      services:");
    for s in services {
        let _ = writeln!(y, "        {s}: {s}");
    }
    let _ = writeln!(
        y,
        "      default: allow                   # as the agent: every caller, every command"
    );
    Ok(users)
}

/// The agent's basic-auth clients as users-file lines (passwords hashed).
fn users_of(auth: &Map<String, Value>, dir: &Path, file: &Path) -> Result<String, String> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p)
            .map(|t| t.lines().next().unwrap_or("").to_string())
            .map_err(|e| format!("{}: {}: {e}", file.display(), p.display()))
    };
    let mut out = String::new();
    for (i, c) in auth
        .get("clients")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = |k: &str| c.get(k).and_then(Value::as_str);
        let user = match (field("user"), field("user-file")) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) => read(f)?,
            (None, None) => {
                return Err(format!(
                    "{}: authentication.clients[{i}] has no user",
                    file.display()
                ))
            }
        };
        let password = match (field("password"), field("password-file")) {
            (Some(p), _) => p.to_string(),
            (None, Some(f)) => read(f)?,
            (None, None) => {
                return Err(format!(
                    "{}: authentication.clients[{i}] has no password",
                    file.display()
                ))
            }
        };
        if user.is_empty() || user.contains(':') {
            return Err(format!(
                "{}: authentication.clients[{i}]: user `{user}` cannot be a users-file name",
                file.display()
            ));
        }
        let hash = crate::http::basic::hash(&password)?;
        let _ = writeln!(out, "{user}:{hash}");
    }
    if out.is_empty() {
        return Err(format!("{}: authentication has no clients", file.display()));
    }
    Ok(out)
}

/// Kea's JSON with its comments blanked out (`//` and `#` to the end of the line, `/* */`),
/// strings left alone; line numbers are kept for serde's errors.
pub fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            out.push(c);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1]);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match (c, b.get(i + 1)) {
            (b'"', _) => {
                in_string = true;
                out.push(c);
                i += 1;
            }
            (b'#', _) | (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    if b[i] == b'\n' {
                        out.push(b'\n');
                    }
                    i += 1;
                }
                i += 2;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_and_strings_stay() {
        let t = "{ // a\n \"a#b\": \"x//y\", # c\n /* d\n e */ \"z\": \"/*k*/\" }";
        let v: Value = serde_json::from_str(&strip_comments(t)).unwrap();
        assert_eq!(v["a#b"], "x//y");
        assert_eq!(v["z"], "/*k*/");
    }

    #[test]
    fn an_agent_becomes_a_listener_groups_and_a_services_route() {
        let agent = r#"{ "Control-agent": {
            "http-host": "10.0.0.1", "http-port": 8001,
            "trust-anchor": "/etc/kea/ca.crt", "cert-file": "/etc/kea/a.crt", "key-file": "/etc/kea/a.key",
            "cert-required": true,
            // the daemons
            "control-sockets": {
                "dhcp4": { "socket-type": "unix", "socket-name": "/run/kea/k4.sock" },
                "dhcp6": { "socket-type": "unix", "socket-name": "/run/kea/k6.sock" }
            },
            "authentication": { "type": "basic", "realm": "r1", "clients": [ { "user": "admin", "password": "pw" } ] }
        } }"#;
        let out = import_agent(
            agent,
            Path::new("/etc/kea/kea-ctrl-agent.conf"),
            Path::new("users"),
        )
        .unwrap();
        let y: serde_yaml::Value = serde_yaml::from_str(&out.yaml).unwrap();
        assert_eq!(y["listeners"][0]["address"], "10.0.0.1:8001");
        assert_eq!(y["listeners"][0]["tls"]["client_auth"], "required");
        assert_eq!(y["upstreams"]["dhcp6"]["peers"][0], "unix:/run/kea/k6.sock");
        assert_eq!(y["routes"][0]["kea"]["services"]["dhcp4"], "dhcp4");
        assert_eq!(y["routes"][0]["basic_auth"]["realm"], "r1");
        let users = out.users.unwrap();
        let (name, hash) = users.trim().split_once(':').unwrap();
        assert_eq!(name, "admin");
        assert!(bcrypt::verify("pw", hash).unwrap());
        assert!(import_agent("{}", Path::new("x"), Path::new("u"))
            .unwrap_err()
            .contains("Control-agent"));
    }
}
