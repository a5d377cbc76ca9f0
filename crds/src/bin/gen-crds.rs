//! Writes the CRD YAML generated from the Rust types to `crds/` and
//! `charts/sigil/crds/`. With `--check`, writes nothing and fails if the
//! committed files differ (CI runs this).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

fn main() -> anyhow::Result<ExitCode> {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("crds crate has no parent directory")?
        .to_path_buf();
    let dirs: [PathBuf; 2] = [root.join("crds"), root.join("charts/sigil/crds")];

    let mut stale = Vec::new();
    for (file, yaml) in sigil_crds::crd_manifests()? {
        for dir in &dirs {
            let path = dir.join(file);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == yaml {
                continue;
            }
            if check {
                stale.push(path);
            } else {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                std::fs::write(&path, &yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        for path in &stale {
            eprintln!("stale: {}", path.display());
        }
        eprintln!(
            "CRD YAML differs from the Rust types: run `cargo run -p sigil-crds --bin gen-crds` and commit the result"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
