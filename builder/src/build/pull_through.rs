//! Base images from registries, pulled through the cache.
//!
//! `FROM [HOST[:PORT]/]REPO[:TAG][@sha256:…]` is resolved on its registry
//! (manifest and config, both verified) and pinned by the platform
//! manifest's digest: that digest, never the tag, goes into the base key, so
//! a tag that moves is a cache miss, never a wrong hit.
//!
//! Layers are fetched only for a build that runs (a dry run needs keys,
//! not bytes), and the cache is asked first: each layer blob is looked up
//! by its registry digest (`FindObject` by SHA-256, which the server answers
//! only for objects whose SHA-256 its verifier proved). A miss is fetched
//! from the registry into the build's scratch directory, its digest and
//! size checked as it arrives, then pushed into the cache, so the next
//! builder of the same image — on any machine sharing the server — takes
//! it from there and asks the registry for the manifest alone. Whatever the
//! cache hands back is checked again where it is read (`blob.rs`: blob
//! digest, size and diff_id), so a lying cache cannot change a base image.

use std::path::Path;

use futures_util::{StreamExt as _, TryStreamExt as _};
use strata_client::{Client, ClientError, Progress};
use strata_dockerfile::ImageRef;
use strata_registry::{BlobDigest, RegistryClient, RegistryOptions, ResolvedImage};
use tokio::sync::OnceCell;

use super::base::{Base, BuiltLayer, LayerSource};
use super::error::{BuildError, Site};
use crate::image::LayerRef;
use crate::key::base_key;
use crate::oci::{history_of, layers_of, runtime_config_of};

/// Layers fetched at once from a registry (Docker pulls three at a time).
const CONCURRENT_LAYER_FETCHES: usize = 3;

/// The build's registry client, made when a `FROM` first names a registry.
pub(crate) struct Registries {
    options: RegistryOptions,
    client: OnceCell<RegistryClient>,
}

impl Registries {
    pub fn new(options: RegistryOptions) -> Registries {
        Registries {
            options,
            client: OnceCell::new(),
        }
    }

    pub async fn client(&self) -> Result<&RegistryClient, strata_registry::RegistryError> {
        self.client
            .get_or_try_init(|| async { RegistryClient::new(self.options.clone()) })
            .await
    }
}

/// A base image resolved on a registry: what fetching its layers needs.
pub(crate) struct RegistryBase {
    resolved: ResolvedImage,
    layers: Vec<LayerRef>,
    site: Site,
}

/// What fetching a registry base's layers did.
#[derive(Default)]
pub(crate) struct FetchedBase {
    pub layers: Vec<BuiltLayer>,
    /// Blob bytes fetched from the registry.
    pub registry_bytes: u64,
    /// Chunk bytes sent to the cache, storing them for others.
    pub uploaded_bytes: u64,
    /// Why fetched layers could not be kept in the cache, if so.
    pub not_kept: Option<String>,
}

/// Resolves `image` on its registry and pins it: the base key and
/// provenance name the platform manifest's digest.
pub(crate) async fn resolve(
    registries: &Registries,
    image: &ImageRef,
    site: Site,
) -> Result<Base, BuildError> {
    let err = |e: &dyn std::fmt::Display| site.error(format!("FROM {image}: {e}"));
    let registry = registries.client().await.map_err(|e| err(&e))?;
    let resolved = registry.resolve(image).await.map_err(|e| err(&e))?;
    let parse = |what: &str, bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| err(&format!("its {what} is not JSON: {e}")))
    };
    let manifest = parse("manifest", &resolved.manifest)?;
    let config = parse("config", &resolved.config)?;
    let layers = layers_of(&manifest, &config).map_err(|e| err(&e))?;
    // One manifest, read twice: the registry client's layer list and ours
    // must agree blob for blob.
    let agree = layers.len() == resolved.layers.len()
        && layers
            .iter()
            .zip(&resolved.layers)
            .all(|(ours, theirs)| ours.blob.digest == theirs.descriptor.digest.to_string());
    if !agree {
        return Err(err(&"its manifest's layers could not be read consistently"));
    }
    let pinned = resolved.pinned_name();
    Ok(Base {
        key: base_key(&format!("oci {}", resolved.manifest_digest)),
        name: pinned,
        config: runtime_config_of(&config["config"]),
        history: history_of(&config),
        layers: Vec::new(),
        registry: Some(Box::new(RegistryBase {
            resolved,
            layers,
            site,
        })),
    })
}

