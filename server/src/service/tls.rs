//! TLS for the server: a certificate chain and key from PEM files, made
//! into an acceptor the listener runs on each accepted socket.
//!
//! Why the listener does the handshake and not tonic: the accept loop
//! holds a connection permit and a handshake deadline for every socket
//! (`listener.rs`, `connection.rs`). A handshake done there is bounded by
//! the same permit and the same deadline, so a client that opens TCP and
//! never sends a ClientHello — or sends half of one — is cut like one that
//! never sends the HTTP/2 preface.
//!
//! rustls over ring: no OpenSSL, no C toolchain beyond ring's own. ALPN
//! offers `h2` only: gRPC needs HTTP/2, and tonic's client insists on it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server's TLS identity, ready to accept connections.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {problem}")]
    Certificate { path: PathBuf, problem: String },
    #[error("TLS key {path}: {problem}")]
    Key { path: PathBuf, problem: String },
    #[error("TLS certificate {cert} and key {key} do not make a server identity: {problem}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
}

impl ServerTls {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| TlsError::Certificate {
                path: cert.to_owned(),
                problem: e.to_string(),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Certificate {
                path: cert.to_owned(),
                problem: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Certificate {
                path: cert.to_owned(),
                problem: "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
            });
        }
        let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.to_owned(),
            problem: format!("{e} (expected a PEM private key)"),
        })?;
        let identity = |problem: String| TlsError::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| identity(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| identity(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
