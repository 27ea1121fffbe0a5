//! Who may write what: bearer tokens with scopes, tried as an attacker
//! would — no header, the wrong scheme, empty, garbage and oversized
//! tokens, a valid token without the scope, broken and loose token files,
//! an open server beyond loopback — and the cache poisoning of issue #12
//! shown refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use strata_client::{ClientError, Progress};
use strata_proto::v1::step_cache_client::StepCacheClient;
use strata_proto::v1::{LookupStepsRequest, Provenance, RecordStepRequest};
use strata_proto::{Digest, StepResult};
use strata_tests::{
    ServerProcess, client_with_token, random_bytes, start_with_tokens, strata, token_file,
};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn result(layer: Option<Digest>) -> StepResult {
    StepResult {
        layer,
        config: b"{}".to_vec(),
        provenance: Provenance {
            builder: "attacker".into(),
            instruction: "RUN evil".into(),
            network: "none".into(),
            hermetic: true,
            created_unix: 1_700_000_000,
            ..Default::default()
        },
        seal: None,
    }
}

/// A LookupSteps call with `authorization` set to `header` (none: absent).
async fn lookup_with_header(url: &str, header: Option<&[u8]>) -> tonic::Status {
    let mut raw = StepCacheClient::connect(url.to_owned()).await.unwrap();
    let mut request = tonic::Request::new(LookupStepsRequest {
        keys: vec![Digest::of(b"k").to_vec()],
        trusted_signers: vec![],
        include_layer_manifests: false,
    });
    if let Some(value) = header {
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(value).expect("a header value"),
        );
    }
    raw.lookup_steps(request)
        .await
        .expect_err("the call must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_unauthenticated_and_the_token_is_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = token_file(dir.path(), &[("reader", "read")]);
    let server = start_with_tokens(&dir.path().join("data"), &file).await;
    let oversized = format!("Bearer {}", "A".repeat(8 << 10));
    let unknown = format!("Bearer strata_{}", "0".repeat(64));
    let basic = format!("Basic {}", tokens[0]);
    let cases: Vec<(&str, Option<&[u8]>)> = vec![
        ("no header", None),
        ("wrong scheme", Some(basic.as_bytes())),
        ("no scheme", Some(tokens[0].as_bytes())),
        ("empty token", Some(b"Bearer ")),
        ("garbage", Some(b"Bearer ' OR 1=1 -- ../../etc/passwd %00")),
        ("two tokens", Some(b"Bearer a, Bearer b")),
        ("unknown token", Some(unknown.as_bytes())),
        ("oversized token", Some(oversized.as_bytes())),
    ];
    for (case, header) in cases {
        let status = lookup_with_header(&server.url, header).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(
            status.message().contains("Bearer") && !status.message().contains(&tokens[0]),
            "{case}: the refusal says what to send and never echoes a token: {}",
            status.message()
        );
    }
    // The same token, properly sent, is let in.
    let good = format!("Bearer {}", tokens[0]);
    let mut raw = StepCacheClient::connect(server.url.clone()).await.unwrap();
    let mut request = tonic::Request::new(LookupStepsRequest {
        keys: vec![Digest::of(b"k").to_vec()],
        trusted_signers: vec![],
        include_layer_manifests: false,
    });
    request
        .metadata_mut()
        .insert("authorization", good.parse().unwrap());
    let hits = raw.lookup_steps(request).await.unwrap().into_inner().hits;
    assert_eq!(hits.len(), 1);
    assert!(!hits[0].found);
    // The scheme is case-insensitive, as HTTP says.
    let lower = format!("bearer {}", tokens[0]);
    let mut request = tonic::Request::new(LookupStepsRequest {
        keys: vec![],
        trusted_signers: vec![],
        include_layer_manifests: false,
    });
    request
        .metadata_mut()
        .insert("authorization", lower.parse().unwrap());
    raw.lookup_steps(request).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_without_the_scope_is_denied_naming_the_missing_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = token_file(
        dir.path(),
        &[
            ("reader", "read"),
            ("pusher", "read,cas-write"),
            ("builder", "read,cas-write,result-write"),
            ("operator", "admin"),
        ],
    );
    let server = start_with_tokens(&dir.path().join("data"), &file).await;
    let reader = client_with_token(&server.url, Some(&tokens[0])).await;
    let pusher = client_with_token(&server.url, Some(&tokens[1])).await;
    let builder = client_with_token(&server.url, Some(&tokens[2])).await;
    let operator = client_with_token(&server.url, Some(&tokens[3])).await;
    let bytes = random_bytes(300_000, 7);

    let denied = |e: ClientError, scope: &str| match e {
        ClientError::PermissionDenied { message, .. } => assert!(
            message.contains(&format!("`{scope}`")),
            "the refusal names the missing scope {scope}: {message}"
        ),
        other => panic!("expected PERMISSION_DENIED naming {scope}, got {other}"),
    };

    // read: may look, not write.
    let e = reader
        .push(Cursor::new(bytes.clone()), "x", &Progress::new())
        .await
        .unwrap_err();
    denied(e, "cas-write");
    // cas-write: content, verified; not results, not tags.
    let pushed = pusher
        .push(Cursor::new(bytes.clone()), "x", &Progress::new())
        .await
        .unwrap();
    let key = Digest::of(b"a step");
    let e = pusher
        .record_step(&key, &result(Some(pushed.digest)))
        .await
        .unwrap_err();
    denied(e, "result-write");
    let e = pusher
        .set_tag("app:latest", &pushed.digest)
        .await
        .unwrap_err();
    denied(e, "result-write");
    denied(pusher.stats().await.unwrap_err(), "admin");
    // admin is not read: scopes are independent.
    denied(operator.lookup_steps(&[key]).await.unwrap_err(), "read");
    assert_eq!(operator.stats().await.unwrap().step_results, 0);
    // result-write records; read sees it.
    assert!(
        builder
            .record_step(&key, &result(Some(pushed.digest)))
            .await
            .unwrap()
    );
    builder.set_tag("app:latest", &pushed.digest).await.unwrap();
    assert!(reader.lookup_steps(&[key]).await.unwrap()[0].is_some());
    assert_eq!(
        reader.get_tag("app:latest").await.unwrap(),
        Some(pushed.digest)
    );
    let out = reader.pull_to_vec(&pushed.digest).await.unwrap();
    assert_eq!(out, bytes);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_need_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = token_file(dir.path(), &[("reader", "read")]);
    let server = start_with_tokens(&dir.path().join("data"), &file).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_any_token_is_told_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = token_file(dir.path(), &[("reader", "read")]);
    let server = start_with_tokens(&dir.path().join("data"), &file).await;
    let anonymous = client_with_token(&server.url, None).await;
    let e = anonymous
        .lookup_steps(&[Digest::of(b"k")])
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unauthenticated { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("STRATA_TOKEN") && text.contains("token new"),
        "{text}"
    );
    server.stop().await;
}

