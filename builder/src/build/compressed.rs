//! Choosing the blob of each layer this build made: compressed once, kept
//! in the cache by content, never compressed again.
//!
//! The cache maps `(diff_id, compression)` to the compressed blob with the
//! store's own immutable mapping, the step cache: under the key
//! `BLAKE3("strata compressed-layer v1\ncompression <gzip|zstd>\ndiff_id sha256:<hex>\n")`
//! a step result whose layer is the store object holding the blob and
//! whose config is `{"compressed_layer":{"compression":…,"diff_id":…}}`.
//! So the mapping is written once (the first result stands, as for steps),
//! is a GC root like any step result, lets the server refuse it unless the
//! blob is held, and is looked up for every layer of a build in one round
//! trip. The blob's digest and size are its store manifest's SHA-256 and
//! length, so choosing a cached blob moves no bytes.
//!
//! Base-image layers never come here: they keep their original blobs.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use strata_client::{Client, ClientError, Progress};
use strata_proto::v1::Provenance;
use strata_proto::{Digest, StepResult};

use super::base::{BlobLayer, BuiltLayer, LayerContent, LayerSource};
use super::error::BuildError;
use crate::blob::compress_layer;
use crate::image::{Compression, LayerBlob, LayerRef};

/// The cache key of the blob of layer `diff_id` compressed with
/// `compression` (see the module doc; versioned, so a change of scheme is
/// a miss, never a wrong hit).
pub fn compressed_layer_key(diff_id: &str, compression: Compression) -> Digest {
    Digest::of(
        format!(
            "strata compressed-layer v1\ncompression {}\ndiff_id {diff_id}\n",
            compression.name()
        )
        .as_bytes(),
    )
}

