//! `RegistryOptions`: everything a caller can tune about talking to
//! registries, in one struct whose `Default` works on a laptop (linux/amd64,
//! the user's Docker config, HTTPS except for loopback registries).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::platform::Platform;

/// A manifest or image index larger than this is refused (Docker Hub's own
/// limit is 4 MiB; real manifests are a few KiB).
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// An image config larger than this is refused (real ones are a few KiB; a
/// long history stays well under 1 MiB).
pub const DEFAULT_MAX_CONFIG_BYTES: u64 = 8 << 20;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password or access token; never printed.
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to reach registries; see the field docs for each default.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// The platform an image index is resolved to (default linux/amd64).
    pub platform: Platform,
    /// Explicit credentials by registry host as written in references
    /// (`docker.io`, `127.0.0.1:5000`); they win over the Docker config.
    pub credentials: BTreeMap<String, Credential>,
    /// The Docker config file to read credentials from; `None` means
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. A missing
    /// file means anonymous access.
    pub docker_config: Option<PathBuf>,
    /// A mirror (`HOST[:PORT]`) asked first for `docker.io` images, as
    /// Docker's `registry-mirrors`; docker.io itself is asked when the
    /// mirror cannot be reached or lacks the image.
    pub docker_io_mirror: Option<String>,
    /// Registries (`HOST[:PORT]`) spoken to over plain HTTP. Loopback
    /// registries (127.0.0.0/8, ::1, localhost) always are, as Docker does.
    pub insecure_registries: Vec<String>,
    /// Manifests and indexes larger than this are refused.
    pub max_manifest_bytes: u64,
    /// Image configs larger than this are refused.
    pub max_config_bytes: u64,
    /// How long to wait for a TCP (and TLS) connection.
    pub connect_timeout: std::time::Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            platform: Platform::default(),
            credentials: BTreeMap::new(),
            docker_config: None,
            docker_io_mirror: None,
            insecure_registries: Vec::new(),
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
            connect_timeout: std::time::Duration::from_secs(15),
        }
    }
}

impl RegistryOptions {
    /// Whether `host` (`HOST[:PORT]`) is spoken to over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        is_loopback(host) || self.insecure_registries.iter().any(|h| h == host)
    }
}

/// Whether `HOST[:PORT]` names this machine: `localhost`, 127.0.0.0/8, ::1.
pub fn is_loopback(host: &str) -> bool {
    let name = strip_port(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `HOST` of `HOST[:PORT]`, also for `[v6]:PORT`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised_as_docker_does() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "registry-1.docker.io",
            "10.0.0.1:5000",
            "localhost.evil.com",
            "128.0.0.1",
            "[::2]:5000",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn listed_registries_are_insecure_and_others_are_not() {
        let options = RegistryOptions {
            insecure_registries: vec!["registry.lan:5000".to_owned()],
            ..RegistryOptions::default()
        };
        assert!(options.is_insecure("registry.lan:5000"));
        assert!(!options.is_insecure("registry.lan"));
        assert!(!options.is_insecure("docker.io"));
    }

    #[test]
    fn credentials_never_print_their_password() {
        let credential = Credential {
            username: "me".to_owned(),
            password: "hunter2".to_owned(),
        };
        assert!(!format!("{credential:?}").contains("hunter2"));
    }
}
