//! `ADD --checksum=sha256:… <url>`: the URL is fetched by the builder only
//! when the step runs (never on a hit), checked against its checksum, and
//! placed as Docker places it. A small HTTP server on loopback answers as
//! each test tells it, lies included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use strata_tests::builds::{build, build_json, context, oci_output, statuses, umoci_unpack};

/// An HTTP/1.1 server on 127.0.0.1 answering GET PATH with the body set
/// for PATH (404 otherwise), counting the requests it served.
struct Files {
    addr: String,
    bodies: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    served: Arc<AtomicUsize>,
}

impl Files {
    fn start() -> Files {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let bodies: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let served = Arc::new(AtomicUsize::new(0));
        let (b, n) = (bodies.clone(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                // Skip the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
                n.fetch_add(1, Ordering::SeqCst);
                let body = b.lock().unwrap().get(&path).cloned();
                let _ = match body {
                    Some(body) => stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| stream.write_all(&body)),
                    None => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        Files {
            addr,
            bodies,
            served,
        }
    }

    fn serve(&self, path: &str, body: &[u8]) {
        self.bodies
            .lock()
            .unwrap()
            .insert(path.to_owned(), body.to_vec());
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn dockerfile(checksum: &str, url: &str) -> String {
    format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         ADD --checksum={checksum} {url} /opt/\n\
         RUN [\"/bin/busybox\", \"cp\", \"/opt/tool.txt\", \"/seen\"]\n"
    )
}

#[test]
fn a_url_is_fetched_when_its_step_runs_checked_and_placed_as_docker_places_it() {
    let files = Files::start();
    let tool = b"tool v1\n";
    files.serve("/dl/tool.txt", tool);
    let url = files.url("/dl/tool.txt?sig=abc");
    files.serve("/dl/tool.txt?sig=abc", tool);
    let ctx = context(&dockerfile(&sha256(tool), &url));
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("image");
    let first = build_json(
        cache.path(),
        ctx.path(),
        &["--output", &oci_output(&layout, "v1")],
    );
    assert_eq!(statuses(&first), ["executed", "executed", "executed"]);
    assert_eq!(files.served(), 1);
    let rootfs = umoci_unpack(&layout, "v1", &out.path().join("b"));
    assert_eq!(std::fs::read(rootfs.join("opt/tool.txt")).unwrap(), tool);
    assert_eq!(std::fs::read(rootfs.join("seen")).unwrap(), tool);
    let mode = std::fs::metadata(rootfs.join("opt/tool.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600, "Docker's mode for a downloaded file");

    // A rebuild is all hits and asks the server nothing, even if what it
    // would serve today changed: the checksum, not today's bytes, keys it.
    files.serve(
        "/dl/tool.txt?sig=abc",
        b"tool v2, moved under the same URL\n",
    );
    let again = build_json(cache.path(), ctx.path(), &[]);
    assert_eq!(statuses(&again), ["cached", "cached", "cached"]);
    assert_eq!(files.served(), 1);
}

#[test]
fn a_url_that_sends_other_bytes_or_nothing_fails_the_step_at_its_line() {
    let files = Files::start();
    let pinned = b"the real tool\n";
    files.serve("/tool.txt", b"something else entirely\n");
    let cache = tempfile::tempdir().unwrap();
    for (url, expect) in [
        (files.url("/tool.txt"), "is not what --checksum pins"),
        (files.url("/missing.txt"), "answered HTTP 404"),
        (
            "http://127.0.0.1:9/tool.txt".to_owned(),
            "cannot fetch http://127.0.0.1:9/tool.txt",
        ),
    ] {
        let ctx = context(&dockerfile(&sha256(pinned), &url));
        let out = build(cache.path(), ctx.path(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: {stderr}");
        assert!(stderr.contains("Dockerfile:3: ADD: "), "{url}: {stderr}");
        assert!(stderr.contains(expect), "{url}: {stderr}");
        assert!(
            stderr.contains(&sha256(pinned)) || !expect.contains("checksum"),
            "{stderr}"
        );
    }
    // Nothing was recorded: with the right bytes served, the step runs.
    files.serve("/tool.txt", pinned);
    let ctx = context(&dockerfile(&sha256(pinned), &files.url("/tool.txt")));
    let report = build_json(cache.path(), ctx.path(), &[]);
    assert_eq!(statuses(&report), ["cached", "executed", "executed"]);
}
