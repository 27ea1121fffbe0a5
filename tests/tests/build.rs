//! `strata build` end to end: real Dockerfiles, real namespaces, a real
//! static busybox, and the output checked by real OCI tools (skopeo, umoci).
//!
//! Needs Debian's busybox-static, skopeo and umoci (`scripts/test`
//! installs them); a missing one fails the test saying how to get it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use strata_tests::builds::{build, build_json, context, need, oci_output, statuses, umoci_unpack};
use strata_tests::{ServerProcess, strata_wrapped};

const APP: &str = r#"# A small image: busybox, then steps that use it.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV GREETING=hello \
    TARGET=world
WORKDIR /app
COPY data.txt ./
RUN echo "$GREETING $TARGET" > greeting.txt && cat data.txt > copy.txt
RUN mkdir -p /etc && echo built > /etc/built && rm /bin/vi
LABEL org.example.name=app
EXPOSE 8080
CMD ["/bin/sh", "-c", "cat /app/greeting.txt"]
"#;

#[test]
fn the_image_is_accepted_by_skopeo_and_umoci_and_holds_what_the_steps_wrote() {
    need("skopeo", "skopeo");
    need("umoci", "umoci");
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let layout = out_dir.path().join("image");
    let report = build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&layout, "v1")],
    );
    assert_eq!(
        statuses(&report)
            .iter()
            .filter(|s| *s == "executed")
            .count(),
        10
    );
    let digest = report["manifest_digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:"));

    let inspect = Command::new("skopeo")
        .args(["inspect", "--config", &oci_output(&layout, "v1")])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let config: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let c = &config["config"];
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"GREETING=hello") && env.contains(&"TARGET=world"),
        "{env:?}"
    );
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["Cmd"][2], "cat /app/greeting.txt");
    assert_eq!(c["Labels"]["org.example.name"], "app");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object());
    assert_eq!(config["history"].as_array().unwrap().len(), 10);

    let manifest = Command::new("skopeo")
        .args(["inspect", "--raw", &oci_output(&layout, "v1")])
        .output()
        .unwrap();
    assert!(manifest.status.success());
    let raw_digest = format!("sha256:{}", sha256_hex(&manifest.stdout));
    assert_eq!(raw_digest, digest, "the printed digest is the manifest's");

    let rootfs = umoci_unpack(&layout, "v1", &out_dir.path().join("bundle"));
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap();
    assert_eq!(read("app/greeting.txt"), "hello world\n");
    assert_eq!(read("app/copy.txt"), "data v1\n");
    assert_eq!(read("etc/built"), "built\n");
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
    assert!(
        std::fs::symlink_metadata(rootfs.join("bin/vi")).is_err(),
        "a file the build deleted is gone (whiteout applied)"
    );
}

/// Builds `ctx` into an OCI layout under `out` (tag `v1`) and unpacks it
/// with umoci: the report, the unpacked rootfs and the layout.
fn build_and_unpack(cache: &Path, ctx: &Path, out: &Path) -> (Value, PathBuf, PathBuf) {
    let layout = out.join("image");
    let report = build_json(cache, ctx, &["--output", &oci_output(&layout, "v1")]);
    let rootfs = umoci_unpack(&layout, "v1", &out.join("bundle"));
    (report, rootfs, layout)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[test]
fn a_second_build_executes_nothing_and_moves_no_layer_bytes() {
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let output = oci_output(&out_dir.path().join("image"), "latest");
    let first = build_json(cache.path(), ctx.path(), &["--output", &output]);
    let second = build_json(cache.path(), ctx.path(), &["--output", &output]);
    assert!(
        statuses(&second).iter().all(|s| s == "cached"),
        "{:?}",
        statuses(&second)
    );
    assert_eq!(first["manifest_digest"], second["manifest_digest"]);
    assert_eq!(second["uploaded_bytes"], 0);
    assert_eq!(second["downloaded_bytes"], 0);
    assert_eq!(
        second["output_bytes"], 0,
        "the output already had every layer"
    );

    // Without an output, a cached build needs no layer bytes at all.
    let third = build_json(cache.path(), ctx.path(), &[]);
    assert_eq!(third["downloaded_bytes"], 0);
    assert_eq!(third["manifest_digest"], first["manifest_digest"]);
}

#[test]
fn builds_are_reproducible_and_a_shared_server_serves_other_checkouts() {
    // Two checkouts in different places, two empty caches: one digest.
    let (ctx_a, ctx_b) = (context(APP), context(APP));
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = build_json(cache_a.path(), ctx_a.path(), &[]);
    let b = build_json(cache_b.path(), ctx_b.path(), &[]);
    assert_eq!(a["manifest_digest"], b["manifest_digest"]);
    let keys = |r: &Value| -> Vec<String> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().into())
            .collect()
    };
    assert_eq!(keys(&a), keys(&b), "no host path or time enters a key");

    // A server filled by one checkout serves every step to another.
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--fsync", "never"]);
    let filled = build_json(cache_a.path(), ctx_a.path(), &["--server", &server.url]);
    assert!(statuses(&filled).iter().all(|s| s == "executed"));
    let (ctx_c, cache_c) = (context(APP), tempfile::tempdir().unwrap());
    let served = build_json(cache_c.path(), ctx_c.path(), &["--server", &server.url]);
    assert!(
        statuses(&served).iter().all(|s| s == "cached"),
        "{:?}",
        statuses(&served)
    );
    assert_eq!(served["manifest_digest"], a["manifest_digest"]);
    server.stop();
}

