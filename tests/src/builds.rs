//! What the `strata build` tests share: a context with a static busybox,
//! the build command and its JSON report, and the OCI tools that check its
//! output. A missing tool fails the test saying how to get it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::strata;

/// Debian's busybox-static, copied into every context.
pub const BUSYBOX: &str = "/bin/busybox";

/// Fails, saying how to install it, unless `tool` is on the PATH.
pub fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs `{tool}`: apt-get install {package} (scripts/test installs it)"
    );
}

/// A build context with a static busybox, a data file and `dockerfile`.
pub fn context(dockerfile: &str) -> tempfile::TempDir {
    assert!(
        Path::new(BUSYBOX).exists(),
        "this test needs a static busybox at {BUSYBOX}: apt-get install busybox-static (scripts/test installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(BUSYBOX, dir.path().join("busybox")).unwrap();
    std::fs::write(dir.path().join("data.txt"), "data v1\n").unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    // Outside git, the image's time is the Dockerfile's mtime: give every
    // checkout the same one, as unpacking one source archive would.
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("Dockerfile"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        .unwrap();
    dir
}

/// `strata build [extra] CTX` with its cache in `cache`.
pub fn build(cache: &Path, ctx: &Path, extra: &[&str]) -> Output {
    strata(cache)
        .arg("build")
        .args(extra)
        .arg(ctx)
        .output()
        .unwrap()
}

/// Builds and returns the JSON report, failing with stderr on error.
pub fn build_json(cache: &Path, ctx: &Path, extra: &[&str]) -> Value {
    let out = build(cache, ctx, &[&["--json"], extra].concat());
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each step's status in a report: `cached`, `executed`, `would_run`.
pub fn statuses(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect()
}

/// `oci:DIR:TAG`, as `--output` and skopeo take it.
pub fn oci_output(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// `umoci unpack` of `layout:tag` into `bundle`; returns its rootfs.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    need("umoci", "umoci");
    let unpack = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .unwrap();
    assert!(
        unpack.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    bundle.join("rootfs")
}
