// Verifying a Sigil access token in Node with jose: the checks a resource
// server needs (docs/verify/README.md). tests/tests/verify_recipes.rs runs
// this file against a real issuer.
//
// Usage: node verify.mjs --jwks-url U --issuer I --audience A --token T
// Prints {"ok":true,"claims":{...}} or {"ok":false,"error":"..."}.
import { createRemoteJWKSet, jwtVerify } from 'jose';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}

// One key set per process: jose caches it and fetches it again when a token
// names a kid it does not hold (Sigil rotates keys, publishing the next one
// before it signs with it).
const jwks = createRemoteJWKSet(new URL(args['jwks-url']));

try {
  const { payload } = await jwtVerify(args.token, jwks, {
    issuer: args.issuer, // exactly the issuer URL
    audience: args.audience, // this API's audience must be in aud
    typ: 'at+jwt', // RFC 9068 (use 'JWT' if your OAuthResource asks for it)
    algorithms: ['ES256', 'ES384', 'RS256', 'PS256', 'EdDSA'], // never HS* or none
    clockTolerance: 30,
  });
  // payload.scope (space-separated) and payload.client_id are for the API's
  // own checks, e.g. that this route's scope was granted.
  console.log(JSON.stringify({ ok: true, claims: payload }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: `${error.code ?? ''} ${error.message}` }));
  process.exit(1);
}
