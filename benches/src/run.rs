//! What every bench mode shares: the server choice, client settings, the
//! time budget, progress on stderr, and the JSON document around results.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;
use strata_client::{Client, ClientConfig, Progress, PushReport};

use crate::server::{BenchServer, ServerChoice};

/// Settings and budget of one `strata bench` run.
#[derive(Clone, Debug)]
pub struct BenchContext {
    pub server: ServerChoice,
    pub client: ClientConfig,
    pub deadline: Instant,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl BenchContext {
    pub fn new(server: ServerChoice, client: ClientConfig, budget: Duration) -> Self {
        BenchContext {
            server,
            client,
            deadline: Instant::now() + budget,
            progress: true,
        }
    }

    /// Whether the time budget is spent: modes stop starting new work then
    /// and say so in their notes.
    pub fn out_of_time(&self) -> bool {
        Instant::now() >= self.deadline
    }

    pub fn say(&self, message: impl AsRef<str>) {
        if self.progress {
            eprintln!("bench: {}", message.as_ref());
        }
    }

    pub async fn start_server(&self) -> Result<BenchServer> {
        BenchServer::start(&self.server).await
    }

    pub fn server_label(&self) -> String {
        match &self.server {
            ServerChoice::Remote(url) => url.clone(),
            ServerChoice::Local { fsync } => {
                format!("local loopback server, fsync {fsync:?}").to_lowercase()
            }
        }
    }
}

/// The one JSON document a mode prints with `--json`.
#[derive(Serialize)]
pub struct Document<T: Serialize> {
    pub tool: &'static str,
    pub version: &'static str,
    pub mode: &'static str,
    pub server: String,
    pub chunk_kib: u32,
    pub zstd_level: i32,
    pub cores: usize,
    pub results: T,
    /// Anything the reader must know: a budget cut, data that was not new.
    pub notes: Vec<String>,
}

impl<T: Serialize> Document<T> {
    pub fn new(ctx: &BenchContext, mode: &'static str, results: T, notes: Vec<String>) -> Self {
        Document {
            tool: "strata bench",
            version: env!("CARGO_PKG_VERSION"),
            mode,
            server: ctx.server_label(),
            chunk_kib: ctx.client.chunking.avg_size / 1024,
            zstd_level: ctx.client.zstd_level,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            results,
            notes,
        }
    }

    pub fn print_json(&self) -> Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, self)?;
        writeln!(out)?;
        Ok(())
    }
}

/// Pushes the file at `path` and returns the report and the wall time.
pub async fn timed_push(client: &Client, path: &Path) -> Result<(PushReport, Duration)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let start = Instant::now();
    let report = client
        .push_file(
            file,
            "application/vnd.oci.image.layer.v1.tar",
            &Progress::new(),
        )
        .await?;
    Ok((report, start.elapsed()))
}

/// Writes `bytes` to `path`, each byte XORed with `salt`. A salt of 0
/// writes them as they are; any other salt gives data of the same size,
/// structure and compressibility (XOR with a constant maps byte values
/// one-to-one) that no server holds yet — how "new data" stays new against
/// a server the bench cannot empty.
pub fn write_salted(path: &Path, bytes: &[u8], salt: u8) -> Result<()> {
    let write = |data: &[u8]| {
        std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
    };
    if salt == 0 {
        return write(bytes);
    }
    let salted: Vec<u8> = bytes.iter().map(|b| b ^ salt).collect();
    write(&salted)
}

/// A salt no earlier run is likely to have used against the same server.
pub fn fresh_salt(attempt: u64) -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos).wrapping_add(attempt * 97) % 255) as u8 + 1
}

/// Parses sizes like `1GiB`, `256MiB`, `64M`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1GiB, 256MiB, 4096)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("{text:?} is too large"))
}

pub use strata_client::human_bytes as human;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("12 parsecs").unwrap_err().contains("unit"));
        assert!(
            parse_size("99999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn salting_keeps_size_and_changes_every_byte() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("x");
        write_salted(&path, b"hello", 0x20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read(&path).unwrap_or_default(), b"HELLO");
        assert!((1..=255).contains(&fresh_salt(3)));
    }
}
