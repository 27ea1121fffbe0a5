//! Starting a transfer again while the server is unavailable (restarting,
//! or the connection broke): every step of a push or pull is idempotent —
//! chunks and manifests are content-addressed, so what the server stored
//! before the break is found, not sent again — and a pull writes to a
//! temporary file or buffer it starts afresh. Only [`ClientError::is_transient`]
//! failures are retried; a refusal or an integrity error never is.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{Client, ClientError, Progress};

/// The first wait before a retry; each further wait doubles it, up to
/// [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(5);

impl Client {
    /// Runs `attempt` until it succeeds, fails for good, or has failed for
    /// longer than the configured `retry_for`, waiting between tries;
    /// `progress` restarts with each try.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        progress: &Progress,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut wait = FIRST_WAIT;
        let mut first_failure: Option<Instant> = None;
        loop {
            match attempt().await {
                Err(e) if e.is_transient() => {
                    let since = *first_failure.get_or_insert_with(Instant::now);
                    let spent = since.elapsed();
                    if spent + wait > self.config.retry_for {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, ?wait, ?spent,
                        "the server is unavailable during {what}; starting it again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(LONGEST_WAIT);
                    progress.restart();
                }
                result => return result,
            }
        }
    }
}
