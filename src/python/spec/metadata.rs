//! Core metadata (`METADATA` / PEP 658 `.metadata`): the RFC 822 style
//! header block it is written in (as `WHEEL` is), the `Requires-Dist`
//! entries, which of them apply on the target, and `Requires-Python`.

use pep440_rs::{Version, VersionSpecifiers};
use pep508_rs::{Requirement as Pep508Requirement, VersionOrUrl};

use super::markers::{self, MarkerEnv, MarkerError};
use super::names::{normalise_name, PackageName};

/// Errors from reading core metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid Requires-Dist entry `{entry}`: {message}")]
    RequiresDist { entry: String, message: String },
    #[error(transparent)]
    Marker(#[from] MarkerError),
    #[error("invalid Requires-Python `{spec}`: {message}")]
    RequiresPython { spec: String, message: String },
}

/// One dependency that applies on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// As written in `Requires-Dist`.
    pub name: String,
    pub normalised: PackageName,
    /// PEP 685 normalised extras requested of the dependency.
    pub extras: Vec<String>,
    /// Version specifier, normalised rendering (e.g. ">=4.0.3"); "" for any.
    pub specifier: String,
    /// Direct URL (`name @ url`), if the metadata gives one.
    pub url: Option<String>,
}

impl Dependency {
    /// Whether `version` satisfies the specifier. An unparsable version is
    /// treated as not satisfying a non-empty specifier.
    pub fn allows(&self, version: &str) -> bool {
        if self.specifier.is_empty() {
            return true;
        }
        let (Ok(spec), Ok(v)) = (
            self.specifier.parse::<VersionSpecifiers>(),
            version.parse::<Version>(),
        ) else {
            return false;
        };
        spec.contains(&v)
    }
}

/// Parses the header block of an RFC 822 style file (everything before the
/// first empty line): `Name: value` lines, with continuation lines (starting
/// with a space or tab) unfolded into the value. Returns the fields in order;
/// a field may repeat. The one reading of `METADATA`, `PKG-INFO` and
/// `WHEEL`.
pub(crate) fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            match fields.last_mut() {
                Some((_, value)) => {
                    value.push('\n');
                    value.push_str(line);
                }
                None => {
                    return Err(format!(
                        "line {}: a continuation line before any field",
                        n + 1
                    ))
                }
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!(
                "line {}: {line:?} is not a `Name: value` field",
                n + 1
            ));
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(format!("line {}: invalid field name {name:?}", n + 1));
        }
        fields.push((name.to_string(), value.to_string()));
    }
    // Values lose the whitespace around them; folded values keep one space
    // per fold, as email's unfolding does.
    Ok(fields
        .into_iter()
        .map(|(name, value)| {
            let unfolded: Vec<&str> = value.split('\n').map(str::trim).collect();
            (name, unfolded.join(" ").trim().to_string())
        })
        .collect())
}

