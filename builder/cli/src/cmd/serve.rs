//! `strata serve`: the cache server in the foreground, until SIGINT or
//! SIGTERM. Open to anyone only on loopback: elsewhere it needs a token
//! file (`--tokens`) or an explicit `--insecure-open`. With
//! `--metrics-listen`, Prometheus figures on a second, plain HTTP port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use strata_server::store::{DEFAULT_SCRUB_BYTES_PER_SEC, DEFAULT_SCRUB_INTERVAL};
use strata_server::{FsyncPolicy, ServerConfig, ServerTls, Store, StoreConfig, Tokens};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7171")]
    listen: String,
    /// Also serve Prometheus metrics (`GET /metrics`, plain HTTP) on this
    /// address, apart from the gRPC port. The figures hold no tokens or
    /// paths, but name clients (token names, addresses): listen where
    /// only your monitoring reaches.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Directory holding the segments and the index.
    #[arg(long)]
    data: PathBuf,
    /// When appended records are synced to disk before being acknowledged.
    #[arg(long, value_enum, default_value_t = Fsync::Always)]
    fsync: Fsync,
    /// Rebuild the index from the segment files before serving.
    #[arg(long)]
    rebuild_index: bool,
    /// Keep the data directory (segments and index) under this size,
    /// evicting least recently used objects, step results and tags:
    /// 192MiB, 10G, 500MB (K/M/G/T and KiB.. are powers of 1024, KB.. of
    /// 1000). At least 32MiB. Without it nothing is ever evicted.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// Seconds an upload's interest in a chunk or object (asking about it,
    /// sending it, naming it) protects it from garbage collection.
    #[arg(long, value_name = "SECONDS", default_value_t = StoreConfig::default().lease.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    gc_lease: u64,
    /// How often the background scrub starts a pass that reads every chunk
    /// back, verifies it and drops rotten ones (a push of their content
    /// heals them): 30s, 10m, 24h, 7d; `off` (or 0) turns it off. The first
    /// pass comes one interval after the store first opens; a pass a
    /// restart interrupts resumes where it stopped. [default: 24h]
    #[arg(long, value_name = "DURATION", value_parser = parse_scrub_interval)]
    scrub_interval: Option<ScrubInterval>,
    /// The background scrub reads at most this many MiB of stored bytes per
    /// second (a whole number, at least 1), so it never crowds out pulls.
    #[arg(long, value_name = "MIB_PER_SEC", value_parser = parse_scrub_mbps,
          default_value_t = DEFAULT_SCRUB_BYTES_PER_SEC >> 20)]
    scrub_mbps: u64,
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
    let addr = resolve(&args.listen, "listen").await?;
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
    let metrics_listener = match &args.metrics_listen {
        Some(text) => {
            let addr = resolve(text, "metrics listen").await?;
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            )
        }
        None => None,
    };
    let config = StoreConfig {
        fsync: match args.fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Never => FsyncPolicy::Never,
        },
        rebuild_index: args.rebuild_index,
        max_bytes: args.max_bytes,
        lease: Duration::from_secs(args.gc_lease),
        scrub_interval: args
            .scrub_interval
            .unwrap_or(ScrubInterval(Some(DEFAULT_SCRUB_INTERVAL)))
            .0,
        scrub_bytes_per_sec: args.scrub_mbps << 20,
        ..StoreConfig::default()
    };
    let data = args.data.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data, config))
        .await
        .context("opening the store")?
        .with_context(|| format!("cannot serve {}", args.data.display()))?;
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
    // One signal stops both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    };
    let metrics_task = match metrics_listener {
        Some(metrics_listener) => {
            let local = metrics_listener
                .local_addr()
                .context("reading the bound metrics address")?;
            // Before the line below, which tells a reader the server is up.
            eprintln!("strata: metrics on http://{local}/metrics");
            Some(tokio::spawn(strata_server::serve_metrics(
                store.clone(),
                server_config.metrics.clone(),
                metrics_listener,
                stopped(),
            )))
        }
        None => None,
    };
    tokio::spawn(async move {
        shutdown_signal(terminate).await;
        stop_tx.send_replace(true);
    });
    // Tests and scripts read this line to learn the port of `--listen :0`.
    eprintln!("strata: listening on {local}");
    strata_server::serve(store, server_config, listener, stopped()).await?;
    if let Some(task) = metrics_task {
        task.await.context("the metrics endpoint failed")?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The socket address `text` names (`127.0.0.1:7171`, `[::]:9090`,
/// `localhost:0`).
async fn resolve(text: &str, what: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(text)
        .await
        .with_context(|| format!("cannot resolve {what} address {text:?}"))?
        .next()
        .with_context(|| format!("{what} address {text:?} resolves to nothing"))
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

/// A size as people write it: `192MiB`, `10G`, `1.5GiB`, `500MB`,
/// `1000000`. K/M/G/T with or without `iB` are powers of 1024; KB/MB/GB/TB
/// powers of 1000.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (expected e.g. 192MiB, 10G, 500MB)"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use B, K, M, G, T, KiB.., or KB..)"
            ));
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

/// `--scrub-interval`: how often a background scrub pass starts; `None`
/// is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScrubInterval(Option<Duration>);

/// A duration as people write it: a whole number and a unit (`s`, `m`,
/// `h`, `d`), e.g. `30s`, `10m`, `24h`; `off` or `0` for none.
fn parse_scrub_interval(text: &str) -> Result<ScrubInterval, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") || t == "0" {
        return Ok(ScrubInterval(None));
    }
    let usage = "expected a whole number and a unit, e.g. 30s, 10m, 24h, 7d; or off";
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration ({usage})"))?;
    let secs_per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        "" => return Err(format!("{text:?} has no unit ({usage})")),
        other => return Err(format!("unknown unit {other:?} in {text:?} ({usage})")),
    };
    if n == 0 {
        return Ok(ScrubInterval(None));
    }
    let secs = n
        .checked_mul(secs_per_unit)
        .filter(|s| *s <= 100 * 365 * 24 * 60 * 60)
        .ok_or_else(|| format!("{text:?} is too long (at most 100 years; or off)"))?;
    Ok(ScrubInterval(Some(Duration::from_secs(secs))))
}

