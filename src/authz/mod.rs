//! Who is calling, and the one language every rule uses to name callers.
//!
//! [`Identity`] is the caller as authorization sees it: a client certificate that verified
//! against the listener's `client_ca`, a user who gave HTTP basic credentials on a route that
//! asks for them (`routes[].basic_auth`, as Kea's Control Agent did), or anonymous (no
//! certificate, self-signed, unknown CA). [`Matcher`]s name identities: `cn:<glob>`,
//! `dns:<glob>` (a DNS SAN), `spiffe://…` (a URI SAN prefix), `fingerprint:sha256:<hex>`
//! (colons and case ignored), `user:<glob>`, `anonymous`, and `"*"` (everyone, anonymous
//! included); for a caller with a verified bearer token (`routes[].bearer`), `sub:<glob>`,
//! `client:<glob>` (`client_id`, else `azp`) and `claim:NAME=GLOB` (`NAME` may be a dotted
//! path into objects; an array claim matches if any element does). Route access ([`Access`]), Kea command rules and the cluster
//! method policy all use them, and ordered rule lists decide with `FirstMatch`. A bare glob
//! (`agent-*`) is refused when the config loads, with the fix in the message: it used to be read
//! as a CN glob in one place and as nothing in another.
//!
//! [`Authorizer`] is the call-out an embedder adds next to these rules (an external decision
//! service, say); Gatehouse wraps it in `Guarded`: time-bounded, fail-closed, TTL-cached.

mod authorizer;

pub(crate) use authorizer::Guarded;
pub use authorizer::{Authorizer, Decision, Question, Target};

use crate::glob;
use crate::identity::{BearerToken, ClientCert, TlsInfo};
use crate::logsafe::Esc;
use std::fmt;

/// The caller of a request or a cluster link. New kinds of caller may be added: match with a
/// wildcard arm, or use [`Identity::cert`] and [`Identity::user`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Identity<'a> {
    /// No verified certificate.
    Anonymous,
    /// A certificate that verified against the listener's `client_ca`.
    Verified(&'a ClientCert),
    /// A user whose basic credentials checked out (`routes[].basic_auth`), with the
    /// connection's verified certificate when it has one (certificate matchers still see it).
    User {
        /// The user name.
        name: &'a str,
        /// The verified certificate, if any.
        cert: Option<&'a ClientCert>,
    },
    /// A caller whose bearer token verified (`routes[].bearer`), with the connection's
    /// verified certificate when it has one.
    Token {
        /// The verified token.
        token: &'a BearerToken,
        /// The verified certificate, if any.
        cert: Option<&'a ClientCert>,
    },
}

impl<'a> Identity<'a> {
    /// The identity of a connection: verified certificate, else anonymous.
    pub fn of(tls: Option<&'a TlsInfo>) -> Identity<'a> {
        Identity::from_cert(tls.and_then(|t| t.authenticated()))
    }

    /// From an already verified certificate (`None` = anonymous).
    pub fn from_cert(cert: Option<&'a ClientCert>) -> Identity<'a> {
        match cert {
            Some(c) => Identity::Verified(c),
            None => Identity::Anonymous,
        }
    }

    /// What per-caller limits count by: `sub:<sub>@<issuer>` for a token caller, `cn:<cn>`
    /// (else `fingerprint:<hex>`) when verified, `user:<name>` for a basic-auth user,
    /// `ip:<address>` for anonymous callers (`ip:-` without one).
    pub fn limit_key(self, ip: Option<std::net::IpAddr>) -> String {
        match (self, ip) {
            (Identity::Token { token, .. }, _) => format!("sub:{}@{}", token.sub, token.issuer),
            (Identity::User { name, .. }, _) => format!("user:{name}"),
            (Identity::Verified(c), _) => match &c.cn {
                Some(cn) => format!("cn:{cn}"),
                None => format!("fingerprint:{}", c.fingerprint),
            },
            (Identity::Anonymous, Some(ip)) => format!("ip:{ip}"),
            (Identity::Anonymous, None) => "ip:-".to_string(),
        }
    }

    /// The verified certificate, if any.
    pub fn cert(self) -> Option<&'a ClientCert> {
        match self {
            Identity::Verified(c) => Some(c),
            Identity::User { cert, .. } | Identity::Token { cert, .. } => cert,
            Identity::Anonymous => None,
        }
    }

    /// The verified bearer token, if any.
    pub fn token(self) -> Option<&'a BearerToken> {
        match self {
            Identity::Token { token, .. } => Some(token),
            _ => None,
        }
    }