/// The first value of field `name` (case-insensitive).
pub(crate) fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of field `name` (case-insensitive), in order.
pub(crate) fn headers_all<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// All values of header `name` (case-insensitive), in order, read as the
/// installer reads them ([`parse_headers`]); a document whose header block
/// does not parse has none (the installer refuses it).
pub fn header_values(metadata_text: &str, name: &str) -> Vec<String> {
    let fields = parse_headers(metadata_text).unwrap_or_default();
    headers_all(&fields, name)
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The `Requires-Dist` entries, as written.
pub fn requires_dist(metadata_text: &str) -> Vec<String> {
    header_values(metadata_text, "Requires-Dist")
}

/// The `Requires-Python` value, if any.
pub fn requires_python(metadata_text: &str) -> Option<String> {
    header_values(metadata_text, "Requires-Python")
        .into_iter()
        .next()
        .filter(|v| !v.is_empty())
}

/// The dependencies among `requires_dist` that apply on `env` when the
/// package is requested with `extras`.
///
/// As pip does, each entry's marker is evaluated with `extra` set to "" and
/// to each requested extra in turn; the entry applies if any evaluation is
/// true. The result keeps the entries' order; an entry listed twice (e.g.
/// once per extra) appears once.
pub fn applicable_dependencies(
    requires_dist: &[String],
    extras: &[String],
    env: &MarkerEnv,
) -> Result<Vec<Dependency>, MetadataError> {
    let mut contexts: Vec<Vec<pep508_rs::ExtraName>> = vec![Vec::new()];
    for extra in markers::extra_names(extras)? {
        contexts.push(vec![extra]);
    }
    let mut out: Vec<Dependency> = Vec::new();
    for entry in requires_dist {
        let req = parse_pep508(entry.trim()).map_err(|message| MetadataError::RequiresDist {
            entry: entry.clone(),
            message,
        })?;
        let applies = contexts
            .iter()
            .any(|ctx| req.marker.evaluate(env.pep508(), ctx));
        if !applies {
            continue;
        }
        let (specifier, url) = match &req.version_or_url {
            None => (String::new(), None),
            Some(VersionOrUrl::VersionSpecifier(s)) => (s.to_string(), None),
            Some(VersionOrUrl::Url(u)) => (String::new(), Some(u.to_string())),
        };
        let dep = Dependency {
            name: written_name(entry),
            normalised: PackageName::new(req.name.as_ref()),
            extras: req.extras.iter().map(|e| e.to_string()).collect(),
            specifier,
            url,
        };
        if !out.contains(&dep) {
            out.push(dep);
        }
    }
    Ok(out)
}

/// [`applicable_dependencies`] as (normalised name, extras) pairs, for the
/// tests.
#[cfg(test)]
fn applicable_names(
    requires_dist: &[String],
    extras: &[String],
    env: &MarkerEnv,
) -> Result<Vec<(String, Vec<String>)>, MetadataError> {
    Ok(applicable_dependencies(requires_dist, extras, env)?
        .into_iter()
        .map(|d| (d.normalised.into_string(), d.extras))
        .collect())
}

/// A PEP 508 requirement, or pep508_rs's message why it is not one.
///
/// pep508_rs 0.9 panics, rather than returning an error, on a name or an
/// extra that ends in `-`, `_` or `.` when more text follows (`a-[x]`,
/// `a- ==1`, `a[b-]`), and on some markers with characters outside ASCII
/// ([`markers::check_marker_text`]): any wheel's `Requires-Dist` or
/// requirements line could stop the build that way. Those are refused here
/// before it parses.
pub(crate) fn parse_pep508(text: &str) -> Result<Pep508Requirement, String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let bad_end = |token: &str| {
        token.starts_with(|c: char| c.is_ascii_alphanumeric())
            && token.chars().all(is_name_char)
            && token.ends_with(['.', '-', '_'])
    };
    let text_start = text.trim_start();
    let name_end = text_start
        .find(|c: char| !is_name_char(c))
        .unwrap_or(text_start.len());
    let name = &text_start[..name_end];
    if name_end < text_start.len() && bad_end(name) {
        return Err(format!(
            "the name `{name}` ends with `{}`: a name ends with a letter or digit",
            &name[name.len() - 1..]
        ));
    }
    if let Some(extras) = text_start[name_end..].trim_start().strip_prefix('[') {
        let inside = extras.split(']').next().unwrap_or_default();
        if let Some(extra) = inside
            .split(|c: char| c == ',' || c.is_whitespace())
            .find(|e| bad_end(e))
        {
            return Err(format!(
                "the extra `{extra}` ends with `{}`: an extra ends with a letter or digit",
                &extra[extra.len() - 1..]
            ));
        }
    }
    if let Some((_, marker)) = text.split_once(';') {
        markers::check_marker_text(marker)?;
    }
    text.parse()
        .map_err(|e: pep508_rs::Pep508Error| e.message.to_string())
}

/// The distribution name as written at the start of a PEP 508 string.
pub(crate) fn written_name(requirement: &str) -> String {
    let name: String = requirement
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    if name.is_empty() {
        normalise_name(requirement.trim())
    } else {
        name
    }
}

/// Parses a `Requires-Python` value, tolerating the malformed forms found
/// on PyPI that older tools accepted (`>=3.6.*`, quotes, trailing commas,
/// `=>`), as uv does. Strict parsing is tried first.
pub fn parse_requires_python(spec: &str) -> Result<VersionSpecifiers, MetadataError> {
    let strict = spec.trim().parse::<VersionSpecifiers>();
    match strict {
        Ok(s) => Ok(s),
        Err(err) => {
            let fixed = lenient(spec);
            fixed
                .parse::<VersionSpecifiers>()
                .map_err(|_| MetadataError::RequiresPython {
                    spec: spec.to_string(),
                    message: err.to_string().lines().next().unwrap_or("").to_string(),
                })
        }
    }
}

