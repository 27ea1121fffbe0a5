//! The Strata cache server: the store engine ([`store`]) and the gRPC
//! services over it ([`service`]).
//!
//! The engine knows nothing of gRPC; the services know nothing of segment
//! files. [`serve`] wires them onto a listener with explicit limits, health
//! and reflection, and a graceful shutdown; [`Tokens`] and [`ServerTls`]
//! decide who may reach it and how.

pub mod embedded;
pub mod service;
pub mod store;

pub use embedded::EmbeddedServer;
pub use service::auth::{Scope, Scopes, TokenFileError, Tokens, add_token};
pub use service::tls::{ServerTls, TlsError};
pub use service::{ServerConfig, serve, serve_incoming};
pub use store::{FsyncPolicy, RecordOutcome, Store, StoreConfig, StoreError};
