//! The image's time: the `created` of its config and of its steps' history
//! entries. Reproducible, so the same sources give the same image digest,
//! and not 1970 unless asked for:
//!
//! 1. `SOURCE_DATE_EPOCH`, when set (the reproducible-builds convention);
//! 2. else, when the build context is in a git repository, the time of its
//!    last commit (`git log -1 --format=%ct`): the same on every checkout
//!    of that commit;
//! 3. else the Dockerfile's modification time: the same for every build
//!    until the Dockerfile is edited (a copy that keeps mtimes keeps it).
//!
//! Layer entries' mtimes are not affected: they stay `SOURCE_DATE_EPOCH`,
//! or 0 without it, so a layer's digest never depends on when a commit was
//! made.

use std::path::Path;
use std::process::{Command, Stdio};

/// Where the image's time came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreatedFrom {
    SourceDateEpoch,
    GitCommit,
    DockerfileMtime,
}

/// The image's `created` time in seconds since the epoch, and where it
/// came from. `source_date_epoch` is the variable's value, if set; one
/// that is not a number of seconds is an error.
pub fn image_created(
    source_date_epoch: Option<&str>,
    context: &Path,
    dockerfile: &Path,
) -> Result<(u64, CreatedFrom), String> {
    if let Some(value) = source_date_epoch {
        let seconds = value.trim().parse::<u64>().map_err(|_| {
            format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970")
        })?;
        return Ok((seconds, CreatedFrom::SourceDateEpoch));
    }
    if let Some(seconds) = last_commit_time(context) {
        return Ok((seconds, CreatedFrom::GitCommit));
    }
    let modified = std::fs::metadata(dockerfile)
        .and_then(|m| m.modified())
        .map_err(|e| format!("reading the time of {}: {e}", dockerfile.display()))?;
    let seconds = modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok((seconds, CreatedFrom::DockerfileMtime))
}

/// The commit time of `HEAD` of the git repository `dir` is in, if it is
/// in one with a commit and `git` is installed.
fn last_commit_time(dir: &Path) -> Option<u64> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["log", "-1", "--format=%ct"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn source_date_epoch_wins_and_must_be_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("Dockerfile");
        std::fs::write(&df, "FROM scratch\n").unwrap();
        assert_eq!(
            image_created(Some("1700000000"), dir.path(), &df).unwrap(),
            (1_700_000_000, CreatedFrom::SourceDateEpoch)
        );
        let err = image_created(Some("yesterday"), dir.path(), &df).unwrap_err();
        assert!(err.contains("SOURCE_DATE_EPOCH"), "{err}");
        assert!(image_created(Some("-5"), dir.path(), &df).is_err());
    }

    #[test]
    fn outside_git_the_dockerfile_time_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("Dockerfile");
        std::fs::write(&df, "FROM scratch\n").unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        std::fs::File::options()
            .write(true)
            .open(&df)
            .unwrap()
            .set_modified(when)
            .unwrap();
        assert_eq!(
            image_created(None, dir.path(), &df).unwrap(),
            (1_600_000_000, CreatedFrom::DockerfileMtime)
        );
    }
}
