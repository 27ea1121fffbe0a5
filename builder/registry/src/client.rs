//! `RegistryClient`: one per build, holding the options, one oci-client
//! session per registry host (its token cache and scheme), and the plain
//! HTTP client behind bounded manifest reads.
//!
//! oci-client does the protocol: the anonymous or credentialed bearer-token
//! flow, blob streaming, blob existence, mounts, uploads and manifest pushes.
//! Two things are done beside it, each small: manifests are fetched with a
//! size bound (oci-client reads a whole body into memory, whatever its
//! size), and its errors are translated into [`RegistryError`]s that name
//! the image and say what to do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};

use crate::credentials::{self, ChosenCredential};
use crate::digest::BlobDigest;
use crate::endpoint::Endpoint;
use crate::error::RegistryError;
use crate::manifest::ACCEPTED_MANIFEST_TYPES;
use crate::options::RegistryOptions;

/// The most of a registry's error body quoted in a message.
const MAX_QUOTED_BYTES: usize = 300;

/// A client for OCI Distribution registries. Cheap to share behind `&`;
/// sessions (and their tokens) are kept per registry host.
pub struct RegistryClient {
    pub(crate) options: RegistryOptions,
    http: reqwest::Client,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("options", &self.options)
            .finish()
    }
}

/// One registry host: its oci-client (token cache, scheme) and credentials.
pub(crate) struct Session {
    pub oci: oci_client::Client,
    pub auth: RegistryAuth,
    pub credential: ChosenCredential,
}

/// A manifest as the registry sent it, bounded and not yet verified.
pub(crate) struct FetchedManifest {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub digest_header: Option<String>,
}

impl RegistryClient {
    /// A client with `options`. Fails only if the TLS stack cannot start.
    pub fn new(options: RegistryOptions) -> Result<RegistryClient, RegistryError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                RegistryError::InvalidInput(format!("cannot start the HTTP client: {e}"))
            })?;
        Ok(RegistryClient {
            options,
            http,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The session for `endpoint`'s host, made on first use (credentials
    /// are looked up then: reading the Docker config, maybe running a
    /// credential helper).
    pub(crate) async fn session(&self, endpoint: &Endpoint) -> Result<Arc<Session>, RegistryError> {
        if let Some(session) = self.lock_sessions().get(&endpoint.host) {
            return Ok(Arc::clone(session));
        }
        let options = self.options.clone();
        let registry = endpoint.registry.clone();
        let credential =
            tokio::task::spawn_blocking(move || credentials::credentials_for(&options, &registry))
                .await
                .map_err(|e| {
                    RegistryError::InvalidInput(format!("credential lookup panicked: {e}"))
                })??;
        let auth = match &credential.credential {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let protocol = if endpoint.scheme == "http" {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let oci = oci_client::Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(self.options.connect_timeout),
            user_agent: concat!("strata/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        });
        let session = Arc::new(Session {
            oci,
            auth,
            credential,
        });
        self.lock_sessions()
            .entry(endpoint.host.clone())
            .or_insert_with(|| Arc::clone(&session));
        Ok(session)
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (one insert), so a poisoned lock is still usable.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs the registry's auth flow for `operation` on `reference` (a
    /// bearer token, anonymous or with credentials; or Basic), leaving the
    /// token in the session's cache, and returns the `Authorization` value
    /// for requests made beside oci-client.
    pub(crate) async fn authorize(
        &self,
        endpoint: &Endpoint,
        session: &Session,
        reference: &Reference,
        operation: RegistryOperation,
    ) -> Result<Option<String>, RegistryError> {
        let token = session
            .oci
            .auth(reference, &session.auth, operation)
            .await
            .map_err(|e| self.translate(endpoint, session, e, "the registry's auth flow"))?;
        Ok(match (token, &session.credential.credential) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(c)) => {
                use base64::Engine as _;
                let pair = format!("{}:{}", c.username, c.password);
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None) => None,
        })
    }

    /// GETs a manifest, refusing more than `limit` bytes (announced or
    /// sent). The body is not verified here: the caller knows what digest
    /// to expect.
    pub(crate) async fn get_manifest(
        &self,
        endpoint: &Endpoint,
        session: &Session,
        authorization: Option<&str>,
        tag_or_digest: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let limit = self.options.max_manifest_bytes;
        let mut request = self
            .http
            .get(endpoint.manifest_url(tag_or_digest))
            .header(ACCEPT, ACCEPTED_MANIFEST_TYPES.join(", "));
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| unreachable(endpoint, &e))?;
        let status = response.status();
        if !status.is_success() {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| quote(v.as_bytes()));
            let body = read_bounded_quietly(&mut response).await;
            return Err(self.status_error(
                endpoint,
                session,
                status.as_u16(),
                challenge,
                &body,
                &format!("manifest {tag_or_digest}"),
            ));
        }
        if let Some(length) = response.content_length().filter(|&n| n > limit) {
            return Err(RegistryError::TooLarge {
                image: endpoint.image.clone(),
                what: "manifest",
                size: length,
                limit,
            });
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(CONTENT_TYPE.as_str());
        let digest_header = header("docker-content-digest");
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| RegistryError::Protocol {
                image: endpoint.image.clone(),
                registry: endpoint.host.clone(),
                reason: format!(
                    "the manifest {tag_or_digest} broke off: {}",
                    error_chain(&e)
                ),
            })?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(RegistryError::TooLarge {
                    image: endpoint.image.clone(),
                    what: "manifest",
                    size: (body.len() + chunk.len()) as u64,
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(FetchedManifest {
            body,
            content_type,
            digest_header,
        })
    }

    /// The error for an HTTP status other than success.
    pub(crate) fn status_error(
        &self,
        endpoint: &Endpoint,
        session: &Session,
        status: u16,
        challenge: Option<String>,
        body: &[u8],
        what: &str,
    ) -> RegistryError {
        match status {
            401 | 403 => self.unauthorized(
                endpoint,
                session,
                status,
                challenge
                    .map(|c| format!(" (its challenge was `{c}`)"))
                    .unwrap_or_default(),
            ),
            404 => RegistryError::NotFound {
                image: endpoint.image.clone(),
                registry: endpoint.host.clone(),
                what: format!("no {what} in repository {}", endpoint.repository),
            },
            _ => RegistryError::Protocol {
                image: endpoint.image.clone(),
                registry: endpoint.host.clone(),
                reason: format!("HTTP {status} for the {what}: {}", quote(body)),
            },
        }
    }

    fn unauthorized(
        &self,
        endpoint: &Endpoint,
        session: &Session,
        status: u16,
        detail: String,
    ) -> RegistryError {
        RegistryError::Unauthorized {
            image: endpoint.image.clone(),
            registry: endpoint.registry.clone(),
            status,
            credentials: session.credential.origin.clone(),
            config_file: credentials::docker_config_path(&self.options)
                .display()
                .to_string(),
            detail,
        }
    }

    /// Translates an oci-client error about `what` into the user's terms.
    pub(crate) fn translate(
        &self,
        endpoint: &Endpoint,
        session: &Session,
        error: OciDistributionError,
        what: &str,
    ) -> RegistryError {
        let protocol = |reason: String| RegistryError::Protocol {
            image: endpoint.image.clone(),
            registry: endpoint.host.clone(),
            reason,
        };
        match error {
            OciDistributionError::RequestError(e) => {
                if e.is_connect() || e.is_timeout() {
                    unreachable(endpoint, &e)
                } else {
                    protocol(format!("{what} failed: {}", error_chain(&e)))
                }
            }
            OciDistributionError::UnauthorizedError { .. } => {
                self.unauthorized(endpoint, session, 401, String::new())
            }
            OciDistributionError::AuthenticationFailure(reason) => self.unauthorized(
                endpoint,
                session,
                401,
                format!(" (its token service said: {})", quote(reason.as_bytes())),
            ),
            OciDistributionError::RegistryTokenDecodeError(reason) => self.unauthorized(
                endpoint,
                session,
                401,
                format!(
                    " (its token service's answer is not a token: {})",
                    quote(reason.as_bytes())
                ),
            ),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let said = quote(envelope.to_string().as_bytes());
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Denied | OciErrorCode::Unauthorized))
                {
                    self.unauthorized(endpoint, session, 403, format!(" ({said})"))
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::BlobUnknown
                            | OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    RegistryError::NotFound {
                        image: endpoint.image.clone(),
                        registry: endpoint.host.clone(),
                        what: format!("{what}: {said}"),
                    }
                } else {
                    protocol(format!("{what}: {said}"))
                }
            }
            OciDistributionError::ServerError { code, message, .. } => {
                self.status_error(endpoint, session, code, None, message.as_bytes(), what)
            }
            other => protocol(format!("{what}: {}", quote(other.to_string().as_bytes()))),
        }
    }
}

