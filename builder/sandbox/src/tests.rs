//! Real-namespace tests of the sandbox: each builds a tiny busybox image in
//! a temporary directory and runs steps in it through the real re-exec
//! helper (the `strata` binary next to the test binary, or
//! `$STRATA_SANDBOX_HELPER`). They need root (for the range id mapping) and
//! a static busybox at /bin/busybox; missing either is a failure that says
//! how to fix it, never a skip.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::host::{LimitsBy, run_with};
use super::sys::probe::{self, Call};
use super::wire::{CommandExit, Message};
use super::*;

const BUSYBOX: &str = "/bin/busybox";
/// Host id of container root in these tests.
const BASE: u32 = 100_000;

/// The helper binary: its `main` dispatches `REEXEC_ARG` to `reexec_main`.
fn helper() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_SANDBOX_HELPER") {
        return p.into();
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/strata
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("strata");
    assert!(
        bin.exists(),
        "{} is missing: the sandbox tests re-execute the `strata` binary; build it first \
         with `cargo build --workspace --bins` (scripts/test does) or set STRATA_SANDBOX_HELPER",
        bin.display()
    );
    bin
}

fn require_root_and_busybox() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the sandbox tests map a range of ids and must run as root"
    );
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: run `scripts/ensure-tools busybox:busybox-static` \
         or `apt-get install busybox-static`"
    );
}

/// A temporary directory only its owner may enter (tempfile follows the
/// umask), as a builder's scratch directory must be.
fn private_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
    tmp
}

/// A number no other test (or process) uses, to find a test's processes.
fn unique_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    500_000 + (std::process::id() % 10_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A busybox image in `lower`, an empty `upper` and `work`, all owned by the
/// mapped host ids, inside a temp dir that container root cannot search
/// (mode 0700, owned by host root).
struct Fixture {
    tmp: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    ids: IdMapping,
}

impl Fixture {
    fn new() -> Self {
        Self::with_ids(IdMapping::range(BASE, BASE, 65_536))
    }

    fn with_ids(ids: IdMapping) -> Self {
        Self::build(ids, false)
    }

    /// With the probe (this test binary) installed as `/probe`.
    fn with_probe() -> Self {
        Self::build(IdMapping::range(BASE, BASE, 65_536), true)
    }

    fn build(ids: IdMapping, with_probe: bool) -> Self {
        require_root_and_busybox();
        let tmp = private_tempdir();
        let lower = tmp.path().join("lower");
        build_busybox_image(&lower, true);
        if with_probe {
            install_probe(&lower);
        }
        shift_ownership(&lower, &ids).unwrap();
        let RootfsSpec::Overlay { upper, work, .. } =
            prepare_overlay(&tmp.path().join("rw"), vec![lower.clone()], &ids).unwrap()
        else {
            unreachable!()
        };
        Fixture {
            tmp,
            lower,
            upper,
            work,
            ids,
        }
    }

    fn overlay(&self) -> RootfsSpec {
        RootfsSpec::Overlay {
            lower: vec![self.lower.clone()],
            upper: self.upper.clone(),
            work: self.work.clone(),
        }
    }

    fn spec(&self, script: &str) -> RunSpec {
        RunSpec::new(self.overlay(), sh(script))
    }

    fn run(&self, script: &str) -> Captured {
        self.run_spec(&self.spec(script)).unwrap()
    }

    fn run_spec(&self, spec: &RunSpec) -> Result<Captured, SandboxError> {
        capture(spec, &self.ids)
    }

    /// Runs the probe for `what` (see [`probe_inside_a_step`]) as the step's
    /// command.
    fn run_probe(&self, what: &str) -> Captured {
        let mut spec = RunSpec::new(self.overlay(), PROBE_ARGV.map(String::from).to_vec());
        spec.env = vec![(PROBE_VAR.to_owned(), what.to_owned())];
        self.run_spec(&spec).unwrap()
    }
}

/// Copies this test binary into the image as `/probe`, with the shared
/// libraries `ldd` says it needs at the same paths, so that it runs there.
fn install_probe(root: &Path) {
    let exe = std::env::current_exe().unwrap();
    fs::copy(&exe, root.join("probe")).unwrap();
    let ldd = Command::new("ldd").arg(&exe).output().unwrap();
    assert!(ldd.status.success(), "ldd {}", exe.display());
    for line in String::from_utf8(ldd.stdout).unwrap().lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let lib = line.split("=>").last().unwrap().split_whitespace().next();
        let Some(lib) = lib.filter(|l| l.starts_with('/')) else {
            continue;
        };
        let dst = root.join(lib.trim_start_matches('/'));
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(lib, &dst).unwrap();
    }
}

/// The probe's command line: this binary's harness, running only the probe.
const PROBE_ARGV: [&str; 7] = [
    "/probe",
    "--ignored",
    "--exact",
    "tests::probe_inside_a_step",
    "--nocapture",
    "--test-threads=1",
    "-q",
];
/// The environment variable naming what the probe tries.
const PROBE_VAR: &str = "STRATA_SANDBOX_PROBE";

/// A shell command running the probe for `what`.
fn probe_cmd(what: &str) -> String {
    format!("{PROBE_VAR}={what} {}", PROBE_ARGV.join(" "))
}

