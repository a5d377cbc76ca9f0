//! Expiry of the webhook's certificates, read from PEM.

use jiff::Timestamp;

/// One certificate of a PEM bundle: what `status` shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Which key or field it came from (`tls.crt`, `caBundle of pods.sigil.dev`).
    pub source: String,
    pub subject: String,
    pub not_after: Timestamp,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("{source_name}: not PEM: {detail}")]
    Pem { source_name: String, detail: String },
    #[error("{source_name}: PEM block {index} is not an X.509 certificate: {detail}")]
    Certificate {
        source_name: String,
        index: usize,
        detail: String,
    },
    #[error("{source_name}: no certificate in the PEM bundle")]
    Empty { source_name: String },
}

/// Every certificate of a PEM bundle (non-certificate blocks skipped).
pub fn certificates(source: &str, pem: &[u8]) -> Result<Vec<CertInfo>, CertError> {
    let mut out = Vec::new();
    for (index, block) in x509_parser::pem::Pem::iter_from_buffer(pem).enumerate() {
        let block = block.map_err(|e| CertError::Pem {
            source_name: source.to_owned(),
            detail: e.to_string(),
        })?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block.parse_x509().map_err(|e| CertError::Certificate {
            source_name: source.to_owned(),
            index,
            detail: e.to_string(),
        })?;
        let not_after =
            Timestamp::from_second(cert.validity().not_after.timestamp()).map_err(|e| {
                CertError::Certificate {
                    source_name: source.to_owned(),
                    index,
                    detail: e.to_string(),
                }
            })?;
        out.push(CertInfo {
            source: source.to_owned(),
            subject: cert.subject().to_string(),
            not_after,
        });
    }
    if out.is_empty() {
        return Err(CertError::Empty {
            source_name: source.to_owned(),
        });
    }
    Ok(out)
}
