//! Strata's benchmark tooling: deterministic input data, a corpus of image
//! builds, and the load generator behind `strata bench` (push, pull,
//! lookup, dedup, sweep), each figure beside a baseline measured in the
//! same run. The criterion micro-benches in `benches/` use the same data.
//!
//! Map: [`data`] (PRNG, noise, layer-like bytes), [`corpus`] (builds of an
//! image), [`stats`] (spreads, percentiles), [`tools`] (the `b3sum` and
//! `zstd` baselines), [`server`] (remote or fresh local server), [`run`]
//! (what modes share), [`delay`] (a loopback link with a round trip time), [`modes`] (one file per mode), [`plot`] (the sweep
//! chart), [`cli`] (flags and dispatch).

pub mod cli;
pub mod corpus;
pub mod data;
pub mod delay;
pub mod modes;
pub mod plot;
pub mod run;
pub mod server;
pub mod stats;
pub mod tools;

pub use cli::{BenchArgs, run as run_cli};
pub use data::{random_bytes, realistic_corpus};
