//! A RUN step in the sandbox: its root file system (an overlay on the
//! working rootfs, or a copy where overlayfs is not allowed), its
//! environment, its output, its changes, and its failure in the user's
//! terms.

use std::path::Path;
use std::time::Duration;

use strata_dockerfile::{Command, Network};
use strata_layer::{Change, IdMap, LayerPath, diff_overlay, diff_trees};
use strata_sandbox::{self as sandbox, ExitKind, IdMapping, RootfsSpec, RunSpec};

use super::Event;
use super::error::BuildError;
use super::plan::Planned;
use super::runner::Runner;

impl Runner<'_> {
    /// Runs a RUN step on an overlay (or a copy) of the working rootfs and
    /// returns its changes and how long the command ran.
    pub(super) fn run_step(
        &self,
        s: &Planned,
        command: &Command,
        network: Network,
        root: &Path,
        events: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> Result<(Vec<Change>, Duration, String), BuildError> {
        let n = self.layers.len();
        let step_dir = self.scratch.path().join(format!("step-{n}"));
        let overlay = sandbox::overlay_supported(
            self.opts.sandbox_helper.as_deref(),
            self.scratch.path(),
            &self.ids,
        );
        let (rootfs, upper) = if overlay {
            let spec = sandbox::prepare_overlay(&step_dir, vec![root.to_path_buf()], &self.ids)
                .map_err(BuildError::sandbox("preparing the overlay"))?;
            let upper = match &spec {
                RootfsSpec::Overlay { upper, .. } => upper.clone(),
                RootfsSpec::Copy { root } => root.clone(),
            };
            (spec, upper)
        } else {
            sandbox::copy_tree(root, &step_dir)
                .map_err(BuildError::sandbox("copying the rootfs"))?;
            (
                RootfsSpec::Copy {
                    root: step_dir.clone(),
                },
                step_dir,
            )
        };
        let spec = RunSpec {
            rootfs,
            argv: s.config_before.command_argv(command).unwrap_or_default(),
            env: step_env(s),
            cwd: s.config_before.cwd().to_string(),
            user: (!s.config_before.user.is_empty()).then(|| s.config_before.user.clone()),
            network: match network {
                Network::None => sandbox::Network::None,
                Network::Host => sandbox::Network::Host,
            },
            timeout: self.opts.step_timeout,
            hostname: "strata".into(),
            limits: self.opts.limits,
        };
        let mut tail = OutputTail::default();
        // The sandbox blocks until the step ends; keep the runtime's other
        // tasks (an embedded server's, say) running meanwhile.
        let outcome = tokio::task::block_in_place(|| {
            sandbox::run(
                &spec,
                &self.ids,
                self.opts.sandbox_helper.as_deref(),
                |stream, bytes| {
                    tail.push(bytes);
                    events(Event::Output(stream, bytes));
                },
            )
        })
        .map_err(|e| s.site.error(format!("RUN could not start: {e}")))?;
        if !outcome.exit.success() {
            let exit = match &outcome.limit_exceeded {
                // The kernel's counters say why: name the limit, not a signal.
                Some(limit) => format!("{} (it exceeded {limit})", exit_text(&outcome.exit)),
                None => exit_text(&outcome.exit),
            };
            let tail = tail.text();
            return Err(BuildError::RunFailed {
                file: s.site.file.clone(),
                line: s.site.line,
                exit,
                hint: network_hint(network, &tail),
                tail,
                code: exit_code(&outcome.exit),
            });
        }
        let mut changes = if overlay {
            diff_overlay(root, &upper, &self.layer_ids)
        } else {
            diff_trees(root, &upper, &self.layer_ids)
        }
        .map_err(|e| s.site.error(format!("snapshotting the step: {e}")))?;
        // Mount points the sandbox had to create are not the step's doing.
        let created: Vec<LayerPath> = outcome
            .created_mountpoints
            .iter()
            .filter_map(|p| LayerPath::from_image_path(Path::new(p)).ok())
            .collect();
        changes.retain(|c| !created.contains(&c.path));
        Ok((
            changes,
            outcome.duration,
            confinement_text(&outcome.confinement),
        ))
    }
}