#[test]
fn changing_one_copied_file_misses_exactly_that_step_and_the_later_ones() {
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    build_json(cache.path(), ctx.path(), &[]);
    std::fs::write(ctx.path().join("data.txt"), "data v2\n").unwrap();
    let plan = build_json(cache.path(), ctx.path(), &["--dry-run"]);
    let expected: Vec<&str> = [["cached"; 4].as_slice(), ["would_run"; 6].as_slice()].concat();
    assert_eq!(
        statuses(&plan),
        expected,
        "the plan names what will rebuild"
    );
    let rebuilt = build_json(cache.path(), ctx.path(), &[]);
    let expected: Vec<&str> = [["cached"; 4].as_slice(), ["executed"; 6].as_slice()].concat();
    assert_eq!(statuses(&rebuilt), expected);
}

#[test]
fn a_dry_run_plans_without_running_or_writing() {
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let layout = out_dir.path().join("image");
    let plan = build_json(
        cache.path(),
        ctx.path(),
        &["--dry-run", "--output", &oci_output(&layout, "v1")],
    );
    assert!(statuses(&plan).iter().all(|s| s == "would_run"));
    assert!(plan["manifest_digest"].is_null());
    assert!(!layout.exists(), "a dry run writes no output");
    let again = build_json(cache.path(), ctx.path(), &["--dry-run"]);
    assert!(
        statuses(&again).iter().all(|s| s == "would_run"),
        "and records nothing"
    );
}

#[test]
fn a_run_step_sees_no_network_no_host_processes_and_no_host_files() {
    let ctx = context("");
    let host_marker = ctx.path().join("host-only-marker");
    std::fs::write(&host_marker, "secret").unwrap();
    let escape = std::env::temp_dir().join(format!("strata-escape-{}", std::process::id()));
    let dockerfile = format!(
        r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN set -e; \
    ifaces=$(ls /sys/class/net 2>/dev/null || sed -n 's/^ *\([a-z0-9]*\):.*/\1/p' /proc/net/dev); \
    echo "interfaces: $ifaces"; test "$(echo $ifaces)" = "lo"; \
    pids=$(ls /proc | grep -c '^[0-9]'); echo "processes: $pids"; test "$pids" -le 4; \
    test "$(cat /proc/1/cmdline | tr '\0' ' ')" != ""; \
    test ! -e {marker}; test ! -e /oldroot; test ! -e {ctx}; \
    mkdir -p {escape_dir} && touch {escape}; \
    ! echo x > /proc/sys/kernel/hostname 2>/dev/null; \
    echo isolated
"#,
        marker = host_marker.display(),
        ctx = ctx.path().display(),
        escape_dir = escape.parent().unwrap().display(),
        escape = escape.display(),
    );
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    // The builder runs where there is a network to hide: a network
    // namespace of its own with a veth pair, up and addressed.
    let host = NetNs::with_veth();
    let seen = host.run(&["ls", "/sys/class/net"]);
    assert!(
        seen.contains("strata-v0"),
        "the builder's side has the veth: {seen}"
    );
    let cache = tempfile::tempdir().unwrap();
    let out = host
        .strata(cache.path())
        .arg("build")
        .arg(ctx.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("interfaces: lo") && stderr.contains("isolated"),
        "{stderr}"
    );
    assert!(!escape.exists(), "a write inside the step reached the host");
}

#[test]
fn host_network_is_refused_unless_allowed() {
    let ctx = context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN --network=host [\"/bin/busybox\", \"true\"]\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let out = build(cache.path(), ctx.path(), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Dockerfile:3") && stderr.contains("--allow-host-network"),
        "{stderr}"
    );
    let report = build_json(cache.path(), ctx.path(), &["--allow-host-network"]);
    assert_eq!(statuses(&report), ["executed", "executed"]);
}

