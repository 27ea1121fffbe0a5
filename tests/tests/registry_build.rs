//! `FROM` a registry image, end to end: a real registry (Debian's
//! `docker-registry`) filled by skopeo, a real `strata serve` shared by two
//! builders with their own cache directories, real RUN steps, the output
//! unpacked by umoci.
//!
//! What is proved, and how, without trusting the builder's own counters:
//! the second builder fetches no layer from the registry (the registry's
//! copies of the layer blobs are deleted before it builds); a tag that moves
//! is a miss (the step runs again and sees the new base); a registry that
//! serves wrong bytes fails the build at the FROM line and leaves nothing
//! findable in the cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../builder/registry/tests/support/mod.rs"]
mod support;

use std::path::Path;

use serde_json::Value;
use strata_proto::v1::FindObjectRequest;
use strata_proto::v1::manifest_store_client::ManifestStoreClient;
use strata_tests::ServerProcess;
use strata_tests::builds::{build, build_json, context, need, oci_output, statuses, umoci_unpack};
use support::Registry;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Builds a busybox base whose `/etc/base-version` says `version` into an
/// OCI layout and pushes it to `registry` as `test/base:TAG` for each of
/// `tags`. Returns its manifest digest and layer digests.
fn push_base(registry: &Registry, version: &str, tags: &[&str]) -> (String, Vec<String>) {
    need("skopeo", "skopeo");
    let ctx = context(&format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /etc && echo {version} > /etc/base-version\n"
    ));
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("base");
    let report = build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&layout, "v1")],
    );
    let manifest_digest = report["manifest_digest"].as_str().unwrap().to_owned();
    for tag in tags {
        support::skopeo_push(&layout, "v1", &registry.addr, &format!("test/base:{tag}"));
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&layout, &manifest_digest)).unwrap()).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    (manifest_digest, layers)
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(&digest["sha256:".len()..])
}

/// Waits until the server's background verifier has proved every manifest
/// stored so far: only then are objects found by their SHA-256.
async fn settle(server: &ServerProcess) {
    strata_tests::settled_stats(&server.url).await;
}

/// What `FindObject` answers for a gzip layer blob named `digest`.
async fn cached_blob(server: &ServerProcess, digest: &str) -> bool {
    let mut manifests = ManifestStoreClient::connect(server.url.clone())
        .await
        .unwrap();
    let sha256 = strata_registry::BlobDigest::parse(digest)
        .unwrap()
        .to_bytes()
        .to_vec();
    let found = manifests
        .find_object(FindObjectRequest {
            blake3: Vec::new(),
            media_type: GZIP.into(),
            sha256,
        })
        .await
        .unwrap()
        .into_inner();
    !found.digest.is_empty()
}

