//! Step results and tags from a server that lies: a flipped signature, a
//! swapped layer or tag target, a doctored provenance, another key's or
//! another name's true entry, a stripped signature, a rollback dressed up
//! as the newest change, an answer one short. The client takes none of them
//! as a hit; it names what it refused and whose name the lie carried. A
//! build through such a server runs every step and makes the image an
//! honest build makes.
//!
//! The server is the real store behind lying services
//! ([`strata_tests::hostile`]); every lie is checked to have been told, and
//! the truth to be a hit again afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use serde_json::Value;
use strata_client::{Client, ClientError, Distrust, Progress, StepLookup, TagLookup};
use strata_proto::v1::Provenance;
use strata_proto::{Digest, PublicKey, StepResult};
use strata_tests::builds::{build, build_json, context, statuses};
use strata_tests::hostile::{HostileServer, Tamper};
use strata_tests::{random_bytes, test_client_config, test_trust};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// A hostile server, honest for now, holding two layers, a signed step
/// result for each and a signed tag for each, all by the test's key.
struct Scene {
    _dir: tempfile::TempDir,
    server: HostileServer,
    client: Client,
    signer: PublicKey,
    /// The step key asked about, its result's layer, and its tag.
    key: Digest,
    layer: Digest,
    /// Another step key, with a true result naming `evil`.
    other_key: Digest,
    evil: Digest,
}

const TAG: &str = "app:1";
const OTHER_TAG: &str = "other:1";

impl Scene {
    async fn start() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let server = HostileServer::start(dir.path()).await;
        let client = server.client(test_client_config()).await;
        let signer = test_trust().trusted()[0];
        let push = |seed: u64| {
            let client = client.clone();
            async move {
                client
                    .push(
                        Cursor::new(random_bytes(64 << 10, seed)),
                        LAYER_TYPE,
                        &Progress::new(),
                    )
                    .await
                    .unwrap()
                    .digest
            }
        };
        let layer = push(1).await;
        let evil = push(2).await;
        let key = Digest::of(b"RUN make");
        let other_key = Digest::of(b"RUN make evil");
        assert!(client.record_step(&key, &result(layer)).await.unwrap());
        assert!(client.record_step(&other_key, &result(evil)).await.unwrap());
        client.set_tag(TAG, &layer).await.unwrap();
        client.set_tag(OTHER_TAG, &evil).await.unwrap();
        Scene {
            _dir: dir,
            server,
            client,
            signer,
            key,
            layer,
            other_key,
            evil,
        }
    }

    /// Tells `tamper`, looks the step key up, checks the lie was told, and
    /// that the truth is a hit once the server is honest again.
    async fn step_lookup_under(&self, tamper: Tamper) -> Result<StepLookup, ClientError> {
        let before = self.server.tampered();
        self.server.set_tamper(tamper.clone());
        let judged = self
            .client
            .lookup_steps_judged(&[self.key])
            .await
            .map(|mut v| v.remove(0));
        let plain = self.client.lookup_steps(&[self.key]).await;
        assert!(
            self.server.tampered() > before,
            "the server never told the lie {tamper:?}"
        );
        match &plain {
            Ok(hits) => assert_eq!(hits, &[None], "{tamper:?} became a hit"),
            Err(e) => assert!(judged.is_err(), "{tamper:?}: {e}"),
        }
        self.server.set_tamper(Tamper::Honest);
        match self.client.lookup_steps_judged(&[self.key]).await.unwrap()[0] {
            StepLookup::Hit(ref r) => assert_eq!(r.layer, Some(self.layer)),
            ref other => panic!("the honest answer after {tamper:?} is {other:?}"),
        }
        judged
    }

    /// As [`Scene::step_lookup_under`], for the tag.
    async fn tag_lookup_under(&self, tamper: Tamper) -> TagLookup {
        let before = self.server.tampered();
        self.server.set_tamper(tamper.clone());
        let judged = self.client.get_tag_judged(TAG).await.unwrap();
        let plain = self.client.get_tag(TAG).await.unwrap();
        assert!(
            self.server.tampered() > before,
            "the server never told the lie {tamper:?}"
        );
        assert_eq!(plain, None, "{tamper:?} became a hit");
        self.server.set_tamper(Tamper::Honest);
        assert_eq!(self.client.get_tag(TAG).await.unwrap(), Some(self.layer));
        judged
    }
}

fn result(layer: Digest) -> StepResult {
    StepResult {
        layer: Some(layer),
        config: b"{}".to_vec(),
        provenance: Provenance {
            builder: "hostile results test".into(),
            instruction: "RUN make".into(),
            network: "none".into(),
            hermetic: true,
            ..Default::default()
        },
        seal: None,
    }
}

/// `judged` is a refusal for a bad signature, naming `claimed` as the
/// signer the lie carried, and saying `says`.
fn forged(judged: &Distrust, claimed: Option<PublicKey>, says: &str) {
    let Distrust::BadSignature { claimed: named, .. } = judged else {
        panic!("expected a bad signature, got {judged:?}");
    };
    assert_eq!(*named, claimed, "{judged}");
    let text = judged.to_string();
    assert!(text.starts_with("forged or damaged: "), "{text}");
    assert!(text.contains(says), "{text:?} does not say {says:?}");
}

