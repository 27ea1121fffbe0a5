//! `RegistryError`: every way talking to a registry can fail, in the user's
//! terms. Each variant names the image as the user wrote it, and the message
//! says what to do where there is something to do.

use std::path::PathBuf;

use thiserror::Error;

use crate::digest::BlobDigest;

/// Why a registry operation failed.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The registry could not be reached (DNS, connect, TLS, a dropped
    /// connection before any answer).
    #[error(
        "cannot reach registry {registry} for image {image}: {reason}; check the name and the network{hint}"
    )]
    Unreachable {
        /// The image as written.
        image: String,
        /// The registry host that was dialled.
        registry: String,
        /// What the connection attempt reported.
        reason: String,
        /// A hint when the scheme may be wrong (plain HTTP vs HTTPS).
        hint: String,
    },

    /// 401/403: the registry wants credentials, or refused the ones sent.
    #[error(
        "registry {registry} refused access to image {image} (HTTP {status}) with {credentials}{detail}; log in with `docker login {registry}` (Strata reads {config_file}) or pass explicit credentials"
    )]
    Unauthorized {
        /// The image as written.
        image: String,
        /// The registry host.
        registry: String,
        /// 401 or 403.
        status: u16,
        /// Where the credentials that were sent came from, or "no credentials".
        credentials: String,
        /// The Docker config file that was consulted.
        config_file: String,
        /// Anything the registry said (a malformed challenge, a token error).
        detail: String,
    },

    /// The registry has no such repository, tag, manifest or blob.
    #[error("image {image} not found on registry {registry}: {what}")]
    NotFound {
        /// The image as written.
        image: String,
        /// The registry host.
        registry: String,
        /// What was missing (`tag bookworm`, `blob sha256:…`).
        what: String,
    },

    /// Bytes did not hash to the digest that named them.
    #[error(
        "image {image}: {what} {expected} arrived with digest {actual}; the registry served wrong or corrupt data, nothing of it was kept"
    )]
    DigestMismatch {
        /// The image as written.
        image: String,
        /// `blob`, `manifest`, `config`.
        what: &'static str,
        /// The digest asked for.
        expected: BlobDigest,
        /// The digest of what arrived.
        actual: BlobDigest,
    },

    /// A blob ended before (or ran past) the size its descriptor gives.
    #[error(
        "image {image}: {what} {digest} is {expected} bytes but the registry sent {received}{detail}; nothing of it was kept, try again"
    )]
    SizeMismatch {
        /// The image as written.
        image: String,
        /// `blob`, `manifest`, `config`.
        what: &'static str,
        /// The blob's digest.
        digest: BlobDigest,
        /// The size the descriptor gives.
        expected: u64,
        /// The bytes received before the stream ended or was cut.
        received: u64,
        /// Why the stream ended, when it broke.
        detail: String,
    },

    /// A manifest or config larger than the configured bound.
    #[error(
        "image {image}: {what} is {size} bytes, over the {limit}-byte limit for {what}s; refusing it"
    )]
    TooLarge {
        /// The image as written.
        image: String,
        /// `manifest`, `config`.
        what: &'static str,
        /// The announced or received size (at least).
        size: u64,
        /// The configured limit.
        limit: u64,
    },

    /// A media type this client does not handle where it appeared.
    #[error(
        "image {image}: unexpected media type `{media_type}` for the {what}; expected one of: {expected}"
    )]
    UnexpectedMediaType {
        /// The image as written.
        image: String,
        /// `manifest`, `config`, `layer sha256:…`.
        what: String,
        /// The media type found.
        media_type: String,
        /// What would have been accepted.
        expected: String,
    },

    /// A Docker schema 1 manifest: deprecated and unverifiable.
    #[error(
        "image {image} has a Docker schema 1 manifest, which is deprecated and not supported; push it again with a current docker or skopeo (schema 2 or OCI)"
    )]
    Schema1 {
        /// The image as written.
        image: String,
    },

    /// An image index without the wanted platform.
    #[error("image {image} has no {wanted} variant; it has: {available}")]
    PlatformMissing {
        /// The image as written.
        image: String,
        /// The wanted platform.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },

    /// A single-platform image for another platform than the wanted one.
    #[error("image {image} is for {found}, not {wanted}")]
    WrongPlatform {
        /// The image as written.
        image: String,
        /// The wanted platform.
        wanted: String,
        /// The platform its config names.
        found: String,
    },

    /// A manifest, index or config that does not parse or is inconsistent.
    #[error("image {image}: malformed {what}: {reason}")]
    Malformed {
        /// The image as written.
        image: String,
        /// `manifest`, `image index`, `config`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The registry answered in a way the protocol does not allow.
    #[error("registry {registry} answered unexpectedly for image {image}: {reason}")]
    Protocol {
        /// The image as written.
        image: String,
        /// The registry host.
        registry: String,
        /// What was unexpected.
        reason: String,
    },

    /// `~/.docker/config.json` (or the named one) could not be used.
    #[error("cannot read registry credentials from {}: {reason}", .path.display())]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A credential helper named by the Docker config failed.
    #[error(
        "credential helper docker-credential-{helper} (named in {config_file} for {registry}) failed: {reason}"
    )]
    CredentialHelper {
        /// The helper's name (`pass`, `ecr-login`, …).
        helper: String,
        /// The registry asked about.
        registry: String,
        /// The config file naming the helper.
        config_file: String,
        /// What went wrong, and what to do.
        reason: String,
    },

    /// Writing verified bytes where the caller asked failed.
    #[error("image {image}: cannot write blob {digest} to {target}: {source}")]
    Write {
        /// The image as written.
        image: String,
        /// The blob.
        digest: BlobDigest,
        /// Where it was going.
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// Something the caller passed in is unusable (an image to push whose
    /// manifest does not match its blobs, an invalid registry name).
    #[error("{0}")]
    InvalidInput(String),
}
