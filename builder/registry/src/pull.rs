//! Pulling: a reference resolved to a pinned manifest digest with its
//! verified config and layer descriptors, and blobs streamed with their
//! size and digest checked as they pass.
//!
//! A blob stream ends cleanly only after its last byte verified: on a wrong
//! digest, a short or long body or a broken connection its last item is an
//! error, so a consumer that forwards bytes as they come (into the cache's
//! chunker, into a file) learns in-band that what it got is no good.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use oci_client::RegistryOperation;
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::manifest::OciDescriptor;
use sha2::{Digest as _, Sha256};
use strata_dockerfile::ImageRef;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::client::{RegistryClient, error_chain, verify_digest};
use crate::digest::BlobDigest;
use crate::endpoint::Endpoint;
use crate::error::RegistryError;
use crate::manifest::{self, Descriptor, Layer, ManifestKind};

/// An image resolved on a registry: everything the builder needs to pin it
/// and fetch its layers.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The image as the user wrote it.
    pub reference: ImageRef,
    /// The platform manifest's digest: pin this (step keys, provenance);
    /// `REPO@DIGEST` names exactly this image forever.
    pub manifest_digest: BlobDigest,
    /// The index's digest, when the reference named an index.
    pub index_digest: Option<BlobDigest>,
    /// The platform manifest as the registry holds it (verified).
    pub manifest: Vec<u8>,
    /// Its media type (OCI or Docker schema 2).
    pub manifest_media_type: String,
    /// The config blob's descriptor.
    pub config_descriptor: Descriptor,
    /// The config JSON (verified against its digest).
    pub config: Vec<u8>,
    /// The layers, base first, each with its `diff_id` from the config.
    pub layers: Vec<Layer>,
    /// Where it was found (a mirror, or the registry).
    pub(crate) endpoint: Endpoint,
}

impl ResolvedImage {
    /// `REGISTRY/REPOSITORY@sha256:…`: the pinned name of this image.
    pub fn pinned_name(&self) -> String {
        format!(
            "{}/{}@{}",
            self.endpoint.registry, self.endpoint.repository, self.manifest_digest
        )
    }

    /// The host the image was fetched from (a mirror, or the registry).
    pub fn fetched_from(&self) -> &str {
        &self.endpoint.host
    }
}

impl RegistryClient {
    /// Resolves `image` (tag or digest) to a platform manifest, its verified
    /// config and its layers. docker.io images try the configured mirror
    /// first and fall back to Docker Hub when it fails, as Docker does.
    pub async fn resolve(&self, image: &ImageRef) -> Result<ResolvedImage, RegistryError> {
        let candidates = Endpoint::candidates(image, &self.options);
        let last = candidates.len().saturating_sub(1);
        let mut result = Err(RegistryError::InvalidInput(format!(
            "no registry to ask for {image}"
        )));
        for (i, endpoint) in candidates.into_iter().enumerate() {
            result = self.resolve_at(image, endpoint).await;
            match &result {
                Err(e @ (RegistryError::Unreachable { .. } | RegistryError::NotFound { .. }))
                    if i < last =>
                {
                    tracing::warn!(image = %image, error = %e, "mirror failed, asking the registry itself");
                }
                _ => break,
            }
        }
        result
    }

