//! The client's errors, in the user's terms: unreachable server, unknown
//! digest, integrity failure, stalled server, refused request, local I/O.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("server unavailable during {what}: {message}")]
    Unavailable { what: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("integrity error: {0}")]
    Integrity(String),
    #[error("the server sent nothing for {after:?} during {what}: it is stalled")]
    Timeout {
        what: &'static str,
        after: std::time::Duration,
    },
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    #[error("the server refused {what}: {message}")]
    Refused { what: &'static str, message: String },
    #[error("{what} failed: {code:?}: {message}")]
    Rpc {
        what: &'static str,
        code: Code,
        message: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// Classifies a failed call to `what`.
    pub fn from_status(what: &'static str, s: Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            Code::NotFound => ClientError::NotFound(message),
            Code::DataLoss => ClientError::Integrity(message),
            Code::Unavailable => ClientError::Unavailable { what, message },
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::OutOfRange => ClientError::Refused { what, message },
            code => ClientError::Rpc {
                what,
                code,
                message,
            },
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            what: what.into(),
            source,
        }
    }
}

/// An error and its sources on one line: transport errors hide the useful
/// part ("connection refused") in their source chain.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
