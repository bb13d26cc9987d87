//! Bearer tokens (JWT access tokens, RFC 9068) as identities: `issuers:` and
//! `routes[].bearer`.
//!
//! A route with `bearer:` takes `Authorization: Bearer <JWT>`, picks the issuer of its list
//! whose `issuer` the token's `iss` names, and checks, in this order: `typ` when the issuer
//! asks, the signature with one of the issuer's keys (`jws`: the algorithm is the key's,
//! never the token's choice; keys fetched and cached in `keys`, over Pingora's connector in
//! `fetch`), `exp` (required) and `nbf` within the leeway, `iss`, `aud` (one of the issuer's
//! audiences), and `sub` (required). What verified becomes an
//! [`crate::identity::BearerToken`], matched by `sub:`, `client:` and `claim:NAME=GLOB`, and is
//! remembered per route (`seen`) so the next request with it skips the signature check.

mod fetch;
#[doc(hidden)]
pub mod jws;
mod keys;
mod seen;

use crate::config::{BearerMode, IssuerKeys, IssuerSettings};
use crate::identity::BearerToken;
use crate::metrics::Metrics;
use jws::{Alg, JwsError};
use serde_json::Value;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest token taken (bigger ones are refused unread).
const MAX_TOKEN: usize = 16 * 1024;

/// Why a bearer token was refused; the label of `gatehouse_bearer_tokens_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a compact JWS with JSON header and payload, or over 16 KiB.
    Malformed,
    /// An algorithm the issuer does not accept (`none` and `HS*` never are), or `crit`.
    Algorithm,
    /// No key of the issuer has the token's `kid`, even after a refresh.
    UnknownKey,
    /// The key's algorithm is not the token's `alg`.
    KeyMismatch,
    /// The signature is not the key's.
    Signature,
    /// `typ` is not one the issuer accepts.
    Type,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (less the leeway).
    NotYetValid,
    /// `iss` names none of the route's issuers.
    Issuer,
    /// `aud` names none of the issuer's audiences.
    Audience,
    /// No `sub`, or a time claim that is not a number.
    Claims,
    /// The issuer's keys cannot be had (never fetched, or past `max_stale`).
    KeysUnavailable,
}

impl Refusal {
    /// Every label, for priming the metric.
    pub const LABELS: [&'static str; 12] = [
        "malformed",
        "algorithm",
        "unknown_key",
        "key_mismatch",
        "signature",
        "type",
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "claims",
        "keys_unavailable",
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }

    /// The `error_description` of the 401 (fixed text: nothing the client sent is echoed).
    pub fn description(self) -> &'static str {
        match self {
            Refusal::Malformed => "the token is not a JWT",
            Refusal::Algorithm => "the token's algorithm is not accepted",
            Refusal::UnknownKey => "the token's key is unknown",
            Refusal::KeyMismatch => "the token's algorithm is not its key's",
            Refusal::Signature => "the token's signature does not verify",
            Refusal::Type => "the token's type is not accepted",
            Refusal::Expired => "the token expired",
            Refusal::NotYetValid => "the token is not valid yet",
            Refusal::Issuer => "the token's issuer is not accepted here",
            Refusal::Audience => "the token is not meant for this service",
            Refusal::Claims => "the token lacks sub or exp",
            Refusal::KeysUnavailable => "the issuer's keys are unavailable",
        }
    }
}

/// One configured issuer: what its tokens must say, and its keys.
pub(crate) struct Issuer {
    name: Arc<str>,
    iss: String,
    audiences: Vec<String>,
    algorithms: Vec<Alg>,
    leeway: i64,
    typ: Vec<String>,
    keys: Arc<keys::KeyCache>,
}