    async fn resolve_at(
        &self,
        image: &ImageRef,
        endpoint: Endpoint,
    ) -> Result<ResolvedImage, RegistryError> {
        let name = endpoint.image.clone();
        let tag_or_digest = image.digest().unwrap_or(image.tag_or_default()).to_owned();
        let session = self.session(&endpoint).await?;
        let reference = endpoint.reference(&tag_or_digest);
        let authorization = self
            .authorize(&endpoint, &session, &reference, RegistryOperation::Pull)
            .await?;

        let fetched = self
            .get_manifest(
                &endpoint,
                &session,
                authorization.as_deref(),
                &tag_or_digest,
            )
            .await?;
        let top_digest = match image.digest() {
            Some(pinned) => {
                let pinned = BlobDigest::parse(pinned).map_err(RegistryError::InvalidInput)?;
                verify_digest(&endpoint, "manifest", &fetched.body, &pinned)?;
                pinned
            }
            None => {
                let actual = BlobDigest::of(&fetched.body);
                if let Some(header) = &fetched.digest_header
                    && header.starts_with("sha256:")
                    && *header != actual.to_string()
                {
                    return Err(RegistryError::DigestMismatch {
                        image: name,
                        what: "manifest",
                        expected: BlobDigest::parse(header).map_err(|reason| {
                            RegistryError::Protocol {
                                image: endpoint.image.clone(),
                                registry: endpoint.host.clone(),
                                reason: format!(
                                    "its Docker-Content-Digest header is invalid: {reason}"
                                ),
                            }
                        })?,
                        actual,
                    });
                }
                actual
            }
        };

        let (manifest_body, manifest_type, manifest_digest, index_digest, image_manifest) =
            match manifest::parse_manifest(&name, &fetched.body, fetched.content_type.as_deref())? {
                ManifestKind::Image(m) => {
                    let media_type = m
                        .media_type
                        .clone()
                        .or(fetched.content_type.clone())
                        .unwrap_or_else(|| manifest::OCI_MANIFEST.to_owned());
                    (fetched.body, media_type, top_digest, None, *m)
                }
                ManifestKind::Index(index) => {
                    let entry = manifest::select_platform(&name, &index, &self.options.platform)?;
                    if entry.size > self.options.max_manifest_bytes {
                        return Err(RegistryError::TooLarge {
                            image: name,
                            what: "manifest",
                            size: entry.size,
                            limit: self.options.max_manifest_bytes,
                        });
                    }
                    let child = self
                        .get_manifest(
                            &endpoint,
                            &session,
                            authorization.as_deref(),
                            &entry.digest.to_string(),
                        )
                        .await?;
                    verify_digest(&endpoint, "manifest", &child.body, &entry.digest)?;
                    if child.body.len() as u64 != entry.size {
                        return Err(RegistryError::SizeMismatch {
                            image: name,
                            what: "manifest",
                            digest: entry.digest,
                            expected: entry.size,
                            received: child.body.len() as u64,
                            detail: String::new(),
                        });
                    }
                    match manifest::parse_manifest(&name, &child.body, Some(&entry.media_type))? {
                        ManifestKind::Image(m) => {
                            let media_type =
                                m.media_type.clone().unwrap_or(entry.media_type.clone());
                            (child.body, media_type, entry.digest, Some(top_digest), *m)
                        }
                        ManifestKind::Index(_) => {
                            return Err(RegistryError::UnexpectedMediaType {
                                image: name,
                                what: format!("{} entry of the image index", self.options.platform),
                                media_type: entry.media_type,
                                expected: "an image manifest".to_owned(),
                            });
                        }
                    }
                }
            };

        let (config_descriptor, layers) = manifest::image_descriptors(&name, &image_manifest)?;
        if config_descriptor.size > self.options.max_config_bytes {
            return Err(RegistryError::TooLarge {
                image: name,
                what: "config",
                size: config_descriptor.size,
                limit: self.options.max_config_bytes,
            });
        }
        let mut config = Vec::with_capacity(usize::try_from(config_descriptor.size).unwrap_or(0));
        self.fetch_from(&endpoint, &config_descriptor, "config", &mut config)
            .await?;
        let layers =
            manifest::layers_with_diff_ids(&name, &config, layers, &self.options.platform)?;
        Ok(ResolvedImage {
            reference: image.clone(),
            manifest_digest,
            index_digest,
            manifest: manifest_body,
            manifest_media_type: manifest_type,
            config_descriptor,
            config,
            layers,
            endpoint,
        })
    }

    /// Opens `blob` of `image` as a stream that checks size and digest as
    /// bytes pass and ends with an error if they are wrong (see the module
    /// docs).
    pub async fn open_blob(
        &self,
        image: &ResolvedImage,
        blob: &Descriptor,
    ) -> Result<BlobStream, RegistryError> {
        self.open_at(&image.endpoint, blob, "blob").await
    }

    /// Streams `blob` of `image` into `out`, returning its size. The bytes
    /// written are good only if this returns `Ok`; on `Err` the caller must
    /// discard what `out` received.
    pub async fn fetch_blob<W: AsyncWrite + Unpin>(
        &self,
        image: &ResolvedImage,
        blob: &Descriptor,
        out: &mut W,
    ) -> Result<u64, RegistryError> {
        let stream = self.open_at(&image.endpoint, blob, "blob").await?;
        write_stream(&image.endpoint, blob, stream, out, "the caller's writer").await
    }

