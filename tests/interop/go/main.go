// Command interop gets access tokens from a Sigil issuer with
// golang.org/x/oauth2/clientcredentials and verifies them with go-jose
// against the issuer's JWKS, the way a Go service would.
//
// It prints one JSON line: {"tokens":N,"verified":N,"failures":N,...} and
// exits non-zero if any token failed to verify.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

type result struct {
	Tokens      int      `json:"tokens"`
	Verified    int      `json:"verified"`
	Failures    int      `json:"failures"`
	JWKSFetches int      `json:"jwksFetches"`
	Kids        []string `json:"kids"`
	Scope       string   `json:"scope"`
	Audience    []string `json:"audience"`
	Errors      []string `json:"errors,omitempty"`
}

var algorithms = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.EdDSA,
}

func fetchJWKS(client *http.Client, jwksURL string) (*jose.JSONWebKeySet, error) {
	response, err := client.Get(jwksURL)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return nil, err
	}
	if response.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS: HTTP %d", response.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, err
	}
	return &set, nil
}

func main() {
	tokenURL := flag.String("token-url", "", "token endpoint")
	jwksURL := flag.String("jwks-url", "", "JWKS URL")
	issuer := flag.String("issuer", "", "expected iss")
	clientID := flag.String("client-id", "", "client id")
	secretFile := flag.String("client-secret-file", "", "file holding the client secret")
	scopes := flag.String("scopes", "", "space-separated scopes to ask for (empty: all)")
	audience := flag.String("audience", "", "audience to ask for and expect (empty: none asked)")
	authStyle := flag.String("auth-style", "auto", "header, params or auto (x/oauth2 probes)")
	duration := flag.Duration("duration", 0, "keep requesting and verifying this long (0: one token)")
	interval := flag.Duration("interval", 100*time.Millisecond, "pause between tokens in a long run")
	jwksRefresh := flag.Duration("jwks-refresh", 0, "refresh the cached JWKS at most this often (0: fetch once)")
	flag.Parse()

	secret, err := os.ReadFile(*secretFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot read the client secret file:", err)
		os.Exit(2)
	}
	config := clientcredentials.Config{
		ClientID:       *clientID,
		ClientSecret:   strings.TrimSpace(string(secret)),
		TokenURL:       *tokenURL,
		EndpointParams: url.Values{},
	}
	if *scopes != "" {
		config.Scopes = strings.Fields(*scopes)
	}
	if *audience != "" {
		config.EndpointParams.Set("audience", *audience)
	}
	switch *authStyle {
	case "header":
		config.AuthStyle = oauth2.AuthStyleInHeader
	case "params":
		config.AuthStyle = oauth2.AuthStyleInParams
	}

	httpClient := &http.Client{Timeout: 10 * time.Second}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, httpClient)
	out := result{Kids: []string{}}
	seenKids := map[string]bool{}
	var keys *jose.JSONWebKeySet
	var fetchedAt time.Time
	deadline := time.Now().Add(*duration)
	for {
		if keys == nil || (*jwksRefresh > 0 && time.Since(fetchedAt) >= *jwksRefresh) {
			fresh, err := fetchJWKS(httpClient, *jwksURL)
			if err != nil {
				out.Errors = append(out.Errors, "jwks: "+err.Error())
				out.Failures++
			} else {
				keys, fetchedAt = fresh, time.Now()
				out.JWKSFetches++
			}
		}
		// A fresh token source each time: no token caching, a new token.
		token, err := config.Token(ctx)
		out.Tokens++
		if err != nil {
			out.Failures++
			out.Errors = append(out.Errors, "token: "+err.Error())
		} else if keys != nil {
			if err := verify(token.AccessToken, keys, *issuer, *audience, &out, seenKids); err != nil {
				out.Failures++
				out.Errors = append(out.Errors, "verify: "+err.Error())
			} else {
				out.Verified++
				if scope, ok := token.Extra("scope").(string); ok {
					out.Scope = scope
				}
			}
		}
		if len(out.Errors) > 20 {
			out.Errors = out.Errors[:20]
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(*interval)
	}
	encoded, _ := json.Marshal(out)
	fmt.Println(string(encoded))
	if out.Failures > 0 || out.Verified == 0 {
		os.Exit(1)
	}
}

func verify(raw string, keys *jose.JSONWebKeySet, issuer, audience string, out *result, seenKids map[string]bool) error {
	parsed, err := jwt.ParseSigned(raw, algorithms)
	if err != nil {
		return err
	}
	if len(parsed.Headers) != 1 {
		return fmt.Errorf("expected one signature")
	}
	header := parsed.Headers[0]
	if typ, _ := header.ExtraHeaders[jose.HeaderType].(string); typ != "at+jwt" {
		return fmt.Errorf("typ is %q, want at+jwt", typ)
	}
	matching := keys.Key(header.KeyID)
	if len(matching) == 0 {
		return fmt.Errorf("kid %s is not in the cached JWKS", header.KeyID)
	}
	var claims jwt.Claims
	var extra struct {
		Scope    string `json:"scope"`
		ClientID string `json:"client_id"`
	}
	if err := parsed.Claims(matching[0].Key, &claims, &extra); err != nil {
		return err
	}
	expected := jwt.Expected{Issuer: issuer, Time: time.Now()}
	if audience != "" {
		expected.AnyAudience = jwt.Audience{audience}
	}
	if err := claims.ValidateWithLeeway(expected, 5*time.Second); err != nil {
		return err
	}
	if claims.Subject != extra.ClientID {
		return fmt.Errorf("sub %q differs from client_id %q", claims.Subject, extra.ClientID)
	}
	if !seenKids[header.KeyID] {
		seenKids[header.KeyID] = true
		out.Kids = append(out.Kids, header.KeyID)
	}
	out.Audience = claims.Audience
	return nil
}
