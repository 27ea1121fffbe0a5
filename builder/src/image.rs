//! The image being built, as the steps change it: the runtime config
//! (env, workdir, user, cmd, entrypoint, labels, ports, shell, volumes,
//! stop signal, author), the layers so far,
//! and the history — and its OCI encodings (config and manifest JSON).
//!
//! Everything here is deterministic: maps are sorted, the image's time is
//! the one the build was given (`SOURCE_DATE_EPOCH` or its documented
//! default, see `source_date.rs`), nothing is read from the host. The same steps give
//! the same config bytes, and so the same image digest, on every machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use strata_dockerfile::{Command, Instruction};

/// The runtime config a step leaves behind. Stored (as JSON) in every step
/// result, so a cache hit restores it without re-running anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// `NAME=value`, in the order first set; a later `ENV` of a name
    /// replaces its value in place.
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    /// `"80/tcp"` and the like.
    pub exposed_ports: Vec<String>,
    /// `SHELL`: how shell-form commands run (empty: `/bin/sh -c`).
    #[serde(default)]
    pub shell: Vec<String>,
    /// `VOLUME` paths, sorted, each once.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `STOPSIGNAL`, empty when unset.
    #[serde(default)]
    pub stop_signal: String,
    /// `MAINTAINER`: the image's author, empty when unset.
    #[serde(default)]
    pub author: String,
    /// `HEALTHCHECK`, as the image config's `Healthcheck` holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthcheckConfig>,
}

/// A health check in the image config's terms: `Test` is `["NONE"]`,
/// `["CMD", argv...]` or `["CMD-SHELL", command]`; durations are
/// nanoseconds, 0 meaning the runtime's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthcheckConfig {
    pub test: Vec<String>,
    #[serde(default)]
    pub interval: u64,
    #[serde(default)]
    pub timeout: u64,
    #[serde(default)]
    pub start_period: u64,
    #[serde(default)]
    pub start_interval: u64,
    #[serde(default)]
    pub retries: u64,
}

impl HealthcheckConfig {
    fn of(check: &strata_dockerfile::Healthcheck) -> HealthcheckConfig {
        let test = match &check.command {
            None => vec!["NONE".to_owned()],
            Some(Command::Exec(argv)) => [vec!["CMD".to_owned()], argv.clone()].concat(),
            Some(Command::Shell(text)) => vec!["CMD-SHELL".to_owned(), text.clone()],
        };
        HealthcheckConfig {
            test,
            interval: check.interval_ns,
            timeout: check.timeout_ns,
            start_period: check.start_period_ns,
            start_interval: check.start_interval_ns,
            retries: check.retries,
        }
    }

    /// The config's `Healthcheck` object (zero fields left out, as Docker
    /// writes it).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"Test": self.test});
        for (name, value) in [
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
            ("Retries", self.retries),
        ] {
            if value != 0 {
                v[name] = serde_json::json!(value);
            }
        }
        v
    }

    /// Reads a config's `Healthcheck` object; `None` if it has no `Test`.
    pub fn from_json(v: &serde_json::Value) -> Option<HealthcheckConfig> {
        let test: Vec<String> = v["Test"]
            .as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<_>>()?;
        let n = |name: &str| v[name].as_u64().unwrap_or(0);
        Some(HealthcheckConfig {
            test,
            interval: n("Interval"),
            timeout: n("Timeout"),
            start_period: n("StartPeriod"),
            start_interval: n("StartInterval"),
            retries: n("Retries"),
        })
    }
}

