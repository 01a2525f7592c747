//! The pin set of a target: every distribution to install, at one exact
//! version, taken from `constraints.txt` (or `requirements.txt` when there
//! is none), and the check that it is closed under the dependencies that
//! apply on the target (no resolver: a missing pin is an error).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};

use pep440_rs::{Version, VersionSpecifiers};

use super::markers::{self, MarkerEnv};
use super::metadata::Dependency;
use super::names::{same_version, PackageName};
use super::requirements::{ParsedFile, Requirement};
use crate::python::source::GitUrl;

/// One pinned distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedPackage {
    /// As first written.
    pub name: String,
    /// The exact version (normalised PEP 440 rendering).
    pub version: String,
    /// Extras requested on the pin lines (PEP 685 normalised, sorted).
    pub extras: Vec<String>,
    /// `sha256:HEX` hashes allowed for its file (empty: none given).
    pub hashes: Vec<String>,
    /// Direct wheel URL, if the pin is one.
    pub url: Option<String>,
    /// A git URL to build from; `version` is then empty until the wheel is
    /// built ([`PinnedPackage::with_version`]).
    pub git: Option<GitUrl>,
    /// Where it is pinned.
    pub file: PathBuf,
    pub line: usize,
}

impl PinnedPackage {
    /// Where this pin is, for messages.
    fn pin_ref(&self) -> PinRef {
        PinRef {
            file: self.file.clone(),
            line: self.line,
            pin: self.text(),
        }
    }

    /// e.g. "flask==3.0.3", "name @ URL" or "name @ git+URL@REF" (no
    /// credentials).
    pub fn text(&self) -> String {
        match &self.git {
            Some(git) => format!("{} @ {}", self.name, git.display()),
            None => pin_text(&self.name, &self.version, self.url.as_ref()),
        }
    }

    /// Adds extras requested on another line for the same package.
    fn add_extras(&mut self, extras: &[String]) {
        self.extras.extend(extras.iter().cloned());
        self.extras.sort();
        self.extras.dedup();
    }
}

/// Where a pin is, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRef {
    pub file: PathBuf,
    pub line: usize,
    /// e.g. "flask==3.0.3" (or "name @ url").
    pub pin: String,
}

fn pin_text(name: &str, version: &str, url: Option<&String>) -> String {
    match url {
        Some(url) => format!("{name} @ {url}"),
        None => format!("{name}=={version}"),
    }
}

/// Errors building the pin set.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{}:{line}: `{requirement}` is not pinned: run `dallinger constraints generate` or pin \
         it with ==",
        file.display()
    )]
    NotPinned {
        file: PathBuf,
        line: usize,
        requirement: String,
    },
    #[error(
        "{}:{line}: {pin} conflicts with {} at {}:{}: keep one pin",
        file.display(),
        other.pin,
        other.file.display(),
        other.line
    )]
    Conflict {
        file: PathBuf,
        line: usize,
        /// e.g. "Flask==3.0.2" (or "name @ url").
        pin: String,
        other: Box<PinRef>,
    },
    #[error(
        "{}:{line}: `{requirement}` is not satisfied by the pin {} at {}:{}: change one of them",
        file.display(),
        pin.pin,
        pin.file.display(),
        pin.line
    )]
    Unsatisfied {
        file: PathBuf,
        line: usize,
        requirement: String,
        pin: Box<PinRef>,
    },
    #[error(
        "{}:{line}: {name}=={version} has no --hash, but hashes are required (another pin has \
         them, or --require-hashes is set): regenerate the file with hashes for every package",
        file.display()
    )]
    MissingHashes {
        file: PathBuf,
        line: usize,
        name: String,
        version: String,
    },
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

fn display_requirement(r: &Requirement) -> String {
    let mut s = r.name.clone();
    if !r.extras.is_empty() {
        s.push_str(&format!("[{}]", r.extras.join(",")));
    }
    s.push_str(&r.specifier);
    if let Some(url) = &r.url {
        s.push_str(&format!(" @ {url}"));
    }
    s
}

/// Whether `r`'s marker holds on `env` (evaluated with `extra` = "", as pip
/// does for top-level lines).
fn applies(r: &Requirement, env: &MarkerEnv) -> Result<bool, PinError> {
    match &r.marker {
        None => Ok(true),
        Some(m) => markers::evaluate(m, env, &[]).map_err(|e| PinError::Invalid {
            file: r.file.clone(),
            line: r.line,
            message: e.to_string(),
        }),
    }
}

