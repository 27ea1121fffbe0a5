//! The `strata` command's library side: where the cache is (a named server
//! or the embedded store), transfer progress, and the image builder —
//! Dockerfile parsing ([`dockerfile`]), step keys ([`key`]), the build
//! context ([`context`]), the rootless sandbox ([`sandbox`]), layer tars
//! ([`layer`]), image config and OCI layouts ([`image`], [`oci`]), and the
//! build itself ([`build`]).

pub mod build;
pub mod context;
pub mod image;
pub mod key;
pub mod oci;
pub mod progress;
pub mod target;
