//! Mutual TLS for the DICOM node (`--dicom-tls-client-ca FILE`): a peer must present a
//! certificate signed by that CA (in its validity period) before its A-ASSOCIATE-RQ is read,
//! and the certificate's subject Common Name can be required by `--dicom-allow AE@HOST/CN`.
//! This is node authentication as IHE ATNA asks for it; an AE title alone proves nothing.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};

use crate::error::Error;

/// The trusted client CA, loaded once at start.
#[derive(Debug, Clone)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    /// Reads the PEM certificates of `path` as the only roots client certificates may chain
    /// to; a usage error naming the file when it holds none or cannot be read.
    pub fn load(path: &Path) -> Result<ClientCa, Error> {
        let bad =
            |why: String| Error::usage(format!("--dicom-tls-client-ca {}: {why}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        use rustls::pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(e.to_string()))?;
        Ok(ClientCa { verifier })
    }

    /// A server configuration for one connection: the node's current certificate
    /// (`serving`, which a renewal replaces) and this CA's verifier, which leaves the
    /// verified client certificate's subject CN in `subject` for the access check.
    pub fn config_for(
        &self,
        serving: &ServerConfig,
        subject: Arc<Mutex<Option<String>>>,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Capturing {
            inner: self.verifier.clone(),
            subject,
        });
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(serving.cert_resolver.clone());
        Ok(Arc::new(config))
    }
}

/// A client certificate verifier that records the subject CN of the certificate it
/// accepted.
#[derive(Debug)]
struct Capturing {
    inner: Arc<dyn ClientCertVerifier>,
    subject: Arc<Mutex<Option<String>>>,
}

impl ClientCertVerifier for Capturing {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        *self.subject.lock().unwrap_or_else(|e| e.into_inner()) = common_name(end_entity);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The subject Common Name (2.5.4.3) of a DER certificate; `None` without one.
pub fn common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::oid::ObjectIdentifier;
    use x509_cert::der::Decode;
    const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let subject = &cert.tbs_certificate.subject;
    subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == CN)
        .and_then(|atv| {
            let v = &atv.value;
            v.decode_as::<Utf8StringRef>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    v.decode_as::<PrintableStringRef>()
                        .map(|s| s.as_str().to_string())
                })
                .or_else(|_| {
                    v.decode_as::<Ia5StringRef>()
                        .map(|s| s.as_str().to_string())
                })
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["ct1.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ct1.radiology.example");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Hospital");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            common_name(cert.der()).as_deref(),
            Some("ct1.radiology.example")
        );
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
