//! Where the built image goes: an OCI layout directory or a registry. Either
//! way only the layer blobs the target lacks move, each exactly as chosen (a
//! base layer's original blob, a layer of this build compressed once);
//! config and manifest last, then the tag, so a tag never names an image
//! whose blobs are missing.

use std::fs::File;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use strata_client::{Client, Progress};
use strata_dockerfile::{ImageRef, LayoutRef};
use strata_registry::{BlobDigest, Descriptor, ImageToPush, LayerToPush, OCI_MANIFEST};

use super::base::{BlobLayer, LayerSource};
use super::error::BuildError;
use super::pull_through::Registries;
use crate::oci::OciLayout;

/// Layers pulled from the cache at once for an output.
const PULLS_AT_ONCE: usize = 8;

/// `--output`: where the built image goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    /// `oci:DIR[:TAG]`.
    Layout(LayoutRef),
    /// `registry://[HOST[:PORT]/]REPO[:TAG]`.
    Registry(ImageRef),
}

impl OutputTarget {
    /// Parses `oci:DIR[:TAG]` or `registry://[HOST[:PORT]/]REPO[:TAG]`.
    pub fn parse(text: &str) -> Result<OutputTarget, String> {
        if let Some(name) = text.strip_prefix("registry://") {
            let image = ImageRef::parse(name).map_err(|e| e.to_string())?;
            if image.digest().is_some() {
                return Err(format!(
                    "{text}: a digest names content and cannot be pushed to; give a tag"
                ));
            }
            return Ok(OutputTarget::Registry(image));
        }
        if text.starts_with("oci:") {
            return LayoutRef::parse(text)
                .map(OutputTarget::Layout)
                .map_err(|e| e.to_string());
        }
        Err(format!(
            "{text}: expected oci:DIR[:TAG] or registry://[HOST[:PORT]/]REPO[:TAG]"
        ))
    }
}

/// What writing the output moved.
pub(crate) struct Written {
    /// Layer bytes written into the directory, or uploaded to the registry.
    pub layer_bytes: u64,
    /// Layer bytes downloaded from the cache to do it.
    pub downloaded: u64,
    /// For a registry: `REGISTRY/REPO@sha256:…`, the image pushed.
    pub pushed: Option<String>,
}

pub(crate) async fn write_output(
    client: &Client,
    layers: &[BlobLayer],
    output: &LayoutRef,
    config: &[u8],
    manifest: &[u8],
) -> Result<Written, BuildError> {
    let write_err = BuildError::oci;
    let out = OciLayout::create(std::path::Path::new(&output.dir))
        .map_err(write_err("creating the output layout"))?;
    let mut written = Written {
        layer_bytes: 0,
        downloaded: 0,
        pushed: None,
    };
    let mut from_store = Vec::new();
    for BlobLayer { layer, source } in layers {
        let blob = &layer.blob;
        if out.has_blob(&blob.digest, blob.size) {
            continue;
        }
        match source {
            LayerSource::File(p) => {
                let mut file = out.temp_blob().map_err(write_err("writing the output"))?;
                let mut r = File::open(p)
                    .map_err(BuildError::io(format!("reading layer {}", p.display())))?;
                std::io::copy(&mut r, &mut file).map_err(BuildError::io("writing the output"))?;
                out.commit_blob(file, &blob.digest)
                    .map_err(write_err("writing the output"))?;
            }
            LayerSource::Store(d) => from_store.push((*d, blob)),
        }
        written.layer_bytes += blob.size;
    }
    // Layers from the cache come down side by side: over a slow link one
    // round trip for all, not one each.
    let pulls = from_store.into_iter().map(|(d, blob)| {
        let out = &out;
        async move {
            let file = out.temp_blob().map_err(write_err("writing the output"))?;
            let (report, file) = client
                .pull(&d, file, &Progress::new())
                .await
                .map_err(BuildError::cache("downloading a layer for the output"))?;
            out.commit_blob(file, &blob.digest)
                .map_err(write_err("writing the output"))?;
            Ok::<u64, BuildError>(report.total_bytes)
        }
    });
    let mut pulled = futures_util::stream::iter(pulls).buffer_unordered(PULLS_AT_ONCE);
    while let Some(bytes) = pulled.next().await {
        written.downloaded += bytes?;
    }
    drop(pulled);
    out.put_blob(config)
        .map_err(write_err("writing the output"))?;
    let digest = out
        .put_blob(manifest)
        .map_err(write_err("writing the output"))?;
    out.set_tag(output.tag_or_default(), &digest, manifest.len() as u64)
        .map_err(write_err("writing the output"))?;
    Ok(written)
}