/// The error for a request that got no answer.
pub(crate) fn unreachable(endpoint: &Endpoint, error: &reqwest::Error) -> RegistryError {
    let hint = if endpoint.host == crate::endpoint::DOCKER_HUB_HOST {
        "; where Docker Hub is out of reach, name a mirror (`--registry-mirror HOST`) or a \
         registry you can reach (`FROM HOST[:PORT]/REPO:TAG`)"
            .to_owned()
    } else if endpoint.scheme == "https" {
        format!(
            "; if {} speaks plain HTTP, list it as an insecure registry (`--insecure-registry {}`)",
            endpoint.host, endpoint.host
        )
    } else {
        String::new()
    };
    RegistryError::Unreachable {
        image: endpoint.image.clone(),
        registry: endpoint.host.clone(),
        reason: error_chain(error),
        hint,
    }
}

/// An error and its causes on one line (reqwest's own text is only the
/// outermost layer: "error sending request").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Bytes a registry sent, fit to quote in a message: lossy UTF-8, control
/// characters escaped, at most [`MAX_QUOTED_BYTES`].
pub(crate) fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_QUOTED_BYTES)]);
    let mut quoted: String = text.trim().chars().flat_map(char::escape_debug).collect();
    if bytes.len() > MAX_QUOTED_BYTES {
        quoted.push('…');
    }
    quoted
}

/// Up to [`MAX_QUOTED_BYTES`] of an error response's body, for the message.
async fn read_bounded_quietly(response: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_QUOTED_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body
}

/// Checks that `body` hashes to `expected`.
pub(crate) fn verify_digest(
    endpoint: &Endpoint,
    what: &'static str,
    body: &[u8],
    expected: &BlobDigest,
) -> Result<(), RegistryError> {
    let actual = BlobDigest::of(body);
    if &actual == expected {
        Ok(())
    } else {
        Err(RegistryError::DigestMismatch {
            image: endpoint.image.clone(),
            what,
            expected: expected.clone(),
            actual,
        })
    }
}

/// rustls needs one process-wide crypto provider; reqwest is built without
/// one so that ring (no C toolchain beyond its own, no OpenSSL) is it.
pub(crate) fn install_crypto_provider() {
    // Err means a provider is already installed (by us or by the program):
    // either way there is one.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