#[test]
fn a_failing_run_fails_the_build_with_its_exit_code_and_output_and_records_nothing() {
    let ctx = context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo first line; echo the last words >&2; exit 3\"]\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let out = build(cache.path(), ctx.path(), &[]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(stderr.contains("exit code 3"), "{stderr}");
    assert!(stderr.contains("the last words"), "{stderr}");
    assert!(
        !stderr.contains("hint:"),
        "no network hint for this: {stderr}"
    );
    let plan = build_json(cache.path(), ctx.path(), &["--dry-run"]);
    assert_eq!(
        statuses(&plan),
        ["cached", "would_run"],
        "the failed step was not recorded"
    );
}

#[test]
fn a_step_that_fails_for_want_of_a_network_says_how_to_give_it_one() {
    let ctx = context(
        "FROM scratch
COPY busybox /bin/busybox
         RUN [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/x\", \"http://deb.debian.org/debian/\"]\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let out = build(cache.path(), ctx.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(
        stderr.contains("hint: this step ran without a network")
            && stderr.contains("--allow-host-network"),
        "{stderr}"
    );
}

#[test]
fn malformed_dockerfiles_fail_with_file_and_line() {
    let cases = [
        ("FROM scratch\nFROB x\n", "Dockerfile:2", "FROB"),
        ("# nothing but\nRUN true\n", "Dockerfile:2", "FROM"),
        (
            "FROM scratch\nRUN --netwerk=none true\n",
            "Dockerfile:2",
            "--netwerk",
        ),
        (
            "FROM scratch\nRUN echo a \\\n",
            "Dockerfile:2",
            "continuation",
        ),
    ];
    for (text, place, word) in cases {
        let ctx = context(text);
        let cache = tempfile::tempdir().unwrap();
        let out = build(cache.path(), ctx.path(), &[]);
        assert!(!out.status.success(), "{text:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(place) && stderr.contains(word),
            "{text:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn an_image_kept_under_a_tag_is_a_base_for_other_builds_on_other_clients() {
    need("umoci", "umoci");
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--fsync", "never"]);
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    let base = build_json(
        cache.path(),
        ctx.path(),
        &["--server", &server.url, "--tag", "app:v1"],
    );

    let derived = context(
        "FROM app:v1\nRUN cat /app/greeting.txt /etc/built > /app/derived.txt\nCOPY data.txt /derived-data.txt\n",
    );
    let (other_cache, out_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let layout = out_dir.path().join("image");
    let report = build_json(
        other_cache.path(),
        derived.path(),
        &[
            "--server",
            &server.url,
            "--output",
            &oci_output(&layout, "d"),
        ],
    );
    assert_eq!(statuses(&report), ["executed", "executed"]);
    assert_ne!(report["manifest_digest"], base["manifest_digest"]);

    let rootfs = umoci_unpack(&layout, "d", &out_dir.path().join("bundle"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/derived.txt")).unwrap(),
        "hello world\nbuilt\n"
    );
    assert!(
        rootfs.join("app/copy.txt").exists(),
        "the base's files are there"
    );
    assert!(rootfs.join("derived-data.txt").exists());

    // The derived build is cached too, and an unknown tag is a clear error.
    let again = build_json(
        other_cache.path(),
        derived.path(),
        &["--server", &server.url],
    );
    assert_eq!(statuses(&again), ["cached", "cached"]);
    let unknown = context("FROM app:v9\nRUN true\n");
    let out = build(
        other_cache.path(),
        unknown.path(),
        &["--server", &server.url],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Dockerfile:1") && stderr.contains("app:v9"),
        "{stderr}"
    );
    server.stop();
}

#[test]
fn copy_chown_and_user_resolve_names_through_the_image() {
    let ctx = context(
        r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /etc /home/app && echo 'root:x:0:0::/root:/bin/sh' > /etc/passwd && \
    echo 'app:x:1000:1001::/home/app:/bin/sh' >> /etc/passwd && \
    printf 'root:x:0:\napp:x:1001:\n' > /etc/group
COPY --chown=app:app data.txt /home/app/data.txt
COPY --chown=7:8 data.txt /numeric.txt
USER app
RUN set -e; test "$(id -u):$(id -g)" = "1000:1001"; \
    test "$(stat -c %u:%g /home/app/data.txt)" = "1000:1001"; \
    test "$(stat -c %u:%g /numeric.txt)" = "7:8"; echo owners-ok
"#,
    );
    let cache = tempfile::tempdir().unwrap();
    let out = build(cache.path(), ctx.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("owners-ok"), "{stderr}");

    let unknown =
        context("FROM scratch\nCOPY busybox /bin/busybox\nCOPY --chown=ghost data.txt /x\n");
    let out = build(cache.path(), unknown.path(), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Dockerfile:3") && stderr.contains("ghost"),
        "{stderr}"
    );
}

#[test]
fn an_oci_layout_is_a_base_and_keys_follow_its_content_not_its_path() {
    let ctx = context(APP);
    let cache = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let layout = out_dir.path().join("base");
    build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&layout, "v1")],
    );

    let derived = |layout: &Path| {
        context(&format!(
            "FROM oci:{}:v1\nRUN cat /app/greeting.txt > /from-base.txt\n",
            layout.display()
        ))
    };
    let first = build_json(cache.path(), derived(&layout).path(), &[]);
    assert_eq!(statuses(&first), ["executed"]);

    // The same image in another directory is the same base: all cached.
    let moved = out_dir.path().join("moved");
    std::fs::rename(&layout, &moved).unwrap();
    let again = build_json(cache.path(), derived(&moved).path(), &[]);
    assert_eq!(statuses(&again), ["cached"]);
    assert_eq!(again["manifest_digest"], first["manifest_digest"]);

    // A tag the layout lacks is a clear error at the FROM line.
    let missing = context(&format!("FROM oci:{}:v2\nRUN true\n", moved.display()));
    let out = build(cache.path(), missing.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Dockerfile:1") && stderr.contains("v2"),
        "{stderr}"
    );
}

/// A base layer whose tar entry climbs out of the root: the build refuses
/// it, naming the entry, and nothing lands outside the working rootfs.
#[test]
fn a_base_layer_with_an_escaping_path_is_refused_and_writes_nothing_outside() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    // A tar whose single entry is `../../../../<victim>`: written by hand,
    // since tar writers refuse such names.
    let name = format!("../../../../../../../..{}", victim.display());
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(b"00000000005\0");
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    let mut data = b"owned".to_vec();
    data.resize(512, 0);
    tar.extend_from_slice(&data);
    tar.extend_from_slice(&[0u8; 1024]);

    // An OCI layout holding that layer, by hand.
    let layout = dir.path().join("evil");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let layer = put(&tar);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": tar.len()}],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let ctx = context(&format!(
        "FROM oci:{}:v1\nCOPY data.txt /x\n",
        layout.display()
    ));
    let cache = tempfile::tempdir().unwrap();
    let out = build(cache.path(), ctx.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a hostile layer was applied");
    assert!(
        stderr.contains("refused") && stderr.contains(".."),
        "{stderr}"
    );
    assert!(!victim.exists(), "the layer wrote outside the rootfs");
}

