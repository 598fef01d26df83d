//! TLS for `tls://` scheduler addresses, with the settings Dask's
//! `distributed.security.Security` takes.
//!
//! Dask checks a peer's certificate against the cluster's CA but not its
//! host name (its contexts set `check_hostname = False`: clusters hand out
//! one certificate to every node). This client does the same, and presents
//! its own certificate, which Dask's servers require.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use super::error::ProtocolError;

/// How to reach a Dask cluster over TLS (`tls://` addresses), named as in
/// Python's `distributed.security.Security`.
///
/// ```
/// use flowrun_dask::protocol::Security;
/// let security = Security::new()
///     .tls_ca_file("ca.pem")
///     .tls_client_cert("client.pem")
///     .tls_client_key("client-key.pem");
/// # let _ = security;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Security {
    /// The CA certificates (PEM) the scheduler's certificate must chain to.
    pub tls_ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), possibly with its key in the same
    /// file.
    pub tls_client_cert: Option<PathBuf>,
    /// This client's private key (PEM), when not in `tls_client_cert`.
    pub tls_client_key: Option<PathBuf>,
}

impl Security {
    /// No TLS settings: enough for `tcp://` addresses only.
    pub fn new() -> Security {
        Security::default()
    }

    flowrun_core::__setters! {
        /// Sets [`tls_ca_file`](Self::tls_ca_file).
        pub fn tls_ca_file(path: impl Into<PathBuf>) => tls_ca_file = Some(path.into());

        /// Sets [`tls_client_cert`](Self::tls_client_cert).
        pub fn tls_client_cert(path: impl Into<PathBuf>) => tls_client_cert = Some(path.into());

        /// Sets [`tls_client_key`](Self::tls_client_key).
        pub fn tls_client_key(path: impl Into<PathBuf>) => tls_client_key = Some(path.into());
    }

    /// The connector for `address`, a `tls://` address; errors name it.
    pub(crate) fn connector(&self, address: &str) -> Result<TlsConnector, ProtocolError> {
        let fail = |reason: String| ProtocolError::connect(address, reason);
        let ca = self.tls_ca_file.as_deref().ok_or_else(|| {
            fail("a tls:// address needs Security::tls_ca_file (the cluster's CA)".into())
        })?;
        let cert = self.tls_client_cert.as_deref().ok_or_else(|| {
            fail("a tls:// address needs Security::tls_client_cert (Dask requires one)".into())
        })?;
        let mut roots = RootCertStore::empty();
        for der in read_certs(ca).map_err(fail)? {
            roots
                .add(der)
                .map_err(|e| fail(format!("the CA file {}: {e}", ca.display())))?;
        }
        let chain = read_certs(cert).map_err(fail)?;
        let key_file = self.tls_client_key.as_deref().unwrap_or(cert);
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| fail(format!("no private key in {}: {e}", key_file.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| fail(format!("the CA file {}: {e}", ca.display())))?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| fail(format!("the client certificate {}: {e}", cert.display())))?;
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// The server name sent in the handshake: the address's host.
pub(crate) fn server_name(host: &str) -> ServerName<'static> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("dask".to_owned()).expect("a valid DNS name"))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The signature checks of a [`ServerCertVerifier`] that wraps another in
/// field 0, passed on to it unchanged.
macro_rules! delegate_signature_checks {
    ($($method:ident),*) => {$(
        fn $method(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.$method(message, cert, dss)
        }
    )*};
}

/// Checks the chain against the CA as WebPKI does, but accepts any host
/// name, as Dask does.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    delegate_signature_checks!(verify_tls12_signature, verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
