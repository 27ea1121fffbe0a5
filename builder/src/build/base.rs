//! The image a build starts from — `scratch`, an OCI layout directory, an
//! image kept in the store, or one on a registry (`pull_through.rs`) — and
//! where each of its layers' bytes are.
//!
//! A base layer is a `(LayerRef, LayerSource)`: its descriptor and diff_id
//! as the image states them, and where its blob is. Nothing downstream
//! cares where the blob came from: extraction (`runner.rs`, through
//! `blob.rs`) decompresses and checks the blob digest and the diff_id the
//! same way for every source, and the output copies the blob as it is.

use std::path::{Path, PathBuf};

use strata_client::{Client, Distrust, TagLookup};
use strata_dockerfile::{BaseImage, StageRef};
use strata_proto::Digest;

use super::error::{BuildError, Site};
use super::pull_through::{self, Registries, RegistryBase};
use super::stored::StoredImage;
use crate::image::{HistoryEntry, LayerBlob, LayerRef, RuntimeConfig};
use crate::key::{StepKey, base_key};
use crate::oci::OciLayout;

/// The image a build starts from.
pub(crate) struct Base {
    pub key: StepKey,
    /// The image, pinned, as provenance names it: `scratch`,
    /// `oci-layout@sha256:…`, `strata:NAME@sha256:…` (kept in the store) or
    /// `REGISTRY/REPO@sha256:…`. Never a host path.
    pub name: String,
    pub config: RuntimeConfig,
    /// Layers with where their bytes are; empty for a registry image until
    /// its layers are fetched (`registry`).
    pub layers: Vec<BuiltLayer>,
    pub history: Vec<HistoryEntry>,
    /// For a registry image: how to fetch its layers, which a build does
    /// before it runs anything on them (a dry run never does).
    pub registry: Option<Box<RegistryBase>>,
}

/// A layer of the image being built.
#[derive(Clone, Debug)]
pub(crate) struct BuiltLayer {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    pub content: LayerContent,
}

/// What is known of a layer's bytes.
#[derive(Clone, Debug)]
pub(crate) enum LayerContent {
    /// A blob kept exactly as it is: a base image's layer (never
    /// recompressed), or a layer of this build once its blob is chosen.
    Blob {
        blob: LayerBlob,
        source: LayerSource,
    },
    /// A tar this build made (or took from the step cache) whose blob is
    /// chosen at the end of the build (`compressed.rs`).
    Tar { size: u64, source: LayerSource },
}

impl Base {
    /// An image a dry run could not resolve: a key no recorded step has
    /// (so every step on it would run), named `unresolved`.
    pub fn unresolved(written: &str) -> Base {
        Base {
            key: base_key(&format!("unresolved {written}")),
            name: "unresolved".into(),
            config: RuntimeConfig::default(),
            layers: Vec::new(),
            history: Vec::new(),
            registry: None,
        }
    }
}

impl BuiltLayer {
    /// A base image's layer: its blob, kept as it is.
    pub fn base(layer: LayerRef, source: LayerSource) -> BuiltLayer {
        BuiltLayer {
            diff_id: layer.diff_id,
            content: LayerContent::Blob {
                blob: layer.blob,
                source,
            },
        }
    }

    /// The layer as its bytes must be read: a tar not yet compressed is
    /// its own (uncompressed) blob.
    pub fn readable(&self) -> (LayerRef, &LayerSource) {
        let (blob, source) = match &self.content {
            LayerContent::Blob { blob, source } => (blob.clone(), source),
            LayerContent::Tar { size, source } => {
                (LayerBlob::uncompressed(&self.diff_id, *size), source)
            }
        };
        (
            LayerRef {
                diff_id: self.diff_id.clone(),
                blob,
            },
            source,
        )
    }
}

/// A layer whose blob is chosen: what manifests, the output directory and
/// images kept in the store take.
#[derive(Clone, Debug)]
pub(crate) struct BlobLayer {
    pub layer: LayerRef,
    pub source: LayerSource,
}

