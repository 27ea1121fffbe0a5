//! Who may call what: bearer tokens with scopes, checked in front of every
//! service before any of the request is read.
//!
//! A server started with a token file ([`Tokens`]) answers a call only if
//! its `authorization: Bearer <token>` header names a token in the file and
//! that token holds the scope the call needs. The one map from each RPC to
//! its scope is [`RPC_ACCESS`]; a test checks that every RPC of the
//! protocol has an entry, and a path missing from it is refused (fail
//! closed), so a new RPC cannot be left open by accident.
//!
//! The scopes, after BuildBuddy's split of CAS and action-cache writes:
//! - `read`: everything that only reads (lookups, downloads, FindMissing);
//! - `cas-write`: chunks and manifests. The server verifies every chunk
//!   against its digest and every manifest against the chunks it names, so
//!   a writer can add content but never change what an address means: the
//!   harm is bounded by disk space;
//! - `result-write`: step results and tags, which other builders take
//!   without running anything — trust-bearing;
//! - `admin`: stats, index rebuild, scrub (and any future gc).
//!
//! The server keeps only BLAKE3 hashes of tokens (a token is 256 random
//! bits, so a fast hash is enough: there is nothing to brute-force), and
//! compares a presented token's hash against every entry in constant time.
//! Health checks are open (a load balancer or kubelet probe carries no
//! token, and the answer reveals nothing); reflection needs `read`.
//!
//! This module never logs or echoes a presented token.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::metrics::CallMeter;

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// One permission a token can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Look up and download anything.
    Read,
    /// Store chunks and manifests (verified on arrival).
    CasWrite,
    /// Record step results and set tags (others will use them unchecked).
    ResultWrite,
    /// Stats, index rebuild, scrub.
    Admin,
}

impl Scope {
    /// Every scope, in the order they are written.
    pub const ALL: [Scope; 4] = [
        Scope::Read,
        Scope::CasWrite,
        Scope::ResultWrite,
        Scope::Admin,
    ];

    /// The scope's name in token files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::CasWrite => "cas-write",
            Scope::ResultWrite => "result-write",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| {
                format!("unknown scope {text:?} (expected read, cas-write, result-write or admin)")
            })
    }
}

/// A set of scopes, written `read,cas-write`.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Scope::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

impl std::str::FromStr for Scopes {
    type Err = String;

    /// A comma-separated list of scope names, at least one.
    fn from_str(text: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for name in text.split(',') {
            scopes = scopes.with(name.trim().parse()?);
        }
        Ok(scopes)
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a token.
    Open,
    /// A valid token holding this scope.
    Needs(Scope),
}

/// Every RPC the server serves and what it needs: the one place this is
/// decided. A path not listed is refused to every token.
pub const RPC_ACCESS: &[(&str, Access)] = &[
    (
        "/strata.v1.ContentStore/FindMissing",
        Access::Needs(Scope::Read),
    ),
    (
        "/strata.v1.ContentStore/PutChunks",
        Access::Needs(Scope::CasWrite),
    ),
    (
        "/strata.v1.ContentStore/GetChunks",
        Access::Needs(Scope::Read),
    ),
    (
        "/strata.v1.ManifestStore/FindManifest",
        Access::Needs(Scope::Read),
    ),
    (
        "/strata.v1.ManifestStore/FindObject",
        Access::Needs(Scope::Read),
    ),
    (
        "/strata.v1.ManifestStore/PutManifest",
        Access::Needs(Scope::CasWrite),
    ),
    (
        "/strata.v1.ManifestStore/GetManifest",
        Access::Needs(Scope::Read),
    ),
    (
        "/strata.v1.ManifestStore/StatManifest",
        Access::Needs(Scope::Read),
    ),
    (
        "/strata.v1.StepCache/LookupSteps",
        Access::Needs(Scope::Read),
    ),
    (
        "/strata.v1.StepCache/RecordStep",
        Access::Needs(Scope::ResultWrite),
    ),
    ("/strata.v1.Tags/SetTag", Access::Needs(Scope::ResultWrite)),
    ("/strata.v1.Tags/GetTag", Access::Needs(Scope::Read)),
    ("/strata.v1.Admin/Stats", Access::Needs(Scope::Admin)),
    ("/strata.v1.Admin/RebuildIndex", Access::Needs(Scope::Admin)),
    ("/strata.v1.Admin/Scrub", Access::Needs(Scope::Admin)),
    ("/strata.v1.Admin/Gc", Access::Needs(Scope::Admin)),
    ("/grpc.health.v1.Health/Check", Access::Open),
    ("/grpc.health.v1.Health/Watch", Access::Open),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Needs(Scope::Read),
    ),
];

