//! `strata serve`: the cache server in the foreground, until SIGINT or
//! SIGTERM. Open to anyone only on loopback: elsewhere it needs a token
//! file (`--tokens`) or an explicit `--insecure-open`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use strata_server::{FsyncPolicy, ServerConfig, ServerTls, Store, StoreConfig, Tokens};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7171")]
    listen: String,
    /// Directory holding the segments and the index.
    #[arg(long)]
    data: PathBuf,
    /// When appended records are synced to disk before being acknowledged.
    #[arg(long, value_enum, default_value_t = Fsync::Always)]
    fsync: Fsync,
    /// Rebuild the index from the segment files before serving.
    #[arg(long)]
    rebuild_index: bool,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = ServerConfig::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Connections served at once; more wait to be accepted until one closes.
    #[arg(long, default_value_t = ServerConfig::default().max_connections,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    max_connections: usize,
    /// Calls one connection may have open at once (HTTP/2 streams).
    #[arg(long, default_value_t = ServerConfig::default().max_streams_per_connection,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// Bytes of upload messages held at once, all clients together; past it
    /// the server reads no more uploads until stored ones free some.
    #[arg(long, default_value_t = ServerConfig::default().upload_budget_bytes,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    upload_budget_bytes: usize,
    /// Seconds a new connection has to begin HTTP/2 before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = ServerConfig::default().handshake_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: u64,
    /// Seconds a connection may go without a call, or a call without a
    /// message from its client, before it is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = ServerConfig::default().idle_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Seconds one request message may take to arrive once begun, and a
    /// download's reader to take one response message.
    #[arg(long, value_name = "SECONDS", default_value_t = ServerConfig::default().message_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    message_timeout: u64,
    /// Token file (lines from `strata token new`): every call then needs a
    /// bearer token holding the scope it needs (health checks excepted).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Serve without --tokens on an address other than loopback: anyone
    /// who can reach it can then record step results other builds will
    /// run. Only for networks where every client is trusted.
    #[arg(long)]
    insecure_open: bool,
    /// PEM certificate chain (leaf first) to serve TLS with; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fsync {
    /// Sync every commit group: an acknowledged chunk survives power loss.
    Always,
    /// Leave syncing to the OS: faster, survives a crash of the process only.
    Never,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let addr: SocketAddr = tokio::net::lookup_host(&args.listen)
        .await
        .with_context(|| format!("cannot resolve listen address {:?}", args.listen))?
        .next()
        .with_context(|| format!("listen address {:?} resolves to nothing", args.listen))?;
    let tokens = match &args.tokens {
        Some(path) => {
            let tokens = Tokens::load(path)?;
            if tokens.is_empty() {
                tracing::warn!(
                    path = %path.display(),
                    "the token file holds no token: every call but health checks will be refused"
                );
            }
            Some(Arc::new(tokens))
        }
        None => None,
    };
    check_exposure(addr, tokens.is_some(), args.insecure_open)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::from_pem_files(cert, key)?),
        _ => None,
    };
    if tokens.is_some() && tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "tokens will cross the network in the clear: add --tls-cert and --tls-key"
        );
    }
    // Bind before opening the store: a taken port should not cost a recovery scan.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let config = StoreConfig {
        fsync: match args.fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Never => FsyncPolicy::Never,
        },
        rebuild_index: args.rebuild_index,
        ..StoreConfig::default()
    };
    let data = args.data.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data, config))
        .await
        .context("opening the store")??;
    let stats = store.stats();
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        data = %args.data.display(),
        chunks = stats.chunks,
        objects = stats.manifests,
        "store open"
    );
    // Catch SIGTERM before saying we listen: a supervisor (or a test) may
    // stop us the moment it reads that line, and must get a clean stop.
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Tests and scripts read this line to learn the port of `--listen :0`.
    eprintln!("strata: listening on {local}");
    let server_config = ServerConfig {
        max_message_bytes: args.max_message_bytes,
        max_connections: args.max_connections,
        max_streams_per_connection: args.max_streams_per_connection,
        upload_budget_bytes: args.upload_budget_bytes,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        message_timeout: Duration::from_secs(args.message_timeout),
        tokens,
        tls,
        ..ServerConfig::default()
    };
    strata_server::serve(store, server_config, listener, shutdown_signal(terminate)).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Refuses to serve an open cache beyond loopback unless told to: anyone
/// who can reach an open server can record step results that every other
/// builder will take (cache poisoning).
fn check_exposure(addr: SocketAddr, has_tokens: bool, insecure_open: bool) -> Result<()> {
    if has_tokens || insecure_open || addr.ip().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve {addr} without authentication: anyone who can reach it could \
         record step results and tags that other builds will use. Pass --tokens FILE \
         (make tokens with `strata token new`), or --insecure-open if every client on \
         this network is trusted"
    )
}

async fn shutdown_signal(mut terminate: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}
