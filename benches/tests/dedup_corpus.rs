//! The dedup promise on the generated corpus, through a real loopback
//! server: after the first build, each build sends a small fraction of its
//! bytes. Asserts ratios, never timings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use strata_benches::corpus::{BaseSource, CorpusSpec};
use strata_benches::modes::dedup;
use strata_benches::run::BenchContext;
use strata_benches::server::ServerChoice;
use strata_client::ClientConfig;
use strata_server::FsyncPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_builds_send_a_small_fraction_of_their_bytes() {
    let mut ctx = BenchContext::new(
        ServerChoice::Local {
            fsync: FsyncPolicy::Never,
        },
        ClientConfig::default(),
        Duration::from_secs(600),
    );
    ctx.progress = false;
    let spec = CorpusSpec::sized(3, 6, 12 << 20, BaseSource::Synthetic);
    let (report, notes) = dedup::run(&ctx, spec).await.unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(report.builds.len(), 6);

    let first = &report.builds[0];
    assert!(
        first.sent_fraction > 0.3,
        "the first build is new: sent {:.3} of it",
        first.sent_fraction
    );
    assert!(first.dedup_ratio < 1.2, "{first:?}");
    for b in &report.builds[1..] {
        assert!(
            b.sent_fraction < 0.08,
            "build {} sent {:.3} of its bytes",
            b.build,
            b.sent_fraction
        );
        assert!(b.dedup_ratio > 8.0, "build {}: {b:?}", b.build);
        assert!(b.stored_bytes > 0, "every build changes something");
    }
    assert!(report.overall_ratio > 3.0, "{}", report.overall_ratio);
}