/// The pin set of `parsed` on the target `env`, keyed by normalised name.
///
/// Requirements and constraints whose markers are false on the target are
/// dropped. Every other line must be pinned with `==` (or be a direct wheel
/// URL), or be satisfied by such a pin of the same name elsewhere in the
/// files (e.g. `dallinger[docker]` in requirements.txt with
/// `dallinger==12.3.0` in an included constraints file). Two different pins
/// of one name are an error. When any pin has hashes (or
/// `--require-hashes` is set), every pin must have them, as in pip; the
/// hashes of two lines pinning the same version are intersected.
pub fn pins_for_target(
    parsed: &ParsedFile,
    env: &MarkerEnv,
) -> Result<BTreeMap<PackageName, PinnedPackage>, PinError> {
    let mut pins: BTreeMap<PackageName, PinnedPackage> = BTreeMap::new();
    let mut unpinned: Vec<&Requirement> = Vec::new();
    for r in parsed.requirements.iter().chain(&parsed.constraints) {
        if !applies(r, env)? {
            continue;
        }
        // A git requirement pins its source; its version comes from the
        // wheel built from it.
        let version = match (&r.pinned, &r.git) {
            (Some(version), _) => version.as_str(),
            (None, Some(_)) => "",
            (None, None) => {
                unpinned.push(r);
                continue;
            }
        };
        match pins.get_mut(&r.normalised) {
            None => {
                let mut extras = r.extras.clone();
                extras.sort();
                extras.dedup();
                pins.insert(
                    r.normalised.clone(),
                    PinnedPackage {
                        name: r.name.clone(),
                        version: version.to_string(),
                        extras,
                        hashes: r.hashes.clone(),
                        url: r.url.clone(),
                        git: r.git.clone(),
                        file: r.file.clone(),
                        line: r.line,
                    },
                );
            }
            Some(pin) => {
                // Versions that are not PEP 440 (a git pin's, empty) conflict
                // unless written alike.
                let conflict = !same_version(&pin.version, version)
                    .unwrap_or(pin.version == version)
                    || (pin.url.is_some() && r.url.is_some() && pin.url != r.url)
                    || pin.git != r.git;
                if conflict {
                    return Err(PinError::Conflict {
                        file: r.file.clone(),
                        line: r.line,
                        pin: match &r.git {
                            Some(git) => format!("{} @ {}", r.name, git.display()),
                            None => pin_text(&r.name, version, r.url.as_ref()),
                        },
                        other: Box::new(pin.pin_ref()),
                    });
                }
                pin.add_extras(&r.extras);
                if pin.url.is_none() {
                    pin.url = r.url.clone();
                }
                if pin.hashes.is_empty() {
                    pin.hashes = r.hashes.clone();
                } else if !r.hashes.is_empty() {
                    let both: Vec<String> = pin
                        .hashes
                        .iter()
                        .filter(|h| r.hashes.contains(h))
                        .cloned()
                        .collect();
                    if both.is_empty() {
                        return Err(PinError::Invalid {
                            file: r.file.clone(),
                            line: r.line,
                            message: format!(
                                "the --hash values for {}=={version} share none with those at \
                                 {}:{}: no file could match both",
                                r.name,
                                pin.file.display(),
                                pin.line
                            ),
                        });
                    }
                    pin.hashes = both;
                }
            }
        }
    }
    for r in unpinned {
        let Some(pin) = pins.get_mut(&r.normalised) else {
            return Err(PinError::NotPinned {
                file: r.file.clone(),
                line: r.line,
                requirement: display_requirement(r),
            });
        };
        // A git pin's version is known after its build only; the pin
        // stands for the line (as a direct URL does in pip).
        let satisfied = r.specifier.is_empty()
            || pin.git.is_some()
            || match (
                r.specifier.parse::<VersionSpecifiers>(),
                pin.version.parse::<Version>(),
            ) {
                (Ok(spec), Ok(v)) => spec.contains(&v),
                _ => false,
            };
        if !satisfied {
            return Err(PinError::Unsatisfied {
                file: r.file.clone(),
                line: r.line,
                requirement: display_requirement(r),
                pin: Box::new(pin.pin_ref()),
            });
        }
        pin.add_extras(&r.extras);
    }
    let hash_mode = parsed.options.require_hashes || pins.values().any(|p| !p.hashes.is_empty());
    if hash_mode {
        let mut unhashed: Vec<&PinnedPackage> =
            pins.values().filter(|p| p.hashes.is_empty()).collect();
        unhashed.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        if let Some(p) = unhashed.first() {
            return Err(PinError::MissingHashes {
                file: p.file.clone(),
                line: p.line,
                name: p.name.clone(),
                version: p.version.clone(),
            });
        }
    }
    Ok(pins)
}

