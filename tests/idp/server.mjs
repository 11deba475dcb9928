// Minimal OAuth 2.0 authorization server for Cairn's integration tests, built on
// `oidc-provider`. It issues JWT access tokens via the client_credentials grant
// for exactly one confidential client and one resource server (the FHIR base URL).
//
// Environment (all required):
//   IDP_PORT           listen on 127.0.0.1:IDP_PORT; issuer is http://127.0.0.1:IDP_PORT
//                      (0 picks a free port; the READY line reports the real issuer)
//   IDP_AUDIENCE       resource indicator and `aud` of every access token
//   IDP_CLIENT_ID      client_id of the single client (client_secret_basic)
//   IDP_CLIENT_SECRET  its secret
//   IDP_SCOPES         space-separated scopes the client may be granted
//   IDP_KEYS_DIR       directory of persisted private signing keys, `<kid>.json`
//   IDP_KIDS           comma-separated kids; all are published in the JWKS, the first signs
//
// Stdout carries exactly one line once listening:
//   READY {"issuer":"…","jwks_uri":"…","token_endpoint":"…"}
// Everything else goes to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

// oidc-provider prints some notices with console.info (stdout); keep stdout for READY only.
console.log = console.error;
console.info = console.error;

// Exit cleanly on SIGTERM/SIGINT, also when it arrives during startup.
let server;
function shutdown(signal) {
  process.stderr.write(`idp: ${signal}, shutting down\n`);
  if (!server?.listening) process.exit(0);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

const { default: Provider, errors } = await import('oidc-provider');

function fail(message) {
  process.stderr.write(`idp: ${message}\n`);
  process.exit(2);
}

function env(name) {
  const value = process.env[name];
  if (value === undefined || value.trim() === '') fail(`missing required environment variable ${name}`);
  return value.trim();
}

const port = Number(env('IDP_PORT'));
if (!Number.isInteger(port) || port < 0 || port > 65535) fail('IDP_PORT must be a TCP port number');
const audience = env('IDP_AUDIENCE');
const clientId = env('IDP_CLIENT_ID');
const clientSecret = env('IDP_CLIENT_SECRET');
const scopes = [...new Set(env('IDP_SCOPES').split(/\s+/).filter(Boolean))];
const keysDir = env('IDP_KEYS_DIR');
const kids = env('IDP_KIDS').split(',').map((kid) => kid.trim()).filter(Boolean);
if (kids.length === 0) fail('IDP_KIDS must list at least one kid');
if (new Set(kids).size !== kids.length) fail('IDP_KIDS must not repeat a kid');
for (const kid of kids) {
  if (!/^[A-Za-z0-9._-]+$/.test(kid) || kid.startsWith('.')) fail(`invalid kid ${JSON.stringify(kid)}`);
}
try {
  new URL(audience); // eslint-disable-line no-new
} catch {
  fail('IDP_AUDIENCE must be an absolute URL');
}

// ---------------------------------------------------------------------------
// Signing keys: load <kid>.json or generate (RSA 2048, RS256) and persist it.
// ---------------------------------------------------------------------------
function loadOrCreateKey(kid) {
  const file = path.join(keysDir, `${kid}.json`);
  let jwk;
  if (fs.existsSync(file)) {
    jwk = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (jwk.kty !== 'RSA' || !jwk.d) fail(`${file} is not a private RSA JWK`);
  } else {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    jwk = privateKey.export({ format: 'jwk' });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify({ ...jwk, kid, alg: 'RS256', use: 'sig' }, null, 2)}\n`, { mode: 0o600 });
    fs.renameSync(tmp, file);
    process.stderr.write(`idp: generated signing key ${file}\n`);
  }
  return { ...jwk, kid, alg: 'RS256', use: 'sig' };
}

fs.mkdirSync(keysDir, { recursive: true });
const keys = kids.map(loadOrCreateKey);

// ---------------------------------------------------------------------------
// HTTP server first, so that IDP_PORT=0 can resolve to the real port.
// ---------------------------------------------------------------------------
server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const allowedScopes = new Set(scopes);
const resourceServer = {
  scope: scopes.join(' '),
  audience,
  accessTokenTTL: 300,
  accessTokenFormat: 'jwt',
  jwt: { sign: { alg: 'RS256', kid: kids[0] } },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: scopes.join(' '),
  }],
  jwks: { keys },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] }, // unused (no browser flows)
  scopes,
  ttl: { ClientCredentials: 300 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No `resource` parameter: the token is for the FHIR server anyway.
      defaultResource: (ctx, client, oneOf) => oneOf ?? audience,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) {
          throw new errors.InvalidTarget(`unknown resource indicator, expected ${audience}`);
        }
        // oidc-provider silently drops scopes it does not know; refuse them instead.
        const requested = (ctx.oidc.params.scope || '').split(' ').filter(Boolean);
        const unknown = requested.filter((scope) => !allowedScopes.has(scope));
        if (unknown.length) {
          throw new errors.InvalidScope('requested scope is not allowed', unknown.join(' '));
        }
        return resourceServer;
      },
    },
  },
});

provider.on('server_error', (ctx, err) => process.stderr.write(`idp: server_error: ${err?.stack ?? err}\n`));
provider.on('grant.error', (ctx, err) => process.stderr.write(`idp: grant.error: ${err?.message} ${err?.error_description ?? ''}\n`));

server.on('request', provider.callback());

// Read our own discovery document so the READY line is exactly what clients will see.
const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
process.stdout.write(`READY ${JSON.stringify({
  issuer: discovery.issuer,
  jwks_uri: discovery.jwks_uri,
  token_endpoint: discovery.token_endpoint,
})}\n`);