    /// The basic-auth user, if any.
    pub fn user(self) -> Option<&'a str> {
        match self {
            Identity::User { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The verified subject CN, if any.
    pub fn cn(self) -> Option<&'a str> {
        self.cert().and_then(|c| c.cn.as_deref())
    }
}

/// How refusals and logs name a caller: `cn=<cn>` (escaped), `fingerprint=<hex>` for a
/// certificate without CN, `user=<name>` (escaped), `sub=<sub> (<issuer>)` (escaped), or
/// `anonymous`.
impl fmt::Display for Identity<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Verified(c) => match &c.cn {
                Some(cn) => write!(f, "cn={}", Esc(cn)),
                None => write!(f, "fingerprint={}", c.fingerprint),
            },
            Identity::User { name, .. } => write!(f, "user={}", Esc(name)),
            Identity::Token { token, .. } => {
                write!(f, "sub={} ({})", Esc(&token.sub), token.issuer)
            }
            Identity::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// One identity matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// `"*"`: everyone, anonymous included.
    Everyone,
    /// `anonymous`: no verified certificate and no basic-auth user.
    Anonymous,
    /// `user:<glob>`: a basic-auth user name.
    User(String),
    /// `cn:<glob>`: subject CN.
    Cn(String),
    /// `dns:<glob>`: a DNS SAN (case-insensitive).
    Dns(String),
    /// `spiffe://…`: a URI SAN starting with this prefix.
    Spiffe(String),
    /// `fingerprint:sha256:<hex>`: SHA-256 of the leaf, stored as lowercase hex.
    Fingerprint(String),
    /// `sub:<glob>`: a verified bearer token's subject.
    Sub(String),
    /// `client:<glob>`: a verified bearer token's `client_id` (else `azp`).
    Client(String),
    /// `claim:NAME=GLOB`: a verified bearer token's claim (an array: any element).
    Claim {
        /// The claim's name, or a dotted path into objects.
        name: String,
        /// The glob its value must match.
        glob: String,
    },
}