/// `probe name=value` lines of the probe's output.
fn probe_results(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("probe "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn errno_text(r: Result<i64, i32>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("errno {e}"),
    }
}

fn io_text<T, E: Into<std::io::Error>>(r: Result<T, E>) -> String {
    errno_text(
        r.map(|_| 0)
            .map_err(|e| e.into().raw_os_error().unwrap_or(-1)),
    )
}

/// Not a test of its own: the program the tests run as a step (this test
/// binary, copied into the image by [`install_probe`]), to make the kernel
/// calls no busybox applet makes. `$STRATA_SANDBOX_PROBE` (`a,b`) names
/// what to try; each result is a line `probe name=ok` or `probe name=errno
/// N`.
#[test]
#[ignore = "runs inside a sandboxed step, started by other tests"]
fn probe_inside_a_step() {
    let Ok(what) = std::env::var(PROBE_VAR) else {
        return;
    };
    for item in what.split(',') {
        match item {
            "syscalls" => {
                for (name, call) in [
                    ("session_keyring", Call::SessionKeyring),
                    ("add_key", Call::AddKey),
                    ("perf_event_open", Call::PerfEventOpen),
                    ("userfaultfd", Call::Userfaultfd),
                    ("clone3", Call::Clone3),
                    ("mount", Call::Mount),
                    ("clock_settime", Call::ClockSettime),
                    ("adjtimex", Call::Adjtimex),
                    ("read_implies_exec", Call::ReadImpliesExec),
                    ("unshare_user", Call::UnshareUser),
                ] {
                    println!("probe {name}={}", errno_text(probe::call(call)));
                }
            }
            "refusal" => {
                use crate::refusal::{SetupCall, refused_by_seccomp};
                for (name, call) in [
                    ("unshare", SetupCall::Unshare),
                    ("mount", SetupCall::Mount),
                    ("umount2", SetupCall::Umount2),
                    ("keyctl", SetupCall::Keyctl),
                ] {
                    println!("probe refused_{name}={}", refused_by_seccomp(call));
                }
            }
            "keyring" => match probe::call(Call::SessionKeyring) {
                Ok(id) => println!("probe session_keyring={id}"),
                Err(e) => println!("probe session_keyring=errno {e}"),
            },
            "x32" => println!("probe x32={}", errno_text(probe::call(Call::X32Getpid))),
            "i386" => println!("probe i386={}", errno_text(probe::call(Call::I386Getpid))),
            "tty" => {
                // Field 7 of /proc/self/stat: the controlling terminal's
                // device number, 0 for none.
                let stat = fs::read_to_string("/proc/self/stat").unwrap();
                let after_name = &stat[stat.rfind(')').unwrap() + 2..];
                let tty_nr = after_name.split(' ').nth(4).unwrap();
                println!("probe tty_nr={tty_nr}");
                // The attack: type a command into whatever terminal
                // controls the step — the builder's, unless the sandbox
                // took it away.
                let tty = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/tty");
                let opened = match &tty {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
                };
                println!("probe open_tty={opened}");
                if let Ok(tty) = tty {
                    let typed: Vec<_> = b"echo INJECTED\n"
                        .iter()
                        .map(|&b| probe::tiocsti(tty.as_fd(), b, false))
                        .collect();
                    println!(
                        "probe tiocsti_tty={}",
                        io_text(typed.into_iter().next().unwrap())
                    );
                }
            }
            "own-pty" => {
                // A terminal of the step's own, made its controlling one:
                // the kernel allows TIOCSTI there, so only the filter can
                // refuse it.
                let _ = rustix::process::setsid();
                let master = rustix::pty::openpt(rustix::pty::OpenptFlags::RDWR).unwrap();
                rustix::pty::grantpt(&master).unwrap();
                rustix::pty::unlockpt(&master).unwrap();
                let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
                let pts = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(name.to_str().unwrap())
                    .unwrap();
                let ctty = rustix::process::ioctl_tiocsctty(&pts);
                println!("probe own_ctty={}", io_text(ctty));
                for (name, high) in [("tiocsti_own", false), ("tiocsti_own_high_bits", true)] {
                    println!(
                        "probe {name}={}",
                        io_text(probe::tiocsti(pts.as_fd(), b'x', high))
                    );
                }
            }
            other => panic!("unknown probe {other}"),
        }
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// `bin/busybox`, `bin/sh` and (if `applets`) a symlink per applet, plus
/// account files. No `/proc` or `/dev`: the sandbox must cope.
fn build_busybox_image(root: &Path, applets: bool) {
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    symlink("busybox", bin.join("sh")).unwrap();
    if applets {
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for name in String::from_utf8(list.stdout).unwrap().lines() {
            if name != "sh" && name != "busybox" {
                symlink("busybox", bin.join(name)).unwrap();
            }
        }
    }
    let etc = root.join("etc");
    fs::create_dir(&etc).unwrap();
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        etc.join("group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    fs::create_dir(root.join("tmp")).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

struct Captured {
    outcome: RunOutcome,
    stdout: String,
    stderr: String,
    chunks: Vec<(Stream, Vec<u8>)>,
}

impl Captured {
    #[track_caller]
    fn assert_success(&self) {
        assert_eq!(
            self.outcome.exit,
            ExitKind::Code(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

fn capture(spec: &RunSpec, ids: &IdMapping) -> Result<Captured, SandboxError> {
    capture_with(spec, ids, LimitsBy::CgroupIfPossible)
}

/// Host processes whose command line is exactly `argv`.
fn host_processes_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

fn interface_names(proc_net_dev: &str) -> BTreeSet<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

#[test]
fn a_step_runs_as_root_and_its_output_arrives_by_stream() {
    let f = Fixture::new();
    let out = f.run("echo to-out; echo to-err >&2; id -u; id -g; whoami");
    out.assert_success();
    assert_eq!(out.stdout, "to-out\n0\n0\nroot\n");
    assert_eq!(out.stderr, "to-err\n");
    assert!(out.chunks.iter().any(|(s, _)| *s == Stream::Stderr));
    assert!(out.outcome.used_overlay);
}

#[test]
fn output_is_streamed_while_the_step_still_runs() {
    let f = Fixture::new();
    // The step prints a line, then waits until the callback, having received
    // that line, writes to a file of the lower layer: the step can only
    // finish if output reaches the caller while it runs. (The file exists
    // from the start: overlayfs reads an unchanged lower file through to the
    // host's, but need not notice files added to a layer while mounted.)
    let flag = f.lower.join("flag");
    fs::write(&flag, b"").unwrap();
    lchown(&flag, f.ids.host_uid(0), f.ids.host_gid(0)).unwrap();
    let mut spec = f.spec("echo first; until grep -q go /flag; do usleep 10000; done; echo second");
    spec.timeout = Some(Duration::from_secs(60));
    let mut lines = Vec::new();
    let outcome = run(&spec, &f.ids, Some(&helper()), |s, b| {
        lines.push(format!("{s:?}: {}", String::from_utf8_lossy(b)));
        if s == Stream::Stdout {
            fs::write(&flag, b"go\n").unwrap();
        }
    })
    .unwrap();
    assert_eq!(outcome.exit, ExitKind::Code(0), "{lines:?}");
    assert_eq!(lines.concat(), "Stdout: first\nStdout: second\n");
}

#[test]
fn exit_codes_propagate() {
    let f = Fixture::new();
    assert_eq!(f.run("exit 3").outcome.exit, ExitKind::Code(3));
    assert_eq!(f.run("true").outcome.exit, ExitKind::Code(0));
    assert!(!f.run("false").outcome.exit.success());
}

/// The interface [`with_something_to_hide`] adds.
const HIDDEN_INTERFACE: &str = "strata-hide0";

/// Runs `f` on a thread of its own in a new network namespace that holds,
/// besides `lo`, a bridge named [`HIDDEN_INTERFACE`] (up): something for the
/// sandbox to hide on any host, even one with only `lo`. A namespace is per
/// thread, and a sandbox started from that thread starts in it.
fn with_something_to_hide<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("a network namespace for the test (needs root)");
                for args in [
                    &["link", "add", HIDDEN_INTERFACE, "type", "bridge"][..],
                    &["link", "set", HIDDEN_INTERFACE, "up"],
                ] {
                    let out = Command::new("ip").args(args).output().expect(
                        "this test needs `ip`: apt-get install iproute2 (scripts/test installs it)",
                    );
                    assert!(
                        out.status.success(),
                        "ip {args:?}: {} (the kernel needs bridge support)",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                f()
            })
            .join()
            .unwrap()
    })
}

/// The interfaces of the calling thread's network namespace.
fn this_threads_interfaces() -> BTreeSet<String> {
    // Not /proc/net: that is the main thread's.
    interface_names(&fs::read_to_string("/proc/thread-self/net/dev").unwrap())
}

#[test]
fn only_lo_exists_and_it_is_up() {
    with_something_to_hide(|| {
        assert!(this_threads_interfaces().contains(HIDDEN_INTERFACE));
        let f = Fixture::new();
        let out = f.run("cat /proc/net/dev; echo ---; ip link; echo ---; ping -c1 -W1 127.0.0.1 >/dev/null && echo ping-ok");
        out.assert_success();
        let (dev, rest) = out.stdout.split_once("---").unwrap();
        assert_eq!(interface_names(dev), BTreeSet::from(["lo".to_owned()]));
        let (links, ping) = rest.split_once("---").unwrap();
        assert!(links.contains("lo:") && links.contains("UP"), "{links}");
        assert_eq!(links.matches(": <").count(), 1, "{links}");
        assert_eq!(ping.trim(), "ping-ok", "{}", out.stderr);
    });
}

#[test]
fn the_host_network_shows_the_hosts_interfaces() {
    with_something_to_hide(|| {
        let f = Fixture::new();
        let mut spec = f.spec("cat /proc/net/dev");
        spec.network = Network::Host;
        let out = f.run_spec(&spec).unwrap();
        out.assert_success();
        let host = this_threads_interfaces();
        assert!(host.contains(HIDDEN_INTERFACE), "{host:?}");
        assert_eq!(interface_names(&out.stdout), host);
    });
}

#[test]
fn only_the_steps_processes_are_visible_and_the_command_is_pid_1() {
    let f = Fixture::new();
    let out = f.run(
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'; ps -o pid,args",
    );
    out.assert_success();
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next().unwrap().trim_end(),
        "/bin/sh -c cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'; ps -o pid,args"
    );
    // sh, ls and grep at most (ls may read /proc before grep starts).
    let count: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(
        (2..=3).contains(&count),
        "{count} processes:\n{}",
        out.stdout
    );
    let ps: Vec<&str> = lines.skip(1).collect();
    assert!(ps.len() <= 3, "{ps:?}");
}

#[test]
fn host_paths_are_unreachable() {
    let f = Fixture::new();
    let secret = f.tmp.path().join("secret");
    fs::write(&secret, b"host only").unwrap();
    let script = format!(
        "test -e {} && echo secret-visible; test -e {} && echo lower-visible; \
         ls -d /oldroot /tmp/strata-root 2>/dev/null; ls /; ls -l /proc/1/root; true",
        secret.display(),
        f.lower.display()
    );
    let out = f.run(&script);
    out.assert_success();
    assert!(!out.stdout.contains("visible"), "{}", out.stdout);
    assert!(!out.stdout.contains("oldroot") && !out.stdout.contains("strata-root"));
    assert!(out.stdout.contains("-> /\n"), "{}", out.stdout);
}

#[test]
fn proc_sys_writes_mounts_and_remounts_are_refused() {
    let f = Fixture::new();
    let out = f.run(
        "echo evil > /proc/sys/kernel/hostname && echo sysctl-written; \
         mount -o remount,rw /proc/sys && echo remounted; \
         mount -o remount,ro / && echo root-remounted; \
         mkdir -p /mnt && mount -t tmpfs t /mnt && echo mounted; \
         umount /proc && echo unmounted; \
         hostname",
    );
    out.assert_success();
    assert_eq!(out.stdout, "strata\n", "stderr:\n{}", out.stderr);
}

#[test]
fn minimal_dev_works() {
    let f = Fixture::new();
    let out = f.run(
        "echo x > /dev/null && head -c 16 /dev/urandom | wc -c && head -c 4 /dev/zero | wc -c && \
         ls /dev | tr '\\n' ' ' && test -d /dev/pts && test -d /dev/shm && echo ok",
    );
    out.assert_success();
    assert!(out.stdout.starts_with("16\n4\n"), "{}", out.stdout);
    for name in [
        "null", "zero", "full", "random", "urandom", "fd", "stdin", "ptmx", "pts", "shm",
    ] {
        assert!(
            out.stdout.contains(name),
            "/dev lacks {name}: {}",
            out.stdout
        );
    }
    // No way to the builder's terminal.
    assert!(!out.stdout.contains("tty"), "{}", out.stdout);
    assert!(out.stdout.ends_with("ok\n"));
}

#[test]
fn overlay_writes_land_in_upper_and_lower_is_untouched() {
    let f = Fixture::new();
    let out = f.run("echo new > /new; echo changed >> /etc/passwd; rm /etc/group; mkdir -p /a/b");
    out.assert_success();
    assert_eq!(fs::read_to_string(f.upper.join("new")).unwrap(), "new\n");
    assert!(
        fs::read_to_string(f.upper.join("etc/passwd"))
            .unwrap()
            .ends_with("changed\n")
    );
    // A deletion is an overlayfs whiteout: a 0/0 character device.
    let wh = fs::symlink_metadata(f.upper.join("etc/group")).unwrap();
    assert_eq!(wh.rdev(), 0);
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
    assert!(f.upper.join("a/b").is_dir());
    assert!(!f.lower.join("new").exists());
    assert!(f.lower.join("etc/group").exists());
    assert!(
        !fs::read_to_string(f.lower.join("etc/passwd"))
            .unwrap()
            .contains("changed")
    );
    // The mount points the image lacked were created in upper, and said so.
    let created: BTreeSet<&str> = out
        .outcome
        .created_mountpoints
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(created, BTreeSet::from(["/proc", "/dev"]));
    assert!(f.upper.join("proc").is_dir() && !f.lower.join("proc").exists());
}

#[test]
fn chown_in_the_range_mapping_shows_on_the_host_shifted() {
    let f = Fixture::new();
    let out = f.run("touch /f && chown 1000:2000 /f && touch /r && ls -ln /f");
    out.assert_success();
    let m = fs::metadata(f.upper.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (BASE + 1000, BASE + 2000));
    let r = fs::metadata(f.upper.join("r")).unwrap();
    assert_eq!((r.uid(), r.gid()), (BASE, BASE));
    assert_eq!(f.ids.container_uid(m.uid()), Some(1000));
}

#[test]
fn a_named_user_runs_with_its_ids_groups_and_home() {
    let f = Fixture::new();
    let mut spec = f.spec(
        "id -u; id -g; id -G; echo $HOME; touch /tmp/mine; cat /proc/self/status | grep CapEff",
    );
    spec.user = Some("app".into());
    let out = f.run_spec(&spec).unwrap();
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&lines[..4], ["1000", "1000", "1000 2000", "/home/app"]);
    assert!(lines[4].ends_with("0000000000000000"), "{}", lines[4]);
    let m = fs::metadata(f.upper.join("tmp/mine")).unwrap();
    assert_eq!(m.uid(), BASE + 1000);
}

#[test]
fn root_gets_dockers_default_capabilities_and_nothing_to_pass_on() {
    let f = Fixture::new();
    let out = f.run("grep '^Cap' /proc/self/status");
    out.assert_success();
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
    let docker = "00000000a80425fb";
    let caps: Vec<(&str, &str)> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(":\t"))
        .collect();
    assert_eq!(
        caps,
        [
            ("CapInh", "0000000000000000"),
            ("CapPrm", docker),
            ("CapEff", docker),
            ("CapBnd", docker),
            ("CapAmb", "0000000000000000"),
        ],
        "{}",
        out.stdout
    );
}

#[test]
fn cwd_is_created_and_the_environment_is_exactly_the_steps() {
    let f = Fixture::new();
    let mut spec =
        f.spec("pwd; printf '[%s]\\n' \"$B\"; env | grep -v '^and a line$' | sort; hostname");
    spec.cwd = "/work/dir".into();
    spec.env = vec![
        ("A".into(), "1".into()),
        ("B".into(), "two words\nand a line".into()),
        ("A".into(), "3".into()),
    ];
    spec.hostname = "builder-7".into();
    let out = f.run_spec(&spec).unwrap();
    out.assert_success();
    let expected = format!(
        "/work/dir\n[two words\nand a line]\nA=3\nB=two words\nHOME=/root\nHOSTNAME=builder-7\nPATH={DEFAULT_PATH}\nPWD=/work/dir\nSHLVL=1\nbuilder-7\n"
    );
    assert_eq!(out.stdout, expected);
    assert!(f.upper.join("work/dir").is_dir());
}

#[test]
fn a_background_process_does_not_survive_the_step() {
    let f = Fixture::new();
    let n = unique_number().to_string();
    let out = f.run(&format!("sleep {n} >/dev/null 2>&1 & echo started"));
    out.assert_success();
    assert_eq!(out.stdout, "started\n");
    assert_eq!(host_processes_running(&["sleep", &n]), Vec::<u32>::new());
}

#[test]
fn the_time_limit_kills_the_step_and_says_so() {
    let f = Fixture::new();
    let n = unique_number().to_string();
    let mut spec = f.spec(&format!("echo before; sleep {n}; echo after"));
    spec.timeout = Some(Duration::from_millis(1500));
    let out = f.run_spec(&spec).unwrap();
    assert_eq!(
        out.outcome.exit,
        ExitKind::TimedOut(Duration::from_millis(1500))
    );
    assert_eq!(out.stdout, "before\n");
    assert!(out.outcome.duration < Duration::from_secs(60));
    assert_eq!(host_processes_running(&["sleep", &n]), Vec::<u32>::new());
}

#[test]
fn a_missing_command_is_reported_by_name() {
    let f = Fixture::new();
    let spec = RunSpec::new(f.overlay(), vec!["/bin/nope".into(), "x".into()]);
    let err = f.run_spec(&spec).err().unwrap();
    assert_eq!(err.to_string(), "command not found in image: /bin/nope");
    let spec = RunSpec::new(f.overlay(), vec!["nope".into()]);
    let err = f.run_spec(&spec).err().unwrap().to_string();
    assert!(
        err.starts_with("command not found in image: nope (searched PATH="),
        "{err}"
    );
}

#[test]
fn an_unknown_user_is_reported_by_name() {
    let f = Fixture::new();
    let mut spec = f.spec("true");
    spec.user = Some("ghost".into());
    let err = f.run_spec(&spec).err().unwrap().to_string();
    assert!(
        err.contains("ghost") && err.contains("/etc/passwd"),
        "{err}"
    );
}

#[test]
fn a_single_mapping_runs_root_steps_and_refuses_others_clearly() {
    let f = Fixture::with_ids(IdMapping::single());
    let out = f.run("id -u; touch /x");
    out.assert_success();
    assert_eq!(out.stdout, "0\n");
    assert_eq!(fs::metadata(f.upper.join("x")).unwrap().uid(), 0);

    let mut spec = f.spec("true");
    spec.user = Some("1000".into());
    let err = f.run_spec(&spec).err().unwrap().to_string();
    assert!(
        err.starts_with("step needs uid 1000 but this build maps a single id"),
        "{err}"
    );
    assert!(err.contains("/etc/subuid"), "{err}");
}

#[test]
fn copy_mode_changes_the_copy_and_busybox_installs_inside() {
    require_root_and_busybox();
    let tmp = private_tempdir();
    let base = tmp.path().join("base");
    build_busybox_image(&base, false);
    let ids = IdMapping::range(BASE, BASE, 65_536);
    shift_ownership(&base, &ids).unwrap();
    let root = tmp.path().join("root");
    copy_tree(&base, &root).unwrap();

    let spec = RunSpec::new(
        RootfsSpec::Copy { root: root.clone() },
        sh("/bin/busybox --install -s /bin && ls /bin | grep -c . && echo hi > /hello"),
    );
    let out = capture(&spec, &ids).unwrap();
    out.assert_success();
    assert!(!out.outcome.used_overlay);
    let applets: u32 = out.stdout.lines().next().unwrap().parse().unwrap();
    assert!(applets > 100, "{}", out.stdout);
    assert_eq!(fs::read_to_string(root.join("hello")).unwrap(), "hi\n");
    assert!(!base.join("hello").exists() && !base.join("bin/ls").exists());
    assert_eq!(
        fs::read_link(root.join("bin/ls")).unwrap(),
        Path::new("/bin/busybox")
    );

    // The installed applets work as commands in the next step.
    let spec = RunSpec::new(
        RootfsSpec::Copy { root },
        vec!["ls".into(), "/hello".into()],
    );
    let out = capture(&spec, &ids).unwrap();
    out.assert_success();
    assert_eq!(out.stdout, "/hello\n");
}

#[test]
fn overlay_is_supported_here() {
    let f = Fixture::new();
    let scratch = f.tmp.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    probe_overlay(Some(&helper()), &scratch, &f.ids).unwrap();
    assert!(overlay_supported(Some(&helper()), &scratch, &f.ids));
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        0,
        "probe left files behind"
    );
}

#[test]
fn a_helper_that_does_not_speak_the_protocol_is_reported() {
    let f = Fixture::new();
    let err = run(
        &f.spec("true"),
        &f.ids,
        Some(Path::new("/bin/true")),
        |_, _| {},
    )
    .err()
    .unwrap();
    assert!(matches!(err, SandboxError::NoReport { .. }), "{err}");
    assert!(err.to_string().contains("reexec_main"), "{err}");
}

#[test]
fn the_host_network_mode_gets_the_hosts_resolver_files_read_only() {
    let f = Fixture::new();
    let mut spec = f.spec("cat /etc/hosts 2>/dev/null; echo x >> /etc/hosts && echo wrote; true");
    spec.network = Network::Host;
    let out = f.run_spec(&spec).unwrap();
    out.assert_success();
    match fs::read_to_string("/etc/hosts") {
        Ok(host) => {
            assert_eq!(out.stdout, host);
            assert!(
                out.outcome
                    .created_mountpoints
                    .contains(&"/etc/hosts".to_owned())
            );
        }
        Err(_) => assert_eq!(out.stdout, "wrote\n"),
    }
}

/// Plays the host by hand: starts stage 1 from `exe` (as `uid`, if given)
/// and sends it `job`. Maps written by stage 1 itself only.
fn start_stage1_by_hand(exe: &Path, job: &Job, uid: Option<u32>) -> (Child, UnixStream) {
    assert_eq!(job.ids.writer(), MapWriter::Child);
    let (mut ctrl, child_end) = UnixStream::pair().unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg(REEXEC_ARG)
        .stdin(Stdio::from(OwnedFd::from(child_end)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let stage1 = cmd.spawn().unwrap();
    Message::Job(Box::new(job.clone()))
        .write_to(&mut ctrl)
        .unwrap();
    (stage1, ctrl)
}

#[test]
fn a_step_ends_when_the_host_goes_away() {
    // Start a step, wait until the command runs, then close the control
    // socket as a dying host would.
    let f = Fixture::with_ids(IdMapping::single());
    let n = unique_number().to_string();
    let job = Job {
        spec: f.spec(&format!("echo started; sleep {n}; echo not-reached")),
        ids: f.ids.clone(),
        host_pid: std::process::id(),
        probe: false,
        rlimits: true,
    };
    let (mut stage1, ctrl) = start_stage1_by_hand(&helper(), &job, None);
    let mut stdout = BufReader::new(stage1.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");

    drop(ctrl);
    // Stage 1 exits (unable to report to anyone) once the step is gone.
    stage1.wait().unwrap();
    assert_eq!(host_processes_running(&["sleep", &n]), Vec::<u32>::new());
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "", "the step went on after the host left");
}

#[test]
fn an_unprivileged_builder_runs_steps_with_a_single_id() {
    // A builder running as `nobody` (65534): stage 1 cannot use a
    // privileged mount namespace, maps its own id, and stages the rootfs
    // from inside the user namespace.
    require_root_and_busybox();
    const NOBODY: u32 = 65_534;
    let ids = IdMapping::single_for(NOBODY, NOBODY);
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // The helper where `nobody` may execute it, wherever the build tree is.
    let exe = tmp.path().join("strata");
    fs::copy(helper(), &exe).unwrap();
    let lower = tmp.path().join("lower");
    build_busybox_image(&lower, true);
    shift_ownership(&lower, &ids).unwrap();
    let rootfs = prepare_overlay(&tmp.path().join("rw"), vec![lower], &ids).unwrap();
    // The scratch directory is the builder's: here, nobody's.
    lchown(tmp.path().join("rw"), Some(NOBODY), Some(NOBODY)).unwrap();
    let job = Job {
        spec: RunSpec::new(rootfs, sh("id -u; cat /proc/self/uid_map; echo hi > /x")),
        ids,
        host_pid: std::process::id(),
        probe: false,
        rlimits: true,
    };
    let (mut stage1, mut ctrl) = start_stage1_by_hand(&exe, &job, Some(NOBODY));
    let mut reports = Vec::new();
    while let Some(m) = Message::read_from(&mut ctrl).unwrap() {
        reports.push(m);
    }
    let mut stdout = String::new();
    stage1
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    stage1
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stage1.wait().unwrap().success(), "{reports:?} {stderr}");
    assert!(
        reports.contains(&Message::Exited(CommandExit::Code(0))),
        "{reports:?} {stderr}"
    );
    let map: Vec<&str> = stdout.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(stdout.lines().next(), Some("0"));
    assert_eq!(map, ["0", "65534", "1"]);
    let x = fs::metadata(tmp.path().join("rw/rw/upper/x")).unwrap();
    assert_eq!((x.uid(), x.gid()), (NOBODY, NOBODY));
}

/// The environment variable that turns [`builder_in_a_terminal`] on: the
/// path of the terminal to take as its controlling one.
const TERMINAL_VAR: &str = "STRATA_TEST_TERMINAL";

#[test]
fn a_step_cannot_type_into_the_builders_terminal() {
    // The bubblewrap CVE-2017-5226 class: a builder started from a shell
    // runs a step; the step pushes "echo INJECTED\n" into the builder's
    // terminal with TIOCSTI, and the user's shell would run it next. Here
    // the terminal is a pty, the builder a child of this test with the
    // pty as its controlling terminal, and what the shell would read is
    // read by that child after the step.
    require_root_and_busybox();
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let terminal = ptsname(&master, Vec::new()).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "tests::builder_in_a_terminal",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TERMINAL_VAR, terminal.to_str().unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let typed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("typed into the terminal: "));
    assert_eq!(typed, Some("nothing"), "{stdout}");
    let results = probe_results(&stdout);
    assert_eq!(
        results.get("tty_nr").map(String::as_str),
        Some("0"),
        "no controlling terminal: {stdout}"
    );
    assert_eq!(
        results.get("open_tty").map(String::as_str),
        Some("errno 2"),
        "no /dev/tty in the step: {stdout}"
    );
    drop(master);
}

/// Not a test of its own: the builder of
/// [`a_step_cannot_type_into_the_builders_terminal`], with a terminal.
#[test]
#[ignore = "started by a_step_cannot_type_into_the_builders_terminal"]
fn builder_in_a_terminal() {
    let Some(path) = std::env::var_os(TERMINAL_VAR) else {
        return;
    };
    // A session of our own, with the pty as its controlling terminal, as a
    // login shell has.
    rustix::process::setsid().unwrap();
    let terminal = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    rustix::process::ioctl_tiocsctty(&terminal).unwrap();
    let f = Fixture::with_probe();
    let out = f.run_probe("tty");
    println!("step ended: {:?}", out.outcome.exit);
    print!("{}", out.stdout);
    // What the user's shell would read next.
    nix::fcntl::fcntl(
        &terminal,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut buf = [0u8; 256];
    match (&terminal).read(&mut buf) {
        Ok(n) => println!(
            "typed into the terminal: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            println!("typed into the terminal: nothing")
        }
        Err(e) => panic!("reading the terminal: {e}"),
    }
}

#[test]
fn under_a_seccomp_filter_the_setup_blames_it_for_the_calls_it_refuses() {
    // A step runs under the sandbox's own filter, which refuses these
    // calls whatever their arguments, as a container runtime's default
    // profile refuses them to the builder.
    let f = Fixture::with_probe();
    let out = f.run_probe("refusal");
    out.assert_success();
    let results = probe_results(&out.stdout);
    for call in ["unshare", "mount", "umount2", "keyctl"] {
        assert_eq!(
            results.get(&format!("refused_{call}")).map(String::as_str),
            Some("true"),
            "{call}: {}",
            out.stdout
        );
    }
}

#[test]
fn a_step_cannot_reach_the_builders_session_keyring() {
    let ours = probe::call(Call::SessionKeyring).unwrap();
    let f = Fixture::with_probe();
    let out = f.run(&format!("{}; cat /proc/keys", probe_cmd("keyring")));
    out.assert_success();
    let results = probe_results(&out.stdout);
    assert_eq!(
        results.get("session_keyring").map(String::as_str),
        Some(format!("errno {}", libc::EPERM).as_str()),
        "the builder's keyring is {ours}: {}",
        out.stdout
    );
    // Its own keyring is a fresh anonymous session keyring ("_ses"), and
    // the builder's is nowhere in sight.
    let keys: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(" keyring "))
        .collect();
    assert!(
        keys.iter().any(|l| l.contains(" _ses:")),
        "{keys:?}\n{}",
        out.stdout
    );
    let serial = format!("{ours:08x} ");
    assert!(!keys.iter().any(|l| l.starts_with(&serial)), "{keys:?}");
}

#[test]
fn a_step_runs_with_no_new_privs_and_the_seccomp_filter() {
    let f = Fixture::with_probe();
    let out = f.run(&format!(
        "grep -E '^(NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status; {}",
        probe_cmd("syscalls,own-pty")
    ));
    out.assert_success();
    let status: Vec<(&str, &str)> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(":\t"))
        .collect();
    assert_eq!(
        status,
        [
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
            ("Seccomp_filters", "2")
        ],
        "{}",
        out.stdout
    );
    let eperm = format!("errno {}", libc::EPERM);
    let enosys = format!("errno {}", libc::ENOSYS);
    let mut expected: BTreeMap<String, String> = [
        "session_keyring",
        "add_key",
        "perf_event_open",
        "userfaultfd",
        "mount",
        "clock_settime",
        "adjtimex",
        "read_implies_exec",
        "unshare_user",
        "tiocsti_own",
        "tiocsti_own_high_bits",
    ]
    .into_iter()
    .map(|k| (k.to_owned(), eperm.clone()))
    .collect();
    expected.insert("clone3".into(), enosys);
    // The step's own terminal works as a terminal: only injection is
    // refused.
    expected.insert("own_ctty".into(), "ok".into());
    assert_eq!(probe_results(&out.stdout), expected, "{}", out.stdout);
}

#[test]
fn a_system_call_through_another_abi_kills_the_step() {
    let f = Fixture::with_probe();
    for what in ["x32", "i386"] {
        let out = f.run_probe(what);
        assert_eq!(
            out.outcome.exit,
            ExitKind::Signal(libc::SIGSYS),
            "{what}: {}{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn the_outcome_says_what_confined_the_step() {
    let f = Fixture::new();
    let mut spec = f.spec("true");
    spec.limits = Limits {
        memory: Some(256 << 20),
        pids: Some(100),
        cpu_millis: Some(500),
    };
    let out = f.run_spec(&spec).unwrap();
    out.assert_success();
    let c = &out.outcome.confinement;
    assert!(c.no_terminal && c.no_new_privs);
    // This suite runs outside any container: nothing refuses keyctl.
    assert_eq!(c.keyring, crate::KeyringConfinement::Fresh);
    assert_eq!(c.seccomp, SECCOMP_PROFILE);
    assert_eq!(c.limits.memory, Some(256 << 20));
    assert_eq!(c.limits.pids, Some(100));
    match c.limits.mechanism {
        LimitMechanism::CgroupV1 | LimitMechanism::CgroupV2 => {
            assert_eq!(c.limits.cpu_millis, Some(500))
        }
        LimitMechanism::Rlimit => assert_eq!(c.limits.cpu_millis, None),
    }
    assert_eq!(out.outcome.limit_exceeded, None);

    let out = capture_with(&spec, &f.ids, LimitsBy::Rlimits).unwrap();
    out.assert_success();
    let limits = out.outcome.confinement.limits;
    assert_eq!(
        limits,
        AppliedLimits {
            mechanism: LimitMechanism::Rlimit,
            memory: Some(256 << 20),
            pids: Some(100),
            cpu_millis: None,
        }
    );
}

/// The directory of the step's cgroup for `controller`, from a line of its
/// `/proc/self/cgroup`, on this host's cgroup mounts.
fn cgroup_dir(proc_self_cgroup: &str, controller: &str) -> Option<PathBuf> {
    let path = proc_self_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = names.split(',').any(|n| n == controller) || names.is_empty();
        wanted.then_some(path)
    })?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v1 = !proc_self_cgroup
        .lines()
        .any(|l| l.starts_with("0::") && l.len() > 3)
        || proc_self_cgroup.lines().any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|n| n.split(',').any(|n| n == controller))
        });
    mountinfo.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        let point = before.split(' ').nth(4)?;
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let options = after.nth(1)?;
        let ok = if v1 {
            fstype == "cgroup" && options.split(',').any(|o| o == controller)
        } else {
            fstype == "cgroup2"
        };
        ok.then(|| Path::new(point).join(path.trim_start_matches('/')))
    })
}