impl RegistryBase {
    /// Every layer's bytes: from the cache where it holds them, else from
    /// the registry into `scratch` (and then into the cache).
    pub async fn fetch_layers(
        &self,
        client: &Client,
        registries: &Registries,
        scratch: &Path,
    ) -> Result<FetchedBase, BuildError> {
        let registry = registries
            .client()
            .await
            .map_err(|e| self.error(&self.layers[0], &e))?;
        let fetched: Vec<LayerFetch> = futures_util::stream::iter(self.layers.iter().enumerate())
            .map(|(i, layer)| self.fetch_layer(client, registry, i, layer, scratch))
            .buffered(CONCURRENT_LAYER_FETCHES)
            .try_collect()
            .await?;
        let mut out = FetchedBase::default();
        for (layer, fetch) in self.layers.iter().zip(fetched) {
            out.registry_bytes += fetch.registry_bytes;
            out.uploaded_bytes += fetch.uploaded_bytes;
            if out.not_kept.is_none() {
                out.not_kept = fetch.not_kept;
            }
            out.layers
                .push(BuiltLayer::base(layer.clone(), fetch.source));
        }
        Ok(out)
    }

    async fn fetch_layer(
        &self,
        client: &Client,
        registry: &RegistryClient,
        index: usize,
        layer: &LayerRef,
        scratch: &Path,
    ) -> Result<LayerFetch, BuildError> {
        let media_type = layer.blob.compression.media_type();
        let sha256 = BlobDigest::parse(&layer.blob.digest)
            .map_err(|e| self.error(layer, &e))?
            .to_bytes();
        let cached = client
            .find_object_by_sha256(&sha256, layer.blob.size, media_type)
            .await
            .map_err(BuildError::cache("looking up a base layer in the cache"))?;
        if let Some(known) = cached {
            return Ok(LayerFetch {
                source: LayerSource::Store(known.digest),
                registry_bytes: 0,
                uploaded_bytes: 0,
                not_kept: None,
            });
        }
        let descriptor = &self.resolved.layers[index].descriptor;
        let path = scratch.join(format!(
            "base-layer-{}",
            &layer.blob.digest["sha256:".len()..]
        ));
        let registry_bytes = registry
            .fetch_blob_to_file(&self.resolved, descriptor, &path)
            .await
            .map_err(|e| self.error(layer, &e))?;
        let file = std::fs::File::open(&path)
            .map_err(BuildError::io(format!("opening {}", path.display())))?;
        let (uploaded_bytes, not_kept) =
            match client.push_file(file, media_type, &Progress::new()).await {
                Ok(pushed) => (pushed.sent_bytes, None),
                // A read-only token builds from the registry alone.
                Err(ClientError::PermissionDenied { message, .. }) => (
                    0,
                    Some(format!(
                        "base layers are not kept in the cache: {message}; every builder fetches \
                     them from the registry"
                    )),
                ),
                Err(e) => return Err(BuildError::cache("keeping a base layer in the cache")(e)),
            };
        // This build reads the verified local copy, not the cache's.
        Ok(LayerFetch {
            source: LayerSource::File(path),
            registry_bytes,
            uploaded_bytes,
            not_kept,
        })
    }

    fn error(&self, layer: &LayerRef, e: &dyn std::fmt::Display) -> BuildError {
        self.site.error(format!(
            "FROM {}: layer {}: {e}",
            self.resolved.reference, layer.blob.digest
        ))
    }
}

/// One layer's source and what it cost.
struct LayerFetch {
    source: LayerSource,
    registry_bytes: u64,
    uploaded_bytes: u64,
    not_kept: Option<String>,
}
