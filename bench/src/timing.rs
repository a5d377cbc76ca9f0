//! `sigil-bench timing`: can a caller tell *why* client authentication
//! failed from how long the answer took? (DESIGN.md §6: unknown clients,
//! wrong secrets and bad assertions must look the same.)
//!
//! A standalone issuer (router and App as `issuer --manifests` builds them,
//! the failure rate limit lifted so every request is judged on its
//! credentials) serves `POST /oauth2/token` on loopback. One keep-alive
//! connection sends, one at a time, `--samples` requests of each class in
//! one shuffled order, so drift and neighbours' noise fall on all classes
//! alike; the latency is client-observed (request written → body read).
//!
//! Each class is compared with the reference failure of the same method
//! ("wrong secret" for secrets, "bad assertion signature" for assertions)
//! by Yuen's test: Welch's t on trimmed means with winsorized variances
//! (`--trim` cut from each tail), as dudect does with |t| > 4.5 meaning
//! "distinguishable". The control (right secret) must come out
//! distinguishable, or the test had no power. Comparing across methods
//! ("|t| vs wrong secret" for an assertion class) only shows the cost of
//! the method the caller chose, which tells it nothing it did not know.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use sigil_core::keys::{ParsedKey, generate_pkcs8_der};
use sigil_crds::SigningAlgorithm;
use sigil_issuer::index::{Store, TokenTyp};
use sigil_issuer::metrics::Metrics;
use sigil_issuer::source::standalone;
use sigil_issuer::state::{App, Settings};

#[derive(clap::Args, Debug)]
pub struct TimingArgs {
    /// Requests per class.
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Seed of the shuffle.
    #[arg(long, default_value_t = 0x5161_1a7e)]
    seed: u64,
    /// Fraction trimmed from each tail before comparing means.
    #[arg(long, default_value_t = 0.1)]
    trim: f64,
    /// |t| above this means the classes are distinguishable (dudect: 4.5).
    #[arg(long, default_value_t = 4.5)]
    threshold: f64,
    /// Other OAuthClients loaded next to the measured ones.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
}

/// Client ids and secrets are of equal length across classes, so request
/// sizes do not differ.
const KNOWN_SECRET_CLIENT: &str = "sec-a.timing";
const UNKNOWN_SECRET_CLIENT: &str = "sec-b.timing";
const KNOWN_JWT_CLIENT: &str = "jwt-a.timing";
const UNKNOWN_JWT_CLIENT: &str = "jwt-b.timing";
const SECRET: &str = "Right-Secret-0123456789abcdefghijklmnopqrstu";
const WRONG_SECRET: &str = "Wrong-Secret-0123456789abcdefghijklmnopqrstu";

const WRONG_SECRET_CLASS: usize = 1;
const BAD_SIGNATURE_CLASS: usize = 3;

struct Class {
    name: &'static str,
    /// The same-method failure it must not be told apart from.
    reference: Option<usize>,
    expect_ok: bool,
    authorization: Option<String>,
    body: Bytes,
}

fn basic(id: &str, secret: &str) -> Option<String> {
    Some(format!(
        "Basic {}",
        STANDARD.encode(format!("{id}:{secret}"))
    ))
}