fn read_file(rootfs: &Path, path: &str) -> String {
    std::fs::read_to_string(rootfs.join(path)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_base_is_pulled_through_the_shared_cache_and_a_second_builder_needs_no_layer_from_the_registry()
 {
    let registry = Registry::start();
    let (base, layers) = push_base(&registry, "v1", &["v1"]);
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let image = format!("{}/test/base:v1", registry.addr);
    let pinned = format!("{}/test/base@{base}", registry.addr);

    // Builder A: resolves, pins, fetches every layer from the registry and
    // leaves them in the shared cache.
    let (cache_a, out_a) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ctx_a = context(&format!(
        "FROM {image}\nRUN cat /etc/base-version > /seen-by-a\n"
    ));
    let a = build_json(
        cache_a.path(),
        ctx_a.path(),
        &[
            "--server",
            &server.url,
            "--output",
            &oci_output(&out_a.path().join("image"), "v1"),
        ],
    );
    assert_eq!(statuses(&a), ["executed"]);
    assert_eq!(a["base_images"], serde_json::json!([pinned]));
    assert!(a["registry_bytes"].as_u64().unwrap() > 0, "{a}");
    let rootfs = umoci_unpack(&out_a.path().join("image"), "v1", &out_a.path().join("b"));
    assert_eq!(read_file(&rootfs, "seen-by-a"), "v1\n");
    assert!(rootfs.join("bin/busybox").is_file());
    // The step's provenance names the base by its digest.
    let key: strata_proto::Digest = a["steps"][0]["key"].as_str().unwrap().parse().unwrap();
    let recorded = server.client().await.lookup_steps(&[key]).await.unwrap();
    let provenance = &recorded[0].as_ref().unwrap().provenance;
    assert_eq!(provenance.base_image, pinned);
    settle(&server).await;
    for layer in &layers {
        assert!(
            cached_blob(&server, layer).await,
            "layer {layer} is in the cache"
        );
    }

    // The registry loses its layer blobs (it keeps the manifest and
    // config): a builder that asked it for a layer would now fail.
    for layer in &layers {
        std::fs::remove_file(registry.blob_data(layer)).unwrap();
    }

    // Builder B, another cache directory on the same server, runs a step of
    // its own on the base (so it needs every base layer's bytes) and writes
    // the image out (so it needs every blob).
    let (cache_b, out_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ctx_b = context(&format!(
        "FROM {image}\nRUN cat /etc/base-version > /seen-by-b\n"
    ));
    let b = build_json(
        cache_b.path(),
        ctx_b.path(),
        &[
            "--server",
            &server.url,
            "--output",
            &oci_output(&out_b.path().join("image"), "v1"),
        ],
    );
    assert_eq!(statuses(&b), ["executed"]);
    assert_eq!(b["registry_bytes"], 0, "{b}");
    let rootfs = umoci_unpack(&out_b.path().join("image"), "v1", &out_b.path().join("b"));
    assert_eq!(read_file(&rootfs, "seen-by-b"), "v1\n");
    assert!(rootfs.join("bin/busybox").is_file());

    // And A's Dockerfile on B's machine is a hit.
    let again = build_json(cache_b.path(), ctx_a.path(), &["--server", &server.url]);
    assert_eq!(statuses(&again), ["cached"]);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_that_moves_is_a_cache_miss_and_a_digest_pins_the_old_image() {
    let registry = Registry::start();
    let (v1, _) = push_base(&registry, "v1", &["latest"]);
    let cache = tempfile::tempdir().unwrap();
    let dockerfile =
        |from: &str| context(&format!("FROM {from}\nRUN cat /etc/base-version > /seen\n"));
    let by_tag = format!("{}/test/base", registry.addr);

    let first = build_json(cache.path(), dockerfile(&by_tag).path(), &[]);
    assert_eq!(statuses(&first), ["executed"]);
    let again = build_json(cache.path(), dockerfile(&by_tag).path(), &[]);
    assert_eq!(statuses(&again), ["cached"]);

    let (v2, _) = push_base(&registry, "v2", &["latest"]);
    assert_ne!(v1, v2);
    // A dry run resolves the tag (a miss now) and fetches no layer.
    let plan = build_json(cache.path(), dockerfile(&by_tag).path(), &["--dry-run"]);
    assert_eq!(statuses(&plan), ["would_run"]);
    assert_eq!(plan["registry_bytes"], 0);

    let out = tempfile::tempdir().unwrap();
    let moved = build_json(
        cache.path(),
        dockerfile(&by_tag).path(),
        &["--output", &oci_output(&out.path().join("image"), "v1")],
    );
    assert_eq!(statuses(&moved), ["executed"]);
    assert_eq!(
        moved["base_images"],
        serde_json::json!([format!("{}/test/base@{v2}", registry.addr)])
    );
    let rootfs = umoci_unpack(&out.path().join("image"), "v1", &out.path().join("b"));
    assert_eq!(read_file(&rootfs, "seen"), "v2\n");

    // The old image, by digest, is the first build's step again.
    let pinned = build_json(
        cache.path(),
        dockerfile(&format!("{by_tag}@{v1}")).path(),
        &[],
    );
    assert_eq!(statuses(&pinned), ["cached"]);
    assert_eq!(pinned["steps"][0]["key"], first["steps"][0]["key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_serving_a_wrong_layer_fails_the_build_at_the_from_line_and_caches_nothing() {
    let registry = Registry::start();
    let (_, layers) = push_base(&registry, "v1", &["v1"]);
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    // The registry's copy of the last layer rots: same size, one bit off.
    let rotten = layers.last().unwrap();
    let path = registry.blob_data(rotten);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let ctx = context(&format!(
        "FROM {}/test/base:v1\nRUN cat /etc/base-version > /seen\n",
        registry.addr
    ));
    let output = oci_output(&out.path().join("image"), "v1");
    let failed = build(
        cache.path(),
        ctx.path(),
        &["--server", &server.url, "--output", &output],
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains("Dockerfile:1"), "{stderr}");
    assert!(stderr.contains(rotten.as_str()), "{stderr}");
    assert!(stderr.contains("digest"), "{stderr}");
    assert!(!out.path().join("image").exists(), "no image was written");
    settle(&server).await;
    assert!(
        !cached_blob(&server, rotten).await,
        "the bad blob is not cached"
    );

    // The registry heals; the same build now succeeds.
    std::fs::write(&path, &good).unwrap();
    let report = build_json(
        cache.path(),
        ctx.path(),
        &["--server", &server.url, "--output", &output],
    );
    assert_eq!(statuses(&report), ["executed"]);
    server.stop();
}

#[test]
fn an_unreachable_registry_or_unknown_image_is_a_clear_error_at_the_from_line() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    for (from, expect) in [
        // Nothing listens on the discard port.
        ("127.0.0.1:9/test/base:v1".to_owned(), "127.0.0.1:9"),
        (format!("{}/test/nothing:v1", registry.addr), "test/nothing"),
    ] {
        let ctx = context(&format!("FROM {from}\nRUN true\n"));
        let out = build(cache.path(), ctx.path(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{from}: {stderr}");
        assert!(stderr.contains("Dockerfile:1"), "{from}: {stderr}");
        assert!(stderr.contains(expect), "{from}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

        // A dry run never needs the registry: the image is shown as
        // unresolved, its steps as would run, and it exits 0.
        let out = build(cache.path(), ctx.path(), &["--dry-run", "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{from}: {stderr}");
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(statuses(&plan), ["would_run"], "{from}");
        assert_eq!(plan["base_images"], serde_json::json!(["unresolved"]));
        assert!(stderr.contains("a dry run goes on without it"), "{stderr}");
    }
}

/// `skopeo inspect --raw` of `docker://IMAGE`: the manifest as the registry
/// serves it.
fn registry_manifest(image: &str) -> Vec<u8> {
    support::run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ],
    )
}

#[test]
fn an_image_pushed_to_a_registry_is_read_back_by_skopeo_and_umoci_and_a_second_push_sends_no_layer()
{
    let registry = Registry::start();
    push_base(&registry, "v1", &["v1"]);
    let cache = tempfile::tempdir().unwrap();
    let ctx = context(&format!(
        "FROM {}/test/base:v1\nRUN cat /etc/base-version > /seen && echo app > /app.txt\n",
        registry.addr
    ));
    let target = format!("{}/test/app:v1", registry.addr);
    let pushed = build_json(
        cache.path(),
        ctx.path(),
        &["--output", &format!("registry://{target}")],
    );
    let digest = pushed["manifest_digest"].as_str().unwrap();
    assert_eq!(
        pushed["pushed"],
        format!("{}/test/app@{digest}", registry.addr)
    );
    // The registry serves exactly the manifest the build made.
    let served = registry_manifest(&target);
    assert_eq!(support::sha256(&served), digest);
    // skopeo copies it out (every blob checked) and umoci unpacks it.
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("copy");
    support::run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{target}"),
            &oci_output(&layout, "v1"),
        ],
    );
    let rootfs = umoci_unpack(&layout, "v1", &out.path().join("b"));
    assert_eq!(read_file(&rootfs, "seen"), "v1\n");
    assert_eq!(read_file(&rootfs, "app.txt"), "app\n");
    assert!(rootfs.join("bin/busybox").is_file());

    // Pushed again under another tag of the same repository: every blob is
    // there already, so no layer is sent, and both tags name one manifest.
    let again = build_json(
        cache.path(),
        ctx.path(),
        &[
            "--output",
            &format!("registry://{}/test/app:v2", registry.addr),
        ],
    );
    assert_eq!(statuses(&again), ["cached"]);
    assert_eq!(again["output_bytes"], 0, "{again}");
    assert_eq!(
        registry_manifest(&format!("{}/test/app:v2", registry.addr)),
        served
    );
}

#[test]
fn a_bad_push_target_is_refused_before_building_or_fails_naming_it() {
    let registry = Registry::start();
    let cache = tempfile::tempdir().unwrap();
    let ctx = context("FROM scratch\nCOPY data.txt /data.txt\n");
    // A digest cannot be pushed to; nor is a bare word an output.
    for (output, expect) in [
        (
            format!(
                "registry://{}/test/app@sha256:{}",
                registry.addr,
                "ab".repeat(32)
            ),
            "give a tag",
        ),
        (
            "somewhere".to_owned(),
            "expected oci:DIR[:TAG] or registry://",
        ),
    ] {
        let out = build(cache.path(), ctx.path(), &["--output", &output]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{output}: {stderr}");
        assert!(stderr.contains(expect), "{output}: {stderr}");
        assert!(!stderr.contains("[1/"), "refused before building: {stderr}");
    }
    // A registry that cannot be reached fails the build naming the target.
    let out = build(
        cache.path(),
        ctx.path(),
        &["--output", "registry://127.0.0.1:9/test/app:v1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pushing the image to 127.0.0.1:9/test/app:v1"),
        "{stderr}"
    );
}

#[test]
fn copy_from_an_image_copies_out_of_the_pinned_image_and_a_moved_tag_misses() {
    let registry = Registry::start();
    push_base(&registry, "v1", &["latest"]);
    let cache = tempfile::tempdir().unwrap();
    let dockerfile = format!(
        "FROM scratch\n\
         COPY --from={0}/test/base /etc/base-version /copied\n\
         COPY --from={0}/test/base /bin/busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"cp\", \"/copied\", \"/ran\"]\n",
        registry.addr
    );
    let ctx = context(&dockerfile);
    let out = tempfile::tempdir().unwrap();
    let first = build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&out.path().join("one"), "v1")],
    );
    assert_eq!(statuses(&first), ["executed", "executed", "executed"]);
    let rootfs = umoci_unpack(&out.path().join("one"), "v1", &out.path().join("b1"));
    assert_eq!(read_file(&rootfs, "copied"), "v1\n");
    assert_eq!(read_file(&rootfs, "ran"), "v1\n");
    let again = build_json(cache.path(), ctx.path(), &[]);
    assert_eq!(statuses(&again), ["cached", "cached", "cached"]);

    // The image moves: both copies miss (their source changed), and so
    // does every later step.
    push_base(&registry, "v2", &["latest"]);
    let moved = build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&out.path().join("two"), "v1")],
    );
    assert_eq!(statuses(&moved), ["executed", "executed", "executed"]);
    let rootfs = umoci_unpack(&out.path().join("two"), "v1", &out.path().join("b2"));
    assert_eq!(read_file(&rootfs, "ran"), "v2\n");

    // A number that is no earlier stage, and a name that is neither a
    // stage nor an image, are refused at their line.
    for (from, expect) in [
        ("3", "no earlier stage has that number"),
        ("Not_An-Image!", "no earlier stage has that name"),
    ] {
        let ctx = context(&format!(
            "FROM scratch\nCOPY data.txt /\nCOPY --from={from} /x /y\n"
        ));
        let out = build(cache.path(), ctx.path(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{from}: {stderr}");
        assert!(stderr.contains("Dockerfile:3"), "{from}: {stderr}");
        assert!(stderr.contains(expect), "{from}: {stderr}");
    }
}
