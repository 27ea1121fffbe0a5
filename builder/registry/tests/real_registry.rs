//! Against a real registry (Debian's `docker-registry`) filled by skopeo:
//! resolve by tag and by digest, fetch verified blobs, resolve an index per
//! platform, push an image back and read it with skopeo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use strata_dockerfile::ImageRef;
use strata_registry::{
    BlobDigest, Compression, Descriptor, ImageToPush, LayerToPush, Platform, RegistryClient,
    RegistryError, RegistryOptions,
};
use support::*;

fn client() -> RegistryClient {
    client_with(RegistryOptions::default())
}

fn client_with(options: RegistryOptions) -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        // No credentials from the machine running the tests.
        docker_config: Some("/nonexistent/strata-test/config.json".into()),
        ..options
    })
    .unwrap()
}

fn image(text: &str) -> ImageRef {
    ImageRef::parse(text).unwrap()
}

/// A registry holding `library/base:v1`: two gzip layers, linux/amd64.
fn registry_with_base() -> (Registry, WrittenImage) {
    let registry = Registry::start();
    let layout = tempdir();
    let written = write_image(
        layout.path(),
        "linux",
        "amd64",
        &[
            &[("etc/os-release", "ID=strata-test\n")],
            &[("app/hello.txt", "hello\n")],
        ],
    );
    write_index(
        layout.path(),
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        &written.manifest_digest,
        written.manifest.len(),
    );
    skopeo_push(layout.path(), "v1", &registry.addr, "library/base:v1");
    (registry, written)
}

#[tokio::test]
async fn an_image_resolves_by_tag_and_by_digest_to_the_same_verified_manifest() {
    let (registry, written) = registry_with_base();
    let client = client();
    let by_tag = client
        .resolve(&image(&format!("{}/library/base:v1", registry.addr)))
        .await
        .unwrap();
    assert_eq!(by_tag.manifest_digest.to_string(), written.manifest_digest);
    assert_eq!(by_tag.manifest, written.manifest);
    assert_eq!(by_tag.config, written.config);
    assert_eq!(
        by_tag.config_descriptor.digest.to_string(),
        written.config_digest
    );
    assert_eq!(by_tag.index_digest, None);
    let layers: Vec<(String, u64, String)> = by_tag
        .layers
        .iter()
        .map(|l| {
            (
                l.descriptor.digest.to_string(),
                l.descriptor.size,
                l.diff_id.to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, u64, String)> = written
        .layers
        .iter()
        .map(|(blob, digest, diff_id)| (digest.clone(), blob.len() as u64, diff_id.clone()))
        .collect();
    assert_eq!(layers, expected);
    assert!(
        by_tag
            .layers
            .iter()
            .all(|l| l.compression == Compression::Gzip)
    );
    assert_eq!(
        by_tag.pinned_name(),
        format!("{}/library/base@{}", registry.addr, written.manifest_digest)
    );

    let pinned = format!("{}/library/base@{}", registry.addr, written.manifest_digest);
    let by_digest = client.resolve(&image(&pinned)).await.unwrap();
    assert_eq!(by_digest.manifest_digest, by_tag.manifest_digest);
    assert_eq!(by_digest.layers, by_tag.layers);
}

#[tokio::test]
async fn blobs_are_fetched_verified_into_a_writer_a_file_and_a_stream() {
    let (registry, written) = registry_with_base();
    let client = client();
    let resolved = client
        .resolve(&image(&format!("{}/library/base:v1", registry.addr)))
        .await
        .unwrap();
    let (blob, _, _) = &written.layers[0];
    let layer = &resolved.layers[0].descriptor;

    let mut into_memory = Vec::new();
    let size = client
        .fetch_blob(&resolved, layer, &mut into_memory)
        .await
        .unwrap();
    assert_eq!(size, blob.len() as u64);
    assert_eq!(&into_memory, blob);

    let dir = tempdir();
    let path = dir.path().join("layer.tar.gz");
    client
        .fetch_blob_to_file(&resolved, layer, &path)
        .await
        .unwrap();
    assert_eq!(&std::fs::read(&path).unwrap(), blob);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file is left"
    );

    use futures_util::TryStreamExt as _;
    let stream = client
        .open_blob(&resolved, &resolved.layers[1].descriptor)
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), written.layers[1].0);
}

