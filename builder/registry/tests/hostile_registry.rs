//! Against a hostile registry whose every answer the test writes: wrong
//! digests, truncated and oversized bodies, huge manifests, malformed auth
//! challenges, indexes without the wanted platform, schema 1. Each is
//! refused with an error naming the image, and nothing unverified is kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use strata_dockerfile::ImageRef;
use strata_registry::{BlobDigest, RegistryClient, RegistryError, RegistryOptions};
use support::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A well-formed one-layer image, served by [`serve_image`].
struct Fixture {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let (layer, diff_id) = gzip_layer(&[("file", "the real layer contents\n")]);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
        }))
        .unwrap();
        Fixture {
            manifest,
            config,
            layer,
        }
    }
}

/// Serves `fixture` honestly, except that the layer blob is answered by
/// `layer_reply`.
async fn serve_image(
    fixture: Fixture,
    layer_reply: impl Fn(&[u8]) -> Reply + Send + Sync + 'static,
) -> HostileRegistry {
    let fixture = Arc::new(fixture);
    HostileRegistry::start(move |request, _| {
        let blob = |digest: &str| request.path.ends_with(&format!("/blobs/{digest}"));
        if request.path == "/v2/" {
            Reply::ok("application/json", b"{}".to_vec())
        } else if request.path.contains("/manifests/") {
            Reply::ok(OCI_MANIFEST, fixture.manifest.clone())
        } else if blob(&sha256(&fixture.config)) {
            Reply::ok("application/octet-stream", fixture.config.clone())
        } else if blob(&sha256(&fixture.layer)) {
            layer_reply(&fixture.layer)
        } else {
            Reply::status(404)
        }
    })
    .await
}

fn client() -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        docker_config: Some("/nonexistent/strata-test/config.json".into()),
        ..RegistryOptions::default()
    })
    .unwrap()
}

fn name(server: &HostileRegistry) -> String {
    format!("{}/library/hostile:1", server.addr)
}

/// Fetches the one layer into a file; returns the error and whether the
/// file exists afterwards.
async fn fetch_layer(server: &HostileRegistry) -> (RegistryError, bool) {
    let client = client();
    let resolved = client
        .resolve(&ImageRef::parse(&name(server)).unwrap())
        .await
        .unwrap();
    let dir = tempdir();
    let path = dir.path().join("layer");
    let err = client
        .fetch_blob_to_file(&resolved, &resolved.layers[0].descriptor, &path)
        .await
        .unwrap_err();
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    (err, path.exists() || leftovers > 0)
}

#[tokio::test]
async fn a_blob_with_the_wrong_digest_is_refused_and_nothing_is_kept() {
    let server = serve_image(Fixture::new(), |layer| {
        let mut wrong = layer.to_vec();
        let last = wrong.len() - 1;
        wrong[last] ^= 0xff;
        Reply::ok("application/octet-stream", wrong)
    })
    .await;
    let (err, kept) = fetch_layer(&server).await;
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&name(&server)) && message.contains("arrived with digest"),
        "{message}"
    );
    assert!(!kept, "a file was left behind");
}

#[tokio::test]
async fn a_wrong_blob_reaches_a_stream_consumer_as_an_error_not_an_end() {
    use futures_util::StreamExt as _;
    let server = serve_image(Fixture::new(), |layer| {
        let mut wrong = layer.to_vec();
        wrong[0] ^= 0xff;
        Reply::ok("application/octet-stream", wrong)
    })
    .await;
    let client = client();
    let resolved = client
        .resolve(&ImageRef::parse(&name(&server)).unwrap())
        .await
        .unwrap();
    let mut stream = client
        .open_blob(&resolved, &resolved.layers[0].descriptor)
        .await
        .unwrap();
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(Err(RegistryError::DigestMismatch { .. }))),
        "{last:?}"
    );
}

#[tokio::test]
async fn a_truncated_blob_is_refused_naming_image_and_digest() {
    let server = serve_image(Fixture::new(), |layer| Reply {
        cut_after: Some(layer.len() / 2),
        ..Reply::ok("application/octet-stream", layer.to_vec())
    })
    .await;
    let (err, kept) = fetch_layer(&server).await;
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&name(&server)) && message.contains("sha256:"),
        "{message}"
    );
    assert!(!kept, "a file was left behind");
}

