//! The store's errors, in the store's terms. The service layer maps each
//! variant to exactly one gRPC status; nothing here knows about gRPC.

use std::path::PathBuf;

use strata_proto::{Digest, ManifestError, PublicKey, SignatureError, StepError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {path} is in use by another strata process")]
    Locked { path: PathBuf },
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("index error: {0}")]
    Index(#[from] sled::Error),
    #[error("i/o error on {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The disk (or the user's quota on it) is full. Nothing of the write
    /// that met it was kept; writes succeed again once space is freed.
    #[error("no space left on the store's disk: {what}: {source}")]
    StorageFull {
        what: String,
        source: std::io::Error,
    },
    #[error("chunk {0} is not in the store")]
    ChunkNotFound(Digest),
    #[error("manifest {0} is not in the store")]
    ManifestNotFound(Digest),
    #[error("manifest names chunk {digest} (entry {index}), which is not in the store")]
    ManifestIncomplete { digest: Digest, index: usize },
    #[error(
        "manifest names chunk {digest} (entry {index}) with length {claimed}, but the store holds it with length {stored}"
    )]
    ManifestLengthMismatch {
        digest: Digest,
        index: usize,
        claimed: u32,
        stored: u32,
    },
    #[error(transparent)]
    BadManifest(#[from] ManifestError),
    #[error("integrity error: {what} {digest} is corrupt on disk ({detail})")]
    Corrupt {
        what: &'static str,
        digest: Digest,
        detail: String,
    },
    #[error(transparent)]
    BadStepResult(#[from] StepError),
    #[error("step result for key {key} names layer {layer}, which is not in the store")]
    StepLayerMissing { key: Digest, layer: Digest },
    #[error(transparent)]
    StepDivergence(Box<StepDivergence>),
    #[error("tag {name:?} is invalid: {why}")]
    BadTag { name: String, why: String },
    #[error(transparent)]
    TagStale(Box<TagStale>),
    #[error(transparent)]
    BadSignature(#[from] SignatureError),
    #[error("tag {name:?} would name object {digest}, which is not in the store")]
    TagTargetMissing { name: String, digest: Digest },
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error(
        "a size cap of {asked} bytes is too small: the index and one segment alone come near it; \
         use at least {minimum} bytes ({} MiB)", .minimum >> 20
    )]
    CapTooSmall { asked: u64, minimum: u64 },
    /// Everything that could be evicted has been, and what is left is in
    /// use (leased by uploads or used within a lease): the write waits no
    /// longer. Nothing of it was kept.
    #[error(
        "the store is at its size cap ({used} of {cap} bytes) and all it holds is in use; \
         the write was not stored: retry later, or raise --max-bytes"
    )]
    CapReached { used: u64, cap: u64 },
}

impl StoreError {
    /// An I/O error on `what`; a full disk is told apart, since it is the
    /// one I/O error a client can do something about (wait, or free space).
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        let what = what.into();
        if is_storage_full(&source) {
            StoreError::StorageFull { what, source }
        } else {
            StoreError::Io { what, source }
        }
    }

    /// Whether this error is a full disk, in the segments or in the index.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::StorageFull { .. } => true,
            StoreError::Index(sled::Error::Io(e)) => is_storage_full(e),
            _ => false,
        }
    }

    /// The error to give each job of a commit group that failed with
    /// `self` (an `io::Error` cannot be cloned): its class and its text.
    pub(crate) fn for_each_waiter(&self) -> Self {
        let what = "committing a write group".to_string();
        let source = std::io::Error::other(self.to_string());
        if self.is_storage_full() {
            StoreError::StorageFull { what, source }
        } else {
            StoreError::Io { what, source }
        }
    }
}

/// `ENOSPC` and `EDQUOT`.
pub(super) fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// A signer's second, different result under a step key (boxed in
/// [`StoreError`]: it is large and rare).
#[derive(Debug, thiserror::Error)]
#[error(
    "signer {signer} already recorded a different result under step key {key} \
     (layer {recorded}, offered {offered}); their first result stands and this divergence \
     was counted"
)]
pub struct StepDivergence {
    pub key: Digest,
    pub signer: PublicKey,
    pub recorded: String,
    pub offered: String,
}

/// A signed tag change older than the one its signer already set.
#[derive(Debug, thiserror::Error)]
#[error(
    "signer {signer} set tag {name:?} at {stored_ms} ms since the epoch; this change was \
     signed earlier ({offered_ms} ms) and would roll it back, so it is refused"
)]
pub struct TagStale {
    pub name: String,
    pub signer: PublicKey,
    pub offered_ms: i64,
    pub stored_ms: i64,
}
