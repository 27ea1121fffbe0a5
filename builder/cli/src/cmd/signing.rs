//! The user's signing key and trust list, and the commands that show and
//! edit them: `strata key show|new`, `strata trust add|remove|list`.
//!
//! One key per user (or per fleet of builders sharing a mounted secret),
//! made on first use under `$XDG_CONFIG_HOME/strata/signing-key` with no
//! setup; its public key goes to others' trust lists. The trust list is a
//! text file, `$XDG_CONFIG_HOME/strata/trust`: one `ed25519:…` key per line,
//! optionally followed by a name; `#` starts a comment. The user's own key
//! is always trusted first (DESIGN.md, Trust). The file formats live in
//! `strata_client::trust_files`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use strata_client::TrustPolicy;
use strata_client::trust_files::{create_key, load_or_create_key, read_key, read_trust_list};
use strata_proto::PublicKey;

/// Where the key and the trust list come from, for commands that record
/// or use cache entries.
#[derive(Args, Clone)]
pub struct TrustArgs {
    /// The key step results and tags are signed with (default:
    /// $XDG_CONFIG_HOME/strata/signing-key, made on first use). Builders
    /// that should share cache hits share one key, e.g. mounted from a
    /// Kubernetes secret; make one with `strata key new FILE`.
    #[arg(long, value_name = "FILE", env = "STRATA_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// The trust list: whose step results and tags to use besides your own
    /// (default: $XDG_CONFIG_HOME/strata/trust; edit with `strata trust`).
    #[arg(long, value_name = "FILE", env = "STRATA_TRUST")]
    pub trust: Option<PathBuf>,
}

impl TrustArgs {
    /// The policy these flags give. A default key that cannot be made (a
    /// read-only home, say) is not an error: the build goes on without
    /// recording, and `notes` says why.
    pub fn policy(&self, notes: &mut Vec<String>) -> Result<TrustPolicy> {
        let key = match &self.signing_key {
            Some(path) => Some(read_key(path)?),
            None => {
                match default_key_path().and_then(|p| Ok(load_or_create_key(&p).map(|(k, _)| k)?)) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        notes.push(format!(
                            "no signing key: {e}; step results are used from the trust list \
                         but none are recorded (set --signing-key or STRATA_SIGNING_KEY)"
                        ));
                        None
                    }
                }
            }
        };
        let trusted = match &self.trust {
            Some(path) => read_trust_list(path)?,
            None => match default_trust_path() {
                Ok(path) if path.exists() => read_trust_list(&path)?,
                _ => Vec::new(),
            },
        };
        Ok(TrustPolicy::new(
            key,
            trusted.into_iter().map(|entry| entry.key),
        ))
    }
}

fn config_dir() -> Result<PathBuf> {
    dirs::config_dir()
        .map(|d| d.join("strata"))
        .context("no configuration directory: set XDG_CONFIG_HOME or HOME")
}

pub fn default_key_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("signing-key"))
}

pub fn default_trust_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("trust"))
}

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print your public key (making your key first if you have none), for
    /// others to `strata trust add`.
    Show {
        /// The key file (default: $XDG_CONFIG_HOME/strata/signing-key).
        #[arg(long, value_name = "FILE", env = "STRATA_SIGNING_KEY")]
        signing_key: Option<PathBuf>,
    },
    /// Make a new key file (for a fleet of builders, to mount as a
    /// secret) and print its public key. Never replaces a file.
    New { file: PathBuf },
}

pub fn run_key(args: KeyArgs) -> Result<()> {
    match args.command {
        KeyCommand::Show { signing_key } => {
            let (key, made) = match signing_key {
                Some(path) => (read_key(&path)?, None),
                None => {
                    let path = default_key_path()?;
                    let (key, made) = load_or_create_key(&path)?;
                    (key, made.then_some(path))
                }
            };
            println!("{}", key.public_key());
            if let Some(path) = made {
                eprintln!("strata: made a new signing key at {}", path.display());
            }
        }
        KeyCommand::New { file } => {
            let key = create_key(&file)?;
            println!("{}", key.public_key());
            eprintln!(
                "strata: made a new signing key at {}; keep it secret (builders use it with \
                 --signing-key or STRATA_SIGNING_KEY)",
                file.display()
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct TrustCmdArgs {
    /// The trust list to edit (default: $XDG_CONFIG_HOME/strata/trust).
    #[arg(long, value_name = "FILE", env = "STRATA_TRUST", global = true)]
    trust: Option<PathBuf>,
    #[command(subcommand)]
    command: TrustCommand,
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Use step results and tags signed by KEY (`ed25519:…`, as `strata key
    /// show` prints it).
    Add {
        key: String,
        /// A name to remember it by.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Stop using step results and tags signed by KEY.
    Remove { key: String },
    /// Print the trusted keys, your own first.
    List,
}

pub fn run_trust(args: TrustCmdArgs) -> Result<()> {
    let path = match args.trust {
        Some(p) => p,
        None => default_trust_path()?,
    };
    let current = if path.exists() {
        read_trust_list(&path)?
    } else {
        Vec::new()
    };
    match args.command {
        TrustCommand::Add { key, name } => {
            let key: PublicKey = key.parse()?;
            if name.contains(['\n', '#']) {
                bail!("a trusted key's name is one line without `#`");
            }
            if current.iter().any(|e| e.key == key) {
                eprintln!("strata: {key} is already trusted ({})", path.display());
                return Ok(());
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            writeln!(file, "{key} {name}")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("strata: trusting {key} ({})", path.display());
        }
        TrustCommand::Remove { key } => {
            let key: PublicKey = key.parse()?;
            let text = fs::read_to_string(&path)
                .with_context(|| format!("reading trust list {}", path.display()))?;
            let kept: String = text
                .lines()
                .filter(|line| {
                    let first = line
                        .split('#')
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .next();
                    first.and_then(|k| k.parse::<PublicKey>().ok()) != Some(key)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            if kept.len() == text.len() {
                bail!("{key} is not in {}", path.display());
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("rewriting {}", path.display()))?;
            tmp.write_all(kept.as_bytes())
                .with_context(|| format!("rewriting {}", path.display()))?;
            tmp.persist(&path)
                .with_context(|| format!("rewriting {}", path.display()))?;
            eprintln!("strata: no longer trusting {key} ({})", path.display());
        }
        TrustCommand::List => {
            if let Ok(own) = default_key_path().and_then(|p| Ok(read_key(&p)?)) {
                println!("{} (your own key)", own.public_key());
            }
            for e in current {
                println!("{} {}", e.key, e.name);
            }
        }
    }
    Ok(())
}