#[tokio::test]
async fn a_short_blob_without_a_length_is_refused_as_short() {
    let server = serve_image(Fixture::new(), |layer| Reply {
        cut_after: Some(layer.len() - 3),
        no_length: true,
        ..Reply::ok("application/octet-stream", layer.to_vec())
    })
    .await;
    let (err, kept) = fetch_layer(&server).await;
    assert!(
        matches!(err, RegistryError::SizeMismatch { received, expected, .. } if received + 3 == expected),
        "{err}"
    );
    assert!(!kept);
}

#[tokio::test]
async fn a_blob_longer_than_its_descriptor_is_refused() {
    let server = serve_image(Fixture::new(), |layer| {
        let mut longer = layer.to_vec();
        longer.extend_from_slice(&[0; 4096]);
        Reply {
            no_length: true,
            ..Reply::ok("application/octet-stream", longer)
        }
    })
    .await;
    let (err, kept) = fetch_layer(&server).await;
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("more than its descriptor says"),
        "{err}"
    );
    assert!(!kept);
}

#[tokio::test]
async fn a_huge_manifest_is_refused_whether_announced_or_not() {
    for no_length in [false, true] {
        let server = HostileRegistry::start(move |request, _| {
            if request.path == "/v2/" {
                return Reply::ok("application/json", b"{}".to_vec());
            }
            let mut body = br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "annotations": {"x": ""#.to_vec();
            body.resize(6 << 20, b'a');
            Reply {
                no_length,
                ..Reply::ok(OCI_MANIFEST, body)
            }
        })
        .await;
        let err = client()
            .resolve(&ImageRef::parse(&name(&server)).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::TooLarge {
                    what: "manifest",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&name(&server)), "{err}");
    }
}

#[tokio::test]
async fn a_401_with_a_malformed_challenge_says_how_to_log_in() {
    let server = HostileRegistry::start(|_, _| {
        Reply::status(401).header("WWW-Authenticate", "Bearer realm=\"unterminated, service=")
    })
    .await;
    let err = client()
        .resolve(&ImageRef::parse(&name(&server)).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    let message = err.to_string();
    for expected in [
        name(&server).as_str(),
        "docker login",
        "/nonexistent/strata-test/config.json",
        "no credentials",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing from: {message}"
        );
    }
}

#[tokio::test]
async fn the_anonymous_bearer_token_flow_is_followed() {
    let fixture = Arc::new(Fixture::new());
    let server = HostileRegistry::start(move |request, own| {
        let challenge = format!("Bearer realm=\"http://{own}/token\",service=\"hostile\"");
        if request.path.starts_with("/token?") {
            assert!(
                request
                    .path
                    .contains("scope=repository%3Alibrary%2Fhostile%3Apull"),
                "{}",
                request.path
            );
            return Reply::ok("application/json", br#"{"token": "t0ken"}"#.to_vec());
        }
        if request.header("Authorization") != Some("Bearer t0ken") {
            return Reply::status(401).header("WWW-Authenticate", &challenge);
        }
        if request.path.contains("/manifests/") {
            Reply::ok(OCI_MANIFEST, fixture.manifest.clone())
        } else if request.path.ends_with(&sha256(&fixture.config)) {
            Reply::ok("application/octet-stream", fixture.config.clone())
        } else if request.path.ends_with(&sha256(&fixture.layer)) {
            Reply::ok("application/octet-stream", fixture.layer.clone())
        } else {
            Reply::ok("application/json", b"{}".to_vec())
        }
    })
    .await;
    let client = client();
    let resolved = client
        .resolve(&ImageRef::parse(&name(&server)).unwrap())
        .await
        .unwrap();
    let mut layer = Vec::new();
    client
        .fetch_blob(&resolved, &resolved.layers[0].descriptor, &mut layer)
        .await
        .unwrap();
    assert_eq!(layer, Fixture::new().layer);
}

#[tokio::test]
async fn a_token_service_that_refuses_is_an_authorization_error() {
    let server = HostileRegistry::start(|request, own| {
        if request.path.starts_with("/token") {
            Reply::ok("application/json", b"<html>nope</html>".to_vec())
        } else {
            Reply::status(401).header(
                "WWW-Authenticate",
                &format!("Bearer realm=\"http://{own}/token\""),
            )
        }
    })
    .await;
    let err = client()
        .resolve(&ImageRef::parse(&name(&server)).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("token service"), "{err}");
}

#[tokio::test]
async fn a_manifest_list_without_linux_amd64_lists_what_it_has() {
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": sha256(b"a"), "size": 1,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": sha256(b"b"), "size": 1,
             "platform": {"os": "linux", "architecture": "ppc64le"}},
        ],
    }))
    .unwrap();
    let server = HostileRegistry::start(move |request, _| {
        if request.path == "/v2/" {
            Reply::ok("application/json", b"{}".to_vec())
        } else {
            Reply::ok(
                "application/vnd.docker.distribution.manifest.list.v2+json",
                list.clone(),
            )
        }
    })
    .await;
    let err = client()
        .resolve(&ImageRef::parse(&name(&server)).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::PlatformMissing { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("no linux/amd64 variant; it has: linux/arm64/v8, linux/ppc64le"),
        "{message}"
    );
}

