//! Where a built image goes: one [`Sink`] per kind of output (an OCI
//! layout, a docker-archive, a registry, a container engine's store), each
//! taking the same [`Built`] image, and [`OutputRef::parse`], the one
//! parser of `--output`. A new kind of output is a file here and a line
//! in [`SCHEMES`].

pub mod archive;
pub mod engine;
pub mod oci;
pub mod registry;

use anyhow::{bail, Result};

use crate::build::RegistryOptions;
use crate::image::store::BlobStore;
use crate::image::Image;
use crate::registry::push::PushOptions;
use crate::registry::Reference;

/// A built image and what names it: what every sink takes.
pub struct Built<'a> {
    pub store: &'a BlobStore,
    pub image: &'a Image,
    /// `REPOSITORY:TAG`, the image's name.
    pub name: &'a str,
    /// The image's tag, the default of outputs that name their own.
    pub tag: &'a str,
    /// The image's other tags (`--tag a --tag b`), which outputs that do
    /// not name their own tag also give it.
    pub extra_tags: &'a [String],
    /// Seconds since the epoch of every time an output records.
    pub epoch: u64,
}

impl Built<'_> {
    /// Every tag of the image: `tag`, then the others.
    pub fn tags(&self) -> Vec<&str> {
        std::iter::once(self.tag)
            .chain(self.extra_tags.iter().map(String::as_str))
            .collect()
    }

    /// `REPOSITORY:TAG` for every tag, `name` first.
    pub fn names(&self) -> Vec<String> {
        let repository = self
            .name
            .strip_suffix(self.tag)
            .and_then(|r| r.strip_suffix(':'))
            .unwrap_or(self.name);
        std::iter::once(self.name.to_string())
            .chain(self.extra_tags.iter().map(|t| format!("{repository}:{t}")))
            .collect()
    }
}

/// What sinks may need besides the image: how to reach registries (for a
/// base's blobs and for pushes) and how to push.
pub struct Env<'a> {
    pub registry: &'a RegistryOptions,
    pub push: &'a PushOptions,
}

impl Env<'_> {
    /// Downloads (verified) every base layer of `built` the store lacks,
    /// each from its own registry with that registry's credentials: for
    /// sinks that copy every blob out of the store.
    pub fn fetch_missing(&self, built: &Built) -> Result<()> {
        built.store.fetch_missing(&built.image.layers)
    }
}

/// One kind of output.
pub trait Sink: Send + Sync {
    /// Writes `built`; returns the line that says where it went
    /// (`Wrote oci:DIR:TAG`, `Pushed HOST/REPO:TAG@sha256:…`).
    fn write(&self, built: &Built, env: &Env) -> Result<String>;

    /// The image this sink pushes to, whose registry is the one the
    /// explicit credentials (`--username`, `DALLINGER_OCI_REGISTRY_*`) go to.
    fn push_target(&self) -> Option<&Reference> {
        None
    }

    /// What this output is called when it holds one platform's image only
    /// (a docker-archive): a build for several platforms is refused
    /// before any work.
    fn one_platform(&self) -> Option<&str> {
        None
    }
}

/// The schemes of `--output`: each parses what follows `SCHEME:` (the
/// whole text is for messages).
type Parse = fn(rest: &str, text: &str) -> Result<Box<dyn Sink>>;
const SCHEMES: &[(&str, &str, Parse)] = &[
    ("oci:", "oci:DIR[:TAG]", oci::OciLayout::parse),
    (
        "docker-archive:",
        "docker-archive:FILE",
        archive::DockerArchive::parse,
    ),
    (
        "docker://",
        "docker://HOST/REPO:TAG",
        registry::RegistrySink::parse,
    ),
];

/// One `--output`: the sink it names.
pub struct OutputRef(Box<dyn Sink>);

impl OutputRef {
    /// Parses `SCHEME:…`; anything else is one line listing the forms.
    pub fn parse(text: &str) -> Result<OutputRef> {
        for (scheme, _, parse) in SCHEMES {
            if let Some(rest) = text.strip_prefix(scheme) {
                return parse(rest, text).map(OutputRef);
            }
        }
        let forms: Vec<&str> = SCHEMES.iter().map(|(_, form, _)| *form).collect();
        bail!("unknown output {text:?}: use {}", forms.join(", "))
    }

    pub fn sink(&self) -> &dyn Sink {
        &*self.0
    }
}

impl std::fmt::Debug for OutputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputRef")
    }
}

/// Writes `built` to every output in order, saying where each went.
pub fn write_all(outputs: &[OutputRef], built: &Built, env: &Env) -> Result<()> {
    for output in outputs {
        eprintln!("{}", output.sink().write(built, env)?);
    }
    Ok(())
}

