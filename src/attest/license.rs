//! A wheel's license as its `METADATA` declares it: `License-Expression`
//! (PEP 639, an SPDX expression), else `License`, else the `License ::`
//! classifiers, else nothing. Read from the wheel file the build already
//! has, never from the network.

use std::path::Path;

use anyhow::{Context, Result};

use crate::python::install::WheelArchive;
use crate::python::spec::{header, headers_all, parse_headers};

/// A declared license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum License {
    /// An SPDX license expression.
    Expression(String),
    /// Text that is no SPDX expression (a `License:` field, classifiers
    /// without an SPDX identifier): told as written.
    Text(String),
    /// The metadata declares none.
    None,
}

/// The license `METADATA` of the wheel at `path` declares.
pub fn of_wheel(path: &Path) -> Result<License> {
    let what = || format!("reading the license of {}", path.display());
    let mut archive = WheelArchive::open(path).with_context(what)?;
    let name = format!("{}/METADATA", archive.dist_info_dir());
    let bytes = archive
        .read_member(&name)
        .with_context(what)?
        .with_context(|| format!("{} has no {name}", path.display()))?;
    Ok(of_metadata(&String::from_utf8_lossy(&bytes)))
}

/// The license a `METADATA` text declares.
pub fn of_metadata(text: &str) -> License {
    let fields = parse_headers(text).unwrap_or_default();
    if let Some(expression) = header(&fields, "License-Expression")
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        return if is_expression(expression) {
            License::Expression(expression.to_string())
        } else {
            License::Text(expression.to_string())
        };
    }
    if let Some(text) = header(&fields, "License")
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("UNKNOWN"))
    {
        return match known_name(text) {
            Some(id) => License::Expression(id.to_string()),
            None => License::Text(text.to_string()),
        };
    }
    let classifiers: Vec<&str> = headers_all(&fields, "Classifier")
        .into_iter()
        .filter_map(|c| c.strip_prefix("License ::"))
        .map(str::trim)
        .filter(|c| *c != "OSI Approved")
        .collect();
    if classifiers.is_empty() {
        return License::None;
    }
    let ids: Option<Vec<&str>> = classifiers.iter().map(|c| classifier_id(c)).collect();
    match ids {
        // Several license classifiers: each applies.
        Some(mut ids) => {
            ids.dedup();
            License::Expression(ids.join(" AND "))
        }
        None => License::Text(classifiers.join("; ")),
    }
}

