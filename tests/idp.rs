//! The test OpenID provider itself (tests/oidc, `common::oidc::Idp`): that it issues the JWT
//! access tokens the bearer-token tests rely on, rotates its keys, crafts the hostile tokens
//! and fails its JWKS on demand. Gatehouse is not involved.

mod common;

use common::oidc::{decode_jwt, Idp, ADMIN, VIEWER};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// The kids of a JWKS.
fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("a JWKS has keys: {jwks}"))
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn idp_issues_jwt_access_tokens() {
    let Some(idp) = Idp::start() else { return };
    assert!(idp.issuer().starts_with("https://127.0.0.1:"));
    assert!(idp.ca_pem_path().is_file());
    assert!(idp.keys_file().is_file());
    let rs256 = issues_tokens(&idp);
    let fresh = rotates(&idp, &rs256);
    crafts(&idp, &fresh);
    fails_on_demand(&idp);
}

/// Client credentials: one token per signing algorithm, all for the audience urn:gatehouse;
/// returns the RS256 one.
fn issues_tokens(idp: &Idp) -> String {
    let mut rs256 = String::new();
    for (resource, alg) in [
        ("urn:gatehouse", "RS256"),
        ("urn:gatehouse:es256", "ES256"),
        ("urn:gatehouse:eddsa", "EdDSA"),
    ] {
        let token = idp.token(ADMIN.0, ADMIN.1, resource);
        let (header, payload) = decode_jwt(&token);
        eprintln!("{resource}: header {header}\n{resource}: payload {payload}");
        assert_eq!(header["alg"], alg, "{resource}: {header}");
        assert_eq!(header["typ"], "at+jwt", "{resource}: {header}");
        assert!(header["kid"].is_string(), "{resource}: {header}");
        assert_eq!(payload["iss"], idp.issuer(), "{resource}: {payload}");
        assert_eq!(payload["aud"], "urn:gatehouse", "{resource}: {payload}");
        assert_eq!(payload["groups"], json!(["dhcp-admins"]), "{payload}");
        assert!(payload["exp"].as_i64().unwrap_or(0) > now(), "{payload}");
        assert!(payload["nbf"].as_i64().is_some(), "{payload}");
        assert!(payload["iat"].as_i64().is_some(), "{payload}");
        assert!(payload["jti"].is_string(), "{payload}");
        // oidc-provider sets sub to the client id for a client-credentials token.
        assert_eq!(payload["sub"], ADMIN.0, "{payload}");
        assert_eq!(payload["client_id"], ADMIN.0, "{payload}");
        if alg == "RS256" {
            rs256 = token;
        }
    }
    let viewer = decode_jwt(&idp.token(VIEWER.0, VIEWER.1, "urn:gatehouse")).1;
    assert_eq!(viewer["groups"], json!(["viewers"]), "{viewer}");
    assert_eq!(viewer["sub"], VIEWER.0, "{viewer}");
    let other = decode_jwt(&idp.token(ADMIN.0, ADMIN.1, "urn:other")).1;
    assert_eq!(other["aud"], "urn:other", "{other}");

    // The JWKS publishes public keys only.
    let jwks = idp.jwks();
    assert_eq!(kids(&jwks).len(), 3, "{jwks}");
    assert!(
        jwks["keys"]
            .as_array()
            .is_some_and(|ks| ks.iter().all(|k| k.get("d").is_none())),
        "{jwks}"
    );
    rs256
}

/// Rotation: new kids sign, the old ones stay published; returns a token of the new key.
fn rotates(idp: &Idp, before: &str) -> String {
    let old_kid = decode_jwt(before).0["kid"].clone();
    let published = idp.rotate(false);
    assert_eq!(published.len(), 6, "{published:?}");
    let fresh = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse");
    let new_kid = decode_jwt(&fresh).0["kid"].clone();
    assert_ne!(new_kid, old_kid);
    let listed = kids(&idp.jwks());
    for kid in [&old_kid, &new_kid] {
        let kid = kid.as_str().expect("a kid is a string");
        assert!(listed.iter().any(|k| k == kid), "{kid} in {listed:?}");
    }
    fresh
}

/// Crafted tokens, signed with the current keys (those of `real`), extra claims in every one.
fn crafts(idp: &Idp, real: &str) {
    let crafted = idp.craft(Some(real), Some(json!({"scope": "dhcp:read"})));
    for case in [
        "valid",
        "valid_es256",
        "other_sub",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "audience_array_ok",
        "no_exp",
        "alg_none",
        "alg_none_kid",
        "hs256_public_pem",
        "hs256_public_der",
        "hs256_public_n",
        "alg_kty_mismatch",
        "alg_kty_mismatch2",
        "unknown_kid",
        "tampered_payload",
        "tampered_signature",
    ] {
        assert!(
            crafted.contains_key(case),
            "no {case} in {:?}",
            crafted.keys()
        );
    }
    let (header, valid) = decode_jwt(&crafted["valid"]);
    let (real_header, real_payload) = decode_jwt(real);
    assert_eq!(
        header["kid"], real_header["kid"],
        "the current key: {header}"
    );
    assert_eq!(valid["iss"], idp.issuer());
    assert_eq!(valid["scope"], "dhcp:read", "{valid}");
    let other_sub = decode_jwt(&crafted["other_sub"]).1;
    assert_eq!(other_sub["sub"], "pipeline-7", "{other_sub}");
    assert_eq!(other_sub["client_id"], "ci-pipeline", "{other_sub}");
    assert!(decode_jwt(&crafted["no_exp"]).1.get("exp").is_none());
    let expired = decode_jwt(&crafted["expired"]).1;
    assert!(
        expired["exp"].as_i64().unwrap_or(i64::MAX) < now(),
        "{expired}"
    );
    let tampered = decode_jwt(&crafted["tampered_payload"]).1;
    assert_eq!(tampered["jti"], real_payload["jti"], "{tampered}");
}

/// The JWKS (and discovery) fail on demand, and come back.
fn fails_on_demand(idp: &Idp) {
    idp.down("503");
    assert_eq!(idp.get(idp.jwks_url()).status, 503);
    idp.down("reset");
    let reset = idp.get(idp.jwks_url());
    assert_eq!(reset.status, 0, "{reset:?}");
    idp.up();
    assert_eq!(idp.get(idp.jwks_url()).status, 200);
}