/// Records the one registry the explicit credentials go to: the registry
/// outputs' (`docker://…`), else the image name's when it names a registry
/// host (`push` pushes there; a base there may need them). Explicit
/// credentials with two registries to push to are refused: they are for one.
/// `pushes_image`: the image is pushed to its name, which must then name a
/// registry.
pub fn claim_push_target(
    registry: &RegistryOptions,
    outputs: &[OutputRef],
    image_name: &str,
    pushes_image: bool,
) -> Result<()> {
    let mut targets: Vec<String> = outputs
        .iter()
        .filter_map(|o| o.sink().push_target())
        .map(|r| r.registry.clone())
        .collect();
    if targets.is_empty() {
        if pushes_image {
            crate::registry::push::image_target(image_name)?;
        }
        registry.set_push_target(image_name);
        return Ok(());
    }
    if pushes_image {
        targets.push(crate::registry::push::image_target(image_name)?.registry);
    }
    targets.sort();
    targets.dedup();
    match targets.as_slice() {
        [one] => {
            let _ = registry.push_registry.set(one.clone());
        }
        [first, second, ..] if registry.credentials.username.is_some() => bail!(
            "--username (or DALLINGER_OCI_REGISTRY_USERNAME) is for one registry, and this \
             build pushes to {first} and {second}: push to one registry, or give the others' \
             credentials in an auth file (REGISTRY_AUTH_FILE, ~/.docker/config.json)"
        ),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_outputs() {
        let oci = OutputRef::parse("oci:out:v1").unwrap();
        assert!(oci.sink().push_target().is_none());
        OutputRef::parse("docker-archive:x.tar").unwrap();
        let pushed = OutputRef::parse("docker://127.0.0.1:5000/lab/app:1").unwrap();
        let target = pushed.sink().push_target().unwrap();
        assert_eq!(
            (target.registry.as_str(), target.repository.as_str()),
            ("127.0.0.1:5000", "lab/app")
        );
        assert_eq!(target.tag.as_deref(), Some("1"));
        let err = OutputRef::parse("dir:x").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown output \"dir:x\": use oci:DIR[:TAG], docker-archive:FILE, docker://HOST/REPO:TAG"
        );
    }

    fn options(username: Option<&str>) -> RegistryOptions {
        RegistryOptions {
            insecure: Vec::new(),
            credentials: crate::registry::credentials::CredentialContext {
                username: username.map(String::from),
                ..Default::default()
            },
            retry: Default::default(),
            refresh_base: false,
            push_registry: Default::default(),
            mirrors: Default::default(),
        }
    }

    fn outputs(texts: &[&str]) -> Vec<OutputRef> {
        texts.iter().map(|t| OutputRef::parse(t).unwrap()).collect()
    }

    #[test]
    fn the_explicit_credentials_go_to_one_push_target() {
        let claimed = |username, texts: &[&str], name, pushes| {
            let registry = options(username);
            claim_push_target(&registry, &outputs(texts), name, pushes)
                .map(|()| registry.push_registry.get().cloned())
                .map_err(|e| e.to_string())
        };
        let name = "ghcr.io/lab/app:1";
        // A docker:// output's registry, not the image name's.
        assert_eq!(
            claimed(
                Some("u"),
                &["oci:x", "docker://127.0.0.1:5000/lab/app:1"],
                name,
                false
            ),
            Ok(Some("127.0.0.1:5000".into()))
        );
        // Without one, the image name's, pushed or not (a base there may need them).
        assert_eq!(
            claimed(Some("u"), &["oci:x"], name, false),
            Ok(Some("ghcr.io".into()))
        );
        assert_eq!(
            claimed(Some("u"), &[], name, true),
            Ok(Some("ghcr.io".into()))
        );
        // The same registry twice is one target.
        assert_eq!(
            claimed(Some("u"), &["docker://ghcr.io/lab/other:2"], name, true),
            Ok(Some("ghcr.io".into()))
        );
        // Two registries: refused with explicit credentials, none claimed without.
        let err = claimed(
            Some("u"),
            &["docker://127.0.0.1:5000/lab/app:1"],
            name,
            true,
        )
        .unwrap_err();
        assert!(
            err.contains("pushes to 127.0.0.1:5000 and ghcr.io"),
            "{err}"
        );
        assert_eq!(
            claimed(None, &["docker://127.0.0.1:5000/lab/app:1"], name, true),
            Ok(None)
        );
        // A name without a registry host gets none (`push` sends it to
        // docker.io with what the auth files hold); a bad name is refused.
        assert_eq!(claimed(Some("u"), &[], "lab/app:1", false), Ok(None));
        assert_eq!(claimed(Some("u"), &[], "lab/app:1", true), Ok(None));
        assert!(claimed(Some("u"), &[], "lab/App:1", true)
            .unwrap_err()
            .contains("not a valid image reference"));
    }

    #[test]
    fn bad_outputs_are_one_line_naming_the_form() {
        for (text, says) in [
            ("oci:", "names no directory"),
            ("docker-archive:", "names no file"),
            ("docker://127.0.0.1:5000/lab/app", "names no tag"),
            ("docker://127.0.0.1:5000/lab/app@sha256:0000000000000000000000000000000000000000000000000000000000000000", "names no tag"),
            ("docker://127.0.0.1:5000/Lab/App:1", "not a valid image reference"),
            ("docker://", "names no image"),
        ] {
            let err = format!("{:#}", OutputRef::parse(text).unwrap_err());
            assert!(err.contains(says), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
