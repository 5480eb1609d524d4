//! Atomic file writes: write a sibling temporary file, then rename, so that a run killed at any
//! moment never leaves a half-written file behind. Every file xray writes goes through
//! [`write_with`] (directly or through [`write_atomic`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// xray's cache folder: `$XRAY_CACHE_DIR`, else `~/.cache/xray` (none without a home).
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XRAY_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/xray"))
}

/// `path` with `suffix` appended to its file name (`a.csv` + `.json` = `a.csv.json`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The temporary sibling used while writing `path`.
pub fn temp_sibling(path: &Path) -> PathBuf {
    with_suffix(path, &format!(".{}.tmp", std::process::id()))
}

/// Replaces `path` atomically with what `write` puts into the temporary path it is given.
/// The temporary name ends in `.tmp.<extension of path>`, for writers (tch, image, plotters)
/// that pick the format from the extension. A failed write leaves `path` as it was.
pub fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = match path.extension() {
        Some(ext) => temp_sibling(path).with_extension(format!("tmp.{}", ext.to_string_lossy())),
        None => temp_sibling(path),
    };
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        std::fs::write(tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Writes `bytes` to `path` atomically, readable and writable by its owner only (0600): for
/// files that hold patient data.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))
    })
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// The sha256 of a byte string, as 64 lower-case hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

/// The sha256 of a file's content, as 64 lower-case hex digits, read in 64 KiB pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
