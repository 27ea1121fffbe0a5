//! OCI image layout directories: the builder's output (`--output oci:DIR`)
//! and a possible base (`FROM oci:DIR[:TAG]`).
//!
//! A layout is `oci-layout`, `index.json` and `blobs/sha256/<hex>`. Blobs
//! are written to a temporary name and renamed, so a reader never sees half
//! a blob; a blob already present with the right size is not written again,
//! which is what lets a cached rebuild into the same directory move no
//! layer bytes. Every blob read is checked against its digest: config and
//! manifest here, layer blobs as they are extracted (`blob.rs`) or copied.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::image::{Compression, LayerBlob, LayerRef, MEDIA_TYPE_MANIFEST, RuntimeConfig};

/// The annotation naming a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{dir}: no image tagged {tag:?} (tags: {known})")]
    NoSuchTag {
        dir: PathBuf,
        tag: String,
        known: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, what: impl Into<String>) -> OciError {
    OciError::Invalid {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// An image read from a layout: its manifest digest, runtime config,
/// layers (each with the path of its blob, not yet read or checked) and
/// history.
#[derive(Clone, Debug)]
pub struct LayoutImage {
    pub manifest_digest: String,
    pub config: RuntimeConfig,
    pub layers: Vec<(LayerRef, PathBuf)>,
    pub history: Vec<crate::image::HistoryEntry>,
}

/// One OCI image layout directory.
#[derive(Clone, Debug)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens `dir`, creating an empty layout there if it has none.
    pub fn create(dir: &Path) -> Result<OciLayout, OciError> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = dir.join("index.json");
        if !index.exists() {
            write_atomic(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
        }
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing layout, failing clearly if `dir` is not one.
    pub fn open(dir: &Path) -> Result<OciLayout, OciError> {
        let marker = dir.join("oci-layout");
        let text = std::fs::read(&marker).map_err(io(&marker))?;
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| invalid(&marker, format!("not JSON: {e}")))?;
        if v["imageLayoutVersion"].as_str().is_none() {
            return Err(invalid(&marker, "no imageLayoutVersion"));
        }
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, OciError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| invalid(&self.dir, format!("unsupported blob digest {digest:?}")))?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    /// Whether the blob is present with `size` bytes.
    pub fn has_blob(&self, digest: &str, size: u64) -> bool {
        self.blob_path(digest)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() == size)
    }

    /// Writes a small blob (config, manifest) and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<String, OciError> {
        let digest = crate::image::sha256_digest(bytes);
        let path = self.blob_path(&digest)?;
        if !self.has_blob(&digest, bytes.len() as u64) {
            write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// A temporary file in the layout to stream a large blob into; hand it
    /// to [`OciLayout::commit_blob`] once written.
    pub fn temp_blob(&self) -> Result<tempfile::NamedTempFile, OciError> {
        let dir = self.dir.join("blobs").join("sha256");
        tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(&dir)
            .map_err(io(&dir))
    }

    /// Moves a streamed blob into place after checking its digest.
    pub fn commit_blob(&self, file: tempfile::NamedTempFile, digest: &str) -> Result<(), OciError> {
        let found = sha256_of_file(file.path())?;
        if found != digest {
            return Err(invalid(
                file.path(),
                format!("blob should be {digest}, is {found}"),
            ));
        }
        let path = self.blob_path(digest)?;
        file.persist(&path).map_err(|e| OciError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Points `tag` at the manifest (replacing what the tag named before;
    /// other tags stay).
    pub fn set_tag(&self, tag: &str, manifest_digest: &str, size: u64) -> Result<(), OciError> {
        let index_path = self.dir.join("index.json");
        let mut index = read_json(&index_path)?;
        let mut manifests: Vec<Value> = index["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m["annotations"][REF_NAME].as_str() != Some(tag))
            .collect();
        manifests.push(json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": manifest_digest,
            "size": size,
            "annotations": { REF_NAME: tag },
        }));
        index["schemaVersion"] = json!(2);
        index["manifests"] = Value::Array(manifests);
        write_atomic(
            &index_path,
            &serde_json::to_vec_pretty(&index).unwrap_or_default(),
        )
    }

    /// Reads the image tagged `tag` (or the only image, with no tag).
    pub fn read_image(&self, tag: Option<&str>) -> Result<LayoutImage, OciError> {
        let index_path = self.dir.join("index.json");
        let index = read_json(&index_path)?;
        let manifests = index["manifests"]
            .as_array()
            .ok_or_else(|| invalid(&index_path, "no manifests array"))?;
        let chosen = match tag {
            Some(t) => manifests
                .iter()
                .find(|m| m["annotations"][REF_NAME].as_str() == Some(t)),
            None if manifests.len() == 1 => manifests.first(),
            None => None,
        };
        let Some(descriptor) = chosen else {
            let known: Vec<&str> = manifests
                .iter()
                .filter_map(|m| m["annotations"][REF_NAME].as_str())
                .collect();
            return Err(OciError::NoSuchTag {
                dir: self.dir.clone(),
                tag: tag
                    .unwrap_or("(none: name one, the layout has several)")
                    .into(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        };
        let manifest_digest = descriptor["digest"]
            .as_str()
            .ok_or_else(|| invalid(&index_path, "manifest descriptor without digest"))?
            .to_string();
        let manifest = self.read_verified_json(&manifest_digest)?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| invalid(&self.dir, "manifest without config"))?;
        let config = self.read_verified_json(config_digest)?;
        let layers = layers_of(&manifest, &config)
            .map_err(|what| invalid(&self.dir, format!("image {manifest_digest}: {what}")))?
            .into_iter()
            .map(|layer| {
                let path = self.blob_path(&layer.blob.digest)?;
                Ok((layer, path))
            })
            .collect::<Result<Vec<_>, OciError>>()?;
        Ok(LayoutImage {
            manifest_digest,
            config: runtime_config_of(&config["config"]),
            history: history_of(&config),
            layers,
        })
    }

    fn read_verified_json(&self, digest: &str) -> Result<Value, OciError> {
        let path = self.blob_path(digest)?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let found = crate::image::sha256_digest(&bytes);
        if found != digest {
            return Err(invalid(&path, format!("blob hashes to {found}")));
        }
        serde_json::from_slice(&bytes).map_err(|e| invalid(&path, format!("not JSON: {e}")))
    }
}

/// The layers of an image: each manifest descriptor (media type, digest,
/// size) paired with the config's `rootfs.diff_ids` entry at its place.
/// Plain, gzip and zstd layers in OCI's or Docker's media types are
/// accepted; a missing field, a count that differs or a digest that is
/// not `sha256:<64 hex>` is refused.
pub fn layers_of(manifest: &Value, config: &Value) -> Result<Vec<LayerRef>, String> {
    let descriptors = manifest["layers"]
        .as_array()
        .ok_or("the manifest has no layers array")?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or("the config has no rootfs.diff_ids array")?;
    if descriptors.len() != diff_ids.len() {
        return Err(format!(
            "the manifest lists {} layers and the config {} diff_ids",
            descriptors.len(),
            diff_ids.len()
        ));
    }
    descriptors
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(n, (d, diff_id))| {
            let n = n + 1;
            let media_type = d["mediaType"]
                .as_str()
                .ok_or(format!("layer {n} has no mediaType"))?;
            let compression =
                Compression::of_media_type(media_type).map_err(|e| format!("layer {n}: {e}"))?;
            let digest = d["digest"]
                .as_str()
                .filter(|s| is_sha256(s))
                .ok_or(format!("layer {n} has no sha256 digest"))?;
            let size = d["size"].as_u64().ok_or(format!("layer {n} has no size"))?;
            let diff_id = diff_id
                .as_str()
                .filter(|s| is_sha256(s))
                .ok_or(format!("diff_id {n} is not a sha256 digest"))?;
            Ok(LayerRef {
                diff_id: diff_id.to_owned(),
                blob: LayerBlob {
                    compression,
                    digest: digest.to_owned(),
                    size,
                },
            })
        })
        .collect()
}

/// Whether `s` is `sha256:` and 64 lower-case hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The history of an OCI image config, each entry's time, author and
/// comment kept as the image wrote them.
pub fn history_of(config: &Value) -> Vec<crate::image::HistoryEntry> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    config["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| crate::image::HistoryEntry {
            created: h["created"].as_str().map(str::to_owned),
            created_by: text(&h["created_by"]),
            author: text(&h["author"]),
            comment: text(&h["comment"]),
            empty_layer: h["empty_layer"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// The runtime config of an OCI image config's `config` object.
pub fn runtime_config_of(c: &Value) -> RuntimeConfig {
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
    };
    let mut exposed: Vec<String> = c["ExposedPorts"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    exposed.sort();
    RuntimeConfig {
        env: strings(&c["Env"]).unwrap_or_default(),
        workdir: c["WorkingDir"].as_str().unwrap_or_default().into(),
        user: c["User"].as_str().unwrap_or_default().into(),
        cmd: strings(&c["Cmd"]),
        entrypoint: strings(&c["Entrypoint"]),
        labels: c["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
        exposed_ports: exposed,
        shell: strings(&c["Shell"]).unwrap_or_default(),
        volumes: {
            let mut v: Vec<String> = c["Volumes"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            v.sort();
            v
        },
        stop_signal: c["StopSignal"].as_str().unwrap_or_default().into(),
        healthcheck: crate::image::HealthcheckConfig::from_json(&c["Healthcheck"]),
        // The author is the image's, not inherited by images built on it.
        author: String::new(),
    }
}

fn read_json(path: &Path) -> Result<Value, OciError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(path, format!("not JSON: {e}")))
}

/// Writes `bytes` to a temporary file beside `path` and renames it over.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OciError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.persist(path).map_err(|e| OciError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// `sha256:<hex>` of a file's content.
pub fn sha256_of_file(path: &Path) -> Result<String, OciError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(format!("sha256:{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::image::{HistoryEntry, MEDIA_TYPE_LAYER_GZIP, encode_image, sha256_digest};

    #[test]
    fn an_image_written_to_a_layout_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        let layer = b"not really a tar".to_vec();
        let mut tmp = layout.temp_blob().unwrap();
        tmp.write_all(&layer).unwrap();
        let layer_ref = LayerRef {
            diff_id: sha256_digest(b"the tar inside"),
            blob: LayerBlob {
                compression: Compression::Gzip,
                digest: sha256_digest(&layer),
                size: layer.len() as u64,
            },
        };
        layout.commit_blob(tmp, &layer_ref.blob.digest).unwrap();
        let mut config = RuntimeConfig::default();
        config.set_env("PATH", "/bin");
        config.workdir = "/app".into();
        let history = [
            HistoryEntry {
                created: Some("2021-05-06T07:08:09Z".into()),
                created_by: "/bin/sh -c #(nop) ADD file:abc in /".into(),
                author: "someone".into(),
                comment: "debuerreotype 0.10".into(),
                empty_layer: false,
            },
            HistoryEntry::step("COPY . /app", true),
        ];
        let (c, m) = encode_image(&config, std::slice::from_ref(&layer_ref), &history, 0);
        layout.put_blob(&c.bytes).unwrap();
        layout.put_blob(&m.bytes).unwrap();
        layout
            .set_tag("v1", &m.digest, m.bytes.len() as u64)
            .unwrap();
        layout
            .set_tag("v1", &m.digest, m.bytes.len() as u64)
            .unwrap();

        let image = OciLayout::open(dir.path())
            .unwrap()
            .read_image(Some("v1"))
            .unwrap();
        assert_eq!(image.manifest_digest, m.digest);
        assert_eq!(image.config, config);
        assert_eq!(image.layers[0].0, layer_ref);
        // The base's entry keeps its own time; the step's takes the image's.
        let mut expected = history.to_vec();
        expected[1].created = Some("1970-01-01T00:00:00Z".into());
        assert_eq!(image.history, expected);
        // Re-tagging replaced the entry instead of adding one.
        let index = read_json(&dir.path().join("index.json")).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert!(matches!(
            layout.read_image(Some("v2")),
            Err(OciError::NoSuchTag { .. })
        ));
    }

    #[test]
    fn docker_and_oci_layer_media_types_are_read_and_others_refused() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let config = json!({"rootfs": {"diff_ids": [digest('a'), digest('b'), digest('c')]}});
        let manifest = json!({"layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": digest('1'), "size": 1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": digest('2'), "size": 2},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest('3'), "size": 3},
        ]});
        let layers = layers_of(&manifest, &config).unwrap();
        let kinds: Vec<Compression> = layers.iter().map(|l| l.blob.compression).collect();
        assert_eq!(
            kinds,
            [Compression::Gzip, Compression::Zstd, Compression::None]
        );
        assert_eq!(layers[1].diff_id, digest('b'));
        assert_eq!(layers[1].blob.digest, digest('2'));

        let one = |layer: Value, diff_id: Value| {
            layers_of(
                &json!({"layers": [layer]}),
                &json!({"rootfs": {"diff_ids": [diff_id]}}),
            )
            .unwrap_err()
        };
        let good = json!({"mediaType": MEDIA_TYPE_LAYER_GZIP, "digest": digest('1'), "size": 1});
        let cases = [
            (
                json!({"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": digest('1'), "size": 1}),
                json!(digest('a')),
                "non-distributable",
            ),
            (
                json!({"mediaType": "application/x-bzip2", "digest": digest('1'), "size": 1}),
                json!(digest('a')),
                "not a layer tar",
            ),
            (
                json!({"mediaType": MEDIA_TYPE_LAYER_GZIP, "digest": "sha256:../../etc", "size": 1}),
                json!(digest('a')),
                "no sha256 digest",
            ),
            (
                json!({"mediaType": MEDIA_TYPE_LAYER_GZIP, "digest": digest('1')}),
                json!(digest('a')),
                "no size",
            ),
            (good.clone(), json!("md5:abc"), "diff_id 1"),
        ];
        for (layer, diff_id, expected) in cases {
            let err = one(layer, diff_id);
            assert!(err.contains(expected), "expected {expected:?}: {err}");
        }
        let err = layers_of(
            &json!({"layers": [good]}),
            &json!({"rootfs": {"diff_ids": []}}),
        )
        .unwrap_err();
        assert!(err.contains("1 layers and the config 0"), "{err}");
    }

    #[test]
    fn a_blob_that_does_not_match_its_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        let mut tmp = layout.temp_blob().unwrap();
        tmp.write_all(b"abc").unwrap();
        let err = layout.commit_blob(tmp, &sha256_digest(b"xyz")).unwrap_err();
        assert!(err.to_string().contains("should be"), "{err}");
        assert!(OciLayout::open(&dir.path().join("nope")).is_err());
    }
}