/// The most common Dockerfile patterns place files where Docker places
/// them: `COPY f .` under WORKDIR goes into it, a file copied onto an
/// existing directory lands inside it, and WORKDIR creates its directory
/// (owned by USER) in the image itself — which a runtime without runc's
/// mkdir (umoci unpack + chroot) depends on.
#[test]
fn copy_into_workdir_and_onto_existing_directories_behaves_as_docker_does() {
    need("umoci", "umoci");
    let ctx = context(
        r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /usr/local/bin
WORKDIR /app
COPY data.txt .
COPY data.txt /usr/local/bin
RUN test -f /app/data.txt && test -f /usr/local/bin/data.txt
USER 1000:1001
WORKDIR /home/user/work
"#,
    );
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, rootfs, _) = build_and_unpack(cache.path(), ctx.path(), out.path());
    use std::os::unix::fs::MetadataExt;
    assert!(rootfs.join("app").is_dir(), "/app is not a directory");
    assert_eq!(
        std::fs::read(rootfs.join("app/data.txt")).unwrap(),
        b"data v1\n"
    );
    assert!(rootfs.join("usr/local/bin").is_dir());
    assert_eq!(
        std::fs::read(rootfs.join("usr/local/bin/data.txt")).unwrap(),
        b"data v1\n"
    );
    let work = std::fs::metadata(rootfs.join("home/user/work")).unwrap();
    assert!(work.is_dir(), "WORKDIR did not create its directory");
    assert_eq!((work.uid(), work.gid()), (1000, 1001));
}

