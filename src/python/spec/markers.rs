//! PEP 508 environment markers, evaluated for the **target** interpreter
//! (the Python inside the image), never for the host.
//!
//! Parsing and evaluation are `pep508_rs`'s; this module only builds its
//! marker environment from a [`Target`] and wraps the error type.

use pep508_rs::{ExtraName, MarkerEnvironment, MarkerEnvironmentBuilder, MarkerTree};

use crate::python::target::Target;

/// Errors from marker parsing.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("invalid environment marker `{marker}`: {message}")]
    Invalid { marker: String, message: String },
    #[error("invalid extra name `{0}` in marker evaluation")]
    Extra(String),
}

/// The marker environment of a target interpreter.
///
/// Values are those CPython on Linux reports (`platform.*`, `sys.*`,
/// `os.name`), derived from the [`Target`] only. Two values cannot be known
/// for an image: `platform_release` and `platform_version` describe the
/// **running kernel** (`uname -r` / `uname -v`), which is the host's at run
/// time, not something the image fixes. They are the empty string here, so a
/// marker comparing them evaluates as on a machine reporting "" (in
/// practice no published package uses them in `Requires-Dist`).
#[derive(Debug, Clone)]
pub struct MarkerEnv {
    /// `X.Y`, e.g. "3.11".
    pub python_version: String,
    /// `X.Y.Z`, e.g. "3.11.2".
    pub python_full_version: String,
    /// "cpython".
    pub implementation_name: String,
    /// Same as `python_full_version` for a final CPython release.
    pub implementation_version: String,
    /// "CPython".
    pub platform_python_implementation: String,
    /// "linux".
    pub sys_platform: String,
    /// "posix".
    pub os_name: String,
    /// "Linux".
    pub platform_system: String,
    /// The target architecture, e.g. "x86_64" or "aarch64".
    pub platform_machine: String,
    /// Unknown for an image: "" (see the type docs).
    pub platform_release: String,
    /// Unknown for an image: "" (see the type docs).
    pub platform_version: String,
    env: MarkerEnvironment,
}

impl MarkerEnv {
    /// The marker environment of CPython `target.python_version` on
    /// linux/`target.arch`.
    pub fn for_target(target: &Target) -> MarkerEnv {
        let (major, minor, patch) = target.python_version;
        Self::cpython_linux(&target.arch, (major, minor, patch))
    }

    /// The marker environment of CPython `version` on linux/`arch`.
    pub fn cpython_linux(arch: &str, version: (u32, u32, u32)) -> MarkerEnv {
        let (major, minor, patch) = version;
        let python_version = format!("{major}.{minor}");
        let python_full_version = format!("{major}.{minor}.{patch}");
        let builder = MarkerEnvironmentBuilder {
            implementation_name: "cpython",
            implementation_version: &python_full_version,
            os_name: "posix",
            platform_machine: arch,
            platform_python_implementation: "CPython",
            platform_release: "",
            platform_system: "Linux",
            platform_version: "",
            python_full_version: &python_full_version,
            python_version: &python_version,
            sys_platform: "linux",
        };
        // Both version strings are plain dotted integers, always valid PEP 440.
        let env = MarkerEnvironment::try_from(builder).expect("X.Y[.Z] is a valid PEP 440 version");
        MarkerEnv {
            implementation_name: "cpython".into(),
            implementation_version: python_full_version.clone(),
            platform_python_implementation: "CPython".into(),
            sys_platform: "linux".into(),
            os_name: "posix".into(),
            platform_system: "Linux".into(),
            platform_machine: arch.to_string(),
            platform_release: String::new(),
            platform_version: String::new(),
            python_version,
            python_full_version,
            env,
        }
    }

    /// The full Python version as numbers, e.g. (3, 11, 2).
    pub fn python_tuple(&self) -> (u32, u32, u32) {
        let mut parts = self
            .python_full_version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        )
    }

    /// The `pep508_rs` environment, for callers that already hold a parsed
    /// `MarkerTree`.
    pub fn pep508(&self) -> &MarkerEnvironment {
        &self.env
    }
}

/// How deep parentheses may nest in a marker. pep508_rs parses them by
/// recursion: a few hundred thousand `(` overflow the stack and abort the
/// process. Real markers nest two or three deep.
const MAX_MARKER_NESTING: usize = 32;

/// Refuses what pep508_rs 0.9 cannot parse safely, before it parses: a
/// character outside ASCII (it panics, slicing a byte offset it counted in
/// characters, on one where `and`/`or` may follow an expression:
/// `python_version > "3" é`, or `"é` there; no marker variable has such a
/// value), and parentheses nested more than [`MAX_MARKER_NESTING`] deep.
pub(crate) fn check_marker_text(marker: &str) -> Result<(), String> {
    if let Some(c) = marker.chars().find(|c| !c.is_ascii()) {
        return Err(format!("`{c}`: a marker is ASCII"));
    }
    let mut quote = None;
    let mut depth = 0usize;
    for c in marker.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '(' => {
                depth += 1;
                if depth > MAX_MARKER_NESTING {
                    return Err(format!(
                        "parentheses nest more than {MAX_MARKER_NESTING} deep"
                    ));
                }
            }
            None if c == ')' => depth = depth.saturating_sub(1),
            None => {}
        }
    }
    Ok(())
}

