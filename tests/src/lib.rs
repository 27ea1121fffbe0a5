//! The end-to-end harness: real servers on loopback (in-process, or the
//! `strata` binary as a child process that can be killed), deterministic
//! test data, and the `strata` command for CLI tests.
//!
//! Nothing here is a mock: every test talks gRPC over TCP to the real
//! services over the real store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig};
use strata_server::{FsyncPolicy, ServerConfig, Store, StoreConfig};
use tokio::sync::oneshot;

/// A server running in this process, listening on 127.0.0.1.
pub struct TestServer {
    pub url: String,
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Opens a store in `dir` and serves it on an ephemeral loopback port.
    pub async fn start(dir: &Path) -> TestServer {
        Self::start_with(dir, ServerConfig::default()).await
    }

    pub async fn start_with(dir: &Path, config: ServerConfig) -> TestServer {
        let store = Store::open(
            dir,
            StoreConfig {
                fsync: FsyncPolicy::Never,
                ..StoreConfig::default()
            },
        )
        .expect("open store");
        Self::serve(store, config).await
    }

    /// Serves an opened store on an ephemeral loopback port.
    pub async fn serve(store: Store, config: ServerConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let served = store.clone();
        let task = tokio::spawn(async move {
            strata_server::serve(served, config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server failed");
        });
        TestServer {
            url: format!("http://{addr}"),
            store,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url, test_client_config())
            .await
            .expect("connect to test server")
    }

    /// Stops serving and waits for in-flight requests to finish.
    pub async fn stop(mut self) {
        self.shutdown.take().map(|tx| tx.send(()));
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// Path of the `strata` binary built alongside the tests.
pub fn strata_bin() -> PathBuf {
    // target/<profile>/deps/<test-binary> → target/<profile>/strata
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("strata");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` \
         (scripts/test does this before running the tests)",
        bin.display()
    );
    bin
}

/// Where this test run's signing key and configuration live: beside the
/// `strata` binary, so no test reads or writes the user's own
/// `~/.config/strata`.
fn test_config_dir() -> PathBuf {
    strata_bin()
        .parent()
        .expect("target dir")
        .join("strata-test-config")
}

/// The signing key every test client and `strata` command signs with: one
/// key for the whole suite, as a fleet of builders shares one, so what one
/// test's builds record is a hit for its clients. Made on first use.
pub fn test_key_file() -> PathBuf {
    let path = test_config_dir().join("signing-key");
    strata_client::trust_files::load_or_create_key(&path).expect("the test signing key");
    path
}

/// Signs with [`test_key_file`]'s key and trusts only it.
pub fn test_trust() -> strata_client::TrustPolicy {
    let key = strata_client::trust_files::read_key(&test_key_file()).expect("test signing key");
    strata_client::TrustPolicy::new(Some(key), [])
}

/// The client configuration tests use: the defaults, signing as
/// [`test_trust`] does.
pub fn test_client_config() -> ClientConfig {
    ClientConfig {
        trust: test_trust(),
        ..ClientConfig::default()
    }
}

/// The `strata` command with its embedded cache confined to `cache_dir`, no
/// inherited server address, the suite's signing key and an empty
/// configuration directory of its own (no trust list).
pub fn strata(cache_dir: &Path) -> Command {
    strata_wrapped(&[], cache_dir)
}

/// [`strata`] run through `wrapper` (say `ip netns exec NAME`).
pub fn strata_wrapped(wrapper: &[&str], cache_dir: &Path) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(strata_bin());
            cmd
        }
        None => Command::new(strata_bin()),
    };
    cmd.env("STRATA_CACHE_DIR", cache_dir)
        .env_remove("STRATA_SERVER")
        .env_remove("STRATA_TRUST")
        .env("STRATA_SIGNING_KEY", test_key_file())
        .env("XDG_CONFIG_HOME", test_config_dir().join("xdg"))
        .env("RUST_LOG", "warn");
    cmd
}

/// `strata serve` as a child process.
pub struct ServerProcess {
    pub url: String,
    pub data: PathBuf,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `strata serve` on an ephemeral port over `data` and waits
    /// until it listens.
    pub fn start(data: &Path, extra_args: &[&str]) -> ServerProcess {
        ServerProcess::start_at(data, "127.0.0.1:0", extra_args)
    }

    /// Starts `strata serve` listening on `addr` (a restart at the address
    /// clients already use) and waits until it listens.
    pub fn start_at(data: &Path, addr: &str, extra_args: &[&str]) -> ServerProcess {
        let mut child = Command::new(strata_bin())
            .args(["serve", "--listen", addr, "--data"])
            .arg(data)
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strata serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("strata: listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "strata serve did not start listening; its log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        ServerProcess {
            url: format!("http://{addr}"),
            data: data.to_path_buf(),
            child,
            log,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url, test_client_config())
            .await
            .expect("connect to strata serve")
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "server exited with {status}:\n{}",
                    self.log()
                );
                return;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The content figures (see [`content_figures`]) of the server at `url`
/// once its background verifier has decided every manifest stored so far:
/// a figure taken while work is pending (`manifests_unverified`) would race
/// the verifier.
pub async fn settled_stats(url: &str) -> strata_proto::v1::StatsResponse {
    use strata_proto::v1::StatsRequest;
    use strata_proto::v1::admin_client::AdminClient;
    let mut admin = AdminClient::connect(url.to_owned())
        .await
        .expect("connect to the server's admin service");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = admin
            .stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        if stats.manifests_unverified == 0 {
            return content_figures(stats);
        }
        assert!(
            Instant::now() < deadline,
            "the verifier did not finish within a minute: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_random(&mut out, seed);
    out
}

fn fill_random(out: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
}

/// Deterministic bytes that look like a layer: random stretches between
/// text-like and repeated ones, so both raw and zstd chunks occur.
pub fn layer_like_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = 0u64;
    while out.len() < len {
        let n = (len - out.len()).min(256 << 10);
        match block % 3 {
            0 => out.extend_from_slice(&random_bytes(n, seed ^ block)),
            1 => {
                let line = format!("/usr/lib/strata/file-{seed}-{block}.so: ELF 64-bit\n");
                out.extend(line.bytes().cycle().take(n));
            }
            _ => {
                let mut r = random_bytes(n, seed.rotate_left(7) ^ block);
                for (i, b) in r.iter_mut().enumerate() {
                    if i % 4 != 0 {
                        *b = 0;
                    }
                }
                out.extend_from_slice(&r);
            }
        }
        block += 1;
    }
    out
}

/// A reader of `len` deterministic random bytes, without holding them: the
/// bytes depend only on the seed and their position, not on read sizes.
pub struct RandomReader {
    len: u64,
    pos: u64,
    seed: u64,
    block: Vec<u8>,
}

const RANDOM_BLOCK: u64 = 1 << 20;

impl RandomReader {
    pub fn new(len: u64, seed: u64) -> Self {
        RandomReader {
            len,
            pos: 0,
            seed,
            block: vec![0; RANDOM_BLOCK as usize],
        }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.len {
            return Ok(0);
        }
        let within = self.pos % RANDOM_BLOCK;
        if within == 0 {
            fill_random(&mut self.block, self.seed ^ (self.pos / RANDOM_BLOCK) << 20);
        }
        let n = buf
            .len()
            .min((RANDOM_BLOCK - within) as usize)
            .min((self.len - self.pos) as usize);
        buf[..n].copy_from_slice(&self.block[within as usize..within as usize + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// A store's figures without the size of its index on disk (and so of the
/// data directory): that is a measurement of sled's files, which a restart
/// or a rebuild may change, not a figure about content; and without what
/// the server process counted since it started (uptime, calls, bytes,
/// clients), which a restart resets and every call moves. For tests that
/// compare figures across those.
pub fn content_figures(s: strata_proto::v1::StatsResponse) -> strata_proto::v1::StatsResponse {
    strata_proto::v1::StatsResponse {
        index_bytes: 0,
        bytes_used: 0,
        uptime_ms: 0,
        request_bytes: 0,
        response_bytes: 0,
        upload_chunks_received: 0,
        upload_bytes_received: 0,
        upload_chunks_stored: 0,
        upload_bytes_stored: 0,
        dedup_chunks: 0,
        dedup_bytes: 0,
        step_lookups: 0,
        step_hits: 0,
        step_misses: 0,
        rpcs: Vec::new(),
        clients: Vec::new(),
        ..s
    }
}

/// Segment files of a data directory, in order.
pub fn segment_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Serves an already opened store on an ephemeral loopback port, as
/// [`TestServer::start`] does: for stores opened with a config of the
/// test's own (small segments, an index rebuild).
pub async fn serve_store(store: Store) -> TestServer {
    TestServer::serve(store, ServerConfig::default()).await
}

/// A token file in `dir` holding one token per `(name, scopes)`, and the
/// tokens in the same order.
pub fn token_file(dir: &Path, tokens: &[(&str, &str)]) -> (PathBuf, Vec<String>) {
    let path = dir.join("tokens");
    let made = tokens
        .iter()
        .map(|(name, scopes)| {
            strata_server::add_token(&path, name, scopes.parse().unwrap()).unwrap()
        })
        .collect();
    (path, made)
}

/// A server on loopback that accepts only the tokens of `file`.
pub async fn start_with_tokens(dir: &Path, file: &Path) -> TestServer {
    let tokens = strata_server::Tokens::load(file).expect("load token file");
    let config = ServerConfig {
        tokens: Some(Arc::new(tokens)),
        ..ServerConfig::default()
    };
    TestServer::start_with(dir, config).await
}

/// A client of `url` sending `token` (none: no authorization header).
pub async fn client_with_token(url: &str, token: Option<&str>) -> Client {
    let config = ClientConfig {
        token: token.map(|t| strata_client::BearerToken::new(t).unwrap()),
        ..test_client_config()
    };
    Client::connect(url, config).await.expect("connect")
}

/// A test CA and a server certificate it signed, for `localhost` and
/// `127.0.0.1`, as PEM files in a directory of their own.
pub struct TestCertificates {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificates {
    /// Makes a fresh CA (named `ca_name`) and a server certificate signed
    /// by it; every call gives unrelated keys.
    pub fn generate(ca_name: &str) -> TestCertificates {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "strata test server");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&server_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = TestCertificates {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            dir,
        };
        std::fs::write(&files.ca, ca_cert.pem()).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, server_key.serialize_pem()).unwrap();
        files
    }

    pub fn server_tls(&self) -> strata_server::ServerTls {
        strata_server::ServerTls::from_pem_files(&self.cert, &self.key).unwrap()
    }
}

pub mod builds;
pub mod dockerd;
pub mod hostile;
