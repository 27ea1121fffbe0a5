//! OCI image layout directories: the builder's output (`--output oci:DIR`)
//! and a possible base (`FROM oci:DIR[:TAG]`).
//!
//! A layout is `oci-layout`, `index.json` and `blobs/sha256/<hex>`. Blobs
//! are written to a temporary name and renamed, so a reader never sees half
//! a blob; a blob already present with the right size is not written again,
//! which is what lets a cached rebuild into the same directory move no
//! layer bytes. Every blob read is checked against its digest.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::image::{LayerRef, MEDIA_TYPE_MANIFEST, RuntimeConfig};

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
/// layers (as blob paths) and history length.
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
        let mut layers = Vec::new();
        for l in manifest["layers"].as_array().into_iter().flatten() {
            let media = l["mediaType"].as_str().unwrap_or_default();
            if media.contains("gzip") || media.contains("zstd") {
                return Err(invalid(
                    &self.dir,
                    format!("compressed base layers ({media}) are not supported yet"),
                ));
            }
            let digest = l["digest"]
                .as_str()
                .ok_or_else(|| invalid(&self.dir, "layer without digest"))?;
            layers.push((
                LayerRef {
                    sha256: digest.to_string(),
                    size: l["size"].as_u64().unwrap_or(0),
                },
                self.blob_path(digest)?,
            ));
        }
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

/// The history of an OCI image config.
pub fn history_of(config: &Value) -> Vec<crate::image::HistoryEntry> {
    config["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| crate::image::HistoryEntry {
            created_by: h["created_by"].as_str().unwrap_or_default().into(),
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
    use crate::image::{HistoryEntry, encode_image, sha256_digest};

    #[test]
    fn an_image_written_to_a_layout_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        let layer = b"not really a tar".to_vec();
        let mut tmp = layout.temp_blob().unwrap();
        tmp.write_all(&layer).unwrap();
        let layer_ref = LayerRef {
            sha256: sha256_digest(&layer),
            size: layer.len() as u64,
        };
        layout.commit_blob(tmp, &layer_ref.sha256).unwrap();
        let mut config = RuntimeConfig::default();
        config.set_env("PATH", "/bin");
        config.workdir = "/app".into();
        let history = [HistoryEntry {
            created_by: "COPY . /app".into(),
            empty_layer: false,
        }];
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
        assert_eq!(image.history, history);
        // Re-tagging replaced the entry instead of adding one.
        let index = read_json(&dir.path().join("index.json")).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert!(matches!(
            layout.read_image(Some("v2")),
            Err(OciError::NoSuchTag { .. })
        ));
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
