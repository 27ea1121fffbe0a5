//! Strata's wire contract: the generated gRPC code for `strata.v1` and the
//! few types both ends must agree on byte for byte — the content digest, the
//! chunk codec, the canonical manifest encoding that gives an object its
//! address, the stored forms of a build step's result and of a tag, and the
//! signatures that say who wrote them.
//!
//! This crate does no I/O. It is the lowest crate of the workspace, so a type
//! that crosses crates is defined here, once.

pub mod chunk;
pub mod digest;
pub mod manifest;
pub mod signing;
pub mod step;
pub mod tag;

pub use chunk::{ChunkDecoder, ChunkEncoder, ChunkError, Codec, with_thread_decoder};
pub use digest::{Digest, DigestError};
pub use manifest::{ChunkRef, Manifest, ManifestError, content_key, oci_digest};
pub use signing::{PublicKey, Seal, SignatureError, SigningKey};
pub use step::{MAX_STEP_RESULT_BYTES, StepError, StepResult};
pub use tag::{SignedTag, TagError};

/// Code generated from `strata/v1/store.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("strata.v1");
}

/// The encoded `FileDescriptorSet` of the protocol, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/strata_descriptor.bin"));

/// Largest decoded chunk either end accepts. FastCDC's maximum at the
/// largest supported average (1 MiB) is 4 MiB; anything bigger is refused.
pub const MAX_CHUNK_BYTES: u32 = 4 << 20;
