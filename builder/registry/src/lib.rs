//! An OCI Distribution client for Strata's builder: `FROM` images pulled
//! from registries, built images pushed to them.
//!
//! The builder calls, in order:
//! 1. [`RegistryClient::resolve`]: a reference (`debian:bookworm`,
//!    `HOST:PORT/REPO@sha256:…`) becomes a [`ResolvedImage`]: the platform
//!    manifest's digest to pin in step keys, the verified config JSON, and
//!    the layers (media type, digest, size, compression, `diff_id`).
//! 2. [`RegistryClient::open_blob`] / [`RegistryClient::fetch_blob`] /
//!    [`RegistryClient::fetch_blob_to_file`]: a layer's bytes, size and
//!    digest checked as they pass.
//! 3. [`RegistryClient::push_image`]: blobs (skipped if present, mounted
//!    across repositories where allowed), config, manifest, tag.
//!
//! Beside images, `ADD <url>` sources: [`fetch_url_to_file`] fetches one,
//! checked against the SHA-256 its `--checksum` pins.
//!
//! The protocol itself (auth flows, blob transfer, uploads) is ORAS's
//! `oci-client`; see `client.rs` for what is done beside it and why.
//!
//! *Invariant:* every byte handed on is verified against its digest — a
//! stream ends cleanly only after its last byte verified; a manifest or
//! config is returned only verified.

mod client;
mod credentials;
mod digest;
mod endpoint;
mod error;
mod manifest;
mod options;
mod platform;
mod pull;
mod push;
mod url;

pub use client::RegistryClient;
pub use digest::BlobDigest;
pub use endpoint::DOCKER_HUB_HOST;
pub use error::RegistryError;
pub use manifest::{
    Compression, DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Descriptor, Layer,
    OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, layer_compression,
};
pub use options::{
    Credential, DEFAULT_MAX_CONFIG_BYTES, DEFAULT_MAX_MANIFEST_BYTES, RegistryOptions, is_loopback,
};
pub use platform::Platform;
pub use pull::{BlobStream, ResolvedImage};
pub use push::{ImageToPush, LayerToPush, PushReport};
pub use url::{UrlError, fetch_url_to_file};
