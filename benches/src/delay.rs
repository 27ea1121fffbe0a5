//! A TCP proxy on loopback that delays every byte by half a round trip in
//! each direction: a wide-area link to the server, for a kernel without
//! `netem`. Bandwidth is not limited, and the order of bytes is kept; what
//! the link costs is latency alone, so a client that needs `n` round trips
//! in a row pays `n` times the round-trip time.
//!
//! Each direction of each connection is a reader that stamps what it reads
//! with the time it may leave, and a writer that waits for that time; the
//! queue between them is bounded (a slow reader of the far side holds the
//! near side back, as a full TCP window would).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Reads in flight per direction before the reader waits.
const QUEUE_DEPTH: usize = 256;

/// Bytes per read.
const READ_SIZE: usize = 64 * 1024;

/// A running proxy; dropping it stops accepting (open connections end with
/// their peers).
pub struct DelayProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    accept: tokio::task::JoinHandle<()>,
}

/// What crossed the proxy since it started.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
}

/// A reading of [`DelayProxy`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub connections: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 and forwards each connection to `upstream`,
    /// delaying each direction by `rtt / 2`.
    pub async fn start(upstream: SocketAddr, rtt: Duration) -> Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the delaying proxy")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let one_way = rtt / 2;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let counters = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, one_way, counters).await;
                    }
                });
            }
        });
        Ok(DelayProxy {
            addr,
            counters,
            accept,
        })
    }

    /// Where clients connect: `http://` + this.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What has crossed so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            connections: self.counters.connections.load(Ordering::Relaxed),
            bytes_to_server: self.counters.to_server.load(Ordering::Relaxed),
            bytes_to_client: self.counters.to_client.load(Ordering::Relaxed),
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Traffic {
    /// What crossed between `earlier` and this reading.
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            connections: self.connections - earlier.connections,
            bytes_to_server: self.bytes_to_server - earlier.bytes_to_server,
            bytes_to_client: self.bytes_to_client - earlier.bytes_to_client,
        }
    }
}

/// Both directions of one connection, until either side closes.
async fn relay(client: TcpStream, server: TcpStream, one_way: Duration, counters: Arc<Counters>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = direction(client_read, server_write, one_way, counters.clone(), true);
    let down = direction(server_read, client_write, one_way, counters, false);
    tokio::join!(up, down);
}

/// Copies `from` to `to`, each read leaving `one_way` after it arrived.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    one_way: Duration,
    counters: Arc<Counters>,
    to_server: bool,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_DEPTH);
    // The client's first bytes also wait for the TCP handshake a real link
    // would have made it wait for (the proxy accepted at once, locally).
    let mut handshake = if to_server {
        one_way * 2
    } else {
        Duration::ZERO
    };
    let reader = async move {
        loop {
            let mut buf = vec![0u8; READ_SIZE];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    let counter = if to_server {
                        &counters.to_server
                    } else {
                        &counters.to_client
                    };
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    let due = Instant::now() + one_way + std::mem::take(&mut handshake);
                    if tx.send((due, buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: bytes come back intact, in order,
    /// and one exchange costs a whole round trip, not less.
    #[tokio::test]
    async fn an_exchange_through_the_proxy_costs_one_round_trip_and_keeps_every_byte() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let rtt = Duration::from_millis(40);
        let proxy = DelayProxy::start(echo_addr, rtt).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let start = std::time::Instant::now();
        let (mut r, mut w) = c.split();
        let send = async {
            w.write_all(&message).await.unwrap();
        };
        let mut back = vec![0u8; message.len()];
        let receive = async { r.read_exact(&mut back).await.unwrap() };
        tokio::join!(send, receive);
        let took = start.elapsed();
        assert_eq!(back, message, "the proxy changed or reordered bytes");
        assert!(
            took >= rtt,
            "an echo through a {rtt:?} link came back in {took:?}"
        );
        let t = proxy.traffic();
        assert_eq!(t.connections, 1);
        assert_eq!(t.bytes_to_server, message.len() as u64);
        assert_eq!(t.bytes_to_client, message.len() as u64);
    }
}
