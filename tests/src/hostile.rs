//! A hostile server: the real services over a real store, with the chunk,
//! manifest, step-result and tag answers tampered with on purpose, so tests
//! can prove the client trusts nothing it downloads.
//!
//! Each [`Tamper`] is one lie a broken or malicious server could tell. The
//! server starts honest (pushes through it store real data); a test then
//! switches the lie on and pulls. Every lie is built from what the real store
//! answered, so it is as close to the truth as a server could make it, and
//! [`HostileServer::tampered`] counts the answers actually falsified: a test
//! that asserts it moved knows its lie was told.
//!
//! It must never serve a service of its own invention: every call it does not
//! falsify goes to the real service unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use strata_client::{Client, ClientConfig};
use strata_proto::v1::admin_server::AdminServer;
use strata_proto::v1::content_store_server::{ContentStore, ContentStoreServer};
use strata_proto::v1::manifest_store_server::{ManifestStore, ManifestStoreServer};
use strata_proto::v1::step_cache_server::{StepCache, StepCacheServer};
use strata_proto::v1::tags_server::{Tags, TagsServer};
use strata_proto::v1::{
    self, Chunk, FindManifestRequest, FindManifestResponse, FindMissingRequest,
    FindMissingResponse, FindObjectRequest, GetChunksRequest, GetChunksResponse,
    GetManifestRequest, GetManifestResponse, GetTagRequest, GetTagResponse, LookupStepsRequest,
    LookupStepsResponse, PutChunksRequest, PutChunksResponse, PutManifestRequest,
    PutManifestResponse, RecordStepRequest, RecordStepResponse, SetTagRequest, SetTagResponse,
    StatManifestRequest, StatManifestResponse,
};
use strata_proto::{Codec, Digest, Manifest, with_thread_decoder};
use strata_server::service::{
    AdminService, CONNECTION_WINDOW_BYTES, ContentService, ManifestService, STREAM_WINDOW_BYTES,
    StepCacheService, TagsService,
};
use strata_server::{FsyncPolicy, ServerConfig, Store, StoreConfig};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// One lie the server tells. Chunk lies apply to every `GetChunks` answer,
/// manifest lies to every `GetManifest` answer, step-result lies to every
/// result a `LookupSteps` answer carries and tag lies to every `GetTag`
/// answer, until the next [`HostileServer::set_tamper`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Serve the truth.
    Honest,
    /// Flip one bit in the middle of the first chunk's decoded bytes and send
    /// them raw, under the chunk's own digest and length: only the chunk's
    /// BLAKE3 can tell.
    FlipChunkByte,
    /// Flip one bit in the middle of the first chunk's bytes as stored
    /// (compressed or not): hostile input for the client's zstd decoder.
    FlipStoredByte,
    /// Send the first chunk's digest and length with the bytes of the second
    /// chunk, cut or repeated to that length.
    ForeignChunkBytes,
    /// Swap the first two chunks of the answer.
    SwapChunks,
    /// Send, in place of the first chunk asked for, the last one (its digest
    /// and bytes): a true chunk, but not the one asked.
    SubstituteChunk,
    /// Declare the first chunk one byte longer than it is.
    WrongRawLength,
    /// End the stream one chunk early.
    DropLastChunk,
    /// Send one chunk more than asked (the first, again).
    ExtraChunk,
    /// Flip a bit of the first chunk digest in the manifest.
    FlipManifestChunkDigest,
    /// Flip a bit of the whole object's SHA-256 in the manifest.
    FlipManifestSha256,
    /// Answer every manifest request with this other object's true manifest.
    ManifestOf(Digest),
    /// Never answer `GetManifest`.
    StallManifest,
    /// Never answer `FindMissing`: a push must time out, not hang.
    StallFindMissing,
    /// Send the first message of each `GetChunks` answer, then neither
    /// another message nor the end of the stream.
    StallChunkStream,
    /// `FindMissing` claims every chunk is held; the rest stays honest, so
    /// the real store refuses the manifest.
    ClaimAllChunks,
    /// `FindMissing` claims every chunk is held and `PutManifest` accepts any
    /// manifest, keeps it in memory and serves it back on `GetManifest`,
    /// though its chunks were never stored.
    ClaimEverything,
    /// Flip one bit of each step result's signature, signer kept.
    FlipStepSignature,
    /// Point each step result at this layer, its signature kept.
    StepLayer(Digest),
    /// Say each step result was recorded without a network sandbox
    /// (`network: host`), its signature kept.
    StepProvenance,
    /// Answer every step key with the true, signed result recorded under
    /// this other key.
    StepOfKey(Digest),
    /// Send each step result with its signer and signature removed.
    UnsignStep,
    /// Answer one step key fewer than asked.
    DropStepHit,
    /// Send this other object's true manifest as each hit's layer manifest
    /// (the result itself untouched).
    StepLayerManifestOf(Digest),
    /// Flip one bit of the tag's signature, signer kept.
    FlipTagSignature,
    /// Point the tag at this object, its signature kept.
    TagTarget(Digest),
    /// Move the tag's time forward by a day, its signature kept (a rollback
    /// dressed up as the newest change).
    TagTime,
    /// Answer every tag name with the true, signed tag of this other name.
    TagOfName(String),
}

