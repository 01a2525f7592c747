//! Image references (`registry::reference::Reference::parse`), as
//! `docker_base_image` in someone's config.txt or a command line gives them.

use dallinger_oci::registry::reference::Reference;
use proptest::prelude::*;

use super::text::{noise, TEXT};
use crate::ensure;

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(
            &[
                "ghcr.io", "docker.io", "localhost", "127.0.0.1", "[::1]", "quay.io",
                "registry-1.docker.io", "GHCR.IO", "a-b.example", "10.0.0.1", "[fe80::1]",
            ][..]
        )
        .prop_map(str::to_string),
        2 => "[a-z0-9-]{1,8}(\\.[a-z0-9-]{1,8}){0,2}",
        // Hosts no URL should be built from.
        2 => prop::sample::select(
            &[
                "evil.test#.ghcr.io", "evil.test?.ghcr.io", "ghcr.io\\evil", "ex ample.com",
                "user:pw@ghcr.io", "-lead.io", "a..b", ".io", "[::1", "host.", "a_b.io",
                "h\u{e9}.io", "ghcr.io%2f", "[v1.x]", "1.2.3.4.5", "a.b:", "a:b:c",
            ][..]
        )
        .prop_map(str::to_string),
        1 => noise(10),
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        2 => (1u32..70_000).prop_map(|p| format!(":{p}")),
        1 => prop::sample::select(&[":0", ":", ":abc", ":+5", ":05000", ": 1"][..])
            .prop_map(str::to_string),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        6 => "[a-z0-9][a-z0-9._-]{0,6}",
        1 => "[A-Za-z0-9._/:@ -]{0,6}",
    ];
    prop::collection::vec(component, 1..4).prop_map(|c| c.join("/"))
}

fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => "[A-Za-z0-9_][A-Za-z0-9._-]{0,10}".prop_map(|t| format!(":{t}")),
        1 => (127usize..130).prop_map(|n| format!(":{}", "t".repeat(n))),
        1 => "[ -~]{0,6}".prop_map(|t| format!(":{t}")),
    ]
}

fn digest() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        2 => "[0-9a-f]{64}".prop_map(|h| format!("@sha256:{h}")),
        1 => "[0-9a-fA-F]{63,65}".prop_map(|h| format!("@sha256:{h}")),
        1 => "[ -~]{0,12}".prop_map(|d| format!("@{d}")),
    ]
}

fn reference_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => noise(40),
        6 => (
            any::<bool>(),
            prop::option::weighted(0.7, (host(), port())),
            path(),
            tag(),
            digest(),
        )
            .prop_map(|(scheme, registry, path, tag, digest)| {
                let mut s = String::new();
                if scheme {
                    s.push_str("docker://");
                }
                if let Some((host, port)) = registry {
                    s.push_str(&format!("{host}{port}/"));
                }
                format!("{s}{path}{tag}{digest}")
            }),
    ]
}

/// Whether a URL built from the registry goes to exactly that host and
/// port, with no user, path, query or fragment smuggled in.
fn url_is_the_registry(registry: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(&format!("https://{registry}/v2/")) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let has_port = registry.rsplit_once(':').is_some_and(|(h, _)| {
        !h.ends_with(':') && (!registry.starts_with('[') || h.ends_with(']'))
    });
    let rebuilt = match (has_port, url.port_or_known_default()) {
        (true, Some(port)) => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/v2/"
        && url.query().is_none()
        && url.fragment().is_none()
        && rebuilt == registry.to_ascii_lowercase()
}

fn check(text: String) -> Result<(), TestCaseError> {
    let Ok(r) = Reference::parse(&text) else {
        return Ok(());
    };
    ensure!(
        url_is_the_registry(&r.registry),
        "{text:?} gives the registry {:?}",
        r.registry
    );
    ensure!(
        r.repository.split('/').all(|c| !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))),
        "{text:?} gives the repository {:?}",
        r.repository
    );
    let again = Reference::parse(&r.to_string())
        .map_err(|e| TestCaseError::fail(format!("{text:?} -> {r} does not parse: {e}")))?;
    ensure!(again == r, "{text:?} -> {r} -> {again:?}, not {r:?}");
    let host = match r.registry.find(']') {
        Some(end) if r.registry.starts_with('[') => &r.registry[..=end],
        _ => r.registry.split(':').next().unwrap_or_default(),
    };
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    ensure!(
        (r.scheme(&[]) == "http") == loopback,
        "{text:?}: plain HTTP for {:?}",
        r.registry
    );
    let expected = r.digest.as_deref().or(r.tag.as_deref()).unwrap_or("latest");
    ensure!(
        r.manifest_ref() == expected,
        "{text:?}: manifest_ref {}",
        r.manifest_ref()
    );
    Ok(())
}

#[test]
fn image_reference() {
    super::harness::fuzz("image_reference", reference_text(), TEXT, check);
}