impl Matcher {
    /// Parses one matcher; the error says which forms exist, and for a bare glob, the fix.
    pub fn parse(s: &str) -> Result<Matcher, String> {
        match s {
            "*" => return Ok(Matcher::Everyone),
            "anonymous" => return Ok(Matcher::Anonymous),
            _ => {}
        }
        if s.starts_with("spiffe://") {
            return Ok(Matcher::Spiffe(s.to_string()));
        }
        if let Some(g) = s.strip_prefix("cn:") {
            return Ok(Matcher::Cn(g.to_string()));
        }
        if let Some(g) = s.strip_prefix("user:") {
            return Ok(Matcher::User(g.to_string()));
        }
        if let Some(g) = s.strip_prefix("sub:") {
            return Ok(Matcher::Sub(g.to_string()));
        }
        if let Some(g) = s.strip_prefix("client:") {
            return Ok(Matcher::Client(g.to_string()));
        }
        if let Some(c) = s.strip_prefix("claim:") {
            return match c.split_once('=') {
                Some((name, glob)) if !name.is_empty() && !name.split('.').any(str::is_empty) => {
                    Ok(Matcher::Claim {
                        name: name.to_string(),
                        glob: glob.to_string(),
                    })
                }
                _ => Err(format!(
                    "`{s}`: a claim matcher is claim:NAME=GLOB (e.g. claim:groups=dhcp-admins)"
                )),
            };
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
        if !s.contains(':') && !s.is_empty() {
            return Err(format!(
                "`{s}` names no kind of identity: use \"cn:{s}\" for a certificate CN (or dns:<glob>, spiffe://<prefix>, fingerprint:sha256:<hex>, user:<glob>, sub:<glob>, client:<glob>, claim:NAME=GLOB, anonymous, \"*\" for everyone)"
            ));
        }
        Err(format!(
            "`{s}`: use cn:<glob>, dns:<glob>, spiffe://<prefix>, fingerprint:sha256:<hex>, user:<glob>, sub:<glob>, client:<glob>, claim:NAME=GLOB, anonymous or \"*\""
        ))
    }

    /// Whether this matcher names a bearer token's claims (`sub:`, `client:`, `claim:`).
    pub fn is_token(&self) -> bool {
        matches!(
            self,
            Matcher::Sub(_) | Matcher::Client(_) | Matcher::Claim { .. }
        )
    }

    /// Whether the caller matches.
    pub fn matches(&self, id: Identity<'_>) -> bool {
        let c = match (self, id) {
            (Matcher::Everyone, _) => return true,
            (Matcher::Anonymous, id) => return matches!(id, Identity::Anonymous),
            (Matcher::User(g), id) => return id.user().is_some_and(|u| glob::matches(g, u)),
            (Matcher::Sub(g), id) => return id.token().is_some_and(|t| glob::matches(g, &t.sub)),
            (Matcher::Client(g), id) => {
                return id
                    .token()
                    .and_then(|t| t.client.as_deref())
                    .is_some_and(|c| glob::matches(g, c))
            }
            (Matcher::Claim { name, glob }, id) => {
                return id.token().is_some_and(|t| t.claim_matches(name, glob))
            }
            (_, id) => match id.cert() {
                Some(c) => c,
                None => return false,
            },
        };
        match self {
            Matcher::Cn(g) => c.cn.as_deref().is_some_and(|cn| glob::matches(g, cn)),
            Matcher::Dns(g) => c
                .dns
                .iter()
                .any(|d| glob::matches(g, &d.to_ascii_lowercase())),
            Matcher::Spiffe(p) => c.uris.iter().any(|u| u.starts_with(p.as_str())),
            Matcher::Fingerprint(f) => c.fingerprint == *f,
            Matcher::Everyone
            | Matcher::Anonymous
            | Matcher::User(_)
            | Matcher::Sub(_)
            | Matcher::Client(_)
            | Matcher::Claim { .. } => unreachable!("decided above"),
        }
    }
}

/// Whether any matcher in `list` matches.
pub(crate) fn any_matches(list: &[Matcher], id: Identity<'_>) -> bool {
    list.iter().any(|m| m.matches(id))
}

/// An ordered rule list in which the first rule whose identity matches (and whose own
/// condition holds, e.g. the direction of a cluster message) decides. Kea command rules and
/// the cluster method policy are both this.
#[derive(Debug, Clone)]
pub(crate) struct FirstMatch<T> {
    rules: Vec<(Vec<Matcher>, T)>,
}

impl<T> FirstMatch<T> {
    /// Rules in order: who each applies to, and what it says.
    pub fn new(rules: Vec<(Vec<Matcher>, T)>) -> Self {
        FirstMatch { rules }
    }

    /// The first rule that applies to `id` and satisfies `cond`, with its index.
    pub fn find(&self, id: Identity<'_>, cond: impl Fn(&T) -> bool) -> Option<(usize, &T)> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, (who, body))| any_matches(who, id) && cond(body))
            .map(|(i, (_, body))| (i, body))
    }
}

/// A route's admission rule: `deny` wins; with an `allow` list only matches get in.
#[derive(Debug, Clone, Default)]
pub struct Access {
    allow: Option<Vec<Matcher>>,
    deny: Vec<Matcher>,
}

impl Access {
    /// From the route's `allow` / `deny` lists (`None`: everyone not denied).
    pub fn new(allow: Option<Vec<Matcher>>, deny: Vec<Matcher>) -> Access {
        Access { allow, deny }
    }

    /// Whether the caller may use the route.
    pub fn admits(&self, id: Identity<'_>) -> bool {
        if any_matches(&self.deny, id) {
            return false;
        }
        self.allow
            .as_ref()
            .is_none_or(|allow| any_matches(allow, id))
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

    fn m(s: &str) -> Matcher {
        Matcher::parse(s).unwrap()
    }

    #[test]
    fn matchers() {
        let ops = client(
            "ops-admin",
            &["Admin.Example.org"],
            &["spiffe://example.org/ops/admin"],
            true,
        );
        let c = Identity::of(Some(&ops));
        assert!(m("cn:ops-*").matches(c));
        assert!(!m("cn:dash*").matches(c));
        assert!(m("dns:*.example.org").matches(c));
        assert!(m("spiffe://example.org/ops/").matches(c));
        assert!(!m("spiffe://example.org/dev/").matches(c));
        let fp = c.cert().unwrap().fingerprint.clone();
        let colons: Vec<String> = fp
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).to_uppercase())
            .collect();
        assert!(m(&format!("fingerprint:sha256:{}", colons.join(":"))).matches(c));
        assert!(!m("anonymous").matches(c));
        assert!(m("anonymous").matches(Identity::Anonymous));
        assert!(m("*").matches(c) && m("*").matches(Identity::Anonymous));
        assert!(
            !m("cn:*").matches(Identity::Anonymous),
            "globs never match anonymous"
        );
        assert!(Matcher::parse("fingerprint:sha256:abc").is_err());
        let bare = Matcher::parse("ops-admin").unwrap_err();
        assert!(bare.contains("use \"cn:ops-admin\""), "{bare}");
        let unknown = Matcher::parse("uid:7").unwrap_err();
        assert!(unknown.contains("claim:NAME=GLOB"), "{unknown}");
    }

