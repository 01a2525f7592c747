//! What users add to an image's names and description: tags (`--tag`,
//! `--tags-file`), config labels (`--label`, `--labels-file`) and manifest
//! annotations (`--annotation`, `--annotations-file`), in the shapes
//! docker/metadata-action outputs them (one per line).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::registry::Reference;

/// The tags, labels and annotations a build was given, each remembering
/// where it came from for messages.
#[derive(Debug, Clone, Default)]
pub struct ImageMetadata {
    /// Tags (`v1`) or full references (`ghcr.io/lab/exp:v1`), in order.
    pub tags: Vec<Given>,
    /// Config labels; they override the build's own.
    pub labels: BTreeMap<String, String>,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// Labels and annotations with their origins, for the wall-clock warning.
    origins: BTreeMap<(Kind, String), String>,
}

/// One value and where it was given (`--tag`, `--tags-file F line 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub value: String,
    pub origin: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Label,
    Annotation,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Label => "label",
            Kind::Annotation => "annotation",
        }
    }
}

/// The metadata flags as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct MetadataArgs<'a> {
    pub tags: &'a [String],
    pub tags_files: &'a [std::path::PathBuf],
    pub labels: &'a [String],
    pub labels_files: &'a [std::path::PathBuf],
    pub annotations: &'a [String],
    pub annotations_files: &'a [std::path::PathBuf],
}

impl ImageMetadata {
    /// Reads the flags, then the files (each line in order; blank lines
    /// ignored). A later label or annotation of the same key wins, as with
    /// docker's `--label`.
    pub fn from_args(args: &MetadataArgs) -> Result<ImageMetadata> {
        let mut metadata = ImageMetadata::default();
        for tag in args.tags {
            metadata.add_tag(tag, "--tag")?;
        }
        for file in args.tags_files {
            for (n, line) in lines_of(file, "--tags-file")? {
                metadata.add_tag(&line, &format!("--tags-file {} line {n}", file.display()))?;
            }
        }
        for (kind, flags, files, flag) in [
            (Kind::Label, args.labels, args.labels_files, "label"),
            (
                Kind::Annotation,
                args.annotations,
                args.annotations_files,
                "annotation",
            ),
        ] {
            for text in flags {
                metadata.add_pair(kind, text, &format!("--{flag}"))?;
            }
            for file in files {
                let file_flag = format!("--{flag}s-file");
                for (n, line) in lines_of(file, &file_flag)? {
                    let origin = format!("{file_flag} {} line {n}", file.display());
                    metadata.add_pair(kind, &line, &origin)?;
                }
            }
        }
        Ok(metadata)
    }

    fn add_tag(&mut self, text: &str, origin: &str) -> Result<()> {
        let value = text.trim();
        if value.is_empty() {
            bail!("{origin} is empty: give a tag (v1) or a reference (ghcr.io/lab/exp:v1)");
        }
        self.tags.push(Given {
            value: value.to_string(),
            origin: format!("{origin} {value:?}"),
        });
        Ok(())
    }

    fn add_pair(&mut self, kind: Kind, text: &str, origin: &str) -> Result<()> {
        let (key, value) = split_pair(kind, text, origin)?;
        let key = match kind {
            // metadata-action prefixes annotations with the level they are
            // for; ours are the image manifest's.
            Kind::Annotation => strip_level(&key, origin)?,
            Kind::Label => key,
        };
        let map = match kind {
            Kind::Label => &mut self.labels,
            Kind::Annotation => &mut self.annotations,
        };
        map.insert(key.clone(), value);
        self.origins.insert((kind, key), origin.to_string());
        Ok(())
    }

    /// Warns, on stderr, about each label or annotation whose value is a
    /// date and time other than the build's own (`epoch`): docker/
    /// metadata-action's `org.opencontainers.image.created` is the
    /// wall-clock time of the run, so the digest would change on every run.
    pub fn warn_about_wall_clock_times(&self, epoch: u64) {
        for line in self.wall_clock_warnings(epoch) {
            eprintln!("warning: {line}");
        }
    }

