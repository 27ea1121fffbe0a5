//! The client against a server that lies: flipped chunk bytes, another
//! chunk's bytes, chunks out of order or not asked for, short and long
//! streams, forged manifests, a wrong SHA-256, a lying FindMissing, and
//! stalls. Every pull is refused with an error naming what was wrong, writes
//! no byte that is not the object's, leaves no file behind, and never hangs.
//!
//! Each lie is checked to have been told (`tampered()` moved) and followed by
//! an honest pull of the same object, so a refusal is the lie's doing and
//! nothing else's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_client::{Client, ClientConfig, ClientError, Progress};
use strata_proto::v1::PutManifestRequest;
use strata_proto::v1::manifest_store_client::ManifestStoreClient;
use strata_proto::{Codec, Digest, Manifest};
use strata_tests::hostile::{HostileServer, Tamper};
use strata_tests::{TestServer, random_bytes};

const MEDIA_TYPE: &str = "application/octet-stream";

/// Longer than any honest pull here takes by far: past it, the client is
/// hung, and the test says so instead of hanging with it.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The client's idle limit in the stall tests: short, so they run quickly.
const STALL_LIMIT: Duration = Duration::from_secs(2);

/// Awaits `f`, failing the test if it outlives [`HANG_GUARD`].
async fn unhung<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .expect("the client hung on a lying server")
}

/// A writer that keeps what a pull wrote even after the pull consumed it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<u8>>>);

impl Recorder {
    fn written(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A hostile server, honest for now, holding one pushed object.
struct Scene {
    _dir: tempfile::TempDir,
    server: HostileServer,
    client: Client,
    data: Vec<u8>,
    digest: Digest,
    manifest: Manifest,
}

impl Scene {
    async fn with(data: Vec<u8>, config: ClientConfig) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let server = HostileServer::start(dir.path()).await;
        let client = server.client(config).await;
        let digest = push(&client, &data).await;
        let manifest = client.get_manifest(&digest).await.unwrap();
        Scene {
            _dir: dir,
            server,
            client,
            data,
            digest,
            manifest,
        }
    }

    /// 1 MiB of incompressible bytes: about 16 chunks, stored raw, pulled
    /// in one window.
    async fn start() -> Scene {
        Scene::with(random_bytes(1 << 20, 15), ClientConfig::default()).await
    }

    fn chunk(&self, index: usize) -> Digest {
        self.manifest.chunks()[index].digest
    }

    /// Tells `tamper`, pulls, and returns the error after checking that
    /// neither way of pulling hands out wrong bytes or leaves a file, that
    /// the lie was told, and that the truth still pulls afterwards.
    async fn refused(&self, tamper: Tamper) -> ClientError {
        let before = self.server.tampered();
        self.server.set_tamper(tamper.clone());
        let err = refused_pull(&self.client, &self.digest, &self.data).await;
        assert!(
            self.server.tampered() > before,
            "the server never told the lie {tamper:?}"
        );
        self.server.set_tamper(Tamper::Honest);
        let pulled = unhung(self.client.pull_to_vec(&self.digest))
            .await
            .expect("honest pull after the lie");
        assert!(
            pulled == self.data,
            "the honest pull differs from the object"
        );
        err
    }
}

async fn push(client: &Client, data: &[u8]) -> Digest {
    let report = unhung(client.push(Cursor::new(data.to_vec()), MEDIA_TYPE, &Progress::new()))
        .await
        .expect("push");
    report.digest
}

/// Pulls `digest` into memory and into a file, expecting both to fail the
/// same way; checks that only the object's own bytes, as a prefix, reached
/// the writer, and that the output directory stays empty.
async fn refused_pull(client: &Client, digest: &Digest, data: &[u8]) -> ClientError {
    let seen = Recorder::default();
    let err = match unhung(client.pull(digest, seen.clone(), &Progress::new())).await {
        Ok(_) => panic!("the pull of {digest} succeeded against a lying server"),
        Err(e) => e,
    };
    let written = seen.written();
    assert!(
        data.starts_with(&written),
        "the pull wrote {} bytes that are not a prefix of the object ({err})",
        written.len()
    );

    let out = tempfile::tempdir().unwrap();
    let file_err =
        unhung(client.pull_to_file(digest, &out.path().join("object"), &Progress::new()))
            .await
            .expect_err("pull_to_file succeeded against a lying server");
    assert_eq!(file_err.to_string(), err.to_string());
    assert_empty(out.path());
    err
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "a failed pull left {left:?} behind");
}

