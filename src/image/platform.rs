//! The platform an image is for: OS, architecture and optional variant
//! (`linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`), parsed from
//! `--platform` or read (serde) from an index entry or an image config, and
//! normalised as containerd does, so `linux/arm64/v8`, `linux/aarch64` and
//! `linux/arm64` are one platform. [`choose_manifest`] picks an index's
//! manifest for one; [`Platforms::parse`] reads `--platform A,B` and
//! `--platform all`; [`can_run`] says whether this machine runs a
//! platform's programs (natively, or under qemu-user through binfmt_misc).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// OS, architecture and variant, normalised (see [`Platform::new`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Fields")]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// The JSON fields as written, before normalisation: an index entry's
/// `platform` object, or an image config's top level (other fields ignored).
#[derive(Deserialize)]
struct Fields {
    /// Required by the OCI spec, yet some configs omit it.
    #[serde(default)]
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl From<Fields> for Platform {
    fn from(f: Fields) -> Self {
        Platform::new(&f.os, &f.architecture, f.variant.as_deref())
    }
}

impl Platform {
    /// The platform, normalised as containerd's `platforms.Normalize`:
    /// lowercase; `x86_64` is `amd64` and its `v1` is no variant; `aarch64`
    /// is `arm64` and its `v8` is no variant; `arm` without a variant is
    /// `arm/v7`, `armhf` is `arm/v7`, `armel` is `arm/v6`; `i386` is `386`.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = os.to_ascii_lowercase();
        let arch = architecture.to_ascii_lowercase();
        let variant = variant.map(str::to_ascii_lowercase).unwrap_or_default();
        let (architecture, variant): (&str, &str) = match arch.as_str() {
            "i386" | "386" => ("386", ""),
            "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { "" } else { &variant }),
            "aarch64" | "arm64" => (
                "arm64",
                match variant.as_str() {
                    "8" | "v8" | "v8.0" => "",
                    "9" | "9.0" | "v9.0" => "v9",
                    v => v,
                },
            ),
            "armhf" => ("arm", "v7"),
            "armel" => ("arm", "v6"),
            "arm" => (
                "arm",
                match variant.as_str() {
                    "" | "7" => "v7",
                    "5" => "v5",
                    "6" => "v6",
                    "8" => "v8",
                    v => v,
                },
            ),
            a => (a, &variant),
        };
        Platform {
            os,
            architecture: architecture.to_string(),
            variant: Some(variant.to_string()).filter(|v| !v.is_empty()),
        }
    }

    /// `OS/ARCH[/VARIANT]`, or a bare `ARCH` meaning `linux/ARCH`.
    pub fn parse(text: &str) -> Result<Platform, PlatformError> {
        let bad = || PlatformError(text.to_string());
        let parts: Vec<&str> = text.trim().split('/').collect();
        let plain = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !parts.iter().all(plain) {
            return Err(bad());
        }
        match parts.as_slice() {
            [arch] => Ok(Platform::new("linux", arch, None)),
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(bad()),
        }
    }

    /// The platform an image config names (`os`, `architecture`, `variant`),
    /// if it names one.
    pub fn of_config(config: &Value) -> Option<Platform> {
        Platform::deserialize(config).ok()
    }

    /// What the kernel calls this machine (`uname -m`), from which Python's
    /// platform tags are made: `x86_64`, `aarch64`, `i686`, `armv7l`; any
    /// other architecture as it is named.
    pub fn machine(&self) -> String {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("amd64", _) => "x86_64".to_string(),
            ("arm64", _) => "aarch64".to_string(),
            ("386", _) => "i686".to_string(),
            ("arm", Some(v)) => format!("arm{v}l"),
            (arch, _) => arch.to_string(),
        }
    }
}

impl Platform {
    /// The platform of this machine (what `debug` builds and runs).
    pub fn host() -> Platform {
        Platform::new("linux", std::env::consts::ARCH, None)
    }

    /// The ELF `e_machine` of this architecture's programs and whether
    /// they are big-endian, for architectures qemu-user emulates.
    fn elf_machine(&self) -> Option<(u16, bool)> {
        Some(match self.architecture.as_str() {
            "amd64" => (0x3e, false),
            "arm64" => (0xb7, false),
            "386" => (0x03, false),
            "arm" => (0x28, false),
            "ppc64le" => (0x15, false),
            "s390x" => (0x16, true),
            "riscv64" => (0xf3, false),
            "mips64le" => (0x08, false),
            "loong64" => (0x102, false),
            _ => return None,
        })
    }
}

