//! What the base says about its Debian release: `/etc/os-release`, its apt
//! sources (one-line `.list` and deb822 `.sources`), its keyrings; and the
//! archive's signed `InRelease`, checked against them.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use pgp::composed::{CleartextSignedMessage, PublicOrSecret, SignedPublicKey};

use super::control::{parse_stanzas, Stanza};

/// The fields of os-release we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    /// `debian`, `ubuntu`, …
    pub id: String,
    /// `bookworm`; empty for a release without one.
    pub codename: String,
    /// `Debian GNU/Linux 12 (bookworm)`, for messages.
    pub pretty_name: String,
}

/// Parses os-release (shell-like `KEY=value`, values maybe quoted).
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut values = BTreeMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.trim().split_once('=') {
            let value = value.trim().trim_matches(['"', '\'']);
            values.insert(key.trim().to_string(), value.to_string());
        }
    }
    let get = |k: &str| values.get(k).cloned().unwrap_or_default();
    OsRelease {
        id: get("ID"),
        codename: get("VERSION_CODENAME"),
        pretty_name: get("PRETTY_NAME"),
    }
}

/// One `deb` source: a mirror, a suite and its components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    /// Without a trailing slash.
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    /// Where its keys come from (`Signed-By`); empty means every trusted key.
    pub signed_by: SignedBy,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SignedBy {
    /// apt's trusted keys: `/etc/apt/trusted.gpg` and `trusted.gpg.d/`.
    #[default]
    Trusted,
    /// Keyring files (image paths without a leading `/`).
    Files(Vec<String>),
    /// An armored key given inline in a `.sources` stanza.
    Inline(String),
}

/// The `deb` lines of a one-line-style `sources.list`. `deb-src` lines
/// and comments are skipped.
pub fn parse_sources_list(text: &str, origin: &str) -> Result<Vec<AptSource>> {
    let mut sources = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line.strip_prefix("deb ").or(line.strip_prefix("deb\t")) else {
            continue;
        };
        let rest = rest.trim();
        let mut signed_by = SignedBy::Trusted;
        let rest = if let Some(options) = rest.strip_prefix('[') {
            let (options, after) = options
                .split_once(']')
                .with_context(|| format!("{origin} line {}: `[` without `]`", n + 1))?;
            for option in options.split_whitespace() {
                if let Some(files) = option.strip_prefix("signed-by=") {
                    signed_by = signed_by_files(files);
                }
            }
            after
        } else {
            rest
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            bail!(
                "{origin} line {}: a `deb` line needs a URI and a suite",
                n + 1
            );
        };
        sources.push(AptSource {
            uri: uri.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            components: words.map(str::to_string).collect(),
            signed_by: signed_by.clone(),
        });
    }
    Ok(sources)
}