/// BuildKit's platform ARGs have values: in `FROM` lines as they are, and
/// in a stage once declared with a bare `ARG`.
#[test]
fn from_platform_naming_the_host_changes_nothing_and_another_is_refused_at_its_line() {
    let plain = "FROM scratch AS build\nCOPY data.txt /data.txt\nFROM scratch\nCOPY --from=build /data.txt /d\n";
    let ctx = context(plain);
    let cache = tempfile::tempdir().unwrap();
    let without = build_json(cache.path(), ctx.path(), &[]);
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM --platform=$BUILDPLATFORM scratch AS build\nCOPY data.txt /data.txt\n\
         FROM --platform=${TARGETPLATFORM} scratch\nCOPY --from=build /data.txt /d\n",
    )
    .unwrap();
    // The same steps, the same keys: every step is a hit. (The image's
    // time follows the Dockerfile's mtime here, so its digest moves.)
    let with = build_json(cache.path(), ctx.path(), &[]);
    assert_eq!(statuses(&with), ["cached", "cached"]);
    let keys = |r: &serde_json::Value| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&with), keys(&without));

    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY data.txt /data.txt\nFROM --platform=linux/s390x scratch\n",
    )
    .unwrap();
    for extra in [&[][..], &["--dry-run"]] {
        let out = build(cache.path(), ctx.path(), extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(
                "Dockerfile:3: FROM --platform=linux/s390x: Strata builds for the host platform"
            ),
            "{stderr}"
        );
    }
}

#[test]
fn platform_args_are_set_as_buildkit_sets_them() {
    need("umoci", "umoci");
    let ctx = context(
        r#"FROM oci:${BUILDOS}-does-not-exist-${TARGETARCH}
"#,
    );
    let cache = tempfile::tempdir().unwrap();
    let out = build(cache.path(), ctx.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert!(
        stderr.contains(&format!("linux-does-not-exist-{arch}")),
        "FROM did not see the platform ARGs: {stderr}"
    );
    std::fs::write(
        ctx.path().join("Dockerfile"),
        r#"FROM scratch
ARG TARGETARCH
ARG TARGETPLATFORM
ARG BUILDPLATFORM
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo \"$TARGETARCH $TARGETPLATFORM $BUILDPLATFORM\" > /platform"]
"#,
    )
    .unwrap();
    let layout = cache.path().join("image");
    build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&layout, "v1")],
    );
    let rootfs = umoci_unpack(&layout, "v1", &cache.path().join("bundle"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("platform")).unwrap(),
        format!("{arch} linux/{arch} linux/{arch}\n")
    );
}

/// A multi-stage build: a stage FROM another, `COPY --from` by name and by
/// number, `--target`, and a failing stage nothing needs that is never run.
#[test]
fn multi_stage_builds_only_what_the_target_needs() {
    need("umoci", "umoci");
    let ctx = context(
        r#"FROM scratch AS tools
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]

FROM tools AS build
WORKDIR /src
COPY data.txt .
RUN mkdir -p /out/lib && tr a-z A-Z < data.txt > /out/DATA && ln -s DATA /out/link

FROM tools AS broken
RUN exit 3

FROM scratch
COPY --from=build /out /app/
COPY --from=0 /bin/busybox /bin/sh
COPY --from=build /out/link /single
"#,
    );
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("image");
    let report = build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&layout, "v1")],
    );
    // tools (2 steps) + build (3) + the final stage (3); `broken` is never run.
    assert_eq!(statuses(&report).len(), 8, "{report}");
    let rootfs = umoci_unpack(&layout, "v1", &out.path().join("bundle"));
    assert_eq!(
        std::fs::read(rootfs.join("app/DATA")).unwrap(),
        b"DATA V1\n"
    );
    assert!(rootfs.join("app/lib").is_dir());
    assert_eq!(
        std::fs::read_link(rootfs.join("app/link")).unwrap(),
        Path::new("DATA"),
        "a symlink inside a copied directory stays a symlink"
    );
    assert_eq!(
        std::fs::read(rootfs.join("single")).unwrap(),
        b"DATA V1\n",
        "a symlink named as the source is followed inside the stage"
    );
    assert!(rootfs.join("bin/sh").is_file());
    assert!(
        !rootfs.join("src").exists(),
        "the build stage's files leaked"
    );

    // All cached the second time, across stages.
    let again = build_json(cache.path(), ctx.path(), &[]);
    assert!(statuses(&again).iter().all(|s| s == "cached"), "{again}");

    // --target builds that stage (and what it needs) only.
    let tools = build_json(cache.path(), ctx.path(), &["--target", "tools"]);
    assert_eq!(statuses(&tools).len(), 2);
    let broken = build(cache.path(), ctx.path(), &["--target", "broken"]);
    assert_eq!(broken.status.code(), Some(3));
    let missing = build(cache.path(), ctx.path(), &["--target", "nope"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("--target nope") && stderr.contains("stages: tools, build, broken, 3"),
        "{stderr}"
    );
}

