//! Pushing an image: its blobs (skipped when the registry has them, mounted
//! from another repository of the same registry where it allows, uploaded
//! otherwise), its config, then its manifest under the tag — in that order,
//! so a tag never names a manifest whose blobs are missing.
//!
//! The bytes pushed are checked against the manifest before anything is
//! sent: a layer file whose size differs from its descriptor, or a config
//! whose digest is not the manifest's, is refused here rather than by the
//! registry half-way through.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::stream;
use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciImageManifest;
use reqwest::header::HeaderValue;
use strata_dockerfile::ImageRef;
use tokio::io::AsyncReadExt as _;

use crate::client::{RegistryClient, Session, verify_digest};
use crate::digest::BlobDigest;
use crate::endpoint::Endpoint;
use crate::error::RegistryError;
use crate::manifest::{self, Descriptor};
use crate::options::RegistryOptions;

/// Bytes read from a layer file per upload chunk.
const UPLOAD_CHUNK_BYTES: usize = 4 << 20;

/// An image to push: the exact manifest and config bytes, and where each
/// layer blob's bytes are.
#[derive(Debug, Clone)]
pub struct ImageToPush {
    /// The manifest, byte for byte as it will be stored.
    pub manifest: Vec<u8>,
    /// Its media type (OCI image manifest or Docker schema 2).
    pub manifest_media_type: String,
    /// The config JSON, byte for byte.
    pub config: Vec<u8>,
    /// The layer blobs, in the manifest's order.
    pub layers: Vec<LayerToPush>,
}

/// One layer blob to push.
#[derive(Debug, Clone)]
pub struct LayerToPush {
    /// Its descriptor, as in the manifest.
    pub descriptor: Descriptor,
    /// The file holding the blob's bytes (compressed as the media type
    /// says); `None` for a blob the caller learned the registry already
    /// holds ([`RegistryClient::missing_blobs`]): pushing fails if it no
    /// longer does.
    pub path: Option<PathBuf>,
    /// Another repository on the same registry known to hold this blob
    /// (the base image's), to mount it from instead of uploading.
    pub mount_from: Option<ImageRef>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The pushed manifest's digest: `REPO@DIGEST` names it.
    pub manifest_digest: BlobDigest,
    /// Blobs uploaded (layers and config).
    pub uploaded: Vec<BlobDigest>,
    /// Blobs the registry already had in the target repository.
    pub already_present: Vec<BlobDigest>,
    /// Blobs mounted from another repository.
    pub mounted: Vec<BlobDigest>,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

impl RegistryClient {
    /// Pushes `image` to `target` (`HOST[:PORT]/REPO[:TAG]`; the tag
    /// defaults to `latest`).
    pub async fn push_image(
        &self,
        target: &ImageRef,
        image: &ImageToPush,
    ) -> Result<PushReport, RegistryError> {
        if target.digest().is_some() {
            return Err(RegistryError::InvalidInput(format!(
                "cannot push to {target}: a digest names content and cannot be assigned; give a tag"
            )));
        }
        let endpoint = push_endpoint(target, &self.options)?;
        let config_descriptor = check_image(&endpoint, image)?;
        let session = self.session(&endpoint).await?;
        let tag = target.tag_or_default();
        let reference = endpoint.reference(tag);
        self.authorize(&endpoint, &session, &reference, RegistryOperation::Push)
            .await?;

        let mut report = PushReport {
            manifest_digest: BlobDigest::of(&image.manifest),
            uploaded: Vec::new(),
            already_present: Vec::new(),
            mounted: Vec::new(),
            bytes_uploaded: 0,
        };
        for layer in &image.layers {
            self.push_layer(&endpoint, &session, layer, &mut report)
                .await?;
        }
        if self
            .blob_exists(&endpoint, &session, &config_descriptor.digest)
            .await?
        {
            report
                .already_present
                .push(config_descriptor.digest.clone());
        } else {
            let config_reference = endpoint.reference(tag);
            session
                .oci
                .push_blob(
                    &config_reference,
                    image.config.clone(),
                    &config_descriptor.digest.to_string(),
                )
                .await
                .map_err(|e| self.translate(&endpoint, &session, e, "upload of the config"))?;
            report.bytes_uploaded += image.config.len() as u64;
            report.uploaded.push(config_descriptor.digest);
        }
        let content_type = HeaderValue::from_str(&image.manifest_media_type).map_err(|_| {
            RegistryError::InvalidInput(format!(
                "`{}` is not a media type",
                image.manifest_media_type
            ))
        })?;
        session
            .oci
            .push_manifest_raw(&reference, image.manifest.clone(), content_type)
            .await
            .map_err(|e| {
                self.translate(
                    &endpoint,
                    &session,
                    e,
                    &format!("push of the manifest as tag {tag}"),
                )
            })?;
        Ok(report)
    }

    /// Which of `blobs` the repository of `target` lacks: a caller that
    /// must fetch a blob before it can push it fetches only these.
    pub async fn missing_blobs(
        &self,
        target: &ImageRef,
        blobs: &[BlobDigest],
    ) -> Result<Vec<BlobDigest>, RegistryError> {
        let endpoint = push_endpoint(target, &self.options)?;
        let session = self.session(&endpoint).await?;
        let reference = endpoint.reference(target.tag_or_default());
        self.authorize(&endpoint, &session, &reference, RegistryOperation::Push)
            .await?;
        let mut missing = Vec::new();
        for digest in blobs {
            if !self.blob_exists(&endpoint, &session, digest).await? {
                missing.push(digest.clone());
            }
        }
        Ok(missing)
    }

