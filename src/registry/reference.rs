//! Image references: `[HOST[:PORT]/]REPOSITORY[:TAG][@sha256:HEX]`, with
//! docker's defaults (`docker.io`, `library/`, `latest`).

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// As users write it: `ghcr.io`, `127.0.0.1:5000`, `docker.io`.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference> {
        let original = text;
        let text = text.strip_prefix("docker://").unwrap_or(text);
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                crate::image::store::hex_of(digest)?;
                (rest, Some(digest.to_string()))
            }
            None => (text, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        // GHCR refuses upper case; docker users expect lowercase names to work.
        let repository = if registry == "ghcr.io" {
            repository.to_lowercase()
        } else {
            repository
        };
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        };
        if !valid_registry(&registry) {
            bail!(
                "{original:?} is not a valid image reference: the registry {registry:?} is not a \
                 host name or IP address with an optional :PORT"
            );
        }
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            bail!(
                "{original:?} is not a valid image reference: repository names use lowercase letters, digits and . _ - separated by /"
            );
        }
        if let Some(tag) = &tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !tag.starts_with(['.', '-']);
            if !ok {
                bail!("{original:?} has an invalid tag {tag:?}");
            }
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Whether `name`'s first component is a registry host (it has a `.`
    /// or a `:PORT`, or is `localhost`), as docker decides: `lab/app` and
    /// `app` name none, and are not Docker Hub's when a build names them.
    pub fn names_registry_host(name: &str) -> bool {
        name.split_once('/').is_some_and(|(first, _)| {
            first.contains('.') || first.contains(':') || first == "localhost"
        })
    }

    /// The host the HTTP API lives on.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// Plain HTTP only for loopback registries (or ones the user names).
    pub fn scheme(&self, insecure: &[String]) -> &'static str {
        let host = split_port(&self.registry).0;
        if host == "localhost"
            || host == "127.0.0.1"
            || host == "[::1]"
            || insecure.contains(&self.registry)
            || insecure.iter().any(|h| h == host)
        {
            "http"
        } else {
            "https"
        }
    }

    /// `REGISTRY/REPOSITORY` as docker prints it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The manifest reference: the digest when there is one, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// `host[:port]` as (host, port); a bracketed IPv6 address keeps its brackets.
fn split_port(registry: &str) -> (&str, Option<&str>) {
    let host_end = if registry.starts_with('[') {
        registry.find(']').map_or(registry.len(), |i| i + 1)
    } else {
        registry.find(':').unwrap_or(registry.len())
    };
    match registry[host_end..].strip_prefix(':') {
        Some(port) => (&registry[..host_end], Some(port)),
        None => (registry, None),
    }
}

/// Docker's `domain[:port]`: labels of ASCII letters, digits and inner `-`
/// joined by `.`, or a bracketed IPv6 address; a port from 1 to 65535 (no
/// leading zero). So no
/// `#`, `?`, `@`, `\`, space or `%` can reach the URL built from it.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = split_port(registry);
    // Written as URLs write it (no leading zero), so the registry names the
    // same origin as the URL built from it.
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit())
            && !p.starts_with('0')
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    let host_ok = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            let labels_ok = host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
            // A name ending in a number is an IPv4 address to a URL parser
            // (which also reads 0x1f and 010 its own way): it must be a
            // plain dotted-decimal one.
            let last = host.rsplit('.').next().unwrap_or_default();
            let numeric = last.bytes().all(|b| b.is_ascii_digit())
                || last.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x"));
            labels_ok && (!numeric || host.parse::<std::net::Ipv4Addr>().is_ok())
        }
    };
    port_ok && host_ok
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let r = Reference::parse("ghcr.io/Example-Lab/Stroop:46b77694").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("ghcr.io", "example-lab/stroop", Some("46b77694"))
        );
        let r = Reference::parse("127.0.0.1:5000/a/b").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "a/b", None)
        );
        assert_eq!(r.scheme(&[]), "http");
        let r = Reference::parse("python:3.11").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/python")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.scheme(&[]), "https");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("docker://localhost:5000/x@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), d);
        assert!(Reference::parse("docker.io/Bad Name").is_err());
        assert!(Reference::parse("quay.io/x/Y:t").is_err());
        let r = Reference::parse("[::1]:5000/a").unwrap();
        assert_eq!((r.registry.as_str(), r.scheme(&[])), ("[::1]:5000", "http"));
        assert_eq!(
            Reference::parse("[fe80::1]:443/a").unwrap().scheme(&[]),
            "https"
        );
    }

    #[test]
    fn a_registry_that_is_not_a_host_is_refused() {
        for bad in [
            "evil.test#.ghcr.io/x",
            "evil.test?.ghcr.io/x",
            "ghcr.io\\evil.test/x",
            "a.-/a",
            "a..b/x",
            "host./x",
            "ghcr.io%2f/x",
            "a:b:c/x",
            "ghcr.io:/x",
            "ghcr.io:0/x",
            "ghcr.io:70000/x",
            "ghcr.io:+443/x",
            "ghcr.io:05000/x",
            "1.2.3.4.5/x",
            "010.0.0.1/x",
            "a.0x7f/x",
            "10.0.0.300/x",
            "a.0/x",
            "[::1/x",
            "[v1.x]/x",
            "h\u{e9}.io/x",
        ] {
            let err = Reference::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("is not a host name or IP address"),
                "{bad}: {err}"
            );
        }
        for good in [
            "ghcr.io:443/x",
            "a-b.example/x",
            "10.0.0.1:5000/x",
            "[fe80::1]/x",
        ] {
            Reference::parse(good).unwrap();
        }
    }
}
