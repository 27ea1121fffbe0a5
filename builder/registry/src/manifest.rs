//! Manifests, indexes and configs as this client accepts them: OCI and
//! Docker schema 2 media types (schema 1 refused), indexes resolved to one
//! platform, layer media types mapped to their compression, and the
//! config's `diff_ids` paired with the layers. Pure functions over bytes
//! already fetched; nothing here does I/O.

use oci_client::manifest::{OciImageIndex, OciImageManifest};
use serde::Deserialize;

use crate::digest::BlobDigest;
use crate::error::RegistryError;
use crate::platform::Platform;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 manifests: asked for only to refuse them by name.
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` list for manifest requests.
pub(crate) const ACCEPTED_MANIFEST_TYPES: [&str; 6] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1[0],
    DOCKER_SCHEMA1[1],
];

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Layer media types this client accepts, with their compression.
const LAYER_TYPES: [(&str, Compression); 5] = [
    ("application/vnd.oci.image.layer.v1.tar", Compression::None),
    (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        Compression::None,
    ),
];

/// The compression of a layer media type, or `None` if it is not a layer
/// type this client accepts.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    LAYER_TYPES
        .iter()
        .find(|(name, _)| *name == media_type)
        .map(|(_, compression)| *compression)
}

/// A content descriptor: what a manifest says about one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's SHA-256.
    pub digest: BlobDigest,
    /// The blob's size in bytes.
    pub size: u64,
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob as the registry holds it (compressed, usually).
    pub descriptor: Descriptor,
    /// Its compression, from the media type.
    pub compression: Compression,
    /// The SHA-256 of the uncompressed tar, from the config's `diff_ids`.
    pub diff_id: BlobDigest,
}

/// What a fetched manifest turned out to be.
pub(crate) enum ManifestKind {
    /// A single-platform image manifest.
    Image(Box<OciImageManifest>),
    /// An index / manifest list.
    Index(OciImageIndex),
}

/// The part of `schemaVersion`/`mediaType` every manifest has.
#[derive(Deserialize)]
struct Versioned {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
}

/// Parses a manifest body, using the body's `mediaType` or else the
/// `Content-Type` the registry sent.
pub(crate) fn parse_manifest(
    image: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<ManifestKind, RegistryError> {
    let malformed = |reason: String| RegistryError::Malformed {
        image: image.to_owned(),
        what: "manifest",
        reason,
    };
    let header_type = content_type.map(|t| t.split(';').next().unwrap_or(t).trim().to_owned());
    if header_type
        .as_deref()
        .is_some_and(|t| DOCKER_SCHEMA1.contains(&t))
    {
        return Err(RegistryError::Schema1 {
            image: image.to_owned(),
        });
    }
    let versioned: Versioned =
        serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON ({e})")))?;
    match versioned.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(RegistryError::Schema1 {
                image: image.to_owned(),
            });
        }
        other => return Err(malformed(format!("schemaVersion is {other:?}, expected 2"))),
    }
    let media_type = versioned
        .media_type
        .or(header_type)
        .ok_or_else(|| malformed("it names no media type and the registry sent none".to_owned()))?;
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => serde_json::from_slice(body)
            .map(|m| ManifestKind::Image(Box::new(m)))
            .map_err(|e| malformed(e.to_string())),
        OCI_INDEX | DOCKER_MANIFEST_LIST => serde_json::from_slice(body)
            .map(ManifestKind::Index)
            .map_err(|e| RegistryError::Malformed {
                image: image.to_owned(),
                what: "image index",
                reason: e.to_string(),
            }),
        other if DOCKER_SCHEMA1.contains(&other) => Err(RegistryError::Schema1 {
            image: image.to_owned(),
        }),
        other => Err(RegistryError::UnexpectedMediaType {
            image: image.to_owned(),
            what: "manifest".to_owned(),
            media_type: other.to_owned(),
            expected: [
                OCI_MANIFEST,
                OCI_INDEX,
                DOCKER_MANIFEST,
                DOCKER_MANIFEST_LIST,
            ]
            .join(", "),
        }),
    }
}

/// The index entry for `platform`, or an error listing what the index has.
pub(crate) fn select_platform(
    image: &str,
    index: &OciImageIndex,
    platform: &Platform,
) -> Result<Descriptor, RegistryError> {
    let entry = index.manifests.iter().find(|entry| {
        entry.platform.as_ref().is_some_and(|p| {
            platform.matches(
                &p.os.to_string(),
                &p.architecture.to_string(),
                p.variant.as_deref(),
            )
        })
    });
    let Some(entry) = entry else {
        let mut available: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|entry| entry.platform.as_ref())
            .map(|p| {
                let mut name = format!("{}/{}", p.os, p.architecture);
                if let Some(variant) = &p.variant {
                    name.push('/');
                    name.push_str(variant);
                }
                name
            })
            .filter(|name| name != "unknown/unknown")
            .collect();
        available.dedup();
        return Err(RegistryError::PlatformMissing {
            image: image.to_owned(),
            wanted: platform.to_string(),
            available: if available.is_empty() {
                "no platforms at all".to_owned()
            } else {
                available.join(", ")
            },
        });
    };
    descriptor(
        image,
        "image index entry",
        &entry.media_type,
        &entry.digest,
        entry.size,
    )
}

/// A checked descriptor from the raw fields of a manifest.
pub(crate) fn descriptor(
    image: &str,
    what: &'static str,
    media_type: &str,
    digest: &str,
    size: i64,
) -> Result<Descriptor, RegistryError> {
    let malformed = |reason: String| RegistryError::Malformed {
        image: image.to_owned(),
        what,
        reason,
    };
    let digest = BlobDigest::parse(digest).map_err(malformed)?;
    let size = u64::try_from(size)
        .map_err(|_| malformed(format!("blob {digest} has negative size {size}")))?;
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
    })
}

/// The config and layer descriptors of an image manifest, each checked
/// (digest form, size, media type).
pub(crate) fn image_descriptors(
    image: &str,
    manifest: &OciImageManifest,
) -> Result<(Descriptor, Vec<(Descriptor, Compression)>), RegistryError> {
    let config = descriptor(
        image,
        "manifest",
        &manifest.config.media_type,
        &manifest.config.digest,
        manifest.config.size,
    )?;
    if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
        return Err(RegistryError::UnexpectedMediaType {
            image: image.to_owned(),
            what: "config".to_owned(),
            media_type: config.media_type,
            expected: format!("{OCI_CONFIG}, {DOCKER_CONFIG}"),
        });
    }
    let layers = manifest
        .layers
        .iter()
        .map(|layer| {
            let descriptor = descriptor(
                image,
                "manifest",
                &layer.media_type,
                &layer.digest,
                layer.size,
            )?;
            let compression = layer_compression(&descriptor.media_type).ok_or_else(|| {
                RegistryError::UnexpectedMediaType {
                    image: image.to_owned(),
                    what: format!("layer {}", descriptor.digest),
                    media_type: descriptor.media_type.clone(),
                    expected: LAYER_TYPES
                        .iter()
                        .map(|(t, _)| *t)
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?;
            Ok((descriptor, compression))
        })
        .collect::<Result<Vec<_>, RegistryError>>()?;
    Ok((config, layers))
}

/// The fields of an image config this client needs.
#[derive(Deserialize)]
struct ConfigHead {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// Pairs layers with the config's `diff_ids` and checks the config is for
/// `platform`.
pub(crate) fn layers_with_diff_ids(
    image: &str,
    config: &[u8],
    layers: Vec<(Descriptor, Compression)>,
    platform: &Platform,
) -> Result<Vec<Layer>, RegistryError> {
    let malformed = |reason: String| RegistryError::Malformed {
        image: image.to_owned(),
        what: "config",
        reason,
    };
    let head: ConfigHead = serde_json::from_slice(config).map_err(|e| malformed(e.to_string()))?;
    if !platform.matches(&head.os, &head.architecture, head.variant.as_deref()) {
        let mut found = format!("{}/{}", head.os, head.architecture);
        if let Some(variant) = &head.variant {
            found.push('/');
            found.push_str(variant);
        }
        return Err(RegistryError::WrongPlatform {
            image: image.to_owned(),
            wanted: platform.to_string(),
            found,
        });
    }
    if head.rootfs.kind != "layers" {
        return Err(malformed(format!(
            "rootfs.type is `{}`, expected `layers`",
            head.rootfs.kind
        )));
    }
    if head.rootfs.diff_ids.len() != layers.len() {
        return Err(malformed(format!(
            "it lists {} diff_ids for the manifest's {} layers",
            head.rootfs.diff_ids.len(),
            layers.len()
        )));
    }
    layers
        .into_iter()
        .zip(head.rootfs.diff_ids)
        .map(|((descriptor, compression), diff_id)| {
            Ok(Layer {
                descriptor,
                compression,
                diff_id: BlobDigest::parse(&diff_id).map_err(malformed)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema1_manifests_are_refused_by_name() {
        let body = br#"{"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}"#;
        let err = parse_manifest(
            "x:y",
            body,
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
        );
        assert!(matches!(err, Err(RegistryError::Schema1 { .. })));
        let err = parse_manifest("x:y", body, Some("application/json"));
        assert!(matches!(err, Err(RegistryError::Schema1 { .. })));
    }

    #[test]
    fn hostile_manifests_are_refused_with_a_reason() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"schemaVersion\": 3}",
            b"{\"schemaVersion\": 2}",
            b"{\"schemaVersion\": 2, \"mediaType\": \"text/html\"}",
            b"{\"schemaVersion\": 2, \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\", \"config\": 5}",
        ] {
            let result = parse_manifest("img", body, None);
            let message = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("img"), "{message}");
        }
    }

    #[test]
    fn layer_media_types_map_to_their_compression() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            None
        );
    }

    #[test]
    fn descriptors_with_negative_sizes_or_bad_digests_are_refused() {
        assert!(descriptor("i", "manifest", "t", "sha256:00", 1).is_err());
        let ok = BlobDigest::of(b"x").to_string();
        assert!(descriptor("i", "manifest", "t", &ok, -1).is_err());
        assert!(descriptor("i", "manifest", "t", &ok, 1).is_ok());
    }
}