    async fn push_layer(
        &self,
        endpoint: &Endpoint,
        session: &Session,
        layer: &LayerToPush,
        report: &mut PushReport,
    ) -> Result<(), RegistryError> {
        let digest = &layer.descriptor.digest;
        if self.blob_exists(endpoint, session, digest).await? {
            report.already_present.push(digest.clone());
            return Ok(());
        }
        let reference = endpoint.reference(&digest.to_string());
        if let Some(source) = &layer.mount_from
            && source.registry() == endpoint.registry
            && source.repository() != endpoint.repository
        {
            let source_reference = Endpoint::candidates(source, &self.options)
                .pop()
                .map(|e| e.reference(&digest.to_string()));
            if let Some(source_reference) = source_reference {
                // A registry that will not mount answers 202 and opens an
                // upload instead; oci-client reports that as an error, and
                // the blob is uploaded below.
                match session
                    .oci
                    .mount_blob(&reference, &source_reference, &digest.to_string())
                    .await
                {
                    Ok(()) => {
                        report.mounted.push(digest.clone());
                        return Ok(());
                    }
                    Err(e) => tracing::debug!(%digest, error = %e, "mount refused; uploading"),
                }
            }
        }
        let Some(path) = &layer.path else {
            return Err(RegistryError::InvalidInput(format!(
                "cannot push {}: layer {digest} is not on the registry and no file holds it",
                endpoint.image
            )));
        };
        let write_error = |source: std::io::Error| RegistryError::Write {
            image: endpoint.image.clone(),
            digest: digest.clone(),
            target: format!("the upload (reading {})", path.display()),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(write_error)?;
        let size = file.metadata().await.map_err(write_error)?.len();
        if size != layer.descriptor.size {
            return Err(RegistryError::InvalidInput(format!(
                "cannot push {}: layer file {} is {size} bytes but its descriptor says {}",
                endpoint.image,
                path.display(),
                layer.descriptor.size
            )));
        }
        let chunks = stream::try_unfold(file, read_upload_chunk);
        session
            .oci
            .push_blob_stream(&reference, chunks, &digest.to_string(), Some(size))
            .await
            .map_err(|e| {
                self.translate(endpoint, session, e, &format!("upload of layer {digest}"))
            })?;
        report.bytes_uploaded += size;
        report.uploaded.push(digest.clone());
        Ok(())
    }

    async fn blob_exists(
        &self,
        endpoint: &Endpoint,
        session: &Session,
        digest: &BlobDigest,
    ) -> Result<bool, RegistryError> {
        let reference = endpoint.reference(&digest.to_string());
        session
            .oci
            .blob_exists(&reference, &digest.to_string())
            .await
            .map_err(|e| {
                self.translate(
                    endpoint,
                    session,
                    e,
                    &format!("existence check of blob {digest}"),
                )
            })
    }
}

/// Where `target` is pushed: the registry itself, never a mirror.
fn push_endpoint(target: &ImageRef, options: &RegistryOptions) -> Result<Endpoint, RegistryError> {
    Endpoint::candidates(target, options)
        .pop()
        .ok_or_else(|| RegistryError::InvalidInput(format!("no registry to push {target} to")))
}

/// The next chunk of a layer file being uploaded, or `None` at its end.
async fn read_upload_chunk(
    mut file: tokio::fs::File,
) -> Result<Option<(Bytes, tokio::fs::File)>, OciDistributionError> {
    let mut buffer = vec![0; UPLOAD_CHUNK_BYTES];
    let mut filled = 0;
    while filled < buffer.len() {
        let n = file.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if filled == 0 {
        return Ok(None);
    }
    buffer.truncate(filled);
    Ok(Some((Bytes::from(buffer), file)))
}

/// Checks the manifest against the config and layers given with it, and
/// returns the config's descriptor.
fn check_image(endpoint: &Endpoint, image: &ImageToPush) -> Result<Descriptor, RegistryError> {
    let name = &endpoint.image;
    if image.manifest_media_type != manifest::OCI_MANIFEST
        && image.manifest_media_type != manifest::DOCKER_MANIFEST
    {
        return Err(RegistryError::InvalidInput(format!(
            "cannot push {name}: `{}` is not an image manifest media type ({} or {})",
            image.manifest_media_type,
            manifest::OCI_MANIFEST,
            manifest::DOCKER_MANIFEST
        )));
    }
    let parsed: OciImageManifest = serde_json::from_slice(&image.manifest).map_err(|e| {
        RegistryError::InvalidInput(format!(
            "cannot push {name}: its manifest does not parse: {e}"
        ))
    })?;
    let (config, layers) = manifest::image_descriptors(name, &parsed)?;
    verify_digest(endpoint, "config", &image.config, &config.digest)?;
    if config.size != image.config.len() as u64 {
        return Err(RegistryError::InvalidInput(format!(
            "cannot push {name}: its config is {} bytes but the manifest says {}",
            image.config.len(),
            config.size
        )));
    }
    let listed: Vec<&Descriptor> = layers.iter().map(|(d, _)| d).collect();
    let given: Vec<&Descriptor> = image.layers.iter().map(|l| &l.descriptor).collect();
    if listed != given {
        return Err(RegistryError::InvalidInput(format!(
            "cannot push {name}: the layers given are not the manifest's layers (in order)"
        )));
    }
    Ok(config)
}
