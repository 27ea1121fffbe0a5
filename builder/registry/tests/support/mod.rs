//! Test support: a real registry (Debian's `docker-registry`, the CNCF
//! distribution server) on an ephemeral loopback port, OCI layouts written
//! by hand (gzip layers) to push into it with skopeo, and a hostile
//! registry whose every answer the test chooses.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Panics with how to install `program` when it is missing: tests never skip.
pub fn require_tool(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is needed by this test: install it with `apt-get install {package}` (scripts/test does)"
    );
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A `docker-registry` child on 127.0.0.1:<ephemeral>, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        require_tool("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  secret: strata-test\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The server logs `listening on ADDR` once its socket is bound: wait
        // on that line, not on a sleep, and keep draining its log after.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("msg=\"listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.split('"').next().unwrap_or_default().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                panic!("docker-registry did not start listening: {e}");
            }
        };
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Registry {
    /// Where the registry keeps blob `digest` (`sha256:…`) on disk: a test
    /// that deletes or changes it learns whether a client fetched it.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = &digest["sha256:".len()..];
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One image written into a layout: what the test needs to compare with.
#[derive(Clone, Debug)]
pub struct WrittenImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    /// (gzip blob, digest, diff_id) per layer.
    pub layers: Vec<(Vec<u8>, String, String)>,
}

/// A gzip layer tar holding `files` (path, contents), deterministic.
pub fn gzip_layer(files: &[(&str, &str)]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, path, contents.as_bytes())
            .unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&digest["sha256:".len()..]), bytes).unwrap();
    digest
}

/// Writes an image (manifest, config, gzip layers) into `layout`'s blobs.
pub fn write_image(
    layout: &Path,
    os: &str,
    arch: &str,
    layer_files: &[&[(&str, &str)]],
) -> WrittenImage {
    let layers: Vec<(Vec<u8>, String, String)> = layer_files
        .iter()
        .map(|files| {
            let (blob, diff_id) = gzip_layer(files);
            let digest = put_blob(layout, &blob);
            (blob, digest, diff_id)
        })
        .collect();
    let diff_ids: Vec<&str> = layers.iter().map(|(_, _, d)| d.as_str()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "strata test"}],
    }))
    .unwrap();
    let config_digest = put_blob(layout, &config);
    let layer_descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|(blob, digest, _)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": blob.len(),
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layer_descriptors,
    }))
    .unwrap();
    let manifest_digest = put_blob(layout, &manifest);
    WrittenImage {
        manifest,
        manifest_digest,
        config,
        config_digest,
        layers,
    }
}

/// Writes `index.json` and `oci-layout` naming `digest` (of `media_type`,
/// `size` bytes) as `tag`.
pub fn write_index(layout: &Path, tag: &str, media_type: &str, digest: &str, size: usize) {
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// A two-platform image index over two written images; returns its bytes.
pub fn write_platform_index(
    layout: &Path,
    images: &[(&str, &str, &WrittenImage)],
) -> (Vec<u8>, String) {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(os, arch, image)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
                "platform": {"os": os, "architecture": arch},
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let digest = put_blob(layout, &index);
    (index, digest)
}

/// Runs a command, panicking with its stderr when it fails; returns stdout.
pub fn run(program: &str, args: &[&str]) -> Vec<u8> {
    require_tool(program, program);
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Copies `oci:LAYOUT:TAG` into the registry as `docker://ADDR/REPO:TAG`,
/// blobs as they are (gzip), every platform of an index.
pub fn skopeo_push(layout: &Path, tag: &str, addr: &str, repo_and_tag: &str) {
    run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{addr}/{repo_and_tag}"),
        ],
    );
}

/// One answer of the hostile registry.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this many body bytes (a truncated body).
    pub cut_after: Option<usize>,
    /// Send no Content-Length: the body ends when the connection closes.
    pub no_length: bool,
}

impl Reply {
    pub fn ok(content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body,
            cut_after: None,
            no_length: false,
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_after: None,
            no_length: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A request as the hostile registry saw it.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Request, &str) -> Reply + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1:0 answering each request with what
/// `handler(request, own address)` says, one request per connection.
pub struct HostileRegistry {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl HostileRegistry {
    pub async fn start(
        handler: impl Fn(&Request, &str) -> Reply + Send + Sync + 'static,
    ) -> HostileRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handler: Arc<Handler> = Arc::new(handler);
        let own = addr.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = Arc::clone(&handler);
                let own = own.clone();
                tokio::spawn(async move {
                    let _ = serve_one(stream, &*handler, &own).await;
                });
            }
        });
        HostileRegistry { addr, task }
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    handler: &Handler,
    own: &str,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let request = Request {
        method,
        path,
        headers,
    };
    let reply = handler(&request, own);
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !reply.no_length {
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    if request.method != "HEAD" {
        let end = reply
            .cut_after
            .unwrap_or(reply.body.len())
            .min(reply.body.len());
        stream.write_all(&reply.body[..end]).await?;
    }
    stream.shutdown().await
}

/// A directory for test files.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_str(path: &Path) -> String {
    path.display().to_string()
}

pub fn child_dir(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    path
}
