//! Images kept in the store under a tag (`--tag NAME[:TAG]`, `FROM
//! NAME[:TAG]`): every layer is a store object; an image record object
//! holds the exact OCI manifest and config bytes and the layers' store
//! digests; a tag names the record. A record missing anything is refused,
//! never filled in with defaults.

use serde::{Deserialize, Serialize};
use strata_client::{Client, Progress};
use strata_dockerfile::ImageRef;
use strata_proto::Digest;

use super::base::{BuiltLayer, LayerSource};
use super::error::BuildError;
use crate::image::{HistoryEntry, LayerRef, MEDIA_TYPE_LAYER, RuntimeConfig, sha256_digest};
use crate::oci::{history_of, runtime_config_of};

/// The media type of an image record in the store.
pub const MEDIA_TYPE_STORED_IMAGE: &str = "application/vnd.strata.image.v1+json";

/// The one schema an image record may have.
const SCHEMA: &str = "strata-image-v1";

/// An image record as stored: the exact manifest and config bytes (their
/// SHA-256 is the image's identity) and each layer's store object.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    schema: String,
    manifest: String,
    config: String,
    layers: Vec<String>,
}

/// The part of an OCI manifest a record needs: its layers' descriptors.
#[derive(Deserialize)]
struct ManifestLayers {
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
}

/// An image read back from the store.
pub(crate) struct StoredImage {
    pub manifest_digest: String,
    pub config: RuntimeConfig,
    pub history: Vec<HistoryEntry>,
    pub layers: Vec<BuiltLayer>,
}

