//! The builder in a container, under exactly the security settings of
//! `deploy/k8s/builder-job.yaml` (read from it), with the seccomp profile
//! shipped beside it, in a Docker daemon of the test's own: a RUN step
//! runs in its sandbox, the image holds what it wrote, and the step's
//! provenance says the step could reach no keyring (the runtime's profile
//! refuses `keyctl` to the builder and so to every step). Under Docker's
//! default seccomp profile, or with the runtime's /proc masks, the build
//! fails with one line that names the cause and points to
//! `deploy/k8s/README.md`.
//!
//! What Docker cannot show: the Job's `hostUsers: false` (Docker gives a
//! container no user namespace of its own unless the whole daemon is
//! remapped, which needs host configuration), and with it the Job's
//! `/etc/subuid` line; here the builder keeps its default id range. And
//! AppArmor, set unconfined as the Job sets it, is tried only on a kernel
//! that has it. The container has no network: the build uses the embedded
//! store, not a server.
//!
//! Needs Debian's docker.io (`dockerd`), busybox-static and umoci
//! (`scripts/test` installs them), and root, as dockerd does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use strata_proto::Digest;
use strata_server::{Store, StoreConfig};
use strata_tests::builds::{context, umoci_unpack};
use strata_tests::dockerd::Dockerd;
use strata_tests::{strata_bin, test_key_file, test_trust};

/// The settings under test, as shipped.
const JOB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/k8s/builder-job.yaml"
);
const SECCOMP_PROFILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/k8s/seccomp-strata-builder.json"
);
/// What every error about the container's settings must point to.
const DEPLOY_DOC: &str = "deploy/k8s/README.md";

const IMAGE: &str = "strata-builder:test";

const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "echo built in a container > /built.txt"]
"#;

#[test]
fn the_builder_runs_a_step_under_the_deploy_settings_and_says_what_a_default_container_lacks() {
    let job = std::fs::read_to_string(JOB).unwrap();
    let security = job_security_options(&job);
    let daemon = Dockerd::start();
    import_builder_image(&daemon);
    let ctx = context(DOCKERFILE);
    let seccomp = [
        "--security-opt".to_owned(),
        format!("seccomp={SECCOMP_PROFILE}"),
    ];
    let unmasked_proc = UNMASKED_PROC.map(String::from);

    let deployed = [&security[..], &unmasked_proc, &seccomp].concat();
    let (out, built) = build_in_container(&daemon, ctx.path(), &deployed, &["--json"]);
    assert!(
        out.status.success(),
        "the build failed under the deploy settings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_key: Digest = report["steps"][1]["key"].as_str().unwrap().parse().unwrap();
    let store = Store::open(&built.tmp.path().join("cache"), StoreConfig::default()).unwrap();
    let signer = test_trust().trusted()[0];
    let recorded = store.lookup_steps(&[run_key], &[signer]).unwrap();
    let result = recorded[0].as_ref().expect("the RUN step's result");
    assert_eq!(result.signer(), Some(signer));
    let sandbox = &result.provenance.sandbox;
    assert!(
        sandbox.starts_with("no-terminal keyring-unreachable no-new-privs "),
        "{sandbox}"
    );
    drop(store);
    let rootfs = umoci_unpack(
        &built.out.path().join("image"),
        "latest",
        &built.out.path().join("bundle"),
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("built.txt")).unwrap(),
        "built in a container\n"
    );

    // Docker's own default profile (RuntimeDefault); the rest as deployed.
    let default_profile = [&security[..], &unmasked_proc].concat();
    let (out, _) = build_in_container(&daemon, ctx.path(), &default_profile, &[]);
    let line = the_one_line_pointing_to_the_doc(&out);
    assert!(
        line.starts_with("strata: error: ")
            && line.contains("seccomp profile")
            && line.contains("refuses unshare(2)"),
        "{line}"
    );

    // The profile, but /proc as the runtime masks it (procMount: Default).
    let masked_proc = [&security[..], &seccomp].concat();
    let (out, _) = build_in_container(&daemon, ctx.path(), &masked_proc, &[]);
    let line = the_one_line_pointing_to_the_doc(&out);
    assert!(
        line.starts_with("strata: error: ")
            && line.contains("/proc is masked")
            && line.contains("procMount: Unmasked"),
        "{line}"
    );
}

/// Docker's `procMount: Unmasked`.
const UNMASKED_PROC: [&str; 2] = ["--security-opt", "systempaths=unconfined"];

