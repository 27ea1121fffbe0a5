//! Where credentials for a registry come from, in Docker's order: explicit
//! ones from the caller, then the Docker config file (`credHelpers` for the
//! host, an `auths` entry, `credsStore`), else none (anonymous, which still
//! runs the bearer-token flow). Credential helpers are run as Docker runs
//! them: `docker-credential-NAME get`, the server URL on stdin, JSON out.
//!
//! Never logs or prints a secret.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::RegistryError;
use crate::options::{Credential, RegistryOptions};

/// The key Docker stores Docker Hub credentials under.
const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";
/// Names that all mean Docker Hub in a config file's keys.
const DOCKER_HUB_NAMES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
/// A config file larger than this is not a Docker config.
const MAX_DOCKER_CONFIG_BYTES: u64 = 4 << 20;

/// The credentials chosen for one registry and where they came from.
#[derive(Debug, Clone)]
pub(crate) struct ChosenCredential {
    /// `None` for anonymous access.
    pub credential: Option<Credential>,
    /// Where they came from, for error messages ("no credentials",
    /// "credentials from /root/.docker/config.json").
    pub origin: String,
}

/// The parts of Docker's `config.json` that name credentials.
#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

/// What a credential helper prints for `get`.
#[derive(Debug, Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The Docker config file that is (or would be) read.
pub(crate) fn docker_config_path(options: &RegistryOptions) -> PathBuf {
    if let Some(path) = &options.docker_config {
        return path.clone();
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("config.json");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".docker").join("config.json")
}

/// The credentials for `registry` (as written in references: `docker.io`,
/// `HOST[:PORT]`). Blocking: it may read a file and run a helper.
pub(crate) fn credentials_for(
    options: &RegistryOptions,
    registry: &str,
) -> Result<ChosenCredential, RegistryError> {
    if let Some(credential) = options.credentials.get(registry) {
        return Ok(ChosenCredential {
            credential: Some(credential.clone()),
            origin: "the explicitly given credentials".to_owned(),
        });
    }
    let path = docker_config_path(options);
    let Some(config) = read_docker_config(&path)? else {
        return Ok(anonymous());
    };
    let config_file = path.display().to_string();
    if let Some(helper) = lookup(&config.cred_helpers, registry) {
        return run_named_helper(helper, registry, &config_file);
    }
    let from_auths = match lookup(&config.auths, registry) {
        Some(entry) => decode_auth_entry(entry, &path, registry)?,
        None => None,
    };
    if let Some(credential) = from_auths {
        return Ok(ChosenCredential {
            credential: Some(credential),
            origin: format!("credentials from {config_file}"),
        });
    }
    if let Some(store) = &config.creds_store {
        return run_named_helper(store, registry, &config_file);
    }
    Ok(anonymous())
}

fn anonymous() -> ChosenCredential {
    ChosenCredential {
        credential: None,
        origin: "no credentials".to_owned(),
    }
}

/// Reads the config; a missing file is `None`, an unreadable or malformed
/// one an error naming it.
fn read_docker_config(path: &Path) -> Result<Option<DockerConfig>, RegistryError> {
    let refuse = |reason: String| RegistryError::DockerConfig {
        path: path.to_owned(),
        reason,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refuse(e.to_string())),
    };
    if metadata.len() > MAX_DOCKER_CONFIG_BYTES {
        return Err(refuse(format!(
            "it is {} bytes, more than a Docker config can plausibly be",
            metadata.len()
        )));
    }
    let text = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        refuse(format!(
            "not valid Docker config JSON ({e}); fix or move the file"
        ))
    })
}

/// The entry for `registry` in a map keyed as Docker keys it: a bare host,
/// or a URL (`https://host/v1/`); Docker Hub under any of its names.
fn lookup<'a, V>(map: &'a BTreeMap<String, V>, registry: &str) -> Option<&'a V> {
    let wanted_hub = DOCKER_HUB_NAMES.contains(&registry);
    map.iter()
        .find(|(key, _)| {
            let host = key_host(key);
            host == registry || (wanted_hub && DOCKER_HUB_NAMES.contains(&host))
        })
        .map(|(_, value)| value)
}