/// `COPY --from` reads inside the stage: a symlink there pointing at `/`
/// or climbing out with `..` stays inside the stage's file system, never
/// the host's.
#[test]
fn copy_from_a_stage_never_reads_outside_it() {
    need("umoci", "umoci");
    let ctx = context(
        r#"FROM scratch AS evil
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /etc && echo inside > /etc/hostname && /bin/busybox ln -s ../../../../etc /up && /bin/busybox ln -s /etc /abs"]

FROM scratch
COPY --from=evil /up/hostname /via-dotdot
COPY --from=evil /abs/hostname /via-absolute
"#,
    );
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, rootfs, _) = build_and_unpack(cache.path(), ctx.path(), out.path());
    for name in ["via-dotdot", "via-absolute"] {
        assert_eq!(
            std::fs::read(rootfs.join(name)).unwrap(),
            b"inside\n",
            "{name} read the host's /etc/hostname"
        );
    }
}

/// SHELL changes how later shell-form commands run (RUN now, CMD in the
/// config); VOLUME, STOPSIGNAL and MAINTAINER land in the OCI config that
/// skopeo reads.
#[test]
fn shell_volume_stopsignal_and_maintainer_reach_the_image() {
    need("skopeo", "skopeo");
    need("umoci", "umoci");
    let ctx = context(
        r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
SHELL ["/bin/sh", "-e", "-u", "-c"]
RUN echo "$-" > /shell-flags
VOLUME ["/data"]
VOLUME /logs
STOPSIGNAL SIGINT
MAINTAINER Jane Doe <jane@example.com>
CMD echo hi
"#,
    );
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, rootfs, layout) = build_and_unpack(cache.path(), ctx.path(), out.path());
    let flags = std::fs::read_to_string(rootfs.join("shell-flags")).unwrap();
    assert!(
        flags.contains('e') && flags.contains('u'),
        "the RUN did not go through the SHELL: its shell had flags {flags:?}"
    );
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--config",
            &format!("oci:{}:v1", layout.display()),
        ])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let config: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(config["author"], "Jane Doe <jane@example.com>");
    let runtime = &config["config"];
    assert_eq!(runtime["StopSignal"], "SIGINT");
    let volumes: Vec<&String> = runtime["Volumes"].as_object().unwrap().keys().collect();
    assert_eq!(volumes, ["/data", "/logs"]);
    assert_eq!(
        runtime["Cmd"],
        serde_json::json!(["/bin/sh", "-e", "-u", "-c", "echo hi"])
    );
}

/// `ADD` of a local tar (plain or gzip) unpacks it at the destination, as
/// docker does; an archive entry that climbs out is refused at the line.
#[test]
fn add_unpacks_local_archives_and_refuses_escaping_entries() {
    need("umoci", "umoci");
    let ctx = context("FROM scratch\nADD app.tar.gz /opt/\nADD plain.tar /srv\n");
    let tar = |args: &[&str]| {
        let out = Command::new("tar").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let src = ctx.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/app"), "app v1\n").unwrap();
    std::fs::write(src.join("b.txt"), "b\n").unwrap();
    let c = ctx.path().to_str().unwrap();
    tar(&[
        "-C",
        &format!("{c}/src"),
        "-czf",
        &format!("{c}/app.tar.gz"),
        "bin",
    ]);
    tar(&[
        "-C",
        &format!("{c}/src"),
        "-cf",
        &format!("{c}/plain.tar"),
        "b.txt",
    ]);
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, rootfs, _) = build_and_unpack(cache.path(), ctx.path(), out.path());
    assert_eq!(
        std::fs::read(rootfs.join("opt/bin/app")).unwrap(),
        b"app v1\n"
    );
    assert_eq!(std::fs::read(rootfs.join("srv/b.txt")).unwrap(), b"b\n");
    assert!(
        !rootfs.join("opt/app.tar.gz").exists(),
        "the archive was copied, not unpacked"
    );

    // `-P` keeps the `../` in the member name.
    tar(&[
        "-C",
        &format!("{c}/src"),
        "-P",
        "-cf",
        &format!("{c}/evil.tar"),
        "../data.txt",
    ]);
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nADD evil.tar /x/\n",
    )
    .unwrap();
    let refused = build(cache.path(), ctx.path(), &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("Dockerfile:2: ADD: unpacking evil.tar") && stderr.contains(".."),
        "{stderr}"
    );
}

