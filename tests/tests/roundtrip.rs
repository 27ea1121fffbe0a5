//! push → pull returns the very bytes pushed, for every size class, against
//! a real server on loopback; and data survives a clean server restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use strata_client::{ChunkerConfig, Client, Progress};
use strata_proto::Digest;
use strata_tests::{TestServer, content_figures, layer_like_bytes, random_bytes};

async fn round_trip(client: &Client, data: Vec<u8>) -> Digest {
    let progress = Progress::new();
    let report = client
        .push(
            Cursor::new(data.clone()),
            "application/octet-stream",
            &progress,
        )
        .await
        .expect("push");
    assert_eq!(report.total_bytes, data.len() as u64);
    assert_eq!(progress.done(), data.len() as u64);
    let digest = report.digest;
    let (pulled, out) = client
        .pull(&digest, Vec::new(), &Progress::new())
        .await
        .expect("pull");
    assert_eq!(pulled.total_bytes, data.len() as u64);
    assert_eq!(out.len(), data.len(), "pulled length");
    assert!(out == data, "pulled bytes differ from pushed bytes");
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_boundary_sizes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let chunking = ChunkerConfig::default();

    // Known answers, computed with `b3sum` over the manifest encoding
    // written out by hand (see proto/src/manifest.rs): the whole client
    // path, not only the encoder, must land on these addresses.
    let empty = round_trip(&client, Vec::new()).await;
    assert_eq!(
        empty.to_string(),
        "b3:c73b32d3d5acdf44c25f35fe8c586d8f61cd46f23117fe371f1bba3db1fccf20"
    );
    round_trip(&client, vec![0x5a]).await;
    assert_eq!(
        round_trip(&client, b"hello, strata\n".to_vec())
            .await
            .to_string(),
        "b3:662001931645d5ad4a31f468424268aa7dae2553fe2031a2a24e88f7f1b00684"
    );
    for len in [
        chunking.min_size as usize,
        chunking.avg_size as usize,
        chunking.max_size as usize,
        chunking.max_size as usize + 1,
    ] {
        round_trip(&client, random_bytes(len, len as u64)).await;
    }
    // An empty object has no chunks but is still a stored object.
    assert_eq!(client.get_manifest(&empty).await.unwrap().chunks().len(), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_object_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let data = layer_like_bytes(256 << 20, 42);
    let digest = round_trip(&client, data).await;
    let manifest = client.get_manifest(&digest).await.unwrap();
    assert_eq!(manifest.total_length(), 256 << 20);
    // Compressible stretches were stored compressed.
    let stats = client.stats().await.unwrap();
    assert!(
        stats.stored_bytes < stats.chunk_bytes * 9 / 10,
        "stored {} of {} bytes",
        stats.stored_bytes,
        stats.chunk_bytes
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = layer_like_bytes(8 << 20, 7);
    let (digest, stats_before) = {
        let server = TestServer::start(dir.path()).await;
        let client = server.client().await;
        let digest = round_trip(&client, data.clone()).await;
        // The verifier's count of pending manifests is part of the figures:
        // let it finish, as it does after the restart.
        server.store.wait_for_verification().await;
        let stats = content_figures(client.stats().await.unwrap());
        drop(client);
        server.stop().await;
        (digest, stats)
    };
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let out = client.pull_to_vec(&digest).await.unwrap();
    assert!(out == data);
    assert_eq!(content_figures(client.stats().await.unwrap()), stats_before);
    server.stop().await;
}

/// A push reports the object's SHA-256 whichever path it took: hashed as
/// new content, hashed from a file, or taken from a stored object with the
/// same chunks (a re-push of a known file never hashes it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_reports_the_objects_sha256() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let data = layer_like_bytes(3 << 20, 11);
    let expected: [u8; 32] = sha2::Sha256::digest(&data).into();

    let streamed = client
        .push(Cursor::new(data.clone()), "x", &Progress::new())
        .await
        .unwrap();
    assert_eq!(streamed.sha256, expected);

    let path = dir.path().join("object");
    std::fs::write(&path, &data).unwrap();
    for _ in 0..2 {
        let file = std::fs::File::open(&path).unwrap();
        let pushed = client.push_file(file, "y", &Progress::new()).await.unwrap();
        assert_eq!(pushed.sha256, expected);
    }
}

/// `strata pull -o /dev/null` used to rename its temporary file over the
/// device. A pipe stands in for it here (a test must not risk /dev/null):
/// the bytes arrive through it in order, and it is still a pipe after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_to_a_pipe_writes_through_it_and_leaves_it_a_pipe() {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let data = layer_like_bytes(3 << 20, 4);
    let digest = client
        .push(Cursor::new(data.clone()), "x", &Progress::new())
        .await
        .unwrap()
        .digest;
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            std::fs::File::open(fifo)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            out
        })
    };
    let report = client
        .pull_to_file(&digest, &fifo, &Progress::new())
        .await
        .unwrap();
    assert_eq!(report.total_bytes, data.len() as u64);
    assert!(reader.join().unwrap() == data);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    server.stop().await;
}
