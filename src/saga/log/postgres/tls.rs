//! TLS for the log's connections: rustls (on the `ring` provider) under
//! tokio-postgres, as the connection string's `sslmode` asks.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Whether and how a [`PostgresLog`](super::PostgresLog) connection uses
/// TLS: libpq's `sslmode`, read from the connection string or set with
/// [`PostgresLogConfigBuilder::ssl_mode`](super::PostgresLogConfigBuilder::ssl_mode).
///
/// libpq's `allow` (plain first, TLS if refused) is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PostgresSslMode {
    /// `disable`: plain connections only.
    Disable,
    /// `prefer` (the default, as in libpq): TLS if the server offers it,
    /// plain otherwise; the server's certificate is not verified.
    #[default]
    Prefer,
    /// `require`: TLS or no connection. The certificate is not verified,
    /// unless root certificates are given: then, as in libpq, its chain is
    /// verified as with [`VerifyCa`](Self::VerifyCa).
    Require,
    /// `verify-ca`: TLS, and the server's certificate must chain to one of
    /// the root certificates; its name is not checked.
    VerifyCa,
    /// `verify-full`: TLS, the certificate must chain to one of the root
    /// certificates and name the host connected to (a DNS name or IP
    /// address in its subject alternative names).
    VerifyFull,
}

impl PostgresSslMode {
    /// The mode for an `sslmode` value; `None` for any other value.
    pub fn from_sslmode(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// The `sslmode` value, e.g. `"verify-full"`.
    pub fn as_sslmode(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether this mode verifies the server's certificate chain.
    pub(super) fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }

    /// tokio-postgres's mode: whether TLS is tried and required.
    pub(super) fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self {
            Self::Disable => SslMode::Disable,
            Self::Prefer => SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => SslMode::Require,
        }
    }
}

impl fmt::Display for PostgresSslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_sslmode())
    }
}

/// The certificates in a PEM text; an error says what is wrong without
/// quoting it.
pub(super) fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".into());
    }
    Ok(certificates)
}

/// The platform's trusted root certificates (`sslrootcert=system`).
pub(super) fn system_certificates() -> Result<Vec<CertificateDer<'static>>, String> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(format!(
            "is `system` but no platform root certificate was found{why}"
        ));
    }
    Ok(found.certs)
}

/// The rustls client settings for `mode` with `roots` (empty: none given);
/// `None` for [`PostgresSslMode::Disable`].
pub(super) fn client_config(
    mode: PostgresSslMode,
    roots: Vec<CertificateDer<'static>>,
) -> Result<Option<ClientConfig>, String> {
    if mode == PostgresSslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots.is_empty()) {
        (PostgresSslMode::Prefer, _) | (PostgresSslMode::Require, true) => {
            Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            })
        }
        (_, true) => return Err(format!("sslmode={mode} needs root certificates")),
        (mode, false) => {
            let mut store = RootCertStore::empty();
            let (_, unusable) = store.add_parsable_certificates(roots);
            if store.is_empty() {
                return Err(format!(
                    "holds no usable CA certificate ({unusable} could not be read)"
                ));
            }
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider)
                .build()
                .map_err(|e| e.to_string())?;
            match mode {
                PostgresSslMode::VerifyFull => chain,
                _ => Arc::new(ChainOnly { chain }),
            }
        }
    };
    Ok(Some(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// `prefer` and `require` without root certificates, as libpq: any
/// certificate is accepted, but the handshake's signatures are still
/// checked against it (the connection is encrypted, its peer unverified).
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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

/// `verify-ca`: the chain must lead to a root certificate; a certificate
/// that does not name the host is accepted.
#[derive(Debug)]
struct ChainOnly {
    chain: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the
        // chain was verified.
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
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
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sslmode_value_reads_back() {
        for mode in [
            PostgresSslMode::Disable,
            PostgresSslMode::Prefer,
            PostgresSslMode::Require,
            PostgresSslMode::VerifyCa,
            PostgresSslMode::VerifyFull,
        ] {
            assert_eq!(PostgresSslMode::from_sslmode(mode.as_sslmode()), Some(mode));
        }
        assert_eq!(PostgresSslMode::from_sslmode("allow"), None);
        assert_eq!(PostgresSslMode::from_sslmode("VERIFY-FULL"), None);
    }

    #[test]
    fn verifying_modes_need_root_certificates() {
        assert!(
            client_config(PostgresSslMode::Disable, Vec::new())
                .unwrap()
                .is_none()
        );
        assert!(
            client_config(PostgresSslMode::Require, Vec::new())
                .unwrap()
                .is_some()
        );
        for mode in [PostgresSslMode::VerifyCa, PostgresSslMode::VerifyFull] {
            assert!(client_config(mode, Vec::new()).is_err(), "{mode}");
        }
    }

    #[test]
    fn text_without_a_certificate_is_refused_without_being_quoted() {
        let error = pem_certificates(b"password=s3cret").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }
}
