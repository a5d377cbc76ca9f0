// Gets access tokens from a Sigil issuer (client_secret_basic or
// client_secret_post) and verifies them with jose's createRemoteJWKSet +
// jwtVerify, checking issuer, audience and typ, as a Node service would.
//
// Usage: node verify.mjs --token-url U --jwks-url U --issuer I --client-id C
//          --client-secret-file F [--audience A] [--scope S] [--auth basic|post]
//          [--duration-ms N --interval-ms N --jwks-cache-ms N]
// Prints one JSON line {tokens, verified, failures, kids, ...}; exits 1 on
// any failure.
import { readFileSync } from 'node:fs';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}
const secret = readFileSync(args['client-secret-file'], 'utf8').trim();
const auth = args.auth ?? 'basic';
const durationMs = Number(args['duration-ms'] ?? 0);
const intervalMs = Number(args['interval-ms'] ?? 100);
// jose refreshes its cache on an unknown kid, but no more often than
// cooldownDuration; cacheMaxAge bounds how long a fetched set is used.
const cacheMs = Number(args['jwks-cache-ms'] ?? 600000);
const jwks = createRemoteJWKSet(new URL(args['jwks-url']), {
  cacheMaxAge: cacheMs,
  cooldownDuration: cacheMs,
});

async function getToken() {
  const body = new URLSearchParams({ grant_type: 'client_credentials' });
  if (args.scope) body.set('scope', args.scope);
  if (args.audience) body.set('audience', args.audience);
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (auth === 'basic') {
    const encode = (s) => encodeURIComponent(s);
    headers.authorization =
      'Basic ' + Buffer.from(`${encode(args['client-id'])}:${encode(secret)}`).toString('base64');
  } else {
    body.set('client_id', args['client-id']);
    body.set('client_secret', secret);
  }
  const response = await fetch(args['token-url'], { method: 'POST', headers, body });
  const json = await response.json();
  if (response.status !== 200) throw new Error(`token: HTTP ${response.status} ${json.error}`);
  if (response.headers.get('cache-control') !== 'no-store') throw new Error('token: no Cache-Control: no-store');
  return json;
}

const out = { tokens: 0, verified: 0, failures: 0, kids: [], errors: [] };
const deadline = Date.now() + durationMs;
for (;;) {
  out.tokens++;
  try {
    const token = await getToken();
    const { payload, protectedHeader } = await jwtVerify(token.access_token, jwks, {
      issuer: args.issuer,
      audience: args.audience,
      typ: 'at+jwt',
    });
    if (payload.sub !== args['client-id'] || payload.client_id !== args['client-id']) {
      throw new Error('sub/client_id mismatch');
    }
    if (typeof token.expires_in !== 'number' || token.token_type !== 'Bearer') {
      throw new Error('bad token response shape');
    }
    if (!out.kids.includes(protectedHeader.kid)) out.kids.push(protectedHeader.kid);
    out.scope = token.scope;
    out.audience = payload.aud;
    out.verified++;
  } catch (error) {
    out.failures++;
    if (out.errors.length < 20) out.errors.push(String(error?.code ?? '') + ' ' + String(error?.message ?? error));
  }
  if (Date.now() >= deadline) break;
  await new Promise((resolve) => setTimeout(resolve, intervalMs));
}
console.log(JSON.stringify(out));
process.exit(out.failures > 0 || out.verified === 0 ? 1 : 0);