/// `host` of `https://host/path`, `http://host`, or `host`.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// `auth` (base64 `user:pass`), or `username`+`password`; an identity token
/// (OAuth refresh token) is refused, since this client cannot use one.
fn decode_auth_entry(
    entry: &AuthEntry,
    path: &Path,
    registry: &str,
) -> Result<Option<Credential>, RegistryError> {
    let refuse = |reason: String| RegistryError::DockerConfig {
        path: path.to_owned(),
        reason,
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| refuse(format!("the `auth` for {registry} is not valid base64; run `docker login {registry}` again")))?;
        let decoded = String::from_utf8(decoded).map_err(|_| {
            refuse(format!(
                "the `auth` for {registry} is not UTF-8 text; run `docker login {registry}` again"
            ))
        })?;
        let Some((username, password)) = decoded.split_once(':') else {
            return Err(refuse(format!(
                "the `auth` for {registry} is not `user:password`; run `docker login {registry}` again"
            )));
        };
        return Ok(Some(Credential {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(Credential {
            username: username.clone(),
            password: password.clone(),
        }));
    }
    if entry.identity_token.is_some() {
        return Err(refuse(format!(
            "the entry for {registry} holds an identity token, which Strata cannot use; log in with a user name and password or access token"
        )));
    }
    Ok(None)
}

fn run_named_helper(
    helper: &str,
    registry: &str,
    config_file: &str,
) -> Result<ChosenCredential, RegistryError> {
    let fail = |reason: String| RegistryError::CredentialHelper {
        helper: helper.to_owned(),
        registry: registry.to_owned(),
        config_file: config_file.to_owned(),
        reason,
    };
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(fail(
            "the helper name is not a plain name; fix the config file".to_owned(),
        ));
    }
    let program = PathBuf::from(format!("docker-credential-{helper}"));
    let credential = run_credential_helper(&program, registry).map_err(fail)?;
    Ok(ChosenCredential {
        credential,
        origin: format!("credentials from docker-credential-{helper} (named in {config_file})"),
    })
}

/// Runs `PROGRAM get` with the server URL on stdin. `Ok(None)` when the
/// helper has no credentials for it (Docker then goes anonymous too).
pub(crate) fn run_credential_helper(
    program: &Path,
    registry: &str,
) -> Result<Option<Credential>, String> {
    let server_url = if DOCKER_HUB_NAMES.contains(&registry) {
        DOCKER_HUB_CONFIG_KEY
    } else {
        registry
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{} is not on PATH; install it, or remove it from the config file",
                program.display()
            ),
            _ => format!("cannot start {}: {e}", program.display()),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives EPIPE here; its exit
        // status below says what happened.
        let _ = stdin.write_all(server_url.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for {}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = first_line(if stderr.trim().is_empty() {
            &stdout
        } else {
            &stderr
        });
        return Err(format!("it exited with {} ({said})", output.status));
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("its answer is not the JSON credential helpers print ({e})"))?;
    if answer.username == "<token>" {
        return Err(
            "it returned an identity token, which Strata cannot use; log in with a user name and password or access token"
                .to_owned(),
        );
    }
    Ok(Some(Credential {
        username: answer.username,
        password: answer.secret,
    }))
}

