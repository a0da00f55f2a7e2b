//! TLS options shared by the etcd and Consul backends: the PEM a builder is
//! given, checked when it builds, and never shown by `Debug` (the client's
//! private key is a credential).

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::error::ConfigError;

/// The TLS options of a registry builder, as given.
#[derive(Clone, Default)]
pub(super) struct TlsSettings {
    /// PEM of the CA certificates to trust instead of the system's.
    pub(super) ca_certificate: Option<Vec<u8>>,
    /// PEM of the client's certificate chain and of its private key.
    pub(super) client_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must hold, instead of the URL's
    /// host.
    pub(super) domain_name: Option<String>,
}

/// [`TlsSettings`] parsed and checked.
pub(super) struct CheckedTls {
    pub(super) ca_certificates: Option<Vec<CertificateDer<'static>>>,
    pub(super) client_identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    pub(super) domain_name: Option<String>,
}

impl TlsSettings {
    /// Whether any TLS option was given.
    pub(super) fn is_set(&self) -> bool {
        self.ca_certificate.is_some()
            || self.client_identity.is_some()
            || self.domain_name.is_some()
    }

    /// Parses the PEM and checks the domain name; the errors name the field
    /// and never quote a key.
    pub(super) fn check(&self, component: &'static str) -> Result<CheckedTls, ConfigError> {
        let ca_certificates = match &self.ca_certificate {
            None => None,
            Some(pem) => Some(certificates(component, "ca_certificate", pem)?),
        };
        let client_identity = match &self.client_identity {
            None => None,
            Some((certificate, key)) => {
                let chain = certificates(component, "client_identity", certificate)?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
                    ConfigError::new(
                        component,
                        "client_identity",
                        "the key must be one PEM private key (PKCS #8, PKCS #1 or SEC1)",
                    )
                })?;
                Some((chain, key))
            }
        };
        if let Some(name) = &self.domain_name {
            if ServerName::try_from(name.as_str()).is_err() {
                return Err(ConfigError::new(
                    component,
                    "tls_domain_name",
                    format!("must be a DNS name or an IP address, got {name:?}"),
                ));
            }
        }
        let checked = CheckedTls {
            ca_certificates,
            client_identity,
            domain_name: self.domain_name.clone(),
        };
        // Building a client configuration checks what parsing cannot: that
        // the CA certificates are usable trust anchors and that the key is
        // one rustls can sign with and belongs to the certificate.
        checked.client_config(component, RootCertStore::empty())?;
        Ok(checked)
    }
}

impl CheckedTls {
    /// A rustls client configuration (ring provider) trusting the CA
    /// certificates, or `system_roots` when none were given.
    pub(super) fn client_config(
        &self,
        component: &'static str,
        system_roots: RootCertStore,
    ) -> Result<ClientConfig, ConfigError> {
        let roots = match &self.ca_certificates {
            None => system_roots,
            Some(certificates) => {
                let mut roots = RootCertStore::empty();
                for certificate in certificates {
                    roots.add(certificate.clone()).map_err(|e| {
                        ConfigError::new(
                            component,
                            "ca_certificate",
                            format!("is not a usable CA certificate ({e})"),
                        )
                    })?;
                }
                roots
            }
        };
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| {
                    ConfigError::new(component, "ca_certificate", format!("TLS setup: {e}"))
                })?
                .with_root_certificates(roots);
        match &self.client_identity {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|_| {
                    ConfigError::new(
                        component,
                        "client_identity",
                        "the key must be a supported private key (RSA, ECDSA or Ed25519) of the certificate",
                    )
                }),
        }
    }
}

/// Every certificate in `pem`, at least one.
fn certificates(
    component: &'static str,
    field: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        // The PEM parser's error may quote a line of the input: say only
        // what was expected.
        .map_err(|_| {
            ConfigError::new(
                component,
                field,
                "must be well-formed PEM certificates (-----BEGIN CERTIFICATE-----)",
            )
        })?;
    if certificates.is_empty() {
        return Err(ConfigError::new(
            component,
            field,
            "must hold at least one PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certificates)
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field(
                "ca_certificate",
                &self.ca_certificate.as_ref().map(|_| "<PEM>"),
            )
            .field(
                "client_identity",
                &self
                    .client_identity
                    .as_ref()
                    .map(|_| "<PEM certificate, redacted key>"),
            )
            .field("domain_name", &self.domain_name)
            .finish()
    }
}