impl RuntimeConfig {
    /// The value of environment variable `name`, if set.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env.iter().find_map(|e| {
            e.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v)
        })
    }

    pub fn set_env(&mut self, name: &str, value: &str) {
        let entry = format!("{name}={value}");
        match self
            .env
            .iter_mut()
            .find(|e| e.split_once('=').is_some_and(|(k, _)| k == name))
        {
            Some(e) => *e = entry,
            None => self.env.push(entry),
        }
    }

    /// The working directory, `/` when unset.
    pub fn cwd(&self) -> &str {
        if self.workdir.is_empty() {
            "/"
        } else {
            &self.workdir
        }
    }

    /// Applies a metadata instruction (ENV, WORKDIR, USER, LABEL, CMD,
    /// ENTRYPOINT, EXPOSE, SHELL, VOLUME, STOPSIGNAL, MAINTAINER); other
    /// instructions leave the config alone.
    pub fn apply(&mut self, instruction: &Instruction) {
        match instruction {
            Instruction::Env(pairs) => {
                for kv in pairs {
                    self.set_env(&kv.key, &kv.value);
                }
            }
            Instruction::Workdir(dir) => self.workdir = resolve_path(self.cwd(), dir),
            Instruction::User(user) => self.user = user.clone(),
            Instruction::Label(pairs) => {
                for kv in pairs {
                    self.labels.insert(kv.key.clone(), kv.value.clone());
                }
            }
            Instruction::Cmd(c) => self.cmd = self.command_argv(c),
            Instruction::Entrypoint(c) => {
                self.entrypoint = self.command_argv(c);
                // Docker: setting ENTRYPOINT resets an inherited CMD.
                self.cmd = None;
            }
            Instruction::Expose(ports) => {
                for p in ports {
                    if !self.exposed_ports.contains(p) {
                        self.exposed_ports.push(p.clone());
                    }
                }
                self.exposed_ports.sort();
            }
            Instruction::Shell(argv) => self.shell = argv.clone(),
            Instruction::Volume(paths) => {
                for p in paths {
                    if !self.volumes.contains(p) {
                        self.volumes.push(p.clone());
                    }
                }
                self.volumes.sort();
            }
            Instruction::StopSignal(signal) => self.stop_signal = signal.clone(),
            Instruction::Maintainer(name) => self.author = name.clone(),
            Instruction::Healthcheck(check) => {
                self.healthcheck = Some(HealthcheckConfig::of(check));
            }
            Instruction::Run { .. }
            | Instruction::Copy { .. }
            | Instruction::Add { .. }
            | Instruction::Arg(_) => {}
        }
    }

    /// The argv of a command: exec form as is, shell form through the
    /// `SHELL` in force (`/bin/sh -c` by default); an empty exec form
    /// clears (`None`).
    pub fn command_argv(&self, c: &Command) -> Option<Vec<String>> {
        match c {
            Command::Exec(argv) if argv.is_empty() => None,
            Command::Exec(argv) => Some(argv.clone()),
            Command::Shell(text) => {
                let mut argv = if self.shell.is_empty() {
                    vec!["/bin/sh".to_owned(), "-c".to_owned()]
                } else {
                    self.shell.clone()
                };
                argv.push(text.clone());
                Some(argv)
            }
        }
    }

    /// The canonical JSON stored in step results.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// `path` made absolute against `cwd` and normalised (`.` and `..` resolved
/// lexically, never above `/`).
pub fn resolve_path(cwd: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{cwd}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// How a layer blob is compressed. The layer itself (its `diff_id`) is the
/// same whichever it is: the uncompressed tar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// `gzip`, `zstd` or `none`, as `--compression` takes it.
    pub fn parse(name: &str) -> Result<Compression, String> {
        match name {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression {other:?}: expected gzip, zstd or none"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The OCI media type of a layer blob compressed this way: what
    /// Strata writes into every manifest.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_LAYER,
            Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_LAYER_ZSTD,
        }
    }

    /// The compression a layer media type names: OCI's three and Docker's
    /// (`application/vnd.docker.image.rootfs.diff.tar.gzip`, the same bytes
    /// as OCI's `tar+gzip`). Foreign (non-distributable) layers and
    /// anything else are refused: their bytes are not where the manifest
    /// says, or not a tar Strata can read.
    pub fn of_media_type(media_type: &str) -> Result<Compression, String> {
        match media_type {
            MEDIA_TYPE_LAYER | MEDIA_TYPE_DOCKER_LAYER => Ok(Compression::None),
            MEDIA_TYPE_LAYER_GZIP | MEDIA_TYPE_DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
            MEDIA_TYPE_LAYER_ZSTD | MEDIA_TYPE_DOCKER_LAYER_ZSTD => Ok(Compression::Zstd),
            m if m.contains("nondistributable") || m.contains("foreign") => Err(format!(
                "layer media type {m:?}: foreign (non-distributable) layers are not supported"
            )),
            m => Err(format!(
                "layer media type {m:?} is not a layer tar (expected plain, gzip or zstd)"
            )),
        }
    }
}

