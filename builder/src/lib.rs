//! The `strata` command's library side: where the cache is (a named server
//! or the embedded store), transfer progress, and the image builder —
//! Dockerfile parsing ([`dockerfile`]), step keys ([`key`]), the build
//! context ([`context`]), the rootless sandbox ([`sandbox`]), layer tars
//! ([`layer`]), image config, layer blobs and OCI layouts ([`image`], [`blob`],
//! [`oci`]), the image's time ([`source_date`]) and the build itself
//! ([`build`]).

pub mod blob;
pub mod build;
pub mod context;
pub mod image;
pub mod key;
pub mod oci;
pub mod progress;
pub mod source_date;
pub mod target;