/// `strata serve` with `args`, expected to exit at once: its status and stderr.
fn serve_refused(data: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(strata_tests::strata_bin())
        .args(["serve", "--data"])
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_token_file_stops_the_server_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = token_file(dir.path(), &[("ci", "read,cas-write")]);
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("# a comment is fine\n");
    text.push_str("intruder read,root b3:1234\n");
    std::fs::write(&file, text).unwrap();
    let (status, stderr) = serve_refused(
        &dir.path().join("data"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            file.to_str().unwrap(),
        ],
    );
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("{}:3", file.display())) && stderr.contains("root"),
        "names FILE:LINE and the problem: {stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn a_token_file_others_can_write_is_refused_and_one_they_can_read_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = token_file(dir.path(), &[("ci", "read")]);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (status, stderr) = serve_refused(
        &dir.path().join("data"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            file.to_str().unwrap(),
        ],
    );
    assert!(!status.success());
    assert!(
        stderr.contains("writable by group or others") && stderr.contains("chmod 600"),
        "{stderr}"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--tokens", file.to_str().unwrap()]);
    assert!(
        server.log().contains("readable by group or others"),
        "{}",
        server.log()
    );
    server.stop();
}

#[test]
fn an_open_server_listens_beyond_loopback_only_when_told_it_is_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stderr) = serve_refused(&dir.path().join("data"), &["--listen", "0.0.0.0:0"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--tokens") && stderr.contains("--insecure-open"),
        "names both ways out: {stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");

    // Told so, it listens; with tokens it needs no such flag.
    listens_on_any_address(&["--insecure-open"]);
    let (file, _) = token_file(dir.path(), &[("ci", "read")]);
    listens_on_any_address(&["--tokens", file.to_str().unwrap()]);
}

