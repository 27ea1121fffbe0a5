//! The step cache over gRPC: batched lookups in request order, results
//! accepted only when their layer is stored, the first result under a key
//! standing against a different one (counted as a divergence), and all of
//! it surviving a restart and an index rebuild.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use strata_client::{ClientError, Progress};
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::step_cache_client::StepCacheClient;
use strata_proto::v1::{
    LookupStepsRequest, Provenance, RebuildIndexRequest, RecordStepRequest, StatsRequest,
};
use strata_proto::{Digest, MAX_STEP_RESULT_BYTES, Manifest, StepResult};
use strata_tests::{TestServer, random_bytes};
use tonic::Code;

fn result(layer: Option<Digest>, config: &str, builder: &str) -> StepResult {
    StepResult {
        layer,
        config: config.as_bytes().to_vec(),
        provenance: Provenance {
            builder: builder.into(),
            instruction: "RUN make".into(),
            network: "none".into(),
            hermetic: true,
            created_unix: 1_700_000_000,
            ..Default::default()
        },
        seal: None,
    }
}

async fn stored_layer(server: &TestServer, seed: u64) -> Digest {
    let client = server.client().await;
    let report = client
        .push(
            Cursor::new(random_bytes(300_000, seed)),
            "application/vnd.oci.image.layer.v1.tar",
            &Progress::new(),
        )
        .await
        .unwrap();
    report.digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_answer_in_request_order_with_hits_and_misses() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let layer = stored_layer(&server, 1).await;
    let (k1, k2, miss) = (Digest::of(b"k1"), Digest::of(b"k2"), Digest::of(b"miss"));

    assert!(
        client
            .record_step(&k1, &result(Some(layer), "{}", "a"))
            .await
            .unwrap()
    );
    assert!(
        client
            .record_step(&k2, &result(None, r#"{"env":["A=1"]}"#, "a"))
            .await
            .unwrap()
    );

    let found = client.lookup_steps(&[miss, k2, k1, miss]).await.unwrap();
    assert_eq!(found.len(), 4);
    assert!(found[0].is_none() && found[3].is_none());
    assert_eq!(found[1].as_ref().unwrap().layer, None);
    assert_eq!(found[1].as_ref().unwrap().config, br#"{"env":["A=1"]}"#);
    assert_eq!(found[2].as_ref().unwrap().layer, Some(layer));
    assert_eq!(found[2].as_ref().unwrap().provenance.builder, "a");
    assert_eq!(client.stats().await.unwrap().step_results, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_asked_for_layer_manifests_sends_each_once_and_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let (a, b) = (
        stored_layer(&server, 1).await,
        stored_layer(&server, 2).await,
    );
    let keys = [
        Digest::of(b"layer a"),
        Digest::of(b"config only"),
        Digest::of(b"layer a again"),
        Digest::of(b"miss"),
        Digest::of(b"layer b"),
    ];
    let recorded = [
        (keys[0], Some(a)),
        (keys[1], None),
        (keys[2], Some(a)),
        (keys[4], Some(b)),
    ];
    for (key, layer) in recorded {
        client
            .record_step(&key, &result(layer, "{}", "a"))
            .await
            .unwrap();
    }
    let mut raw = StepCacheClient::connect(server.url.clone()).await.unwrap();
    let ask = |include| LookupStepsRequest {
        keys: keys.iter().map(|k| k.to_vec()).collect(),
        trusted_signers: vec![],
        include_layer_manifests: include,
    };
    let hits = raw.lookup_steps(ask(true)).await.unwrap().into_inner().hits;
    let sent: Vec<Option<Digest>> = hits
        .iter()
        .map(|h| {
            h.layer_manifest
                .clone()
                .map(|m| Manifest::from_wire(m).unwrap().digest())
        })
        .collect();
    // Layer a's manifest with its first hit only; none for a result
    // without a layer or a miss.
    assert_eq!(sent, [Some(a), None, None, None, Some(b)]);
    let plain = raw
        .lookup_steps(ask(false))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(plain.iter().all(|h| h.layer_manifest.is_none()));
    assert_eq!(
        plain.iter().map(|h| h.found).collect::<Vec<_>>(),
        [true, true, true, false, true]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_naming_a_missing_layer_is_refused_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let key = Digest::of(b"step");
    let ghost = Digest::of(b"no such layer");

    let err = client
        .record_step(&key, &result(Some(ghost), "{}", "a"))
        .await
        .unwrap_err();
    match &err {
        ClientError::Refused { message, .. } => {
            assert!(message.contains(&ghost.to_string()), "{message}");
            assert!(message.contains("not in the store"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(client.lookup_steps(&[key]).await.unwrap()[0].is_none());
    assert_eq!(client.stats().await.unwrap().step_results, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_result_stands_and_a_different_one_counts_as_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let (first, other) = (
        stored_layer(&server, 1).await,
        stored_layer(&server, 2).await,
    );
    let key = Digest::of(b"step");

    assert!(
        client
            .record_step(&key, &result(Some(first), "{}", "laptop"))
            .await
            .unwrap()
    );
    // The same outcome from another builder, at another time, agrees.
    assert!(
        !client
            .record_step(&key, &result(Some(first), "{}", "cluster"))
            .await
            .unwrap()
    );
    let err = client
        .record_step(&key, &result(Some(other), "{}", "cluster"))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("different result") && message.contains(&other.to_string()),
        "{message}"
    );
    // A different config is a different outcome too.
    assert!(
        client
            .record_step(&key, &result(Some(first), r#"{"user":"1"}"#, "x"))
            .await
            .is_err()
    );

    let kept = client.lookup_steps(&[key]).await.unwrap().pop().unwrap();
    let kept = kept.unwrap();
    assert_eq!(kept.layer, Some(first));
    assert_eq!(kept.provenance.builder, "laptop");
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.step_results, stats.step_divergences), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_records_of_one_key_store_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let layer = stored_layer(&server, 1).await;
    let key = Digest::of(b"raced");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .record_step(&key, &result(Some(layer), "{}", &format!("builder {i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1, "exactly one recorder creates the entry");
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.step_results, stats.step_divergences), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut raw = StepCacheClient::connect(server.url.clone()).await.unwrap();

    let status = raw
        .record_step(RecordStepRequest {
            key: vec![7; 5],
            result: Some(result(None, "{}", "a").to_wire()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("step key"),
        "{}",
        status.message()
    );

    let status = raw
        .record_step(RecordStepRequest {
            key: Digest::of(b"k").to_vec(),
            result: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut huge = result(None, "{}", "a").to_wire();
    huge.config = vec![b' '; MAX_STEP_RESULT_BYTES + 1];
    let status = raw
        .record_step(RecordStepRequest {
            key: Digest::of(b"k").to_vec(),
            result: Some(huge),
        })
        .await
        .unwrap_err();
    // A size limit, like every other: RESOURCE_EXHAUSTED.
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("limit"), "{}", status.message());

    let mut bad_layer = result(None, "{}", "a").to_wire();
    bad_layer.layer = vec![1; 31];
    let status = raw
        .record_step(RecordStepRequest {
            key: Digest::of(b"k").to_vec(),
            result: Some(bad_layer),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let client = server.client().await;
    assert_eq!(client.stats().await.unwrap().step_results, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_divergences_survive_restart_and_index_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let key = Digest::of(b"step");
    let layer = {
        let server = TestServer::start(dir.path()).await;
        let client = server.client().await;
        let layer = stored_layer(&server, 1).await;
        let other = stored_layer(&server, 2).await;
        client
            .record_step(&key, &result(Some(layer), "{}", "a"))
            .await
            .unwrap();
        client
            .record_step(&key, &result(Some(other), "{}", "b"))
            .await
            .unwrap_err();
        server.stop().await;
        layer
    };
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let check = |found: Vec<Option<StepResult>>| {
        assert_eq!(found[0].as_ref().map(|r| r.layer), Some(Some(layer)));
    };
    check(client.lookup_steps(&[key]).await.unwrap());

    let mut admin = AdminClient::connect(server.url.clone()).await.unwrap();
    admin.rebuild_index(RebuildIndexRequest {}).await.unwrap();
    check(client.lookup_steps(&[key]).await.unwrap());
    let stats = admin.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!((stats.step_results, stats.step_divergences), (1, 1));
}
