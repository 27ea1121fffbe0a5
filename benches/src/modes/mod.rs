//! The `strata bench` modes, one file each.

pub mod dedup;
pub mod lookup;
pub mod remote_build;
pub mod sweep;
pub mod transfer;
