//! Crash-safe file writes, shared by the token agent (token and mirrored
//! credentials) and standalone mode (secrets file, key state).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `contents` to `dir/name` so that readers see the old or the new
/// file, never a partial one, also after a crash: temp file, fsync,
/// rename, fsync of the folder.
pub fn write_atomically(dir: &Path, name: &str, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let temp = dir.join(format!(".{name}.{:016x}.tmp", temp_suffix()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        // The umask may have narrowed `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, dir.join(name))?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// A random suffix so concurrent writers never share a temp file.
fn temp_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    // A failing RNG only makes the name predictable; create_new still
    // refuses to clobber an existing file.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}