/// Parses a marker expression (the part after `;`).
pub fn parse(marker: &str) -> Result<MarkerTree, MarkerError> {
    let invalid = |message: String| MarkerError::Invalid {
        marker: marker.trim().to_string(),
        message,
    };
    check_marker_text(marker).map_err(invalid)?;
    marker
        .trim()
        .parse::<MarkerTree>()
        .map_err(|e| MarkerError::Invalid {
            marker: marker.trim().to_string(),
            message: e.message.to_string(),
        })
}

/// Evaluates `marker` on `env` with the given active extras.
///
/// An empty marker is true. `extra == "x"` is true when `x` is among
/// `extras` (names compared after PEP 685 normalisation). To evaluate like pip
/// does for a requirement requested with extras (once per extra, and once with
/// `extra` = ""), call this once with `&[]` and once per extra with `&[extra]`,
/// and OR the results; [`super::metadata`] does that.
pub fn evaluate(marker: &str, env: &MarkerEnv, extras: &[String]) -> Result<bool, MarkerError> {
    if marker.trim().is_empty() {
        return Ok(true);
    }
    let tree = parse(marker)?;
    let extras = extra_names(extras)?;
    Ok(tree.evaluate(&env.env, &extras))
}

/// Converts extra names for `pep508_rs`, normalising them (PEP 685).
pub(crate) fn extra_names(extras: &[String]) -> Result<Vec<ExtraName>, MarkerError> {
    extras
        .iter()
        .filter(|e| !e.is_empty())
        .map(|e| ExtraName::new(e.clone()).map_err(|_| MarkerError::Extra(e.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn target(arch: &str, v: (u32, u32, u32)) -> Target {
        Target {
            arch: arch.into(),
            python_version: v,
            interpreter: "/usr/local/bin/python3".into(),
            purelib: "usr/local/lib/python3.11/site-packages".into(),
            platlib: "usr/local/lib/python3.11/site-packages".into(),
            scripts: "usr/local/bin".into(),
            headers: "usr/local/include/python3.11".into(),
            data: "usr/local".into(),
            glibc: Some((2, 36)),
            installed: BTreeMap::new(),
        }
    }

    #[test]
    fn deeply_nested_parentheses_are_an_error_not_a_stack_overflow() {
        let deep = format!(
            "{}os_name == 'posix'{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        let err = parse(&deep).unwrap_err().to_string();
        assert!(
            err.contains("nest more than 32 deep"),
            "{}",
            &err[err.len() - 80..]
        );
        let env = MarkerEnv::cpython_linux("x86_64", (3, 11, 2));
        let entry = format!("a ; {deep}");
        assert!(crate::python::spec::applicable_dependencies(&[entry], &[], &env).is_err());
        let fine = format!("{}os_name == 'posix'{}", "(".repeat(32), ")".repeat(32));
        assert!(evaluate(&fine, &env, &[]).unwrap());
        // Parentheses inside quotes do not count.
        assert!(parse(&format!("os_name == '{}'", "(".repeat(100))).is_ok());
    }

    #[test]
    fn env_values() {
        let env = MarkerEnv::for_target(&target("aarch64", (3, 11, 2)));
        assert_eq!(env.python_version, "3.11");
        assert_eq!(env.python_full_version, "3.11.2");
        assert_eq!(env.implementation_version, "3.11.2");
        assert_eq!(env.platform_machine, "aarch64");
        assert_eq!(env.platform_release, "");
        assert_eq!(env.python_tuple(), (3, 11, 2));
    }

    #[test]
    fn evaluates_versions_and_platform() {
        let env = MarkerEnv::for_target(&target("x86_64", (3, 11, 2)));
        let t = |m: &str| evaluate(m, &env, &[]).unwrap();
        assert!(t(r#"python_version >= "3.8""#));
        assert!(!t(r#"python_version < "3.11""#));
        assert!(t(r#"python_version <= "3.11""#));
        assert!(t(r#"python_full_version < "3.11.3""#));
        assert!(!t(r#"python_full_version >= "3.11.3""#));
        assert!(t(
            r#"sys_platform == "linux" and platform_machine == "x86_64""#
        ));
        assert!(!t(
            r#"sys_platform == "win32" or platform_system == "Darwin""#
        ));
        assert!(t(r#"implementation_name == "cpython""#));
        assert!(t(r#"platform_python_implementation != "PyPy""#));
        assert!(t(r#"os_name == "posix""#));
        assert!(t("'linux' in sys_platform"));
        assert!(t(""));
        let env4 = MarkerEnv::for_target(&target("x86_64", (3, 11, 4)));
        assert!(!evaluate(r#"python_full_version < "3.11.3""#, &env4, &[]).unwrap());
    }

    #[test]
    fn evaluates_extras() {
        let env = MarkerEnv::for_target(&target("x86_64", (3, 12, 1)));
        let m = r#"extra == "recommended" and python_version >= "3.9""#;
        assert!(!evaluate(m, &env, &[]).unwrap());
        assert!(evaluate(m, &env, &["recommended".into()]).unwrap());
        // PEP 685: extras compare normalised.
        assert!(evaluate(r#"extra == "Socks_Proxy""#, &env, &["socks-proxy".into()]).unwrap());
    }

    #[test]
    fn invalid_marker_is_an_error() {
        let env = MarkerEnv::for_target(&target("x86_64", (3, 11, 2)));
        let err = evaluate("python_version >>> '3'", &env, &[]).unwrap_err();
        assert!(
            err.to_string().contains("invalid environment marker"),
            "{err}"
        );
    }
}