    fn wall_clock_warnings(&self, epoch: u64) -> Vec<String> {
        let mut lines = Vec::new();
        for (kind, map) in [
            (Kind::Label, &self.labels),
            (Kind::Annotation, &self.annotations),
        ] {
            for (key, value) in map {
                if !is_date_time(value) || is_the_epoch(value, epoch) {
                    continue;
                }
                let origin = self
                    .origins
                    .get(&(kind, key.clone()))
                    .map_or(String::new(), |o| format!(" ({o})"));
                lines.push(format!(
                    "the {} {key}={value}{origin} is a wall-clock time, so the image's digest \
                     changes on every run: leave it out, or give the build's own time (set \
                     SOURCE_DATE_EPOCH, e.g. to the commit's time, and give this time as {})",
                    kind.noun(),
                    crate::image::rfc3339(epoch).unwrap_or_default()
                ));
            }
        }
        lines
    }

    /// The image's tags, from `repository` (the image's, if it has one
    /// yet): plain tags as given, references' tags when they name the
    /// same repository. A reference to another repository is refused: the
    /// tags name one image (push elsewhere with `--output docker://…`).
    /// Returns the repository the references name (for an image without
    /// one), and the tags in order, each once.
    pub fn resolve_tags(&self, repository: Option<&str>) -> Result<(Option<String>, Vec<String>)> {
        // The repository the tags name, its reference, and whose it is.
        let mut named: Option<(String, Reference, String)> = match repository {
            Some(repo) => Some((
                repo.to_string(),
                parse_repository(repo)?,
                "the image's repository (docker_image_base_name in config.txt)".to_string(),
            )),
            None => None,
        };
        let mut tags: Vec<String> = Vec::new();
        for given in &self.tags {
            let tag = if is_reference(&given.value) {
                let reference =
                    Reference::parse(&given.value).with_context(|| given.origin.clone())?;
                if reference.digest.is_some() {
                    bail!(
                        "{} names a digest: give a tag or REPOSITORY:TAG (the build decides the digest)",
                        given.origin
                    );
                }
                let Some(tag) = reference.tag.clone() else {
                    bail!("{} names no tag: give REPOSITORY:TAG", given.origin);
                };
                let written = given.value[..given.value.len() - tag.len() - 1].to_string();
                match &named {
                    None => {
                        let whose = format!("the repository of {}", given.origin);
                        named = Some((written, reference.clone(), whose));
                    }
                    Some((repo, first, whose)) => {
                        if (&first.registry, &first.repository)
                            != (&reference.registry, &reference.repository)
                        {
                            bail!(
                                "{} names the repository {}, not {repo}, {whose}: the tags name \
                                 one image; to push it to another repository as well, add \
                                 --output docker://{}",
                                given.origin,
                                reference.name(),
                                given.value
                            );
                        }
                    }
                }
                tag
            } else {
                validate_tag(&given.value, &given.origin)?
            };
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok((named.map(|(repo, _, _)| repo), tags))
    }
}

/// A repository name as a reference, for comparing (docker.io and its
/// `library/`, GHCR's lowercase).
fn parse_repository(repository: &str) -> Result<Reference> {
    Reference::parse(&format!("{repository}:x"))
}

/// A value naming a repository rather than only a tag: tags have no `/`
/// or `:`.
fn is_reference(value: &str) -> bool {
    value.contains(['/', ':', '@'])
}

/// A tag as the distribution spec allows it.
pub fn validate_tag(tag: &str, origin: &str) -> Result<String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        bail!("{origin} is not a valid tag (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')");
    }
    Ok(tag.to_string())
}

/// The non-blank lines of `file`, numbered from 1, trimmed of the line end
/// (and a Windows `\r`).
fn lines_of(file: &Path, flag: &str) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the {flag} file {}", file.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r').to_string()))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect())
}

/// `KEY=VALUE`: the key is what comes before the first `=`, without
/// surrounding spaces; the value is kept as it is.
fn split_pair(kind: Kind, text: &str, origin: &str) -> Result<(String, String)> {
    let Some((key, value)) = text.split_once('=') else {
        bail!(
            "{origin} {text:?} is not KEY=VALUE: give each {} as KEY=VALUE",
            kind.noun()
        );
    };
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) || key.chars().any(char::is_control) {
        bail!(
            "{origin} {text:?} has no valid key: give each {} as KEY=VALUE, the key without spaces",
            kind.noun()
        );
    }
    Ok((key.to_string(), value.to_string()))
}

