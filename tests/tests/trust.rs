//! Signed step results and trust lists (issue #12), tried as an attacker
//! would: a writer the server lets in but the victim does not trust poisons
//! every step of the victim's Dockerfile and tags its image; a forged
//! signature, a signature lifted onto another step, an unsigned result, a
//! replayed older tag, malformed keys. And as a team would use it: a
//! colleague's results are hits once their key is in the trust list, and
//! each signer's results survive an index rebuild side by side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::Path;

use serde_json::Value;
use strata_client::{Client, ClientConfig, Distrust, Progress, StepLookup, TagLookup, TrustPolicy};
use strata_proto::v1::step_cache_client::StepCacheClient;
use strata_proto::v1::tags_client::TagsClient;
use strata_proto::v1::{LookupStepsRequest, Provenance, RecordStepRequest, SetTagRequest};
use strata_proto::{Digest, PublicKey, SignedTag, SigningKey, StepResult};
use strata_tests::builds::{build, build_json, context, statuses};
use strata_tests::{ServerProcess, TestServer, settled_stats, strata, test_trust};
use tonic::Code;

const DOCKERFILE: &str = "FROM scratch\nCOPY data.txt /data.txt\nCOPY busybox /bin/busybox\n";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32]).unwrap()
}

/// A client of `url` that signs with `signer` and trusts only it.
async fn client_as(url: &str, signer: SigningKey) -> Client {
    let config = ClientConfig {
        trust: TrustPolicy::new(Some(signer), []),
        ..ClientConfig::default()
    };
    Client::connect(url, config).await.unwrap()
}

fn result(layer: Option<Digest>, builder: &str) -> StepResult {
    StepResult {
        layer,
        config: b"{}".to_vec(),
        provenance: Provenance {
            builder: builder.into(),
            instruction: "COPY data.txt /data.txt".into(),
            ..Default::default()
        },
        seal: None,
    }
}

