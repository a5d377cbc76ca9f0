//! Throwaway PKI for the local control plane: one CA that signs the API
//! server's serving certificate and every client certificate, and the
//! service-account token signing key. Real client-certificate authentication,
//! so RBAC is really enforced for the non-admin identities.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A PEM certificate with its PEM private key.
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_pem: String,
}

impl Pki {
    pub fn new() -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate().context("generating CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sigil-local-control-plane-ca");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = params
            .self_signed(&ca_key)
            .context("self-signing CA")?
            .pem();
        Ok(Pki {
            ca_params: params,
            ca_key,
            ca_pem,
        })
    }

    /// Serving certificate for `localhost` / `127.0.0.1`.
    pub fn serving_cert(&self, common_name: &str) -> anyhow::Result<CertPair> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// The API server's serving certificate: loopback, the node address and
    /// the `kubernetes` Service's ClusterIP and names (pods call it there).
    pub fn api_server_cert(&self) -> anyhow::Result<CertPair> {
        let mut names = vec!["localhost".to_owned(), "kubernetes".to_owned()];
        for suffix in ["default", "default.svc", "default.svc.cluster.local"] {
            names.push(format!("kubernetes.{suffix}"));
        }
        let mut params = CertificateParams::new(names)?;
        for ip in [
            Ipv4Addr::LOCALHOST,
            crate::node::NODE_IP,
            crate::node::KUBERNETES_SERVICE_IP,
        ] {
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(ip)));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Client certificate: the API server takes the user name from CN and the
    /// groups from O.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> anyhow::Result<CertPair> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> anyhow::Result<CertPair> {
        let key = KeyPair::generate().context("generating leaf key")?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).context("signing leaf")?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A key pair for signing service-account tokens: (private PEM, public PEM).
pub fn service_account_key() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate().context("generating service-account key")?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// Writes `pair` as `<stem>.crt` / `<stem>.key` in `dir`, key mode 0600.
pub fn write_pair(dir: &Path, stem: &str, pair: &CertPair) -> anyhow::Result<()> {
    write_private(&dir.join(format!("{stem}.key")), &pair.key_pem)?;
    std::fs::write(dir.join(format!("{stem}.crt")), &pair.cert_pem)
        .with_context(|| format!("writing {stem}.crt"))?;
    Ok(())
}

pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
