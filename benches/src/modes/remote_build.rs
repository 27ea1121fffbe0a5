//! `strata bench remote-build`: a fully cached build from a laptop far from
//! the shared cache. The test image (busybox, 8 steps, 3 RUNs) is built
//! once; then each repeat builds it again as a fresh client (no local
//! state) with an OCI output, through a [`DelayProxy`] that adds a round
//! trip time, and through the same proxy with none — the baseline, in the
//! same run. The difference over the round trip time is how many round
//! trips the build waits for one after another: what a WAN costs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::delay::{DelayProxy, Traffic};
use crate::run::BenchContext;
use crate::stats::Spread;

/// Debian's busybox-static: the test image's only file of substance.
const BUSYBOX: &str = "/bin/busybox";

/// The test image of `tests/tests/build.rs` and `scripts/bench-build`.
const DOCKERFILE: &str = r#"FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV GREETING=hello TARGET=world
WORKDIR /app
COPY data.txt ./
RUN echo "$GREETING $TARGET" > greeting.txt && cat data.txt > copy.txt
RUN mkdir -p /etc && echo built > /etc/built && rm /bin/vi
CMD ["/bin/sh", "-c", "cat /app/greeting.txt"]
"#;

#[derive(Clone, Debug)]
pub struct RemoteBuildOptions {
    /// The round trip time the proxy adds.
    pub rtt: Duration,
    pub repeats: usize,
}

