//! The real `strata serve` process killed, restarted and tampered with:
//! acknowledged data survives SIGKILL, and bytes that rot on disk are
//! reported as integrity errors, never served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use strata_client::{Client, ClientError, Progress};
use strata_proto::Digest;
use strata_proto::v1::admin_client::AdminClient;
use strata_proto::v1::{RebuildIndexRequest, ScrubRequest, StatsRequest, StatsResponse};
use strata_tests::{
    RandomReader, ServerProcess, content_figures, layer_like_bytes, segment_files, strata,
};

/// A writer that only hashes what it is given.
#[derive(Default)]
struct HashingWriter(Sha256);

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sha256_of_reader(mut r: impl std::io::Read) -> Vec<u8> {
    let mut w = HashingWriter::default();
    std::io::copy(&mut r, &mut w).unwrap();
    w.0.finalize().to_vec()
}

async fn admin_stats(url: &str) -> StatsResponse {
    let mut admin = AdminClient::connect(url.to_owned()).await.unwrap();
    content_figures(admin.stats(StatsRequest {}).await.unwrap().into_inner())
}

async fn push_bytes(client: &Client, data: &[u8]) -> Digest {
    client
        .push(Cursor::new(data.to_vec()), "x", &Progress::new())
        .await
        .unwrap()
        .digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_large_push_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let client = server.client().await;
    let mut kept = Vec::new();
    for seed in 0..3 {
        let data = layer_like_bytes(16 << 20, seed);
        kept.push((push_bytes(&client, &data).await, data));
    }

    // Start a large push and kill the server in the middle of it.
    const BIG: u64 = 768 << 20;
    let progress = std::sync::Arc::new(Progress::new());
    let push = {
        let client = client.clone();
        let progress = progress.clone();
        tokio::spawn(async move { client.push(RandomReader::new(BIG, 9), "x", &progress).await })
    };
    while progress.done() < 128 << 20 {
        assert!(!push.is_finished(), "the push ended before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let err = push
        .await
        .unwrap()
        .expect_err("a push cut by SIGKILL cannot succeed");
    assert!(
        matches!(
            err,
            ClientError::Unavailable { .. } | ClientError::Rpc { .. }
        ),
        "{err}"
    );
    drop(client);

    let server = ServerProcess::start(dir.path(), &[]);
    let client = server.client().await;
    for (digest, data) in &kept {
        assert!(&client.pull_to_vec(digest).await.unwrap() == data);
    }
    // The counters agree with a rebuild from the segments, and every chunk
    // the index names reads back and verifies.
    let stats = admin_stats(&server.url).await;
    assert_eq!(stats.manifests, 3);
    let mut admin = AdminClient::connect(server.url.clone()).await.unwrap();
    let scrub = admin.scrub(ScrubRequest {}).await.unwrap().into_inner();
    assert!(scrub.corrupt.is_empty());
    assert_eq!(scrub.chunks_checked, stats.chunks);
    admin.rebuild_index(RebuildIndexRequest {}).await.unwrap();
    assert_eq!(admin_stats(&server.url).await, stats);

    // Pushing again completes, and the object pulls back intact.
    let report = client
        .push(RandomReader::new(BIG, 9), "x", &Progress::new())
        .await
        .unwrap();
    assert!(
        report.reused_chunks > 0,
        "chunks stored before the kill are reused"
    );
    let (_, out) = client
        .pull(&report.digest, HashingWriter::default(), &Progress::new())
        .await
        .unwrap();
    assert_eq!(
        out.0.finalize().to_vec(),
        sha256_of_reader(RandomReader::new(BIG, 9))
    );
    server.stop();
}

/// The digest and payload offset of the `n`th chunk record of a segment,
/// read with the documented record layout.
fn nth_chunk_record(segment: &Path, n: usize) -> (Digest, u64, u32) {
    let bytes = std::fs::read(segment).unwrap();
    let mut offset = 0usize;
    let mut seen = 0;
    while offset + 52 <= bytes.len() {
        let header = &bytes[offset..offset + 52];
        assert_eq!(&header[0..4], b"SRC1");
        let stored_len = u32::from_le_bytes(header[12..16].try_into().unwrap());
        if header[4] == 0 {
            if seen == n {
                let digest = Digest::from_slice(&header[16..48]).unwrap();
                return (digest, (offset + 52) as u64, stored_len);
            }
            seen += 1;
        }
        offset += 52 + stored_len as usize;
    }
    panic!("segment has fewer than {} chunk records", n + 1);
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_on_disk_is_an_integrity_error_naming_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let client = server.client().await;
    let victim = strata_tests::random_bytes(4 << 20, 5);
    let bystander = strata_tests::random_bytes(1 << 20, 6);
    let victim_digest = push_bytes(&client, &victim).await;
    let bystander_digest = push_bytes(&client, &bystander).await;
    drop(client);
    server.stop();

    let segment = &segment_files(dir.path())[0];
    let (rotten, payload_at, len) = nth_chunk_record(segment, 3);
    flip_byte(segment, payload_at + u64::from(len) / 2);

    let server = ServerProcess::start(dir.path(), &[]);
    // The library reports it as an integrity error naming the chunk.
    let client = server.client().await;
    match client.pull_to_vec(&victim_digest).await {
        Err(ClientError::Integrity(msg)) => assert!(msg.contains(&rotten.to_string()), "{msg}"),
        other => panic!("expected an integrity error, got {other:?}"),
    }
    // So does the CLI: one line, non-zero exit, and no output file left.
    let out_dir = tempfile::tempdir().unwrap();
    let output = strata(out_dir.path())
        .args([
            "pull",
            "--server",
            &server.url,
            &victim_digest.to_string(),
            "-o",
        ])
        .arg(out_dir.path().join("victim"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("integrity error"), "{stderr}");
    assert!(stderr.contains(&rotten.to_string()), "{stderr}");
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        0,
        "partial output left"
    );
    // A scrub finds exactly that chunk; other objects still pull.
    let mut admin = AdminClient::connect(server.url.clone()).await.unwrap();
    let scrub = admin.scrub(ScrubRequest {}).await.unwrap().into_inner();
    assert_eq!(scrub.corrupt, vec![rotten.to_vec()]);
    assert!(client.pull_to_vec(&bystander_digest).await.unwrap() == bystander);
    drop(client);
    server.stop();

    // Rebuilding the index skips the rotten record but keeps everything
    // after it: rot is never mistaken for a torn tail.
    let before = std::fs::metadata(segment).unwrap().len();
    let server = ServerProcess::start(dir.path(), &["--rebuild-index"]);
    assert_eq!(std::fs::metadata(segment).unwrap().len(), before);
    let client = server.client().await;
    assert!(client.pull_to_vec(&bystander_digest).await.unwrap() == bystander);
    assert!(
        server.log().contains("fails its checksum"),
        "{}",
        server.log()
    );
    drop(client);
    server.stop();
}