    /// Fetches `blob` of `image` into the file `path`: written beside it
    /// under a temporary name and renamed into place only once verified, so
    /// `path` never holds bad bytes.
    pub async fn fetch_blob_to_file(
        &self,
        image: &ResolvedImage,
        blob: &Descriptor,
        path: &Path,
    ) -> Result<u64, RegistryError> {
        let endpoint = &image.endpoint;
        let write_error = |source: std::io::Error| RegistryError::Write {
            image: endpoint.image.clone(),
            digest: blob.digest.clone(),
            target: path.display().to_string(),
            source,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let temp = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
        let mut file = tokio::fs::File::from_std(temp.as_file().try_clone().map_err(write_error)?);
        let stream = self.open_at(endpoint, blob, "blob").await?;
        let size = write_stream(
            endpoint,
            blob,
            stream,
            &mut file,
            &path.display().to_string(),
        )
        .await?;
        drop(file);
        temp.persist(path).map_err(|e| write_error(e.error))?;
        Ok(size)
    }

    /// Fetches a small blob (a config) into memory, verified.
    async fn fetch_from(
        &self,
        endpoint: &Endpoint,
        blob: &Descriptor,
        what: &'static str,
        out: &mut Vec<u8>,
    ) -> Result<u64, RegistryError> {
        let stream = self.open_at(endpoint, blob, what).await?;
        write_stream(endpoint, blob, stream, out, "memory").await
    }

    async fn open_at(
        &self,
        endpoint: &Endpoint,
        blob: &Descriptor,
        what: &'static str,
    ) -> Result<BlobStream, RegistryError> {
        let session = self.session(endpoint).await?;
        let reference = endpoint.reference(&blob.digest.to_string());
        let descriptor = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.to_string(),
            size: i64::try_from(blob.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut opened = session.oci.pull_blob_stream(&reference, &descriptor).await;
        if matches!(
            &opened,
            Err(OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::ServerError { code: 401, .. })
        ) {
            // The pull token expired (Docker Hub's last minutes): get
            // another one and try once more.
            self.authorize(endpoint, &session, &reference, RegistryOperation::Pull)
                .await?;
            opened = session.oci.pull_blob_stream(&reference, &descriptor).await;
        }
        let sized = opened.map_err(|e| {
            self.translate(endpoint, &session, e, &format!("{what} {}", blob.digest))
        })?;
        if let Some(announced) = sized.content_length
            && announced != blob.size
        {
            return Err(RegistryError::SizeMismatch {
                image: endpoint.image.clone(),
                what,
                digest: blob.digest.clone(),
                expected: blob.size,
                received: 0,
                detail: format!(" (it announced {announced} bytes; nothing was read)"),
            });
        }
        Ok(BlobStream {
            inner: sized.stream,
            image: endpoint.image.clone(),
            what,
            expected: blob.clone(),
            hasher: Sha256::new(),
            received: 0,
            finished: false,
        })
    }
}

/// Copies a verified stream into `out`, flushing at the end.
async fn write_stream<W: AsyncWrite + Unpin>(
    endpoint: &Endpoint,
    blob: &Descriptor,
    mut stream: BlobStream,
    out: &mut W,
    target: &str,
) -> Result<u64, RegistryError> {
    let write_error = |source: std::io::Error| RegistryError::Write {
        image: endpoint.image.clone(),
        digest: blob.digest.clone(),
        target: target.to_owned(),
        source,
    };
    let mut size = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(write_error)?;
    }
    out.flush().await.map_err(write_error)?;
    Ok(size)
}

/// A blob's bytes as they arrive, checked: more bytes than the descriptor
/// says is an error at once; at the end, fewer bytes or another digest is
/// the last item. It ends (`None`) only after a verified last byte.
pub struct BlobStream {
    inner: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
    image: String,
    what: &'static str,
    expected: Descriptor,
    hasher: Sha256,
    received: u64,
    finished: bool,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("image", &self.image)
            .field("blob", &self.expected)
            .field("received", &self.received)
            .finish()
    }
}

impl BlobStream {
    /// The descriptor being fetched.
    pub fn descriptor(&self) -> &Descriptor {
        &self.expected
    }

    fn size_error(&self, detail: String) -> RegistryError {
        RegistryError::SizeMismatch {
            image: self.image.clone(),
            what: self.what,
            digest: self.expected.digest.clone(),
            expected: self.expected.size,
            received: self.received,
            detail,
        }
    }

    /// The verdict once the body ended: size, then digest.
    fn verdict(&mut self) -> Result<(), RegistryError> {
        if self.received != self.expected.size {
            return Err(self.size_error(String::new()));
        }
        let actual = BlobDigest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.expected.digest {
            return Err(RegistryError::DigestMismatch {
                image: self.image.clone(),
                what: self.what,
                expected: self.expected.digest.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let item = futures_util::ready!(self.inner.poll_next_unpin(cx));
        let this = &mut *self;
        match item {
            Some(Ok(chunk)) => {
                this.received += chunk.len() as u64;
                if this.received > this.expected.size {
                    this.finished = true;
                    return Poll::Ready(Some(Err(
                        this.size_error(" (more than its descriptor says)".to_owned())
                    )));
                }
                this.hasher.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(error)) => {
                this.finished = true;
                // oci-client checks the digest too and reports a mismatch as
                // the stream's last error; our own check says it with the
                // image's name (and a short body is reported as short).
                let is_digest_error = error
                    .get_ref()
                    .is_some_and(|inner| inner.downcast_ref::<DigestError>().is_some());
                let verdict = if is_digest_error {
                    this.verdict().err()
                } else {
                    None
                };
                let error = verdict.unwrap_or_else(|| {
                    this.size_error(format!(" (the transfer broke: {})", error_chain(&error)))
                });
                Poll::Ready(Some(Err(error)))
            }
            None => {
                this.finished = true;
                match this.verdict() {
                    Ok(()) => Poll::Ready(None),
                    Err(error) => Poll::Ready(Some(Err(error))),
                }
            }
        }
    }
}
