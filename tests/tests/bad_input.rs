//! Hostile or broken requests are refused with a precise status, and the
//! store stays exactly as it was (or, for a cut stream, consistent).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use strata_client::Progress;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::content_store_client::ContentStoreClient;
use strata_proto::v1::manifest_store_client::ManifestStoreClient;
use strata_proto::v1::{
    Chunk, FindMissingRequest, PutChunksRequest, PutManifestRequest, RebuildIndexRequest,
    ScrubRequest, StatsRequest, StatsResponse,
};
use strata_proto::{ChunkEncoder, ChunkRef, Codec, Digest, Manifest};
use strata_server::ServerConfig;
use strata_tests::{TestServer, content_figures, random_bytes};
use tonic::Code;
use tonic::transport::Channel;

async fn content(server: &TestServer) -> ContentStoreClient<Channel> {
    ContentStoreClient::connect(server.url.clone())
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX)
}

async fn stats(server: &TestServer) -> StatsResponse {
    content_figures(
        AdminClient::connect(server.url.clone())
            .await
            .unwrap()
            .stats(StatsRequest {})
            .await
            .unwrap()
            .into_inner(),
    )
}

fn raw_chunk(data: &[u8]) -> Chunk {
    Chunk {
        digest: Digest::of(data).to_vec(),
        codec: Codec::Raw.to_wire(),
        raw_length: data.len() as u32,
        data: bytes::Bytes::copy_from_slice(data),
    }
}

async fn put(server: &TestServer, messages: Vec<PutChunksRequest>) -> Result<u64, tonic::Status> {
    content(server)
        .await
        .put_chunks(futures_util::stream::iter(messages))
        .await
        .map(|r| r.into_inner().chunks_stored)
}

