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
    #[error("the server did not accept our credentials for {what}: {message}")]
    Unauthenticated { what: &'static str, message: String },
    #[error("the server denied {what}: {message}")]
    PermissionDenied { what: &'static str, message: String },
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
        // No answer at all (the connection broke, the server went away):
        // unavailable, whatever code the transport put on it.
        if is_transport_failure(&s) {
            return ClientError::Unavailable {
                what,
                message: status_chain(&s),
            };
        }
        let message = s.message().to_owned();
        match s.code() {
            Code::NotFound => ClientError::NotFound(message),
            Code::DataLoss => ClientError::Integrity(message),
            Code::Unavailable => ClientError::Unavailable { what, message },
            Code::Unauthenticated => ClientError::Unauthenticated { what, message },
            Code::PermissionDenied => ClientError::PermissionDenied { what, message },
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

    /// Whether trying again may succeed: the server was unavailable, not
    /// refusing or lying.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable { .. } | ClientError::Unreachable { .. }
        )
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Why a connection failed, with a hint when the likely cause is a
/// mismatch of TLS and plain HTTP between client and server.
pub(crate) fn unreachable_reason(e: &(dyn std::error::Error + 'static), tls: bool) -> String {
    with_scheme_hint(chain(e), tls)
}

/// `reason`, with a hint at the TLS/plain mismatch unless the reason is
/// plainly something else (nothing listening, an untrusted certificate).
pub(crate) fn with_scheme_hint(reason: String, tls: bool) -> String {
    let refused = reason.contains("onnection refused");
    let certificate = reason.contains("certificate") || reason.contains("Certificate");
    if refused || certificate {
        return reason;
    }
    if tls {
        format!("{reason} (is the server serving TLS? for a plain server use http://)")
    } else {
        format!("{reason} (if the server uses TLS, use an https:// URL)")
    }
}

/// Whether a failed call failed in the transport (no gRPC answer came)
/// rather than being answered with a status by the server.
pub(crate) fn is_transport_failure(s: &Status) -> bool {
    use std::error::Error;
    s.source().is_some()
}

/// A status and the transport errors behind it, on one line.
pub(crate) fn status_chain(s: &Status) -> String {
    use std::error::Error;
    let mut out = s.message().to_owned();
    let mut source = s.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = e.source();
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unavailable_server_is_worth_trying_again() {
        for code in [
            Code::NotFound,
            Code::DataLoss,
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::AlreadyExists,
            Code::Internal,
            Code::Unknown,
        ] {
            let e = ClientError::from_status("pull", Status::new(code, "no"));
            assert!(!e.is_transient(), "{code:?}: {e}");
        }
        let e = ClientError::from_status("pull", Status::unavailable("restarting"));
        assert!(e.is_transient(), "{e}");
        // No answer at all, whatever code the transport chose: unavailable.
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        let e = ClientError::from_status("push", broken);
        assert!(
            matches!(e, ClientError::Unavailable { .. }) && e.is_transient(),
            "{e}"
        );
        assert!(!ClientError::Integrity("bad chunk".into()).is_transient());
        assert!(
            !ClientError::Timeout {
                what: "pull",
                after: std::time::Duration::from_secs(60)
            }
            .is_transient()
        );
    }
}
