//! Layer blobs end to end: compressed output (gzip, zstd, none) that real
//! tools read, the same bytes on every run; compressed base layers read
//! and checked (and hostile ones refused); a layer compressed once and its
//! blob taken from the cache ever after; the image's time.
//!
//! Needs Debian's busybox-static, skopeo, umoci, gzip, zstd and git
//! (`scripts/test` installs them); a missing one fails the test saying
//! how to get it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use strata_proto::v1::Provenance;
use strata_proto::{Digest, StepResult};
use strata_tests::builds::{context, need, umoci_unpack};
use strata_tests::{ServerProcess, strata};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";

const APP: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /app && echo made > /app/made.txt"]
COPY data.txt /app/data.txt
CMD ["/bin/busybox", "cat", "/app/made.txt"]
"#;

fn build_with_env(cache: &Path, ctx: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = strata(cache);
    cmd.env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.arg("build").args(extra).arg(ctx).output().unwrap()
}

fn build_json_with_env(cache: &Path, ctx: &Path, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let out = build_with_env(cache, ctx, &[&["--json"], extra].concat(), env);
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn build_json(cache: &Path, ctx: &Path, extra: &[&str]) -> Value {
    build_json_with_env(cache, ctx, extra, &[])
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(blob_path(layout, digest)).unwrap()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = digest_of(bytes);
    std::fs::write(blob_path(layout, &digest), bytes).unwrap();
    digest
}

/// The manifest and config of `layout:tag`.
fn read_image(layout: &Path, tag: &str) -> (Value, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let manifest: Value =
        serde_json::from_slice(&read_blob(layout, entry["digest"].as_str().unwrap())).unwrap();
    let config: Value = serde_json::from_slice(&read_blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    (manifest, config)
}

/// Writes `config` and `manifest` (pointed at that config) as the only
/// image of `layout`, tagged `tag`.
fn write_image(layout: &Path, tag: &str, mut manifest: Value, config: &Value) {
    let config = serde_json::to_vec(config).unwrap();
    manifest["config"]["digest"] = json!(put_blob(layout, &config));
    manifest["config"]["size"] = json!(config.len());
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let digest = put_blob(layout, &manifest);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// Runs `tool args…` with `input` on stdin; its stdout.
fn pipe(tool: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{tool} {args:?} failed");
    out.stdout
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Each layer of `layout:tag`: (media type, blob digest, diff_id).
fn layers(layout: &Path, tag: &str) -> Vec<(String, String, String)> {
    let (manifest, config) = read_image(layout, tag);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
        .map(|(l, d)| {
            (
                l["mediaType"].as_str().unwrap().to_owned(),
                l["digest"].as_str().unwrap().to_owned(),
                d.as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn gzip_output_is_the_default_the_same_on_every_run_and_read_by_skopeo_umoci_and_gzip() {
    need("skopeo", "skopeo");
    need("umoci", "umoci");
    need("gzip", "gzip");
    let (ctx_a, ctx_b) = (context(APP), context(APP));
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = tempfile::tempdir().unwrap();
    let (a, b) = (out.path().join("a"), out.path().join("b"));
    let first = build_json(cache_a.path(), ctx_a.path(), &["--output", &oci(&a, "v1")]);
    let second = build_json(cache_b.path(), ctx_b.path(), &["--output", &oci(&b, "v1")]);
    assert_eq!(
        first["manifest_digest"], second["manifest_digest"],
        "two empty caches, two checkouts: the same compressed image"
    );
    assert_eq!(first["compressed_layers"], 3);

    let layers_a = layers(&a, "v1");
    assert_eq!(layers_a.len(), 3);
    for (media_type, digest, diff_id) in &layers_a {
        assert_eq!(media_type, GZIP);
        let blob = read_blob(&a, digest);
        assert_eq!(read_blob(&b, digest), blob, "the same blob bytes");
        // The gzip header says nothing of the host: no name, mtime 0.
        assert_eq!(&blob[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&blob[4..8], &[0; 4]);
        // A real gzip decompresses it to the tar the config names.
        let tar = pipe("gzip", &["-dc"], &blob);
        assert_eq!(&digest_of(&tar), diff_id);
        assert!(blob.len() < tar.len());
    }

    run_ok(Command::new("skopeo").args(["inspect", &oci(&a, "v1")]));
    let copy = out.path().join("copy");
    run_ok(Command::new("skopeo").args(["copy", &oci(&a, "v1"), &oci(&copy, "v1")]));
    let rootfs = umoci_unpack(&a, "v1", &out.path().join("bundle"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/made.txt")).unwrap(),
        "made\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/data.txt")).unwrap(),
        "data v1\n"
    );
}

#[test]
fn zstd_and_uncompressed_output_are_what_they_say_and_read_by_skopeo() {
    need("skopeo", "skopeo");
    need("zstd", "zstd");
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (z, plain) = (out.path().join("z"), out.path().join("plain"));
    let zr = build_json(
        cache.path(),
        ctx.path(),
        &["--compression", "zstd", "--output", &oci(&z, "v1")],
    );
    let pr = build_json(
        cache.path(),
        ctx.path(),
        &["--compression", "none", "--output", &oci(&plain, "v1")],
    );
    assert_ne!(zr["manifest_digest"], pr["manifest_digest"]);
    assert_eq!(pr["compressed_layers"], 0);
    let (zl, pl) = (layers(&z, "v1"), layers(&plain, "v1"));
    for ((zm, zd, zdiff), (pm, pd, pdiff)) in zl.iter().zip(&pl) {
        assert_eq!((zm.as_str(), pm.as_str()), (ZSTD, PLAIN));
        assert_eq!(zdiff, pdiff, "one layer, two blobs");
        assert_eq!(pd, pdiff, "an uncompressed blob is its own diff_id");
        let tar = pipe("zstd", &["-dc"], &read_blob(&z, zd));
        assert_eq!(&digest_of(&tar), zdiff);
    }
    for layout in [&z, &plain] {
        run_ok(Command::new("skopeo").args(["inspect", &oci(layout, "v1")]));
        let copy = out.path().join(format!(
            "copy-{}",
            layout.file_name().unwrap().to_string_lossy()
        ));
        run_ok(Command::new("skopeo").args(["copy", &oci(layout, "v1"), &oci(&copy, "v1")]));
    }
    // Debian 12's umoci (0.4.7) knows gzip and plain layers only: the
    // uncompressed image unpacks; zstd needs umoci 0.4.8 or later.
    need("umoci", "umoci");
    let rootfs = umoci_unpack(&plain, "v1", &out.path().join("bundle"));
    assert!(rootfs.join("app/made.txt").exists());
    let unknown = build_with_env(cache.path(), ctx.path(), &["--compression", "brotli"], &[]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("gzip, zstd or none"), "{stderr}");
}

/// The blob a cached mapping names is the one the output gets: the test
/// maps each layer to its own `gzip -9` blob (bytes Strata's compressor
/// does not make), and a cached rebuild into a fresh directory, on a fresh
/// client, writes exactly those blobs. Had it compressed anything, the
/// digests would be Strata's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_is_compressed_once_and_a_cached_rebuild_takes_the_cached_blob() {
    need("gzip", "gzip");
    need("umoci", "umoci");
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--fsync", "never"]);
    let ctx = context(APP);
    let out = tempfile::tempdir().unwrap();
    let plain = out.path().join("plain");
    let first = build_json(
        tempfile::tempdir().unwrap().path(),
        ctx.path(),
        &[
            "--server",
            &server.url,
            "--compression",
            "none",
            "--output",
            &oci(&plain, "v1"),
        ],
    );
    assert_eq!(first["compressed_layers"], 0);

    let client = server.client().await;
    let mut expected = Vec::new();
    for (_, digest, diff_id) in layers(&plain, "v1") {
        let blob = pipe("gzip", &["-9", "-n", "-c"], &read_blob(&plain, &digest));
        let pushed = client
            .push(
                std::io::Cursor::new(blob.clone()),
                GZIP,
                &strata_client::Progress::new(),
            )
            .await
            .unwrap();
        let key = Digest::of(
            format!("strata compressed-layer v1\ncompression gzip\ndiff_id {diff_id}\n").as_bytes(),
        );
        let mapping = json!({"compressed_layer": {"compression": "gzip", "diff_id": diff_id}});
        let result = StepResult {
            layer: Some(pushed.digest),
            config: serde_json::to_vec(&mapping).unwrap(),
            provenance: Provenance {
                builder: "layers test: gzip -9".into(),
                ..Provenance::default()
            },
            seal: None,
        };
        assert!(client.record_step(&key, &result).await.unwrap());
        expected.push(digest_of(&blob));
    }

    let gz = out.path().join("gz");
    let rebuilt = build_json(
        tempfile::tempdir().unwrap().path(),
        ctx.path(),
        &["--server", &server.url, "--output", &oci(&gz, "v1")],
    );
    let statuses: Vec<&str> = rebuilt["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert!(statuses.iter().all(|s| *s == "cached"), "{statuses:?}");
    let got: Vec<String> = layers(&gz, "v1").into_iter().map(|l| l.1).collect();
    assert_eq!(got, expected, "the output holds the cached blobs");
    assert_eq!(rebuilt["compressed_layers"], 0);
    let rootfs = umoci_unpack(&gz, "v1", &out.path().join("bundle"));
    assert!(rootfs.join("app/made.txt").exists());

    // A layer with no mapping yet (zstd) is compressed once and mapped:
    // a second client's rebuild into another fresh directory gets the same
    // image and records nothing new.
    let z1 = build_json(
        tempfile::tempdir().unwrap().path(),
        ctx.path(),
        &[
            "--server",
            &server.url,
            "--compression",
            "zstd",
            "--output",
            &oci(&out.path().join("z1"), "v1"),
        ],
    );
    assert_eq!(z1["compressed_layers"], 3);
    let results_before = client.stats().await.unwrap().step_results;
    let z2 = build_json(
        tempfile::tempdir().unwrap().path(),
        ctx.path(),
        &[
            "--server",
            &server.url,
            "--compression",
            "zstd",
            "--output",
            &oci(&out.path().join("z2"), "v1"),
        ],
    );
    assert_eq!(z2["manifest_digest"], z1["manifest_digest"]);
    assert_eq!(z2["compressed_layers"], 0);
    assert_eq!(client.stats().await.unwrap().step_results, results_before);
    server.stop();
}

const DERIVED: &str =
    "RUN [\"/bin/busybox\", \"sh\", \"-c\", \"cat /app/made.txt /app/data.txt > /derived.txt\"]\n";

/// A base built by Strata with `compression`, then re-compressed by
/// skopeo into gzip as a registry would serve it: each is a base whose
/// layers are extracted (a RUN reads them) and kept as they are.
#[test]
fn compressed_base_layers_are_extracted_and_kept_as_they_are() {
    need("skopeo", "skopeo");
    need("umoci", "umoci");
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let zbase = out.path().join("zbase");
    build_json(
        cache.path(),
        ctx.path(),
        &["--compression", "zstd", "--output", &oci(&zbase, "v1")],
    );
    let plain = out.path().join("plain");
    build_json(
        cache.path(),
        ctx.path(),
        &["--compression", "none", "--output", &oci(&plain, "v1")],
    );
    let skopeo_gz = out.path().join("skopeo-gz");
    run_ok(Command::new("skopeo").args([
        "copy",
        "--dest-compress",
        "--dest-compress-format=gzip",
        &oci(&plain, "v1"),
        &oci(&skopeo_gz, "v1"),
    ]));
    for base in [&zbase, &skopeo_gz, &plain] {
        let name = base.file_name().unwrap().to_string_lossy().to_string();
        let derived = context(&format!("FROM {}\n{DERIVED}", oci(base, "v1")));
        let layout = out.path().join(format!("derived-{name}"));
        let report = build_json(
            tempfile::tempdir().unwrap().path(),
            derived.path(),
            &["--output", &oci(&layout, "v1")],
        );
        assert_eq!(report["steps"][0]["status"], "executed", "{name}");
        let base_layers = layers(base, "v1");
        let own = layers(&layout, "v1");
        assert_eq!(own.len(), base_layers.len() + 1, "{name}");
        assert_eq!(
            &own[..base_layers.len()],
            &base_layers[..],
            "{name}: base layers keep their blobs, digests and media types"
        );
        assert_eq!(own.last().unwrap().0, GZIP, "{name}: the new layer is gzip");
        let rootfs = umoci_unpack_any(&layout, &out.path().join(format!("bundle-{name}")));
        if let Some(rootfs) = rootfs {
            assert_eq!(
                std::fs::read_to_string(rootfs.join("derived.txt")).unwrap(),
                "made\ndata v1\n",
                "{name}"
            );
        }
    }
}

/// umoci unpack, for images it can read (Debian's umoci reads no zstd);
/// `None` for an image with a zstd layer.
fn umoci_unpack_any(layout: &Path, bundle: &Path) -> Option<PathBuf> {
    if layers(layout, "v1").iter().any(|l| l.0 == ZSTD) {
        return None;
    }
    Some(umoci_unpack(layout, "v1", bundle))
}

/// Builds FROM `layout` with a RUN (so its layers are extracted); the
/// build must fail: its stderr.
fn refused_base(layout: &Path) -> String {
    let ctx = context(&format!("FROM {}\n{DERIVED}", oci(layout, "v1")));
    let cache = tempfile::tempdir().unwrap();
    let out = build_with_env(cache.path(), ctx.path(), &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a hostile base was accepted");
    stderr
}

/// A gzip base (layer 1 of 3 is the one tampered with), copied fresh.
fn gzip_base(dir: &Path, name: &str) -> (PathBuf, Value, Value) {
    let ctx = context(APP);
    let layout = dir.join(name);
    build_json(
        tempfile::tempdir().unwrap().path(),
        ctx.path(),
        &["--output", &oci(&layout, "v1")],
    );
    let (manifest, config) = read_image(&layout, "v1");
    (layout, manifest, config)
}

#[test]
fn a_gzip_layer_whose_tar_is_not_its_diff_id_is_refused_naming_the_layer() {
    need("gzip", "gzip");
    let dir = tempfile::tempdir().unwrap();
    let (layout, manifest, mut config) = gzip_base(dir.path(), "wrong-diff-id");
    config["rootfs"]["diff_ids"][1] = json!(digest_of(b"another tar"));
    write_image(&layout, "v1", manifest.clone(), &config);
    let stderr = refused_base(&layout);
    let blob = manifest["layers"][1]["digest"].as_str().unwrap();
    assert!(
        stderr.contains("layer 2") && stderr.contains(blob) && stderr.contains("diff_id"),
        "{stderr}"
    );
}

#[test]
fn a_truncated_gzip_layer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, mut manifest, config) = gzip_base(dir.path(), "truncated");
    let blob = read_blob(&layout, manifest["layers"][2]["digest"].as_str().unwrap());
    // The descriptor describes the cut blob exactly: only the gzip
    // stream itself is short.
    let cut = &blob[..blob.len() / 2];
    manifest["layers"][2]["digest"] = json!(put_blob(&layout, cut));
    manifest["layers"][2]["size"] = json!(cut.len());
    write_image(&layout, "v1", manifest, &config);
    let stderr = refused_base(&layout);
    assert!(stderr.contains("layer 3"), "{stderr}");
}

#[test]
fn a_layer_blob_that_is_not_its_digest_is_refused_even_when_its_tar_is_right() {
    need("gzip", "gzip");
    let dir = tempfile::tempdir().unwrap();
    let (layout, manifest, _) = gzip_base(dir.path(), "swapped");
    let digest = manifest["layers"][0]["digest"].as_str().unwrap();
    // Another gzip of the same tar, under the original blob's name: the
    // diff_id still matches, the blob digest does not.
    let tar = pipe("gzip", &["-dc"], &read_blob(&layout, digest));
    let other = pipe("gzip", &["-1", "-n", "-c"], &tar);
    std::fs::write(blob_path(&layout, digest), &other).unwrap();
    let stderr = refused_base(&layout);
    assert!(
        stderr.contains("layer 1") && stderr.contains(digest),
        "{stderr}"
    );
}

fn created_times(layout: &Path) -> (String, Vec<String>) {
    let (_, config) = read_image(layout, "v1");
    let history = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["created"].as_str().unwrap().to_owned())
        .collect();
    (config["created"].as_str().unwrap().to_owned(), history)
}

#[test]
fn image_times_come_from_source_date_epoch_else_the_last_commit_and_base_history_keeps_its_own() {
    need("git", "git");
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("base");
    build_json_with_env(
        cache.path(),
        ctx.path(),
        &["--output", &oci(&base, "v1")],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    let (created, history) = created_times(&base);
    assert_eq!(created, "2023-11-14T22:13:20Z");
    assert_eq!(history, vec![created.clone(); 4]);

    // Without SOURCE_DATE_EPOCH, in a git repository: its last commit.
    let repo = context(&format!("FROM {}\n{DERIVED}", oci(&base, "v1")));
    let git = |args: &[&str]| {
        run_ok(
            Command::new("git")
                .arg("-C")
                .arg(repo.path())
                .args(args)
                .env("GIT_AUTHOR_DATE", "2024-02-03T04:05:06Z")
                .env("GIT_COMMITTER_DATE", "2024-02-03T04:05:06Z")
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com"),
        )
    };
    git(&["init", "-q"]);
    git(&["add", "Dockerfile"]);
    git(&["commit", "-q", "-m", "x"]);
    let derived = out.path().join("derived");
    build_json(
        cache.path(),
        repo.path(),
        &["--output", &oci(&derived, "v1")],
    );
    let (created, history) = created_times(&derived);
    assert_eq!(created, "2024-02-03T04:05:06Z");
    assert_eq!(
        history,
        [vec!["2023-11-14T22:13:20Z".to_owned(); 4], vec![created]].concat(),
        "the base's entries keep their own times"
    );

    // Outside git: the Dockerfile's modification time; the same image on
    // every build until the Dockerfile changes.
    let plain = context(APP);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_650_000_000);
    std::fs::File::options()
        .write(true)
        .open(plain.path().join("Dockerfile"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    let (one, two) = (out.path().join("one"), out.path().join("two"));
    let a = build_json(cache.path(), plain.path(), &["--output", &oci(&one, "v1")]);
    let b = build_json(cache.path(), plain.path(), &["--output", &oci(&two, "v1")]);
    assert_eq!(a["manifest_digest"], b["manifest_digest"]);
    assert_eq!(created_times(&one).0, "2022-04-15T05:20:00Z");
}
