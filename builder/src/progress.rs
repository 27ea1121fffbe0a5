//! A one-line progress display on stderr for long transfers, shown only
//! when stderr is a terminal (logs and pipes get no control characters).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_client::Progress;

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(250);
/// Transfers shorter than this never draw anything.
const QUIET_START: Duration = Duration::from_millis(500);

/// Draws `progress` until dropped.
pub struct ProgressLine {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ProgressLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressLine").finish_non_exhaustive()
    }
}

impl ProgressLine {
    /// Starts drawing `verb` progress, if stderr is a terminal.
    pub fn start(verb: &'static str, progress: Arc<Progress>) -> ProgressLine {
        if !std::io::stderr().is_terminal() {
            return ProgressLine {
                stop: None,
                task: None,
            };
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut drawn = false;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(TICK) => {}
                }
                if start.elapsed() < QUIET_START {
                    continue;
                }
                drawn = true;
                let line = render(verb, &progress, start.elapsed());
                let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
            }
            if drawn {
                let _ = write!(std::io::stderr(), "\r\x1b[2K");
            }
        });
        ProgressLine {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Erases the line.
    pub async fn finish(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.take().map(|s| s.send(()));
    }
}

fn render(verb: &str, progress: &Progress, elapsed: Duration) -> String {
    let done = progress.done();
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    match progress.total() {
        Some(total) => format!(
            "{verb} {} / {} ({:.0}%)  {}/s",
            human_bytes(done),
            human_bytes(total),
            100.0 * done as f64 / total as f64,
            human_bytes(rate as u64)
        ),
        None => format!(
            "{verb} {}  {}/s",
            human_bytes(done),
            human_bytes(rate as u64)
        ),
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
