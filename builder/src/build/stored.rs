//! Images kept in the store (`--tag NAME[:TAG]`, `FROM
//! NAME[:TAG]`): every layer blob is a store object; an image record object
//! holds the exact OCI manifest and config bytes and the store object of
//! each layer's blob; a tag names the record. A record missing anything is
//! refused, never filled in with defaults.
//!
//! Record schemas: `strata-image-v2` (current): each object holds the
//! layer's blob exactly as the manifest describes it — gzip, zstd or plain.
//! `strata-image-v1` (older builders): every layer was a plain tar; such a
//! record is read as the v2 record it is equivalent to, after checking that
//! every layer is indeed plain. Any other schema is refused, naming it.

use serde::{Deserialize, Serialize};
use strata_client::{Client, Progress};
use strata_dockerfile::ImageRef;
use strata_proto::Digest;

use super::base::{BlobLayer, BuiltLayer, LayerSource};
use super::error::BuildError;
use crate::image::{Compression, HistoryEntry, RuntimeConfig, sha256_digest};
use crate::oci::{history_of, layers_of, runtime_config_of};

/// The media type of an image record in the store.
pub const MEDIA_TYPE_STORED_IMAGE: &str = "application/vnd.strata.image.v1+json";

/// The schema records are written with.
const SCHEMA: &str = "strata-image-v2";
/// The schema of older records (plain layers only), still read.
const SCHEMA_V1: &str = "strata-image-v1";

