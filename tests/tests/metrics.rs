//! Observability end to end: `strata serve --metrics-listen` counts what
//! the server did (pushes, pulls, step lookups, per RPC and per client) in
//! Prometheus text that parses; the endpoint refuses what is not a scrape
//! and bounds what a hostile client can hold; `strata top --once` prints
//! the same figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use strata_client::Progress;
use strata_proto::v1::Provenance;
use strata_proto::{Digest, StepResult};
use strata_tests::{ServerProcess, client_with_token, random_bytes, strata, token_file};

/// The address of the metrics endpoint a server logged.
fn metrics_addr(server: &ServerProcess) -> String {
    let log = server.log();
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("strata: metrics on http://"))
        .unwrap_or_else(|| panic!("no metrics line in the log:\n{log}"));
    line.trim().trim_end_matches("/metrics").to_owned()
}

/// Sends `request` as is and reads the whole answer (the server closes).
fn http(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8(answer).unwrap()
}

/// One parsed Prometheus text page.
#[derive(Debug)]
struct Page {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    text: String,
}

impl Page {
    /// Parses a page strictly: every line is a `# HELP`, a `# TYPE` or a
    /// sample `name{label="value",...} value`, and every sample belongs to a
    /// family with both a HELP and a TYPE line.
    fn parse(text: &str) -> Page {
        let mut helps = BTreeSet::new();
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                helps.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                types.insert(name.to_owned(), kind.to_owned());
            } else {
                samples.push(parse_sample(line));
            }
        }
        for (name, _, _) in &samples {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(helps.contains(family), "{name} has no HELP line");
            assert!(types.contains_key(family), "{name} has no TYPE line");
        }
        assert!(samples.len() > 50, "a page of figures:\n{text}");
        Page {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of the one sample `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{name}{labels:?} should be on the page once:\n{}",
            self.text
        );
        found[0]
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} value`, strictly.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("not a sample: {line:?}"));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
            let mut labels = BTreeMap::new();
            for pair in body.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(is_name(k), "bad label name in {line:?}");
                labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
            (name, labels)
        }
    };
    assert!(is_name(name), "bad metric name in {line:?}");
    (name.to_owned(), labels, value)
}

fn scrape(addr: &str) -> Page {
    let answer = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n",
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    Page::parse(body)
}

