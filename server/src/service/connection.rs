//! One accepted TCP connection as the HTTP/2 server reads it, and what the
//! listener must know about it: did the client open HTTP/2 in time, and is
//! any call open on it.
//!
//! Why here and not in hyper: until a client has sent the HTTP/2 preface,
//! hyper waits for it forever (its keepalive pings start only after), so a
//! connection that sends nothing would hold a connection slot for good. The
//! handshake deadline is enforced on the socket itself. Idleness is tracked
//! per call by the request layer (`request_limits.rs`), which finds this
//! connection's [`Activity`] in each request's extensions; the listener
//! closes the connection politely (GOAWAY) once it has been idle too long.
//!
//! With TLS, the listener completes the TLS handshake first, under the same
//! deadline (`listener.rs`); the preface is then counted in decrypted bytes.
//!
//! Nothing here buffers: reads and writes go straight to the socket (or its
//! TLS session).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// Bytes of the HTTP/2 client connection preface (RFC 9113 §3.4), the
/// first thing a client must send.
const HTTP2_PREFACE_BYTES: usize = 24;

/// What a request knows of the connection it came on (tonic puts it in
/// every request's extensions).
#[derive(Clone, Debug)]
pub(crate) struct ConnectionInfo {
    pub peer: SocketAddr,
    pub activity: Arc<Activity>,
}

/// An accepted socket, in the clear or inside a TLS session.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection: the socket, with a deadline on the handshake.
pub(crate) struct Connection {
    stream: Transport,
    info: ConnectionInfo,
    handshake: Option<Handshake>,
    /// Dropped with the connection: tells the listener it has closed.
    _closed: oneshot::Sender<()>,
}

/// The wait for the client's HTTP/2 preface.
struct Handshake {
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    bytes_left: usize,
}

impl Connection {
    /// Wraps an accepted socket whose client must send the HTTP/2 preface
    /// by `deadline` (the handshake timeout after accept, whatever a TLS
    /// handshake already took of it); the returned receiver resolves once
    /// the connection is dropped (closed by either side).
    pub(crate) fn new(
        stream: Transport,
        peer: SocketAddr,
        deadline: Instant,
        handshake_timeout: Duration,
    ) -> (Connection, oneshot::Receiver<()>) {
        let (closed_tx, closed_rx) = oneshot::channel();
        let connection = Connection {
            stream,
            info: ConnectionInfo {
                peer,
                activity: Arc::new(Activity::new()),
            },
            handshake: Some(Handshake {
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                timeout: handshake_timeout,
                bytes_left: HTTP2_PREFACE_BYTES,
            }),
            _closed: closed_tx,
        };
        (connection, closed_rx)
    }

    pub(crate) fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(handshake) = this.handshake.as_mut() else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                // End of stream (read == 0) ends the wait as well.
                if read == 0 || read >= handshake.bytes_left {
                    this.handshake = None;
                } else {
                    handshake.bytes_left -= read;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match handshake.deadline.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    tracing::debug!(
                        peer = %this.info.peer,
                        timeout = ?handshake.timeout,
                        "closing a connection that sent no HTTP/2 preface in time"
                    );
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )))
                }
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The calls open on one connection, and since when it has had none.
#[derive(Debug)]
pub(crate) struct Activity {
    state: watch::Sender<Calls>,
}

#[derive(Clone, Copy, Debug)]
struct Calls {
    open: usize,
    idle_since: Instant,
}

impl Activity {
    fn new() -> Self {
        let (state, _) = watch::channel(Calls {
            open: 0,
            idle_since: Instant::now(),
        });
        Activity { state }
    }

    /// Counts a call as open until the returned guard is dropped.
    pub(crate) fn begin_call(self: &Arc<Self>) -> OpenCall {
        self.state.send_modify(|c| c.open += 1);
        OpenCall(self.clone())
    }

    /// Resolves once no call has been open for `limit`.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        let mut changes = self.state.subscribe();
        loop {
            let calls = *changes.borrow_and_update();
            if calls.open > 0 {
                // The sender lives in `self`, so this cannot fail while we wait.
                let _ = changes.changed().await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep_until(calls.idle_since + limit) => return,
                _ = changes.changed() => {}
            }
        }
    }
}

/// One open call; dropping it closes the call.
#[derive(Debug)]
pub(crate) struct OpenCall(Arc<Activity>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.state.send_modify(|c| {
            c.open = c.open.saturating_sub(1);
            if c.open == 0 {
                c.idle_since = Instant::now();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_idle_only_once_its_last_call_has_been_closed_for_the_limit() {
        let activity = Arc::new(Activity::new());
        let call = activity.begin_call();
        let limit = Duration::from_millis(50);
        let idle = activity.idle_for(limit);
        tokio::pin!(idle);
        tokio::select! {
            () = &mut idle => panic!("idle while a call is open"),
            () = tokio::time::sleep(limit * 4) => {}
        }
        let closed_at = Instant::now();
        drop(call);
        tokio::time::timeout(Duration::from_secs(10), idle)
            .await
            .expect("idle once the call closed");
        assert!(Instant::now() >= closed_at + limit);
    }
}