fn untrusted_step(lookup: Result<StepLookup, ClientError>) -> Distrust {
    match lookup.unwrap() {
        StepLookup::Untrusted(d) => d,
        other => panic!("expected an untrusted answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_doctored_step_result_is_a_miss_naming_the_signer_it_claims() {
    let s = Scene::start().await;
    let bad = "the signature does not verify";
    for tamper in [
        Tamper::FlipStepSignature,
        Tamper::StepLayer(s.evil),
        Tamper::StepProvenance,
        // A true result, truly signed, but for another step: the step key
        // is part of what is signed.
        Tamper::StepOfKey(s.other_key),
    ] {
        let judged = untrusted_step(s.step_lookup_under(tamper).await);
        forged(&judged, Some(s.signer), bad);
    }
    let judged = untrusted_step(s.step_lookup_under(Tamper::UnsignStep).await);
    forged(&judged, None, "not signed");
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_manifest_that_is_not_the_results_layers_is_an_integrity_error() {
    let s = Scene::start().await;
    // A fresh client: nothing kept from the scene's own lookups.
    let fresh = s.server.client(test_client_config()).await;
    s.server.set_tamper(Tamper::StepLayerManifestOf(s.evil));
    let before = s.server.tampered();
    let err = fresh
        .lookup_steps_judged(&[s.key])
        .await
        .expect_err("a lookup carrying another object's manifest was accepted");
    assert!(s.server.tampered() > before, "the lie was never told");
    match &err {
        ClientError::Integrity(m) => {
            assert!(m.contains(&s.layer.to_string()), "{m}");
            assert!(m.contains("hashes to"), "{m}");
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    // Nothing of the lie was kept: the layer's manifest comes from the
    // honest server, and pulls as the layer.
    s.server.set_tamper(Tamper::Honest);
    let manifest = fresh.get_manifest(&s.layer).await.unwrap();
    assert_eq!(manifest.digest(), s.layer);
    let honest = fresh.lookup_steps(&[s.key]).await.unwrap();
    assert_eq!(honest[0].as_ref().and_then(|r| r.layer), Some(s.layer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_short_of_a_step_key_is_a_protocol_error() {
    let s = Scene::start().await;
    let err = s
        .step_lookup_under(Tamper::DropStepHit)
        .await
        .expect_err("a short answer must be refused");
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("asked for 1 step keys, the server answered 0")),
        "{err:?}"
    );
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_doctored_tag_is_a_miss_naming_the_signer_it_claims() {
    let s = Scene::start().await;
    for tamper in [
        Tamper::FlipTagSignature,
        Tamper::TagTarget(s.evil),
        // The time is signed: a stale tag cannot pass for a fresh one.
        Tamper::TagTime,
    ] {
        let TagLookup::Untrusted(judged) = s.tag_lookup_under(tamper).await else {
            panic!("a doctored tag was not refused");
        };
        forged(&judged, Some(s.signer), "the signature does not verify");
    }
    // Another name's true tag: the name is signed too, and the client
    // checks it is the one it asked for before the signature.
    let TagLookup::Untrusted(judged) = s
        .tag_lookup_under(Tamper::TagOfName(OTHER_TAG.into()))
        .await
    else {
        panic!("another name's tag was not refused");
    };
    forged(
        &judged,
        Some(s.signer),
        &format!("asked for tag {TAG:?}, the server sent {OTHER_TAG:?}"),
    );
    s.server.stop().await;
}

/// The attack end to end: a server (or anyone between it and the builder)
/// points every cached step of a victim's build at its own layer, under the
/// victim's own signer. The build runs every step instead, says so, and
/// makes the image an honest build makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_through_a_server_forging_its_results_runs_every_step_and_ships_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(dir.path()).await;
    let client = server.client(test_client_config()).await;
    let evil = client
        .push(
            Cursor::new(b"malicious layer".to_vec()),
            LAYER_TYPE,
            &Progress::new(),
        )
        .await
        .unwrap()
        .digest;
    let ctx = context("FROM scratch\nCOPY data.txt /data.txt\nCOPY busybox /bin/busybox\n");
    let url = server.url.clone();
    let ctx_path = ctx.path().to_owned();
    let run = move |args: Vec<String>| {
        let ctx_path = ctx_path.clone();
        tokio::task::spawn_blocking(move || {
            let cache = tempfile::tempdir().unwrap();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            build(cache.path(), &ctx_path, &args)
        })
    };
    let args = |url: &str| vec!["--json".to_owned(), "--server".to_owned(), url.to_owned()];

    // An honest first build records its results; a second, from a fresh
    // local cache, takes them.
    let first = run(args(&url)).await.unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let honest: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(statuses(&honest), ["executed", "executed"]);
    let again = run(args(&url)).await.unwrap();
    let cached: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(statuses(&cached), ["cached", "cached"]);

    server.set_tamper(Tamper::StepLayer(evil));
    let before = server.tampered();
    let out = run(args(&url)).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(server.tampered() > before, "the lie was never told");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statuses(&report), ["executed", "executed"], "{stderr}");
    let signer = test_trust().trusted()[0].to_string();
    for step in report["steps"].as_array().unwrap() {
        assert_eq!(step["untrusted"]["signer"], signer, "{step}");
        let reason = step["untrusted"]["reason"].as_str().unwrap();
        assert!(reason.starts_with("forged or damaged"), "{reason}");
    }
    assert_eq!(
        stderr
            .matches("untrusted: a cached result is forged or damaged")
            .count(),
        2,
        "{stderr}"
    );
    assert_eq!(report["manifest_digest"], honest["manifest_digest"]);
    let offline = tempfile::tempdir().unwrap();
    let clean = build_json(offline.path(), ctx.path(), &[]);
    assert_eq!(report["manifest_digest"], clean["manifest_digest"]);
    server.stop().await;
}
