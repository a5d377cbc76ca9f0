//! Reading client credentials from a folder as kubelet mounts a Secret (or,
//! for a secretless client, a projected volume of its ConfigMap and the
//! pod's ServiceAccount token: the same layout, with `service_account_token`
//! where a Secret has `client_secret`), and writing files atomically.
//!
//! Kubelet's layout: the data lives in a hidden `..<timestamp>` folder,
//! `..data` is a symlink to it, and each key is a symlink `key ->
//! ..data/key`. An update writes a new `..<timestamp>` folder and swaps
//! `..data` with one rename, so reading every file through one resolved
//! `..data` target gives a consistent set. A plain folder of files (no
//! `..data`) works too.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sigil_crds::secret_keys;

/// The CA file the operator adds next to the credentials (the issuer's CA
/// bundle, when the issuer URL is served with a certificate from it).
pub const CA_FILE: &str = secret_keys::CA_CRT;
/// The file the agent writes the access token to.
pub const TOKEN_FILE: &str = "token";
const DATA_LINK: &str = "..data";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the credentials folder {dir}: {source}")]
    Folder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the credentials folder {dir} has no {key} file")]
    Missing { dir: PathBuf, key: &'static str },
    #[error("{path} is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error("the credentials in {dir} kept changing while being read")]
    Unstable { dir: PathBuf },
    #[error(
        "the credentials folder {dir} has neither a client_secret nor a service_account_token file"
    )]
    NoProof { dir: PathBuf },
}

/// One file of the credentials folder, to mirror into the output folder.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialFile {
    pub name: String,
    pub contents: Vec<u8>,
    /// Permission bits, kept when mirroring (kubelet applies the volume's
    /// `defaultMode`).
    pub mode: u32,
}

impl std::fmt::Debug for CredentialFile {
    // Never the contents: one of them is the client secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialFile")
            .field("name", &self.name)
            .field("len", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// How the client proves itself.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret` (client_secret_basic).
    Secret(String),
    /// `service_account_token` (federated_jwt): read again before every
    /// request from `path`, since kubelet rotates it in place.
    ServiceAccountToken { path: PathBuf },
}

/// What the agent needs to ask for a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    pub auth: ClientAuth,
    pub token_url: String,
    /// PEM CA bundle for the token URL, if one is given.
    pub ca_pem: Option<Vec<u8>>,
    /// Every file of the folder, in name order.
    pub files: Vec<CredentialFile>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field(
                "auth",
                &match &self.auth {
                    ClientAuth::Secret(_) => "client_secret <redacted>".to_owned(),
                    ClientAuth::ServiceAccountToken { path } => {
                        format!("service_account_token at {}", path.display())
                    }
                },
            )
            .field("token_url", &self.token_url)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("files", &self.files)
            .finish()
    }
}

/// What identifies one version of the folder's contents: the `..data`
/// target under kubelet, else each file's name, size and mtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Data(PathBuf),
    Files(Vec<(String, u64, Option<SystemTime>)>),
}

/// The current version of `dir`, cheap enough to poll every few seconds.
pub fn version(dir: &Path) -> Result<Version, CredentialsError> {
    match fs::read_link(dir.join(DATA_LINK)) {
        Ok(target) => Ok(Version::Data(target)),
        Err(_) => {
            let mut files = Vec::new();
            for (name, path) in visible_entries(dir)? {
                if let Ok(meta) = fs::metadata(&path) {
                    files.push((name, meta.len(), meta.modified().ok()));
                }
            }
            Ok(Version::Files(files))
        }
    }
}

/// Reads the credentials and the version they belong to. `ca_file`
/// overrides `ca.crt` in the folder.
pub fn read(
    dir: &Path,
    ca_file: Option<&Path>,
) -> Result<(Credentials, Version), CredentialsError> {
    for _ in 0..5 {
        let before = version(dir)?;
        // Under kubelet, read the data folder itself: one consistent set.
        let data_dir = match &before {
            Version::Data(target) => dir.join(target),
            Version::Files(_) => dir.to_owned(),
        };
        let files = read_files(&data_dir)?;
        if version(dir)? != before {
            continue;
        }
        let credentials = parse(dir, files, ca_file)?;
        return Ok((credentials, before));
    }
    Err(CredentialsError::Unstable {
        dir: dir.to_owned(),
    })
}