/// What confined a step, as provenance records it (canonical: fixed order,
/// `-` for a limit not enforced).
fn confinement_text(c: &sandbox::Confinement) -> String {
    let flag = |on: bool, name: &str| {
        if on {
            name.to_owned()
        } else {
            format!("no-{name}")
        }
    };
    let value = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    format!(
        "{} {} {} seccomp={} limits={} memory={} pids={} cpu-millis={}",
        flag(c.no_terminal, "no-terminal"),
        c.keyring.as_str(),
        flag(c.no_new_privs, "no-new-privs"),
        c.seccomp,
        c.limits.mechanism.as_str(),
        value(c.limits.memory),
        value(c.limits.pids),
        value(c.limits.cpu_millis.map(u64::from)),
    )
}

/// The step's environment: ARGs in scope that no ENV shadows, then the
/// image's ENV.
fn step_env(s: &Planned) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = s
        .args
        .iter()
        .filter(|(k, _)| s.config_before.env_value(k).is_none())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(s.config_before.env.iter().filter_map(|e| {
        e.split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
    }));
    env
}

/// The sandbox's id mapping as the layer crate checks and applies it (one
/// `IdRange` type on both sides).
pub(crate) fn layer_idmap(ids: &IdMapping) -> Result<IdMap, BuildError> {
    IdMap::new(ids.uids().to_vec(), ids.gids().to_vec()).map_err(|e| BuildError::Io {
        what: "mapping ids".into(),
        source: std::io::Error::other(e),
    })
}

fn exit_text(exit: &ExitKind) -> String {
    match exit {
        ExitKind::Code(c) => format!("exit code {c}"),
        ExitKind::Signal(s) => format!("signal {s}"),
        ExitKind::TimedOut(d) => {
            format!(
                "the time limit ({:.0} s); every process of the step was killed",
                d.as_secs_f64()
            )
        }
    }
}

/// The build's exit status for a failed RUN: the step's own code, 128 +
/// signal for a signal (as shells report it), 124 for a time-out (as
/// `timeout` does).
fn exit_code(exit: &ExitKind) -> i32 {
    match exit {
        ExitKind::Code(c) => *c,
        ExitKind::Signal(s) => 128 + s,
        ExitKind::TimedOut(_) => 124,
    }
}

/// The last lines of a step's output, for the error when it fails.
#[derive(Default)]
struct OutputTail {
    buf: Vec<u8>,
}

/// Output kept for a failed step's error message.
const TAIL_BYTES: usize = 4096;
const TAIL_LINES: usize = 20;

impl OutputTail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * TAIL_BYTES {
            self.buf.drain(..self.buf.len() - TAIL_BYTES);
        }
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.buf);
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(TAIL_LINES);
        let mut out = lines[start..].join("\n");
        out.push('\n');
        out
    }
}

/// Output by which a step shows it wanted a network it did not have (apt,
/// pip, npm, curl, wget, busybox's wget, git).
const NO_NETWORK_SIGNS: [&str; 12] = [
    "Temporary failure resolving",
    "Temporary failure in name resolution",
    "Could not resolve",
    "could not resolve",
    "Name or service not known",
    "Network is unreachable",
    "Failed to establish a new connection",
    "getaddrinfo",
    "EAI_AGAIN",
    "ENOTFOUND",
    "bad address",
    "No route to host",
];

/// For a step that failed without a network while its output says it
/// wanted one: what to do about it, else nothing.
fn network_hint(network: Network, tail: &str) -> String {
    if network != Network::None || !NO_NETWORK_SIGNS.iter().any(|s| tail.contains(s)) {
        return String::new();
    }
    "\nhint: this step ran without a network (builds are hermetic by default). If it must \
     download, let it: `RUN --network=host ...` and `strata build --allow-host-network` (the \
     step is then recorded as non-hermetic); or fetch what it needs beforehand, pinned \
     (`ADD --checksum=sha256:... URL`, or into the build context)."
        .to_owned()
}