#[tokio::test]
async fn a_manifest_that_does_not_match_its_pinned_digest_is_refused() {
    let fixture = Fixture::new();
    let server = serve_image(fixture, |layer| {
        Reply::ok("application/octet-stream", layer.to_vec())
    })
    .await;
    let pinned = format!(
        "{}/library/hostile@{}",
        server.addr,
        sha256(b"another manifest")
    );
    let err = client()
        .resolve(&ImageRef::parse(&pinned).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::DigestMismatch {
                what: "manifest",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_schema1_manifest_is_refused_clearly() {
    let server = HostileRegistry::start(|request, _| {
        if request.path == "/v2/" {
            Reply::ok("application/json", b"{}".to_vec())
        } else {
            Reply::ok(
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                br#"{"schemaVersion": 1, "name": "library/hostile", "tag": "1", "fsLayers": []}"#
                    .to_vec(),
            )
        }
    })
    .await;
    let err = client()
        .resolve(&ImageRef::parse(&name(&server)).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Schema1 { .. }), "{err}");
    assert!(err.to_string().contains("schema 1"), "{err}");
}

#[tokio::test]
async fn a_layer_of_an_unknown_media_type_is_refused_naming_it() {
    let mut fixture = Fixture::new();
    fixture.manifest = String::from_utf8(fixture.manifest)
        .unwrap()
        .replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/x-evil",
        )
        .into_bytes();
    let server = serve_image(fixture, |layer| {
        Reply::ok("application/octet-stream", layer.to_vec())
    })
    .await;
    let err = client()
        .resolve(&ImageRef::parse(&name(&server)).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::UnexpectedMediaType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("application/x-evil"), "{err}");
}

/// `ADD <url>` sources: a server that sends more than the cap, or bytes
/// that are not the pinned checksum, is refused, and the target path never
/// appears (nothing partial, nothing wrong).
#[tokio::test]
async fn a_url_source_over_the_cap_or_off_its_checksum_leaves_no_file() {
    let body = vec![7u8; 4096];
    let served = body.clone();
    let server =
        HostileRegistry::start(move |_, _| Reply::ok("application/octet-stream", served.clone()))
            .await;
    let url = format!("http://{}/tool", server.addr);
    let dir = tempdir();
    let target = dir.path().join("tool");

    let pinned = BlobDigest::parse(&sha256(&body)).unwrap();
    let err = strata_registry::fetch_url_to_file(&url, &pinned, &target, 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, strata_registry::UrlError::TooLarge { limit: 1000, .. }),
        "{err}"
    );
    assert!(!target.exists());

    let other = BlobDigest::parse(&sha256(b"something else")).unwrap();
    let err = strata_registry::fetch_url_to_file(&url, &other, &target, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not what --checksum pins"),
        "{err}"
    );
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temporary left"
    );

    // The right bytes under the cap arrive whole.
    let size = strata_registry::fetch_url_to_file(&url, &pinned, &target, 1 << 20)
        .await
        .unwrap();
    assert_eq!((size, std::fs::read(&target).unwrap()), (4096, body));
}
