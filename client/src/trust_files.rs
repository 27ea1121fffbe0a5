//! The files a client's trust policy comes from: a signing key (one secret
//! seed, made on first use, never replaced) and a trust list (one
//! `ed25519:…` public key per line, optionally followed by a name; `#`
//! starts a comment).
//!
//! Key file format, text:
//!
//! ```text
//! # strata signing key: keep it secret. Its public key, for others' trust lists:
//! # ed25519:…
//! ed25519-seed:BASE64 OF THE 32-BYTE SEED
//! ```

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use strata_proto::{PublicKey, SigningKey};

/// The line of a key file that holds the secret seed.
const SEED_PREFIX: &str = "ed25519-seed:";

/// Why a key file or trust list could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a strata signing key (no `{SEED_PREFIX}` line; make one with \
         `strata key new FILE`)"
    )]
    NotAKey { path: String },
    #[error("signing key {path}: {why}")]
    BadKey { path: String, why: String },
    #[error("trust list {path}, line {line}: {why}")]
    BadTrustLine {
        path: String,
        line: usize,
        why: String,
    },
}

impl TrustFileError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| TrustFileError::Io { what, path, source }
    }

    /// Whether the file is simply not there.
    pub fn is_missing(&self) -> bool {
        matches!(self, TrustFileError::Io { source, .. } if source.kind() == ErrorKind::NotFound)
    }

    fn is_taken(&self) -> bool {
        matches!(self, TrustFileError::Io { source, .. } if source.kind() == ErrorKind::AlreadyExists)
    }
}

/// Reads a key file.
pub fn read_key(path: &Path) -> Result<SigningKey, TrustFileError> {
    let text = fs::read_to_string(path).map_err(TrustFileError::io("reading signing key", path))?;
    let bad = |why: String| TrustFileError::BadKey {
        path: path.display().to_string(),
        why,
    };
    let seed = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(SEED_PREFIX))
        .ok_or_else(|| TrustFileError::NotAKey {
            path: path.display().to_string(),
        })?;
    let seed = STANDARD
        .decode(seed)
        .map_err(|_| bad("the seed is not base64".into()))?;
    SigningKey::from_seed(&seed).map_err(|e| bad(e.to_string()))
}

/// The key at `path`, made there first if there is none. Says whether it
/// was made now.
pub fn load_or_create_key(path: &Path) -> Result<(SigningKey, bool), TrustFileError> {
    match read_key(path) {
        Ok(key) => return Ok((key, false)),
        Err(e) if e.is_missing() => {}
        Err(e) => return Err(e),
    }
    match create_key(path) {
        Ok(key) => Ok((key, true)),
        // Another process made it first: theirs is the key.
        Err(e) if e.is_taken() => Ok((read_key(path)?, false)),
        Err(e) => Err(e),
    }
}

/// Makes a new key file at `path` (0600; its directory 0700 if made now),
/// refusing to replace one. The file appears whole or not at all.
pub fn create_key(path: &Path) -> Result<SigningKey, TrustFileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(TrustFileError::io("making directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(TrustFileError::io("making private", dir))?;
    }
    let mut seed = [0u8; strata_proto::signing::SEED_BYTES];
    getrandom::fill(&mut seed).map_err(|e| TrustFileError::Io {
        what: "drawing a key from the OS random source for",
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let key = SigningKey::from_seed(&seed).map_err(|e| TrustFileError::BadKey {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    let text = format!(
        "# strata signing key: keep it secret. Its public key, for others' trust lists:\n\
         # {}\n{SEED_PREFIX}{}\n",
        key.public_key(),
        STANDARD.encode(seed)
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(".signing-key-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(TrustFileError::io("making a key file in", dir))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(TrustFileError::io("writing a key file in", dir))?;
    // A hard link never replaces an existing file.
    fs::hard_link(tmp.path(), path).map_err(TrustFileError::io("placing the new key at", path))?;
    Ok(key)
}

/// One line of a trust list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustEntry {
    pub key: PublicKey,
    pub name: String,
}

/// Reads a trust list; a line that is not a key is an error naming it.
pub fn read_trust_list(path: &Path) -> Result<Vec<TrustEntry>, TrustFileError> {
    let text = fs::read_to_string(path).map_err(TrustFileError::io("reading trust list", path))?;
    parse_trust_list(&text).map_err(|(line, why)| TrustFileError::BadTrustLine {
        path: path.display().to_string(),
        line,
        why,
    })
}

/// The entries of a trust list's text, or the first bad line (1-based) and
/// what is wrong with it.
pub fn parse_trust_list(text: &str) -> Result<Vec<TrustEntry>, (usize, String)> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let key = key
            .parse::<PublicKey>()
            .map_err(|e| (n + 1, e.to_string()))?;
        entries.push(TrustEntry {
            key,
            name: name.trim().to_string(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_is_made_once_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/strata/signing-key");
        let (made, new) = load_or_create_key(&path).unwrap();
        assert!(new);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let (again, new) = load_or_create_key(&path).unwrap();
        assert!(!new);
        assert_eq!(again.public_key(), made.public_key());
        assert!(create_key(&path).is_err(), "a key file is never replaced");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&made.public_key().to_string()));
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        fs::write(&path, "hello\n").unwrap();
        let e = read_key(&path).unwrap_err().to_string();
        assert!(e.contains("is not a strata signing key"), "{e}");
        fs::write(&path, "ed25519-seed:AAAA\n").unwrap();
        let e = read_key(&path).unwrap_err().to_string();
        assert!(e.contains("seed is 32 bytes"), "{e}");
    }

    #[test]
    fn trust_lists_parse_names_and_comments_and_name_a_bad_line() {
        let a = SigningKey::from_seed(&[1; 32]).unwrap().public_key();
        let b = SigningKey::from_seed(&[2; 32]).unwrap().public_key();
        let text = format!("# team\n{a} ci fleet\n\n  {b}   # laptop\n");
        let entries = parse_trust_list(&text).unwrap();
        assert_eq!(
            entries,
            vec![
                TrustEntry {
                    key: a,
                    name: "ci fleet".into()
                },
                TrustEntry {
                    key: b,
                    name: String::new()
                }
            ]
        );
        let (line, why) = parse_trust_list(&format!("{a}\nssh-rsa AAAA\n")).unwrap_err();
        assert_eq!(line, 2);
        assert!(why.contains("not a public key"), "{why}");
    }
}
