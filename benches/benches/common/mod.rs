//! Settings shared by every criterion bench file.

/// Few samples, short runs: the machine has two cores and the whole suite
/// should take minutes. Command-line flags still override them.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(5))
}