#[derive(Clone, Debug)]
pub(crate) enum LayerSource {
    /// A file (a blob of the base image's layout, a layer tar just
    /// written, or its compressed blob).
    File(PathBuf),
    /// An object in the store holding exactly these bytes.
    Store(Digest),
}

/// A `FROM` image as the user wrote it (expanded).
pub(crate) fn as_written(image: &BaseImage) -> String {
    match image {
        BaseImage::Scratch => "scratch".to_owned(),
        BaseImage::OciLayout(layout) => layout.to_string(),
        BaseImage::Named(name) => name.to_string(),
        BaseImage::Stage(StageRef(j)) => format!("stage {j}"),
    }
}

/// Resolves a `FROM` image (not a stage). The base's key is its manifest
/// digest, so a moved layout or a retagged image keys by content, never by
/// name.
///
/// A name is looked for among the images kept in the cache first (`strata
/// build --tag`), as Docker looks at its local images first, then on its
/// registry.
pub(crate) async fn resolve_image(
    client: &Client,
    registries: &Registries,
    site: Site,
    image: BaseImage,
) -> Result<Base, BuildError> {
    match image {
        BaseImage::Stage(_) => Err(site.error("FROM names a stage, not an image")),
        BaseImage::Scratch => Ok(Base {
            key: base_key("scratch"),
            name: "scratch".into(),
            config: RuntimeConfig::default(),
            layers: Vec::new(),
            history: Vec::new(),
            registry: None,
        }),
        BaseImage::OciLayout(layout_ref) => {
            let err = |e| site.error(format!("FROM {layout_ref}: {e}"));
            let layout = OciLayout::open(Path::new(&layout_ref.dir)).map_err(err)?;
            let image = layout.read_image(layout_ref.tag.as_deref()).map_err(err)?;
            Ok(Base {
                key: base_key(&format!("oci {}", image.manifest_digest)),
                name: format!("oci-layout@{}", image.manifest_digest),
                config: image.config,
                layers: image
                    .layers
                    .into_iter()
                    .map(|(layer, path)| BuiltLayer::base(layer, LayerSource::File(path)))
                    .collect(),
                history: image.history,
                registry: None,
            })
        }
        BaseImage::Named(image_ref) => {
            let name = image_ref.store_name();
            // A pinned reference names registry content; only a tag may
            // name an image kept in the cache.
            let kept = match image_ref.digest() {
                Some(_) => TagLookup::Miss,
                None => client
                    .get_tag_judged(&name)
                    .await
                    .map_err(|e| site.error(format!("FROM {image_ref}: {e}")))?,
            };
            let digest = match kept {
                TagLookup::Hit(tag) => tag.target,
                TagLookup::Miss => {
                    return pull_through::resolve(registries, &image_ref, site).await;
                }
                // Someone else's tag of this name is not this build's
                // image: resolve on the registry, and if that fails too,
                // say why the cache's tag was passed over.
                TagLookup::Untrusted(why) => {
                    return pull_through::resolve(registries, &image_ref, site)
                        .await
                        .map_err(|e| match e {
                            BuildError::Step {
                                file,
                                line,
                                message,
                            } => BuildError::Step {
                                file,
                                line,
                                message: match why {
                                    Distrust::NotTrusted(_) => format!(
                                        "{message} (the cache has a tag {name}, but it is \
                                         {why}; `strata trust add` its signer to use it)"
                                    ),
                                    Distrust::BadSignature { .. } => format!(
                                        "{message} (the cache has a tag {name}, but it is {why})"
                                    ),
                                },
                            },
                            other => other,
                        });
                }
            };
            let bytes = client
                .pull_to_vec(&digest)
                .await
                .map_err(|e| site.error(format!("FROM {image_ref}: {e}")))?;
            let image = StoredImage::decode(&bytes)
                .map_err(|e| site.error(format!("FROM {image_ref}: stored image {digest}: {e}")))?;
            Ok(Base {
                key: base_key(&format!("stored {}", image.manifest_digest)),
                name: format!("strata:{name}@{}", image.manifest_digest),
                config: image.config,
                layers: image.layers,
                history: image.history,
                registry: None,
            })
        }
    }
}