fn visible_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, CredentialsError> {
    let folder_error = |source| CredentialsError::Folder {
        dir: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(folder_error)? {
        let entry = entry.map_err(folder_error)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // Kubelet's `..data` and `..<timestamp>`, and our temp files.
        if name.starts_with('.') {
            continue;
        }
        out.push((name, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn read_files(dir: &Path) -> Result<Vec<CredentialFile>, CredentialsError> {
    let mut files = Vec::new();
    for (name, path) in visible_entries(dir)? {
        // Follows the per-key symlinks; skips folders.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let contents = fs::read(&path).map_err(|source| CredentialsError::File {
            path: path.clone(),
            source,
        })?;
        files.push(CredentialFile {
            name,
            contents,
            mode: meta.permissions().mode() & 0o777,
        });
    }
    Ok(files)
}

fn parse(
    dir: &Path,
    files: Vec<CredentialFile>,
    ca_file: Option<&Path>,
) -> Result<Credentials, CredentialsError> {
    let text = |key: &'static str| -> Result<String, CredentialsError> {
        let file =
            files
                .iter()
                .find(|f| f.name == key)
                .ok_or_else(|| CredentialsError::Missing {
                    dir: dir.to_owned(),
                    key,
                })?;
        let value = std::str::from_utf8(&file.contents).map_err(|_| CredentialsError::NotText {
            path: dir.join(key),
        })?;
        let value = value.trim();
        if value.is_empty() {
            return Err(CredentialsError::Missing {
                dir: dir.to_owned(),
                key,
            });
        }
        Ok(value.to_owned())
    };
    let ca_pem = match ca_file {
        Some(path) => Some(fs::read(path).map_err(|source| CredentialsError::File {
            path: path.to_owned(),
            source,
        })?),
        None => files
            .iter()
            .find(|f| f.name == CA_FILE)
            .map(|f| f.contents.clone()),
    };
    let has = |key: &str| files.iter().any(|f| f.name == key);
    let auth = if has(secret_keys::CLIENT_SECRET) {
        ClientAuth::Secret(text(secret_keys::CLIENT_SECRET)?)
    } else if has(secret_keys::SERVICE_ACCOUNT_TOKEN) {
        // Through the folder's own link, not this version's data folder:
        // the next read sees kubelet's next token.
        ClientAuth::ServiceAccountToken {
            path: dir.join(secret_keys::SERVICE_ACCOUNT_TOKEN),
        }
    } else {
        return Err(CredentialsError::NoProof {
            dir: dir.to_owned(),
        });
    };
    Ok(Credentials {
        client_id: text(secret_keys::CLIENT_ID)?,
        auth,
        token_url: text(secret_keys::TOKEN_URL)?,
        ca_pem,
        files,
    })
}

/// The ServiceAccount token at `path` as it is now (kubelet replaces it at
/// 80% of its lifetime), trimmed; never logged.
pub fn service_account_token(path: &Path) -> Result<String, CredentialsError> {
    let bytes = fs::read(path).map_err(|source| CredentialsError::File {
        path: path.to_owned(),
        source,
    })?;
    let token = String::from_utf8(bytes).map_err(|_| CredentialsError::NotText {
        path: path.to_owned(),
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(CredentialsError::Missing {
            dir: path.parent().map(Path::to_owned).unwrap_or_default(),
            key: secret_keys::SERVICE_ACCOUNT_TOKEN,
        });
    }
    Ok(token.to_owned())
}

pub use sigil_core::fs::write_atomically;

/// Mirrors the credential files into `output_dir` (except a key named like
/// the token file) and removes the ones `previous` wrote that are gone.
/// Returns the names now mirrored.
pub fn mirror(
    output_dir: &Path,
    files: &[CredentialFile],
    previous: &[String],
) -> std::io::Result<Vec<String>> {
    let mut written = Vec::new();
    for file in files.iter().filter(|f| f.name != TOKEN_FILE) {
        write_atomically(output_dir, &file.name, &file.contents, file.mode)?;
        written.push(file.name.clone());
    }
    for gone in previous.iter().filter(|name| !written.contains(name)) {
        match fs::remove_file(output_dir.join(gone)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Writes a kubelet-style Secret volume version `stamp` and points
    /// `..data` (and the key links) at it, swapping like kubelet does.
    fn kubelet_write(dir: &Path, stamp: &str, data: &[(&str, &str)]) {
        let versioned = dir.join(format!("..{stamp}"));
        fs::create_dir(&versioned).unwrap();
        for (key, value) in data {
            fs::write(versioned.join(key), value).unwrap();
            fs::set_permissions(versioned.join(key), fs::Permissions::from_mode(0o644)).unwrap();
            let link = dir.join(key);
            if fs::symlink_metadata(&link).is_err() {
                symlink(format!("{DATA_LINK}/{key}"), &link).unwrap();
            }
        }
        let temp = dir.join("..data_tmp");
        symlink(format!("..{stamp}"), &temp).unwrap();
        fs::rename(&temp, dir.join(DATA_LINK)).unwrap();
    }

    fn secret(secret: &str) -> Vec<(&'static str, String)> {
        vec![
            ("client_id", "web.tasks".to_owned()),
            ("client_secret", secret.to_owned()),
            (
                "token_url",
                "https://sigil.example/oauth2/token\n".to_owned(),
            ),
            ("scope", "a b".to_owned()),
        ]
    }

    fn as_refs<'a>(data: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        data.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn reads_through_kubelets_data_link_and_sees_a_swap() {
        let dir = tempfile::tempdir().unwrap();
        kubelet_write(dir.path(), "2026_11_22_08_00_00.1", &as_refs(&secret("s1")));
        let (creds, v1) = read(dir.path(), None).unwrap();
        assert_eq!(creds.client_id, "web.tasks");
        assert!(creds.auth == ClientAuth::Secret("s1".into()));
        assert_eq!(creds.token_url, "https://sigil.example/oauth2/token");
        assert_eq!(creds.ca_pem, None);
        let names: Vec<&str> = creds.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["client_id", "client_secret", "scope", "token_url"]);
        assert!(!format!("{creds:?}").contains("s1"), "{creds:?}");

        kubelet_write(dir.path(), "2026_11_22_08_01_00.2", &as_refs(&secret("s2")));
        assert_ne!(version(dir.path()).unwrap(), v1);
        let (creds, _) = read(dir.path(), None).unwrap();
        assert!(creds.auth == ClientAuth::Secret("s2".into()));
    }

    #[test]
    fn plain_folders_and_ca_files_work_and_missing_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (key, value) in secret("s1") {
            fs::write(dir.path().join(key), value).unwrap();
        }
        fs::write(dir.path().join("ca.crt"), "PEM").unwrap();
        let (creds, v1) = read(dir.path(), None).unwrap();
        assert_eq!(creds.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert!(matches!(v1, Version::Files(_)));
        let other_ca = dir.path().join("other.pem");
        fs::write(&other_ca, "OTHER").unwrap();
        let (creds, _) = read(dir.path(), Some(&other_ca)).unwrap();
        assert_eq!(creds.ca_pem.as_deref(), Some(&b"OTHER"[..]));

        fs::remove_file(dir.path().join("client_secret")).unwrap();
        assert_ne!(version(dir.path()).unwrap(), v1);
        let error = read(dir.path(), None).unwrap_err().to_string();
        assert!(
            error.contains("neither a client_secret nor a service_account_token file"),
            "{error}"
        );
    }

    #[test]
    fn a_projected_service_account_token_is_the_proof_and_is_read_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let data = [
            ("client_id", "worker.tasks"),
            ("token_url", "https://sigil.example/oauth2/token"),
            ("ca.crt", "PEM"),
            ("service_account_token", "sa-token-1\n"),
        ];
        kubelet_write(dir.path(), "2026_11_22_08_00_00.1", &data);
        let (creds, v1) = read(dir.path(), None).unwrap();
        let ClientAuth::ServiceAccountToken { path } = &creds.auth else {
            panic!("not a ServiceAccount token: {creds:?}");
        };
        assert_eq!(*path, dir.path().join("service_account_token"));
        assert_eq!(creds.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(service_account_token(path).unwrap(), "sa-token-1");
        let shown = format!("{creds:?}");
        assert!(!shown.contains("sa-token"), "{shown}");

        // Kubelet's rotation: the same path now reads the new token.
        let rotated = [
            data[0],
            data[1],
            data[2],
            ("service_account_token", "sa-token-2"),
        ];
        kubelet_write(dir.path(), "2026_11_22_08_08_00.2", &rotated);
        assert_ne!(version(dir.path()).unwrap(), v1);
        assert_eq!(service_account_token(path).unwrap(), "sa-token-2");

        // A client secret wins when both are there (a Secret never has a
        // ServiceAccount token).
        fs::write(dir.path().join("..data/client_secret"), "s").unwrap();
        symlink("..data/client_secret", dir.path().join("client_secret")).unwrap();
        let (creds, _) = read(dir.path(), None).unwrap();
        assert!(creds.auth == ClientAuth::Secret("s".into()));
    }

    #[test]
    fn writes_atomically_with_the_mode_and_mirrors_removals() {
        let out = tempfile::tempdir().unwrap();
        write_atomically(out.path(), "token", b"t1", 0o640).unwrap();
        write_atomically(out.path(), "token", b"t2", 0o640).unwrap();
        assert_eq!(fs::read(out.path().join("token")).unwrap(), b"t2");
        let mode = fs::metadata(out.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);

        let file = |name: &str, contents: &[u8]| CredentialFile {
            name: name.into(),
            contents: contents.to_vec(),
            mode: 0o644,
        };
        let first = mirror(
            out.path(),
            &[
                file("client_id", b"a"),
                file("scope", b"x"),
                file("token", b"evil"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(first, ["client_id", "scope"]);
        let second = mirror(out.path(), &[file("client_id", b"b")], &first).unwrap();
        assert_eq!(second, ["client_id"]);
        let mut names: Vec<String> = fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        // No temp files left; the token was never overwritten by a key.
        assert_eq!(names, ["client_id", "token"]);
        assert_eq!(fs::read(out.path().join("token")).unwrap(), b"t2");
    }
}