/// The `deb` sources of a deb822 `.sources` file (Types, URIs, Suites,
/// Components, Signed-By, Enabled).
pub fn parse_sources_deb822(text: &str, origin: &str) -> Result<Vec<AptSource>> {
    let mut sources = Vec::new();
    for stanza in parse_stanzas(text, origin)? {
        let words = |name: &str| -> Vec<String> {
            stanza
                .get(name)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if !words("Types").iter().any(|t| t == "deb")
            || stanza
                .get("Enabled")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let signed_by = match stanza.get("Signed-By") {
            None => SignedBy::Trusted,
            Some(v) if v.contains("BEGIN PGP PUBLIC KEY BLOCK") => SignedBy::Inline(inline_key(v)),
            Some(v) => signed_by_files(v),
        };
        for uri in words("URIs") {
            for suite in words("Suites") {
                sources.push(AptSource {
                    uri: uri.trim_end_matches('/').to_string(),
                    suite,
                    components: words("Components"),
                    signed_by: signed_by.clone(),
                });
            }
        }
    }
    Ok(sources)
}

fn signed_by_files(value: &str) -> SignedBy {
    SignedBy::Files(
        value
            .split([',', ' ', '\n', '\t'])
            .map(|f| f.trim().trim_start_matches('/'))
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// An inline key: continuation lines unindented, ` .` lines blank.
fn inline_key(value: &str) -> String {
    value
        .lines()
        .map(|l| {
            let l = l.trim();
            if l == "." {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every public key in a keyring file, binary (`.gpg`) or armored (`.asc`).
/// Keys that do not parse (algorithms rpgp lacks) are skipped.
pub fn read_keyring(bytes: &[u8], origin: &str) -> Result<Vec<SignedPublicKey>> {
    let (keys, _) = PublicOrSecret::from_reader_many(bytes)
        .map_err(|e| anyhow::anyhow!("cannot read the keyring {origin}: {e}"))?;
    Ok(keys
        .filter_map(|k| match k {
            Ok(PublicOrSecret::Public(key)) => Some(key),
            _ => None,
        })
        .collect())
}

/// A verified `InRelease`: its fields, with the signed text only.
#[derive(Debug, Clone)]
pub struct Release {
    pub stanza: Stanza,
    /// `SHA256` entries: path in the suite → (sha256 hex, size).
    pub sha256: BTreeMap<String, (String, u64)>,
}

impl Release {
    /// `Acquire-By-Hash: yes`: indexes can be fetched by their digest,
    /// which is immune to the mirror updating between two requests.
    pub fn by_hash(&self) -> bool {
        self.stanza
            .get("Acquire-By-Hash")
            .is_some_and(|v| v.trim() == "yes")
    }
}

/// Checks the clear-signed `InRelease` against `keys` (at least one
/// signature must verify with a key or a subkey of them) and parses what
/// was signed. Text outside the signed part is never looked at.
pub fn verify_in_release(text: &str, keys: &[SignedPublicKey], origin: &str) -> Result<Release> {
    let (message, _) = CleartextSignedMessage::from_string(text).map_err(|e| {
        anyhow::anyhow!("{origin} is not a clear-signed InRelease file: {e}; refusing it")
    })?;
    let verified = keys.iter().any(|key| {
        message.verify(key).is_ok()
            || key.public_subkeys.iter().any(|sub| {
                sub.verify_bindings(&key.primary_key).is_ok() && message.verify(sub).is_ok()
            })
    });
    if !verified {
        bail!(
            "the signature of {origin} does not verify with any key the base image trusts for it \
             ({} keys): refusing it (a mirror serving altered files, or a base with an old keyring)",
            keys.len()
        );
    }
    let signed = message.signed_text().replace("\r\n", "\n");
    let stanza = parse_stanzas(&signed, origin)?
        .into_iter()
        .next()
        .with_context(|| format!("{origin} is empty"))?;
    let mut sha256 = BTreeMap::new();
    for line in stanza.lines_of("SHA256") {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [hash, size, path] = parts[..] {
            let size = size
                .parse()
                .with_context(|| format!("{origin}: bad size in {line:?}"))?;
            sha256.insert(path.to_string(), (hash.to_ascii_lowercase(), size));
        }
    }
    Ok(Release { stanza, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_and_sources_are_read() {
        let os = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n",
        );
        assert_eq!(os.id, "debian");
        assert_eq!(os.codename, "bookworm");

        let list = parse_sources_list(
            "# comment\ndeb http://deb.debian.org/debian bookworm main contrib\ndeb-src http://x y z\n\
             deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://example.test/repo/ stable main\n",
            "sources.list",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].uri, "http://deb.debian.org/debian");
        assert_eq!(list[0].components, ["main", "contrib"]);
        assert_eq!(list[0].signed_by, SignedBy::Trusted);
        assert_eq!(list[1].uri, "http://example.test/repo");
        assert_eq!(
            list[1].signed_by,
            SignedBy::Files(vec!["usr/share/keyrings/k.gpg".into()])
        );
        assert!(parse_sources_list("deb http://only-uri\n", "x").is_err());

        let deb822 = parse_sources_deb822(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb-src\nURIs: http://x\nSuites: y\nComponents: main\n\n\
             Types: deb\nURIs: http://z\nSuites: s\nComponents: main\nEnabled: no\n\n\
             Types: deb\nURIs: http://k\nSuites: s\nComponents: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n -----END PGP PUBLIC KEY BLOCK-----\n",
            "debian.sources",
        )
        .unwrap();
        assert_eq!(deb822.len(), 3);
        assert_eq!(deb822[1].suite, "bookworm-updates");
        assert_eq!(
            deb822[0].signed_by,
            SignedBy::Files(vec!["usr/share/keyrings/debian-archive-keyring.gpg".into()])
        );
        assert_eq!(
            deb822[2].signed_by,
            SignedBy::Inline(
                "\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nabc\n-----END PGP PUBLIC KEY BLOCK-----"
                    .into()
            )
        );
    }

    #[test]
    fn an_unsigned_or_wrongly_signed_in_release_is_refused() {
        let err = verify_in_release("Origin: Debian\n", &[], "InRelease").unwrap_err();
        assert!(err.to_string().contains("not a clear-signed"), "{err}");
        let forged = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\n\
            -----BEGIN PGP SIGNATURE-----\n\niQEzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n";
        assert!(verify_in_release(forged, &[], "InRelease").is_err());
    }
}