/// A compact ES256 JWS of `claims`, signed by `key`.
pub(crate) fn signed_jwt(
    key: &ParsedKey,
    kid: &str,
    claims: &serde_json::Value,
) -> anyhow::Result<String> {
    let header = URL_SAFE_NO_PAD
        .encode(serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"}).to_string());
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let signature = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// A client assertion (RFC 7523) from `id`, signed by `key`.
fn assertion(key: &ParsedKey, kid: &str, id: &str, audience: &str) -> anyhow::Result<String> {
    let now = sigil_issuer::http::token::unix_now();
    signed_jwt(
        key,
        kid,
        &serde_json::json!({
            "iss": id, "sub": id, "aud": audience,
            "exp": now + 3000, "iat": now, "jti": "timing-0000000000000000",
        }),
    )
}

pub(crate) fn assertion_body(assertion: &str) -> Bytes {
    Bytes::from(format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
    ))
}

pub(crate) fn es256() -> anyhow::Result<ParsedKey> {
    Ok(ParsedKey::from_pkcs8_der(
        SigningAlgorithm::ES256,
        &generate_pkcs8_der(SigningAlgorithm::ES256, 0)?,
    )?)
}

/// The issuer's App with the measured clients, the way `issuer
/// --manifests` loads them, and the request of each class.
fn issuer(
    args: &TimingArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(Arc<App>, Vec<Class>)> {
    let client_key = es256()?;
    let kid = client_key.thumbprint();
    let mut public = client_key.public_jwk(&kid);
    public
        .as_object_mut()
        .context("a JWK object")?
        .remove("use");
    let mut yaml = String::from(
        "apiVersion: sigil.dev/v1alpha1\nkind: SigningKey\nmetadata: {name: default, namespace: sigil-system}\nspec: {algorithm: ES256}\n",
    );
    let client = |name: &str, extra: &str| {
        format!(
            "---\napiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}, namespace: timing}}\nspec: {{scopes: [a], audiences: [x]{extra}}}\n"
        )
    };
    yaml.push_str(&client("sec-a", ""));
    yaml.push_str(&client(
        "jwt-a",
        &format!(", authMethods: [private_key_jwt], jwks: {{\"keys\": [{public}]}}"),
    ));
    for i in 0..args.clients {
        yaml.push_str(&client(&format!("filler-{i}"), ""));
    }
    let mut manifests = standalone::Manifests::default();
    standalone::parse_documents(Path::new("timing.yaml"), &yaml, &mut manifests)?;
    // Only the measured client's secret matters; the others need one to load.
    let secrets = manifests
        .clients
        .iter()
        .map(|c| {
            let id = c.client_id();
            let secret = if id == KNOWN_SECRET_CLIENT {
                SECRET.to_owned()
            } else {
                format!("other-secret-{id}")
            };
            (id, secret)
        })
        .collect();
    let store = Arc::new(Store::new("default"));
    standalone::load_clients(&store, &manifests.clients, &secrets);
    runtime.block_on(standalone::start_rings(
        &store,
        &manifests.signing_keys,
        "default",
        None,
    ))?;
    store.mark_synced();
    anyhow::ensure!(
        store
            .client(KNOWN_JWT_CLIENT)
            .is_some_and(|c| c.jwks.len() == 1),
        "the private_key_jwt client did not load with its key"
    );
    let settings = Settings {
        token_typ: TokenTyp::AtJwt,
        // Lifted: a 429 would end the comparison before it starts.
        failed_auth_per_minute: std::num::NonZeroU32::MAX,
        ..Settings::new(sigil_core::IssuerUrl::parse("http://127.0.0.1").expect("a valid URL"))
    };
    let app = Arc::new(App::new(store, Arc::new(Metrics::new()), &settings)?);
    // draft-ietf-oauth-rfc7523bis: an assertion's audience is the issuer.
    let audience = app.issuer.clone();
    let forger = es256()?;
    let secret_body = Bytes::from_static(b"grant_type=client_credentials");
    let classes = vec![
        Class {
            name: "unknown client id + secret",
            reference: Some(WRONG_SECRET_CLASS),
            expect_ok: false,
            authorization: basic(UNKNOWN_SECRET_CLIENT, WRONG_SECRET),
            body: secret_body.clone(),
        },
        Class {
            name: "known client, wrong secret",
            reference: None,
            expect_ok: false,
            authorization: basic(KNOWN_SECRET_CLIENT, WRONG_SECRET),
            body: secret_body.clone(),
        },
        Class {
            name: "unknown private_key_jwt client + assertion",
            reference: Some(BAD_SIGNATURE_CLASS),
            expect_ok: false,
            authorization: None,
            body: assertion_body(&assertion(&forger, &kid, UNKNOWN_JWT_CLIENT, &audience)?),
        },
        Class {
            name: "known private_key_jwt client, bad signature",
            reference: None,
            expect_ok: false,
            authorization: None,
            body: assertion_body(&assertion(&forger, &kid, KNOWN_JWT_CLIENT, &audience)?),
        },
        Class {
            name: "right secret (control)",
            reference: Some(WRONG_SECRET_CLASS),
            expect_ok: true,
            authorization: basic(KNOWN_SECRET_CLIENT, SECRET),
            body: secret_body,
        },
    ];
    Ok((app, classes))
}

/// xorshift64*: a fixed, dependency-free shuffle.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Sends `order` (class indices) one at a time over one keep-alive
/// connection; returns each class's latencies (ns) and the answers that
/// were not what the class expects.
async fn measure(
    addr: SocketAddr,
    classes: &[Class],
    order: &[usize],
) -> anyhow::Result<(Vec<Vec<f64>>, Vec<u64>)> {
    let mut sender = crate::connect(addr).await?;
    let mut latencies = vec![Vec::with_capacity(order.len() / classes.len() + 1); classes.len()];
    let mut unexpected = vec![0u64; classes.len()];
    for &index in order {
        let class = &classes[index];
        let (status, elapsed) = crate::timed_form_post(
            &mut sender,
            "/oauth2/token",
            class.authorization.as_deref(),
            &class.body,
        )
        .await?;
        latencies[index].push(elapsed.as_nanos() as f64);
        let expected = if class.expect_ok { 200 } else { 401 };
        if status.as_u16() != expected {
            unexpected[index] += 1;
        }
    }
    Ok((latencies, unexpected))
}

/// Trimmed mean and Yuen's squared standard error of a sorted sample.
fn trimmed(sorted: &[f64], trim: f64) -> (f64, f64) {
    let n = sorted.len();
    let g = ((n as f64) * trim).floor() as usize;
    let h = n - 2 * g;
    let kept = &sorted[g..n - g];
    let mean = kept.iter().sum::<f64>() / h as f64;
    let (low, high) = (sorted[g], sorted[n - g - 1]);
    let winsorized: Vec<f64> = sorted.iter().map(|v| v.clamp(low, high)).collect();
    let w_mean = winsorized.iter().sum::<f64>() / n as f64;
    let w_var = winsorized.iter().map(|v| (v - w_mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se2 = (n - 1) as f64 * w_var / (h as f64 * (h - 1) as f64);
    (mean, se2)
}

/// Yuen's t between two sorted samples.
fn yuen_t(a: &[f64], b: &[f64], trim: f64) -> f64 {
    let (mean_a, se2_a) = trimmed(a, trim);
    let (mean_b, se2_b) = trimmed(b, trim);
    let se = (se2_a + se2_b).sqrt();
    if se == 0.0 {
        return if mean_a == mean_b { 0.0 } else { f64::INFINITY };
    }
    (mean_a - mean_b) / se
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: TimingArgs) -> anyhow::Result<()> {
    if args.samples < 100 || !(0.0..0.5).contains(&args.trim) {
        bail!("--samples must be at least 100 and --trim in [0, 0.5)");
    }
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (app, classes) = issuer(&args, &client_runtime)?;
    let (server_runtime, addr) = crate::start_server(
        sigil_issuer::http::api_router(app.clone()),
        1,
        crate::ISSUER_THREADS,
    )?;

    let mut rng = Rng(args.seed | 1);
    let mut order: Vec<usize> = (0..classes.len())
        .flat_map(|class| std::iter::repeat_n(class, args.samples))
        .collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let warm_up: Vec<usize> = (0..2_000).map(|i| i % classes.len()).collect();

    println!(
        "# sigil-bench timing: {} requests per class, shuffled (seed {:#x}), one keep-alive connection on loopback, one server thread, {} other clients loaded; client-observed latency",
        args.samples, args.seed, args.clients
    );
    let started = Instant::now();
    client_runtime.block_on(measure(addr, &classes, &warm_up))?;
    let (mut latencies, unexpected) = client_runtime.block_on(measure(addr, &classes, &order))?;
    let elapsed = started.elapsed();
    server_runtime.shutdown_timeout(Duration::from_secs(1));
    for sample in &mut latencies {
        sample.sort_by(f64::total_cmp);
    }

    let trim_percent = args.trim * 100.0;
    println!(
        "# Yuen's t (Welch's t on {trim_percent:.0}%-trimmed means, winsorized variances); abs(t) > {} = distinguishable (dudect's threshold). Took {:.1} s.",
        args.threshold,
        elapsed.as_secs_f64()
    );
    println!();
    println!(
        "| class | n | median µs | p90 µs | trimmed mean µs | abs(t) vs wrong secret | abs(t) vs bad signature | verdict |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    let mut leaks = Vec::new();
    for (index, class) in classes.iter().enumerate() {
        let sample = &latencies[index];
        let t_secret = yuen_t(sample, &latencies[WRONG_SECRET_CLASS], args.trim).abs();
        let t_signature = yuen_t(sample, &latencies[BAD_SIGNATURE_CLASS], args.trim).abs();
        let verdict = match class.reference {
            None => "reference".to_owned(),
            Some(reference) => {
                let t = yuen_t(sample, &latencies[reference], args.trim).abs();
                let apart = t > args.threshold;
                let against = classes[reference].name;
                match (class.expect_ok, apart) {
                    (true, true) => "distinguishable (as a control must be)".to_owned(),
                    (true, false) => "NOT distinguishable: the test lacks power".to_owned(),
                    (false, false) => format!("indistinguishable from \"{against}\""),
                    (false, true) => {
                        leaks.push(class.name);
                        format!("LEAKS: distinguishable from \"{against}\"")
                    }
                }
            }
        };
        let show = |t: f64, same: bool| {
            if same {
                "–".to_owned()
            } else {
                format!("{t:.1}")
            }
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            class.name,
            sample.len(),
            percentile(sample, 0.5) / 1e3,
            percentile(sample, 0.9) / 1e3,
            trimmed(sample, args.trim).0 / 1e3,
            show(t_secret, index == WRONG_SECRET_CLASS),
            show(t_signature, index == BAD_SIGNATURE_CLASS),
            verdict
        );
    }
    let wrong: Vec<String> = classes
        .iter()
        .zip(&unexpected)
        .filter(|(_, count)| **count > 0)
        .map(|(class, count)| format!("{}: {count}", class.name))
        .collect();
    if !wrong.is_empty() {
        bail!(
            "answers other than the expected status (401 for failures, 200 for the control) — the comparison is void: {}",
            wrong.join(", ")
        );
    }
    println!();
    if leaks.is_empty() {
        println!("every failure class is indistinguishable from its method's reference failure");
    } else {
        println!("distinguishable failure classes: {}", leaks.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuen_t_separates_shifted_samples_and_not_equal_ones() {
        let a: Vec<f64> = (0..1000).map(|i| f64::from(i % 100)).collect();
        let mut b = a.clone();
        b.sort_by(f64::total_cmp);
        let mut sorted_a = a.clone();
        sorted_a.sort_by(f64::total_cmp);
        assert_eq!(yuen_t(&sorted_a, &b, 0.1), 0.0);
        let shifted: Vec<f64> = b.iter().map(|v| v + 10.0).collect();
        assert!(yuen_t(&sorted_a, &shifted, 0.1) < -4.5);
    }
}
