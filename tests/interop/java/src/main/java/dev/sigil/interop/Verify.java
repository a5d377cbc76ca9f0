package dev.sigil.interop;

import java.time.Instant;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.springframework.security.oauth2.core.DelegatingOAuth2TokenValidator;
import org.springframework.security.oauth2.jose.jws.SignatureAlgorithm;
import org.springframework.security.oauth2.jwt.Jwt;
import org.springframework.security.oauth2.jwt.JwtClaimNames;
import org.springframework.security.oauth2.jwt.JwtClaimValidator;
import org.springframework.security.oauth2.jwt.JwtValidators;
import org.springframework.security.oauth2.jwt.NimbusJwtDecoder;

/**
 * Decodes one access token as a Spring Security resource server configured
 * only with the issuer's JWKS URL would: {@code NimbusJwtDecoder} with its
 * defaults (among them Nimbus' JOSE header {@code typ} check) and
 * {@code JwtValidators.createDefaultWithIssuer}, plus an audience check.
 *
 * <p>Usage: {@code java -cp ... dev.sigil.interop.Verify --jwks-url U
 * --issuer I --audience A --token T [--jws-algorithm ES256]}. The builder
 * expects RS256 unless told otherwise, so a resource server of an issuer
 * signing with another algorithm names it, as Spring Boot's
 * {@code spring.security.oauth2.resourceserver.jwt.jws-algorithms} does;
 * nothing else departs from the defaults. Prints one JSON line, {@code {"ok":
 * true, "header": {...}, "claims": {...}}} or {@code {"ok": false, "error":
 * "..."}}, and exits 1 when the token is rejected (2 on bad usage).
 */
public final class Verify {
    public static void main(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) {
            args.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
        }
        for (String required : List.of("jwks-url", "issuer", "audience", "token")) {
            if (!args.containsKey(required)) {
                System.err.println("usage: Verify --jwks-url U --issuer I --audience A --token T");
                System.exit(2);
            }
        }
        String audience = args.get("audience");
        NimbusJwtDecoder.JwkSetUriJwtDecoderBuilder builder =
                NimbusJwtDecoder.withJwkSetUri(args.get("jwks-url"));
        if (args.containsKey("jws-algorithm")) {
            SignatureAlgorithm algorithm = SignatureAlgorithm.from(args.get("jws-algorithm"));
            if (algorithm == null) {
                System.err.println("unknown --jws-algorithm " + args.get("jws-algorithm"));
                System.exit(2);
            }
            builder.jwsAlgorithm(algorithm);
        }
        NimbusJwtDecoder decoder = builder.build();
        decoder.setJwtValidator(new DelegatingOAuth2TokenValidator<>(
                JwtValidators.createDefaultWithIssuer(args.get("issuer")),
                new JwtClaimValidator<List<String>>(JwtClaimNames.AUD,
                        aud -> aud != null && aud.contains(audience))));
        try {
            Jwt jwt = decoder.decode(args.get("token"));
            Map<String, Object> out = new java.util.LinkedHashMap<>();
            out.put("ok", true);
            out.put("header", jwt.getHeaders());
            out.put("claims", jwt.getClaims());
            System.out.println(json(out));
            System.exit(0);
        } catch (RuntimeException e) {
            Map<String, Object> out = new java.util.LinkedHashMap<>();
            out.put("ok", false);
            out.put("exception", e.getClass().getName());
            out.put("error", String.valueOf(e.getMessage()));
            System.out.println(json(out));
            System.exit(1);
        }
    }

    /** Just enough JSON for claims: maps, collections, numbers, booleans, instants (epoch seconds) and text. */
    static String json(Object value) {
        StringBuilder out = new StringBuilder();
        write(out, value);
        return out.toString();
    }

    private static void write(StringBuilder out, Object value) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof Map<?, ?> map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> entry : map.entrySet()) {
                if (!first) out.append(',');
                first = false;
                writeString(out, String.valueOf(entry.getKey()));
                out.append(':');
                write(out, entry.getValue());
            }
            out.append('}');
        } else if (value instanceof Collection<?> items) {
            out.append('[');
            boolean first = true;
            for (Object item : items) {
                if (!first) out.append(',');
                first = false;
                write(out, item);
            }
            out.append(']');
        } else if (value instanceof Number || value instanceof Boolean) {
            out.append(value);
        } else if (value instanceof Instant instant) {
            out.append(instant.getEpochSecond());
        } else {
            writeString(out, value.toString());
        }
    }

    private static void writeString(StringBuilder out, String text) {
        out.append('"');
        for (char c : text.toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                default -> {
                    if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
                    else out.append(c);
                }
            }
        }
        out.append('"');
    }
}