/// What the call at `path` needs; `None` for a path no token may call.
pub fn access_of(path: &str) -> Option<Access> {
    RPC_ACCESS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, access)| *access)
}

/// Longest token the server will hash. Tokens `strata token new` makes are
/// 71 bytes; anything much longer is not one of ours.
pub const MAX_TOKEN_BYTES: usize = 256;

/// The prefix of every token `strata token new` makes, so a leaked one is
/// recognisable (secret scanners look for such prefixes).
const TOKEN_PREFIX: &str = "strata_";

/// Random bytes in a new token.
const TOKEN_RANDOM_BYTES: usize = 32;

/// One token the server accepts: its name, scopes and hash.
#[derive(Clone)]
struct TokenEntry {
    name: String,
    scopes: Scopes,
    hash: blake3::Hash,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// The tokens a server accepts, loaded from a token file. Holds hashes only.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}:{line}: {problem} (expected `NAME SCOPES b3:HASH`, as `strata token new` writes)"
    )]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error(
        "token file {path} is writable by group or others (mode {mode:o}): anyone who can write it can grant themselves any scope; run `chmod 600 {path}`"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("token file {path} already has a token named {name:?}; choose another name")]
    DuplicateName { path: PathBuf, name: String },
    #[error("token name {0:?}: use 1 to 64 letters, digits, `.`, `_` or `-`")]
    BadName(String),
    #[error("a token needs at least one scope")]
    NoScopes,
    #[error("cannot get random bytes for a token: {0}")]
    Random(String),
}

impl Tokens {
    /// Loads a token file. A malformed line refuses the whole file, naming
    /// FILE:LINE; a file writable by group or others is refused (anyone
    /// able to write it could grant themselves any scope); one readable by
    /// others is used with a warning (it holds hashes of 256-bit random
    /// tokens, which cannot be reversed, but names and scopes show).
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let io = |source| TokenFileError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        check_permissions(path, &file)?;
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (number, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io)?;
            let Some(entry) = parse_line(&line).map_err(|problem| TokenFileError::Malformed {
                path: path.to_owned(),
                line: number + 1,
                problem,
            })?
            else {
                continue;
            };
            if entries.iter().any(|e| e.name == entry.name) {
                return Err(TokenFileError::Malformed {
                    path: path.to_owned(),
                    line: number + 1,
                    problem: format!("a second token named {:?}", entry.name),
                });
            }
            entries.push(entry);
        }
        Ok(Tokens { entries })
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry whose hash matches `token`'s. Every entry is compared,
    /// each in constant time (`blake3::Hash`'s equality), so the time taken
    /// says nothing about which entry, if any, came close.
    fn find(&self, token: &str) -> Option<&TokenEntry> {
        let presented = blake3::hash(token.as_bytes());
        let mut found = None;
        for entry in &self.entries {
            if entry.hash == presented {
                found = Some(entry);
            }
        }
        found
    }
}