impl Issuer {
    /// The issuer of `s`; a CA file that does not load is an error naming it.
    pub fn new(s: &IssuerSettings, metrics: Arc<Metrics>) -> Result<Issuer, String> {
        let ca = match &s.ca {
            Some(p) => Some(crate::tls::read_certs(p).map_err(|e| format!("ca: {e}"))?),
            None => None,
        };
        let name: Arc<str> = s.name.as_str().into();
        let source = match &s.keys {
            IssuerKeys::Discovery => keys::Source::Discovery(s.issuer.clone()),
            IssuerKeys::Url(u) => keys::Source::Url(u.clone()),
            IssuerKeys::File(p) => keys::Source::File(p.clone()),
        };
        let timing = keys::Timing {
            refresh_interval: s.refresh_interval,
            min_refresh_interval: s.min_refresh_interval,
            max_stale: s.max_stale,
        };
        Ok(Issuer {
            name: name.clone(),
            iss: s.issuer.clone(),
            audiences: s.audience.clone(),
            algorithms: s.algorithms.iter().filter_map(|a| Alg::parse(a)).collect(),
            leeway: i64::try_from(s.leeway.as_secs()).unwrap_or(i64::MAX),
            typ: s.typ.iter().map(|t| typ_normal(t)).collect(),
            keys: Arc::new(keys::KeyCache::new(
                name,
                source,
                fetch::Fetcher::new(ca, s.fetch_timeout),
                timing,
                metrics,
            )),
        })
    }

    /// Verifies a token whose `iss` is this issuer's; with the key set it verified against.
    async fn verify(
        &self,
        parts: &jws::Parts<'_>,
        now: i64,
    ) -> Result<(BearerToken, Arc<jws::KeySet>), Refusal> {
        if !self.typ.is_empty() {
            let typ = parts.header.get("typ").and_then(Value::as_str);
            if !typ.is_some_and(|t| self.typ.contains(&typ_normal(t))) {
                return Err(Refusal::Type);
            }
        }
        let set = self.keys.current().await.ok_or(Refusal::KeysUnavailable)?;
        let set = match parts.verify(&set, &self.algorithms) {
            Err(JwsError::UnknownKey(_)) => {
                let fresh = self
                    .keys
                    .after_unknown_kid(&set)
                    .await
                    .ok_or(Refusal::KeysUnavailable)?;
                parts.verify(&fresh, &self.algorithms).map_err(refusal)?;
                fresh
            }
            other => {
                other.map_err(refusal)?;
                set
            }
        };
        Ok((self.claims(&parts.payload, now)?, set))
    }

    /// The claims' checks, once the signature verified.
    fn claims(&self, c: &serde_json::Map<String, Value>, now: i64) -> Result<BearerToken, Refusal> {
        let time = |n: &str| -> Result<Option<i64>, Refusal> {
            match c.get(n) {
                None => Ok(None),
                // NumericDate may have a fraction (RFC 7519 §2).
                Some(v) => v.as_f64().map(|f| Some(f as i64)).ok_or(Refusal::Claims),
            }
        };
        let exp = time("exp")?.ok_or(Refusal::Claims)?;
        // RFC 7519 §4.1.4: on or after `exp` it is expired.
        if now >= exp.saturating_add(self.leeway) {
            return Err(Refusal::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| now.saturating_add(self.leeway) < nbf) {
            return Err(Refusal::NotYetValid);
        }
        if c.get("iss").and_then(Value::as_str) != Some(self.iss.as_str()) {
            return Err(Refusal::Issuer);
        }
        let for_us = |a: &Value| {
            a.as_str()
                .is_some_and(|a| self.audiences.iter().any(|w| w == a))
        };
        let aud_ok = match c.get("aud") {
            Some(Value::Array(list)) => list.iter().any(for_us),
            Some(a) => for_us(a),
            None => false,
        };
        if !aud_ok {
            return Err(Refusal::Audience);
        }
        let text = |n: &str| c.get(n).and_then(Value::as_str).map(str::to_string);
        let sub = text("sub").ok_or(Refusal::Claims)?;
        Ok(BearerToken {
            issuer: self.name.clone(),
            iss: self.iss.clone(),
            sub,
            client: text("client_id").or_else(|| text("azp")),
            jti: text("jti"),
            exp,
            claims: c.clone(),
        })
    }
}

/// `typ` compared as RFC 7515 §4.1.9 says: case-insensitive, `application/` implied.
fn typ_normal(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    t.strip_prefix("application/")
        .map(str::to_string)
        .unwrap_or(t)
}

fn refusal(e: JwsError) -> Refusal {
    match e {
        JwsError::Malformed(_) => Refusal::Malformed,
        JwsError::Algorithm(_) => Refusal::Algorithm,
        JwsError::UnknownKey(_) => Refusal::UnknownKey,
        JwsError::KeyMismatch => Refusal::KeyMismatch,
        JwsError::Signature => Refusal::Signature,
    }
}

/// What a route's `bearer:` made of a request's `Authorization`.
pub(crate) enum Outcome {
    /// No bearer token was sent.
    Absent,
    /// It verified.
    Verified(Arc<BearerToken>),
    /// It did not; the issuer is named when `iss` picked one.
    Refused(Refusal, Option<Arc<str>>),
}

/// A route's `bearer:` settings, with its issuers.
pub(crate) struct Bearer {
    issuers: Vec<Arc<Issuer>>,
    /// Tokens that verified here, so a repeated one costs a lookup, not a signature check.
    seen: seen::Seen,
    /// Whether a certificate, a token, or both are required.
    pub mode: BearerMode,
    /// Whether the token goes on to the upstream.
    pub forward: bool,
    /// The realm of `WWW-Authenticate`.
    pub realm: String,
    metrics: Arc<Metrics>,
}

impl Bearer {
    /// The route's settings over `issuers` (the route's list, resolved).
    pub fn new(
        issuers: Vec<Arc<Issuer>>,
        mode: BearerMode,
        forward: bool,
        realm: String,
        metrics: Arc<Metrics>,
    ) -> Bearer {
        Bearer {
            issuers,
            seen: seen::Seen::default(),
            mode,
            forward,
            realm,
            metrics,
        }
    }