/// What the services share with the test.
struct Shared {
    tamper: Mutex<Tamper>,
    tampered: AtomicUsize,
    /// Manifests accepted under [`Tamper::ClaimEverything`], never stored.
    accepted_lies: Mutex<HashMap<Digest, v1::Manifest>>,
    /// Closed when the server is dropped: releases stalled calls.
    released: watch::Receiver<()>,
}

impl Shared {
    fn tamper(&self) -> Tamper {
        self.tamper.lock().unwrap().clone()
    }

    fn count(&self) {
        self.tampered.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until the server is dropped, then fails the call: a stall that
    /// outlives the test would hold the runtime's shutdown.
    async fn stall(&self) -> Status {
        self.count();
        let mut released = self.released.clone();
        while released.changed().await.is_ok() {}
        Status::unavailable("the hostile server stopped stalling")
    }
}

/// The real store served on loopback behind lying `ContentStore`,
/// `ManifestStore`, `StepCache` and `Tags` services; `Admin` is the real
/// one.
pub struct HostileServer {
    pub url: String,
    pub store: Store,
    shared: Arc<Shared>,
    release: Option<watch::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HostileServer {
    /// Opens a store in `dir` and serves it, honestly for now, on an
    /// ephemeral loopback port.
    pub async fn start(dir: &Path) -> HostileServer {
        let store = Store::open(
            dir,
            StoreConfig {
                fsync: FsyncPolicy::Never,
                ..StoreConfig::default()
            },
        )
        .expect("open store");
        let config = ServerConfig::default();
        let limit = config.max_message_bytes;
        let (release, released) = watch::channel(());
        let shared = Arc::new(Shared {
            tamper: Mutex::new(Tamper::Honest),
            tampered: AtomicUsize::new(0),
            accepted_lies: Mutex::new(HashMap::new()),
            released: released.clone(),
        });
        let content = HostileContent {
            real: ContentService::new(store.clone(), config.clone()),
            shared: shared.clone(),
        };
        let manifests = HostileManifests {
            real: ManifestService::new(store.clone(), config.clone()),
            shared: shared.clone(),
        };
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
            .add_service(
                ContentStoreServer::new(content)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add_service(
                ManifestStoreServer::new(manifests)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add_service(StepCacheServer::new(HostileSteps {
                real: StepCacheService::new(store.clone(), config.clone()),
                store: store.clone(),
                shared: shared.clone(),
            }))
            .add_service(TagsServer::new(HostileTags {
                real: TagsService::new(store.clone()),
                shared: shared.clone(),
            }))
            .add_service(AdminServer::new(AdminService::new(
                store.clone(),
                config.metrics.clone(),
            )));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let mut released = released;
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    while released.changed().await.is_ok() {}
                })
                .await
                .expect("hostile server failed");
        });
        HostileServer {
            url: format!("http://{addr}"),
            store,
            shared,
            release: Some(release),
            task: Some(task),
        }
    }