#[test]
fn the_steps_cgroup_holds_its_limits_while_it_runs_and_is_gone_after() {
    let f = Fixture::new();
    let flag = f.lower.join("flag");
    fs::write(&flag, b"").unwrap();
    lchown(&flag, f.ids.host_uid(0), f.ids.host_gid(0)).unwrap();
    let mut spec =
        f.spec("cat /proc/self/cgroup; echo ---; until grep -q go /flag; do usleep 10000; done");
    spec.timeout = Some(Duration::from_secs(60));
    spec.limits = Limits {
        memory: Some(200 << 20),
        pids: Some(77),
        cpu_millis: Some(250),
    };
    let mut text = String::new();
    let mut seen: Option<Vec<(String, String)>> = None;
    let mut dirs = Vec::new();
    let outcome = run(&spec, &f.ids, Some(&helper()), |s, b| {
        if s == Stream::Stdout {
            text.push_str(&String::from_utf8_lossy(b));
        }
        if seen.is_none() && text.contains("---") {
            let mut read = |controller: &str, files: &[&str]| {
                let dir = cgroup_dir(&text, controller).unwrap();
                dirs.push(dir.clone());
                files
                    .iter()
                    .map(|file| {
                        let v = fs::read_to_string(dir.join(file)).unwrap_or_default();
                        (file.to_string(), v.trim().to_owned())
                    })
                    .collect::<Vec<_>>()
            };
            let mut values = read("memory", &["memory.limit_in_bytes", "memory.max"]);
            values.extend(read("pids", &["pids.max"]));
            values.extend(read("cpu", &["cpu.cfs_quota_us", "cpu.max"]));
            seen = Some(values);
            fs::write(&flag, b"go\n").unwrap();
        }
    })
    .unwrap();
    assert_eq!(outcome.exit, ExitKind::Code(0), "{text}");
    let mechanism = outcome.confinement.limits.mechanism;
    assert_ne!(
        mechanism,
        LimitMechanism::Rlimit,
        "as root, this host's cgroups should be used: {text}"
    );
    let seen: BTreeMap<String, String> = seen
        .unwrap()
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let expected: BTreeMap<String, String> = match mechanism {
        LimitMechanism::CgroupV1 => [
            ("memory.limit_in_bytes", "209715200"),
            ("pids.max", "77"),
            ("cpu.cfs_quota_us", "25000"),
        ],
        _ => [
            ("memory.max", "209715200"),
            ("pids.max", "77"),
            ("cpu.max", "25000 100000"),
        ],
    }
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(seen, expected, "{text}");
    for dir in dirs {
        assert!(
            dir.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("strata-step-")),
            "{}",
            dir.display()
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn a_step_over_its_memory_limit_is_killed_and_the_limit_named() {
    // Reading /dev/zero into memory, as the step that set off the host's
    // OOM killer did, with a limit far below what it reads.
    let f = Fixture::new();
    let mut spec = f.spec("echo start; dd if=/dev/zero of=/dev/null bs=256M count=1");
    spec.limits.memory = Some(64 << 20);
    let out = f.run_spec(&spec).unwrap();
    assert!(!out.outcome.exit.success(), "{:?}", out.outcome);
    assert_eq!(out.stdout, "start\n");
    match out.outcome.confinement.limits.mechanism {
        LimitMechanism::Rlimit => assert_eq!(out.outcome.limit_exceeded, None),
        _ => {
            assert_eq!(
                out.outcome.limit_exceeded,
                Some(LimitExceeded::Memory { limit: 64 << 20 }),
                "{:?} {}",
                out.outcome,
                out.stderr
            );
            assert_eq!(
                format!("RUN exceeded {}", out.outcome.limit_exceeded.unwrap()),
                "RUN exceeded its memory limit (64 MiB)"
            );
        }
    }

    // With rlimits, the allocation fails instead, and nothing can tell.
    let out = capture_with(&spec, &f.ids, LimitsBy::Rlimits).unwrap();
    assert!(!out.outcome.exit.success(), "{:?}", out.outcome);
    assert!(out.stderr.contains("memory"), "{}", out.stderr);
    assert_eq!(out.outcome.limit_exceeded, None);
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit() {
    let f = Fixture::new();
    let n = unique_number().to_string();
    let mut spec = f.spec(&format!(
        "i=0; while [ $i -lt 40 ]; do sleep {n} & i=$((i+1)); done; echo all-started"
    ));
    spec.limits.pids = Some(16);
    spec.timeout = Some(Duration::from_secs(60));
    for by in [LimitsBy::CgroupIfPossible, LimitsBy::Rlimits] {
        let out = capture_with(&spec, &f.ids, by).unwrap();
        assert!(!out.outcome.exit.success(), "{by:?}: {:?}", out.outcome);
        assert!(
            !out.stdout.contains("all-started"),
            "{by:?}: {}",
            out.stdout
        );
        assert!(out.stderr.contains("can't fork"), "{by:?}: {}", out.stderr);
        let expected = match out.outcome.confinement.limits.mechanism {
            LimitMechanism::Rlimit => None,
            _ => Some(LimitExceeded::Pids { limit: 16 }),
        };
        assert_eq!(out.outcome.limit_exceeded, expected, "{by:?}");
        assert_eq!(host_processes_running(&["sleep", &n]), Vec::<u32>::new());
    }
}

fn capture_with(spec: &RunSpec, ids: &IdMapping, by: LimitsBy) -> Result<Captured, SandboxError> {
    let mut chunks = Vec::new();
    let outcome = run_with(
        spec,
        ids,
        Some(&helper()),
        |s, b| chunks.push((s, b.to_vec())),
        by,
    )?;
    let text = |which| {
        let bytes: Vec<u8> = chunks
            .iter()
            .filter(|(s, _)| *s == which)
            .flat_map(|(_, b)| b.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok(Captured {
        stdout: text(Stream::Stdout),
        stderr: text(Stream::Stderr),
        outcome,
        chunks,
    })
}
