// Minimal real OpenID provider for Gatehouse's JWT bearer tests.
// oidc-provider 9.x (ESM; package.json has "type": "module"), Node >= 20.
//
// Environment:
//   PORT        listen port on 127.0.0.1 (0 = ephemeral; default 0)
//   TLS_CERT    PEM server certificate (chain)  } both set => HTTPS,
//   TLS_KEY     PEM server private key          } issuer https://127.0.0.1:PORT
//   KEYS_FILE   if set, the PRIVATE JWKS is written there after every (re)key,
//               so the test can craft tokens (expired, nbf, wrong iss, ...)
//               signed with the provider's real keys.
//   EXIT_WITH_STDIN=1  exit when standard input closes: the test harness keeps a
//               pipe open, so the provider dies with the test process even when
//               that one is killed before it can stop the provider.
//
// On start it prints one JSON line on stdout: {"issuer":..., "port":...}
//
// Clients (client_secret_basic, grant client_credentials only):
//   gatehouse-admin / admin-secret    -> groups ["dhcp-admins"]
//   gatehouse-viewer / viewer-secret  -> groups ["viewers"]
//
// Resource indicators (resource=...), each yields a JWT access token:
//   urn:gatehouse            aud urn:gatehouse, RS256
//   urn:gatehouse:rs256      aud urn:gatehouse, RS256
//   urn:gatehouse:es256      aud urn:gatehouse, ES256
//   urn:gatehouse:eddsa      aud urn:gatehouse, EdDSA (Ed25519)
//   urn:gatehouse:short      aud urn:gatehouse, RS256, expires in 2 s
//   urn:gatehouse:future     aud urn:gatehouse, RS256, nbf = iat + 3600
//   urn:other                aud urn:other (wrong-audience case)
// Every JWT access token carries nbf (= iat unless :future); oidc-provider
// itself emits no nbf (RFC 9068 does not require one).
//
// Test-only admin endpoints (same port, /__admin/...):
//   POST /__admin/rotate[?drop_old=1]  new RSA/EC/Ed25519 keys with new kids,
//                                      placed first (used for signing); old
//                                      ones stay published unless drop_old=1
//   POST /__admin/down[?how=503|reset] JWKS and discovery fail (503, or the
//                                      TCP connection is reset)
//   POST /__admin/up                   back to normal
//   GET  /__admin/keys                 the private JWKS
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider, { errors } from 'oidc-provider';

const PORT = Number(process.env.PORT || 0);
const tls = process.env.TLS_CERT && process.env.TLS_KEY
  ? { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) }
  : null;

const GROUPS = {
  'gatehouse-admin': ['dhcp-admins'],
  'gatehouse-viewer': ['viewers'],
};

const RESOURCES = {
  'urn:gatehouse': { audience: 'urn:gatehouse', alg: 'RS256' },
  'urn:gatehouse:rs256': { audience: 'urn:gatehouse', alg: 'RS256' },
  'urn:gatehouse:es256': { audience: 'urn:gatehouse', alg: 'ES256' },
  'urn:gatehouse:eddsa': { audience: 'urn:gatehouse', alg: 'EdDSA' },
  'urn:gatehouse:short': { audience: 'urn:gatehouse', alg: 'RS256', ttl: 2 },
  'urn:gatehouse:future': { audience: 'urn:gatehouse', alg: 'RS256', nbfIn: 3600 },
  'urn:other': { audience: 'urn:other', alg: 'RS256' },
};

let generation = 0;
function newKeys() {
  generation += 1;
  const jwk = (type, opts, alg) => ({
    ...crypto.generateKeyPairSync(type, opts).privateKey.export({ format: 'jwk' }),
    kid: `${alg.toLowerCase()}-${generation}`,
    alg,
    use: 'sig',
  });
  return [
    jwk('rsa', { modulusLength: 2048 }, 'RS256'),
    jwk('ec', { namedCurve: 'P-256' }, 'ES256'),
    jwk('ed25519', {}, 'EdDSA'),
  ];
}

let keys = newKeys();
let down = null; // null | '503' | 'reset'
let issuer; // known once listening
let handler;

function writeKeys() {
  if (process.env.KEYS_FILE) {
    fs.writeFileSync(process.env.KEYS_FILE, JSON.stringify({ keys }, null, 2));
  }
}

function buildProvider() {
  const provider = new Provider(issuer, {
    jwks: { keys },
    clients: Object.keys(GROUPS).map((id) => ({
      client_id: id,
      client_secret: `${id.replace('gatehouse-', '')}-secret`,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'dhcp:read dhcp:write',
    })),
    scopes: ['dhcp:read', 'dhcp:write'],
    cookies: { keys: ['test-only-cookie-key'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:gatehouse',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, indicator) => {
          const rs = RESOURCES[indicator];
          if (!rs) throw new errors.InvalidTarget();
          return {
            scope: 'dhcp:read dhcp:write',
            audience: rs.audience,
            accessTokenFormat: 'jwt',
            ...(rs.ttl ? { accessTokenTTL: rs.ttl } : {}),
            jwt: { sign: { alg: rs.alg } },
          };
        },
      },
    },
    formats: {
      customizers: {
        jwt: (ctx, token, jwt) => {
          const rs = RESOURCES[token.resourceServer?.identifier()];
          jwt.payload.nbf = jwt.payload.iat + (rs?.nbfIn ?? 0);
        },
      },
    },
    extraTokenClaims: (ctx, token) => (
      token.kind === 'ClientCredentials' ? { groups: GROUPS[token.clientId] ?? [] } : undefined
    ),
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  return provider.callback();
}

function admin(req, res, url) {
  const send = (code, body) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  switch (`${req.method} ${url.pathname}`) {
    case 'POST /__admin/rotate': {
      const fresh = newKeys();
      keys = url.searchParams.get('drop_old') ? fresh : [...fresh, ...keys];
      handler = buildProvider();
      writeKeys();
      return send(200, { kids: keys.map((k) => k.kid) });
    }
    case 'POST /__admin/down':
      down = url.searchParams.get('how') === 'reset' ? 'reset' : '503';
      return send(200, { down });
    case 'POST /__admin/up':
      down = null;
      return send(200, { down });
    case 'GET /__admin/keys':
      return send(200, { keys });
    default:
      return send(404, { error: 'not_found' });
  }
}

function onRequest(req, res) {
  const url = new URL(req.url, issuer);
  if (url.pathname.startsWith('/__admin/')) return admin(req, res, url);
  if (down && (url.pathname === '/jwks' || url.pathname.startsWith('/.well-known/'))) {
    if (down === 'reset') return req.socket.destroy();
    res.writeHead(503, { 'content-type': 'text/plain' });
    return res.end('down\n');
  }
  return handler(req, res);
}

const server = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
server.listen(PORT, '127.0.0.1', () => {
  const { port } = server.address();
  issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  handler = buildProvider();
  writeKeys();
  console.log(JSON.stringify({ issuer, port }));
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
if (process.env.EXIT_WITH_STDIN === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