/// The Job's container `securityContext` as `docker run` options: root,
/// its capabilities, no new privileges, a read-only root, no AppArmor
/// profile. Each setting is
/// looked up in the manifest, so that the test fails when the manifest
/// changes without it. Its seccomp profile and unmasked /proc are checked
/// here and passed apart ([`SECCOMP_PROFILE`], [`UNMASKED_PROC`]), to be
/// left out one at a time.
fn job_security_options(job: &str) -> Vec<String> {
    for text in [
        "runAsUser: 0",
        "privileged: false",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "drop: [ALL]",
        "type: Localhost",
        "localhostProfile: strata/seccomp-strata-builder.json",
        "procMount: Unmasked",
        "appArmorProfile:",
        "type: Unconfined",
    ] {
        assert!(
            job.lines().any(|l| l.trim() == text),
            "{JOB} no longer says `{text}`: update this test with it"
        );
    }
    let added = job
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: [")?.strip_suffix(']'))
        .unwrap_or_else(|| panic!("{JOB}: no `add: [...]` capability list"));
    let mut options: Vec<String> = ["--user", "0:0", "--cap-drop", "ALL"]
        .map(String::from)
        .to_vec();
    for cap in added.split(',').map(str::trim) {
        options.extend(["--cap-add".to_owned(), cap.to_owned()]);
    }
    options.extend(
        [
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--security-opt",
            "apparmor=unconfined",
        ]
        .map(String::from),
    );
    options
}

/// An image holding only the `strata` binary, the libraries it loads and
/// the directories the Job mounts over: a tar streamed into `docker
/// import`, so that no registry is needed and no copy is left on disk.
fn import_builder_image(daemon: &Dockerd) {
    let mut dirs: Vec<PathBuf> = ["tmp", "context", "out", "usr/local/bin"]
        .map(PathBuf::from)
        .to_vec();
    let mut files = vec![(strata_bin(), PathBuf::from("usr/local/bin/strata"))];
    for lib in shared_libraries(&strata_bin()) {
        let inside = lib.strip_prefix("/").unwrap().to_path_buf();
        files.push((lib, inside));
    }
    for (_, inside) in &files {
        dirs.extend(inside.ancestors().skip(1).map(Path::to_path_buf));
    }
    dirs.retain(|d| !d.as_os_str().is_empty());
    dirs.sort();
    dirs.dedup();
    let mut import = daemon
        .docker()
        .args(["import", "-", IMAGE])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tar = tar::Builder::new(import.stdin.take().unwrap());
    // Docker's importer knows no GNU sparse entries.
    tar.sparse(false);
    for d in &dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(if d == Path::new("tmp") { 0o1777 } else { 0o755 });
        header.set_size(0);
        tar.append_data(&mut header, d, std::io::empty()).unwrap();
    }
    for (host, inside) in &files {
        tar.append_path_with_name(host, inside).unwrap();
    }
    // Closing stdin ends the import.
    drop(tar.into_inner().unwrap());
    let import = import.wait_with_output().unwrap();
    assert!(
        import.status.success(),
        "docker import: {}\ndockerd's log:\n{}",
        String::from_utf8_lossy(&import.stderr),
        daemon.log()
    );
}

/// The files a dynamically linked `binary` loads, from `ldd`.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vdso has no file.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Where the Job's builder finds its signing key: the `STRATA_SIGNING_KEY`
/// value in the manifest.
fn job_signing_key_path(job: &str) -> String {
    let mut lines = job.lines().map(str::trim);
    lines
        .by_ref()
        .find(|l| *l == "- name: STRATA_SIGNING_KEY")
        .expect("the Job sets STRATA_SIGNING_KEY");
    lines
        .next()
        .and_then(|l| l.strip_prefix("value: "))
        .expect("STRATA_SIGNING_KEY has a value on the next line")
        .to_owned()
}

/// The directories a build in a container wrote to.
struct Built {
    /// The container's `/tmp`: the embedded store is in `cache`.
    tmp: tempfile::TempDir,
    /// The container's `/out`: the OCI layout is in `image`.
    out: tempfile::TempDir,
}

/// `strata build [extra]` of `ctx` in a container with `options`, no
/// network, the context read-only, and fresh directories for `/tmp` (the
/// Job's emptyDir, holding the embedded store too) and the output.
fn build_in_container(
    daemon: &Dockerd,
    ctx: &Path,
    options: &[String],
    extra: &[&str],
) -> (Output, Built) {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let key_path = job_signing_key_path(&std::fs::read_to_string(JOB).unwrap());
    let mount =
        |host: &Path, inside: &str, mode: &str| format!("{}:{inside}:{mode}", host.display());
    let out = daemon
        .docker()
        .args(["run", "--rm", "--network", "none"])
        .args(options)
        .args(["-v", &mount(ctx, "/context", "ro")])
        .args(["-v", &mount(tmp.path(), "/tmp", "rw")])
        .args(["-v", &mount(out_dir.path(), "/out", "rw")])
        .args(["-e", "TMPDIR=/tmp", "-e", "STRATA_CACHE_DIR=/tmp/cache"])
        // The fleet's key, mounted where the Job mounts its secret.
        .args(["-v", &mount(&test_key_file(), &key_path, "ro")])
        .args(["-e", &format!("STRATA_SIGNING_KEY={key_path}")])
        .arg(IMAGE)
        .args(["/usr/local/bin/strata", "build", "--memory", "3g"])
        .args(extra)
        .args(["--output", "oci:/out/image:latest", "/context"])
        .output()
        .unwrap();
    (out, Built { tmp, out: out_dir })
}

/// The failed build's stderr has exactly one line naming `DEPLOY_DOC`, and
/// it is the error, the last line.
fn the_one_line_pointing_to_the_doc(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build succeeded: {stderr}");
    let pointing: Vec<&str> = stderr.lines().filter(|l| l.contains(DEPLOY_DOC)).collect();
    assert_eq!(pointing.len(), 1, "{stderr}");
    assert_eq!(stderr.lines().last(), Some(pointing[0]), "{stderr}");
    pointing[0].to_owned()
}