/// One way the pin set is not closed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClosureProblem {
    /// `package` needs `dependency`, which is not pinned.
    Missing {
        package: String,
        version: String,
        dependency: String,
        extras: Vec<String>,
        specifier: String,
        pins_file: String,
    },
    /// `package` needs `dependency` at `specifier`, but its pin does not match.
    Mismatch {
        package: String,
        version: String,
        dependency: String,
        specifier: String,
        pinned: String,
        pins_file: String,
    },
}

/// The pin set is not closed under the target's dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosureError {
    /// "3.11.2".
    pub python: String,
    /// Sorted by package, then dependency.
    pub problems: Vec<ClosureProblem>,
}

impl std::error::Error for ClosureError {}

impl fmt::Display for ClosureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let py = &self.python;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p {
                ClosureProblem::Missing {
                    package,
                    version,
                    dependency,
                    extras,
                    specifier,
                    pins_file,
                } => {
                    let extras = if extras.is_empty() {
                        String::new()
                    } else {
                        format!("[{}]", extras.join(","))
                    };
                    let matching = if specifier.is_empty() {
                        String::new()
                    } else {
                        format!(" with a version matching `{specifier}`")
                    };
                    write!(
                        f,
                        "{package}=={version} requires {dependency}{extras} on this target \
                         (Python {py}), but {pins_file} does not pin it: add \
                         `{dependency}==VERSION`{matching} (see `dallinger constraints generate`)"
                    )?;
                }
                ClosureProblem::Mismatch {
                    package,
                    version,
                    dependency,
                    specifier,
                    pinned,
                    pins_file,
                } => write!(
                    f,
                    "{package}=={version} requires {dependency}{specifier} on this target \
                     (Python {py}), but {pins_file} pins {dependency}=={pinned}: pin a version \
                     matching `{specifier}` (see `dallinger constraints generate`)"
                )?,
            }
        }
        Ok(())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Checks that every dependency of every pinned package, on the target, is