/// `strata key new FILE`: the new key's public key, as printed.
fn new_key_file(path: &Path) -> PublicKey {
    let out = strata(path.parent().unwrap())
        .args(["key", "new"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Asserts `r` is a refusal with `code` whose message says `says`.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, says: &str) {
    let status = r.expect_err("must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{says:?}: {status:?}");
}

fn step_keys(report: &Value) -> Vec<Digest> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_writer_outside_the_trust_list_cannot_poison_a_build_and_both_results_stand()
{
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let ctx = context(DOCKERFILE);

    // The attacker computes the victim's step keys offline from the
    // Dockerfile and context alone…
    let offline = tempfile::tempdir().unwrap();
    let plan = build_json(offline.path(), ctx.path(), &["--dry-run"]);
    let keys = step_keys(&plan);
    assert_eq!(keys.len(), 2);
    // …stores a layer, records it under every key with a valid signature of
    // its own, and tags it as the victim's image. The server takes all of
    // it: the writer is allowed, the signatures are real.
    let attacker_key = key(66);
    let attacker_public = attacker_key.public_key();
    let attacker = client_as(&server.url, attacker_key).await;
    let evil = attacker
        .push(
            Cursor::new(b"malicious layer".to_vec()),
            "application/vnd.oci.image.layer.v1.tar",
            &Progress::new(),
        )
        .await
        .unwrap();
    for key in &keys {
        assert!(
            attacker
                .record_step(key, &result(Some(evil.digest), "attacker"))
                .await
                .unwrap()
        );
    }
    attacker
        .set_tag("victim:latest", &evil.digest)
        .await
        .unwrap();

    // The victim's build runs every step, says whose results it refused,
    // and makes exactly the image a clean offline build makes.
    let cache = tempfile::tempdir().unwrap();
    let out = build(
        cache.path(),
        ctx.path(),
        &["--json", "--server", &server.url],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statuses(&report), ["executed", "executed"]);
    for step in report["steps"].as_array().unwrap() {
        assert_eq!(
            step["untrusted"]["signer"],
            attacker_public.to_string(),
            "{step}"
        );
        let reason = step["untrusted"]["reason"].as_str().unwrap();
        assert!(reason.contains("not in the trust list"), "{reason}");
    }
    assert_eq!(
        stderr
            .matches("untrusted: a cached result is signed by")
            .count(),
        2,
        "{stderr}"
    );
    let clean = build_json(offline.path(), ctx.path(), &[]);
    assert_eq!(report["manifest_digest"], clean["manifest_digest"]);

    // Both results stand, side by side: each party gets its own, and the
    // disagreement is counted, not hidden.
    let victim = server.client().await;
    let attacker_policy = attacker.trust().clone();
    for (key, hit) in keys
        .iter()
        .zip(victim.lookup_steps_judged(&keys).await.unwrap())
    {
        let StepLookup::Hit(own) = hit else {
            panic!("step {key}: the victim's own result is a hit, got {hit:?}");
        };
        assert_ne!(own.layer, Some(evil.digest));
        assert_eq!(own.verify(key), Ok(test_trust().trusted()[0]));
    }
    for hit in attacker.lookup_steps(&keys).await.unwrap() {
        assert_eq!(hit.unwrap().layer, Some(evil.digest));
    }
    assert_eq!(attacker_policy.trusted(), &[attacker_public]);
    let stats = settled_stats(&server.url).await;
    // Two steps by two signers, and the victim's two compressed-layer
    // mappings (recorded as step results too).
    assert_eq!(stats.step_results, 6, "{stats:?}");
    assert_eq!(stats.step_divergences, 2, "{stats:?}");

    // The tag is the attacker's, and says so.
    assert_eq!(victim.get_tag("victim:latest").await.unwrap(), None);
    assert_eq!(
        victim.get_tag_judged("victim:latest").await.unwrap(),
        TagLookup::Untrusted(Distrust::NotTrusted(attacker_public))
    );
    // A build FROM that name does not take it: it goes to the registry,
    // and, with none reachable, says whose tag it passed over.
    let from_tag = context("FROM victim:latest\nCOPY data.txt /data.txt\n");
    let out = build(
        cache.path(),
        from_tag.path(),
        &["--server", &server.url, "--registry-mirror", "127.0.0.1:1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the cache has a tag victim:latest, but it is signed by {attacker_public}"
        )),
        "{stderr}"
    );
    drop((attacker, victim));
    server.stop();
}

#[test]
fn a_colleagues_results_are_hits_once_their_key_is_in_the_trust_list() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &[]);
    let ctx = context(DOCKERFILE);
    let keys_dir = tempfile::tempdir().unwrap();
    let colleague_file = keys_dir.path().join("colleague.key");
    let colleague = new_key_file(&colleague_file);
    let colleague_cache = tempfile::tempdir().unwrap();
    let theirs = strata(colleague_cache.path())
        .args(["build", "--json", "--server", &server.url])
        .arg(ctx.path())
        .env("STRATA_SIGNING_KEY", &colleague_file)
        .output()
        .unwrap();
    assert!(theirs.status.success());
    let theirs: Value = serde_json::from_slice(&theirs.stdout).unwrap();
    assert_eq!(statuses(&theirs), ["executed", "executed"]);

    // Untrusted: a dry run would run both steps, and names the colleague.
    let cache = tempfile::tempdir().unwrap();
    let trust_file = keys_dir.path().join("trust");
    let server_flag = ["--server", server.url.as_str()];
    let plan = build_json(
        cache.path(),
        ctx.path(),
        &[&["--dry-run"][..], &server_flag].concat(),
    );
    assert_eq!(statuses(&plan), ["would_run", "would_run"]);
    // A trust list named but missing is an error, not an empty list.
    let missing = build(
        cache.path(),
        ctx.path(),
        &[
            &["--dry-run", "--trust", trust_file.to_str().unwrap()][..],
            &server_flag,
        ]
        .concat(),
    );
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("reading trust list"), "{stderr}");
    assert_eq!(
        plan["steps"][0]["untrusted"]["signer"],
        colleague.to_string()
    );

    // `strata trust add`, then the build takes the colleague's results.
    let trust = |args: &[&str]| {
        strata(cache.path())
            .arg("trust")
            .args(args)
            .arg("--trust")
            .arg(&trust_file)
            .output()
            .unwrap()
    };
    let added = trust(&["add", &colleague.to_string(), "--name", "colleague laptop"]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let listed = trust(&["list"]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains(&format!("{colleague} colleague laptop")),
        "{listed}"
    );
    let bad = trust(&["add", "ed25519:not-a-key"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a public key"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let ours = build_json(
        cache.path(),
        ctx.path(),
        &[&["--trust", trust_file.to_str().unwrap()][..], &server_flag].concat(),
    );
    assert_eq!(statuses(&ours), ["cached", "cached"]);
    assert_eq!(ours["manifest_digest"], theirs["manifest_digest"]);

    // Removed again: untrusted again.
    let removed = trust(&["remove", &colleague.to_string()]);
    assert!(removed.status.success());
    let plan = build_json(
        cache.path(),
        ctx.path(),
        &[
            &["--dry-run", "--trust", trust_file.to_str().unwrap()][..],
            &server_flag,
        ]
        .concat(),
    );
    assert_eq!(statuses(&plan), ["would_run", "would_run"]);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_lifted_unsigned_and_malformed_entries_are_refused_and_the_store_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let honest = server.client().await;
    let layer = honest
        .push(
            Cursor::new(b"a layer".to_vec()),
            "application/vnd.oci.image.layer.v1.tar",
            &Progress::new(),
        )
        .await
        .unwrap()
        .digest;
    let (a, b) = (key(1), key(2));
    let step = Digest::of(b"step one");
    let mut signed = result(Some(layer), "a");
    signed.sign(&step, &a);
    let mut raw = StepCacheClient::connect(server.url.clone()).await.unwrap();
    let record = |key: Digest, result: strata_proto::v1::StepResult| {
        let mut raw = raw.clone();
        async move {
            raw.record_step(RecordStepRequest {
                key: key.to_vec(),
                result: Some(result),
            })
            .await
        }
    };
    // B's name on A's signature.
    let mut claimed = signed.to_wire();
    claimed.signer = b.public_key().as_bytes().to_vec();
    refused(
        record(step, claimed).await,
        Code::InvalidArgument,
        "does not verify",
    );
    // A's valid signature lifted onto another step, or onto another layer.
    refused(
        record(Digest::of(b"step two"), signed.to_wire()).await,
        Code::InvalidArgument,
        "does not verify",
    );
    let mut swapped = signed.to_wire();
    swapped.layer = Digest::of(b"evil").to_vec();
    refused(
        record(step, swapped).await,
        Code::InvalidArgument,
        "does not verify",
    );
    // Unsigned, and signatures of the wrong shape.
    refused(
        record(step, result(Some(layer), "a").to_wire()).await,
        Code::InvalidArgument,
        "not signed",
    );
    let mut short = signed.to_wire();
    short.signer.pop();
    refused(record(step, short).await, Code::InvalidArgument, "32 bytes");
    let mut long = signed.to_wire();
    long.signature.push(0);
    refused(record(step, long).await, Code::InvalidArgument, "64 bytes");
    // Lookups naming too many or malformed trusted signers.
    let lookup = |signers: Vec<Vec<u8>>| {
        let mut raw = raw.clone();
        async move {
            raw.lookup_steps(LookupStepsRequest {
                keys: vec![step.to_vec()],
                trusted_signers: signers,
                include_layer_manifests: false,
            })
            .await
        }
    };
    refused(
        lookup(vec![vec![7; 32]; 65]).await,
        Code::ResourceExhausted,
        "trusted signers",
    );
    refused(
        lookup(vec![vec![7; 5]]).await,
        Code::InvalidArgument,
        "trusted signer 0",
    );
    let stats = honest.stats().await.unwrap();
    assert_eq!((stats.step_results, stats.step_divergences), (0, 0));

    // The genuine one is taken, once.
    raw.record_step(RecordStepRequest {
        key: step.to_vec(),
        result: Some(signed.to_wire()),
    })
    .await
    .unwrap();

    // Tags: unsigned refused; a signer's older change cannot roll back a
    // newer one; a newer one replaces it.
    let mut tags = TagsClient::connect(server.url.clone()).await.unwrap();
    refused(
        tags.set_tag(SetTagRequest { tag: None }).await,
        Code::InvalidArgument,
        "no tag sent",
    );
    let mut unsigned = SignedTag::sign("app:v1", layer, 10, &a).to_wire();
    unsigned.signature.clear();
    unsigned.signer.clear();
    refused(
        tags.set_tag(SetTagRequest {
            tag: Some(unsigned),
        })
        .await,
        Code::InvalidArgument,
        "not signed",
    );
    let other = honest
        .push(
            Cursor::new(b"another object".to_vec()),
            "application/octet-stream",
            &Progress::new(),
        )
        .await
        .unwrap()
        .digest;
    let set = |tag: SignedTag| {
        let mut tags = tags.clone();
        async move {
            tags.set_tag(SetTagRequest {
                tag: Some(tag.to_wire()),
            })
            .await
        }
    };
    set(SignedTag::sign("app:v1", layer, 2_000, &a))
        .await
        .unwrap();
    refused(
        set(SignedTag::sign("app:v1", other, 1_000, &a)).await,
        Code::FailedPrecondition,
        "roll it back",
    );
    let a_client = client_as(&server.url, key(1)).await;
    assert_eq!(a_client.get_tag("app:v1").await.unwrap(), Some(layer));
    set(SignedTag::sign("app:v1", other, 3_000, &a))
        .await
        .unwrap();
    assert_eq!(a_client.get_tag("app:v1").await.unwrap(), Some(other));
    // A forged change in A's name.
    let mut forged = SignedTag::sign("app:v1", layer, 4_000, &b);
    forged.seal.signer = a.public_key();
    refused(set(forged).await, Code::InvalidArgument, "does not verify");
    assert_eq!(a_client.get_tag("app:v1").await.unwrap(), Some(other));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signers_results_and_tags_survive_an_index_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (a, b) = (
        client_as(&server.url, key(1)).await,
        client_as(&server.url, key(2)).await,
    );
    let push = |client: &Client, bytes: &'static [u8]| {
        let client = client.clone();
        async move {
            client
                .push(
                    Cursor::new(bytes.to_vec()),
                    "application/octet-stream",
                    &Progress::new(),
                )
                .await
                .unwrap()
                .digest
        }
    };
    let (la, lb) = (push(&a, b"a's layer").await, push(&b, b"b's layer").await);
    let step = Digest::of(b"shared step");
    assert!(a.record_step(&step, &result(Some(la), "a")).await.unwrap());
    assert!(b.record_step(&step, &result(Some(lb), "b")).await.unwrap());
    // A signer's own second, different result is refused; the same again
    // is not new.
    assert!(a.record_step(&step, &result(Some(lb), "a")).await.is_err());
    assert!(!a.record_step(&step, &result(Some(la), "a")).await.unwrap());
    a.set_tag("app", &la).await.unwrap();
    b.set_tag("app", &lb).await.unwrap();

    let check = || async {
        assert_eq!(
            a.lookup_steps(&[step]).await.unwrap()[0]
                .as_ref()
                .unwrap()
                .layer,
            Some(la)
        );
        assert_eq!(
            b.lookup_steps(&[step]).await.unwrap()[0]
                .as_ref()
                .unwrap()
                .layer,
            Some(lb)
        );
        assert_eq!(a.get_tag("app").await.unwrap(), Some(la));
        assert_eq!(b.get_tag("app").await.unwrap(), Some(lb));
    };
    check().await;
    let report = server.store.rebuild_index().await.unwrap();
    assert_eq!(report.unsigned_left_out, 0);
    check().await;
    let stats = server.store.stats();
    assert_eq!(stats.step_results, 2);
    server.stop().await;
}