/// An annotation key without metadata-action's level prefix (`manifest:`,
/// the default; `manifest-descriptor:` too, whose place in an index is the
/// manifest for a single image). Index levels have no place here: the
/// build writes one manifest and no index.
fn strip_level(key: &str, origin: &str) -> Result<String> {
    let Some((level, rest)) = key.split_once(':') else {
        return Ok(key.to_string());
    };
    // `level[,level]:key`, or `manifest[linux/amd64]:key`.
    let levels: Vec<&str> = level
        .split(',')
        .map(|l| l.split_once('[').map_or(l, |(name, _)| name))
        .collect();
    let known = [
        "manifest",
        "manifest-descriptor",
        "index",
        "index-descriptor",
    ];
    if !levels.iter().all(|l| known.contains(l)) {
        return Ok(key.to_string());
    }
    if levels.iter().any(|l| l.starts_with("manifest")) {
        return Ok(rest.to_string());
    }
    bail!(
        "{origin}: the annotation {key:?} is for an image index, and the build writes one \
         manifest and no index: use the manifest level (manifest:{rest}, or set \
         DOCKER_METADATA_ANNOTATIONS_LEVELS=manifest for metadata-action)"
    )
}

/// A date and a time of day (ISO 8601 / RFC 3339: `2026-12-01T10:20:30Z`,
/// `2026-12-01 10:20`), as a clock writes it.
fn is_date_time(value: &str) -> bool {
    let b = value.trim().as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
}

