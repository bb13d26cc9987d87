//! JWS compact serialization (RFC 7515) and the keys of a JWK set (RFC 7517), on BoringSSL.
//!
//! Why our own and not a JOSE crate: the checks that matter are few and are where the
//! crates' histories went wrong (`alg: none`, an HMAC keyed with a public key, a header
//! naming the algorithm of the key it wants). Here the algorithm is a property of the key,
//! fixed when the JWK set is read: a token's `alg` must equal it, never choose it; HMAC and
//! `none` have no key type, so no token using them can verify. docs/authorization.md says
//! which crates were weighed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use boring::bn::BigNum;
use boring::ec::{EcGroup, EcKey};
use boring::ecdsa::EcdsaSig;
use boring::hash::{hash, MessageDigest};
use boring::nid::Nid;
use boring::pkey::{PKey, Public};
use boring::rsa::Rsa;
use boring::sign::Verifier;
use serde_json::Value;

/// A signature algorithm Gatehouse accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 bits or more.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// From the JOSE name (`Ed25519`, RFC 9864's fully specified name, is EdDSA too).
    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" | "Ed25519" => Some(Alg::EdDsa),
            _ => None,
        }
    }
}

/// One verification key; its algorithm follows from its type.
pub enum Key {
    /// RSA, 2048 bits or more.
    Rsa(PKey<Public>),
    /// P-256, the point checked to be on the curve.
    P256(EcKey<Public>),
    /// Ed25519.
    Ed25519(PKey<Public>),
}

impl Key {
    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self {
            Key::Rsa(_) => Alg::Rs256,
            Key::P256(_) => Alg::Es256,
            Key::Ed25519(_) => Alg::EdDsa,
        }
    }

    /// Whether `sig` is this key's signature of `signed`.
    fn verifies(&self, signed: &[u8], sig: &[u8]) -> bool {
        let ok = match self {
            Key::Rsa(pk) => Verifier::new(MessageDigest::sha256(), pk)
                .and_then(|mut v| {
                    v.update(signed)?;
                    v.verify(sig)
                })
                .ok(),
            Key::P256(ec) => {
                // JWS carries r||s, 32 bytes each (RFC 7518 §3.4), not DER.
                if sig.len() != 64 {
                    return false;
                }
                (|| {
                    let es = EcdsaSig::from_private_components(
                        BigNum::from_slice(&sig[..32])?,
                        BigNum::from_slice(&sig[32..])?,
                    )?;
                    es.verify(&hash(MessageDigest::sha256(), signed)?, ec)
                })()
                .ok()
            }
            Key::Ed25519(pk) => Verifier::new_without_digest(pk)
                .and_then(|mut v| v.verify_oneshot(sig, signed))
                .ok(),
        };
        ok.unwrap_or(false)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.alg().name())
    }
}

/// The usable keys of a JWK set, and why the others were skipped.
#[derive(Debug, Default)]
pub struct KeySet {
    /// `kid` (empty when the JWK has none) and key.
    pub keys: Vec<(String, Key)>,
    /// One line per JWK skipped (unsupported type, weak, encryption key, malformed).
    pub skipped: Vec<String>,
}

impl KeySet {
    /// Reads a JWK set document (`{"keys": [...]}`); keys Gatehouse cannot use are skipped
    /// with a reason, a document that is not a JWK set is an error.
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("not a JWK set: no `keys` array")?;
        let mut set = KeySet::default();
        for (i, jwk) in list.iter().enumerate() {
            match parse_jwk(jwk) {
                Ok(k) => set.keys.push(k),
                Err(e) => set.skipped.push(format!("keys[{i}]: {e}")),
            }
        }
        Ok(set)
    }

    /// The key a token names: its `kid` (of its `alg` first, should two keys share a `kid`),
    /// or with no `kid` the only key of its `alg`.
    fn find(&self, kid: Option<&str>, alg: Alg) -> Option<&Key> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|(k, _)| k == kid).map(|(_, k)| k);
                let first = named.next()?;
                Some(
                    std::iter::once(first)
                        .chain(named)
                        .find(|k| k.alg() == alg)
                        .unwrap_or(first),
                )
            }
            None => {
                let mut of_alg = self.keys.iter().filter(|(_, k)| k.alg() == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some((_, k)), None) => Some(k),
                    _ => None,
                }
            }
        }
    }
}

