//! `ADD <url>` sources: a file fetched over HTTP(S) into a path, its SHA-256
//! checked against the checksum the Dockerfile pins as the bytes arrive, and
//! renamed into place only once they match — so the path never holds bytes
//! the Dockerfile did not ask for, and a server that sends too much is cut
//! off at the limit.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::client::error_chain;
use crate::digest::BlobDigest;

/// Redirects followed before giving up (as curl's default of 50 is
/// generous; real download links take one or two).
const MAX_REDIRECTS: usize = 10;

/// Why a URL could not be fetched; each names the URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("cannot fetch {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {limit} bytes; refused")]
    TooLarge { url: String, limit: u64 },
    #[error("{url} is not what --checksum pins: expected {expected}, got {actual}")]
    ChecksumMismatch {
        url: String,
        expected: BlobDigest,
        actual: BlobDigest,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Fetches `url` into `path` if its bytes hash to `expected` (at most
/// `max_bytes` of them), returning their number.
pub async fn fetch_url_to_file(
    url: &str,
    expected: &BlobDigest,
    path: &Path,
    max_bytes: u64,
) -> Result<u64, UrlError> {
    crate::client::install_crypto_provider();
    let unreachable = |reason: String| UrlError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| unreachable(error_chain(&e)))?;
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(UrlError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let write_error = |source: std::io::Error| UrlError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
    let mut file = tokio::fs::File::from_std(temp.as_file().try_clone().map_err(write_error)?);
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| unreachable(error_chain(&e)))?;
        received += piece.len() as u64;
        if received > max_bytes {
            return Err(UrlError::TooLarge {
                url: url.to_owned(),
                limit: max_bytes,
            });
        }
        hasher.update(&piece);
        file.write_all(&piece).await.map_err(write_error)?;
    }
    file.flush().await.map_err(write_error)?;
    drop(file);
    let actual = BlobDigest::from_hasher(hasher);
    if actual != *expected {
        return Err(UrlError::ChecksumMismatch {
            url: url.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    temp.persist(path).map_err(|e| write_error(e.error))?;
    Ok(received)
}
