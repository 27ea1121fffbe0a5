//! Where an image reference is fetched from: the host to dial (Docker Hub's
//! `registry-1.docker.io` for `docker.io`, or a mirror), the repository
//! (`library/` for official images, which `ImageRef` adds), and the scheme
//! (plain HTTP for loopback and listed insecure registries).

use oci_client::Reference;
use strata_dockerfile::ImageRef;

use crate::options::RegistryOptions;

/// The host Docker Hub's registry API answers on.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// One place an image can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// The image as the user wrote it, for messages.
    pub image: String,
    /// The registry as written in the reference (`docker.io`, `HOST:PORT`):
    /// the key credentials are looked up under.
    pub registry: String,
    /// The host (and port) dialled.
    pub host: String,
    /// The repository on that host.
    pub repository: String,
    /// `http` or `https`.
    pub scheme: &'static str,
}

impl Endpoint {
    /// The endpoints to try for `image`, in order: a configured docker.io
    /// mirror first, then the registry itself.
    pub fn candidates(image: &ImageRef, options: &RegistryOptions) -> Vec<Endpoint> {
        let registry = image.registry().to_owned();
        let on_hub = registry == strata_dockerfile::DEFAULT_REGISTRY;
        let mut hosts = Vec::new();
        if on_hub {
            hosts.extend(options.docker_io_mirror.iter().cloned());
        }
        hosts.push(if on_hub {
            DOCKER_HUB_HOST.to_owned()
        } else {
            registry.clone()
        });
        hosts
            .into_iter()
            .map(|host| Endpoint {
                image: image.to_string(),
                registry: registry.clone(),
                scheme: if options.is_insecure(&host) {
                    "http"
                } else {
                    "https"
                },
                host,
                repository: image.repository(),
            })
            .collect()
    }

    /// The oci-client reference for `tag_or_digest` in this repository.
    pub fn reference(&self, tag_or_digest: &str) -> Reference {
        if tag_or_digest.contains(':') {
            Reference::with_digest(
                self.host.clone(),
                self.repository.clone(),
                tag_or_digest.to_owned(),
            )
        } else {
            Reference::with_tag(
                self.host.clone(),
                self.repository.clone(),
                tag_or_digest.to_owned(),
            )
        }
    }

    /// The URL of a manifest (`tag_or_digest`) in this repository.
    pub fn manifest_url(&self, tag_or_digest: &str) -> String {
        format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme, self.host, self.repository, tag_or_digest
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ImageRef {
        ImageRef::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn docker_hub_names_get_docker_defaults() {
        let endpoints =
            Endpoint::candidates(&parse("debian:bookworm"), &RegistryOptions::default());
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].host, "registry-1.docker.io");
        assert_eq!(endpoints[0].repository, "library/debian");
        assert_eq!(endpoints[0].scheme, "https");
        assert_eq!(endpoints[0].registry, "docker.io");
    }

    #[test]
    fn a_mirror_is_asked_first_for_docker_hub_images_only() {
        let options = RegistryOptions {
            docker_io_mirror: Some("mirror.lan:5000".to_owned()),
            insecure_registries: vec!["mirror.lan:5000".to_owned()],
            ..RegistryOptions::default()
        };
        let hosts: Vec<_> = Endpoint::candidates(&parse("team/app"), &options)
            .into_iter()
            .map(|e| format!("{}://{}/{}", e.scheme, e.host, e.repository))
            .collect();
        assert_eq!(
            hosts,
            [
                "http://mirror.lan:5000/team/app",
                "https://registry-1.docker.io/team/app"
            ]
        );
        let other = Endpoint::candidates(&parse("quay.io/team/app"), &options);
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].host, "quay.io");
    }

    #[test]
    fn loopback_registries_are_spoken_to_over_http() {
        let endpoints = Endpoint::candidates(
            &parse("127.0.0.1:5000/library/debian"),
            &RegistryOptions::default(),
        );
        assert_eq!(
            endpoints[0].manifest_url("bookworm"),
            "http://127.0.0.1:5000/v2/library/debian/manifests/bookworm"
        );
        let endpoints =
            Endpoint::candidates(&parse("localhost:5000/x"), &RegistryOptions::default());
        assert_eq!(endpoints[0].scheme, "http");
    }
}