/// What `--platform` asks for: platforms in order, or every one the base
/// offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Platforms {
    Listed(Vec<Platform>),
    /// `all`: every platform of the base's index (see [`index_platforms`]).
    All,
}

impl Platforms {
    /// `OS/ARCH[/VARIANT]`, several joined by commas (each once, in the
    /// order given), or `all`.
    pub fn parse(text: &str) -> Result<Platforms, PlatformError> {
        if text.trim() == "all" {
            return Ok(Platforms::All);
        }
        let mut listed: Vec<Platform> = Vec::new();
        for part in text.split(',') {
            let platform = Platform::parse(part)?;
            if !listed.contains(&platform) {
                listed.push(platform);
            }
        }
        Ok(Platforms::Listed(listed))
    }
}

/// The platforms of an index's `manifests` an image can be built for, in
/// its order, each once: entries without a platform and attestation
/// entries (`unknown/unknown`) are left out.
pub fn index_platforms(manifests: &[Value]) -> Vec<Platform> {
    let mut found: Vec<Platform> = Vec::new();
    for platform in manifests.iter().filter_map(platform_of) {
        if platform.os != "unknown"
            && platform.architecture != "unknown"
            && !found.contains(&platform)
        {
            found.push(platform);
        }
    }
    found
}

/// Where the kernel's binfmt_misc entries are: `DALLINGER_OCI_BINFMT_MISC`
/// when set (tests point it at an empty directory to see a machine
/// without emulation), else `/proc/sys/fs/binfmt_misc`.
fn binfmt_dir() -> std::path::PathBuf {
    std::env::var_os("DALLINGER_OCI_BINFMT_MISC")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/proc/sys/fs/binfmt_misc".into())
}

/// Whether this machine runs `platform`'s programs inside a sandbox root:
/// natively, or through an enabled binfmt_misc entry for its ELF machine
/// registered with the F (fix-binary) flag, as Debian's qemu-user-static
/// registers its interpreters (the interpreter is opened when registered,
/// so it need not be inside the image). The error says why not.
pub fn can_run(platform: &Platform) -> Result<(), String> {
    let host = Platform::host();
    if platform.architecture == host.architecture {
        return Ok(());
    }
    let Some((machine, big_endian)) = platform.elf_machine() else {
        return Err(format!("no emulator is known for {platform}"));
    };
    let dir = binfmt_dir();
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    if status.trim() != "enabled" {
        return Err(format!(
            "binfmt_misc is not mounted and enabled at {} (mount -t binfmt_misc binfmt_misc {})",
            dir.display(),
            dir.display()
        ));
    }
    let mut without_f = None;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "status" || name == "register" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if binfmt_entry_machine(&text) != Some((machine, big_endian)) {
            continue;
        }
        let enabled = text.lines().next() == Some("enabled");
        let fixed = text
            .lines()
            .find_map(|l| l.strip_prefix("flags: "))
            .is_some_and(|f| f.contains('F'));
        if enabled && fixed {
            return Ok(());
        }
        without_f.get_or_insert(name);
    }
    Err(match without_f {
        Some(name) => format!(
            "the binfmt_misc entry {name} for {platform} is disabled or lacks the F (fix-binary) flag, so it cannot run inside a sandbox"
        ),
        None => format!("no binfmt_misc entry runs {platform} programs on this {host} machine"),
    })
}

