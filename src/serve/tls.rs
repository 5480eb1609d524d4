//! HTTPS for `serve --tls-cert/--tls-key` (rustls): HTTP/1.1 only (ALPN), the private key
//! refused when others may read it, and the certificate read again on SIGHUP or when either
//! file changes, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;

use crate::error::Error;

/// How often the certificate and key files are checked for a change.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// Refuses (usage, exit 2) a secret file that other users may read, naming the file and the
/// `chmod` that mends it. PostgreSQL's rule for its key: mode 0600 or less, or 0640 or less
/// when root owns the file (a Kubernetes Secret mounted with `defaultMode: 0440` and an
/// `fsGroup`).
pub fn check_private(path: &Path, flag: &str) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(path) else {
        // A missing file is reported by whoever reads it, with its own words.
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    let others = mode & 0o007 != 0;
    let group = mode & 0o070 != 0;
    let group_ok = meta.uid() == 0 && mode & 0o030 == 0;
    if others || (group && !group_ok) {
        return Err(Error::usage(format!(
            "{flag} {}: readable by other users (mode {mode:03o}); run `chmod 600 {}` \
             (or 640 with the file owned by root)",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Reads the certificate chain and key into a server configuration that offers HTTP/1.1 only.
pub async fn load(cert: &Path, key: &Path) -> Result<RustlsConfig, Error> {
    check_private(key, "--tls-key")?;
    // One crypto provider for the process (ring, as compiled in).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| bad_files(cert, key, &e))?;
    http1_only(&config);
    Ok(config)
}

fn bad_files(cert: &Path, key: &Path, e: &dyn std::fmt::Display) -> Error {
    Error::usage(format!(
        "--tls-cert {} / --tls-key {}: {e}",
        cert.display(),
        key.display()
    ))
}

/// ALPN offers only `http/1.1`: the server speaks HTTP/1 (its timeouts are HTTP/1's).
fn http1_only(config: &RustlsConfig) {
    let mut inner = (*config.get_inner()).clone();
    inner.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.reload_from_config(Arc::new(inner));
}

/// Reads the files again into `config`; on failure the old certificate stays in use.
pub async fn reload(config: &RustlsConfig, cert: &Path, key: &Path) -> Result<(), Error> {
    check_private(key, "--tls-key")?;
    config
        .reload_from_pem_file(cert, key)
        .await
        .map_err(|e| bad_files(cert, key, &e))?;
    http1_only(config);
    Ok(())
}

fn modified(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Keeps `config` in step with the files: reloads on SIGHUP and when either file's
/// modification time changes (checked every [`WATCH_INTERVAL`]).
pub fn watch(config: RustlsConfig, cert: PathBuf, key: PathBuf) {
    tokio::spawn(async move {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = modified(&[&cert, &key]);
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                _ = async {
                    match hangup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => true,
            };
            let now = modified(&[&cert, &key]);
            if !signalled && now == seen {
                continue;
            }
            seen = now;
            match reload(&config, &cert, &key).await {
                Ok(()) => tracing::warn!("serve: TLS certificate {} read again", cert.display()),
                Err(e) => tracing::error!("serve: {e}; the previous certificate stays in use"),
            }
        }
    });
}
