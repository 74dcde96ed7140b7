//! The one place trust roots for the upstream are made: the webpki roots plus extra ones (a
//! private CA, a TLS-inspecting egress proxy), for the HTTP client and the Live WebSocket.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Error;

/// The webpki roots plus the extra ones, DER certificates or PEM bundles.
pub(crate) fn root_store(
    extra: &[Vec<u8>],
    extra_pem: &[Vec<u8>],
) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let invalid = || Error::config("an extra root certificate is not a valid certificate");
    for der in extra {
        roots
            .add(CertificateDer::from(der.as_slice()).into_owned())
            .map_err(|_| invalid())?;
    }
    for pem in extra_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::config("an extra root certificate bundle is not valid PEM"))?;
        if certs.is_empty() {
            return Err(Error::config(
                "an extra root certificate bundle holds no certificate",
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|_| invalid())?;
        }
    }
    Ok(roots)
}

/// rustls on `roots`, with ring as an explicit provider: another crate in the tree enabling
/// aws-lc-rs must not make the process-default choice ambiguous.
pub(crate) fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, Error> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|_| Error::config("TLS provider setup failed"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
