//! The Python inside the base image, described as data: everything the
//! installer and the wheel selection need, never read from the host.

use std::collections::BTreeMap;

/// A distribution already installed in the base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledDist {
    /// As in its METADATA `Name:`.
    pub name: String,
    pub version: String,
    /// Image path of its `.dist-info` directory, without a leading `/`.
    pub dist_info: String,
    /// Image paths (no leading `/`) of the files its RECORD lists.
    pub files: Vec<String>,
}

/// The target Python. Paths are image paths without a leading `/`
/// (e.g. `usr/lib/python3/dist-packages`), except `interpreter`, which is
/// absolute because it goes into shebangs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `x86_64` or `aarch64` (the machine name used in wheel tags).
    pub arch: String,
    /// Full version, e.g. (3, 11, 2): markers use `python_full_version`.
    pub python_version: (u32, u32, u32),
    /// Absolute path of the interpreter inside the image, e.g. `/usr/bin/python3`.
    pub interpreter: String,
    pub purelib: String,
    pub platlib: String,
    /// Where console scripts and `.data/scripts` go, e.g. `usr/bin`.
    pub scripts: String,
    /// `.data/headers` go to `{headers}/{distribution name}`, e.g. `usr/include/python3.11`.
    pub headers: String,
    /// `.data/data` goes here (the prefix), e.g. `usr`.
    pub data: String,
    /// glibc (major, minor) for manylinux tags; None for musl or unknown.
    pub glibc: Option<(u32, u32)>,
    /// Installed distributions, keyed by normalised name (PEP 503).
    pub installed: BTreeMap<String, InstalledDist>,
}

/// PEP 503 normalisation: lowercase, runs of `-_.` become `-`.
pub fn normalise_name(name: &str) -> String {
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
    out
}