/// Makes a new token named `name` with `scopes`, appends its hash to the
/// token file at `path` (created 0600 if missing; an existing file must
/// parse and must not hold the name already), and returns the token — the
/// only time it exists outside its holder's hands.
pub fn add_token(path: &Path, name: &str, scopes: Scopes) -> Result<String, TokenFileError> {
    check_name(name)?;
    if scopes.is_empty() {
        return Err(TokenFileError::NoScopes);
    }
    let existing = match Tokens::load(path) {
        Ok(tokens) => tokens,
        Err(TokenFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Tokens {
                entries: Vec::new(),
            }
        }
        Err(e) => return Err(e),
    };
    if existing.entries.iter().any(|e| e.name == name) {
        return Err(TokenFileError::DuplicateName {
            path: path.to_owned(),
            name: name.to_owned(),
        });
    }
    let token = new_token()?;
    let line = format!(
        "{name} {scopes} b3:{}\n",
        blake3::hash(token.as_bytes()).to_hex()
    );
    let io = |source| TokenFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(token)
}

/// `strata_` and 64 hex digits: 256 bits from the OS's random source.
fn new_token() -> Result<String, TokenFileError> {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| TokenFileError::Random(e.to_string()))?;
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + 2 * TOKEN_RANDOM_BYTES);
    token.push_str(TOKEN_PREFIX);
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    Ok(token)
}

fn check_name(name: &str) -> Result<(), TokenFileError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TokenFileError::BadName(name.to_owned()))
    }
}

fn check_permissions(path: &Path, file: &File) -> Result<(), TokenFileError> {
    let meta = file.metadata().map_err(|source| TokenFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(TokenFileError::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    if mode & 0o044 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:o}"),
            owner = meta.uid(),
            "the token file is readable by group or others: it holds only token hashes, \
             but `chmod 600` it to keep names and scopes private"
        );
    }
    Ok(())
}

/// One line of a token file: `None` for blank lines and `#` comments.
fn parse_line(line: &str) -> Result<Option<TokenEntry>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [name, scopes, hash] = fields[..] else {
        return Err(format!("{} fields, expected 3", fields.len()));
    };
    check_name(name).map_err(|e| e.to_string())?;
    let scopes: Scopes = scopes.parse()?;
    let hex = hash
        .strip_prefix("b3:")
        .ok_or_else(|| format!("hash {hash:?} does not start with b3:"))?;
    let hash = blake3::Hash::from_hex(hex)
        .map_err(|_| "the hash is not 64 hex digits after b3:".to_owned())?;
    Ok(Some(TokenEntry {
        name: name.to_owned(),
        scopes,
        hash,
    }))
}

/// Why a call was refused: `UNAUTHENTICATED` when no valid token came with
/// it, `PERMISSION_DENIED` naming the missing scope when one did. A call
/// let through is answered with the name of the token it came with (none
/// for an open call).
fn check<'t>(
    tokens: &'t Tokens,
    path: &str,
    header: Option<&http::HeaderValue>,
) -> Result<Option<&'t str>, Status> {
    let needed = match access_of(path) {
        Some(Access::Open) => return Ok(None),
        Some(Access::Needs(scope)) => Some(scope),
        None => None,
    };
    let entry = authenticate(tokens, header)?;
    match needed {
        Some(scope) if entry.scopes.contains(scope) => Ok(Some(&entry.name)),
        Some(scope) => Err(Status::permission_denied(format!(
            "token {:?} lacks the `{scope}` scope, which {path} needs (it has: {})",
            entry.name, entry.scopes
        ))),
        None => Err(Status::permission_denied(format!(
            "no scope grants {path}: this server does not serve it to anyone"
        ))),
    }
}

fn authenticate<'t>(
    tokens: &'t Tokens,
    header: Option<&http::HeaderValue>,
) -> Result<&'t TokenEntry, Status> {
    let unauthenticated = |why: &str| {
        Status::unauthenticated(format!(
            "{why}: this server needs `authorization: Bearer <token>` (strata --token or STRATA_TOKEN; tokens come from `strata token new`)"
        ))
    };
    let Some(header) = header else {
        return Err(unauthenticated("no token sent"));
    };
    if header.len() > MAX_TOKEN_BYTES + "Bearer ".len() {
        return Err(unauthenticated(&format!(
            "the authorization header is {} bytes, longer than any token",
            header.len()
        )));
    }
    let text = header
        .to_str()
        .map_err(|_| unauthenticated("the authorization header is not visible ASCII"))?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let token = match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(unauthenticated(
                "the authorization header is not a Bearer token",
            ));
        }
    };
    if token.is_empty() {
        return Err(unauthenticated("the bearer token is empty"));
    }
    tokens
        .find(token)
        .ok_or_else(|| unauthenticated("the token is not one this server knows"))
}

