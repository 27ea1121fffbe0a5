//! A one-line progress display on stderr for long transfers, shown only
//! when stderr is a terminal (logs and pipes get no control characters).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use strata_client::human_bytes;

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