/// Pushes the image to `target`: blobs the repository lacks (those held only
/// in the cache are fetched into `scratch` first), then config, manifest
/// and tag.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn push_output(
    client: &Client,
    registries: &Registries,
    layers: &[BlobLayer],
    target: &ImageRef,
    config: &[u8],
    manifest: &[u8],
    scratch: &Path,
) -> Result<Written, BuildError> {
    let fail = |e: &dyn std::fmt::Display| BuildError::Push {
        target: target.to_string(),
        message: e.to_string(),
    };
    let registry = registries.client().await.map_err(|e| fail(&e))?;
    let descriptors: Vec<Descriptor> = layers
        .iter()
        .map(|BlobLayer { layer, .. }| {
            Ok(Descriptor {
                media_type: layer.blob.compression.media_type().to_owned(),
                digest: BlobDigest::parse(&layer.blob.digest).map_err(|e| fail(&e))?,
                size: layer.blob.size,
            })
        })
        .collect::<Result<_, BuildError>>()?;
    let digests: Vec<BlobDigest> = descriptors.iter().map(|d| d.digest.clone()).collect();
    let missing = registry
        .missing_blobs(target, &digests)
        .await
        .map_err(|e| fail(&e))?;
    let mut downloaded = 0;
    let mut to_push = Vec::with_capacity(layers.len());
    for (BlobLayer { source, .. }, descriptor) in layers.iter().zip(descriptors) {
        let path = if missing.contains(&descriptor.digest) {
            let (path, pulled) = blob_file(client, source, &descriptor, scratch).await?;
            downloaded += pulled;
            Some(path)
        } else {
            None
        };
        to_push.push(LayerToPush {
            descriptor,
            path,
            mount_from: None,
        });
    }
    let image = ImageToPush {
        manifest: manifest.to_vec(),
        manifest_media_type: OCI_MANIFEST.to_owned(),
        config: config.to_vec(),
        layers: to_push,
    };
    let report = registry
        .push_image(target, &image)
        .await
        .map_err(|e| fail(&e))?;
    let layer_bytes = image
        .layers
        .iter()
        .filter(|l| report.uploaded.contains(&l.descriptor.digest))
        .map(|l| l.descriptor.size)
        .sum();
    Ok(Written {
        layer_bytes,
        downloaded,
        pushed: Some(format!("{}@{}", target.name(), report.manifest_digest)),
    })
}

/// A file holding a layer blob's bytes: its own file, or one pulled from
/// the cache into `scratch`. Returns the bytes pulled.
async fn blob_file(
    client: &Client,
    source: &LayerSource,
    descriptor: &Descriptor,
    scratch: &Path,
) -> Result<(PathBuf, u64), BuildError> {
    match source {
        LayerSource::File(path) => Ok((path.clone(), 0)),
        LayerSource::Store(digest) => {
            let path = scratch.join(format!("push-{}", descriptor.digest.hex()));
            let report = client
                .pull_to_file(digest, &path, &Progress::new())
                .await
                .map_err(BuildError::cache("downloading a layer to push"))?;
            Ok((path, report.total_bytes))
        }
    }
}
