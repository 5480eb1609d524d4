//! TLS to PostgreSQL for `tune --storage postgres://…?sslmode=…` (rustls, as `serve` uses),
//! with libpq's modes:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | no | |
//! | `prefer` (libpq's default) | when the server offers it | not verified |
//! | `require` | always | not verified |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the host |
//!
//! `sslrootcert=FILE` (PEM) gives the trusted roots; without it libpq's
//! `~/.postgresql/root.crt` is used, and the verifying modes need one of the two.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Error;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when offered, unverified.
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, the chain verified.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

/// The TLS part of a `postgres://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode` (default `prefer`).
    pub mode: SslMode,
    /// `sslrootcert`, when given.
    pub root: Option<PathBuf>,
}

/// Splits `url` into the URL tokio-postgres reads (`sslmode` reduced to the three it knows:
/// disable, prefer, require; `sslrootcert` taken out) and the TLS settings. An unknown
/// `sslmode` is a usage error naming `shown` (the redacted URL).
pub fn split_url(url: &str, shown: &str) -> Result<(String, TlsSettings), Error> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut settings = TlsSettings {
        mode: SslMode::Prefer,
        root: None,
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                settings.mode = match value {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(Error::usage(format!(
                            "--storage {shown}: sslmode={other} is not one of disable, prefer, \
                             require, verify-ca, verify-full"
                        )))
                    }
                }
            }
            "sslrootcert" => settings.root = Some(PathBuf::from(percent_decode(value))),
            _ => kept.push(pair.to_string()),
        }
    }
    kept.push(
        match settings.mode {
            SslMode::Disable => "sslmode=disable",
            SslMode::Prefer => "sslmode=prefer",
            _ => "sslmode=require",
        }
        .to_string(),
    );
    Ok((format!("{base}?{}", kept.join("&")), settings))
}

/// `%XX` escapes of a URL parameter decoded (a path with spaces or `&`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls connector for `settings`, or `None` for `disable`.
pub fn connector(settings: &TlsSettings, shown: &str) -> Result<Option<MakeRustlsConnect>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match settings.mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => Arc::new(Unverified(provider.clone())),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = root_file(settings).ok_or_else(|| {
                Error::usage(format!(
                    "--storage {shown}: sslmode=verify-ca and verify-full need the trusted \
                     roots: sslrootcert=FILE (PEM) or ~/.postgresql/root.crt"
                ))
            })?;
            let bad = |why: String| {
                Error::usage(format!(
                    "--storage {shown}: sslrootcert {}: {why}",
                    root.display()
                ))
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(&root)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("no certificate in it".into()));
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
            if settings.mode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::usage(format!("--storage {shown}: TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// `sslrootcert`, or libpq's `~/.postgresql/root.crt` when it exists.
fn root_file(settings: &TlsSettings) -> Option<PathBuf> {
    settings.root.clone().or_else(|| {
        let home = std::env::var_os("HOME")?;
        let default = Path::new(&home).join(".postgresql/root.crt");
        default.is_file().then_some(default)
    })
}

/// `prefer` and `require`: encryption without a verified certificate (libpq's meaning); the
/// handshake's signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate is not
/// compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url() {
        let (url, s) = split_url(
            "postgres://u@db/t?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem",
            "shown",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@db/t?connect_timeout=5&sslmode=require");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root, Some(PathBuf::from("/etc/ca x.pem")));
        let (url, s) = split_url("postgres://u@db/t", "shown").unwrap();
        assert_eq!(url, "postgres://u@db/t?sslmode=prefer");
        assert_eq!((s.mode, s.root), (SslMode::Prefer, None));
        let (url, _) = split_url("postgres://u@db/t?sslmode=disable", "shown").unwrap();
        assert_eq!(url, "postgres://u@db/t?sslmode=disable");
        let err = split_url("postgres://u@db/t?sslmode=allow-all", "postgres://u@db/t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode=allow-all is not one of"), "{err}");
    }
}