/// The first line of a helper's message, bounded, so a hostile helper
/// cannot flood the error.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn options_with_config(dir: &Path, json: &str) -> RegistryOptions {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("write config: {e}"));
        RegistryOptions {
            docker_config: Some(path),
            ..RegistryOptions::default()
        }
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
    }

    #[test]
    fn a_missing_config_file_means_anonymous_access() {
        let dir = tempdir();
        let options = RegistryOptions {
            docker_config: Some(dir.path().join("absent.json")),
            ..RegistryOptions::default()
        };
        let chosen = credentials_for(&options, "docker.io").unwrap_or_else(|e| panic!("{e}"));
        assert!(chosen.credential.is_none());
    }

    #[test]
    fn auths_entries_are_decoded_for_docker_hub_and_for_a_host_with_port() {
        let dir = tempdir();
        let hub = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let local = base64::engine::general_purpose::STANDARD.encode("bob:pa:ss");
        let options = options_with_config(
            dir.path(),
            &format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{hub}"}}, "registry.lan:5000": {{"auth": "{local}"}}}}}}"#
            ),
        );
        let chosen = credentials_for(&options, "docker.io").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            chosen.credential,
            Some(Credential {
                username: "alice".to_owned(),
                password: "s3cret".to_owned()
            })
        );
        assert!(chosen.origin.contains("config.json"), "{}", chosen.origin);
        let chosen =
            credentials_for(&options, "registry.lan:5000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            chosen.credential.map(|c| c.password),
            Some("pa:ss".to_owned())
        );
        let chosen = credentials_for(&options, "registry.lan").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            chosen.credential.is_none(),
            "a port is part of the registry's name"
        );
    }

    #[test]
    fn explicit_credentials_win_over_the_config_file() {
        let dir = tempdir();
        let mut options =
            options_with_config(dir.path(), r#"{"auths": {"h:1": {"auth": "eDp5"}}}"#);
        options.credentials.insert(
            "h:1".to_owned(),
            Credential {
                username: "explicit".to_owned(),
                password: "p".to_owned(),
            },
        );
        let chosen = credentials_for(&options, "h:1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            chosen.credential.map(|c| c.username),
            Some("explicit".to_owned())
        );
    }

    #[test]
    fn hostile_config_files_are_refused_naming_the_file() {
        let dir = tempdir();
        for json in [
            "not json",
            r#"{"auths": {"h": {"auth": "%%%not-base64"}}}"#,
            r#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#,
            r#"{"auths": {"h": {"identitytoken": "x"}}}"#,
            r#"{"auths": []}"#,
            r#"{"credHelpers": {"h": "../../bin/sh"}}"#,
        ] {
            let options = options_with_config(dir.path(), json);
            let err = credentials_for(&options, "h")
                .err()
                .unwrap_or_else(|| panic!("accepted {json}"));
            let message = err.to_string();
            assert!(message.contains("config.json"), "{message}");
        }
    }

    #[test]
    fn a_missing_credential_helper_is_a_clear_error() {
        let dir = tempdir();
        let options = options_with_config(dir.path(), r#"{"credsStore": "strata-test-absent"}"#);
        let message = credentials_for(&options, "h")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("docker-credential-strata-test-absent is not on PATH"),
            "{message}"
        );
    }

    fn write_helper(dir: &Path, script: &str) -> PathBuf {
        let path = dir.join("docker-credential-test");
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("write helper: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod helper: {e}"));
        path
    }

    #[test]
    fn a_credential_helper_is_asked_with_the_server_url_on_stdin() {
        let dir = tempdir();
        let helper = write_helper(
            dir.path(),
            "#!/bin/sh\nread url\n[ \"$1\" = get ] || exit 9\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"u-%s\",\"Secret\":\"s\"}' \"$url\" \"$url\"\n",
        );
        let credential =
            run_credential_helper(&helper, "docker.io").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            credential.map(|c| c.username),
            Some("u-https://index.docker.io/v1/".to_owned())
        );
    }

    #[test]
    fn a_helper_without_credentials_means_anonymous_and_a_broken_one_an_error() {
        let dir = tempdir();
        let helper = write_helper(
            dir.path(),
            "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n",
        );
        assert_eq!(run_credential_helper(&helper, "h").ok(), Some(None));
        let helper = write_helper(
            dir.path(),
            "#!/bin/sh\necho 'keychain locked' >&2\nexit 3\n",
        );
        let err = run_credential_helper(&helper, "h")
            .err()
            .unwrap_or_default();
        assert!(err.contains("keychain locked"), "{err}");
        let helper = write_helper(dir.path(), "#!/bin/sh\necho '{\"Username\": 5}'\n");
        let err = run_credential_helper(&helper, "h")
            .err()
            .unwrap_or_default();
        assert!(err.contains("not the JSON"), "{err}");
    }
}
