//! The `strata` command's library side: where the cache is (a named server
//! or the embedded store), and how long transfers show progress. The image
//! builder will live here too.

pub mod context;
pub mod dockerfile;
pub mod image;
pub mod key;
pub mod layer;
pub mod oci;
pub mod progress;
pub mod target;