fn lenient(spec: &str) -> String {
    spec.split(',')
        .map(|part| {
            let mut p = part.trim().replace(['"', '\''], "");
            if let Some(rest) = p.strip_prefix("=>") {
                p = format!(">={rest}");
            }
            let op_end = p.find(|c: char| c.is_ascii_digit()).unwrap_or(0);
            let op = p[..op_end].trim();
            if matches!(op, ">=" | "<=" | ">" | "<" | "~=") {
                if let Some(stripped) = p.strip_suffix(".*") {
                    p = stripped.to_string();
                }
            }
            p
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the Python `version` satisfies a `Requires-Python` spec. An empty
/// spec is satisfied by every version.
pub fn python_satisfies(spec: &str, version: (u32, u32, u32)) -> Result<bool, MetadataError> {
    if spec.trim().is_empty() {
        return Ok(true);
    }
    let specifiers = parse_requires_python(spec)?;
    let v = Version::new([
        u64::from(version.0),
        u64::from(version.1),
        u64::from(version.2),
    ]);
    Ok(specifiers.contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS: &str = "Metadata-Version: 2.1\r\n\
Name: redis\r\n\
Version: 5.0.1\r\n\
Summary: Python client for Redis database and key-value store\r\n\
Requires-Python: >=3.7\r\n\
Description-Content-Type: text/markdown\r\n\
License-File: LICENSE\r\n\
Requires-Dist: async-timeout>=4.0.2; python_full_version <= \"3.11.2\"\r\n\
Requires-Dist: importlib-metadata>=1.0; python_version < \"3.8\"\r\n\
Provides-Extra: hiredis\r\n\
Requires-Dist: hiredis>=1.0.0; extra == \"hiredis\"\r\n\
Provides-Extra: ocsp\r\n\
Requires-Dist: cryptography>=36.0.1; extra == \"ocsp\"\r\n\
Requires-Dist: pyopenssl==20.0.1; extra == \"ocsp\"\r\n\
\r\n\
Requires-Dist: not-a-header\r\n";

    fn env(v: (u32, u32, u32)) -> MarkerEnv {
        MarkerEnv::cpython_linux("x86_64", v)
    }

    #[test]
    fn a_name_or_extra_ending_in_a_separator_is_an_error_not_a_panic() {
        let e = env((3, 11, 2));
        for (entry, what) in [
            ("a-[x]", "the name `a-`"),
            ("a_ >=1", "the name `a_`"),
            ("a. ; python_version > \"3\"", "the name `a.`"),
            ("a[W-]", "the extra `W-`"),
            ("a [x, y_ ]==1", "the extra `y_`"),
        ] {
            let err = applicable_dependencies(&[entry.to_string()], &[], &e)
                .unwrap_err()
                .to_string();
            assert!(err.contains(entry) && err.contains(what), "{entry}: {err}");
        }
        // Characters outside ASCII after a marker expression (pep508_rs
        // sliced inside them).
        for entry in [
            "a==1; python_version == \"2.0\" \u{e9}",
            "a; python_version > '3' \u{e9}\u{feff}\u{e9}",
            "a ; (os_name == 'posix' \u{e9})",
            "a==0.0; python_version == \"2.0\" \"\u{feff}",
            "a; platform_release == '\u{e9}x'",
        ] {
            let err = applicable_dependencies(&[entry.to_string()], &[], &e)
                .unwrap_err()
                .to_string();
            assert!(err.contains("a marker is ASCII"), "{entry}: {err}");
            assert!(markers::parse(entry.split_once(';').unwrap().1).is_err());
        }
        // Still pep508_rs's own errors and results elsewhere.
        assert!(parse_pep508("a-").is_err());
        assert!(parse_pep508("a[-b]").is_err());
        let ok = parse_pep508(" a-b.c_d [x-y] >=1").unwrap();
        assert_eq!(ok.name.to_string(), "a-b-c-d");
    }

    #[test]
    fn reads_headers() {
        let rd = requires_dist(REDIS);
        assert_eq!(rd.len(), 5);
        assert_eq!(
            rd[0],
            "async-timeout>=4.0.2; python_full_version <= \"3.11.2\""
        );
        assert_eq!(requires_python(REDIS).as_deref(), Some(">=3.7"));
        assert_eq!(header_values(REDIS, "name"), vec!["redis"]);
        let folded = "Name: x\nDescription: a\n  b\n       |c\nRequires-Dist: y\n";
        assert_eq!(requires_dist(folded), vec!["y"]);
        // Folded as the installer folds them (one parse_headers).
        for text in [
            "Name: x\nRequires-Dist: a==1\n\t\nVersion: 1\n",
            "Name: x\nRequires-Dist: a\n  >=1 ;\n python_version > '3'\nVersion: 1\n",
            "Name: x\nVersion: 1\n\rRequires-Dist: y\n",
        ] {
            let installer = crate::python::install::CoreMetadata::parse("METADATA", text).unwrap();
            assert_eq!(requires_dist(text), installer.requires_dist, "{text:?}");
        }
    }

    #[test]
    fn redis_needs_async_timeout_below_3_11_3() {
        // redis 5.x on PyPI today: `python_full_version < "3.11.3"`.
        let rd = vec![
            "async-timeout>=4.0.3; python_full_version < \"3.11.3\"".to_string(),
            "hiredis>=3.0.0; extra == \"hiredis\"".to_string(),
        ];
        let deps = applicable_names(&rd, &[], &env((3, 11, 2))).unwrap();
        assert_eq!(deps, vec![("async-timeout".to_string(), vec![])]);
        assert!(applicable_names(&rd, &[], &env((3, 11, 4)))
            .unwrap()
            .is_empty());
        let full = applicable_dependencies(&rd, &["hiredis".into()], &env((3, 11, 4))).unwrap();
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].normalised, "hiredis");
        assert_eq!(full[0].specifier, ">=3.0.0");
        assert!(full[0].allows("3.1.0"));
        assert!(!full[0].allows("2.3"));
    }

    #[test]
    fn extras_and_normalisation() {
        let rd = vec![
            "Zope.Interface[Test_Extra] ; extra == 'Recommended'".to_string(),
            "psutil>=5.9 ; extra == \"recommended\" and sys_platform == \"win32\"".to_string(),
            "greenlet>=3.0rc3 ; platform_python_implementation == \"CPython\"".to_string(),
            "backports.zoneinfo ; extra != \"tz\"".to_string(),
        ];
        let deps = applicable_dependencies(&rd, &["recommended".into()], &env((3, 11, 2))).unwrap();
        let names: Vec<_> = deps.iter().map(|d| d.normalised.as_str()).collect();
        assert_eq!(
            names,
            vec!["zope-interface", "greenlet", "backports-zoneinfo"]
        );
        assert_eq!(deps[0].name, "Zope.Interface");
        assert_eq!(deps[0].extras, vec!["test-extra"]);
        // `extra != "tz"` holds for the "" evaluation, as in pip.
        let deps = applicable_names(&rd, &["tz".into()], &env((3, 11, 2))).unwrap();
        assert!(deps.iter().any(|(n, _)| n == "backports-zoneinfo"));
    }

    #[test]
    fn bad_requires_dist_is_an_error() {
        let err = applicable_names(&["foo >= ; bar".into()], &[], &env((3, 11, 2))).unwrap_err();
        assert!(err.to_string().contains("foo >= ; bar"), "{err}");
    }

    #[test]
    fn requires_python_checks() {
        assert!(python_satisfies(">=3.8", (3, 11, 2)).unwrap());
        assert!(!python_satisfies(">=3.12", (3, 11, 2)).unwrap());
        assert!(python_satisfies(">=2.7, !=3.0.*, !=3.1.*, !=3.2.*", (3, 11, 2)).unwrap());
        assert!(!python_satisfies("<3.11.3,>=3.7", (3, 11, 4)).unwrap());
        assert!(python_satisfies("", (3, 11, 2)).unwrap());
        assert!(python_satisfies("~=3.11", (3, 12, 0)).unwrap());
        assert!(!python_satisfies("==3.10.*", (3, 11, 0)).unwrap());
        // Lenient forms.
        assert!(python_satisfies(">=3.6.*", (3, 11, 2)).unwrap());
        assert!(python_satisfies(">= '3.7',", (3, 11, 2)).unwrap());
        assert!(python_satisfies("=>3.7", (3, 11, 2)).unwrap());
        assert!(python_satisfies("nonsense", (3, 11, 2)).is_err());
    }
}
