//! The baselines: the same bytes through `b3sum`, `zstd -1 -T0` and
//! `zstd -d`, timed in the same run as Strata, installed if missing; and
//! peak memory of a child command (GNU `time`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The command-line tools the baselines need, with their Debian packages.
const BASELINE_TOOLS: &[(&str, &str)] = &[("b3sum", "b3sum"), ("zstd", "zstd"), (GNU_TIME, "time")];

/// GNU `time`, not the shell keyword: it reports a child's peak RSS.
const GNU_TIME: &str = "/usr/bin/time";

fn on_path(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the baseline tools with apt-get when they are missing (as root,
/// or through passwordless sudo); fails saying what to install otherwise.
pub fn ensure_baseline_tools() -> Result<()> {
    let missing: Vec<&str> = BASELINE_TOOLS
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing baseline tools: {}", missing.join(" "));
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let apt = |args: &[&str]| {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed =
        apt(&["update", "-qq"]) && apt(&[&["install", "-y", "-qq"][..], &missing].concat());
    if !installed || BASELINE_TOOLS.iter().any(|(cmd, _)| !on_path(cmd)) {
        bail!(
            "the baselines need {}; install them (apt-get install {}) and run again",
            missing.join(", "),
            missing.join(" ")
        );
    }
    Ok(())
}

/// Wall time of `program args...` with stdout discarded; fails on a
/// non-zero exit.
pub fn time_command(program: &str, args: &[&str]) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("baseline `{program} {}` failed: {status}", args.join(" "));
    }
    Ok(elapsed)
}

/// Peak resident memory (bytes) of `program args...` as GNU `time`
/// reports it, and the command's stdout; fails on a non-zero exit.
pub fn peak_rss_of(program: &Path, args: &[&str]) -> Result<(u64, String)> {
    let output = Command::new(GNU_TIME)
        .args(["-f", "strata-bench-peak-rss-kib %M"])
        .arg(program)
        .args(args)
        .output()
        .with_context(|| format!("running {GNU_TIME} {}", program.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            output.status,
            stderr.trim()
        );
    }
    let kib: u64 = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("strata-bench-peak-rss-kib "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{GNU_TIME} printed no peak RSS: {}", stderr.trim()))?;
    Ok((
        kib * 1024,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

/// The three baselines over one input file.
pub struct Baselines<'a> {
    pub input: &'a Path,
    pub compressed: &'a Path,
}

impl Baselines<'_> {
    /// Writes the zstd-compressed copy that `zstd -d` reads.
    pub fn prepare(&self) -> Result<()> {
        let status = Command::new("zstd")
            .args(["-q", "-f", "-1", "-T0", "-o"])
            .arg(self.compressed)
            .arg(self.input)
            .status()
            .context("running zstd")?;
        if !status.success() {
            bail!("zstd could not compress {}", self.input.display());
        }
        Ok(())
    }

    pub fn b3sum(&self) -> Result<Duration> {
        time_command("b3sum", &[&self.input.to_string_lossy()])
    }

    pub fn zstd_compress(&self) -> Result<Duration> {
        time_command(
            "zstd",
            &["-q", "-1", "-T0", "-c", &self.input.to_string_lossy()],
        )
    }

    /// `zstd -d` into a file, as a pull to a file writes one.
    pub fn zstd_decompress_to(&self, output: &Path) -> Result<Duration> {
        time_command(
            "zstd",
            &[
                "-q",
                "-d",
                "-f",
                "-o",
                &output.to_string_lossy(),
                &self.compressed.to_string_lossy(),
            ],
        )
    }

    pub fn zstd_decompress(&self) -> Result<Duration> {
        time_command(
            "zstd",
            &["-q", "-d", "-c", &self.compressed.to_string_lossy()],
        )
    }
}