    /// Reads and verifies the bearer token of `authorization` (the header's value), if any.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Outcome {
        let Some(token) = authorization.and_then(bearer_token) else {
            return Outcome::Absent;
        };
        let outcome = self.verify(token).await;
        let (issuer, label) = match &outcome {
            Outcome::Verified(t) => (Some(&t.issuer), "ok"),
            Outcome::Refused(r, i) => (i.as_ref(), r.label()),
            Outcome::Absent => (None, "absent"),
        };
        self.metrics
            .bearer_tokens
            .with_label_values(&[issuer.map_or("-", |i| &**i), label])
            .inc();
        outcome
    }

    async fn verify(&self, token: &[u8]) -> Outcome {
        let now = now();
        let digest = boring::sha::sha256(token);
        if let Some(t) = self.remembered(&digest, now).await {
            return Outcome::Verified(t);
        }
        let parsed = std::str::from_utf8(token)
            .ok()
            .filter(|_| token.len() <= MAX_TOKEN)
            .ok_or(JwsError::Malformed("not text"))
            .and_then(jws::split);
        let parts = match parsed {
            Ok(p) => p,
            Err(e) => return Outcome::Refused(refusal(e), None),
        };
        let iss = parts.payload.get("iss").and_then(Value::as_str);
        let Some(at) = self
            .issuers
            .iter()
            .position(|i| Some(i.iss.as_str()) == iss)
        else {
            return Outcome::Refused(Refusal::Issuer, None);
        };
        let issuer = &self.issuers[at];
        match issuer.verify(&parts, now).await {
            Ok((t, keys)) => {
                let t = Arc::new(t);
                self.seen.put(digest, at, &keys, t.clone(), now);
                Outcome::Verified(t)
            }
            Err(r) => Outcome::Refused(r, Some(issuer.name.clone())),
        }
    }

    /// A token that verified here before, against the keys its issuer holds now, still in
    /// its time window.
    async fn remembered(&self, digest: &[u8; 32], now: i64) -> Option<Arc<BearerToken>> {
        let entry = self.seen.get(digest)?;
        let issuer = self.issuers.get(entry.issuer)?;
        let keys = issuer.keys.current().await?;
        entry.valid(&keys, now, issuer.leeway)
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(rest[start..].trim_ascii_end())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer"), None);
    }

    #[test]
    fn typ_compares_as_media_types() {
        assert_eq!(typ_normal("application/AT+JWT"), "at+jwt");
        assert_eq!(typ_normal("JWT"), "jwt");
    }

    #[test]
    fn labels_follow_the_variants() {
        assert_eq!(Refusal::Malformed.label(), "malformed");
        assert_eq!(Refusal::KeysUnavailable.label(), "keys_unavailable");
        assert_eq!(Refusal::Claims.label(), "claims");
    }
}