/// A layer's blob, as a manifest describes it: the bytes that are stored,
/// copied and pushed — compressed or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    pub compression: Compression,
    /// `sha256:<hex>` of the blob's bytes as stored (compressed).
    pub digest: String,
    /// Bytes of the blob as stored.
    pub size: u64,
}

impl LayerBlob {
    /// The uncompressed tar as its own blob (its digest is its diff_id).
    pub fn uncompressed(diff_id: &str, size: u64) -> LayerBlob {
        LayerBlob {
            compression: Compression::None,
            digest: diff_id.to_owned(),
            size,
        }
    }

    pub fn media_type(&self) -> &'static str {
        self.compression.media_type()
    }
}

/// One layer of the image: what it is (the diff_id) and how it travels
/// (the blob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    /// `sha256:<hex>` of the uncompressed tar: what the config's
    /// `rootfs.diff_ids` lists and what a store manifest's SHA-256 is.
    pub diff_id: String,
    pub blob: LayerBlob,
}

/// One history entry. A base image's entries keep their own times,
/// author and comment; a step's entry has no time of its own and takes
/// the image's `created`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryEntry {
    /// RFC 3339, as the base image wrote it; `None`: the image's `created`.
    pub created: Option<String>,
    /// Empty when the base image's entry had none.
    pub created_by: String,
    pub author: String,
    pub comment: String,
    pub empty_layer: bool,
}

impl HistoryEntry {
    /// The entry of a step of this build.
    pub fn step(created_by: &str, empty_layer: bool) -> HistoryEntry {
        HistoryEntry {
            created_by: created_by.to_owned(),
            empty_layer,
            ..HistoryEntry::default()
        }
    }
}

pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MEDIA_TYPE_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// The OCI platform strings of this machine.
pub fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    ("linux", arch)
}

/// The platform ARGs BuildKit defines for every build (`TARGETARCH`,
/// `BUILDPLATFORM`, ...): usable in `FROM` lines as they are, and inside a
/// stage once declared with a bare `ARG NAME`. Strata builds for the host,
/// so target and build platform are one.
pub fn platform_args() -> Vec<(String, String)> {
    let (os, arch) = platform();
    let mut args = Vec::new();
    for side in ["TARGET", "BUILD"] {
        args.push((format!("{side}PLATFORM"), format!("{os}/{arch}")));
        args.push((format!("{side}OS"), os.to_owned()));
        args.push((format!("{side}ARCH"), arch.to_owned()));
        args.push((format!("{side}VARIANT"), String::new()));
    }
    args
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A JSON blob and its descriptor fields.
#[derive(Clone, Debug)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Blob {
    fn json(value: &serde_json::Value) -> Blob {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        Blob {
            digest: sha256_digest(&bytes),
            bytes,
        }
    }
}