    /// A client of this server with `config`.
    pub async fn client(&self, config: ClientConfig) -> Client {
        Client::connect(&self.url, config)
            .await
            .expect("connect to the hostile server")
    }

    /// Tells `tamper` from the next call on.
    pub fn set_tamper(&self, tamper: Tamper) {
        *self.shared.tamper.lock().unwrap() = tamper;
    }

    /// How many answers were falsified (stalls included) so far.
    pub fn tampered(&self) -> usize {
        self.shared.tampered.load(Ordering::SeqCst)
    }

    /// Releases stalled calls, stops serving and waits for the server task.
    pub async fn stop(mut self) {
        self.release.take();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        // Releases stalled calls and ends the serve loop even when a test
        // panics before `stop`.
        self.release.take();
    }
}

struct HostileContent {
    real: ContentService,
    shared: Arc<Shared>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<GetChunksResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ContentStore for HostileContent {
    async fn find_missing(
        &self,
        request: Request<FindMissingRequest>,
    ) -> Result<Response<FindMissingResponse>, Status> {
        match self.shared.tamper() {
            Tamper::ClaimAllChunks | Tamper::ClaimEverything => {
                self.shared.count();
                Ok(Response::new(FindMissingResponse { missing: vec![] }))
            }
            Tamper::StallFindMissing => Err(self.shared.stall().await),
            _ => self.real.find_missing(request).await,
        }
    }

    async fn put_chunks(
        &self,
        request: Request<Streaming<PutChunksRequest>>,
    ) -> Result<Response<PutChunksResponse>, Status> {
        self.real.put_chunks(request).await
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        request: Request<GetChunksRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let tamper = self.shared.tamper();
        let mut real = self.real.get_chunks(request).await?.into_inner();
        if tamper == Tamper::StallChunkStream {
            let (tx, rx) = mpsc::channel(1);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Some(first) = real.next().await {
                    let _ = tx.send(first).await;
                }
                let _ = tx.send(Err(shared.stall().await)).await;
            });
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        // Objects in these tests are small: read the whole true answer, then
        // send the falsified one as a single message.
        let mut chunks = Vec::new();
        while let Some(message) = real.next().await {
            chunks.extend(message?.chunks);
        }
        if tamper_chunks(&tamper, &mut chunks) {
            self.shared.count();
        }
        let answer = GetChunksResponse { chunks };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(answer)))))
    }
}

/// Applies a chunk lie to one true answer; whether anything changed.
fn tamper_chunks(tamper: &Tamper, chunks: &mut Vec<Chunk>) -> bool {
    match tamper {
        Tamper::FlipChunkByte => {
            let Some(first) = chunks.first_mut() else {
                return false;
            };
            let mut raw = decoded(first);
            let middle = raw.len() / 2;
            raw[middle] ^= 0x10;
            first.codec = Codec::Raw.to_wire();
            first.data = raw.into();
            true
        }
        Tamper::FlipStoredByte => {
            let Some(first) = chunks.first_mut() else {
                return false;
            };
            let mut stored = first.data.to_vec();
            let middle = stored.len() / 2;
            stored[middle] ^= 0x10;
            first.data = stored.into();
            true
        }
        Tamper::ForeignChunkBytes => {
            if chunks.len() < 2 {
                return false;
            }
            let foreign = decoded(&chunks[1]);
            let first = &mut chunks[0];
            let bytes: Vec<u8> = foreign
                .iter()
                .copied()
                .cycle()
                .take(first.raw_length as usize)
                .collect();
            first.codec = Codec::Raw.to_wire();
            first.data = bytes.into();
            true
        }
        Tamper::SwapChunks => {
            if chunks.len() < 2 {
                return false;
            }
            chunks.swap(0, 1);
            true
        }
        Tamper::SubstituteChunk => {
            if chunks.len() < 2 {
                return false;
            }
            chunks[0] = chunks[chunks.len() - 1].clone();
            true
        }
        Tamper::WrongRawLength => {
            let Some(first) = chunks.first_mut() else {
                return false;
            };
            first.raw_length += 1;
            true
        }
        Tamper::DropLastChunk => chunks.pop().is_some(),
        Tamper::ExtraChunk => {
            let Some(first) = chunks.first().cloned() else {
                return false;
            };
            chunks.push(first);
            true
        }
        _ => false,
    }
}

