// Validates one Sigil access token as a resource server using oauth4webapi
// would: the issuer's discovery document (discoveryRequest +
// processDiscoveryResponse), then validateJwtAccessToken on a request
// carrying the token as a Bearer credential, which requires RFC 9068's
// `typ: at+jwt` and checks issuer, audience and signature (JWKS from the
// discovery document's jwks_uri).
//
// Usage: node validate-at.mjs --issuer I --audience A --token T
// Prints one JSON line, {ok: true, header, claims} or {ok: false, code,
// error}; exits 1 when the token is rejected. The tests' issuer is plain
// http on loopback, hence allowInsecureRequests.
import * as oauth from 'oauth4webapi';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}
for (const required of ['issuer', 'audience', 'token']) {
  if (!args[required]) {
    console.error('usage: node validate-at.mjs --issuer I --audience A --token T');
    process.exit(2);
  }
}
const insecure = { [oauth.allowInsecureRequests]: true };
const issuer = new URL(args.issuer);

let out;
try {
  const as = await oauth
    .discoveryRequest(issuer, insecure)
    .then((response) => oauth.processDiscoveryResponse(issuer, response));
  const request = new Request('http://127.0.0.1/api', {
    headers: { authorization: `Bearer ${args.token}` },
  });
  const claims = await oauth.validateJwtAccessToken(as, request, args.audience, insecure);
  const header = JSON.parse(Buffer.from(args.token.split('.')[0], 'base64url').toString());
  out = { ok: true, header, claims };
} catch (error) {
  out = { ok: false, code: String(error?.code ?? ''), error: String(error?.message ?? error) };
}
console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