#[tokio::test]
async fn a_blob_the_registry_lacks_is_not_found_naming_the_image() {
    let (registry, _) = registry_with_base();
    let client = client();
    let name = format!("{}/library/base:v1", registry.addr);
    let resolved = client.resolve(&image(&name)).await.unwrap();
    let absent = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
        digest: BlobDigest::of(b"never pushed"),
        size: 12,
    };
    let err = client
        .fetch_blob(&resolved, &absent, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
}

#[tokio::test]
async fn a_missing_tag_or_repository_is_not_found_naming_the_image() {
    let (registry, _) = registry_with_base();
    let client = client();
    for name in [
        format!("{}/library/base:v2", registry.addr),
        format!("{}/nobody/here", registry.addr),
    ] {
        let err = client.resolve(&image(&name)).await.unwrap_err();
        assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains(&name), "{err}");
    }
}

#[tokio::test]
async fn an_index_resolves_to_linux_amd64_by_default_and_to_another_platform_on_request() {
    let registry = Registry::start();
    let layout = tempdir();
    let amd64 = write_image(layout.path(), "linux", "amd64", &[&[("arch", "amd64\n")]]);
    let arm64 = write_image(layout.path(), "linux", "arm64", &[&[("arch", "arm64\n")]]);
    let (index, index_digest) = write_platform_index(
        layout.path(),
        &[("linux", "arm64", &arm64), ("linux", "amd64", &amd64)],
    );
    write_index(
        layout.path(),
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &index_digest,
        index.len(),
    );
    skopeo_push(layout.path(), "multi", &registry.addr, "library/multi:1");
    let name = image(&format!("{}/library/multi:1", registry.addr));

    let default = client().resolve(&name).await.unwrap();
    assert_eq!(default.manifest_digest.to_string(), amd64.manifest_digest);
    assert_eq!(
        default.index_digest.as_ref().map(ToString::to_string),
        Some(index_digest.clone())
    );
    assert_eq!(default.layers[0].diff_id.to_string(), amd64.layers[0].2);

    let arm = client_with(RegistryOptions {
        platform: Platform::parse("linux/arm64").unwrap(),
        ..RegistryOptions::default()
    })
    .resolve(&name)
    .await
    .unwrap();
    assert_eq!(arm.manifest_digest.to_string(), arm64.manifest_digest);

    let err = client_with(RegistryOptions {
        platform: Platform::parse("linux/s390x").unwrap(),
        ..RegistryOptions::default()
    })
    .resolve(&name)
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, RegistryError::PlatformMissing { .. }),
        "{message}"
    );
    assert!(message.contains("linux/arm64, linux/amd64"), "{message}");
}

#[tokio::test]
async fn a_single_platform_image_for_another_platform_is_refused() {
    let registry = Registry::start();
    let layout = tempdir();
    let arm64 = write_image(layout.path(), "linux", "arm64", &[&[("arch", "arm64\n")]]);
    write_index(
        layout.path(),
        "arm",
        "application/vnd.oci.image.manifest.v1+json",
        &arm64.manifest_digest,
        arm64.manifest.len(),
    );
    skopeo_push(layout.path(), "arm", &registry.addr, "library/arm:1");
    let err = client()
        .resolve(&image(&format!("{}/library/arm:1", registry.addr)))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::WrongPlatform { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("is for linux/arm64, not linux/amd64"),
        "{err}"
    );
}