/// A step over its memory limit fails naming the limit, and a RUN step's
/// provenance on the server records what confined it.
#[test]
fn a_step_over_its_memory_limit_fails_naming_it_and_provenance_says_what_confined_runs() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--fsync", "never"]);
    let cache = tempfile::tempdir().unwrap();
    let ctx =
        context("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"true\"]\n");
    let report = build_json(
        cache.path(),
        ctx.path(),
        &["--server", &server.url, "--pids-limit", "64"],
    );
    let key: strata_proto::Digest = report["steps"][1]["key"].as_str().unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let found = runtime.block_on(async {
        let client = server.client().await;
        client.lookup_steps(&[key]).await.unwrap()
    });
    let sandbox = found[0].as_ref().unwrap().provenance.sandbox.clone();
    assert!(
        sandbox
            .starts_with("no-terminal fresh-keyring no-new-privs seccomp=strata-seccomp/1 limits="),
        "{sandbox}"
    );
    assert!(sandbox.contains(" pids=64 "), "{sandbox}");

    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"dd\", \"if=/dev/zero\", \"of=/dev/null\", \"bs=256M\", \"count=4\"]\n",
    )
    .unwrap();
    let out = build(cache.path(), ctx.path(), &["--memory", "64m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("memory limit (64 MiB)")
            || stderr.contains("Cannot allocate memory")
            || stderr.contains("memory exhausted"),
        "the failure does not say the step ran out of its memory: {stderr}"
    );
    let bad = build(cache.path(), ctx.path(), &["--memory", "lots"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--memory \"lots\""));
}

/// `skopeo inspect --config` of `layout:tag`: the image config.
fn image_config(layout: &Path, tag: &str) -> Value {
    need("skopeo", "skopeo");
    let inspect = Command::new("skopeo")
        .args(["inspect", "--config", "--raw", &oci_output(layout, tag)])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    serde_json::from_slice(&inspect.stdout).unwrap()
}

#[test]
fn a_healthcheck_reaches_the_image_is_inherited_and_none_turns_it_off() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("base");
    let ctx = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         HEALTHCHECK --interval=30s --start-period=1m --retries=3 CMD wget -q -O- localhost:8080 || exit 1\n",
    );
    build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&base, "v1")],
    );
    let expected = serde_json::json!({
        "Test": ["CMD-SHELL", "wget -q -O- localhost:8080 || exit 1"],
        "Interval": 30_000_000_000u64,
        "StartPeriod": 60_000_000_000u64,
        "Retries": 3,
    });
    assert_eq!(image_config(&base, "v1")["config"]["Healthcheck"], expected);

    // An image built on it inherits the check, as Docker's do.
    let derived = out.path().join("derived");
    let ctx = context(&format!(
        "FROM {}\nCOPY data.txt /data.txt\n",
        oci_output(&base, "v1")
    ));
    build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&derived, "v1")],
    );
    assert_eq!(
        image_config(&derived, "v1")["config"]["Healthcheck"],
        expected
    );

    // HEALTHCHECK NONE turns it off; an exec form is kept as CMD.
    for (line, test) in [
        ("HEALTHCHECK NONE", serde_json::json!(["NONE"])),
        (
            r#"HEALTHCHECK CMD ["/bin/busybox", "true"]"#,
            serde_json::json!(["CMD", "/bin/busybox", "true"]),
        ),
    ] {
        let image = out.path().join("other");
        let ctx = context(&format!("FROM {}\n{line}\n", oci_output(&base, "v1")));
        build_json(
            cache.path(),
            ctx.path(),
            &["--output", &oci_output(&image, "v1")],
        );
        let check = &image_config(&image, "v1")["config"]["Healthcheck"];
        assert_eq!(check["Test"], test, "{line}");
        assert!(check.get("Interval").is_none(), "{line}: {check}");
    }
}

#[test]
fn run_heredocs_run_as_scripts_and_feed_commands() {
    let ctx = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN <<EOF\nset -e\n# a comment in the script\nmkdir -p /out\n\necho \"script ran\" > /out/script.txt\nEOF\n\
         RUN cat <<EOF > /out/motd\nhello\n  indented\nEOF\n\
         RUN <<-EOT\n\techo tabs stripped > /out/tabs.txt\n\tEOT\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (report, rootfs, _) = build_and_unpack(cache.path(), ctx.path(), out.path());
    assert_eq!(
        statuses(&report),
        ["executed", "executed", "executed", "executed", "executed"]
    );
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap();
    assert_eq!(read("out/script.txt"), "script ran\n");
    assert_eq!(read("out/motd"), "hello\n  indented\n");
    assert_eq!(read("out/tabs.txt"), "tabs stripped\n");

    // A changed heredoc body is a changed step.
    let changed = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN <<EOF\nset -e\n# a comment in the script\nmkdir -p /out\n\necho \"script ran again\" > /out/script.txt\nEOF\n",
    );
    let again = build_json(cache.path(), changed.path(), &[]);
    assert_eq!(statuses(&again), ["cached", "cached", "executed"]);
}