/// The ELF machine (and endianness) an enabled-or-not binfmt_misc entry's
/// magic matches, when it is an ELF executable entry at offset 0.
fn binfmt_entry_machine(text: &str) -> Option<(u16, bool)> {
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key));
    if field("offset ").map(str::trim) != Some("0") {
        return None;
    }
    let magic = field("magic ")?.trim();
    let bytes: Vec<u8> = (0..magic.len() / 2)
        .map(|i| u8::from_str_radix(magic.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let big_endian = bytes[5] == 2;
    let machine = if big_endian {
        u16::from_be_bytes([bytes[18], bytes[19]])
    } else {
        u16::from_le_bytes([bytes[18], bytes[19]])
    };
    Some((machine, big_endian))
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        Platform::parse(s)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("platform {0:?} is not OS/ARCH or OS/ARCH/VARIANT (e.g. linux/amd64, linux/arm64/v8, linux/arm/v7)")]
pub struct PlatformError(String);

/// An index has no manifest for the platform wanted.
#[derive(Debug, thiserror::Error)]
#[error("no manifest for {wanted} ({})", offers_text(.offers))]
pub struct NoManifest {
    pub wanted: Platform,
    /// The platforms the index offers, in its order, each once.
    pub offers: Vec<Platform>,
}

fn offers_text(offers: &[Platform]) -> String {
    if offers.is_empty() {
        "the index names no platforms".to_string()
    } else {
        let offers: Vec<String> = offers.iter().map(Platform::to_string).collect();
        format!("the index offers {}", offers.join(", "))
    }
}

/// The platform of an index entry (its `platform` object), if it has one.
pub fn platform_of(descriptor: &Value) -> Option<Platform> {
    Platform::deserialize(descriptor.get("platform")?).ok()
}

/// The first of an index's `manifests` whose platform is `wanted` (both
/// normalised, so `arm64/v8` is `arm64` and `arm` is `arm/v7`; the variant
/// counts). Entries without a platform never match.
pub fn choose_manifest<'a>(
    manifests: &'a [Value],
    wanted: &Platform,
) -> Result<&'a Value, NoManifest> {
    if let Some(found) = manifests
        .iter()
        .find(|m| platform_of(m).as_ref() == Some(wanted))
    {
        return Ok(found);
    }
    let mut offers: Vec<Platform> = Vec::new();
    for p in manifests.iter().filter_map(platform_of) {
        if !offers.contains(&p) {
            offers.push(p);
        }
    }
    Err(NoManifest {
        wanted: wanted.clone(),
        offers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(text: &str) -> Platform {
        Platform::parse(text).unwrap()
    }

    #[test]
    fn parse_and_display() {
        for (text, shown) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/i386", "linux/386"),
            ("amd64", "linux/amd64"),
            ("linux/s390x", "linux/s390x"),
        ] {
            assert_eq!(p(text).to_string(), shown, "{text}");
        }
        assert_eq!(
            p("linux/arm/v7"),
            Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into())
            }
        );
        for bad in [
            "",
            "linux/",
            "/amd64",
            "linux/arm/v7/x",
            "linux/am d64",
            "linux//v7",
        ] {
            let err = Platform::parse(bad).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("platform {bad:?} is not OS/ARCH or OS/ARCH/VARIANT (e.g. linux/amd64, linux/arm64/v8, linux/arm/v7)")
            );
        }
    }

    #[test]
    fn serde_from_index_entries_and_configs() {
        let entry =
            json!({"architecture": "arm64", "os": "linux", "variant": "v8", "os.features": []});
        assert_eq!(Platform::deserialize(&entry).unwrap(), p("linux/arm64"));
        let config = json!({"architecture": "arm", "os": "linux", "variant": "v7", "config": {}});
        assert_eq!(Platform::of_config(&config), Some(p("linux/arm/v7")));
        assert_eq!(Platform::of_config(&json!({"config": {}})), None);
        assert_eq!(
            serde_json::to_value(p("linux/amd64")).unwrap(),
            json!({"architecture": "amd64", "os": "linux"})
        );
        assert_eq!(
            serde_json::to_value(p("linux/arm/v7")).unwrap(),
            json!({"architecture": "arm", "os": "linux", "variant": "v7"})
        );
    }

    #[test]
    fn machine_names() {
        for (platform, machine) in [
            ("linux/amd64", "x86_64"),
            ("linux/arm64", "aarch64"),
            ("linux/386", "i686"),
            ("linux/arm/v7", "armv7l"),
            ("linux/arm/v6", "armv6l"),
            ("linux/ppc64le", "ppc64le"),
        ] {
            assert_eq!(p(platform).machine(), machine);
        }
    }

    #[test]
    fn platform_lists() {
        assert_eq!(Platforms::parse("all").unwrap(), Platforms::All);
        assert_eq!(
            Platforms::parse("linux/amd64,linux/arm64/v8,linux/aarch64").unwrap(),
            Platforms::Listed(vec![p("linux/amd64"), p("linux/arm64")])
        );
        assert!(Platforms::parse("linux/amd64,").is_err());
        assert_eq!(
            index_platforms(&index()),
            vec![
                p("linux/amd64"),
                p("linux/arm/v6"),
                p("linux/arm/v7"),
                p("linux/arm64")
            ]
        );
    }

    fn binfmt(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        std::fs::write(dir.path().join("register"), "").unwrap();
        for (name, text) in entries {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    #[test]
    fn binfmt_entries_say_what_runs() {
        assert_eq!(binfmt_entry_machine(AARCH64), Some((0xb7, false)));
        let s390x = "enabled\nflags: F\noffset 0\nmagic 7f454c4602020100000000000000000000020016\n";
        assert_eq!(binfmt_entry_machine(s390x), Some((0x16, true)));
        assert_eq!(
            binfmt_entry_machine("enabled\nflags: \noffset 0\nmagic 4d5a\n"),
            None
        );
    }

    #[test]
    fn foreign_platforms_run_through_binfmt_with_the_f_flag() {
        // Reads DALLINGER_OCI_BINFMT_MISC: one test sets it, in a child.
        if std::env::var_os("DALLINGER_OCI_BINFMT_CHILD").is_none() {
            let me = std::env::current_exe().unwrap();
            let out = std::process::Command::new(me)
                .args([
                    "--exact",
                    "image::platform::tests::foreign_platforms_run_through_binfmt_with_the_f_flag",
                ])
                .env("DALLINGER_OCI_BINFMT_CHILD", "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            return;
        }
        let foreign = if Platform::host().architecture == "arm64" {
            p("linux/amd64")
        } else {
            p("linux/arm64")
        };
        assert_eq!(can_run(&Platform::host()), Ok(()));
        if foreign.architecture != "arm64" {
            return;
        }
        let with = binfmt(&[("qemu-aarch64", AARCH64)]);
        std::env::set_var("DALLINGER_OCI_BINFMT_MISC", with.path());
        assert_eq!(can_run(&foreign), Ok(()));
        let without_f = binfmt(&[("qemu-aarch64", &AARCH64.replace("POF", "PO"))]);
        std::env::set_var("DALLINGER_OCI_BINFMT_MISC", without_f.path());
        assert!(can_run(&foreign)
            .unwrap_err()
            .contains("lacks the F (fix-binary) flag"));
        let none = binfmt(&[]);
        std::env::set_var("DALLINGER_OCI_BINFMT_MISC", none.path());
        assert_eq!(
            can_run(&foreign).unwrap_err(),
            "no binfmt_misc entry runs linux/arm64 programs on this linux/amd64 machine"
        );
        let unmounted = tempfile::tempdir().unwrap();
        std::env::set_var("DALLINGER_OCI_BINFMT_MISC", unmounted.path());
        assert!(can_run(&foreign)
            .unwrap_err()
            .starts_with("binfmt_misc is not mounted"));
        assert_eq!(
            can_run(&p("linux/sparc64")).unwrap_err(),
            "no emulator is known for linux/sparc64"
        );
    }

    fn index() -> Vec<Value> {
        vec![
            json!({"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}}),
            json!({"digest": "sha256:v6", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}}),
            json!({"digest": "sha256:v7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}),
            json!({"digest": "sha256:arm64", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}),
            json!({"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}}),
            json!({"digest": "sha256:none"}),
            json!({"digest": "sha256:a2", "platform": {"os": "linux", "architecture": "amd64"}}),
        ]
    }

    fn chosen(wanted: &str) -> String {
        let index = index();
        choose_manifest(&index, &p(wanted)).unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn choice_honours_the_variant() {
        assert_eq!(chosen("linux/amd64"), "sha256:a");
        assert_eq!(chosen("linux/arm/v6"), "sha256:v6");
        assert_eq!(chosen("linux/arm/v7"), "sha256:v7");
        // `arm` without a variant is v7, not the first arm entry.
        assert_eq!(chosen("linux/arm"), "sha256:v7");
        // The entry says arm64/v8: the same platform as arm64.
        assert_eq!(chosen("linux/arm64"), "sha256:arm64");
        assert_eq!(chosen("linux/arm64/v8"), "sha256:arm64");
        // An entry with no variant is arm64's v8 too.
        let index = vec![
            json!({"digest": "sha256:b", "platform": {"os": "linux", "architecture": "arm64"}}),
        ];
        assert_eq!(
            choose_manifest(&index, &p("linux/arm64/v8")).unwrap()["digest"],
            "sha256:b"
        );
    }

    #[test]
    fn no_match_lists_what_the_index_offers() {
        let index = index();
        let err = choose_manifest(&index, &p("linux/arm/v5")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no manifest for linux/arm/v5 (the index offers linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64, unknown/unknown)"
        );
        let err = choose_manifest(&index, &p("linux/amd64/v3")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("no manifest for linux/amd64/v3 ("));
        let err = choose_manifest(&[json!({"digest": "sha256:x"})], &p("linux/amd64")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no manifest for linux/amd64 (the index names no platforms)"
        );
    }
}