/// Pushes a few objects so refusals are checked against a non-empty store.
async fn seeded_server(dir: &std::path::Path, config: ServerConfig) -> TestServer {
    let server = TestServer::start_with(dir, config).await;
    let client = server.client().await;
    for seed in 0..3 {
        client
            .push(
                Cursor::new(random_bytes(300_000, seed)),
                "x",
                &Progress::new(),
            )
            .await
            .unwrap();
    }
    // The background verifier changes the figures the tests compare: let
    // it finish with the seeds first.
    server.store.wait_for_verification().await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_that_do_not_match_their_digest_are_refused_without_trace() {
    let dir = tempfile::tempdir().unwrap();
    let server = seeded_server(dir.path(), ServerConfig::default()).await;
    let before = stats(&server).await;

    let good = random_bytes(10_000, 11);
    let mut lying = raw_chunk(&random_bytes(10_000, 12));
    let claimed = Digest::of(b"something else entirely");
    lying.digest = claimed.to_vec();
    let status = put(
        &server,
        vec![PutChunksRequest {
            chunks: vec![raw_chunk(&good), lying],
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&claimed.to_string()),
        "{status:?}"
    );

    // Neither the bad chunk nor its good neighbour in the message was kept.
    assert_eq!(stats(&server).await, before);
    let missing = content(&server)
        .await
        .find_missing(FindMissingRequest {
            digests: vec![Digest::of(&good).to_vec(), claimed.to_vec()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunks_are_refused_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let server = seeded_server(dir.path(), ServerConfig::default()).await;
    let before = stats(&server).await;
    let raw = b"compressible ".repeat(2000);
    let digest = Digest::of(&raw);

    // zstd bytes that do not decode.
    let mut garbage = raw_chunk(&raw);
    garbage.codec = Codec::Zstd.to_wire();
    let status = put(
        &server,
        vec![PutChunksRequest {
            chunks: vec![garbage],
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("zstd data is corrupt"),
        "{status:?}"
    );
    assert!(status.message().contains(&digest.to_string()), "{status:?}");

    // A declared length that is not the real one.
    let mut encoder = ChunkEncoder::new(1).unwrap();
    let (codec, stored) = encoder.encode(&raw);
    let wrong_length = Chunk {
        digest: digest.to_vec(),
        codec: codec.to_wire(),
        raw_length: raw.len() as u32 - 1,
        data: bytes::Bytes::copy_from_slice(stored),
    };
    let status = put(
        &server,
        vec![PutChunksRequest {
            chunks: vec![wrong_length],
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("does not match the declared"),
        "{status:?}"
    );

    // A declared length over the chunk limit is refused before decoding,
    // as every size limit is.
    let mut huge = raw_chunk(&raw);
    huge.raw_length = u32::MAX;
    let status = put(&server, vec![PutChunksRequest { chunks: vec![huge] }])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("exceeds the limit"), "{status:?}");

    // An unknown codec, and a digest of the wrong size.
    let mut unknown_codec = raw_chunk(&raw);
    unknown_codec.codec = 7;
    let status = put(
        &server,
        vec![PutChunksRequest {
            chunks: vec![unknown_codec],
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("unknown chunk codec 7"),
        "{status:?}"
    );
    let mut short_digest = raw_chunk(&raw);
    short_digest.digest.truncate(31);
    let status = put(
        &server,
        vec![PutChunksRequest {
            chunks: vec![short_digest],
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    assert_eq!(stats(&server).await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_message_bytes: 1 << 20,
        max_digests_per_request: 100,
        ..ServerConfig::default()
    };
    let server = seeded_server(dir.path(), config).await;
    let before = stats(&server).await;

    // One message over the server's limit.
    let chunks = (0..3)
        .map(|i| raw_chunk(&random_bytes(500_000, 50 + i)))
        .collect();
    let status = put(&server, vec![PutChunksRequest { chunks }])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limit of 1048576 bytes"),
        "{status:?}"
    );

    // Too many digests in one lookup.
    let digests = (0..101u32)
        .map(|i| Digest::of(&i.to_le_bytes()).to_vec())
        .collect();
    let status = content(&server)
        .await
        .find_missing(FindMissingRequest { digests })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("the limit is 100"), "{status:?}");

    assert_eq!(stats(&server).await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_naming_absent_or_misdescribed_chunks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = seeded_server(dir.path(), ServerConfig::default()).await;
    let held = random_bytes(5000, 70);
    put(
        &server,
        vec![PutChunksRequest {
            chunks: vec![raw_chunk(&held)],
        }],
    )
    .await
    .unwrap();
    let before = stats(&server).await;
    let mut manifests = ManifestStoreClient::connect(server.url.clone())
        .await
        .unwrap();
    let absent = Digest::of(b"never uploaded");

    let incomplete = Manifest::new(
        vec![
            ChunkRef {
                digest: Digest::of(&held),
                length: 5000,
            },
            ChunkRef {
                digest: absent,
                length: 14,
            },
        ],
        5014,
        [0; 32],
        "x".into(),
    )
    .unwrap();
    let status = manifests
        .put_manifest(PutManifestRequest {
            manifest: Some(incomplete.to_wire()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&absent.to_string()), "{status:?}");

    let wrong_length = Manifest::new(
        vec![ChunkRef {
            digest: Digest::of(&held),
            length: 4999,
        }],
        4999,
        [0; 32],
        "x".into(),
    )
    .unwrap();
    let status = manifests
        .put_manifest(PutManifestRequest {
            manifest: Some(wrong_length.to_wire()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("length 4999"), "{status:?}");

    // Chunk lengths that do not add up to the declared total.
    let mut inconsistent = Manifest::new(
        vec![ChunkRef {
            digest: Digest::of(&held),
            length: 5000,
        }],
        5000,
        [0; 32],
        "x".into(),
    )
    .unwrap()
    .to_wire();
    inconsistent.total_length = 6000;
    let status = manifests
        .put_manifest(PutManifestRequest {
            manifest: Some(inconsistent),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("add up to 5000"), "{status:?}");

    assert_eq!(stats(&server).await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_stream_leaves_the_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let server = seeded_server(dir.path(), ServerConfig::default()).await;
    let data = random_bytes(8 << 20, 90);
    let chunks = strata_client::chunk_all(&data, Default::default()).unwrap();

    // Send a few messages, then vanish mid-stream without ending it.
    let (tx, rx) = tokio::sync::mpsc::channel::<PutChunksRequest>(4);
    let mut client = content(&server).await;
    let call = tokio::spawn(async move {
        client
            .put_chunks(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for c in chunks.iter().take(6) {
        tx.send(PutChunksRequest {
            chunks: vec![raw_chunk(&c.data)],
        })
        .await
        .unwrap();
    }
    // Wait until the server has stored all six (observed, not slept on),
    // so nothing of the stream is still in flight when it is cut.
    let sent: Vec<Vec<u8>> = chunks.iter().take(6).map(|c| c.digest.to_vec()).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut probe = content(&server).await;
    loop {
        let missing = probe
            .find_missing(FindMissingRequest {
                digests: sent.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .missing;
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never stored the chunks of the open stream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    call.abort();
    let _ = call.await;
    drop(tx);

    // Whatever was committed is whole: the counters match a rebuild from
    // the segments, and every indexed chunk reads back and verifies.
    let counted = stats(&server).await;
    let mut admin = AdminClient::connect(server.url.clone()).await.unwrap();
    let scrub = admin.scrub(ScrubRequest {}).await.unwrap().into_inner();
    assert!(scrub.corrupt.is_empty());
    assert_eq!(scrub.chunks_checked, counted.chunks);
    admin.rebuild_index(RebuildIndexRequest {}).await.unwrap();
    assert_eq!(stats(&server).await, counted);

    // And the same object can still be pushed whole and pulled back.
    let client = server.client().await;
    let report = client
        .push(Cursor::new(data.clone()), "x", &Progress::new())
        .await
        .unwrap();
    assert!(client.pull_to_vec(&report.digest).await.unwrap() == data);
    server.stop().await;
}
