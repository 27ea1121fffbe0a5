//! A Docker daemon of the test's own (Debian's docker.io), for tests that
//! run the builder in a container: its data, state, socket and pid file in
//! a temporary directory, no bridge and no iptables rules (containers run
//! with `--network none`), no `/etc/docker/daemon.json`. It is stopped by
//! its PID when the test ends, passing or failing. A missing `dockerd`
//! fails the test saying how to install it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::builds::need;

/// How long the daemon may take to start serving its API.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop on SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `dockerd`.
pub struct Dockerd {
    child: Child,
    socket: PathBuf,
    log: Arc<Mutex<String>>,
    // Last: removed after the daemon has stopped.
    _dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts `dockerd` and waits until it serves its API.
    pub fn start() -> Dockerd {
        let dockerd = find_dockerd();
        need("docker", "docker.io");
        // Short: the socket paths under it must fit in a sockaddr_un.
        let dir = tempfile::Builder::new()
            .prefix("sd")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("docker.sock");
        let config = dir.path().join("daemon.json");
        std::fs::write(&config, "{}\n").unwrap();
        let mut child = Command::new(dockerd)
            .arg("--bridge=none")
            .arg("--iptables=false")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--config-file")
            .arg(&config)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dockerd");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready, listening) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut ready = Some(ready);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("API listen on")
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let daemon = Dockerd {
            child,
            socket,
            log,
            _dir: dir,
        };
        assert!(
            listening.recv_timeout(START_TIMEOUT).is_ok(),
            "dockerd did not start serving within {START_TIMEOUT:?} (it needs root); its log:\n{}",
            daemon.log()
        );
        daemon
    }

    /// The `docker` client, talking to this daemon.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        cmd
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, so that it stops its containerd and unmounts its layers;
    /// SIGKILL if it has not stopped in time.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `dockerd` on the PATH, or where Debian puts it (`/usr/sbin`, which a
/// non-root PATH lacks); fails saying how to install it.
fn find_dockerd() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("dockerd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs Docker's daemon `dockerd`: apt-get install docker.io \
                 (scripts/test installs it, through scripts/ensure-tools)"
            )
        })
}
