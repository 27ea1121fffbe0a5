//! Content lookups answer only verified manifests: a manifest with a false
//! SHA-256 can never shadow the true object (issue #12), nor be found by the
//! SHA-256 it claims (how builders find registry blobs pulled through the
//! cache, #11); and an unchanged file is found by its whole-object BLAKE3
//! without being chunked (#14).
//!
//! Every test runs the real server and store on loopback; the attacker is a
//! plain gRPC client calling `PutManifest` as anyone can.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use strata_client::{ChunkerConfig, Client, ClientConfig, ClientError, Progress, PushReport};
use strata_proto::v1::manifest_store_client::ManifestStoreClient;
use strata_proto::v1::{FindManifestRequest, FindObjectRequest, PutManifestRequest};
use strata_proto::{Digest, Manifest};
use strata_server::{FsyncPolicy, Store, StoreConfig};
use strata_tests::{TestServer, layer_like_bytes, random_bytes, segment_files, serve_store};

const MEDIA: &str = "application/vnd.oci.image.layer.v1.tar";

fn sha256_of(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

async fn push_path(client: &Client, path: &Path) -> PushReport {
    client
        .push_file(std::fs::File::open(path).unwrap(), MEDIA, &Progress::new())
        .await
        .unwrap()
}

/// Waits, without sleeping, until the server's verifier has decided every
/// manifest stored so far.
async fn settle(server: &TestServer) {
    server.store.wait_for_verification().await;
}

/// A client whose chunker cuts differently from the default: its normal
/// push path would produce another manifest (another digest) for the same
/// bytes, so getting the stored object proves the whole-object lookup
/// answered before any chunking.
async fn client_with_other_chunking(server: &TestServer) -> Client {
    let config = ClientConfig {
        chunking: ChunkerConfig::with_average(16 << 10),
        ..ClientConfig::default()
    };
    Client::connect(&server.url, config).await.unwrap()
}

/// The attacker: stores a manifest for `honest`'s chunks claiming a false
/// SHA-256, through the public API. Returns the false manifest's digest.
async fn put_false_manifest(url: &str, honest: &Manifest) -> Digest {
    let mut fake_sha = *honest.sha256();
    fake_sha[0] ^= 0xff;
    let fake = Manifest::new(
        honest.chunks().to_vec(),
        honest.total_length(),
        fake_sha,
        honest.media_type().to_owned(),
    )
    .unwrap();
    let mut manifests = ManifestStoreClient::connect(url.to_owned()).await.unwrap();
    let stored = manifests
        .put_manifest(PutManifestRequest {
            manifest: Some(fake.to_wire()),
        })
        .await
        .expect("the server accepts any manifest whose chunks it holds")
        .into_inner();
    let digest = fake.digest();
    assert_eq!(stored.digest, digest.to_vec());
    digest
}

/// What `FindManifest` answers for `manifest`'s content key.
async fn found_by_content(url: &str, manifest: &Manifest) -> Option<Digest> {
    let mut manifests = ManifestStoreClient::connect(url.to_owned()).await.unwrap();
    let found = manifests
        .find_manifest(FindManifestRequest {
            content_key: manifest.content_key().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    (!found.digest.is_empty()).then(|| Digest::from_slice(&found.digest).unwrap())
}

/// What `FindObject` answers for these bytes.
async fn found_whole(url: &str, data: &[u8]) -> Option<Digest> {
    let mut manifests = ManifestStoreClient::connect(url.to_owned()).await.unwrap();
    let found = manifests
        .find_object(FindObjectRequest {
            blake3: blake3::hash(data).as_bytes().to_vec(),
            media_type: MEDIA.into(),
            sha256: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    (!found.digest.is_empty()).then(|| Digest::from_slice(&found.digest).unwrap())
}

/// What `FindObject` answers for an object of `MEDIA` whose SHA-256 is
/// `sha256` (how a builder finds a registry blob pulled through the cache).
async fn found_by_sha256(url: &str, sha256: &[u8; 32]) -> Option<Digest> {
    let mut manifests = ManifestStoreClient::connect(url.to_owned()).await.unwrap();
    let found = manifests
        .find_object(FindObjectRequest {
            blake3: Vec::new(),
            media_type: MEDIA.into(),
            sha256: sha256.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    (!found.digest.is_empty()).then(|| Digest::from_slice(&found.digest).unwrap())
}

/// The honest re-pusher's side of the attack: every way of pushing `data`
/// again yields a manifest with its true SHA-256, which pulls back as
/// `data`.
async fn assert_honest_pushes_get_the_truth(
    server: &TestServer,
    dir: &Path,
    data: &[u8],
) -> Digest {
    let client = server.client().await;
    let path = write_file(dir, "x.tar", data);
    let by_file = push_path(&client, &path).await;
    let by_stream = client
        .push(std::io::Cursor::new(data.to_vec()), MEDIA, &Progress::new())
        .await
        .unwrap();
    for report in [&by_file, &by_stream] {
        assert_eq!(report.sha256, sha256_of(data), "{report:?}");
        let manifest = client.get_manifest(&report.digest).await.unwrap();
        assert_eq!(manifest.sha256(), &sha256_of(data));
        assert!(client.pull_to_vec(&report.digest).await.unwrap() == data);
    }
    assert_eq!(by_file.digest, by_stream.digest);
    by_file.digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_sha256_manifest_stored_before_the_true_one_never_shadows_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data")).await;
    let data = layer_like_bytes(6 << 20, 11);

    // The attacker gets X's chunks stored without any manifest of X under
    // this media type (here by pushing X as another media type), then
    // claims a false SHA-256 for them — before any honest push of X.
    let attacker = server.client().await;
    let decoy = attacker
        .push(
            std::io::Cursor::new(data.clone()),
            "decoy",
            &Progress::new(),
        )
        .await
        .unwrap();
    let decoy = attacker.get_manifest(&decoy.digest).await.unwrap();
    let honest_shape = Manifest::new(
        decoy.chunks().to_vec(),
        decoy.total_length(),
        *decoy.sha256(),
        MEDIA.into(),
    )
    .unwrap();
    let fake = put_false_manifest(&server.url, &honest_shape).await;
    settle(&server).await;

    assert_eq!(found_by_content(&server.url, &honest_shape).await, None);
    assert_eq!(found_whole(&server.url, &data).await, None);
    // Nor is it found by the SHA-256 it claims, nor by the true one.
    let claimed = *attacker.get_manifest(&fake).await.unwrap().sha256();
    assert_eq!(found_by_sha256(&server.url, &claimed).await, None);
    assert_eq!(found_by_sha256(&server.url, &sha256_of(&data)).await, None);
    let stats = server.store.stats();
    assert_eq!(stats.manifests_refuted, 1, "{stats:?}");
    assert_eq!(stats.manifests_unverified, 0, "{stats:?}");

    let honest = assert_honest_pushes_get_the_truth(&server, dir.path(), &data).await;
    assert_ne!(honest, fake);
    assert_eq!(honest, honest_shape.digest());
    assert_eq!(
        found_by_sha256(&server.url, &sha256_of(&data)).await,
        Some(honest)
    );
    assert_eq!(found_by_sha256(&server.url, &claimed).await, None);

    // The false manifest stays pullable by its own digest, and the pull
    // refuses it at the end-to-end SHA-256 check.
    match attacker.pull_to_vec(&fake).await {
        Err(ClientError::Integrity(msg)) => assert!(msg.contains("SHA-256"), "{msg}"),
        other => panic!("a pull of the false manifest must fail its SHA-256 check: {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_sha256_manifest_stored_after_the_true_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data")).await;
    let client = server.client().await;
    let data = layer_like_bytes(6 << 20, 12);
    let path = write_file(dir.path(), "first.tar", &data);
    let first = push_path(&client, &path).await;
    settle(&server).await;
    let honest = client.get_manifest(&first.digest).await.unwrap();

    put_false_manifest(&server.url, &honest).await;
    settle(&server).await;

    assert_eq!(
        found_by_content(&server.url, &honest).await,
        Some(first.digest)
    );
    assert_eq!(found_whole(&server.url, &data).await, Some(first.digest));
    assert_eq!(server.store.stats().manifests_refuted, 1);
    let again = assert_honest_pushes_get_the_truth(&server, dir.path(), &data).await;
    assert_eq!(again, first.digest);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_file_is_found_whole_and_gets_exactly_the_manifest_the_honest_push_made() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data")).await;
    let client = server.client().await;
    let data = layer_like_bytes(24 << 20, 13);
    let path = write_file(dir.path(), "layer.tar", &data);
    let first = push_path(&client, &path).await;
    assert!(first.sent_bytes > 0);
    settle(&server).await;

    // A client that would cut the file differently still gets the stored
    // object: it never chunked the file.
    let other = client_with_other_chunking(&server).await;
    let again = push_path(&other, &path).await;
    let manifest = client.get_manifest(&first.digest).await.unwrap();
    assert_eq!(
        again,
        PushReport {
            digest: first.digest,
            sha256: sha256_of(&data),
            total_bytes: data.len() as u64,
            sent_bytes: 0,
            chunks: manifest.chunks().len() as u64,
            reused_chunks: manifest.chunks().len() as u64,
            stored_chunks: 0,
        }
    );
    // Streams have no whole-file pass: that client's chunking gives its
    // own object for the same bytes, which is the control for the above.
    let streamed = other
        .push(std::io::Cursor::new(data.clone()), MEDIA, &Progress::new())
        .await
        .unwrap();
    assert_ne!(streamed.digest, first.digest);
    assert_eq!(streamed.sha256, sha256_of(&data));

    // Another media type is another object: no whole-object answer for it.
    let as_other_type = client
        .push_file(
            std::fs::File::open(&path).unwrap(),
            "other",
            &Progress::new(),
        )
        .await
        .unwrap();
    assert_ne!(as_other_type.digest, first.digest);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_by_one_byte_misses_and_is_pushed_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data")).await;
    let client = server.client().await;
    let mut data = random_bytes(12 << 20, 14);
    let path = write_file(dir.path(), "layer.tar", &data);
    let first = push_path(&client, &path).await;
    settle(&server).await;

    let middle = data.len() / 2;
    data[middle] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
    let second = push_path(&client, &path).await;
    assert_ne!(second.digest, first.digest);
    assert_eq!(second.sha256, sha256_of(&data));
    assert!(second.sent_bytes > 0, "the changed chunk is sent");
    assert!(
        second.sent_bytes * 20 < data.len() as u64,
        "only the chunk around the change is sent: {second:?}"
    );
    assert!(client.pull_to_vec(&second.digest).await.unwrap() == data);
    server.stop().await;
}

/// Flips a byte in the middle of the stored bytes of one chunk record,
/// chosen among `chunks`.
fn rot_a_chunk_on_disk(data_dir: &Path, chunks: &[Digest]) -> Digest {
    const HEADER: usize = strata_server::store::RECORD_HEADER_LEN;
    let path = &segment_files(data_dir)[0];
    let bytes = std::fs::read(path).unwrap();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let header = &bytes[offset..offset + HEADER];
        let stored = u32::from_le_bytes(header[12..16].try_into().unwrap()) as usize;
        let digest = Digest::from_slice(&header[16..48]).unwrap();
        if header[4] == 0 && chunks.contains(&digest) {
            let at = (offset + HEADER + stored / 2) as u64;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            let mut b = [0u8];
            file.read_exact_at(&mut b, at).unwrap();
            b[0] ^= 0x40;
            file.write_all_at(&b, at).unwrap();
            return digest;
        }
        offset += HEADER + stored;
    }
    panic!("no chunk record of the object found");
}

fn store_config(verify_manifests: bool) -> StoreConfig {
    StoreConfig {
        fsync: FsyncPolicy::Never,
        verify_manifests,
        ..StoreConfig::default()
    }
}

async fn serve_dir(data_dir: &Path, verify_manifests: bool) -> TestServer {
    serve_store(Store::open(data_dir, store_config(verify_manifests)).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rot_met_by_the_verifier_is_dropped_and_a_re_push_heals_it_and_gets_verified() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = random_bytes(4 << 20, 15);
    let path = write_file(dir.path(), "layer.tar", &data);

    // Stored while no verifier runs, then a chunk rots on disk.
    let server = serve_dir(&data_dir, false).await;
    let first = push_path(&server.client().await, &path).await;
    let chunks: Vec<Digest> = server
        .client()
        .await
        .get_manifest(&first.digest)
        .await
        .unwrap()
        .chunks()
        .iter()
        .map(|c| c.digest)
        .collect();
    server.stop().await;
    let rotten = rot_a_chunk_on_disk(&data_dir, &chunks);

    // The verifier meets the rot: the chunk leaves the index (the usual
    // path), the manifest stays unverified and is not found by content.
    let server = serve_dir(&data_dir, true).await;
    settle(&server).await;
    let stats = server.store.stats();
    assert_eq!(stats.rotten_chunks, 1, "{stats:?}");
    assert_eq!(stats.manifests_unverified, 1, "{stats:?}");
    assert_eq!(stats.manifests_refuted, 0, "rot is not a false claim");
    assert_eq!(found_whole(&server.url, &data).await, None);
    assert!(!server.store.contains_chunk(&rotten).unwrap());

    // Re-pushing the file heals the chunk and, being stored again, the
    // manifest is verified at last: the next re-push is found whole.
    let client = server.client().await;
    let healing = push_path(&client, &path).await;
    assert_eq!(healing.digest, first.digest);
    assert_eq!(healing.stored_chunks, 1, "{healing:?}");
    settle(&server).await;
    let stats = server.store.stats();
    assert_eq!((stats.rotten_chunks, stats.manifests_unverified), (0, 0));
    assert_eq!(found_whole(&server.url, &data).await, Some(first.digest));
    let whole = push_path(&client_with_other_chunking(&server).await, &path).await;
    assert_eq!(whole.digest, first.digest);
    assert!(client.pull_to_vec(&first.digest).await.unwrap() == data);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_pending_at_a_restart_are_verified_after_it_and_none_wrongly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let true_data = layer_like_bytes(5 << 20, 16);
    let other_data = layer_like_bytes(5 << 20, 17);
    let path = write_file(dir.path(), "true.tar", &true_data);

    // Verification held back: one honest object, one false claim over the
    // chunks of another, both pending when the server stops.
    let server = serve_dir(&data_dir, false).await;
    let client = server.client().await;
    let honest = push_path(&client, &path).await;
    let other = client
        .push(
            std::io::Cursor::new(other_data.clone()),
            "decoy",
            &Progress::new(),
        )
        .await
        .unwrap();
    let other = client.get_manifest(&other.digest).await.unwrap();
    let other_shape = Manifest::new(
        other.chunks().to_vec(),
        other.total_length(),
        *other.sha256(),
        MEDIA.into(),
    )
    .unwrap();
    put_false_manifest(&server.url, &other_shape).await;
    let stats = server.store.stats();
    assert_eq!(stats.manifests_unverified, 3, "{stats:?}");
    // Pending means not findable, even for the true one.
    assert_eq!(found_whole(&server.url, &true_data).await, None);
    assert_eq!(
        found_by_content(
            &server.url,
            &client.get_manifest(&honest.digest).await.unwrap()
        )
        .await,
        None
    );
    server.stop().await;

    // After the restart the pending work resumes: the true objects are
    // found, the false claim is refuted and never found.
    let server = serve_dir(&data_dir, true).await;
    settle(&server).await;
    let stats = server.store.stats();
    assert_eq!(stats.manifests_unverified, 0, "{stats:?}");
    assert_eq!(stats.manifests_refuted, 1, "{stats:?}");
    assert_eq!(
        found_whole(&server.url, &true_data).await,
        Some(honest.digest)
    );
    assert_eq!(found_by_content(&server.url, &other_shape).await, None);
    assert_eq!(found_whole(&server.url, &other_data).await, None);
    assert_eq!(
        found_by_sha256(&server.url, &sha256_of(&true_data)).await,
        Some(honest.digest)
    );

    // A rebuild of the index keeps the verdicts and re-derives the lookups.
    server.store.rebuild_index().await.unwrap();
    settle(&server).await;
    let stats = server.store.stats();
    assert_eq!(
        (stats.manifests_unverified, stats.manifests_refuted),
        (0, 1)
    );
    assert_eq!(
        found_whole(&server.url, &true_data).await,
        Some(honest.digest)
    );
    assert_eq!(
        found_by_sha256(&server.url, &sha256_of(&true_data)).await,
        Some(honest.digest)
    );
    assert_eq!(found_by_content(&server.url, &other_shape).await, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_object_lookup_with_a_malformed_digest_or_media_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data")).await;
    let mut manifests = ManifestStoreClient::connect(server.url.clone())
        .await
        .unwrap();
    let refusal = |blake3: Vec<u8>, sha256: Vec<u8>| {
        let mut manifests = manifests.clone();
        async move {
            let (b, s) = (blake3.len(), sha256.len());
            let status = manifests
                .find_object(FindObjectRequest {
                    blake3,
                    media_type: MEDIA.into(),
                    sha256,
                })
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{b} and {s} bytes: {status:?}"
            );
            status.message().to_owned()
        }
    };
    for bad in [vec![7u8; 31], vec![7u8; 33], vec![0u8; 4096]] {
        let message = refusal(bad.clone(), Vec::new()).await;
        assert!(message.contains("BLAKE3"), "{message}");
        let message = refusal(Vec::new(), bad).await;
        assert!(message.contains("SHA-256"), "{message}");
    }
    for (blake3, sha256) in [(Vec::new(), Vec::new()), (vec![7u8; 32], vec![7u8; 32])] {
        let message = refusal(blake3, sha256).await;
        assert!(message.contains("exactly one"), "{message}");
    }
    let status = manifests
        .find_object(FindObjectRequest {
            blake3: vec![7u8; 32],
            media_type: "m".repeat(256),
            sha256: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // A well-formed lookup of something never stored is a plain miss.
    let miss = manifests
        .find_object(FindObjectRequest {
            blake3: vec![7u8; 32],
            media_type: String::new(),
            sha256: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(miss.digest.is_empty() && miss.manifest.is_none());
    server.stop().await;
}
