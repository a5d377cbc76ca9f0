"""Verifying a Sigil access token in Python with PyJWT: the checks a resource
server needs (docs/verify/README.md). tests/tests/verify_recipes.rs runs
this file against a real issuer.

Usage: python verify.py --jwks-url U --issuer I --audience A --token T
Prints {"ok": true, "claims": {...}} or {"ok": false, "error": "..."}.
"""

import argparse
import json
import sys

import jwt

# Only the asymmetric algorithms Sigil signs with: never HS* or none.
ALGORITHMS = ["ES256", "ES384", "RS256", "PS256", "EdDSA"]


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--jwks-url", "--issuer", "--audience", "--token"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()

    # One client per process: it caches the key set and fetches it again
    # when a token names a kid it does not hold (keys rotate).
    jwks = jwt.PyJWKClient(args.jwks_url, cache_keys=True, timeout=5)
    try:
        # RFC 9068: access tokens are typed at+jwt (unless the API's
        # OAuthResource asks for typ JWT; then check that instead).
        if jwt.get_unverified_header(args.token).get("typ") != "at+jwt":
            raise jwt.InvalidTokenError("typ is not at+jwt")
        key = jwks.get_signing_key_from_jwt(args.token)
        claims = jwt.decode(
            args.token,
            key,
            algorithms=ALGORITHMS,
            issuer=args.issuer,  # exactly the issuer URL
            audience=args.audience,  # this API's audience must be in aud
            leeway=30,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as error:
        print(json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"}))
        return 1
    # claims["scope"] (space-separated) and claims["client_id"] are for the
    # API's own checks, e.g. that this route's scope was granted.
    print(json.dumps({"ok": True, "claims": claims}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
