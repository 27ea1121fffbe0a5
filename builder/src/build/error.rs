//! Why a build failed: one variant per source, each wrapping its cause
//! (`#[source]`) instead of flattening it, so the CLI prints the chain once
//! and a caller can still ask what went wrong.

use strata_client::ClientError;
use strata_dockerfile::ParseError;
use strata_layer::LayerError;
use strata_sandbox::SandboxError;

use crate::blob::BlobError;
use crate::context::ContextError;
use crate::oci::OciError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The build was asked for something the Dockerfile does not have
    /// (`--target` of no stage).
    #[error("{0}")]
    Usage(String),
    /// A step cannot be planned or run; `message` says why in the user's
    /// terms, at the Dockerfile line.
    #[error("{file}:{line}: {message}")]
    Step {
        file: String,
        line: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: RUN failed with {exit}\n--- last output ---\n{tail}--- nothing was recorded for this step ---{hint}"
    )]
    RunFailed {
        file: String,
        line: usize,
        exit: String,
        tail: String,
        /// What to do about it, when the output says (empty otherwise).
        hint: String,
        code: i32,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("{what}: {source}")]
    Cache {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("{what}: {source}")]
    Layer {
        what: String,
        #[source]
        source: LayerError,
    },
    /// A layer blob that is not what its image says (digest, size,
    /// diff_id) or cannot be decompressed; `what` names the layer.
    #[error("{what}: {source}")]
    Blob {
        what: String,
        #[source]
        source: BlobError,
    },
    #[error("{what}: {source}")]
    Oci {
        what: &'static str,
        #[source]
        source: OciError,
    },
    /// The image could not be pushed to `--output registry://TARGET`.
    #[error("pushing the image to {target}: {message}")]
    Push { target: String, message: String },
    #[error("{what}: {source}")]
    Sandbox {
        what: &'static str,
        #[source]
        source: SandboxError,
    },
}

impl BuildError {
    /// The exit status the CLI should end with: a failed RUN's own.
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::RunFailed { code, .. } => *code,
            _ => 1,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
        let what = what.into();
        move |source| BuildError::Io { what, source }
    }

    pub(crate) fn cache(what: &'static str) -> impl FnOnce(ClientError) -> BuildError {
        move |source| BuildError::Cache { what, source }
    }

    pub(crate) fn oci(what: &'static str) -> impl FnOnce(OciError) -> BuildError {
        move |source| BuildError::Oci { what, source }
    }

    pub(crate) fn sandbox<E: Into<SandboxError>>(
        what: &'static str,
    ) -> impl FnOnce(E) -> BuildError {
        move |source| BuildError::Sandbox {
            what,
            source: source.into(),
        }
    }
}

/// A Dockerfile line, for errors that point at it.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    pub file: String,
    pub line: usize,
}

impl Site {
    pub fn error(&self, message: impl Into<String>) -> BuildError {
        BuildError::Step {
            file: self.file.clone(),
            line: self.line,
            message: message.into(),
        }
    }
}