impl StoredImage {
    fn encode(manifest: &[u8], config: &[u8], layers: &[Digest]) -> Result<Vec<u8>, BuildError> {
        let text = |what: &str, b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| {
                BuildError::io("keeping the image")(std::io::Error::other(format!(
                    "its {what} is not UTF-8"
                )))
            })
        };
        let record = Record {
            schema: SCHEMA.into(),
            manifest: text("manifest", manifest)?,
            config: text("config", config)?,
            layers: layers.iter().map(Digest::to_string).collect(),
        };
        serde_json::to_vec(&record)
            .map_err(|e| BuildError::io("keeping the image")(std::io::Error::other(e)))
    }

    /// Reads a record, refusing one that lacks any field or whose parts
    /// disagree.
    pub fn decode(bytes: &[u8]) -> Result<StoredImage, String> {
        let record: Record =
            serde_json::from_slice(bytes).map_err(|e| format!("not an image record: {e}"))?;
        if record.schema != SCHEMA {
            return Err(format!(
                "unknown schema {:?} (expected {SCHEMA:?})",
                record.schema
            ));
        }
        let manifest: ManifestLayers = serde_json::from_str(&record.manifest)
            .map_err(|e| format!("its OCI manifest is not valid: {e}"))?;
        let config: serde_json::Value = serde_json::from_str(&record.config)
            .map_err(|e| format!("its OCI config is not JSON: {e}"))?;
        if !config.is_object() {
            return Err("its OCI config is not a JSON object".into());
        }
        if manifest.layers.len() != record.layers.len() {
            return Err(format!(
                "its OCI manifest lists {} layers and its record {}",
                manifest.layers.len(),
                record.layers.len()
            ));
        }
        let layers = manifest
            .layers
            .into_iter()
            .zip(&record.layers)
            .map(|(descriptor, object)| {
                let digest: Digest = object
                    .parse()
                    .map_err(|e| format!("layer object {object:?}: {e}"))?;
                Ok(BuiltLayer {
                    oci: LayerRef {
                        sha256: descriptor.digest,
                        size: descriptor.size,
                    },
                    source: LayerSource::Store(digest),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(StoredImage {
            manifest_digest: sha256_digest(record.manifest.as_bytes()),
            config: runtime_config_of(&config["config"]),
            history: history_of(&config),
            layers,
        })
    }
}

/// Keeps the image in the store under `name`: every layer as a store
/// object (base layers from a layout are pushed; the store dedups them),
/// then the image record, then the tag. Returns bytes sent.
pub(crate) async fn keep_in_store(
    client: &Client,
    layers: &[BuiltLayer],
    name: &ImageRef,
    config: &[u8],
    manifest: &[u8],
) -> Result<u64, BuildError> {
    let mut sent = 0;
    let mut objects = Vec::with_capacity(layers.len());
    for layer in layers {
        match &layer.source {
            LayerSource::Store(d) => objects.push(*d),
            LayerSource::File(p) => {
                let file = std::fs::File::open(p)
                    .map_err(BuildError::io(format!("reading layer {}", p.display())))?;
                let pushed = client
                    .push_file(file, MEDIA_TYPE_LAYER, &Progress::new())
                    .await
                    .map_err(BuildError::cache("storing a layer"))?;
                sent += pushed.sent_bytes;
                objects.push(pushed.digest);
            }
        }
    }
    let record = StoredImage::encode(manifest, config, &objects)?;
    let pushed = client
        .push(
            std::io::Cursor::new(record),
            MEDIA_TYPE_STORED_IMAGE,
            &Progress::new(),
        )
        .await
        .map_err(BuildError::cache("storing the image"))?;
    sent += pushed.sent_bytes;
    client
        .set_tag(&name.store_name(), &pushed.digest)
        .await
        .map_err(BuildError::cache("tagging the image"))?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn manifest(layers: &[(&str, u64)]) -> String {
        let layers: Vec<_> = layers
            .iter()
            .map(|(d, s)| serde_json::json!({"digest": d, "size": s, "mediaType": "x"}))
            .collect();
        serde_json::json!({"schemaVersion": 2, "layers": layers}).to_string()
    }

    fn record(manifest: &str, config: &str, layers: &[String]) -> Vec<u8> {
        serde_json::json!({
            "schema": SCHEMA, "manifest": manifest, "config": config, "layers": layers,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_record_round_trips_with_its_layers_in_order() {
        let object = Digest::of(b"layer");
        let m = manifest(&[("sha256:aa", 7)]);
        let bytes = StoredImage::encode(m.as_bytes(), b"{\"config\":{}}", &[object]).unwrap();
        let image = StoredImage::decode(&bytes).unwrap();
        assert_eq!(image.manifest_digest, sha256_digest(m.as_bytes()));
        assert_eq!(image.layers.len(), 1);
        assert_eq!(image.layers[0].oci.sha256, "sha256:aa");
        assert_eq!(image.layers[0].oci.size, 7);
        assert!(matches!(image.layers[0].source, LayerSource::Store(d) if d == object));
    }

    #[test]
    fn a_record_missing_anything_is_refused_not_defaulted() {
        let object = Digest::of(b"layer").to_string();
        let one = std::slice::from_ref(&object);
        let good_manifest = manifest(&[("sha256:aa", 7)]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not an image record"),
            (
                serde_json::json!({"schema": SCHEMA, "manifest": good_manifest, "layers": [object]})
                    .to_string()
                    .into_bytes(),
                "missing field `config`",
            ),
            (
                serde_json::json!({"schema": SCHEMA, "config": "{}", "layers": [object]})
                    .to_string()
                    .into_bytes(),
                "missing field `manifest`",
            ),
            (
                String::from_utf8(record(&good_manifest, "{}", one))
                    .unwrap()
                    .replace(SCHEMA, "strata-image-v0")
                    .into_bytes(),
                "unknown schema",
            ),
            (
                record(r#"{"layers":[{"digest":"sha256:aa"}]}"#, "{}", one),
                "missing field `size`",
            ),
            (
                record(r#"{"layers":[{"size":7}]}"#, "{}", one),
                "missing field `digest`",
            ),
            (record(r#"{"schemaVersion":2}"#, "{}", &[]), "missing field `layers`"),
            (record(&good_manifest, "[]", one), "not a JSON object"),
            (record(&good_manifest, "{}", &[]), "lists 1 layers and its record 0"),
            (
                record(&good_manifest, "{}", &["b3:nothex".into()]),
                "layer object \"b3:nothex\"",
            ),
        ];
        for (bytes, expected) in cases {
            let err = StoredImage::decode(&bytes).err().unwrap();
            assert!(err.contains(expected), "expected {expected:?}, got {err:?}");
        }
    }
}
