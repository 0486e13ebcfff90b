//! TLS towards a remote LXD: our client certificate, and a server certificate that must be
//! byte-for-byte the pinned one. LXD's server certificate is self-signed and names no
//! host, so neither web PKI nor host name checks apply; pinning is what LXD's own client
//! does after the first "accept this fingerprint?" question.
//!
//! The configs carry an explicit aws-lc-rs provider: the library works whether or not
//! `main` installed a process-wide default.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::error::LxdError;

/// Builds the client config for an HTTPS endpoint from PEM files.
pub(crate) fn client_config(
    client_cert: &Path,
    client_key: &Path,
    server_cert: &Path,
) -> Result<Arc<ClientConfig>, LxdError> {
    let pinned = read_certs(server_cert, "server certificate")?
        .into_iter()
        .next()
        .ok_or_else(|| LxdError::Config {
            reason: format!("no certificate in {}", server_cert.display()),
        })?;
    let chain = read_certs(client_cert, "client certificate")?;
    if chain.is_empty() {
        return Err(LxdError::Config {
            reason: format!("no certificate in {}", client_cert.display()),
        });
    }
    let key = PrivateKeyDer::from_pem_file(client_key).map_err(|e| LxdError::Config {
        reason: format!("cannot read the client key {}: {e}", client_key.display()),
    })?;
    pinned_client_config(pinned, chain, key)
}

/// The same from certificates already in memory.
pub(crate) fn pinned_client_config(
    pinned: CertificateDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, LxdError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinnedServerCert {
        pinned,
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LxdError::Config {
            reason: format!("TLS setup: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(client_chain, client_key)
        .map_err(|e| LxdError::Config {
            reason: format!("the client certificate and key do not fit together: {e}"),
        })?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, LxdError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| LxdError::Config {
        reason: format!("cannot read the {what} {}: {e}", path.display()),
    })?;
    iter.collect::<Result<Vec<_>, _>>()
        .map_err(|e| LxdError::Config {
            reason: format!("invalid PEM in the {what} {}: {e}", path.display()),
        })
}

/// Accepts exactly one server certificate. The handshake signature is still verified
/// against that certificate's key, so a server that merely replays the certificate
/// without its private key fails.
#[derive(Debug)]
struct PinnedServerCert {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is deliberately not checked: LXD's certificate carries none that
        // matches its address. Identity is the certificate itself.
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NotPinned)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a handshake was refused, in words an operator can act on.
#[derive(Debug)]
struct NotPinned;

impl std::fmt::Display for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server's certificate is not the pinned one (--lxd-server-cert)")
    }
}

impl std::error::Error for NotPinned {}

/// If `e` (or a cause of it) is a refused server certificate, says so plainly; rustls's
/// own text for it is a `Debug` dump.
pub(crate) fn certificate_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        // io::Error hides what it wraps from `source()` (and may wrap another io::Error).
        let mut inner = err;
        while let Some(wrapped) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = wrapped;
        }
        let inner = inner.downcast_ref::<rustls::Error>();
        if let Some(rustls::Error::InvalidCertificate(cert_error)) = inner {
            let why = match cert_error {
                CertificateError::Other(other) if other.0.is::<NotPinned>() => {
                    NotPinned.to_string()
                }
                other => format!("{other:?}"),
            };
            return Some(format!("TLS handshake refused: {why}"));
        }
        current = err.source();
    }
    None
}
