//! The Strata cache server: the store engine ([`store`]), the gRPC
//! services over it ([`service`]), and what they count as they serve
//! ([`metrics`], with its `/metrics` endpoint).
//!
//! The engine knows nothing of gRPC; the services know nothing of segment
//! files. [`serve`] wires them onto a listener with explicit limits, health
//! and reflection, and a graceful shutdown; [`Tokens`] and [`ServerTls`]
//! decide who may reach it and how.

pub mod embedded;
pub mod metrics;
pub mod service;
pub mod store;

pub use embedded::EmbeddedServer;
pub use metrics::Metrics;
pub use metrics::http::serve_metrics;
pub use service::auth::{Scope, Scopes, TokenFileError, Tokens, add_token};
pub use service::tls::{ServerTls, TlsError};
pub use service::{ServerConfig, serve, serve_incoming};
pub use store::{FsyncPolicy, RecordOutcome, Store, StoreConfig, StoreError};