/// Whether `text` is shaped as an SPDX license expression: identifiers
/// (letters, digits, `.`, `-`, a trailing `+`) joined by AND, OR and WITH,
/// with parentheses. Free text (`BSD License`, a whole license) is not.
fn is_expression(text: &str) -> bool {
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    let mut expect_id = true;
    let mut depth = 0i32;
    for token in spaced.split_whitespace() {
        match token {
            "(" if expect_id => depth += 1,
            ")" if !expect_id => depth -= 1,
            "AND" | "OR" | "WITH" if !expect_id => expect_id = true,
            id if expect_id => {
                let id = id.strip_suffix('+').unwrap_or(id);
                if id.is_empty()
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
                {
                    return false;
                }
                expect_id = false;
            }
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    !expect_id && depth == 0
}

/// SPDX identifiers of licenses commonly named in `License:` fields.
fn known_name(text: &str) -> Option<&'static str> {
    const NAMES: &[(&str, &str)] = &[
        ("mit", "MIT"),
        ("mit license", "MIT"),
        ("the mit license", "MIT"),
        ("mit-0", "MIT-0"),
        ("apache-2.0", "Apache-2.0"),
        ("apache 2.0", "Apache-2.0"),
        ("apache 2", "Apache-2.0"),
        ("apache license 2.0", "Apache-2.0"),
        ("apache license, version 2.0", "Apache-2.0"),
        ("apache software license 2.0", "Apache-2.0"),
        ("bsd-2-clause", "BSD-2-Clause"),
        ("bsd-3-clause", "BSD-3-Clause"),
        ("3-clause bsd", "BSD-3-Clause"),
        ("new bsd license", "BSD-3-Clause"),
        ("isc", "ISC"),
        ("isc license", "ISC"),
        ("mpl-2.0", "MPL-2.0"),
        ("mpl 2.0", "MPL-2.0"),
        ("psf", "PSF-2.0"),
        ("psf-2.0", "PSF-2.0"),
        ("python software foundation license", "PSF-2.0"),
        ("lgpl-3.0", "LGPL-3.0-only"),
        ("gpl-3.0", "GPL-3.0-only"),
        ("gplv3", "GPL-3.0-only"),
        ("agpl-3.0", "AGPL-3.0-only"),
        ("unlicense", "Unlicense"),
        ("cc0-1.0", "CC0-1.0"),
        ("zlib", "Zlib"),
        ("0bsd", "0BSD"),
        ("bsl-1.0", "BSL-1.0"),
    ];
    let lower = text.trim().to_ascii_lowercase();
    NAMES.iter().find(|(n, _)| *n == lower).map(|(_, id)| *id)
}

/// SPDX identifiers of the trove classifiers that name one license
/// (`OSI Approved :: BSD License` names several, and maps to none).
fn classifier_id(classifier: &str) -> Option<&'static str> {
    const CLASSIFIERS: &[(&str, &str)] = &[
        ("OSI Approved :: MIT License", "MIT"),
        (
            "OSI Approved :: MIT No Attribution License (MIT-0)",
            "MIT-0",
        ),
        ("OSI Approved :: Apache Software License", "Apache-2.0"),
        ("OSI Approved :: ISC License (ISCL)", "ISC"),
        (
            "OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)",
            "MPL-2.0",
        ),
        (
            "OSI Approved :: Python Software Foundation License",
            "PSF-2.0",
        ),
        (
            "OSI Approved :: GNU General Public License v2 (GPLv2)",
            "GPL-2.0-only",
        ),
        (
            "OSI Approved :: GNU General Public License v2 or later (GPLv2+)",
            "GPL-2.0-or-later",
        ),
        (
            "OSI Approved :: GNU General Public License v3 (GPLv3)",
            "GPL-3.0-only",
        ),
        (
            "OSI Approved :: GNU General Public License v3 or later (GPLv3+)",
            "GPL-3.0-or-later",
        ),
        (
            "OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)",
            "LGPL-2.0-only",
        ),
        (
            "OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)",
            "LGPL-2.0-or-later",
        ),
        (
            "OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)",
            "LGPL-3.0-only",
        ),
        (
            "OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)",
            "LGPL-3.0-or-later",
        ),
        (
            "OSI Approved :: GNU Affero General Public License v3",
            "AGPL-3.0-only",
        ),
        (
            "OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)",
            "AGPL-3.0-or-later",
        ),
        ("OSI Approved :: The Unlicense (Unlicense)", "Unlicense"),
        ("OSI Approved :: zlib/libpng License", "Zlib"),
        (
            "OSI Approved :: Boost Software License 1.0 (BSL-1.0)",
            "BSL-1.0",
        ),
        (
            "OSI Approved :: Eclipse Public License 2.0 (EPL-2.0)",
            "EPL-2.0",
        ),
        (
            "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication",
            "CC0-1.0",
        ),
    ];
    CLASSIFIERS
        .iter()
        .find(|(c, _)| *c == classifier)
        .map(|(_, id)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_expression_then_license_then_classifiers() {
        let both = "Metadata-Version: 2.4\nName: a\nLicense-Expression: MIT OR Apache-2.0\nLicense: BSD\n\n";
        assert_eq!(
            of_metadata(both),
            License::Expression("MIT OR Apache-2.0".into())
        );
        let field =
            "Name: a\nLicense: MIT License\nClassifier: License :: OSI Approved :: BSD License\n";
        assert_eq!(of_metadata(field), License::Expression("MIT".into()));
        let text = "Name: a\nLicense: Copyright (c) 2010 someone\n  All rights reserved.\n";
        assert_eq!(
            of_metadata(text),
            License::Text("Copyright (c) 2010 someone All rights reserved.".into())
        );
        let classifiers = "Name: a\nLicense: UNKNOWN\nClassifier: License :: OSI Approved :: Apache Software License\nClassifier: Programming Language :: Python\n";
        assert_eq!(
            of_metadata(classifiers),
            License::Expression("Apache-2.0".into())
        );
        let bsd = "Name: a\nClassifier: License :: OSI Approved :: BSD License\n";
        assert_eq!(
            of_metadata(bsd),
            License::Text("OSI Approved :: BSD License".into())
        );
        assert_eq!(of_metadata("Name: a\n"), License::None);
    }

    #[test]
    fn only_expression_shaped_text_is_an_expression() {
        for ok in [
            "MIT",
            "(MIT OR Apache-2.0) AND BSD-3-Clause",
            "GPL-2.0+ WITH Classpath-exception-2.0",
            "LicenseRef-Own",
        ] {
            assert!(is_expression(ok), "{ok}");
        }
        for bad in ["BSD License", "MIT OR", "(MIT", "MIT)", "", "MIT/X11"] {
            assert!(!is_expression(bad), "{bad}");
        }
    }
}
