//! Dedup across objects and clients: a small edit re-sends a small part,
//! and concurrent pushers of overlapping data store every chunk once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Cursor;

use strata_client::{ChunkerConfig, Progress, chunk_all};
use strata_server::store::RECORD_HEADER_LEN;
use strata_tests::{TestServer, layer_like_bytes, random_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_pushing_with_one_mib_changed_sends_under_ten_percent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let original = random_bytes(64 << 20, 1);
    let first = client
        .push(Cursor::new(original.clone()), "x", &Progress::new())
        .await
        .unwrap();
    assert_eq!(
        first.sent_bytes,
        original.len() as u64,
        "random data is sent whole"
    );

    let mut edited = original.clone();
    let middle = edited.len() / 2;
    edited[middle..middle + (1 << 20)].copy_from_slice(&random_bytes(1 << 20, 2));
    let second = client
        .push(Cursor::new(edited.clone()), "x", &Progress::new())
        .await
        .unwrap();
    assert_ne!(first.digest, second.digest);
    assert!(
        second.sent_bytes * 10 < edited.len() as u64,
        "re-push sent {} of {} bytes",
        second.sent_bytes,
        edited.len()
    );
    assert!(second.sent_bytes >= 1 << 20, "the changed MiB must be sent");
    assert!(second.reused_chunks * 10 > second.chunks * 9, "{second:?}");
    assert!(client.pull_to_vec(&second.digest).await.unwrap() == edited);

    // Pushing the same bytes again sends nothing at all.
    let third = client
        .push(Cursor::new(edited), "x", &Progress::new())
        .await
        .unwrap();
    assert_eq!(third.sent_bytes, 0);
    assert_eq!(third.reused_chunks, third.chunks);
    assert_eq!(third.digest, second.digest);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_clients_store_every_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // Every input shares a common base, half share a second part, and each
    // has a part of its own.
    let base = layer_like_bytes(8 << 20, 100);
    let shared_half = random_bytes(4 << 20, 200);
    let inputs: Vec<Vec<u8>> = (0..16u64)
        .map(|i| {
            let mut v = base.clone();
            if i % 2 == 0 {
                v.extend_from_slice(&shared_half);
            }
            v.extend_from_slice(&random_bytes(1 << 20, 300 + i));
            v
        })
        .collect();

    let mut tasks = Vec::new();
    for data in inputs.clone() {
        let client = server.client().await;
        tasks.push(tokio::spawn(async move {
            client
                .push(Cursor::new(data), "x", &Progress::new())
                .await
                .unwrap()
        }));
    }
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.unwrap());
    }

    // What the store must hold: each distinct chunk once.
    let mut distinct: HashMap<_, usize> = HashMap::new();
    for data in &inputs {
        for c in chunk_all(data, ChunkerConfig::default()).unwrap() {
            distinct.insert(c.digest, c.data.len());
        }
    }
    let client = server.client().await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.chunks, distinct.len() as u64);
    assert_eq!(stats.chunk_bytes, distinct.values().sum::<usize>() as u64);
    assert_eq!(stats.manifests, 16);
    let stored_total: u64 = reports.iter().map(|r| r.stored_chunks).sum();
    assert_eq!(stored_total, distinct.len() as u64, "chunks stored as new");

    // The segments hold exactly one record per chunk and per manifest: no
    // duplicate was written, not even by racing uploads.
    let mut manifest_bytes = 0u64;
    for r in &reports {
        let m = client.get_manifest(&r.digest).await.unwrap();
        manifest_bytes += (RECORD_HEADER_LEN + m.encode().len()) as u64;
    }
    assert_eq!(
        stats.segment_bytes,
        stats.stored_bytes + stats.chunks * RECORD_HEADER_LEN as u64 + manifest_bytes
    );
    for (data, r) in inputs.iter().zip(&reports) {
        assert!(&client.pull_to_vec(&r.digest).await.unwrap() == data);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_pushing_a_known_file_reuses_its_manifest_and_agrees_with_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("layer.tar");
    let data = layer_like_bytes(16 << 20, 77);
    std::fs::write(&path, &data).unwrap();
    let open = || std::fs::File::open(&path).unwrap();

    let first = client
        .push_file(open(), "x", &Progress::new())
        .await
        .unwrap();
    let digest = first.digest;
    assert!(first.sent_bytes > 0);
    assert!(client.pull_to_vec(&digest).await.unwrap() == data);

    // Streaming the same bytes hashes them all and reaches the same address.
    let streamed = client
        .push(Cursor::new(data.clone()), "x", &Progress::new())
        .await
        .unwrap();
    assert_eq!(streamed.digest, digest);

    // A known file: nothing sent, same object, found through its content key.
    let again = client
        .push_file(open(), "x", &Progress::new())
        .await
        .unwrap();
    assert_eq!(again.digest, digest);
    assert_eq!(again.sent_bytes, 0);

    // Another media type is another object over the same chunks.
    let other = client
        .push_file(open(), "y", &Progress::new())
        .await
        .unwrap();
    assert_ne!(other.digest, digest);
    assert_eq!(other.sent_bytes, 0);
    let manifest = client.get_manifest(&other.digest).await.unwrap();
    assert_eq!(manifest.media_type(), "y");
    assert_eq!(
        manifest.sha256(),
        client.get_manifest(&digest).await.unwrap().sha256(),
        "same bytes, same SHA-256"
    );

    // The content index is rebuilt from the segments like the rest.
    server.store.rebuild_index().await.unwrap();
    let after = client
        .push_file(open(), "x", &Progress::new())
        .await
        .unwrap();
    assert_eq!(after.digest, digest);
    server.stop().await;
}

