// Verifying a Sigil access token in Go, with go-jose v4: the checks a
// resource server needs (docs/verify/README.md). The test
// tests/tests/verify_recipes.rs runs this file against a real issuer.
//
// Usage: verify -jwks-url U -issuer I -audience A -token T
// Prints {"ok":true,"claims":{...}} or {"ok":false,"error":"..."}.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Only the asymmetric algorithms Sigil signs with: never "none" or HS*.
var algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.PS256, jose.EdDSA}

// fetchJWKS reads the issuer's key set. A service caches it and fetches it
// again when a token names a kid it does not hold (keys rotate).
func fetchJWKS(url string) (*jose.JSONWebKeySet, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	response, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS: HTTP %d", response.StatusCode)
	}
	var set jose.JSONWebKeySet
	return &set, json.NewDecoder(response.Body).Decode(&set)
}

func verify(token string, keys *jose.JSONWebKeySet, issuer, audience string) (map[string]any, error) {
	parsed, err := jwt.ParseSigned(token, algorithms)
	if err != nil {
		return nil, err
	}
	header := parsed.Headers[0]
	// RFC 9068: access tokens are typed at+jwt (unless the API's
	// OAuthResource asks for typ JWT; then check that instead).
	if header.ExtraHeaders["typ"] != "at+jwt" {
		return nil, errors.New("typ is not at+jwt")
	}
	matching := keys.Key(header.KeyID)
	if len(matching) == 0 {
		return nil, fmt.Errorf("unknown kid %q: fetch the JWKS again", header.KeyID)
	}
	// all keeps client_id, scope and the rest for the API's own checks
	// (e.g. that scope holds the scope this route needs).
	var registered jwt.Claims
	var all map[string]any
	if err := parsed.Claims(matching[0].Key, &registered, &all); err != nil {
		return nil, err
	}
	// Issuer exactly, your audience among aud, exp/nbf with a little leeway.
	expected := jwt.Expected{Issuer: issuer, AnyAudience: jwt.Audience{audience}, Time: time.Now()}
	if err := registered.ValidateWithLeeway(expected, 30*time.Second); err != nil {
		return nil, err
	}
	return all, nil
}

func main() {
	jwksURL := flag.String("jwks-url", "", "the issuer's JWKS URL (jwks_uri in its discovery document)")
	issuer := flag.String("issuer", "", "the issuer URL tokens must carry as iss")
	audience := flag.String("audience", "", "this API's audience")
	token := flag.String("token", "", "the access token")
	flag.Parse()

	report := map[string]any{"ok": false}
	keys, err := fetchJWKS(*jwksURL)
	if err == nil {
		var claims map[string]any
		if claims, err = verify(*token, keys, *issuer, *audience); err == nil {
			report = map[string]any{"ok": true, "claims": claims}
		}
	}
	if err != nil {
		report["error"] = err.Error()
	}
	line, _ := json.Marshal(report)
	fmt.Println(string(line))
	if err != nil {
		os.Exit(1)
	}
}
