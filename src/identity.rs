//! Who is calling: the client identity read once per connection, at handshake time.
//!
//! Pingora stores what `handshake_complete_callback` returns in the connection's
//! `SslDigest`, so every request on the connection (HTTP/1 keep-alive and HTTP/2 streams
//! alike) sees the same parsed [`TlsInfo`] without touching the certificate again.

use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::ssl::{NameType, SslRef};
use boring::x509::{X509NameRef, X509};
use std::fmt::Write;

/// What the handshake told us about a downstream connection.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The SNI the client sent, lowercased.
    pub sni: Option<String>,
    /// The client certificate, if one was presented (verified or not).
    pub client: Option<ClientCert>,
}

/// A presented client certificate and what was read from it.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// True when the chain verified against the listener's `client_ca`.
    pub verified: bool,
    /// Subject common name.
    pub cn: Option<String>,
    /// Subject DN, RFC 4514 order (`CN=a,O=b`).
    pub subject: String,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs live here).
    pub uris: Vec<String>,
    /// Lowercase hex SHA-256 of the DER leaf.
    pub fingerprint: String,
    /// The leaf itself, for forwarding (e.g. Icinga certificate requests).
    pub cert: X509,
}

/// A bearer token that verified (`routes[].bearer`): its issuer, signature, time window and
/// audience checked. What rules match (`sub:`, `client:`, `claim:NAME=GLOB`) and what audit
/// events record.
#[derive(Debug, Clone)]
pub struct BearerToken {
    /// The `issuers:` key that verified it.
    pub issuer: std::sync::Arc<str>,
    /// The `iss` claim.
    pub iss: String,
    /// The `sub` claim.
    pub sub: String,
    /// The `client_id` claim, else `azp` (RFC 9068; OpenID Connect).
    pub client: Option<String>,
    /// The `jti` claim.
    pub jti: Option<String>,
    /// The `exp` claim, seconds since the epoch.
    pub exp: i64,
    /// Every claim, as the token carried them.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl BearerToken {
    /// The claim at `path` (`groups`, or `realm_access.roles` into nested objects).
    pub fn claim(&self, path: &str) -> Option<&serde_json::Value> {
        let mut parts = path.split('.');
        let first = self.claims.get(parts.next()?)?;
        parts.try_fold(first, |v, key| v.as_object()?.get(key))
    }

    /// Whether the claim at `path` matches the `*` glob `pattern`: a string as is, a number or
    /// boolean as written in JSON, an array if any of its elements does. This is what
    /// `claim:NAME=GLOB` does; an `Authorizer` can ask the same of [`crate::authz::Identity::token`].
    ///
    /// ```
    /// use gatehouse::identity::BearerToken;
    /// let claims = serde_json::json!({"groups": ["dhcp-admins", "ops"], "realm_access": {"roles": ["dhcp"]}});
    /// let t = BearerToken {
    ///     issuer: "corp".into(),
    ///     iss: "https://idp.example.org".into(),
    ///     sub: "alice".into(),
    ///     client: None,
    ///     jti: None,
    ///     exp: 0,
    ///     claims: claims.as_object().cloned().unwrap_or_default(),
    /// };
    /// assert!(t.claim_matches("groups", "dhcp-*"));
    /// assert!(t.claim_matches("realm_access.roles", "dhcp"));
    /// assert!(!t.claim_matches("groups", "root"));
    /// ```
    pub fn claim_matches(&self, path: &str, pattern: &str) -> bool {
        fn one(v: &serde_json::Value, pattern: &str) -> bool {
            match v {
                serde_json::Value::String(s) => crate::glob::matches(pattern, s),
                serde_json::Value::Number(n) => crate::glob::matches(pattern, &n.to_string()),
                serde_json::Value::Bool(b) => crate::glob::matches(pattern, &b.to_string()),
                _ => false,
            }
        }
        match self.claim(path) {
            Some(serde_json::Value::Array(items)) => items.iter().any(|v| one(v, pattern)),
            Some(v) => one(v, pattern),
            None => false,
        }
    }
}

impl TlsInfo {
    /// Reads SNI and the client certificate off a finished handshake.
    pub fn from_ssl(ssl: &SslRef) -> TlsInfo {
        let sni = ssl
            .servername(NameType::HOST_NAME)
            .map(|s| s.to_ascii_lowercase());
        let client = ssl.peer_certificate().map(|cert| {
            // verify_result() is Ok when no cert was sent: only meaningful with a cert.
            let verified = ssl.verify_result().is_ok();
            ClientCert::from_x509(cert, verified)
        });
        TlsInfo { sni, client }
    }

    /// The client, only if its certificate verified; otherwise it is anonymous.
    pub fn authenticated(&self) -> Option<&ClientCert> {
        self.client.as_ref().filter(|c| c.verified)
    }
}

impl ClientCert {
    /// Extracts CN, SANs, subject and fingerprint from `cert`.
    pub fn from_x509(cert: X509, verified: bool) -> ClientCert {
        let cn = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()));
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        if let Some(sans) = cert.subject_alt_names() {
            for san in &sans {
                if let Some(d) = san.dnsname() {
                    dns.push(d.to_string());
                }
                if let Some(u) = san.uri() {
                    uris.push(u.to_string());
                }
            }
        }
        let fingerprint = cert
            .digest(MessageDigest::sha256())
            .map(|d| hex(&d))
            .unwrap_or_default();
        ClientCert {
            verified,
            cn,
            subject: dn_string(cert.subject_name()),
            dns,
            uris,
            fingerprint,
            cert,
        }
    }
}

/// Formats a DN most-specific first (`CN=x,OU=y,O=z`), as RFC 4514 and Envoy's XFCC do, with
/// each value escaped per RFC 4514 so a CN like `a,O=admin` cannot pose as another attribute.
fn dn_string(name: &X509NameRef) -> String {
    let mut parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let val = e
                .data()
                .as_utf8()
                .map(|s| rfc4514_value(&s))
                .unwrap_or_default();
            format!("{key}={val}")
        })
        .collect();
    parts.reverse();
    parts.join(",")
}

/// An attribute value escaped per RFC 4514 §2.4: `"+,;<>\` and a leading `#` or space or a
/// trailing space get a backslash; control characters (which §2.4 would allow raw) become
/// `\XX` hex so the DN fits in a header and a log line.
pub(crate) fn rfc4514_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, CertSpec};

    #[test]
    fn reads_cn_sans_and_fingerprint() {
        let ca = Ca::new("t").unwrap();
        let leaf = ca
            .issue(
                &CertSpec::new("ops-admin")
                    .dns(&["admin.example.org"])
                    .uris(&["spiffe://example.org/ops/admin"]),
            )
            .unwrap();
        let c = ClientCert::from_x509(leaf.cert.clone(), true);
        assert_eq!(c.cn.as_deref(), Some("ops-admin"));
        assert_eq!(c.dns, vec!["admin.example.org"]);
        assert_eq!(c.uris, vec!["spiffe://example.org/ops/admin"]);
        assert_eq!(c.subject, "CN=ops-admin");
        assert_eq!(rfc4514_value(r#"a,b;c="d"\e"#), r#"a\,b\;c=\"d\"\\e"#);
        assert_eq!(rfc4514_value("#x y "), "\\#x y\\ ");
        assert_eq!(rfc4514_value("a\nb"), "a\\0Ab");
        assert_eq!(c.fingerprint.len(), 64);
        let again = ClientCert::from_x509(leaf.cert, true);
        assert_eq!(c.fingerprint, again.fingerprint);
    }
}