/// Scrapes until `done` holds (a call is counted once its response body is
/// dropped, a moment after the client has its answer), at most a minute.
fn scrape_until(addr: &str, done: impl Fn(&Page) -> bool) -> Page {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = scrape(addr);
        if done(&page) {
            return page;
        }
        assert!(Instant::now() < deadline, "never came:\n{}", page.text);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn step_result(layer: Digest) -> StepResult {
    StepResult {
        layer: Some(layer),
        config: b"{}".to_vec(),
        provenance: Provenance {
            builder: "metrics test".into(),
            instruction: "RUN true".into(),
            network: "none".into(),
            hermetic: true,
            created_unix: 1_700_000_000,
            ..Default::default()
        },
        seal: None,
    }
}

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_pushes_pulls_and_lookups_by_the_right_amounts() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&server);
    let before = scrape(&addr);
    for name in [
        "strata_request_bytes_total",
        "strata_upload_chunks_received_total",
        "strata_dedup_bytes_total",
        "strata_step_lookups_total",
        "strata_step_hits_total",
        "strata_step_misses_total",
    ] {
        assert_eq!(before.value(name, &[]), 0.0, "{name} starts at 0");
    }

    let client = server.client().await;
    let data = random_bytes(3 << 20, 41);
    let first = client
        .push(Cursor::new(data.clone()), LAYER, &Progress::new())
        .await
        .unwrap();
    let pushed = scrape(&addr);
    let sent_chunks = first.chunks - first.reused_chunks;
    assert_eq!(
        pushed.value("strata_upload_chunks_received_total", &[]),
        sent_chunks as f64
    );
    assert_eq!(
        pushed.value("strata_upload_received_bytes_total", &[]),
        first.sent_bytes as f64
    );
    assert_eq!(
        pushed.value("strata_upload_chunks_stored_total", &[]),
        first.stored_chunks as f64
    );
    assert_eq!(pushed.value("strata_dedup_bytes_total", &[]), 0.0);
    assert!(pushed.value("strata_request_bytes_total", &[]) > first.sent_bytes as f64);
    assert_eq!(
        pushed.value("strata_store_logical_bytes", &[]),
        data.len() as f64
    );

    // The same content again: every chunk is found held, none is sent.
    let second = client
        .push(Cursor::new(data.clone()), LAYER, &Progress::new())
        .await
        .unwrap();
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.sent_bytes, 0);
    let (pulled, _) = client
        .pull(&first.digest, Vec::new(), &Progress::new())
        .await
        .unwrap();

    assert!(
        client
            .record_step(&Digest::of(b"k1"), &step_result(first.digest))
            .await
            .unwrap()
    );
    let found = client
        .lookup_steps(&[
            Digest::of(b"k1"),
            Digest::of(b"miss1"),
            Digest::of(b"miss2"),
        ])
        .await
        .unwrap();
    assert_eq!(found.iter().filter(|f| f.is_some()).count(), 1);

    let lookups_done = |p: &Page| {
        p.value(
            "strata_rpc_duration_seconds_count",
            &[("rpc", "/strata.v1.StepCache/LookupSteps")],
        ) == 1.0
    };
    let after = scrape_until(&addr, lookups_done);
    assert_eq!(
        after.value("strata_upload_chunks_received_total", &[]),
        sent_chunks as f64,
        "the second push sent nothing"
    );
    assert_eq!(
        after.value("strata_dedup_bytes_total", &[]),
        data.len() as f64,
        "every byte of the second push was deduplicated"
    );
    assert_eq!(
        after.value("strata_dedup_chunks_total", &[]),
        sent_chunks as f64
    );
    assert_eq!(after.value("strata_step_lookups_total", &[]), 3.0);
    assert_eq!(after.value("strata_step_hits_total", &[]), 1.0);
    assert_eq!(after.value("strata_step_misses_total", &[]), 2.0);
    assert_eq!(
        after.value(
            "strata_rpc_duration_seconds_count",
            &[("rpc", "/strata.v1.StepCache/RecordStep")]
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "strata_rpc_errors_total",
            &[("rpc", "/strata.v1.StepCache/RecordStep")]
        ),
        0.0
    );
    let get_chunks = after.value(
        "strata_rpc_duration_seconds_count",
        &[("rpc", "/strata.v1.ContentStore/GetChunks")],
    );
    assert!(get_chunks >= 1.0, "the pull fetched chunks");
    assert_eq!(
        after.value(
            "strata_rpc_duration_seconds_bucket",
            &[("rpc", "/strata.v1.ContentStore/GetChunks"), ("le", "+Inf")]
        ),
        get_chunks
    );
    let sent = after.value("strata_response_bytes_total", &[]);
    assert!(
        sent - pushed.value("strata_response_bytes_total", &[]) >= pulled.received_bytes as f64,
        "the pull's chunk bytes were sent"
    );
    // Every byte moved was this test's client's, on loopback.
    assert_eq!(
        after.value("strata_client_sent_bytes_total", &[("client", "127.0.0.1")]),
        sent
    );
    assert!(after.value("strata_client_calls_total", &[("client", "127.0.0.1")]) >= 6.0);
    assert_eq!(
        after.value("strata_client_calls_total", &[("client", "other")]),
        0.0
    );
    // Nothing on the page names a file.
    let data_path = data_dir.path().to_str().unwrap();
    assert!(!after.text.contains(data_path), "{}", after.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_named_by_their_token_and_refused_calls_by_their_address() {
    let data_dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let (tokens, made) = token_file(
        secrets.path(),
        &[("ci-runner", "read,cas-write,result-write,admin")],
    );
    let server = ServerProcess::start(
        data_dir.path(),
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = metrics_addr(&server);
    let ci = client_with_token(&server.url, Some(&made[0])).await;
    ci.push(
        Cursor::new(random_bytes(100_000, 3)),
        LAYER,
        &Progress::new(),
    )
    .await
    .unwrap();
    let stranger = client_with_token(&server.url, None).await;
    assert!(stranger.lookup_steps(&[Digest::of(b"k")]).await.is_err());

    let page = scrape_until(&addr, |p| {
        p.value(
            "strata_rpc_errors_total",
            &[("rpc", "/strata.v1.StepCache/LookupSteps")],
        ) == 1.0
    });
    assert!(
        page.value(
            "strata_client_calls_total",
            &[("client", "token:ci-runner")]
        ) >= 2.0
    );
    assert!(
        page.value(
            "strata_client_received_bytes_total",
            &[("client", "token:ci-runner")]
        ) > 100_000.0
    );
    // Health checks are open (no token is checked), so they count under
    // the address too, beside the refused call.
    let health = page.value(
        "strata_rpc_duration_seconds_count",
        &[("rpc", "/grpc.health.v1.Health/Check")],
    );
    assert_eq!(
        page.value("strata_client_calls_total", &[("client", "127.0.0.1")]),
        health + 1.0,
        "the refused call, under its address"
    );
    assert_eq!(page.value("strata_step_lookups_total", &[]), 0.0);
    assert!(!page.text.contains(&made[0]), "a token on the metrics page");
    assert!(
        !page.text.contains(tokens.to_str().unwrap()),
        "a path on the page"
    );
}

#[test]
fn the_metrics_endpoint_refuses_what_is_not_a_scrape() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&server);
    let status = |request: &[u8]| {
        let answer = http(&addr, request);
        answer.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(
        status(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert!(http(&addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").contains("\r\nAllow: GET, HEAD\r\n"));
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
    assert_eq!(
        status(b"GET /metricsz HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        "HTTP/1.1 400 Bad Request",
        "a TLS hello is not a request"
    );
    let mut long_line = b"GET /".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 64 << 10));
    long_line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    assert_eq!(
        status(&long_line),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    let head = http(&addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");

    // The gRPC port serves no metrics, whatever the path.
    let grpc = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(grpc).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("strata_"),
        "the gRPC port answered with figures"
    );
}

#[test]
fn silent_and_slow_clients_are_cut_and_scrapes_past_the_cap_still_get_their_answer() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&server);
    // More connections than the endpoint serves at once, each sending a
    // request a byte at a time that never ends (slowloris) or nothing.
    let mut holders: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = TcpStream::connect(&addr).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /metr").unwrap();
            }
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    // A real scrape waits for a slot, and gets one once the holders are cut.
    let page = scrape(&addr);
    assert!(page.value("strata_uptime_seconds", &[]) > 0.0);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(50),
        "the scrape waited {waited:?}"
    );
    // The first sixteen held the slots: each got a 408 and was closed.
    let mut timed_out = 0;
    for s in holders.iter_mut().take(16) {
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 408 Request Timeout\r\n") {
            timed_out += 1;
        }
    }
    assert_eq!(
        timed_out, 16,
        "the holders served first were cut for their silence"
    );
}

#[test]
fn top_once_prints_the_figures_of_a_server() {
    let data_dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data_dir.path(), &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = server.client().await;
        let data = random_bytes(1 << 20, 5);
        for _ in 0..2 {
            client
                .push(Cursor::new(data.clone()), LAYER, &Progress::new())
                .await
                .unwrap();
        }
        client
            .lookup_steps(&[Digest::of(b"a"), Digest::of(b"b")])
            .await
            .unwrap();
    });
    let out = strata(cache.path())
        .args([
            "top",
            "--once",
            "--interval",
            "0.2",
            "--server",
            &server.url,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        server.url.as_str(),
        "calls/s",
        "dedup ratio   1.00x",
        "deduplicated (1.0 MiB) since start",
        "step lookups  hit rate",
        "0.0% since start (0 hits, 2 misses of 2)",
        "busiest clients",
        "127.0.0.1",
        "scrub",
        "gc",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }

    let no_server = strata(cache.path())
        .args(["top", "--once"])
        .output()
        .unwrap();
    assert!(!no_server.status.success());
    let stderr = String::from_utf8(no_server.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--server"), "{stderr}");
}