fn b64_member(j: &Value, m: &str) -> Result<Vec<u8>, String> {
    let s = j
        .get(m)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no `{m}`"))?;
    B64.decode(s).map_err(|_| format!("`{m}` is not base64url"))
}

fn parse_jwk(j: &Value) -> Result<(String, Key), String> {
    let kid = j
        .get("kid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(u) = j.get("use").and_then(Value::as_str) {
        if u != "sig" {
            return Err(format!("kid {kid:?}: `use` is {u:?}, not sig"));
        }
    }
    let bad = |e: boring::error::ErrorStack| format!("kid {kid:?}: {e}");
    let key = match (
        j.get("kty").and_then(Value::as_str),
        j.get("crv").and_then(Value::as_str),
    ) {
        (Some("RSA"), _) => {
            let n = BigNum::from_slice(&b64_member(j, "n")?).map_err(bad)?;
            let e = BigNum::from_slice(&b64_member(j, "e")?).map_err(bad)?;
            let rsa = Rsa::from_public_components(n, e).map_err(bad)?;
            if rsa.n().num_bits() < 2048 {
                return Err(format!("kid {kid:?}: RSA key under 2048 bits"));
            }
            Key::Rsa(PKey::from_rsa(rsa).map_err(bad)?)
        }
        (Some("EC"), Some("P-256")) => {
            let (x, y) = (b64_member(j, "x")?, b64_member(j, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(format!("kid {kid:?}: a P-256 coordinate is not 32 bytes"));
            }
            let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(bad)?;
            let (x, y) = (
                BigNum::from_slice(&x).map_err(bad)?,
                BigNum::from_slice(&y).map_err(bad)?,
            );
            // Refuses a point that is not on the curve.
            let k = EcKey::from_public_key_affine_coordinates(&g, &x, &y).map_err(bad)?;
            Key::P256(k)
        }
        (Some("OKP"), Some("Ed25519")) => {
            let x = b64_member(j, "x")?;
            if x.len() != 32 {
                return Err(format!("kid {kid:?}: an Ed25519 key is 32 bytes"));
            }
            // SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): a fixed prefix, then the key.
            let mut der = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            der.extend_from_slice(&x);
            Key::Ed25519(PKey::public_key_from_der(&der).map_err(bad)?)
        }
        (kty, crv) => {
            return Err(format!(
                "kid {kid:?}: key type {} {} is not RSA, EC P-256 or OKP Ed25519",
                crate::logsafe::Esc(kty.unwrap_or("(none)")),
                crate::logsafe::Esc(crv.unwrap_or(""))
            ))
        }
    };
    // A JWK's own `alg`, when it says one, must be the key's.
    if let Some(a) = j.get("alg").and_then(Value::as_str) {
        if Alg::parse(a) != Some(key.alg()) {
            return Err(format!(
                "kid {kid:?}: `alg` {} for a {} key",
                crate::logsafe::Esc(a),
                key.alg().name()
            ));
        }
    }
    Ok((kid, key))
}

/// Why a token's signature part did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwsError {
    /// Not three base64url parts with JSON header and payload objects.
    Malformed(&'static str),
    /// `alg` is not one of the accepted ones (`none` and `HS*` never are), or `crit` is set.
    Algorithm(String),
    /// No key with this `kid` (a key set refresh may find it).
    UnknownKey(Option<String>),
    /// The key named has another algorithm than the header's.
    KeyMismatch,
    /// The signature is not the key's.
    Signature,
}

/// A compact JWS taken apart, nothing checked but its shape.
pub struct Parts<'a> {
    /// The decoded protected header.
    pub header: serde_json::Map<String, Value>,
    /// The decoded payload, a JSON object.
    pub payload: serde_json::Map<String, Value>,
    /// `header.payload` as sent: what the signature covers.
    signed: &'a [u8],
    sig: Vec<u8>,
}