    #[test]
    fn token_matchers_see_claims_and_the_certificate_beside() {
        let claims = serde_json::json!({"groups": ["ops", "dhcp-admins"], "n": 7,
            "realm_access": {"roles": ["kea"]}});
        let token = BearerToken {
            issuer: "corp".into(),
            iss: "https://idp".into(),
            sub: "pipeline-7".into(),
            client: Some("ci".into()),
            jti: None,
            exp: 0,
            claims: claims.as_object().cloned().unwrap_or_default(),
        };
        let runner = client("runner-1", &[], &[], true);
        let id = Identity::Token {
            token: &token,
            cert: runner.client.as_ref(),
        };
        for yes in [
            "sub:pipeline-*",
            "client:ci",
            "claim:groups=dhcp-*",
            "claim:n=7",
            "claim:realm_access.roles=kea",
            "cn:runner-1",
        ] {
            assert!(m(yes).matches(id), "{yes}");
        }
        for no in [
            "sub:other",
            "claim:groups=root",
            "claim:missing=*",
            "anonymous",
            "user:*",
        ] {
            assert!(!m(no).matches(id), "{no}");
        }
        assert!(!m("sub:*").matches(Identity::of(Some(&runner))));
        assert_eq!(id.to_string(), "sub=pipeline-7 (corp)");
        assert_eq!(id.limit_key(None), "sub:pipeline-7@corp");
        for bad in ["claim:groups", "claim:=x", "claim:a..b=x"] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_match_decides() {
        let rules = FirstMatch::new(vec![
            (vec![m("cn:agent-*")], "agents"),
            (vec![m("anonymous")], "anonymous"),
            (vec![m("*")], "everyone"),
        ]);
        let a = client("agent-1", &[], &[], true);
        let o = client("other", &[], &[], true);
        assert_eq!(
            rules.find(Identity::of(Some(&a)), |_| true),
            Some((0, &"agents"))
        );
        assert_eq!(
            rules.find(Identity::of(Some(&o)), |_| true),
            Some((2, &"everyone"))
        );
        assert_eq!(
            rules.find(Identity::Anonymous, |_| true),
            Some((1, &"anonymous"))
        );
        assert_eq!(
            rules.find(Identity::of(Some(&a)), |b| *b != "agents"),
            Some((2, &"everyone")),
            "a rule whose own condition fails is skipped"
        );
    }

    #[test]
    fn access_deny_wins_and_unverified_is_anonymous() {
        let m = |s: &str| Matcher::parse(s).unwrap();
        let a = Access::new(
            Some(vec![m("cn:ops-*"), m("spiffe://example.org/ops/")]),
            vec![m("cn:ops-intern")],
        );
        let id = |t: &TlsInfo| a.admits(Identity::of(Some(t)));
        assert!(id(&client("ops-admin", &[], &[], true)));
        assert!(!id(&client("ops-intern", &[], &[], true)), "deny wins");
        assert!(id(&client(
            "alice",
            &[],
            &["spiffe://example.org/ops/alice"],
            true
        )));
        assert!(!id(&client("dev", &[], &[], true)));
        assert!(
            !id(&client("ops-admin", &[], &[], false)),
            "unverified = anonymous"
        );
        assert!(!a.admits(Identity::Anonymous));
        let open = Access::new(None, vec![Matcher::Anonymous]);
        assert!(open.admits(Identity::of(Some(&client("x", &[], &[], true)))));
        assert!(!open.admits(Identity::Anonymous));
        let dash = client("dashboard-1", &[], &[], true);
        assert_eq!(Identity::of(Some(&dash)).to_string(), "cn=dashboard-1");
        assert_eq!(Identity::Anonymous.to_string(), "anonymous");
    }
}
