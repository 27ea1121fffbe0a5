//! The `/metrics` endpoint (`strata serve --metrics-listen ADDR`): plain
//! HTTP/1.1 on a listener of its own, never on the gRPC port, answering
//! `GET /metrics` (and `HEAD`) with the Prometheus text of
//! `exposition.rs`. Anything else is refused with the status that says
//! why: another method `405`, another path `404`, a malformed request
//! `400`, a request head over [`MAX_REQUEST_HEAD_BYTES`] `431`, one that
//! does not arrive within [`REQUEST_TIMEOUT`] `408`.
//!
//! Why a small responder of its own rather than an HTTP server crate: a
//! scrape is one GET with no body, and everything a hostile client can do
//! to it (send a huge head, send it a byte a minute, open many sockets) is
//! bounded here in a few named constants, the same way the gRPC listener
//! bounds its connections. One request per connection (`Connection:
//! close`), which Prometheus handles as a matter of course.
//!
//! It serves figures only: no token, path or other secret is in them, and
//! it reads nothing a client sends beyond the request line.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::Metrics;
use super::exposition;
use crate::store::Store;

/// Connections served at once; more wait in the listen backlog. 16: a
/// scrape takes milliseconds, and a Prometheus pair and an operator's curl
/// need three.
pub const MAX_CONNECTIONS: usize = 16;

/// Longest request head (request line and headers) read. 8 KiB, like
/// most HTTP servers' default: a scraper's head is a few hundred bytes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 << 10;

/// How long a client has, from connecting, to send its whole request head;
/// past it the connection gets `408` and is closed, so a client sending a
/// byte at a time (slowloris) holds a connection slot this long at most.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long writing the response may take before the connection is
/// dropped (a client that does not read).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// After answering, what is still read (and dropped) of a request that
/// was not read whole before the connection is closed, so that closing
/// with unread bytes does not reset the connection before the client has
/// read the answer.
const LINGER_BYTES: usize = 64 << 10;
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause after a failed accept (out of file descriptors, say).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Serves `/metrics` on `listener` until `shutdown` resolves, then stops
/// accepting and lets the connections being answered finish.
pub async fn serve_metrics(
    store: Store,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "serving metrics");
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
        };
        let (store, metrics) = (store.clone(), metrics.clone());
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = answer(stream, &store, &metrics) => {}
                _ = stop.wait_for(|stop| *stop) => {
                    tracing::debug!(%peer, "metrics connection closed by shutdown");
                }
            }
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
    while connections.join_next().await.is_some() {}
}

/// What came of reading a request head.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The head, up to and without its blank line.
    Complete(Vec<u8>),
    /// Longer than [`MAX_REQUEST_HEAD_BYTES`] without ending.
    TooLarge,
    /// The client closed before the head ended.
    Closed,
}

/// Reads a request head, never more than the cap.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_blank_line(&head[searched_from..]) {
            head.truncate(searched_from + end);
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_REQUEST_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the blank line ending a head starts (CRLF CRLF, or a bare LF LF
/// as RFC 9112 lets a server accept).
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One response, whole.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// A HEAD request: the headers of the body, without it.
    head_only: bool,
}