/// One link: seconds of a fully cached build and what crossed the proxy.
#[derive(Serialize, Clone, Debug)]
pub struct LinkRow {
    pub rtt_ms: f64,
    pub seconds: Spread,
    /// Bytes from the server per build (median of the repeats).
    pub bytes_from_server: u64,
    pub bytes_to_server: u64,
    /// TCP connections a build opened.
    pub connections: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct RemoteBuildReport {
    pub steps: usize,
    /// The baseline (no delay) and the delayed link.
    pub links: Vec<LinkRow>,
    /// (median at the round trip time − median without) / round trip time.
    pub round_trips: f64,
}

/// Runs the bench: builds once to fill the cache, then times fully cached
/// builds from fresh clients over both links, interleaved.
pub async fn run(
    ctx: &BenchContext,
    opts: &RemoteBuildOptions,
) -> Result<(RemoteBuildReport, Vec<String>)> {
    ensure!(opts.repeats > 0, "--repeats must be at least 1");
    ensure!(!opts.rtt.is_zero(), "--rtt must be above 0");
    let exe = std::env::current_exe()?;
    ensure!(
        exe.file_name().is_some_and(|n| n == "strata"),
        "remote-build runs `strata build` itself, so only the strata binary can run it (not {})",
        exe.display()
    );
    ensure!(
        Path::new(BUSYBOX).exists(),
        "remote-build builds an image around a static busybox at {BUSYBOX}: apt-get install busybox-static"
    );
    let work = tempfile::Builder::new()
        .prefix("strata-bench-remote-")
        .tempdir()?;
    let context_dir = work.path().join("context");
    std::fs::create_dir(&context_dir)?;
    std::fs::copy(BUSYBOX, context_dir.join("busybox"))?;
    std::fs::write(context_dir.join("data.txt"), "data v1\n")?;
    std::fs::write(context_dir.join("Dockerfile"), DOCKERFILE)?;

    let server = ctx.start_server().await?;
    let upstream = upstream_addr(&server.url).await?;
    let key = work.path().join("signing-key");
    let made = Command::new(&exe)
        .arg("key")
        .arg("new")
        .arg(&key)
        .output()?;
    ensure!(
        made.status.success(),
        "strata key new failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    ctx.say("building the test image once, to fill the cache");
    let builder = Builder {
        exe: exe.clone(),
        context: context_dir,
        key,
        work: work.path().to_path_buf(),
    };
    let first = builder.build(&server.url, "fill")?;
    let steps = first.steps;

    let baseline = DelayProxy::start(upstream, Duration::ZERO).await?;
    let delayed = DelayProxy::start(upstream, opts.rtt).await?;
    let mut times = [Vec::new(), Vec::new()];
    let mut traffic = [Vec::new(), Vec::new()];
    for repeat in 0..opts.repeats {
        if ctx.out_of_time() {
            break;
        }
        for (i, proxy) in [&baseline, &delayed].into_iter().enumerate() {
            let before = proxy.traffic();
            let url = format!("http://{}", proxy.addr());
            let start = Instant::now();
            let built = builder.build(&url, &format!("{i}-{repeat}"))?;
            let took = start.elapsed();
            if built.executed > 0 {
                bail!(
                    "a rebuild ran {} of {} steps: the cache did not hold the image",
                    built.executed,
                    built.steps
                );
            }
            times[i].push(took);
            traffic[i].push(proxy.traffic().since(before));
            ctx.say(format!(
                "cached build, rtt {:?}: {:.3} s",
                if i == 0 { Duration::ZERO } else { opts.rtt },
                took.as_secs_f64()
            ));
        }
    }
    ensure!(
        !times[0].is_empty(),
        "the time budget ran out before one build"
    );
    let rtt_ms = [0.0, opts.rtt.as_secs_f64() * 1e3];
    let links: Vec<LinkRow> = (0..2)
        .map(|i| link_row(rtt_ms[i], &times[i], &traffic[i]))
        .collect();
    let round_trips = (links[1].seconds.median - links[0].seconds.median) / opts.rtt.as_secs_f64();
    let notes = vec![format!(
        "each build is a fresh client (no local cache, no state) writing an OCI layout; \
         round trips = (median at {:.0} ms - median at 0 ms) / {:.0} ms",
        rtt_ms[1], rtt_ms[1]
    )];
    Ok((
        RemoteBuildReport {
            steps,
            links,
            round_trips,
        },
        notes,
    ))
}

fn link_row(rtt_ms: f64, seconds: &[Duration], traffic: &[Traffic]) -> LinkRow {
    let median = |f: fn(&Traffic) -> u64| -> u64 {
        let mut v: Vec<u64> = traffic.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    LinkRow {
        rtt_ms,
        seconds: Spread::of(seconds),
        bytes_from_server: median(|t| t.bytes_to_client),
        bytes_to_server: median(|t| t.bytes_to_server),
        connections: median(|t| t.connections),
    }
}

/// Where the server's URL points, for the proxy to connect to.
async fn upstream_addr(url: &str) -> Result<SocketAddr> {
    let hostport = url
        .strip_prefix("http://")
        .context("remote-build needs a plain http:// server (the proxy does not speak TLS)")?
        .trim_end_matches('/');
    tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} has no address"))
}

/// Runs `strata build` as a fresh client each time.
struct Builder {
    exe: PathBuf,
    context: PathBuf,
    key: PathBuf,
    work: PathBuf,
}

/// What one build reported.
struct Built {
    steps: usize,
    executed: usize,
}

impl Builder {
    fn build(&self, server: &str, name: &str) -> Result<Built> {
        let home = self.work.join(format!("client-{name}"));
        let out = home.join("image");
        std::fs::create_dir_all(&home)?;
        let output = Command::new(&self.exe)
            .arg("build")
            .arg("--server")
            .arg(server)
            .arg("--signing-key")
            .arg(&self.key)
            .arg("--json")
            .arg("--output")
            .arg(format!("oci:{}", out.display()))
            .arg(&self.context)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env_remove("STRATA_CACHE_DIR")
            .env_remove("STRATA_SERVER")
            .env_remove("STRATA_TRUST")
            .env_remove("STRATA_SIGNING_KEY")
            .output()
            .context("running strata build")?;
        ensure!(
            output.status.success(),
            "strata build failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("strata build --json printed no JSON")?;
        let steps = report["steps"]
            .as_array()
            .context("no steps in the report")?;
        let executed = steps
            .iter()
            .filter(|s| s["status"].as_str() != Some("cached"))
            .count();
        let _ = std::fs::remove_dir_all(&home);
        Ok(Built {
            steps: steps.len(),
            executed,
        })
    }
}

pub fn print_table(r: &RemoteBuildReport) {
    println!(
        "fully cached build of the test image ({} steps), fresh client, OCI output",
        r.steps
    );
    println!(
        "{:>8}  {:>24}  {:>12}  {:>10}  {:>11}",
        "rtt ms", "seconds (min med max)", "from server", "to server", "connections"
    );
    for l in &r.links {
        println!(
            "{:>8.0}  {:>24}  {:>12}  {:>10}  {:>11}",
            l.rtt_ms,
            format!(
                "{:.3} {:.3} {:.3}",
                l.seconds.min, l.seconds.median, l.seconds.max
            ),
            l.bytes_from_server,
            l.bytes_to_server,
            l.connections
        );
    }
    println!(
        "round trips waited for, one after another: {:.1}",
        r.round_trips
    );
}
