//! Who may use a route: identity matchers and the route-level allow/deny decision.
//!
//! Matchers: `cn:<glob>`, `dns:<glob>` (a DNS SAN), `spiffe://…` (a URI SAN prefix),
//! `fingerprint:sha256:<hex>` (colons and case ignored), `anonymous`. Only a certificate that
//! verified against the listener's `client_ca` is an identity; anything else is anonymous.

use crate::glob;
use crate::tls::{ClientCert, TlsInfo};

/// One identity matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Subject CN glob.
    Cn(String),
    /// DNS SAN glob.
    Dns(String),
    /// URI SAN prefix (`spiffe://example.org/ops/`).
    Spiffe(String),
    /// SHA-256 of the leaf, lowercase hex.
    Fingerprint(String),
    /// No verified certificate.
    Anonymous,
}

impl Matcher {
    /// Parses one matcher; the error says which forms exist.
    pub fn parse(s: &str) -> Result<Matcher, String> {
        if s == "anonymous" {
            return Ok(Matcher::Anonymous);
        }
        if s.starts_with("spiffe://") {
            return Ok(Matcher::Spiffe(s.to_string()));
        }
        if let Some(g) = s.strip_prefix("cn:") {
            return Ok(Matcher::Cn(g.to_string()));
        }
        if let Some(g) = s.strip_prefix("dns:") {
            return Ok(Matcher::Dns(g.to_ascii_lowercase()));
        }
        if let Some(h) = s.strip_prefix("fingerprint:sha256:") {
            let hex: String = h
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "`{s}`: a SHA-256 fingerprint is 64 hex digits (colons allowed)"
                ));
            }
            return Ok(Matcher::Fingerprint(hex));
        }
        Err(format!(
            "`{s}`: use cn:<glob>, dns:<glob>, spiffe://<prefix>, fingerprint:sha256:<hex> or anonymous"
        ))
    }

    /// Whether the (verified) client matches; `None` = anonymous.
    pub fn matches(&self, client: Option<&ClientCert>) -> bool {
        match (self, client) {
            (Matcher::Anonymous, c) => c.is_none(),
            (_, None) => false,
            (Matcher::Cn(g), Some(c)) => c.cn.as_deref().is_some_and(|cn| glob::matches(g, cn)),
            (Matcher::Dns(g), Some(c)) => c
                .dns
                .iter()
                .any(|d| glob::matches(g, &d.to_ascii_lowercase())),
            (Matcher::Spiffe(p), Some(c)) => c.uris.iter().any(|u| u.starts_with(p.as_str())),
            (Matcher::Fingerprint(f), Some(c)) => c.fingerprint == *f,
        }
    }
}

/// Parses a list of matchers (validated with the config; invalid entries are skipped).
pub fn parse_all(list: &[String]) -> Vec<Matcher> {
    list.iter().filter_map(|m| Matcher::parse(m).ok()).collect()
}

/// Whether any matcher in `list` matches.
pub fn any_matches(list: &[Matcher], client: Option<&ClientCert>) -> bool {
    list.iter().any(|m| m.matches(client))
}

/// A route's admission rule: `deny` wins; with an `allow` list only matches get in.
#[derive(Debug, Clone, Default)]
pub struct Access {
    allow: Option<Vec<Matcher>>,
    deny: Vec<Matcher>,
}

impl Access {
    /// From the route's `allow` / `deny` lists.
    pub fn new(allow: Option<&[String]>, deny: &[String]) -> Access {
        Access {
            allow: allow.map(parse_all),
            deny: parse_all(deny),
        }
    }

    /// Whether the connection's client may use the route.
    pub fn admits(&self, tls: Option<&TlsInfo>) -> bool {
        let client = tls.and_then(|t| t.authenticated());
        if any_matches(&self.deny, client) {
            return false;
        }
        self.allow
            .as_ref()
            .is_none_or(|allow| any_matches(allow, client))
    }
}

/// How a client is named in refusals and the audit log: `cn=<cn>` or `anonymous`.
pub fn describe(tls: Option<&TlsInfo>) -> String {
    match tls.and_then(|t| t.authenticated()) {
        Some(c) => match &c.cn {
            Some(cn) => format!("cn={}", crate::logsafe::Esc(cn)),
            None => format!("fingerprint={}", c.fingerprint),
        },
        None => "anonymous".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, CertSpec};

    fn client(cn: &str, dns: &[&str], uris: &[&str], verified: bool) -> TlsInfo {
        let ca = Ca::new("t").unwrap();
        let leaf = ca.issue(&CertSpec::new(cn).dns(dns).uris(uris)).unwrap();
        TlsInfo {
            sni: None,
            client: Some(ClientCert::from_x509(leaf.cert, verified)),
        }
    }

    #[test]
    fn matchers() {
        let ops = client(
            "ops-admin",
            &["Admin.Example.org"],
            &["spiffe://example.org/ops/admin"],
            true,
        );
        let c = ops.authenticated();
        assert!(Matcher::parse("cn:ops-*").unwrap().matches(c));
        assert!(!Matcher::parse("cn:dash*").unwrap().matches(c));
        assert!(Matcher::parse("dns:*.example.org").unwrap().matches(c));
        assert!(Matcher::parse("spiffe://example.org/ops/")
            .unwrap()
            .matches(c));
        assert!(!Matcher::parse("spiffe://example.org/dev/")
            .unwrap()
            .matches(c));
        let fp = c.unwrap().fingerprint.clone();
        let colons: Vec<String> = fp
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).to_uppercase())
            .collect();
        assert!(
            Matcher::parse(&format!("fingerprint:sha256:{}", colons.join(":")))
                .unwrap()
                .matches(c)
        );
        assert!(!Matcher::parse("anonymous").unwrap().matches(c));
        assert!(Matcher::parse("anonymous").unwrap().matches(None));
        assert!(
            !Matcher::parse("cn:*").unwrap().matches(None),
            "globs never match anonymous"
        );
        assert!(Matcher::parse("fingerprint:sha256:abc").is_err());
        assert!(Matcher::parse("ops-admin").is_err());
    }

    #[test]
    fn access_deny_wins_and_unverified_is_anonymous() {
        let a = Access::new(
            Some(&[
                "cn:ops-*".to_string(),
                "spiffe://example.org/ops/".to_string(),
            ]),
            &["cn:ops-intern".to_string()],
        );
        assert!(a.admits(Some(&client("ops-admin", &[], &[], true))));
        assert!(
            !a.admits(Some(&client("ops-intern", &[], &[], true))),
            "deny wins"
        );
        assert!(a.admits(Some(&client(
            "alice",
            &[],
            &["spiffe://example.org/ops/alice"],
            true
        ))));
        assert!(!a.admits(Some(&client("dev", &[], &[], true))));
        assert!(
            !a.admits(Some(&client("ops-admin", &[], &[], false))),
            "unverified = anonymous"
        );
        assert!(!a.admits(None));
        let open = Access::new(None, &["anonymous".to_string()]);
        assert!(open.admits(Some(&client("x", &[], &[], true))));
        assert!(!open.admits(None));
        assert_eq!(
            describe(Some(&client("dashboard-1", &[], &[], true))),
            "cn=dashboard-1"
        );
        assert_eq!(describe(None), "anonymous");
    }
}
