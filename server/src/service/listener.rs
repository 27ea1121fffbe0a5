//! The accept loop: a bounded number of connections, each served until it
//! closes, falls idle, or the server shuts down.
//!
//! The shape is mini-redis's: a semaphore of `max_connections` permits is
//! taken *before* each accept, so past the cap new connections wait in the
//! kernel's listen backlog (their clients see a slow connect, not an error)
//! until a served one closes. Every connection is served by its own task
//! with its own graceful shutdown, so one connection can be closed politely
//! (GOAWAY, then close once its calls are done) when it has been idle too
//! long, and all of them when the server stops.
//!
//! A connection holds its permit until its socket is gone; the handshake,
//! idle, keepalive and per-message timeouts make sure that happens to
//! connections whose clients stopped caring.
//!
//! With TLS, each connection's task runs the TLS handshake itself, holding
//! its permit, and the handshake deadline starts at accept: the TLS
//! handshake and the HTTP/2 preface together must arrive within it. The
//! accept loop never waits on a handshake.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::LimitedRouter;
use super::ServerConfig;
use super::connection::{Connection, Transport};

/// Pause after a failed accept (out of file descriptors, say): such errors
/// pass once connections close, and retrying at once would spin a core.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Accepts and serves connections until `shutdown` resolves, then stops
/// accepting, lets every connection finish its calls, and returns.
pub(crate) async fn run(
    router: LimitedRouter,
    listener: TcpListener,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    // Why a cap at all: each connection costs a file descriptor and its
    // HTTP/2 buffers, and without one, a thousand clients that connect and
    // say nothing keep a thousand sockets open.
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
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
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handshake_timeout = config.handshake_timeout;
        let deadline = Instant::now() + handshake_timeout;
        let tls = config.tls.clone();
        let idle_timeout = config.idle_timeout;
        let mut stop = stop_rx.clone();
        let router = router.clone();
        connections.spawn(async move {
            let _permit = permit;
            let stream = match tls {
                None => Transport::Plain(stream),
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    tokio::select! {
                        done = tokio::time::timeout_at(deadline, handshake) => match done {
                            Ok(Ok(stream)) => Transport::Tls(Box::new(stream)),
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(
                                    %peer,
                                    timeout = ?handshake_timeout,
                                    "closing a connection that finished no TLS handshake in time"
                                );
                                return;
                            }
                        },
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
                }
            };
            let (connection, closed) = Connection::new(stream, peer, deadline, handshake_timeout);
            let activity = connection.info().activity.clone();
            // tonic serves a stream of connections: this one, then none
            // (a stream that ended would shut the server down at once).
            let incoming =
                futures_util::stream::once(async { Ok::<_, std::io::Error>(connection) })
                    .chain(futures_util::stream::pending());
            let close = async {
                tokio::select! {
                    _ = closed => {}
                    () = activity.idle_for(idle_timeout) => {
                        tracing::debug!(%peer, "closing an idle connection");
                    }
                    _ = stop.wait_for(|stop| *stop) => {}
                }
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, close).await {
                tracing::debug!(%peer, error = %e, "connection failed");
            }
        });
    }
    drop(listener);
    stop_tx.send_replace(true);
    while connections.join_next().await.is_some() {}
}