/// `--scrub-mbps`: a whole number of MiB/s, at least 1.
fn parse_scrub_mbps(text: &str) -> Result<u64, String> {
    let n: u64 = text.trim().parse().map_err(|_| {
        format!("{text:?} is not a rate (a whole number of MiB/s, at least 1, e.g. 32)")
    })?;
    if n == 0 {
        return Err(
            "0 MiB/s would never finish a pass: give at least 1 (to turn the background \
             scrub off, use --scrub-interval off)"
                .into(),
        );
    }
    if n > 1 << 20 {
        return Err(format!(
            "{text:?} MiB/s is more than any disk reads (at most 1048576)"
        ));
    }
    Ok(n)
}

async fn shutdown_signal(mut terminate: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ScrubInterval, parse_scrub_interval, parse_scrub_mbps, parse_size};

    #[test]
    fn scrub_intervals_parse_with_units_and_off_and_nonsense_is_refused() {
        let every = |secs| Ok(ScrubInterval(Some(Duration::from_secs(secs))));
        assert_eq!(parse_scrub_interval("30s"), every(30));
        assert_eq!(parse_scrub_interval("10m"), every(600));
        assert_eq!(parse_scrub_interval("24h"), every(86_400));
        assert_eq!(parse_scrub_interval("7d"), every(7 * 86_400));
        for off in ["off", "OFF", "0", "0s", "0h"] {
            assert_eq!(parse_scrub_interval(off), Ok(ScrubInterval(None)), "{off}");
        }
        for bad in [
            "",
            "24",
            "1.5h",
            "-1h",
            "10 parsecs",
            "h",
            "1w",
            "99999999999d",
        ] {
            assert!(parse_scrub_interval(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_scrub_interval("24").unwrap_err().contains("no unit"));
    }

    #[test]
    fn scrub_rates_are_whole_mib_per_second_of_at_least_one() {
        assert_eq!(parse_scrub_mbps("32"), Ok(32));
        assert_eq!(parse_scrub_mbps("1"), Ok(1));
        assert!(
            parse_scrub_mbps("0")
                .unwrap_err()
                .contains("--scrub-interval off")
        );
        for bad in ["", "-1", "2.5", "fast", "99999999999999"] {
            assert!(parse_scrub_mbps(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn sizes_parse_as_people_write_them_and_nonsense_is_refused() {
        assert_eq!(parse_size("192MiB"), Ok(192 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "MiB", "12 parsecs", "1e99G", "-5M", "1..2G"] {
            assert!(parse_size(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