/// A network namespace of its own (`ip netns`), removed on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    /// A namespace holding a veth pair (strata-v0, strata-v1), up, with an
    /// address: interfaces a step must not see.
    fn with_veth() -> NetNs {
        need("ip", "iproute2");
        // Tests run on threads of one process: number them apart.
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("strata-test-{}-{n}", std::process::id());
        let ns = NetNs { name };
        ns.ip(&["netns", "add", &ns.name]);
        for args in [
            &[
                "link",
                "add",
                "strata-v0",
                "type",
                "veth",
                "peer",
                "name",
                "strata-v1",
            ][..],
            &["link", "set", "strata-v0", "up"],
            &["link", "set", "strata-v1", "up"],
            &["addr", "add", "10.231.0.1/24", "dev", "strata-v0"],
        ] {
            ns.ip(&[&["netns", "exec", &ns.name, "ip"][..], args].concat());
        }
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `strata` with its cache in `cache`, run inside the namespace.
    fn strata(&self, cache: &Path) -> Command {
        strata_wrapped(&["ip", "netns", "exec", &self.name], cache)
    }

    /// Runs `argv` inside the namespace; its stdout.
    fn run(&self, argv: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn copy_heredocs_write_inline_files_into_the_image() {
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         WORKDIR /app\n\
         COPY --chmod=755 <<'EOF' hello\n#!/bin/sh\necho \"hello $1\" > /app/said\nEOF\n\
         COPY <<a.conf <<b.conf conf/\nalpha\na.conf\nbeta\nb.conf\n\
         RUN ./hello world\n";
    let ctx = context(dockerfile);
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, rootfs, _) = build_and_unpack(cache.path(), ctx.path(), out.path());
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap();
    assert_eq!(read("app/said"), "hello world\n");
    assert_eq!(read("app/conf/a.conf"), "alpha\n");
    assert_eq!(read("app/conf/b.conf"), "beta\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(rootfs.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!((mode("app/hello"), mode("app/conf/a.conf")), (0o755, 0o644));

    // Same file, same keys; a changed body misses that step and later ones.
    let again = build_json(cache.path(), context(dockerfile).path(), &[]);
    assert!(statuses(&again).iter().all(|s| s == "cached"), "{again}");
    let changed = build_json(
        cache.path(),
        context(&dockerfile.replace("beta", "gamma")).path(),
        &[],
    );
    assert_eq!(
        statuses(&changed),
        [
            "cached", "cached", "cached", "cached", "executed", "executed"
        ]
    );
}

#[test]
fn a_syntax_directive_is_ignored_with_a_note() {
    let ctx = context("# syntax=docker/dockerfile:1.7\nFROM scratch\nCOPY data.txt /\n");
    let cache = tempfile::tempdir().unwrap();
    let report = build_json(cache.path(), ctx.path(), &[]);
    assert_eq!(statuses(&report), ["executed"]);
    let notes = report["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("`# syntax=docker/dockerfile:1.7` is ignored")),
        "{notes:?}"
    );
}

#[test]
fn build_wide_host_network_gives_every_run_the_hosts_and_keys_it_apart() {
    let host = NetNs::with_veth();
    let ctx = context(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"cp\", \"/proc/net/dev\", \"/interfaces\"]\n",
    );
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let build_in_ns = |extra: &[&str], image: &Path| -> Value {
        let output = host
            .strata(cache.path())
            .args(["build", "--json", "--output", &oci_output(image, "v1")])
            .args(extra)
            .arg(ctx.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let hermetic = build_in_ns(&[], &out.path().join("hermetic"));
    let shared = build_in_ns(&["--network=host"], &out.path().join("host"));
    assert_eq!(statuses(&shared), ["cached", "executed"], "{shared}");
    assert_ne!(shared["steps"][1]["key"], hermetic["steps"][1]["key"]);
    let seen = |image: &str, bundle: &str| {
        let rootfs = umoci_unpack(&out.path().join(image), "v1", &out.path().join(bundle));
        std::fs::read_to_string(rootfs.join("interfaces")).unwrap()
    };
    let hermetic_view = seen("hermetic", "b1");
    assert!(!hermetic_view.contains("strata-v0"), "{hermetic_view}");
    let host_view = seen("host", "b2");
    assert!(host_view.contains("strata-v0"), "{host_view}");
}
