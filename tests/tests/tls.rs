//! TLS end to end, with a CA and server certificate generated at test
//! time: an https push and pull, a server whose certificate does not chain
//! to the client's CA refused, plain HTTP against TLS (and the reverse)
//! failing fast and saying so, and a client that opens TCP but never says
//! hello cut at the handshake deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::time::Duration;

use strata_client::{BearerToken, Client, ClientConfig, ClientError, Progress};
use strata_server::ServerConfig;
use strata_tests::{ServerProcess, TestCertificates, TestServer, random_bytes, strata, token_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any refused connection may take to fail: far above a
/// loopback handshake, far below "hangs".
const FAIL_FAST: Duration = Duration::from_secs(20);

fn https(url: &str) -> String {
    url.replacen("http://", "https://", 1)
}

async fn tls_server(dir: &std::path::Path, certs: &TestCertificates) -> TestServer {
    TestServer::start_with(
        dir,
        ServerConfig {
            tls: Some(certs.server_tls()),
            handshake_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        },
    )
    .await
}

fn trusting(certs: &TestCertificates) -> ClientConfig {
    ClientConfig {
        tls_ca: Some(certs.ca.clone()),
        ..ClientConfig::default()
    }
}

async fn connect_quickly(url: &str, config: ClientConfig) -> Result<Client, ClientError> {
    tokio::time::timeout(FAIL_FAST, Client::connect(url, config))
        .await
        .expect("connecting must fail or succeed promptly, never hang")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_push_and_pull_round_trip_verified_against_the_test_ca() {
    let certs = TestCertificates::generate("strata test CA");
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(dir.path(), &certs).await;
    let client = connect_quickly(&https(&server.url), trusting(&certs))
        .await
        .unwrap();
    let bytes = random_bytes(3 << 20, 11);
    let pushed = client
        .push(Cursor::new(bytes.clone()), "x", &Progress::new())
        .await
        .unwrap();
    let out = client.pull_to_vec(&pushed.digest).await.unwrap();
    assert_eq!(out, bytes);
    // By name as well as by address: the certificate holds both.
    let by_name = https(&server.url).replace("127.0.0.1", "localhost");
    let client = connect_quickly(&by_name, trusting(&certs)).await.unwrap();
    assert_eq!(client.stat(&pushed.digest).await.unwrap(), Some(3 << 20));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let certs = TestCertificates::generate("strata test CA");
    let other = TestCertificates::generate("someone else's CA");
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(dir.path(), &certs).await;
    let e = connect_quickly(&https(&server.url), trusting(&other))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{text}");
    assert!(
        text.contains("certificate") && text.contains("UnknownIssuer"),
        "says the certificate is not trusted: {text}"
    );
    // Nor do the system's roots trust a private CA.
    let e = connect_quickly(&https(&server.url), ClientConfig::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_server_and_tls_to_a_plain_server_fail_fast_and_say_why() {
    let certs = TestCertificates::generate("strata test CA");
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_server(&dir.path().join("tls"), &certs).await;
    let e = connect_quickly(&tls.url, ClientConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("https://"), "hints at TLS: {e}");

    let plain = TestServer::start(&dir.path().join("plain")).await;
    let e = connect_quickly(&https(&plain.url), trusting(&certs))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().contains("http://"),
        "hints at plain HTTP: {e}"
    );

    // A CA for a plain URL is a mistake worth saying.
    let e = connect_quickly(&plain.url, trusting(&certs))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Config(_)), "{e}");
    tls.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_the_tls_handshake_is_cut_at_the_handshake_deadline() {
    let certs = TestCertificates::generate("strata test CA");
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(dir.path(), &certs).await;
    let addr = server.url.trim_start_matches("http://").to_owned();

    // Silent: TCP open, no ClientHello.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Half a hello: a TLS handshake record header promising more.
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    for (what, stream) in [("silent", &mut silent), ("half a hello", &mut half)] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(FAIL_FAST, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "{what}: the server closes the connection at its 1 s handshake deadline"
        );
    }
    // The server still serves others.
    let client = connect_quickly(&https(&server.url), trusting(&certs))
        .await
        .unwrap();
    client.stat(&strata_proto::Digest::of(b"x")).await.unwrap();
    server.stop().await;
}

#[test]
fn the_cli_serves_and_pushes_over_tls_with_a_token() {
    let certs = TestCertificates::generate("strata test CA");
    let dir = tempfile::tempdir().unwrap();
    let (file, tokens) = token_file(dir.path(), &[("ci", "read,cas-write")]);
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            "--tokens",
            file.to_str().unwrap(),
            "--tls-cert",
            certs.cert.to_str().unwrap(),
            "--tls-key",
            certs.key.to_str().unwrap(),
        ],
    );
    let url = https(&server.url);
    let input = dir.path().join("input");
    let bytes = random_bytes(500_000, 5);
    std::fs::write(&input, &bytes).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = strata(cache.path())
        .args(["push", "--server", &url, "--tls-ca"])
        .arg(&certs.ca)
        .arg(&input)
        .env("STRATA_TOKEN", &tokens[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let pulled = dir.path().join("pulled");
    let out = strata(cache.path())
        .args(["pull", &digest, "--server", &url, "-o"])
        .arg(&pulled)
        .env("STRATA_TLS_CA", &certs.ca)
        .env("STRATA_TOKEN", &tokens[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&pulled).unwrap(), bytes);
    // A token that is not visible ASCII is refused before any connection.
    assert!(BearerToken::new("tok\u{e9}n").is_err());
    server.stop();
}