/// The file paths of a push: new data (whose first block the server lacks:
/// no whole-object pass), the same file again (found whole), and the file
/// with its middle changed once the first is verified (a whole-object miss:
/// the SHA-256 is computed from the cut blocks). Each reports the true
/// SHA-256, sends only what is new, and pulls back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_pushes_of_new_known_and_changed_data_report_true_sha256s() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("layer.tar");
    let push = |data: &[u8]| {
        std::fs::write(&path, data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let client = &client;
        async move { client.push_file(file, "x", &Progress::new()).await.unwrap() }
    };

    let data = layer_like_bytes(24 << 20, 5);
    let first = push(&data).await;
    assert_eq!(first.sha256, <[u8; 32]>::from(sha2::Sha256::digest(&data)));
    assert!(first.sent_bytes > 0);
    server.store.wait_for_verification().await;

    let again = push(&data).await;
    assert_eq!((again.digest, again.sent_bytes), (first.digest, 0));

    let mut changed = data.clone();
    let middle = changed.len() / 2;
    changed[middle..middle + (1 << 20)].copy_from_slice(&random_bytes(1 << 20, 6));
    let third = push(&changed).await;
    assert_eq!(
        third.sha256,
        <[u8; 32]>::from(sha2::Sha256::digest(&changed))
    );
    // Only chunks near the change are new (some of the noise may already
    // be held: the generator reuses its runs).
    assert!(
        third.sent_bytes > 0 && third.sent_bytes < 4 << 20,
        "{third:?}"
    );
    assert_eq!(
        client.get_manifest(&third.digest).await.unwrap().sha256(),
        &third.sha256
    );
    assert!(client.pull_to_vec(&third.digest).await.unwrap() == changed);

    // A file shorter than one block, and an empty one.
    for small in [layer_like_bytes(100_000, 8), Vec::new()] {
        let r = push(&small).await;
        assert_eq!(r.sha256, <[u8; 32]>::from(sha2::Sha256::digest(&small)));
        assert!(client.pull_to_vec(&r.digest).await.unwrap() == small);
    }
    server.stop().await;
}
