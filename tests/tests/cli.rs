//! The `strata` command as a user meets it: the embedded default store,
//! stdin/stdout, JSON output, and one clear line for every failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Output, Stdio};

use strata_tests::{ServerProcess, layer_like_bytes, strata};

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Asserts a failure: non-zero exit and exactly one stderr line containing `needle`.
fn assert_fails_with(o: &Output, needle: &str) {
    let stderr = String::from_utf8(o.stderr.clone()).unwrap();
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got: {stderr}"
    );
    assert!(stderr.starts_with("strata: error: "), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn embedded_push_pull_stat_with_no_server() {
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("input.bin");
    let data = layer_like_bytes(3 << 20, 3);
    std::fs::write(&input, &data).unwrap();

    let pushed = strata(cache.path())
        .arg("push")
        .arg(&input)
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{pushed:?}");
    let digest = stdout(&pushed).trim().to_owned();
    assert!(digest.starts_with("b3:") && digest.len() == 67, "{digest}");
    assert!(
        cache.path().join("segments").is_dir(),
        "the embedded store lives in STRATA_CACHE_DIR"
    );

    let output = work.path().join("out.bin");
    let pulled = strata(cache.path())
        .args(["pull", &digest, "-o"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{pulled:?}");
    assert!(std::fs::read(&output).unwrap() == data);

    let stat = strata(cache.path())
        .args(["stat", "--json"])
        .output()
        .unwrap();
    assert!(stat.status.success(), "{stat:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&stat)).unwrap();
    assert_eq!(v["objects"], 1);
    assert_eq!(v["logical_bytes"], data.len() as u64);
    for key in [
        "chunks",
        "chunk_bytes",
        "stored_bytes",
        "dedup_ratio",
        "compression_ratio",
    ] {
        assert!(v.get(key).is_some(), "stat --json lacks {key}: {v}");
    }
    assert!(v["compression_ratio"].as_f64().unwrap() > 1.0, "{v}");

    let human = strata(cache.path()).arg("stat").output().unwrap();
    assert!(stdout(&human).contains("dedup ratio"), "{human:?}");
    let one = strata(cache.path())
        .args(["stat", &digest])
        .output()
        .unwrap();
    assert!(
        stdout(&one).contains(&format!("{} bytes", data.len())),
        "{one:?}"
    );
}

#[test]
fn stdin_and_stdout_and_json_against_a_server() {
    let data_dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &[]);
    let data = layer_like_bytes(2 << 20, 8);

    let mut child = strata(cache.path())
        .args(["push", "-", "--json"])
        .env("STRATA_SERVER", &server.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let pushed = child.wait_with_output().unwrap();
    assert!(pushed.status.success(), "{pushed:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&pushed)).unwrap();
    assert_eq!(v["total_bytes"], data.len() as u64);
    assert_eq!(v["reused_chunks"], 0);
    assert!(v["chunks"].as_u64().unwrap() > 0);
    assert!(
        v["sent_bytes"].as_u64().unwrap() < data.len() as u64,
        "compressed: {v}"
    );
    let digest = v["digest"].as_str().unwrap().to_owned();

    let pulled = strata(cache.path())
        .args(["pull", &digest, "-o", "-", "--server", &server.url])
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{pulled:?}");
    assert!(pulled.stdout == data);
    assert!(
        !cache.path().join("segments").exists(),
        "with a server named, the embedded store is not touched"
    );
}

#[test]
fn failures_are_one_clear_line() {
    let cache = tempfile::tempdir().unwrap();
    let unknown = format!("b3:{}", "ab".repeat(32));
    assert_fails_with(
        &strata(cache.path())
            .args(["pull", &unknown, "-o", "-"])
            .output()
            .unwrap(),
        &format!("unknown digest {unknown}"),
    );
    assert_fails_with(
        &strata(cache.path())
            .args(["pull", "sha256:nope", "-o", "-"])
            .output()
            .unwrap(),
        "is not an object digest",
    );
    assert_fails_with(
        &strata(cache.path())
            .args(["push", "/no/such/file"])
            .output()
            .unwrap(),
        "cannot read /no/such/file",
    );
    assert_fails_with(
        &strata(cache.path())
            .args(["stat", "--server", "http://127.0.0.1:1"])
            .output()
            .unwrap(),
        "cannot reach the server at http://127.0.0.1:1",
    );
    assert_fails_with(
        &strata(cache.path())
            .args(["push", "--chunk-kib", "4096", "/dev/null"])
            .output()
            .unwrap(),
        "chunk sizes",
    );
}

#[test]
fn serve_refuses_a_taken_port_an_unusable_dir_and_a_locked_store() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let addr = server.url.trim_start_matches("http://").to_owned();

    let other = tempfile::tempdir().unwrap();
    let taken = strata(cache.path())
        .args(["serve", "--listen", &addr, "--data"])
        .arg(other.path())
        .output()
        .unwrap();
    assert_fails_with(&taken, &format!("cannot listen on {addr}"));

    let file = other.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let unusable = strata(cache.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&file)
        .output()
        .unwrap();
    assert_fails_with(&unusable, "cannot use data directory");

    let locked = strata(cache.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_fails_with(&locked, "in use by another strata process");
    server.stop();
}

/// `--scrub-interval` takes a duration with a unit or `off`, `--scrub-mbps`
/// a whole number of MiB/s of at least 1; anything else is refused before
/// the store is opened, naming the flag and what it takes.
#[test]
fn serve_takes_a_scrub_schedule_and_refuses_a_bad_one_clearly() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    for (flag, value, needle) in [
        ("--scrub-interval", "24", "has no unit"),
        ("--scrub-interval", "soon", "is not a duration"),
        ("--scrub-interval", "2w", "unknown unit"),
        ("--scrub-interval", "1.5h", "unknown unit"),
        ("--scrub-mbps", "0", "use --scrub-interval off"),
        ("--scrub-mbps", "fast", "a whole number of MiB/s"),
        ("--scrub-mbps", "2.5", "a whole number of MiB/s"),
    ] {
        let out = strata(cache.path())
            .args(["serve", "--listen", "127.0.0.1:0", flag, value, "--data"])
            .arg(data.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(
            stderr.contains(flag) && stderr.contains(needle),
            "{flag} {value}: expected {needle:?} in: {stderr}"
        );
    }
    assert!(
        std::fs::read_dir(data.path()).unwrap().next().is_none(),
        "a refused flag must not touch the store"
    );

    let on = ServerProcess::start(
        data.path(),
        &["--scrub-interval", "10m", "--scrub-mbps", "8"],
    );
    assert!(on.log().contains("background scrub on"), "{}", on.log());
    on.stop();
    let off = ServerProcess::start(data.path(), &["--scrub-interval", "off"]);
    assert!(!off.log().contains("background scrub on"), "{}", off.log());
    off.stop();
    // The default is on (a pass a day).
    let default = ServerProcess::start(data.path(), &[]);
    assert!(
        default.log().contains("background scrub on"),
        "{}",
        default.log()
    );
    default.stop();
}

/// `--tag`, `--output` and `FROM` share one reference parser: a name Docker
/// refuses is refused before anything runs, and `oci:DIR:TAG` splits at the
/// first `:` everywhere.
#[test]
fn image_names_are_refused_up_front_by_the_one_reference_parser() {
    let cache = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("Dockerfile"), "FROM scratch\nENV A=1\n").unwrap();
    let ctx = context.path().to_str().unwrap();
    let clap_error = |o: &Output, needle: &str| {
        let stderr = String::from_utf8(o.stderr.clone()).unwrap();
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    };
    let upper = strata(cache.path())
        .args(["build", "--tag", "MyApp", ctx])
        .output()
        .unwrap();
    clap_error(&upper, "the repository name `MyApp` must be lower-case");
    let out = context.path().join("o");
    let two_tags = strata(cache.path())
        .args([
            "build",
            "--output",
            &format!("oci:{}:x:v1", out.display()),
            ctx,
        ])
        .output()
        .unwrap();
    clap_error(&two_tags, "the tag `x:v1`");
    assert!(!out.exists(), "a refused --output wrote {}", out.display());
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "a refused build opened the cache"
    );
}

/// Two commands on one embedded cache take turns: the second waits, says
/// so once, and completes when the first lets go.
#[test]
fn a_command_on_an_embedded_cache_in_use_waits_its_turn_and_says_so() {
    use std::io::BufRead;
    let cache = tempfile::tempdir().unwrap();
    // Hold the store's lock as another strata command does.
    let lock = std::fs::File::create(cache.path().join("LOCK")).unwrap();
    lock.lock().unwrap();
    let input = cache.path().join("input");
    std::fs::write(&input, b"waiting is better than failing\n").unwrap();
    let mut push = strata(cache.path())
        .arg("push")
        .arg(&input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(push.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.contains("waiting for another strata command using the cache at"),
        "{line}"
    );
    assert!(push.try_wait().unwrap().is_none(), "it waits, not fails");
    drop(lock);
    let out = push.wait_with_output().unwrap();
    assert!(out.status.success());
    let digest = String::from_utf8(out.stdout).unwrap();
    assert!(digest.trim().starts_with("b3:"), "{digest}");
}
