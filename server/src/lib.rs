//! The Strata cache server: the store engine ([`store`]) and the gRPC
//! services over it ([`service`]).
//!
//! The engine knows nothing of gRPC; the services know nothing of segment
//! files. [`serve`] wires them onto a listener with explicit limits, health
//! and reflection, and a graceful shutdown.

pub mod embedded;
pub mod service;
pub mod store;

pub use embedded::EmbeddedServer;
pub use service::{ServerConfig, serve, serve_incoming};
pub use store::{FsyncPolicy, RecordOutcome, Store, StoreConfig, StoreError};
