//! What "the same package" and "the same version" mean, once for every
//! caller: names normalised as PEP 503 has it, versions compared as PEP 440
//! does. A version that is not PEP 440 has no meaning here; each caller
//! says what it does with one.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use pep440_rs::Version;

/// A distribution name normalised as PEP 503 has it: lowercase, each run of
/// `-`, `_` and `.` one `-` (`Flask_SQLAlchemy` is `flask-sqlalchemy`). Two
/// names are the same package when their `PackageName`s are equal.
///
/// Only ASCII letters are lowercased and nothing is refused: a name is
/// checked for PEP 508 where it is parsed, not here. It prints, and
/// serialises, as the normalised text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(transparent)]
pub struct PackageName(String);

impl PackageName {
    pub fn new(name: &str) -> PackageName {
        let mut out = String::with_capacity(name.len());
        let mut last_dash = false;
        for c in name.chars() {
            if matches!(c, '-' | '_' | '.') {
                if !last_dash {
                    out.push('-');
                }
                last_dash = true;
            } else {
                out.push(c.to_ascii_lowercase());
                last_dash = false;
            }
        }
        PackageName(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A stored name is normalised again when read back.
impl<'de> serde::Deserialize<'de> for PackageName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(PackageName::new(&text))
    }
}

/// [`PackageName`]'s text: the one PEP 503 normalisation.
pub fn normalise_name(name: &str) -> String {
    PackageName::new(name).into_string()
}

impl Deref for PackageName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for PackageName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by `PackageName` are looked up with a normalised `&str`.
impl Borrow<str> for PackageName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// As the text's own `Debug` (`"flask"`), so messages read as before.
impl fmt::Debug for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for PackageName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PackageName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for PackageName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<PackageName> for String {
    fn eq(&self, other: &PackageName) -> bool {
        *self == other.0
    }
}

/// Whether `a` and `b` are the same version as PEP 440 compares them:
/// `1.0` is `1.0.0`, `1.0-beta` is `1.0b0`, `V1.0` is `1.0`; a local label
/// is part of the version (`1.0+deb1` is not `1.0`). `None` when either is
/// not a PEP 440 version: the caller decides what that means for it.
pub fn same_version(a: &str, b: &str) -> Option<bool> {
    match (Version::from_str(a), Version::from_str(b)) {
        (Ok(a), Ok(b)) => Some(a == b),
        _ => None,
    }
}

/// The PEP 440 normalised rendering of `version` (`1.0-beta` is `1.0b0`),
/// or the text as written when it is not PEP 440.
pub fn normalised_version(version: &str) -> String {
    Version::from_str(version).map_or_else(|_| version.to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_as_pep_503_says() {
        for (written, name) in [
            ("Flask_SQLAlchemy", "flask-sqlalchemy"),
            ("zope.interface", "zope-interface"),
            ("a-_.b", "a-b"),
            ("pip", "pip"),
        ] {
            assert_eq!(PackageName::new(written), name);
            assert_eq!(normalise_name(written), name);
        }
        assert_eq!(format!("{:?}", PackageName::new("A_b")), "\"a-b\"");
        let back: PackageName = serde_json::from_str("\"Zope.Interface\"").unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), "\"zope-interface\"");
    }

    #[test]
    fn versions_compare_as_pep_440_says() {
        assert_eq!(same_version("1.0", "1.0.0"), Some(true));
        assert_eq!(same_version("1.0-beta", "1.0b0"), Some(true));
        assert_eq!(same_version("v1.0", "1.0"), Some(true));
        assert_eq!(same_version("1.0.post1", "1.0-1"), Some(true));
        assert_eq!(same_version("1.0-1", "1.0.1"), Some(false));
        assert_eq!(same_version("1.0+deb1", "1.0"), Some(false));
        assert_eq!(same_version("1.0+deb1", "1.0+DEB1"), Some(true));
        assert_eq!(same_version("1.0", "1.1"), Some(false));
        assert_eq!(same_version("nightly", "nightly"), None);
        assert_eq!(same_version("", "1.0"), None);
        assert_eq!(normalised_version("1.0-beta"), "1.0b0");
        assert_eq!(normalised_version("nightly"), "nightly");
    }
}