#[tokio::test]
async fn a_pushed_image_reads_back_with_skopeo_and_a_second_push_uploads_nothing() {
    let (registry, base) = registry_with_base();
    let client = client();
    let base_name = image(&format!("{}/library/base:v1", registry.addr));
    let resolved = client.resolve(&base_name).await.unwrap();

    // The image: the base's layers (mounted from its repository) plus one new.
    let dir = tempdir();
    let (new_blob, new_diff_id) = gzip_layer(&[("app/new.txt", "built by strata\n")]);
    let new_path = dir.path().join("new.tar.gz");
    std::fs::write(&new_path, &new_blob).unwrap();
    let mut layers: Vec<LayerToPush> = Vec::new();
    for (i, layer) in resolved.layers.iter().enumerate() {
        let path = dir.path().join(format!("base{i}.tar.gz"));
        client
            .fetch_blob_to_file(&resolved, &layer.descriptor, &path)
            .await
            .unwrap();
        layers.push(LayerToPush {
            descriptor: layer.descriptor.clone(),
            path: Some(path),
            mount_from: Some(base_name.clone()),
        });
    }
    let new_descriptor = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
        digest: BlobDigest::parse(&sha256(&new_blob)).unwrap(),
        size: new_blob.len() as u64,
    };
    layers.push(LayerToPush {
        descriptor: new_descriptor.clone(),
        path: Some(new_path),
        mount_from: None,
    });
    let mut diff_ids: Vec<String> = base.layers.iter().map(|(_, _, d)| d.clone()).collect();
    diff_ids.push(new_diff_id);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": l.descriptor.media_type, "digest": l.descriptor.digest.to_string(), "size": l.descriptor.size}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    let to_push = ImageToPush {
        manifest: manifest.clone(),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        config: config.clone(),
        layers,
    };
    let target = image(&format!("{}/team/app:v2", registry.addr));

    let report = client.push_image(&target, &to_push).await.unwrap();
    assert_eq!(report.manifest_digest.to_string(), sha256(&manifest));
    let base_digests: Vec<BlobDigest> = resolved
        .layers
        .iter()
        .map(|l| l.descriptor.digest.clone())
        .collect();
    assert_eq!(
        report.mounted, base_digests,
        "the base's layers are mounted, not uploaded"
    );
    assert_eq!(
        report.uploaded.len(),
        2,
        "the new layer and the config: {report:?}"
    );
    assert_eq!(
        report.bytes_uploaded,
        new_blob.len() as u64 + config.len() as u64
    );

    let reference = format!("docker://{}/team/app:v2", registry.addr);
    let raw = run(
        "skopeo",
        &["inspect", "--tls-verify=false", "--raw", &reference],
    );
    assert_eq!(
        raw, manifest,
        "the registry holds the manifest byte for byte"
    );
    let read_config = run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--config",
            "--raw",
            &reference,
        ],
    );
    assert_eq!(read_config, config);
    let out = tempdir();
    let oci = format!("oci:{}:v2", out.path().join("copy").display());
    run(
        "skopeo",
        &["copy", "--src-tls-verify=false", &reference, &oci],
    );
    let copied = out
        .path()
        .join("copy/blobs/sha256")
        .join(new_descriptor.digest.hex());
    assert_eq!(std::fs::read(copied).unwrap(), new_blob);

    // And Strata reads back what it pushed.
    let back = client.resolve(&target).await.unwrap();
    assert_eq!(back.manifest_digest, report.manifest_digest);
    assert_eq!(back.layers.len(), 3);

    let again = client.push_image(&target, &to_push).await.unwrap();
    assert!(
        again.uploaded.is_empty() && again.mounted.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.already_present.len(), 4);
    assert_eq!(again.bytes_uploaded, 0);
}

#[tokio::test]
async fn a_push_whose_manifest_does_not_match_its_blobs_is_refused_before_sending() {
    let (registry, base) = registry_with_base();
    let target = image(&format!("{}/team/bad:v1", registry.addr));
    let to_push = ImageToPush {
        manifest: base.manifest.clone(),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        config: b"{}".to_vec(),
        layers: Vec::new(),
    };
    let err = client().push_image(&target, &to_push).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let raw = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{}/team/bad:v1", registry.addr),
        ])
        .output()
        .unwrap();
    assert!(!raw.status.success(), "nothing was tagged");
}

#[tokio::test]
async fn an_unreachable_registry_is_a_clear_error_naming_the_image() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = format!("127.0.0.1:{port}/library/debian:bookworm");
    let err = client().resolve(&image(&name)).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&name) && message.contains("cannot reach registry"),
        "{message}"
    );
}