/// The image config and manifest blobs of a finished build.
pub fn encode_image(
    config: &RuntimeConfig,
    layers: &[LayerRef],
    history: &[HistoryEntry],
    created_epoch: u64,
) -> (Blob, Blob) {
    let (os, arch) = platform();
    let created = rfc3339(created_epoch);
    let mut runtime = serde_json::Map::new();
    if !config.env.is_empty() {
        runtime.insert("Env".into(), serde_json::json!(config.env));
    }
    if let Some(e) = &config.entrypoint {
        runtime.insert("Entrypoint".into(), serde_json::json!(e));
    }
    if let Some(c) = &config.cmd {
        runtime.insert("Cmd".into(), serde_json::json!(c));
    }
    if !config.workdir.is_empty() {
        runtime.insert("WorkingDir".into(), serde_json::json!(config.workdir));
    }
    if !config.user.is_empty() {
        runtime.insert("User".into(), serde_json::json!(config.user));
    }
    if !config.labels.is_empty() {
        runtime.insert("Labels".into(), serde_json::json!(config.labels));
    }
    if !config.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> = config
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), serde_json::json!({})))
            .collect();
        runtime.insert("ExposedPorts".into(), serde_json::Value::Object(ports));
    }
    if !config.volumes.is_empty() {
        let volumes: serde_json::Map<String, serde_json::Value> = config
            .volumes
            .iter()
            .map(|p| (p.clone(), serde_json::json!({})))
            .collect();
        runtime.insert("Volumes".into(), serde_json::Value::Object(volumes));
    }
    if !config.stop_signal.is_empty() {
        runtime.insert("StopSignal".into(), serde_json::json!(config.stop_signal));
    }
    if let Some(check) = &config.healthcheck {
        runtime.insert("Healthcheck".into(), check.to_json());
    }
    // Not in the OCI spec, but where Docker and BuildKit keep it, so an
    // image built FROM this one inherits it.
    if !config.shell.is_empty() {
        runtime.insert("Shell".into(), serde_json::json!(config.shell));
    }
    let history: Vec<serde_json::Value> = history
        .iter()
        .map(|h| {
            let mut v = serde_json::json!({"created": h.created.as_deref().unwrap_or(&created)});
            if !h.created_by.is_empty() {
                v["created_by"] = serde_json::json!(h.created_by);
            }
            if !h.author.is_empty() {
                v["author"] = serde_json::json!(h.author);
            }
            if !h.comment.is_empty() {
                v["comment"] = serde_json::json!(h.comment);
            }
            if h.empty_layer {
                v["empty_layer"] = serde_json::json!(true);
            }
            v
        })
        .collect();
    let mut image = serde_json::json!({
        "created": created,
        "architecture": arch,
        "os": os,
        "config": runtime,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": history,
    });
    if !config.author.is_empty() {
        image["author"] = serde_json::json!(config.author);
    }
    let config_blob = Blob::json(&image);
    let manifest = Blob::json(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_CONFIG,
            "digest": config_blob.digest,
            "size": config_blob.bytes.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.blob.media_type(),
            "digest": l.blob.digest,
            "size": l.blob.size,
        })).collect::<Vec<_>>(),
    }));
    (config_blob, manifest)
}

/// Seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use strata_dockerfile::KeyValue;

    #[test]
    fn env_replaces_in_place_and_workdir_resolves() {
        let mut c = RuntimeConfig::default();
        let env = |k: &str, v: &str| {
            Instruction::Env(vec![KeyValue {
                key: k.into(),
                value: v.into(),
            }])
        };
        c.apply(&env("A", "1"));
        c.apply(&env("B", "2"));
        c.apply(&env("A", "3"));
        assert_eq!(c.env, ["A=3", "B=2"]);
        assert_eq!(c.env_value("A"), Some("3"));
        c.apply(&Instruction::Workdir("/app".into()));
        c.apply(&Instruction::Workdir("src/../lib".into()));
        assert_eq!(c.workdir, "/app/lib");
        assert_eq!(resolve_path("/", "../../etc"), "/etc");
    }

    #[test]
    fn entrypoint_resets_cmd_and_config_round_trips() {
        let mut c = RuntimeConfig::default();
        c.apply(&Instruction::Cmd(Command::Shell("echo hi".into())));
        c.apply(&Instruction::Entrypoint(Command::Exec(vec![
            "/bin/app".into(),
        ])));
        assert_eq!(c.cmd, None);
        assert_eq!(RuntimeConfig::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn the_same_image_encodes_to_the_same_digest() {
        let layers = [LayerRef {
            diff_id: sha256_digest(b"x"),
            blob: LayerBlob::uncompressed(&sha256_digest(b"x"), 1),
        }];
        let history = [HistoryEntry::step("COPY x /", false)];
        let (c1, m1) = encode_image(&RuntimeConfig::default(), &layers, &history, 0);
        let (c2, m2) = encode_image(&RuntimeConfig::default(), &layers, &history, 0);
        assert_eq!((c1.digest, m1.digest.clone()), (c2.digest, m2.digest));
        let manifest: serde_json::Value = serde_json::from_slice(&m1.bytes).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_TYPE_LAYER);
    }
}