/// Starts `strata serve --listen 0.0.0.0:0 ARGS`, waits for it to say it
/// listens, and stops it.
fn listens_on_any_address(args: &[&str]) {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(strata_tests::strata_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(data.path())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut said = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let listening = line.starts_with("strata: listening on 0.0.0.0:");
        said.push(line);
        if listening {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        said.last()
            .is_some_and(|l| l.starts_with("strata: listening on")),
        "strata serve {args:?} did not listen: {said:?}"
    );
}

#[test]
fn token_new_prints_the_token_once_and_the_file_keeps_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let cache = tempfile::tempdir().unwrap();
    let out = strata(cache.path())
        .args([
            "token",
            "new",
            "ci",
            "--scope",
            "read,cas-write",
            "--tokens",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("strata_") && token.len() > 60, "{token}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&token), "the file holds no token: {text}");
    assert!(text.starts_with("ci read,cas-write b3:"), "{text}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Names are unique; scopes must be known ones.
    let again = strata(cache.path())
        .args(["token", "new", "ci", "--scope", "read", "--tokens"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a token named"));
    let bad = strata(cache.path())
        .args(["token", "new", "x", "--scope", "read,root", "--tokens"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));

    // The token works with the CLI, from STRATA_TOKEN; without it, the
    // push fails saying why.
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--tokens", file.to_str().unwrap()]);
    let input = dir.path().join("input");
    std::fs::write(&input, random_bytes(200_000, 3)).unwrap();
    let push = |token: Option<&str>| {
        let mut cmd = strata(cache.path());
        cmd.args(["push", "--server", &server.url]).arg(&input);
        match token {
            Some(t) => cmd.env("STRATA_TOKEN", t),
            None => cmd.env_remove("STRATA_TOKEN"),
        };
        cmd.output().unwrap()
    };
    let refused = push(None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("credentials") && stderr.contains("STRATA_TOKEN"),
        "{stderr}"
    );
    let pushed = push(Some(&token));
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert!(String::from_utf8_lossy(&pushed.stdout).starts_with("b3:"));
    server.stop();
}

/// A build context holding two files and a Dockerfile that copies them:
/// no RUN step, so no sandbox is needed.
fn copy_only_context(content: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("app.txt"), content).unwrap();
    std::fs::write(ctx.path().join("config.txt"), "setting=1\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY app.txt /app.txt\nCOPY config.txt /etc/config.txt\n",
    )
    .unwrap();
    ctx
}

fn build_json(cache: &Path, ctx: &Path, server: &str, token: &str) -> (Value, String) {
    let out = strata(cache)
        .args(["build", "--json", "--server", server])
        .arg(ctx)
        .env("STRATA_TOKEN", token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed: {stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

fn statuses(report: &Value) -> Vec<&str> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect()
}

#[test]
fn a_build_whose_token_lacks_result_write_builds_stores_layers_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = token_file(
        dir.path(),
        &[("laptop", "read,cas-write"), ("operator", "admin")],
    );
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--tokens", file.to_str().unwrap()]);
    let ctx = copy_only_context("hello\n");
    let cache = tempfile::tempdir().unwrap();
    let (report, stderr) = build_json(cache.path(), ctx.path(), &server.url, &tokens[0]);
    assert_eq!(statuses(&report), ["executed", "executed"]);
    assert!(report["manifest_digest"].is_string());
    assert_eq!(
        stderr.matches("note:").count(),
        1,
        "one note, not one per step: {stderr}"
    );
    assert!(stderr.contains("result-write"), "{stderr}");
    assert_eq!(report["notes"].as_array().unwrap().len(), 1);

    // Nothing was recorded: the next build runs everything again. Its
    // layers were stored (cas-write works).
    let (again, _) = build_json(cache.path(), ctx.path(), &server.url, &tokens[0]);
    assert_eq!(statuses(&again), ["executed", "executed"]);
    assert_eq!(again["manifest_digest"], report["manifest_digest"]);
    let out = strata(cache.path())
        .args(["stat", "--json", "--server", &server.url])
        .env("STRATA_TOKEN", &tokens[1])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["step_results"], 0);
    assert!(stats["objects"].as_u64().unwrap() >= 2, "{stats}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_poisoning_of_issue_12_is_refused_and_the_victim_builds_its_own_image() {
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = token_file(
        dir.path(),
        &[
            ("attacker", "read,cas-write"),
            ("victim", "read,cas-write,result-write"),
        ],
    );
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &["--tokens", file.to_str().unwrap()]);
    let ctx = copy_only_context("the victim's own file\n");

    // The attacker, with only the victim's Dockerfile and context, computes
    // the step keys offline (keys depend on nothing else).
    let offline = tempfile::tempdir().unwrap();
    let out = strata(offline.path())
        .args(["build", "--dry-run", "--json"])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<Digest> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(keys.len(), 2);

    // Pushing a layer is allowed (cas-write: verified content, harmless)…
    let attacker = client_with_token(&server.url, Some(&tokens[0])).await;
    let evil = attacker
        .push(
            Cursor::new(b"malicious layer".to_vec()),
            "application/vnd.oci.image.layer.v1.tar",
            &Progress::new(),
        )
        .await
        .unwrap();
    // …recording it as the victim's step result or tagging it is not,
    // with a cas-write token or with none at all.
    let anonymous = client_with_token(&server.url, None).await;
    for key in &keys {
        let e = attacker
            .record_step(key, &result(Some(evil.digest)))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::PermissionDenied { .. }), "{e}");
        let e = anonymous
            .record_step(key, &result(Some(evil.digest)))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Unauthenticated { .. }), "{e}");
    }
    let e = attacker
        .set_tag("victim:latest", &evil.digest)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::PermissionDenied { .. }), "{e}");
    let e = anonymous
        .set_tag("victim:latest", &evil.digest)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unauthenticated { .. }), "{e}");
    // A raw RecordStep without any header is refused too.
    let mut raw = StepCacheClient::connect(server.url.clone()).await.unwrap();
    let status = raw
        .record_step(RecordStepRequest {
            key: keys[0].to_vec(),
            result: Some(result(Some(evil.digest)).to_wire()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // The victim's build takes nothing of it: every step runs, and the
    // image is exactly what a clean, offline build of the same context makes.
    let victim_cache = tempfile::tempdir().unwrap();
    let (url, victim_token) = (server.url.clone(), tokens[1].clone());
    let ctx_path = ctx.path().to_owned();
    let cache_path = victim_cache.path().to_owned();
    let (report, _) = tokio::task::spawn_blocking(move || {
        build_json(&cache_path, &ctx_path, &url, &victim_token)
    })
    .await
    .unwrap();
    assert_eq!(statuses(&report), ["executed", "executed"]);
    let clean = strata(offline.path())
        .args(["build", "--json"])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(clean.status.success());
    let clean: Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(report["manifest_digest"], clean["manifest_digest"]);
    let victim = client_with_token(&server.url, Some(&tokens[1])).await;
    assert_eq!(victim.get_tag("victim:latest").await.unwrap(), None);
    for hit in victim.lookup_steps(&keys).await.unwrap() {
        let hit = hit.expect("the victim's own result is recorded");
        assert_ne!(hit.layer, Some(evil.digest));
        assert_ne!(hit.provenance.builder, "attacker");
    }
    drop((attacker, anonymous, victim));
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(|| server.stop()),
    )
    .await
    .unwrap()
    .unwrap();
}