impl Reply {
    fn error(status: u16, reason: &'static str, why: &str) -> Reply {
        Reply {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{why}\n"),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// What a request asks for, from its request line.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    Refused(Reply),
}

/// Judges a request head by its request line (`METHOD TARGET HTTP/1.x`);
/// the headers are not needed for anything.
fn route(head: &[u8]) -> Request {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let bad = |why: &str| Request::Refused(Reply::error(400, "Bad Request", why));
    let Ok(line) = std::str::from_utf8(line) else {
        return bad("the request line is not text");
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return bad("expected a request line `GET /metrics HTTP/1.1`");
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return bad("only HTTP/1.0 and HTTP/1.1 are served");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Request::Refused(Reply::error(
                405,
                "Method Not Allowed",
                "only GET and HEAD are served",
            ));
        }
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Request::Refused(Reply::error(
            404,
            "Not Found",
            "not found: the figures are at /metrics",
        ));
    }
    Request::Metrics { head_only }
}

/// Reads one request from `stream`, answers it, and closes.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    store: &Store,
    metrics: &Arc<Metrics>,
) {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
    let reply = match head {
        Err(_) => Reply::error(408, "Request Timeout", "the request did not arrive in time"),
        Ok(Err(_)) | Ok(Ok(Head::Closed)) => return,
        Ok(Ok(Head::TooLarge)) => Reply::error(
            431,
            "Request Header Fields Too Large",
            "the request head is too large",
        ),
        Ok(Ok(Head::Complete(head))) => match route(&head) {
            Request::Refused(reply) => reply,
            Request::Metrics { head_only } => Reply {
                head_only,
                ..page(store, metrics).await
            },
        },
    };
    let write = async {
        stream.write_all(&reply.to_bytes()).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(WRITE_TIMEOUT, write).await.is_err() {
        return;
    }
    // Read what the client may still be sending, so closing does not
    // reset the connection under the answer it has yet to read.
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let linger = async {
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, linger).await;
}

/// The metrics page, with the store's figures as they are now.
async fn page(store: &Store, metrics: &Arc<Metrics>) -> Reply {
    let store = store.clone();
    // The store's figures read a few index entries: blocking, if briefly.
    let stats = match tokio::task::spawn_blocking(move || store.stats()).await {
        Ok(stats) => stats,
        Err(e) => {
            tracing::error!(error = %e, "reading the store's figures failed");
            return Reply::error(
                500,
                "Internal Server Error",
                "the figures could not be read",
            );
        }
    };
    match exposition::encode(metrics, stats) {
        Ok(body) => Reply {
            status: 200,
            reason: "OK",
            content_type: exposition::CONTENT_TYPE,
            body,
            head_only: false,
        },
        Err(e) => {
            tracing::error!(error = %e, "encoding the metrics failed");
            Reply::error(
                500,
                "Internal Server Error",
                "the figures could not be encoded",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(request: &[u8]) -> u16 {
        match route(request) {
            Request::Metrics { .. } => 200,
            Request::Refused(reply) => reply.status,
        }
    }

    #[test]
    fn only_get_or_head_of_metrics_is_served() {
        assert_eq!(status(b"GET /metrics HTTP/1.1\r\nHost: x"), 200);
        assert_eq!(status(b"GET /metrics?x=1 HTTP/1.0"), 200);
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1"),
            Request::Metrics { head_only: true }
        );
        assert_eq!(status(b"POST /metrics HTTP/1.1"), 405);
        assert_eq!(status(b"DELETE /metrics HTTP/1.1"), 405);
        assert_eq!(status(b"GET / HTTP/1.1"), 404);
        assert_eq!(status(b"GET /metrics/../etc/passwd HTTP/1.1"), 404);
        assert_eq!(status(b"GET /metrics HTTP/2.0"), 400);
        assert_eq!(status(b"GET /metrics"), 400);
        assert_eq!(status(b"GET  /metrics HTTP/1.1"), 400);
        assert_eq!(status(b"\xff\xfe /metrics HTTP/1.1"), 400);
        assert_eq!(status(b""), 400);
    }

    #[test]
    fn a_refusal_says_what_is_allowed_and_closes() {
        let Request::Refused(reply) = route(b"PUT /metrics HTTP/1.1") else {
            panic!("PUT was served");
        };
        let text = String::from_utf8(reply.to_bytes()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_head_is_read_to_its_blank_line_and_no_further_than_the_cap() {
        let mut ok: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\ntrailing";
        assert_eq!(
            read_head(&mut ok).await.unwrap(),
            Head::Complete(b"GET /metrics HTTP/1.1\r\nHost: a".to_vec())
        );
        let huge = vec![b'a'; 10 * MAX_REQUEST_HEAD_BYTES];
        assert_eq!(read_head(&mut &huge[..]).await.unwrap(), Head::TooLarge);
        let mut cut: &[u8] = b"GET /metrics HTTP/1.1\r\n";
        assert_eq!(read_head(&mut cut).await.unwrap(), Head::Closed);
    }
}
