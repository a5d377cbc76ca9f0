//! Making (rcgen) and reading (x509-parser) the CA and the serving
//! certificate. Keys are ECDSA P-256. Errors name the step, never the key.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::plan::{self, CaId, CaView};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{step}: {source}")]
    Rcgen {
        step: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{0} is not a valid SAN")]
    InvalidName(String),
    #[error("time out of range for a certificate")]
    Time,
    #[error("no randomness for a serial number")]
    Random,
}

fn rcgen_error(step: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { step, source }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn offset_time(t: Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|_| PkiError::Time)
}

fn before(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(d).unwrap_or(Timestamp::MIN)
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Random)?;
    // Positive, as RFC 5280 asks.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A new self-signed CA valid from `now` (backdated) for `validity`.
pub fn generate_ca(now: Timestamp, validity: Duration) -> Result<KeyedCert, PkiError> {
    let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("CA parameters"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // Unique per CA, so a bundle's certificates are told apart by name too.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("sigil-issuer-ca-{}", now.as_second()),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "sigil");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset_time(before(now, plan::backdate(validity)))?;
    params.not_after = offset_time(now.saturating_add(validity).map_err(|_| PkiError::Time)?)?;
    params.serial_number = Some(random_serial()?);
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_error("self-signing the CA"))?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by
/// `ca`, valid from `now` (backdated) until `not_after`.
pub fn issue_serving(
    ca: &KeyedCert,
    names: &[String],
    now: Timestamp,
    not_after: Timestamp,
) -> Result<KeyedCert, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(rcgen_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(rcgen_error("reading the CA certificate"))?;
    let key = KeyPair::generate().map_err(rcgen_error("generating the serving key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(rcgen_error("serving certificate parameters"))?;
    for name in names {
        params.subject_alt_names.push(san(name)?);
    }
    if let Some(first) = names.iter().find(|n| n.parse::<IpAddr>().is_err()) {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let lifetime = Duration::try_from(not_after.duration_since(now)).unwrap_or(Duration::ZERO);
    params.not_before = offset_time(before(now, plan::backdate(lifetime)))?;
    params.not_after = offset_time(not_after)?;
    params.serial_number = Some(random_serial()?);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_error("signing the serving certificate"))?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name
        .to_owned()
        .try_into()
        .map_err(|_| PkiError::InvalidName(name.to_owned()))?;
    Ok(SanType::DnsName(dns))
}

/// A certificate read from PEM.
#[derive(Clone, Debug)]
pub struct StoredCert {
    pub der: Vec<u8>,
    pub pem: String,
    pub view: CaView,
    /// DNS names and IP addresses (as text) of its SAN extension.
    pub names: BTreeSet<String>,
}

/// Every certificate of a PEM bundle; anything unreadable is skipped.
pub fn read_certs(pem: &str) -> Vec<StoredCert> {
    Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .filter_map(|p| read_der(p.contents))
        .collect()
}

fn read_der(der: Vec<u8>) -> Option<StoredCert> {
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let validity = cert.validity();
    let not_before = Timestamp::from_second(validity.not_before.timestamp()).ok()?;
    let not_after = Timestamp::from_second(validity.not_after.timestamp()).ok()?;
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    names.insert((*dns).to_owned());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let pem = pem_of(&der);
    Some(StoredCert {
        view: CaView {
            id: fingerprint(&der),
            not_before,
            not_after,
        },
        der,
        pem,
        names,
    })
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Hex SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> CaId {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `key_pem` is the private key of `cert`.
pub fn key_matches(cert: &StoredCert, key_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    X509Certificate::from_der(&cert.der)
        .is_ok_and(|(_, c)| c.public_key().subject_public_key.data.as_ref() == key.der_bytes())
}

/// Whether `issuer`'s key signed `cert`.
pub fn signed_by(cert: &StoredCert, issuer: &StoredCert) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(&cert.der),
        X509Certificate::from_der(&issuer.der),
    ) else {
        return false;
    };
    cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_certificate_from_a_stored_ca_reads_back() {
        let now = Timestamp::now();
        let day = Duration::from_secs(86_400);
        let ca = generate_ca(now, 365 * day).expect("CA");
        let other_ca = generate_ca(now, 365 * day).expect("CA");
        let names = vec![
            "sigil-issuer".to_owned(),
            "sigil-issuer.sigil-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let ca_cert = read_certs(&ca.cert_pem).pop().expect("CA reads");
        let not_after = plan::serving_not_after(now, 90 * day, ca_cert.view.not_after);
        let serving = issue_serving(&ca, &names, now, not_after).expect("serving");
        let cert = read_certs(&serving.cert_pem).pop().expect("serving reads");

        assert_eq!(cert.names, names.iter().cloned().collect());
        assert_eq!(cert.view.not_after.as_second(), not_after.as_second());
        assert_eq!(
            cert.view.not_before.as_second(),
            now.as_second() - 300,
            "backdated 5 minutes"
        );
        assert!(key_matches(&cert, &serving.key_pem));
        assert!(!key_matches(&cert, &ca.key_pem));
        assert!(!key_matches(&cert, "not a key"));
        assert!(signed_by(&cert, &ca_cert));
        let other = read_certs(&other_ca.cert_pem).pop().expect("CA reads");
        assert!(!signed_by(&cert, &other));
        assert_ne!(other.view.id, ca_cert.view.id);
        assert_eq!(cert.pem, serving.cert_pem, "PEM round-trips");

        let bundle = format!("{}{}", ca.cert_pem, other_ca.cert_pem);
        let read: Vec<_> = read_certs(&bundle).into_iter().map(|c| c.view.id).collect();
        assert_eq!(read, vec![ca_cert.view.id.clone(), other.view.id.clone()]);
        assert!(read_certs("garbage").is_empty());
        assert!(format!("{ca:?}").contains("BEGIN CERTIFICATE"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