/// Checks every call against the server's tokens (when it has any).
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    pub(crate) fn new(tokens: Option<Arc<Tokens>>) -> Self {
        AuthLayer { tokens }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The services behind [`AuthLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Auth<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> Service<http::Request<Body>> for Auth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            let verdict = check(
                tokens,
                request.uri().path(),
                request.headers().get(http::header::AUTHORIZATION),
            );
            match verdict {
                Ok(Some(name)) => {
                    // The metrics count the call for its token's name.
                    if let Some(meter) = request.extensions().get::<Arc<CallMeter>>() {
                        meter.authenticated_as(name);
                    }
                }
                Ok(None) => {}
                Err(status) => {
                    tracing::info!(
                        path = request.uri().path(),
                        code = ?status.code(),
                        reason = status.message(),
                        "refused a call"
                    );
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use prost::Message;

    #[test]
    fn every_rpc_of_the_protocol_has_an_entry_in_the_access_table() {
        let set =
            prost_types::FileDescriptorSet::decode(strata_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut rpcs = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        assert!(rpcs.len() >= 14, "the protocol's RPCs: {rpcs:?}");
        for rpc in &rpcs {
            assert!(
                access_of(rpc).is_some(),
                "{rpc} has no entry in RPC_ACCESS: decide which scope it needs"
            );
        }
        // And nothing in the table is stale.
        for (path, _) in RPC_ACCESS {
            let standard = path.starts_with("/grpc.");
            assert!(
                standard || rpcs.iter().any(|r| r == path),
                "{path} is in RPC_ACCESS but not in the protocol"
            );
        }
    }

    #[test]
    fn trust_bearing_writes_need_result_write_and_content_writes_only_cas_write() {
        for path in ["/strata.v1.StepCache/RecordStep", "/strata.v1.Tags/SetTag"] {
            assert_eq!(access_of(path), Some(Access::Needs(Scope::ResultWrite)));
        }
        for path in [
            "/strata.v1.ContentStore/PutChunks",
            "/strata.v1.ManifestStore/PutManifest",
        ] {
            assert_eq!(access_of(path), Some(Access::Needs(Scope::CasWrite)));
        }
    }

    #[test]
    fn scopes_parse_and_print_as_written() {
        let scopes: Scopes = "read,cas-write".parse().unwrap();
        assert!(scopes.contains(Scope::Read) && scopes.contains(Scope::CasWrite));
        assert!(!scopes.contains(Scope::ResultWrite) && !scopes.contains(Scope::Admin));
        assert_eq!(scopes.to_string(), "read,cas-write");
        assert!("read,root".parse::<Scopes>().unwrap_err().contains("root"));
        assert!("".parse::<Scopes>().is_err());
    }

    #[test]
    fn new_tokens_are_distinct_and_prefixed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(a.len() <= MAX_TOKEN_BYTES);
    }

    #[test]
    fn malformed_token_lines_say_what_is_wrong() {
        assert!(parse_line("# a comment").unwrap().is_none());
        assert!(parse_line("   ").unwrap().is_none());
        assert!(parse_line("ci read").unwrap_err().contains("2 fields"));
        assert!(
            parse_line("ci read,sudo b3:00")
                .unwrap_err()
                .contains("sudo")
        );
        assert!(parse_line("ci read 00").unwrap_err().contains("b3:"));
        assert!(parse_line("ci read b3:zz").unwrap_err().contains("hex"));
        assert!(parse_line("c/i read b3:zz").is_err());
    }
}
