//! A client cannot exhaust the server: connections that say nothing are
//! closed, connections past the cap wait, a stalled upload gives its bytes
//! back, copies of one chunk cost one verification, and every size limit and
//! a full disk are refused as RESOURCE_EXHAUSTED, in words a client can use
//! and without the server's paths.
//!
//! Where a test needs a client no honest library would be (one that stops
//! mid-message, or never sends its HTTP/2 preface), it speaks HTTP/2 frames
//! over a plain socket (`RawConnection`). Every wait is bounded by a
//! `tokio::time::timeout` well past the configured limit, so a limit that
//! does not hold fails the test instead of hanging it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_client::{Client, ClientConfig, Progress, PushReport};
use strata_proto::v1::content_store_client::ContentStoreClient;
use strata_proto::v1::{Chunk, FindMissingRequest, PutChunksRequest, PutChunksResponse};
use strata_proto::{ChunkEncoder, Codec, Digest, MAX_CHUNK_BYTES};
use strata_server::ServerConfig;
use strata_tests::{TestServer, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tonic::Code;
use tonic::transport::Channel;

/// Far longer than any limit configured here: past it, a limit did not
/// hold.
const BOUND: Duration = Duration::from_secs(30);

/// How long a test watches for something that must not happen (a queued
/// connection served, a blocked upload finished) before moving on.
const WATCH: Duration = Duration::from_secs(2);

fn addr_of(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

async fn content(server: &TestServer) -> ContentStoreClient<Channel> {
    ContentStoreClient::connect(server.url.clone())
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX)
}

fn raw_chunk(data: &[u8]) -> Chunk {
    Chunk {
        digest: Digest::of(data).to_vec(),
        codec: Codec::Raw.to_wire(),
        raw_length: data.len() as u32,
        data: bytes::Bytes::copy_from_slice(data),
    }
}

async fn put(
    server: &TestServer,
    messages: Vec<PutChunksRequest>,
) -> Result<PutChunksResponse, tonic::Status> {
    content(server)
        .await
        .put_chunks(futures_util::stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

// HTTP/2 by hand (RFC 9113), just enough to misbehave.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HTTP/2 connection driven frame by frame.
struct RawConnection {
    socket: TcpStream,
}

impl RawConnection {
    /// Connects and completes the HTTP/2 handshake: the preface and empty
    /// settings out, the server's settings in (which proves the server
    /// accepted the connection) and acknowledged.
    async fn open(addr: &str) -> RawConnection {
        let mut raw = RawConnection {
            socket: TcpStream::connect(addr).await.unwrap(),
        };
        raw.send(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
            .await;
        loop {
            let f = raw.next_frame().await.expect("the server's settings");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break;
            }
        }
        raw.send(&frame(SETTINGS, ACK, 0, &[])).await;
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the server has closed the connection.
    async fn next_frame(&mut self) -> Option<Frame> {
        let mut header = [0u8; 9];
        self.socket.read_exact(&mut header).await.ok()?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0; len];
        self.socket.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Every frame until the server closes the connection, answering its
    /// pings as a live client does (a graceful close waits for one).
    async fn frames_until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame().await {
            if f.kind == PING && f.flags & ACK == 0 {
                let answer = frame(PING, ACK, 0, &f.payload);
                // The server may already be gone.
                let _ = self.socket.write_all(&answer).await;
            }
            frames.push(f);
        }
        frames
    }

    /// Reads frames until the server ends stream `stream`.
    async fn until_stream_ends(&mut self, stream: u32) {
        loop {
            let f = self.next_frame().await.expect("connection open");
            if f.stream == stream && f.kind == HEADERS && f.flags & END_STREAM != 0 {
                return;
            }
        }
    }

    /// A ping and its answer: the server has read everything sent before.
    async fn ping(&mut self) {
        self.send(&frame(PING, 0, 0, b"strata!!")).await;
        loop {
            let f = self.next_frame().await.expect("connection open");
            if f.kind == PING && f.flags & ACK != 0 {
                return;
            }
        }
    }

    /// Opens a PutChunks call on `stream` (headers only, no message yet).
    async fn open_upload(&mut self, stream: u32, authority: &str) {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        literal(&mut block, &[0x04], b"/strata.v1.ContentStore/PutChunks"); // :path
        literal(&mut block, &[0x01], authority.as_bytes()); // :authority
        literal(&mut block, &[0x0f, 0x10], b"application/grpc"); // content-type (index 31)
        block.push(0x00); // te: trailers, a name of its own
        block.push(2);
        block.extend(b"te");
        block.push(8);
        block.extend(b"trailers");
        self.send(&frame(HEADERS, END_HEADERS, stream, &block))
            .await;
    }

    /// Begins a message of `announced` bytes on `stream` but sends only
    /// `sent` of them.
    async fn begin_message(&mut self, stream: u32, announced: u32, sent: usize) {
        let mut payload = vec![0];
        payload.extend(announced.to_be_bytes());
        payload.extend(vec![0u8; sent]);
        self.send(&frame(DATA, 0, stream, &payload)).await;
    }
}

/// An HPACK literal header field without indexing, the name by its static
/// table index (`name`, already encoded), the value as plain octets.
fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    assert!(value.len() < 127);
    block.extend(name);
    block.push(value.len() as u8);
    block.extend(value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let addr = addr_of(&server);
    let mut polite = RawConnection::open(&addr).await;
    let mut silent = TcpStream::connect(&addr).await.unwrap();

    // The server may send its own settings first; then it hangs up.
    let mut received = Vec::new();
    let closed = timeout(BOUND, silent.read_to_end(&mut received)).await;
    assert!(
        closed.is_ok(),
        "a connection that sent nothing was still open after {BOUND:?}"
    );

    // The connection that did its handshake is still served.
    timeout(BOUND, polite.ping()).await.unwrap();
    // (A raw connection answers no pings, which a graceful stop waits for.)
    drop(polite);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_waits_on_a_silent_client_is_ended_then_its_idle_connection_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        idle_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let addr = addr_of(&server);

    // Through a real client: an upload that never sends a message is ended,
    // with a status that says why.
    let (tx, rx) = tokio::sync::mpsc::channel::<PutChunksRequest>(1);
    let mut client = content(&server).await;
    let status = timeout(
        BOUND,
        client.put_chunks(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("the server kept waiting on a silent upload")
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("idle_timeout"), "{status:?}");
    drop(tx);

    // Frame by frame: the call is ended, then the connection, now without
    // a call, is told to go away and closed.
    let mut raw = RawConnection::open(&addr).await;
    raw.open_upload(1, &addr).await;
    let frames = timeout(BOUND, raw.frames_until_closed())
        .await
        .expect("an idle connection was still open");
    let ended = frames
        .iter()
        .position(|f| f.stream == 1 && f.kind == HEADERS && f.flags & END_STREAM != 0)
        .expect("the silent call was ended");
    let goaway = frames
        .iter()
        .position(|f| f.kind == GOAWAY)
        .expect("the idle connection was sent GOAWAY");
    assert!(ended < goaway, "{frames:?}");

    // Clients reconnect after an idle close: the real client still works.
    let missing = timeout(
        BOUND,
        client.find_missing(FindMissingRequest {
            digests: vec![Digest::of(b"x").to_vec()],
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner()
    .missing;
    assert_eq!(missing.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_a_served_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let addr = addr_of(&server);
    // Each gets the server's settings: both are served.
    let first = RawConnection::open(&addr).await;
    let second = RawConnection::open(&addr).await;

    let url = server.url.clone();
    let mut third = tokio::spawn(async move {
        let client = Client::connect(&url, ClientConfig::default()).await?;
        client.stats().await
    });
    assert!(
        timeout(WATCH, &mut third).await.is_err(),
        "a third connection was served past a cap of two"
    );

    drop(first);
    let stats = timeout(BOUND, third)
        .await
        .expect("the queued connection was not served once a slot freed")
        .unwrap()
        .unwrap();
    assert_eq!(stats.chunks, 0);
    drop(second);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_one_chunk_in_an_upload_are_verified_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // A chunk of zeros: 1 MiB to decode and hash, a few bytes to send.
    let zeros = vec![0u8; 1 << 20];
    let mut encoder = ChunkEncoder::new(1).unwrap();
    let (codec, stored) = encoder.encode(&zeros);
    assert_eq!(codec, Codec::Zstd);
    let copy = Chunk {
        digest: Digest::of(&zeros).to_vec(),
        codec: codec.to_wire(),
        raw_length: zeros.len() as u32,
        data: bytes::Bytes::copy_from_slice(stored),
    };
    let other = random_bytes(10_000, 1);
    let messages = vec![
        PutChunksRequest {
            chunks: vec![copy.clone(); 10_000],
        },
        PutChunksRequest {
            chunks: [vec![copy.clone(); 5_000], vec![raw_chunk(&other)]].concat(),
        },
    ];
    let verified_before = server.store.stats().chunks_verified;

    let reply = put(&server, messages).await.unwrap();
    assert_eq!(reply.chunks_received, 15_001);
    assert_eq!(reply.chunks_stored, 2);
    assert_eq!(
        server.store.stats().chunks_verified - verified_before,
        2,
        "each distinct chunk is decoded and hashed once"
    );

    // What was stored is the real chunk.
    let client = server.client().await;
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.chunk_bytes, (zeros.len() + other.len()) as u64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_holds_the_budget_until_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_message_bytes: 1 << 20,
        upload_budget_bytes: 1 << 20,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let addr = addr_of(&server);

    // A client announces most of the budget and sends almost none of it.
    let mut stalled = RawConnection::open(&addr).await;
    stalled.open_upload(1, &addr).await;
    stalled.begin_message(1, 1_000_000, 100).await;
    stalled.ping().await;

    // An honest upload that needs more than what is left waits: the server
    // does not read it, so it holds none of it.
    let data = random_bytes(200_000, 7);
    let honest = {
        let messages = vec![PutChunksRequest {
            chunks: vec![raw_chunk(&data)],
        }];
        let mut client = content(&server).await;
        tokio::spawn(async move {
            client
                .put_chunks(futures_util::stream::iter(messages))
                .await
                .map(tonic::Response::into_inner)
        })
    };
    tokio::pin!(honest);
    assert!(
        timeout(WATCH, &mut honest).await.is_err(),
        "an upload went past a full budget"
    );

    // The stalled client vanishes: its bytes come back, the upload goes on.
    drop(stalled);
    let reply = timeout(BOUND, honest)
        .await
        .expect("the budget was not given back")
        .unwrap()
        .unwrap();
    assert_eq!(reply.chunks_stored, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_stops_arriving_is_ended_and_gives_back_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_message_bytes: 1 << 20,
        upload_budget_bytes: 1 << 20,
        message_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let addr = addr_of(&server);

    let mut stalled = RawConnection::open(&addr).await;
    stalled.open_upload(1, &addr).await;
    stalled.begin_message(1, 1 << 20, 100).await;
    // The message timer runs only once the message holds its bytes, so its
    // end proves both.
    timeout(BOUND, stalled.until_stream_ends(1))
        .await
        .expect("a half-sent message was waited for past the message timeout");

    // With the stalled client still connected, the budget is free again.
    let data = random_bytes(200_000, 8);
    let reply = timeout(
        BOUND,
        put(
            &server,
            vec![PutChunksRequest {
                chunks: vec![raw_chunk(&data)],
            }],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reply.chunks_stored, 1);
    drop(stalled);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_limit_is_resource_exhausted_and_names_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_message_bytes: 1 << 20,
        max_digests_per_request: 100_000,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;

    // An upload message over the message limit.
    let chunks = (0..3)
        .map(|i| raw_chunk(&random_bytes(500_000, 20 + i)))
        .collect();
    let status = put(&server, vec![PutChunksRequest { chunks }])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_message_bytes")
            && status.message().contains("limit of 1048576 bytes"),
        "{status:?}"
    );

    // A lookup under the digest limit but over the message limit.
    let digests = (0..40_000u32)
        .map(|i| Digest::of(&i.to_le_bytes()).to_vec())
        .collect();
    let status = content(&server)
        .await
        .find_missing(FindMissingRequest { digests })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_message_bytes"), "{status:?}");

    // A chunk declaring more than the chunk limit.
    let mut huge = raw_chunk(b"small");
    huge.raw_length = MAX_CHUNK_BYTES + 1;
    let status = put(&server, vec![PutChunksRequest { chunks: vec![huge] }])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("limit of {MAX_CHUNK_BYTES} bytes")),
        "{status:?}"
    );

    let stats = server.client().await.stats().await.unwrap();
    assert_eq!(stats.chunks, 0);
    server.stop().await;
}

/// A size-limited tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `dir`; fails the test, saying why, where
    /// mounting is not allowed.
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            mounted.status.success(),
            "this test mounts a small tmpfs to fill a disk, which needs root \
             (scripts/test runs as root, as CI does): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Writes `path` until the filesystem has no room left.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    for block in [4096, 1] {
        while file.write_all(&vec![0xa5; block]).is_ok() {}
    }
    let _ = file.sync_all();
}

/// A server over `data_dir` holding one pushed object (its bytes and push
/// report), with the index flushed to disk: what is there before a disk
/// fills.
async fn serve_one_object(data_dir: &Path) -> (TestServer, Client, Vec<u8>, PushReport) {
    let server = TestServer::start(data_dir).await;
    let client = server.client().await;
    let kept = random_bytes(300_000, 30);
    let report = client
        .push(Cursor::new(kept.clone()), "kept", &Progress::new())
        .await
        .unwrap();
    server.store.flush().unwrap();
    (server, client, kept, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_without_paths_and_writes_resume_once_space_returns() {
    let mount_point = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(mount_point.path(), "8m");
    let (server, client, kept, report) = serve_one_object(&tmpfs.dir.join("store")).await;

    let filler = tmpfs.dir.join("filler");
    fill_disk(&filler);
    let big = random_bytes(1 << 20, 31);
    let message = || {
        vec![PutChunksRequest {
            chunks: vec![raw_chunk(&big)],
        }]
    };
    let status = put(&server, message()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let text = status.message();
    assert!(text.contains("disk is full"), "{status:?}");
    let root = mount_point.path().to_string_lossy();
    for leak in [root.as_ref(), "/", "os error", "StorageFull", "Os {"] {
        assert!(!text.contains(leak), "{leak:?} in {status:?}");
    }

    // Reads go on while the disk is full.
    assert!(client.pull_to_vec(&report.digest).await.unwrap() == kept);

    // And writes resume once there is room again, no restart needed.
    std::fs::remove_file(&filler).unwrap();
    let reply = put(&server, message()).await.unwrap();
    assert_eq!(reply.chunks_stored, 1);
    let again = client
        .push(Cursor::new(big.clone()), "big", &Progress::new())
        .await
        .unwrap();
    assert!(client.pull_to_vec(&again.digest).await.unwrap() == big);
    assert!(client.pull_to_vec(&report.digest).await.unwrap() == kept);

    drop(client);
    server.stop().await;
    drop(tmpfs);
}

/// The index on a disk of its own, filled by something else: sled would
/// fail for good at its first full write, so writes are refused before one
/// reaches it, reads go on, and writes resume once space returns, with no
/// restart. Opening a store whose index disk is full says so plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_index_disk_refuses_writes_until_space_returns_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let index_dir = data.path().join("index");
    std::fs::create_dir_all(&index_dir).unwrap();
    let tmpfs = Tmpfs::mount(&index_dir, "16m");
    let (server, client, kept, report) = serve_one_object(data.path()).await;

    let filler = tmpfs.dir.join("filler");
    fill_disk(&filler);
    for seed in 0..3u64 {
        let big = random_bytes(1 << 20, 100 + seed);
        let err = client
            .push(Cursor::new(big), "big", &Progress::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disk is full"), "{err}");
        // Reads go on (and record no use time on the full disk).
        assert!(client.pull_to_vec(&report.digest).await.unwrap() == kept);
        server.store.flush().unwrap();
    }

    std::fs::remove_file(&filler).unwrap();
    let big = random_bytes(1 << 20, 200);
    let pushed = client
        .push(Cursor::new(big.clone()), "big", &Progress::new())
        .await
        .expect("writes resume once space returns");
    assert!(client.pull_to_vec(&pushed.digest).await.unwrap() == big);
    assert!(client.pull_to_vec(&report.digest).await.unwrap() == kept);
    drop(client);
    server.stop().await;

    fill_disk(&filler);
    let err = strata_server::Store::open(data.path(), strata_server::StoreConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("opening the index at") && err.contains("its disk is full"),
        "{err}"
    );
    std::fs::remove_file(&filler).unwrap();
    drop(tmpfs);
}