/// itself pinned at a version its specifier allows.
///
/// `deps_of(normalised_name, extras)` gives the dependencies of a pinned
/// package that apply on the target when it is requested with `extras`
/// (markers already evaluated, e.g. with
/// [`super::metadata::applicable_dependencies`]). Extras propagate: when a
/// package requires `gevent[recommended]`, gevent's `recommended`
/// dependencies are checked too (uv-compiled constraints carry no extras on
/// their pins). `python` is the target's full version, for messages.
///
/// All problems are reported, sorted.
pub fn check_closed(
    pins: &BTreeMap<PackageName, PinnedPackage>,
    deps_of: &dyn Fn(&str, &[String]) -> Vec<Dependency>,
    python: (u32, u32, u32),
) -> Result<(), ClosureError> {
    let mut active: BTreeMap<&str, BTreeSet<String>> = pins
        .iter()
        .map(|(k, p)| (k.as_str(), p.extras.iter().cloned().collect()))
        .collect();
    let mut done: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut queue: VecDeque<&str> = pins.keys().map(PackageName::as_str).collect();
    let mut problems: BTreeSet<ClosureProblem> = BTreeSet::new();
    while let Some(name) = queue.pop_front() {
        let extras = active[name].clone();
        if done.get(name) == Some(&extras) {
            continue;
        }
        done.insert(name, extras.clone());
        let pin = &pins[name];
        let extras: Vec<String> = extras.into_iter().collect();
        for dep in deps_of(name, &extras) {
            match pins.get_key_value(dep.normalised.as_str()) {
                None => {
                    problems.insert(ClosureProblem::Missing {
                        package: pin.name.clone(),
                        version: pin.version.clone(),
                        dependency: dep.name.clone(),
                        extras: dep.extras.clone(),
                        specifier: dep.specifier.clone(),
                        pins_file: file_name(&pin.file),
                    });
                }
                Some((dep_key, dep_pin)) => {
                    if dep.url.is_none() && !dep.allows(&dep_pin.version) {
                        problems.insert(ClosureProblem::Mismatch {
                            package: pin.name.clone(),
                            version: pin.version.clone(),
                            dependency: dep.name.clone(),
                            specifier: dep.specifier.clone(),
                            pinned: dep_pin.version.clone(),
                            pins_file: file_name(&dep_pin.file),
                        });
                    }
                    let set = active
                        .get_mut(dep_key.as_str())
                        .expect("every pin is active");
                    let mut grew = false;
                    for e in &dep.extras {
                        grew |= set.insert(e.clone());
                    }
                    if grew {
                        queue.push_back(dep_key.as_str());
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ClosureError {
            python: format!("{}.{}.{}", python.0, python.1, python.2),
            problems: problems.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::spec::metadata::applicable_dependencies;
    use crate::python::spec::requirements::parse_file;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn env(v: (u32, u32, u32)) -> MarkerEnv {
        MarkerEnv::cpython_linux("x86_64", v)
    }

    /// A tiny metadata "index": Requires-Dist per pinned package.
    fn deps_from(
        table: &'static [(&'static str, &'static [&'static str])],
        env: MarkerEnv,
    ) -> impl Fn(&str, &[String]) -> Vec<Dependency> {
        move |name, extras| {
            let rd: Vec<String> = table
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, d)| d.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default();
            applicable_dependencies(&rd, extras, &env).unwrap()
        }
    }

    const TABLE: &[(&str, &[&str])] = &[
        (
            "redis",
            &[
                "async-timeout>=4.0.3; python_full_version < \"3.11.3\"",
                "hiredis>=3.0.0; extra == \"hiredis\"",
            ],
        ),
        ("async-timeout", &[]),
        ("flask", &["werkzeug>=3.0.0", "click>=8.1.3"]),
        ("werkzeug", &["markupsafe>=2.1.1"]),
        ("click", &["colorama; platform_system == \"Windows\""]),
        ("markupsafe", &[]),
        (
            "dallinger",
            &[
                "gevent[recommended]",
                "flask",
                "redis",
                "pytest; extra == \"dev\"",
            ],
        ),
        (
            "gevent",
            &[
                "greenlet>=3.0rc3; platform_python_implementation == \"CPython\"",
                "psutil>=5.7.0; extra == \"recommended\" and sys_platform != \"win32\"",
            ],
        ),
        ("greenlet", &[]),
        ("psutil", &[]),
    ];

    const CONSTRAINTS: &str = "\
#
# This file is autogenerated by pip-compile with Python 3.11
# by the following command:
#
#    dallinger constraints generate
#
# Compiled from a requirements.txt file with md5sum 0123abcd and a .python-version file requesting Python 3.11
click==8.1.7
    # via flask
dallinger==12.3.0
    # via -r requirements.txt
flask==3.0.3
    # via dallinger
gevent==24.2.1
    # via dallinger
greenlet==3.0.3
    # via gevent
markupsafe==2.1.5
    # via werkzeug
psutil==5.9.8
    # via gevent
redis==5.0.1
    # via dallinger
werkzeug==3.0.3
    # via flask
";

    #[test]
    fn redis_needs_async_timeout_on_3_11_2_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "constraints.txt", CONSTRAINTS);
        let parsed = parse_file(&path).unwrap();

        let e = env((3, 11, 2));
        let pins = pins_for_target(&parsed, &e).unwrap();
        assert_eq!(pins.len(), 9);
        let err = check_closed(&pins, &deps_from(TABLE, e), (3, 11, 2)).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(
            err.to_string(),
            "redis==5.0.1 requires async-timeout on this target (Python 3.11.2), but \
             constraints.txt does not pin it: add `async-timeout==VERSION` with a version \
             matching `>=4.0.3` (see `dallinger constraints generate`)"
        );

        let e = env((3, 11, 4));
        let pins = pins_for_target(&parsed, &e).unwrap();
        check_closed(&pins, &deps_from(TABLE, e), (3, 11, 4)).unwrap();

        // Adding the pin closes the set on 3.11.2.
        let path = write(
            dir.path(),
            "constraints.txt",
            &format!("{CONSTRAINTS}async-timeout==4.0.3\n    # via redis\n"),
        );
        let parsed = parse_file(&path).unwrap();
        let e = env((3, 11, 2));
        let pins = pins_for_target(&parsed, &e).unwrap();
        check_closed(&pins, &deps_from(TABLE, e), (3, 11, 2)).unwrap();
    }

    #[test]
    fn extras_propagate_and_versions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        // psutil is only needed through dallinger's `gevent[recommended]`.
        let text = CONSTRAINTS
            .replace("psutil==5.9.8\n", "")
            .replace("werkzeug==3.0.3", "werkzeug==3.0.3\nasync-timeout==4.0.2");
        let path = write(dir.path(), "constraints.txt", &text);
        let parsed = parse_file(&path).unwrap();
        let e = env((3, 11, 2));
        let pins = pins_for_target(&parsed, &e).unwrap();
        let err = check_closed(&pins, &deps_from(TABLE, e), (3, 11, 2)).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.problems.len(), 2, "{msg}");
        assert!(
            msg.contains("gevent==24.2.1 requires psutil on this target"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "redis==5.0.1 requires async-timeout>=4.0.3 on this target (Python 3.11.2), \
                 but constraints.txt pins async-timeout==4.0.2"
            ),
            "{msg}"
        );
    }

    #[test]
    fn markers_drop_pins_and_unpinned_lines_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "constraints.txt",
            "flask==3.0.3\n\
             async-timeout==4.0.3 ; python_full_version < \"3.11.3\"\n\
             pywin32==306 ; sys_platform == \"win32\"\n\
             requests>=2 ; sys_platform == \"win32\"\n",
        );
        let parsed = parse_file(&path).unwrap();
        let pins = pins_for_target(&parsed, &env((3, 11, 2))).unwrap();
        assert_eq!(
            pins.keys().collect::<Vec<_>>(),
            vec!["async-timeout", "flask"]
        );
        let pins = pins_for_target(&parsed, &env((3, 11, 4))).unwrap();
        assert_eq!(pins.keys().collect::<Vec<_>>(), vec!["flask"]);

        let path = write(
            dir.path(),
            "requirements.txt",
            "flask==3.0.3\n\n# c\nredis>=5\n",
        );
        let err = pins_for_target(&parse_file(&path).unwrap(), &env((3, 11, 2))).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:4: `redis>=5` is not pinned: run `dallinger constraints generate` or pin it \
                 with ==",
                path.display()
            )
        );
        let path = write(dir.path(), "r2.txt", "flask==3.*\n");
        let err = pins_for_target(&parse_file(&path).unwrap(), &env((3, 11, 2))).unwrap_err();
        assert!(matches!(err, PinError::NotPinned { line: 1, .. }), "{err}");
    }

    #[test]
    fn requirements_with_constraints_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "constraints.txt", CONSTRAINTS);
        let path = write(
            dir.path(),
            "requirements.txt",
            "-c constraints.txt\ndallinger[Docker]>=12\nFlask\n",
        );
        let parsed = parse_file(&path).unwrap();
        let pins = pins_for_target(&parsed, &env((3, 11, 4))).unwrap();
        assert_eq!(pins["dallinger"].version, "12.3.0");
        assert_eq!(pins["dallinger"].extras, vec!["docker"]);
        assert_eq!(pins["flask"].line, 12);

        let path = write(
            dir.path(),
            "requirements.txt",
            "-c constraints.txt\nflask<3\n",
        );
        let err = pins_for_target(&parse_file(&path).unwrap(), &env((3, 11, 4))).unwrap_err();
        assert!(
            err.to_string()
                .contains("`flask<3` is not satisfied by the pin flask==3.0.3"),
            "{err}"
        );
    }

    #[test]
    fn conflicting_pins_and_hash_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.txt",
            "flask==3.0.3\nFlask==3.0.2\nflask==3.0.3.0\n",
        );
        let err = pins_for_target(&parse_file(&path).unwrap(), &env((3, 11, 2))).unwrap_err();
        assert!(
            matches!(
                err,
                PinError::Conflict { line: 2, ref other, .. } if other.line == 1
            ),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains(":2: Flask==3.0.2 conflicts with flask==3.0.3 at "));

        let h = "a".repeat(64);
        let path = write(
            dir.path(),
            "c.txt",
            &format!("flask==3.0.3 --hash=sha256:{h}\nclick==8.1.7\n"),
        );
        let err = pins_for_target(&parse_file(&path).unwrap(), &env((3, 11, 2))).unwrap_err();
        assert!(
            matches!(err, PinError::MissingHashes { line: 2, .. }),
            "{err}"
        );

        let path = write(dir.path(), "c.txt", "--require-hashes\nclick==8.1.7\n");
        assert!(pins_for_target(&parse_file(&path).unwrap(), &env((3, 11, 2))).is_err());

        // The same version pinned twice: equal versions merge (3.0.3 == 3.0.3.0).
        let path = write(dir.path(), "c.txt", "flask==3.0.3\nflask[async]==3.0.3.0\n");
        let pins = pins_for_target(&parse_file(&path).unwrap(), &env((3, 11, 2))).unwrap();
        assert_eq!(pins["flask"].extras, vec!["async"]);
    }
}