/// Takes a compact JWS apart.
pub fn split(token: &str) -> Result<Parts<'_>, JwsError> {
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(JwsError::Malformed("not three dot-separated parts"));
    };
    let object = |part: &str, what: &'static str| {
        let bytes = B64.decode(part).map_err(|_| JwsError::Malformed(what))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(JwsError::Malformed(what)),
        }
    };
    let header = object(h, "the header is not a base64url JSON object")?;
    let payload = object(p, "the payload is not a base64url JSON object")?;
    let sig = B64
        .decode(s)
        .map_err(|_| JwsError::Malformed("the signature is not base64url"))?;
    Ok(Parts {
        header,
        payload,
        signed: &token.as_bytes()[..h.len() + 1 + p.len()],
        sig,
    })
}

impl Parts<'_> {
    /// The header's `kid`.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// Checks the signature with a key of `keys`, under an algorithm of `accepted`.
    pub fn verify(&self, keys: &KeySet, accepted: &[Alg]) -> Result<(), JwsError> {
        if self.header.contains_key("crit") {
            return Err(JwsError::Algorithm("`crit` header parameters".into()));
        }
        let named = self.header.get("alg").and_then(Value::as_str);
        let alg = named
            .and_then(Alg::parse)
            .filter(|a| accepted.contains(a))
            .ok_or_else(|| JwsError::Algorithm(named.unwrap_or("(none)").to_string()))?;
        let key = keys
            .find(self.kid(), alg)
            .ok_or_else(|| JwsError::UnknownKey(self.kid().map(str::to_string)))?;
        if key.alg() != alg {
            return Err(JwsError::KeyMismatch);
        }
        if !key.verifies(self.signed, &self.sig) {
            return Err(JwsError::Signature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boring::pkey::Private;
    use boring::sign::Signer;

    const ALL: &[Alg] = &[Alg::Rs256, Alg::Es256, Alg::EdDsa];

    fn b64(b: &[u8]) -> String {
        B64.encode(b)
    }

    fn rsa_pair() -> (PKey<Private>, Value) {
        let rsa = Rsa::generate(2048).unwrap();
        let jwk = serde_json::json!({"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig",
            "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
        (PKey::from_rsa(rsa).unwrap(), jwk)
    }

    fn sign_rs(key: &PKey<Private>, header: &Value, payload: &Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let mut s = Signer::new(MessageDigest::sha256(), key).unwrap();
        s.update(signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64(&s.sign_to_vec().unwrap()))
    }

    fn set(jwks: &[Value]) -> KeySet {
        KeySet::parse(serde_json::json!({ "keys": jwks }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn rs256_verifies_and_alg_is_the_keys() {
        let (key, jwk) = rsa_pair();
        let keys = set(&[jwk]);
        let payload = serde_json::json!({"sub": "a"});
        let good = sign_rs(
            &key,
            &serde_json::json!({"alg": "RS256", "kid": "r1"}),
            &payload,
        );
        split(&good).unwrap().verify(&keys, ALL).unwrap();
        assert_eq!(
            split(&good).unwrap().verify(&keys, &[Alg::Es256]),
            Err(JwsError::Algorithm("RS256".into())),
            "an algorithm the issuer does not accept"
        );
        let as_es = sign_rs(
            &key,
            &serde_json::json!({"alg": "ES256", "kid": "r1"}),
            &payload,
        );
        assert_eq!(
            split(&as_es).unwrap().verify(&keys, ALL),
            Err(JwsError::KeyMismatch)
        );
        for alg in ["none", "HS256", "PS256", "RS512"] {
            let t = sign_rs(
                &key,
                &serde_json::json!({"alg": alg, "kid": "r1"}),
                &payload,
            );
            assert_eq!(
                split(&t).unwrap().verify(&keys, ALL),
                Err(JwsError::Algorithm(alg.into()))
            );
        }
        let crit = sign_rs(
            &key,
            &serde_json::json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]}),
            &payload,
        );
        assert!(matches!(
            split(&crit).unwrap().verify(&keys, ALL),
            Err(JwsError::Algorithm(_))
        ));
        let other = sign_rs(
            &key,
            &serde_json::json!({"alg": "RS256", "kid": "r9"}),
            &payload,
        );
        assert_eq!(
            split(&other).unwrap().verify(&keys, ALL),
            Err(JwsError::UnknownKey(Some("r9".into())))
        );
        let no_kid = sign_rs(&key, &serde_json::json!({"alg": "RS256"}), &payload);
        split(&no_kid).unwrap().verify(&keys, ALL).unwrap();
        let mut flipped = good.clone().into_bytes();
        let at = good.find('.').unwrap() + 3;
        flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(matches!(
            split(&flipped).map(|p| p.verify(&keys, ALL)),
            Ok(Err(JwsError::Signature)) | Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn es256_and_eddsa_verify() {
        let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&g).unwrap();
        let mut ctx = boring::bn::BigNumContext::new().unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        ec.public_key()
            .affine_coordinates_gfp(&g, &mut x, &mut y, &mut ctx)
            .unwrap();
        let pad = |b: &boring::bn::BigNumRef| b.to_vec_padded(32).unwrap();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "e1",
            "x": b64(&pad(&x)), "y": b64(&pad(&y))});
        let signed = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256","kid":"e1"}"#),
            b64(br#"{"sub":"b"}"#)
        );
        let sig = EcdsaSig::sign(
            &hash(MessageDigest::sha256(), signed.as_bytes()).unwrap(),
            &ec,
        )
        .unwrap();
        let raw = [pad(sig.r()), pad(sig.s())].concat();
        let token = format!("{signed}.{}", b64(&raw));
        split(&token).unwrap().verify(&set(&[jwk]), ALL).unwrap();

        // PKCS #8 of an Ed25519 seed (RFC 8410): a fixed prefix, then the 32-byte seed.
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&[7; 32]);
        let ed = PKey::private_key_from_der(&pkcs8).unwrap();
        let spki = ed.public_key_to_der().unwrap();
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "d1",
            "x": b64(&spki[12..])});
        let signed = format!(
            "{}.{}",
            b64(br#"{"alg":"EdDSA","kid":"d1"}"#),
            b64(br#"{"sub":"c"}"#)
        );
        let mut s = Signer::new_without_digest(&ed).unwrap();
        let sig = s.sign_oneshot_to_vec(signed.as_bytes()).unwrap();
        let token = format!("{signed}.{}", b64(&sig));
        split(&token).unwrap().verify(&set(&[jwk]), ALL).unwrap();
    }

    #[test]
    fn unusable_jwks_are_skipped_with_a_reason() {
        let small = Rsa::generate(1024).unwrap();
        let keys = KeySet::parse(
            serde_json::json!({"keys": [
                {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
                {"kty": "RSA", "kid": "s", "n": b64(&small.n().to_vec()), "e": b64(&small.e().to_vec())},
                {"kty": "EC", "crv": "P-256", "kid": "off", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
                {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert!(keys.keys.is_empty());
        let why = keys.skipped.join("\n");
        for part in ["oct", "under 2048", "\"off\"", "not sig"] {
            assert!(why.contains(part), "{why}");
        }
        assert!(KeySet::parse(b"[]").is_err());
        assert!(KeySet::parse(b"{\"keys\": 1}").is_err());
        for bad in [
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            "e30.!!.",
            "e30.e30.!!",
            "W10.e30.",
        ] {
            assert!(matches!(split(bad), Err(JwsError::Malformed(_))), "{bad}");
        }
    }
}