/// The config of a mapping's step result: what it maps, so a result read
/// back is checked against what was asked.
#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
struct Mapping {
    compressed_layer: MappedLayer,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
struct MappedLayer {
    compression: String,
    diff_id: String,
}

impl Mapping {
    fn new(diff_id: &str, compression: Compression) -> Mapping {
        Mapping {
            compressed_layer: MappedLayer {
                compression: compression.name().to_owned(),
                diff_id: diff_id.to_owned(),
            },
        }
    }
}

/// What choosing the blobs moved.
#[derive(Default)]
pub(crate) struct Chosen {
    pub layers: Vec<BlobLayer>,
    /// Layers compressed by this build (a cached rebuild: none).
    pub compressed: usize,
    pub uploaded: u64,
    pub downloaded: u64,
}

/// Gives every layer a blob: base layers keep theirs; a layer this build
/// made takes its cached compressed blob, or is compressed (in `scratch`),
/// stored and mapped. With `Compression::None` a tar is its own blob.
pub(crate) async fn choose_blobs(
    client: &Client,
    layers: &[BuiltLayer],
    compression: Compression,
    scratch: &Path,
) -> Result<Chosen, BuildError> {
    let needs_blob = |l: &BuiltLayer| {
        compression != Compression::None && matches!(l.content, LayerContent::Tar { .. })
    };
    let keys: Vec<Digest> = layers
        .iter()
        .filter(|l| needs_blob(l))
        .map(|l| compressed_layer_key(&l.diff_id, compression))
        .collect();
    let mut hits = if keys.is_empty() {
        Vec::new()
    } else {
        client
            .lookup_steps(&keys)
            .await
            .map_err(BuildError::cache("looking up compressed layers"))?
    }
    .into_iter();
    let mut chosen = Chosen::default();
    for (n, built) in layers.iter().enumerate() {
        if !needs_blob(built) {
            let (layer, source) = built.readable();
            chosen.layers.push(BlobLayer {
                layer,
                source: source.clone(),
            });
            continue;
        }
        let hit = hits.next().flatten();
        let cached = match hit {
            Some(result) => cached_blob(client, built, compression, &result).await?,
            None => None,
        };
        let blob_layer = match cached {
            Some(b) => b,
            None => {
                chosen.compressed += 1;
                compress_and_keep(client, built, n, compression, scratch, &mut chosen).await?
            }
        };
        chosen.layers.push(blob_layer);
    }
    Ok(chosen)
}

/// The blob a mapping names, if the mapping is sound: it must map this
/// layer and compression, and name a stored object of the right media
/// type. An unsound mapping is logged and ignored (the layer is then
/// compressed here; the cache keeps its first answer).
async fn cached_blob(
    client: &Client,
    built: &BuiltLayer,
    compression: Compression,
    result: &StepResult,
) -> Result<Option<BlobLayer>, BuildError> {
    let expected = Mapping::new(&built.diff_id, compression);
    let mapped: Option<Mapping> = serde_json::from_slice(&result.config).ok();
    let (Some(object), true) = (result.layer, mapped.as_ref() == Some(&expected)) else {
        tracing::warn!(
            diff_id = %built.diff_id,
            compression = compression.name(),
            "the cache's compressed-layer entry does not describe this layer; compressing it here"
        );
        return Ok(None);
    };
    let manifest = match client.get_manifest(&object).await {
        Ok(m) => m,
        Err(ClientError::NotFound(_)) => return Ok(None),
        Err(e) => {
            return Err(BuildError::cache("fetching a compressed layer's manifest")(
                e,
            ));
        }
    };
    if manifest.media_type() != compression.media_type() {
        tracing::warn!(
            diff_id = %built.diff_id,
            media_type = manifest.media_type(),
            "the cache's compressed layer has another media type; compressing it here"
        );
        return Ok(None);
    }
    Ok(Some(BlobLayer {
        layer: LayerRef {
            diff_id: built.diff_id.clone(),
            blob: LayerBlob {
                compression,
                digest: manifest.oci_digest(),
                size: manifest.total_length(),
            },
        },
        source: LayerSource::Store(object),
    }))
}

/// Compresses layer `n` into a scratch file (off the async runtime),
/// stores the blob and records the mapping.
async fn compress_and_keep(
    client: &Client,
    built: &BuiltLayer,
    n: usize,
    compression: Compression,
    scratch: &Path,
    chosen: &mut Chosen,
) -> Result<BlobLayer, BuildError> {
    let (_, source) = built.readable();
    let tar_path = match source {
        LayerSource::File(p) => p.clone(),
        LayerSource::Store(d) => {
            let path = scratch.join(format!("compress-{n}.tar"));
            let file = File::create(&path).map_err(BuildError::io("creating a download file"))?;
            let (report, mut w) = client
                .pull(d, BufWriter::new(file), &Progress::new())
                .await
                .map_err(BuildError::cache("downloading a layer to compress it"))?;
            w.flush()
                .map_err(BuildError::io("writing a downloaded layer"))?;
            chosen.downloaded += report.total_bytes;
            path
        }
    };
    let blob_path = scratch.join(format!("blob-{n}.{}", compression.name()));
    let (tar_in, blob_out) = (tar_path.clone(), blob_path.clone());
    let blob = tokio::task::spawn_blocking(move || -> std::io::Result<LayerBlob> {
        let mut tar = BufReader::new(File::open(&tar_in)?);
        let mut out = BufWriter::new(File::create(&blob_out)?);
        let blob = compress_layer(&mut tar, &mut out, compression)?;
        out.flush()?;
        Ok(blob)
    })
    .await
    .map_err(|e| BuildError::io("compressing a layer")(std::io::Error::other(e)))?
    .map_err(BuildError::io(format!(
        "compressing layer {} with {}",
        built.diff_id,
        compression.name()
    )))?;
    let file = File::open(&blob_path).map_err(BuildError::io("reading a compressed layer"))?;
    let pushed = client
        .push_file(file, compression.media_type(), &Progress::new())
        .await
        .map_err(BuildError::cache("storing a compressed layer"))?;
    chosen.uploaded += pushed.sent_bytes;
    let result = StepResult {
        layer: Some(pushed.digest),
        config: serde_json::to_vec(&Mapping::new(&built.diff_id, compression)).unwrap_or_default(),
        provenance: Provenance {
            builder: concat!("strata ", env!("CARGO_PKG_VERSION")).into(),
            instruction: format!(
                "compress layer {} with {}",
                built.diff_id,
                compression.name()
            ),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            ..Provenance::default()
        },
        seal: None,
    };
    let key = compressed_layer_key(&built.diff_id, compression);
    // Nothing is recorded without a key to sign it (the build says so once).
    let recorded = match client.trust().signing_key() {
        Some(_) => client.record_step(&key, &result).await.map(|_| ()),
        None => Ok(()),
    };
    match recorded {
        Ok(()) => {}
        // Another builder mapped this layer first, to other bytes (another
        // compressor version): this build keeps its own blob, the next
        // takes the cache's.
        Err(ClientError::Refused { message, .. }) => {
            tracing::warn!(diff_id = %built.diff_id, %message, "compressed layer already mapped")
        }
        // A token without `result-write` records nothing (the build says
        // so once); this build still outputs its own blob.
        Err(ClientError::PermissionDenied { message, .. }) => {
            tracing::debug!(diff_id = %built.diff_id, %message, "compressed layer not recorded")
        }
        Err(e) => return Err(BuildError::cache("recording a compressed layer")(e)),
    }
    Ok(BlobLayer {
        layer: LayerRef {
            diff_id: built.diff_id.clone(),
            blob,
        },
        source: LayerSource::File(blob_path),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_mapping_key_is_the_documented_text_and_depends_on_both_parts() {
        let diff_id = format!("sha256:{}", "ab".repeat(32));
        let key = compressed_layer_key(&diff_id, Compression::Gzip);
        let text = format!("strata compressed-layer v1\ncompression gzip\ndiff_id {diff_id}\n");
        assert_eq!(key, Digest::of(text.as_bytes()));
        assert_ne!(key, compressed_layer_key(&diff_id, Compression::Zstd));
        let other = format!("sha256:{}", "cd".repeat(32));
        assert_ne!(key, compressed_layer_key(&other, Compression::Gzip));
    }

    #[test]
    fn a_mapping_config_is_strict() {
        let m = Mapping::new("sha256:aa", Compression::Zstd);
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"compressed_layer":{"compression":"zstd","diff_id":"sha256:aa"}}"#
        );
        let back: Mapping = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, m);
        let extra = r#"{"compressed_layer":{"compression":"zstd","diff_id":"sha256:aa","x":1}}"#;
        assert!(serde_json::from_str::<Mapping>(extra).is_err());
    }
}