/// An image record as stored: the exact manifest and config bytes (their
/// SHA-256 is the image's identity) and each layer blob's store object.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    schema: String,
    manifest: String,
    config: String,
    layers: Vec<String>,
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
        if record.schema != SCHEMA && record.schema != SCHEMA_V1 {
            return Err(format!(
                "unknown schema {:?} (this strata reads {SCHEMA:?} and {SCHEMA_V1:?}; \
                 a newer strata wrote it, or it is not an image record)",
                record.schema
            ));
        }
        let manifest: serde_json::Value = serde_json::from_str(&record.manifest)
            .map_err(|e| format!("its OCI manifest is not JSON: {e}"))?;
        let config: serde_json::Value = serde_json::from_str(&record.config)
            .map_err(|e| format!("its OCI config is not JSON: {e}"))?;
        if !config.is_object() {
            return Err("its OCI config is not a JSON object".into());
        }
        let described = layers_of(&manifest, &config)?;
        if record.schema == SCHEMA_V1
            && let Some(l) = described
                .iter()
                .find(|l| l.blob.compression != Compression::None || l.blob.digest != l.diff_id)
        {
            return Err(format!(
                "a {SCHEMA_V1} record with a compressed layer ({}) cannot be: v1 layers are plain tars",
                l.blob.digest
            ));
        }
        if described.len() != record.layers.len() {
            return Err(format!(
                "its OCI manifest lists {} layers and its record {}",
                described.len(),
                record.layers.len()
            ));
        }
        let layers = described
            .into_iter()
            .zip(&record.layers)
            .map(|(layer, object)| {
                let digest: Digest = object
                    .parse()
                    .map_err(|e| format!("layer object {object:?}: {e}"))?;
                Ok(BuiltLayer::base(layer, LayerSource::Store(digest)))
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

/// Keeps the image in the store under `name`: every layer blob as a store
/// object (blobs in local files are pushed; the store dedups them), then
/// the image record, then the tag. Returns bytes sent.
pub(crate) async fn keep_in_store(
    client: &Client,
    layers: &[BlobLayer],
    name: &ImageRef,
    config: &[u8],
    manifest: &[u8],
) -> Result<u64, BuildError> {
    let mut sent = 0;
    let mut objects = Vec::with_capacity(layers.len());
    for BlobLayer { layer, source } in layers {
        match source {
            LayerSource::Store(d) => objects.push(*d),
            LayerSource::File(p) => {
                let file = std::fs::File::open(p)
                    .map_err(BuildError::io(format!("reading layer {}", p.display())))?;
                let pushed = client
                    .push_file(file, layer.blob.media_type(), &Progress::new())
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
    use super::super::base::LayerContent;
    use super::*;
    use crate::image::MEDIA_TYPE_LAYER;
    use crate::image::MEDIA_TYPE_LAYER_GZIP;

    fn sha(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn manifest(layers: &[(&str, &str, u64)]) -> String {
        let layers: Vec<_> = layers
            .iter()
            .map(|(m, d, s)| serde_json::json!({"digest": d, "size": s, "mediaType": m}))
            .collect();
        serde_json::json!({"schemaVersion": 2, "layers": layers}).to_string()
    }

    fn config(diff_ids: &[String]) -> String {
        serde_json::json!({"config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}})
            .to_string()
    }

    fn record(schema: &str, manifest: &str, config: &str, layers: &[String]) -> Vec<u8> {
        serde_json::json!({
            "schema": schema, "manifest": manifest, "config": config, "layers": layers,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_record_round_trips_with_its_layers_blobs_and_diff_ids_in_order() {
        let object = Digest::of(b"layer");
        let m = manifest(&[(MEDIA_TYPE_LAYER_GZIP, &sha('1'), 7)]);
        let c = config(&[sha('a')]);
        let bytes = StoredImage::encode(m.as_bytes(), c.as_bytes(), &[object]).unwrap();
        let image = StoredImage::decode(&bytes).unwrap();
        assert_eq!(image.manifest_digest, sha256_digest(m.as_bytes()));
        assert_eq!(image.layers.len(), 1);
        assert_eq!(image.layers[0].diff_id, sha('a'));
        let LayerContent::Blob { blob, source } = &image.layers[0].content else {
            panic!("a stored layer is a blob")
        };
        assert_eq!((blob.compression, blob.size), (Compression::Gzip, 7));
        assert_eq!(blob.digest, sha('1'));
        assert!(matches!(source, LayerSource::Store(d) if *d == object));
    }

    #[test]
    fn a_v1_record_of_plain_layers_is_read_and_one_claiming_compression_is_refused() {
        let object = Digest::of(b"layer").to_string();
        let one = std::slice::from_ref(&object);
        let plain = manifest(&[(MEDIA_TYPE_LAYER, &sha('a'), 7)]);
        let image =
            StoredImage::decode(&record(SCHEMA_V1, &plain, &config(&[sha('a')]), one)).unwrap();
        let (layer, _) = image.layers[0].readable();
        assert_eq!(layer.blob.compression, Compression::None);
        assert_eq!(layer.diff_id, sha('a'));

        let gz = manifest(&[(MEDIA_TYPE_LAYER_GZIP, &sha('1'), 7)]);
        let err = StoredImage::decode(&record(SCHEMA_V1, &gz, &config(&[sha('a')]), one))
            .err()
            .unwrap();
        assert!(err.contains("v1 layers are plain tars"), "{err}");
    }

    #[test]
    fn a_record_missing_anything_is_refused_not_defaulted() {
        let object = Digest::of(b"layer").to_string();
        let one = std::slice::from_ref(&object);
        let good_manifest = manifest(&[(MEDIA_TYPE_LAYER_GZIP, &sha('1'), 7)]);
        let good_config = config(&[sha('a')]);
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
                record("strata-image-v0", &good_manifest, &good_config, one),
                "unknown schema \"strata-image-v0\"",
            ),
            (
                record("strata-image-v3", &good_manifest, &good_config, one),
                "a newer strata wrote it",
            ),
            (
                record(
                    SCHEMA,
                    &format!(r#"{{"layers":[{{"digest":"{}","mediaType":"{MEDIA_TYPE_LAYER_GZIP}"}}]}}"#, sha('1')),
                    &good_config,
                    one,
                ),
                "no size",
            ),
            (
                record(SCHEMA, r#"{"layers":[{"size":7,"mediaType":"application/vnd.oci.image.layer.v1.tar"}]}"#, &good_config, one),
                "no sha256 digest",
            ),
            (
                record(SCHEMA, &format!(r#"{{"layers":[{{"size":7,"digest":"{}"}}]}}"#, sha('1')), &good_config, one),
                "no mediaType",
            ),
            (record(SCHEMA, r#"{"schemaVersion":2}"#, &good_config, &[]), "no layers array"),
            (record(SCHEMA, &good_manifest, "[]", one), "not a JSON object"),
            (record(SCHEMA, &good_manifest, "{}", one), "no rootfs.diff_ids"),
            (
                record(SCHEMA, &good_manifest, &config(&[]), one),
                "lists 1 layers and the config 0 diff_ids",
            ),
            (
                record(SCHEMA, &good_manifest, &good_config, &[]),
                "lists 1 layers and its record 0",
            ),
            (
                record(SCHEMA, &good_manifest, &good_config, &["b3:nothex".into()]),
                "layer object \"b3:nothex\"",
            ),
        ];
        for (bytes, expected) in cases {
            let err = StoredImage::decode(&bytes).err().unwrap();
            assert!(err.contains(expected), "expected {expected:?}, got {err:?}");
        }
    }
}