fn integrity(err: ClientError) -> String {
    match err {
        ClientError::Integrity(message) => message,
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

fn contains(message: &str, part: &str) {
    assert!(message.contains(part), "{message:?} does not say {part:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_chunk_is_refused_naming_the_chunk() {
    let scene = Scene::start().await;
    let message = integrity(scene.refused(Tamper::FlipChunkByte).await);
    contains(
        &message,
        &format!("chunk {}: content hashes to", scene.chunk(0)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_compressed_chunk_is_refused_naming_the_chunk() {
    // Random bytes with three in four zeroed: every chunk compresses.
    let mut data = random_bytes(1 << 20, 16);
    for (i, b) in data.iter_mut().enumerate() {
        if i % 4 != 0 {
            *b = 0;
        }
    }
    let scene = Scene::with(data, ClientConfig::default()).await;
    let first = scene.server.store.read_chunk(&scene.chunk(0)).unwrap();
    assert_eq!(first.codec, Codec::Zstd, "the first chunk is stored raw");
    let message = integrity(scene.refused(Tamper::FlipStoredByte).await);
    contains(&message, &format!("chunk {}", scene.chunk(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_chunks_bytes_under_the_right_digest_are_refused() {
    let scene = Scene::start().await;
    let message = integrity(scene.refused(Tamper::ForeignChunkBytes).await);
    contains(
        &message,
        &format!("chunk {}: content hashes to", scene.chunk(0)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_sent_out_of_order_are_refused() {
    let scene = Scene::start().await;
    let message = integrity(scene.refused(Tamper::SwapChunks).await);
    contains(
        &message,
        &format!(
            "asked for chunk {}, the server sent another",
            scene.chunk(0)
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_true_chunk_other_than_the_one_asked_is_refused() {
    let scene = Scene::start().await;
    let message = integrity(scene.refused(Tamper::SubstituteChunk).await);
    contains(
        &message,
        &format!(
            "asked for chunk {}, the server sent another",
            scene.chunk(0)
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_declaring_the_wrong_length_is_refused_naming_the_chunk() {
    let scene = Scene::start().await;
    let message = integrity(scene.refused(Tamper::WrongRawLength).await);
    contains(&message, &format!("chunk {}", scene.chunk(0)));
    contains(&message, "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_one_chunk_early_is_refused() {
    let scene = Scene::start().await;
    let asked = scene.manifest.chunks().len();
    assert!(asked > 1, "the object has {asked} chunk");
    let message = integrity(scene.refused(Tamper::DropLastChunk).await);
    contains(
        &message,
        &format!(
            "the server sent {} of {asked} chunks and ended the stream",
            asked - 1
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_a_chunk_more_than_asked_is_refused() {
    let scene = Scene::start().await;
    let asked = scene.manifest.chunks().len();
    let message = integrity(scene.refused(Tamper::ExtraChunk).await);
    contains(&message, &format!("more than the {asked} chunks asked for"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_a_flipped_chunk_digest_is_refused() {
    let scene = Scene::start().await;
    let message = integrity(scene.refused(Tamper::FlipManifestChunkDigest).await);
    contains(
        &message,
        &format!("object {}: the server's manifest hashes to", scene.digest),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_with_a_flipped_sha256_is_refused() {
    let scene = Scene::start().await;
    let message = integrity(scene.refused(Tamper::FlipManifestSha256).await);
    contains(
        &message,
        &format!("object {}: the server's manifest hashes to", scene.digest),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_objects_true_manifest_is_refused() {
    let scene = Scene::start().await;
    let other = push(&scene.client, &random_bytes(100 << 10, 17)).await;
    let message = integrity(scene.refused(Tamper::ManifestOf(other)).await);
    contains(
        &message,
        &format!(
            "object {}: the server's manifest hashes to {other}",
            scene.digest
        ),
    );
}

/// A server cannot forge the manifest of an object it was asked for by
/// digest; what it can do is hold an object pushed with a wrong SHA-256.
/// The chunks are all true, so only the whole-object check can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_pushed_with_a_wrong_sha256_fails_its_pull_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let data = random_bytes(1 << 20, 18);
    let honest = client
        .get_manifest(&push(&client, &data).await)
        .await
        .unwrap();
    let mut sha256 = *honest.sha256();
    sha256[0] ^= 0x01;
    let forged = Manifest::new(
        honest.chunks().to_vec(),
        honest.total_length(),
        sha256,
        honest.media_type().to_owned(),
    )
    .unwrap();
    let mut raw = ManifestStoreClient::connect(server.url.clone())
        .await
        .unwrap();
    raw.put_manifest(PutManifestRequest {
        manifest: Some(forged.to_wire()),
    })
    .await
    .expect("the server stores a manifest it cannot check the SHA-256 of");

    let message = integrity(refused_pull(&client, &forged.digest(), &data).await);
    contains(
        &message,
        &format!(
            "object {}: the assembled bytes do not match the manifest's SHA-256",
            forged.digest()
        ),
    );
    server.stop().await;
}

fn stall_config() -> ClientConfig {
    ClientConfig {
        idle_timeout: STALL_LIMIT,
        ..ClientConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_for_the_manifest_times_the_pull_out() {
    let scene = Scene::with(random_bytes(1 << 20, 19), stall_config()).await;
    let err = scene.refused(Tamper::StallManifest).await;
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                what: "get manifest",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stalls_mid_stream_times_the_pull_out_having_written_nothing() {
    // 4 MiB: one window the real server answers in several messages, so the
    // stall comes after some chunks have arrived.
    let scene = Scene::with(random_bytes(4 << 20, 20), stall_config()).await;
    let err = scene.refused(Tamper::StallChunkStream).await;
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                what: "download chunks",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_past_a_lying_find_missing_is_refused_by_the_real_manifest_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(dir.path()).await;
    let client = server.client(ClientConfig::default()).await;
    server.set_tamper(Tamper::ClaimAllChunks);
    let data = random_bytes(1 << 20, 21);
    let err = unhung(client.push(Cursor::new(data), MEDIA_TYPE, &Progress::new()))
        .await
        .expect_err("a manifest naming unsent chunks was stored");
    match err {
        ClientError::Refused {
            what: "put manifest",
            message,
        } => contains(&message, "which is not in the store"),
        other => panic!("expected the manifest to be refused, got {other:?}"),
    }
    assert!(server.tampered() > 0);
    assert_eq!(server.store.stats().manifests, 0);
    server.stop().await;
}

/// The client cannot tell, on push, a server that pretends to store an
/// object; the lie must surface on the pull, as an error, never as bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_a_lying_server_pretended_to_store_never_pulls_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(dir.path()).await;
    let client = server.client(ClientConfig::default()).await;
    server.set_tamper(Tamper::ClaimEverything);
    let data = random_bytes(1 << 20, 22);
    let report = unhung(client.push(Cursor::new(data.clone()), MEDIA_TYPE, &Progress::new()))
        .await
        .expect("the lie is invisible on push");
    assert_eq!(report.sent_bytes, 0, "the client sent chunks anyway");
    assert!(
        server.tampered() >= 2,
        "FindMissing and PutManifest both lied"
    );

    let manifest = client.get_manifest(&report.digest).await.unwrap();
    let first = manifest.chunks()[0].digest;
    match refused_pull(&client, &report.digest, &data).await {
        ClientError::NotFound(message) | ClientError::Integrity(message) => {
            contains(&message, &first.to_string());
        }
        other => panic!("expected not found or an integrity error, got {other:?}"),
    }
    server.stop().await;
}

/// A push waits on the server too: one that never answers FindMissing
/// times the push out instead of hanging it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_find_missing_times_the_push_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = HostileServer::start(dir.path()).await;
    let client = server.client(stall_config()).await;
    server.set_tamper(Tamper::StallFindMissing);
    let data = random_bytes(1 << 20, 23);
    let err = unhung(client.push(Cursor::new(data), MEDIA_TYPE, &Progress::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                what: "find missing",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(server.tampered() > 0);
    server.stop().await;
}