/// Whether `value` is the time `epoch` (RFC 3339, any precision or offset).
fn is_the_epoch(value: &str, epoch: u64) -> bool {
    time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc3339)
        .is_ok_and(|t| t.unix_timestamp() == epoch as i64 && t.nanosecond() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn tags(given: &[&str], repository: Option<&str>) -> Result<(Option<String>, Vec<String>)> {
        let tags = strings(given);
        ImageMetadata::from_args(&MetadataArgs {
            tags: &tags,
            ..Default::default()
        })?
        .resolve_tags(repository)
    }

    #[test]
    fn tags_and_references_of_one_repository() {
        assert_eq!(
            tags(
                &["v1", "ghcr.io/Lab/exp:main", "v1"],
                Some("ghcr.io/lab/exp")
            )
            .unwrap(),
            (Some("ghcr.io/lab/exp".into()), strings(&["v1", "main"]))
        );
        // Without a repository of its own, the image takes the references'.
        assert_eq!(
            tags(&["127.0.0.1:5000/lab/exp:a", "b"], None).unwrap(),
            (Some("127.0.0.1:5000/lab/exp".into()), strings(&["a", "b"]))
        );
        assert_eq!(tags(&["a"], None).unwrap(), (None, strings(&["a"])));
        // docker.io's defaults are the same repository.
        assert_eq!(
            tags(&["docker.io/library/exp:1"], Some("exp")).unwrap().1,
            strings(&["1"])
        );
    }

    #[test]
    fn references_to_another_repository_or_a_digest_are_one_line() {
        let err = tags(&["ghcr.io/lab/other:v1"], Some("ghcr.io/lab/exp"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--tag \"ghcr.io/lab/other:v1\" names the repository ghcr.io/lab/other, not \
             ghcr.io/lab/exp, the image's repository (docker_image_base_name in config.txt): the \
             tags name one image; to push it to another repository as well, add --output \
             docker://ghcr.io/lab/other:v1"
        );
        let err = tags(&["ghcr.io/lab/a:1", "ghcr.io/lab/b:1"], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not ghcr.io/lab/a, the repository of --tag \"ghcr.io/lab/a:1\""),
            "{err}"
        );
        let digest = format!("ghcr.io/lab/a@sha256:{}", "0".repeat(64));
        assert!(tags(&[&digest], None)
            .unwrap_err()
            .to_string()
            .contains("names a digest"));
        assert!(tags(&["ghcr.io/lab/a"], None)
            .unwrap_err()
            .to_string()
            .contains("names no tag"));
        assert_eq!(
            tags(&["-x"], None).unwrap_err().to_string(),
            "--tag \"-x\" is not a valid tag (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
        );
    }

    #[test]
    fn files_shaped_like_metadata_actions_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let tags_file = dir.path().join("tags");
        std::fs::write(
            &tags_file,
            "ghcr.io/lab/exp:main\n\nghcr.io/lab/exp:sha-1234567\r\n",
        )
        .unwrap();
        let labels_file = dir.path().join("labels");
        std::fs::write(
            &labels_file,
            "org.opencontainers.image.title=exp\norg.opencontainers.image.description=A = B\n\n",
        )
        .unwrap();
        let annotations_file = dir.path().join("annotations");
        std::fs::write(
            &annotations_file,
            "manifest:org.opencontainers.image.description=Stroop\nmanifest-descriptor:a=b\n",
        )
        .unwrap();
        let labels = strings(&["org.opencontainers.image.title=override"]);
        let metadata = ImageMetadata::from_args(&MetadataArgs {
            tags_files: &[tags_file],
            labels: &labels,
            labels_files: std::slice::from_ref(&labels_file),
            annotations_files: &[annotations_file],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            metadata.resolve_tags(None).unwrap(),
            (
                Some("ghcr.io/lab/exp".into()),
                strings(&["main", "sha-1234567"])
            )
        );
        // The file comes after the flags: its line wins.
        assert_eq!(metadata.labels["org.opencontainers.image.title"], "exp");
        assert_eq!(
            metadata.labels["org.opencontainers.image.description"],
            "A = B"
        );
        assert_eq!(
            metadata.annotations,
            BTreeMap::from([
                ("a".to_string(), "b".to_string()),
                (
                    "org.opencontainers.image.description".to_string(),
                    "Stroop".to_string()
                )
            ])
        );
        std::fs::write(&labels_file, "a=1\n\nno equals sign\n").unwrap();
        let err = ImageMetadata::from_args(&MetadataArgs {
            labels_files: std::slice::from_ref(&labels_file),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            format!(
                "--labels-file {} line 3 \"no equals sign\" is not KEY=VALUE: give each label as KEY=VALUE",
                labels_file.display()
            )
        );
        let err = ImageMetadata::from_args(&MetadataArgs {
            annotations: &strings(&["index:a=b"]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("--annotation: the annotation \"index:a\" is for an image index"),
            "{err}"
        );
        let missing = dir.path().join("missing");
        let err = ImageMetadata::from_args(&MetadataArgs {
            tags_files: std::slice::from_ref(&missing),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            format!("cannot read the --tags-file file {}", missing.display())
        );
    }

    #[test]
    fn wall_clock_times_are_named_unless_they_are_the_builds() {
        let labels = strings(&[
            "org.opencontainers.image.created=2026-12-01T23:10:04.123Z",
            "org.opencontainers.image.version=main",
            "built=2000-01-01T00:00:00Z",
            // metadata-action's {{commit_date 'YYYY-MM-DDTHH:mm:ss.SSS[Z]'}}.
            "committed=2000-01-01T00:00:00.000Z",
        ]);
        let annotations = strings(&["manifest:org.opencontainers.image.created=2026-12-01 23:10"]);
        let metadata = ImageMetadata::from_args(&MetadataArgs {
            labels: &labels,
            annotations: &annotations,
            ..Default::default()
        })
        .unwrap();
        let warnings = metadata.wall_clock_warnings(946_684_800);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "the label org.opencontainers.image.created=2026-12-01T23:10:04.123Z (--label) \
                 is a wall-clock time, so the image's digest changes on every run"
            ),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("SOURCE_DATE_EPOCH"), "{}", warnings[0]);
        assert!(warnings[0].ends_with("give this time as 2000-01-01T00:00:00Z)"));
        assert!(warnings[1].starts_with("the annotation org.opencontainers.image.created="));
        assert!(is_date_time("2026-12-01t10:00"));
        assert!(!is_date_time("2026-12-01"));
        assert!(!is_date_time("v2026-12-01T10:00"));
    }
}