/// A true chunk's decoded bytes.
fn decoded(chunk: &Chunk) -> Vec<u8> {
    let digest = Digest::from_slice(&chunk.digest).unwrap();
    let codec = Codec::from_wire(chunk.codec).unwrap();
    with_thread_decoder(|d| {
        d.decode_verified(&digest, codec, chunk.raw_length, &chunk.data)
            .map(<[u8]>::to_vec)
    })
    .unwrap()
    .unwrap()
}

struct HostileManifests {
    real: ManifestService,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl ManifestStore for HostileManifests {
    async fn find_manifest(
        &self,
        request: Request<FindManifestRequest>,
    ) -> Result<Response<FindManifestResponse>, Status> {
        self.real.find_manifest(request).await
    }

    async fn find_object(
        &self,
        request: Request<FindObjectRequest>,
    ) -> Result<Response<FindManifestResponse>, Status> {
        self.real.find_object(request).await
    }

    async fn put_manifest(
        &self,
        request: Request<PutManifestRequest>,
    ) -> Result<Response<PutManifestResponse>, Status> {
        if self.shared.tamper() != Tamper::ClaimEverything {
            return self.real.put_manifest(request).await;
        }
        let wire = request.into_inner().manifest.unwrap();
        let digest = Manifest::from_wire(wire.clone()).unwrap().digest();
        self.shared
            .accepted_lies
            .lock()
            .unwrap()
            .insert(digest, wire);
        self.shared.count();
        Ok(Response::new(PutManifestResponse {
            digest: digest.to_vec(),
        }))
    }

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestResponse>, Status> {
        let tamper = self.shared.tamper();
        let asked = Digest::from_slice(&request.get_ref().digest).unwrap();
        let lie = self
            .shared
            .accepted_lies
            .lock()
            .unwrap()
            .get(&asked)
            .cloned();
        if let Some(manifest) = lie {
            return Ok(Response::new(GetManifestResponse {
                manifest: Some(manifest),
            }));
        }
        let request = match &tamper {
            Tamper::StallManifest => return Err(self.shared.stall().await),
            Tamper::ManifestOf(other) => Request::new(GetManifestRequest {
                digest: other.to_vec(),
            }),
            _ => request,
        };
        let mut answer = self.real.get_manifest(request).await?.into_inner();
        let Some(manifest) = answer.manifest.as_mut() else {
            return Ok(Response::new(answer));
        };
        let falsified = match tamper {
            Tamper::ManifestOf(_) => true,
            Tamper::FlipManifestChunkDigest => match manifest.chunks.first_mut() {
                Some(first) => {
                    first.digest[0] ^= 0x01;
                    true
                }
                None => false,
            },
            Tamper::FlipManifestSha256 => {
                manifest.sha256[0] ^= 0x01;
                true
            }
            _ => false,
        };
        if falsified {
            self.shared.count();
        }
        Ok(Response::new(answer))
    }

    async fn stat_manifest(
        &self,
        request: Request<StatManifestRequest>,
    ) -> Result<Response<StatManifestResponse>, Status> {
        self.real.stat_manifest(request).await
    }
}

struct HostileSteps {
    real: StepCacheService,
    store: Store,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl StepCache for HostileSteps {
    async fn lookup_steps(
        &self,
        request: Request<LookupStepsRequest>,
    ) -> Result<Response<LookupStepsResponse>, Status> {
        let tamper = self.shared.tamper();
        let request = match &tamper {
            Tamper::StepOfKey(other) => {
                let asked = request.into_inner();
                Request::new(LookupStepsRequest {
                    keys: vec![other.to_vec(); asked.keys.len()],
                    trusted_signers: asked.trusted_signers,
                    include_layer_manifests: asked.include_layer_manifests,
                })
            }
            _ => request,
        };
        let mut answer = self.real.lookup_steps(request).await?.into_inner();
        let mut falsified = false;
        if tamper == Tamper::DropStepHit {
            falsified = answer.hits.pop().is_some();
        }
        if let Tamper::StepLayerManifestOf(other) = &tamper {
            let theirs = self
                .store
                .get_manifest(other)
                .map_err(|e| Status::internal(e.to_string()))?
                .to_wire();
            for hit in answer
                .hits
                .iter_mut()
                .filter(|h| h.layer_manifest.is_some())
            {
                hit.layer_manifest = Some(theirs.clone());
                falsified = true;
            }
        }
        for result in answer.hits.iter_mut().filter_map(|h| h.result.as_mut()) {
            falsified |= match &tamper {
                Tamper::FlipStepSignature => flip_last_bit(&mut result.signature),
                Tamper::StepLayer(layer) => {
                    result.layer = layer.to_vec();
                    true
                }
                Tamper::StepProvenance => match result.provenance.as_mut() {
                    Some(p) => {
                        p.network = "host".into();
                        p.hermetic = false;
                        true
                    }
                    None => false,
                },
                Tamper::StepOfKey(_) => true,
                Tamper::UnsignStep => {
                    result.signer.clear();
                    result.signature.clear();
                    true
                }
                _ => false,
            };
        }
        if falsified {
            self.shared.count();
        }
        Ok(Response::new(answer))
    }

    async fn record_step(
        &self,
        request: Request<RecordStepRequest>,
    ) -> Result<Response<RecordStepResponse>, Status> {
        self.real.record_step(request).await
    }
}

struct HostileTags {
    real: TagsService,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Tags for HostileTags {
    async fn set_tag(
        &self,
        request: Request<SetTagRequest>,
    ) -> Result<Response<SetTagResponse>, Status> {
        self.real.set_tag(request).await
    }

    async fn get_tag(
        &self,
        request: Request<GetTagRequest>,
    ) -> Result<Response<GetTagResponse>, Status> {
        let tamper = self.shared.tamper();
        let request = match &tamper {
            Tamper::TagOfName(other) => {
                let asked = request.into_inner();
                Request::new(GetTagRequest {
                    name: other.clone(),
                    trusted_signers: asked.trusted_signers,
                })
            }
            _ => request,
        };
        let mut answer = self.real.get_tag(request).await?.into_inner();
        let Some(tag) = answer.tag.as_mut() else {
            return Ok(Response::new(answer));
        };
        let falsified = match &tamper {
            Tamper::FlipTagSignature => flip_last_bit(&mut tag.signature),
            Tamper::TagTarget(target) => {
                tag.digest = target.to_vec();
                true
            }
            Tamper::TagTime => {
                tag.set_unix_ms += 86_400_000;
                true
            }
            Tamper::TagOfName(_) => true,
            _ => false,
        };
        if falsified {
            self.shared.count();
        }
        Ok(Response::new(answer))
    }
}

/// Flips the last bit of `bytes`; whether there was one.
fn flip_last_bit(bytes: &mut [u8]) -> bool {
    match bytes.last_mut() {
        Some(b) => {
            *b ^= 0x01;
            true
        }
        None => false,
    }
}
