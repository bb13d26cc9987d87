// Crafts the hostile / edge-case tokens a real provider will not issue.
// Usage: node craft.js KEYS_FILE ISSUER [REAL_TOKEN [EXTRA_CLAIMS_JSON]]
// Prints one JSON object {case: token}. Signed cases use the provider's own
// private keys (KEYS_FILE written by provider.js), so only the property under
// test is wrong.
//   REAL_TOKEN         a token the provider issued, the base of tampered_payload
//                      and tampered_signature ('' or '-': use the crafted valid one)
//   EXTRA_CLAIMS_JSON  a JSON object merged into every crafted token's claims
//                      (each case's own claims still win: `expired` keeps its exp)
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import {
  SignJWT, UnsecuredJWT, importJWK, base64url, generateKeyPair,
} from 'jose';

const [keysFile, issuer, realTokenArg, extraArg] = process.argv.slice(2);
if (!keysFile || !issuer) {
  console.error('usage: node craft.js KEYS_FILE ISSUER [REAL_TOKEN [EXTRA_CLAIMS_JSON]]');
  process.exit(2);
}
const realToken = realTokenArg && realTokenArg !== '-' ? realTokenArg : undefined;
const extra = extraArg ? JSON.parse(extraArg) : {};
if (typeof extra !== 'object' || extra === null || Array.isArray(extra)) {
  console.error('craft.js: EXTRA_CLAIMS_JSON must be a JSON object');
  process.exit(2);
}
const { keys } = JSON.parse(fs.readFileSync(keysFile, 'utf8'));
const rsa = keys.find((k) => k.kty === 'RSA');
const ec = keys.find((k) => k.kty === 'EC');
const now = Math.floor(Date.now() / 1000);
const base = {
  iss: issuer, aud: 'urn:gatehouse', sub: 'crafted', client_id: 'crafted',
  groups: ['dhcp-admins'], iat: now, nbf: now, exp: now + 600,
  ...extra,
};

async function sign(jwk, claims, header = {}) {
  const key = await importJWK(jwk, jwk.alg);
  return new SignJWT({ ...base, ...claims })
    .setProtectedHeader({ alg: jwk.alg, typ: 'at+jwt', kid: jwk.kid, ...header })
    .sign(key);
}

const out = {};
// control: everything right (must be accepted)
out.valid = await sign(rsa, {});
out.valid_es256 = await sign(ec, {});
// valid, but another subject / client than the crafted default (identity mapping)
out.other_sub = await sign(rsa, { sub: 'pipeline-7', client_id: 'ci-pipeline', groups: ['dhcp-admins'] });
out.expired = await sign(rsa, { iat: now - 7200, nbf: now - 7200, exp: now - 3600 });
// exp stays after nbf, so only nbf is wrong
out.not_yet_valid = await sign(rsa, { nbf: now + 3600, exp: now + 7200 });
out.wrong_issuer = await sign(rsa, { iss: 'https://evil.example' });
out.wrong_audience = await sign(rsa, { aud: 'urn:other' });
out.audience_array_ok = await sign(rsa, { aud: ['urn:other', 'urn:gatehouse'] });
out.no_exp = await sign(rsa, { exp: undefined });

// alg "none": header {"alg":"none"}, empty signature
out.alg_none = new UnsecuredJWT({ ...base }).encode();
// same, but keeping the real kid and an "at+jwt" typ
out.alg_none_kid = `${base64url.encode(JSON.stringify({ alg: 'none', typ: 'at+jwt', kid: rsa.kid }))}.${base64url.encode(JSON.stringify(base))}.`;

// HS256 keyed with the issuer's PUBLIC key (the classic confusion attack),
// in the forms a confused verifier might use as the HMAC secret.
const pubPem = crypto.createPublicKey({ key: rsa, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
const pubDer = crypto.createPublicKey({ key: rsa, format: 'jwk' }).export({ type: 'spki', format: 'der' });
const hs = (secret) => new SignJWT({ ...base })
  .setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: rsa.kid })
  .sign(new Uint8Array(secret));
out.hs256_public_pem = await hs(Buffer.from(pubPem));
out.hs256_public_der = await hs(pubDer);
out.hs256_public_n = await hs(Buffer.from(rsa.n, 'base64url'));

// header alg that does not match the key kind the kid names
// (ES256 header + RSA kid; RS256 header + EC kid): must be refused, not "tried".
// Both signatures are good for the provider's key of their alg, so a verifier
// that ignores the kid's key kind and tries every key would accept them.
out.alg_kty_mismatch = await sign(ec, {}, { kid: rsa.kid });
out.alg_kty_mismatch2 = await sign(rsa, {}, { kid: ec.kid });

// signed by a key the issuer never published (unknown kid -> one refresh, then refuse)
const { privateKey } = await generateKeyPair('RS256');
out.unknown_kid = await new SignJWT({ ...base })
  .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: 'not-published' })
  .sign(privateKey);

// tampered payload: real token, payload changed, signature kept
const [h, p, s] = (realToken ?? out.valid).split('.');
const claims = { ...JSON.parse(Buffer.from(p, 'base64url')), ...extra };
claims.groups = ['dhcp-admins', 'root'];
claims.sub = 'someone-else';
out.tampered_payload = `${h}.${base64url.encode(JSON.stringify(claims))}.${s}`;
// signature with one bit flipped
const sig = Buffer.from(s, 'base64url'); sig[0] ^= 1;
out.tampered_signature = `${h}.${p}.${base64url.encode(sig)}`;

console.log(JSON.stringify(out, null, 1));
