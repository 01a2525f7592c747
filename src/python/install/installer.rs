//! Installing a wheel into a layer, natively, the way pip 23.2 installs it
//! into a prefix (`pip install --no-deps --no-compile --prefix`), but with
//! image paths and the image's interpreter.
//!
//! Nothing is unpacked: the tree's files are the wheel's zip members, read
//! (inflated, bounded by their declared sizes and checked against RECORD's
//! sha256 as they stream) when the layer is written. What differs from pip,
//! on purpose:
//!
//! * `INSTALLER` is `dallinger-oci\n`, not `pip\n`;
//! * RECORD has LF line ends (pip's csv writer uses CRLF); its rows are sorted
//!   by path as pip sorts them, and every hash is sha256;
//! * `.data/scripts` files rewritten from `#!python` are always mode 0755
//!   (pip keeps the zip entry's mode);
//! * no `direct_url.json` (pip writes one, with a host path, for file
//!   installs), no `.pyc`;
//! * a path installed twice (by this wheel or another in the same layer) is
//!   an error, where pip would silently overwrite;
//! * pip keeps the wheel's RECORD row of a `.data/scripts` file it skips
//!   because an entry point replaces it; that row names no installed file
//!   and is not written here.
//!
//! Like pip (and unlike pypa/installer), `__pycache__` files shipped inside
//! a wheel are installed as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use dallinger_oci_layers::{Content, LayerError, LayerTree, Node};
use sha2::{Digest as _, Sha256};

use super::wheel::{
    record_hash, write_record, DistInfo, RecordRow, ScriptEntry, WheelArchive, WheelError,
    WheelMember,
};
use crate::python::target::Target;

/// What `INSTALLER` says.
pub const INSTALLER: &str = "dallinger-oci\n";

/// A wheel installed into a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledWheel {
    /// As in METADATA `Name:`.
    pub name: String,
    /// As in METADATA `Version:`.
    pub version: String,
    /// Image path (no leading `/`) of the installed `.dist-info` directory.
    pub dist_info: String,
    /// Image paths of every file installed, generated ones included, sorted.
    pub files: Vec<String>,
    pub requires_dist: Vec<String>,
    pub requires_python: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read wheel {}: {source}", wheel.display())]
    Read { wheel: PathBuf, source: io::Error },
    #[error("wheel {}: {source}", wheel.display())]
    Wheel { wheel: PathBuf, source: WheelError },
    /// A file of the wheel that has no valid place to go.
    #[error("wheel {}: {path:?}: {reason}", wheel.display())]
    Layout {
        wheel: PathBuf,
        path: String,
        reason: String,
    },
    #[error("wheel {}: it would install {path:?}, {reason}", wheel.display())]
    Collision {
        wheel: PathBuf,
        path: String,
        reason: String,
    },
    #[error("wheel {}: cannot install into this target: {reason}", wheel.display())]
    Target { wheel: PathBuf, reason: String },
    #[error("wheel {}: {source}", wheel.display())]
    Layer { wheel: PathBuf, source: LayerError },
}

/// Installs `wheel` into `tree` for `target`. The tree's files are the
/// wheel's members, read from the wheel when the layer is written (and
/// checked then against RECORD: a mismatch fails the layer), so the wheel
/// must stay until then. `requested` writes `REQUESTED` (a top-level
/// requirement). On error, `tree` is unchanged.
pub fn install_wheel(
    wheel: &Path,
    target: &Target,
    requested: bool,
    tree: &mut LayerTree,
) -> Result<InstalledWheel, InstallError> {
    let scheme = Scheme::new(target).map_err(|reason| InstallError::Target {
        wheel: wheel.to_path_buf(),
        reason,
    })?;
    let (info, members) = read_members(wheel)?;
    let plan = plan(wheel, members, &info, &scheme, requested)?;
    check_free(wheel, tree, &plan.files)?;
    let mut installed: Vec<String> = Vec::with_capacity(plan.files.len());
    for f in plan.files {
        tree.add_file(&f.dest, f.content, f.executable)
            .map_err(|source| InstallError::Layer {
                wheel: wheel.to_path_buf(),
                source,
            })?;
        installed.push(f.dest);
    }
    installed.sort();
    Ok(InstalledWheel {
        name: info.metadata.name,
        version: info.metadata.version,
        dist_info: plan.dist_info,
        files: installed,
        requires_dist: info.metadata.requires_dist,
        requires_python: info.metadata.requires_python,
    })
}

/// The metadata and members of `wheel` (see [`WheelArchive::read_members`]),
/// with the wheel named in errors.
pub(crate) fn read_members(wheel: &Path) -> Result<(DistInfo, Vec<WheelMember>), InstallError> {
    WheelArchive::read_members(wheel).map_err(|source| match source {
        WheelError::Zip(zip::result::ZipError::Io(e)) => InstallError::Read {
            wheel: wheel.to_path_buf(),
            source: e,
        },
        source => InstallError::Wheel {
            wheel: wheel.to_path_buf(),
            source,
        },
    })
}

/// The target's directories, checked and without surrounding slashes.
struct Scheme {
    interpreter: String,
    python_version: (u32, u32),
    purelib: String,
    platlib: String,
    scripts: String,
    headers: String,
    data: String,
}

impl Scheme {
    fn new(target: &Target) -> Result<Scheme, String> {
        let dir = |what: &str, value: &str, may_be_empty: bool| -> Result<String, String> {
            let trimmed = value.trim_matches('/');
            if trimmed.is_empty() && !may_be_empty {
                return Err(format!("its {what} directory is empty"));
            }
            if trimmed.contains(['\0', '\\', '\n'])
                || trimmed
                    .split('/')
                    .any(|p| (p.is_empty() || p == "." || p == "..") && !trimmed.is_empty())
            {
                return Err(format!(
                    "its {what} directory {value:?} is not a clean path"
                ));
            }
            Ok(trimmed.to_string())
        };
        let interpreter = &target.interpreter;
        if !interpreter.starts_with('/') || interpreter.contains(['\0', '\n', '\r']) {
            return Err(format!(
                "its interpreter {interpreter:?} is not an absolute path on one line"
            ));
        }
        Ok(Scheme {
            interpreter: interpreter.clone(),
            python_version: (target.python_version.0, target.python_version.1),
            purelib: dir("purelib", &target.purelib, false)?,
            platlib: dir("platlib", &target.platlib, false)?,
            scripts: dir("scripts", &target.scripts, false)?,
            headers: dir("headers", &target.headers, false)?,
            data: dir("data", &target.data, true)?,
        })
    }
}

fn join(base: &str, rel: &str) -> String {
    if base.is_empty() {
        rel.to_string()
    } else {
        format!("{base}/{rel}")
    }
}

/// `path` relative to `from` (both clean image paths), as pip's
/// `os.path.relpath` writes RECORD paths: `../../../bin/flask`.
fn relative(path: &str, from: &str) -> String {
    let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let f: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; f.len() - common];
    parts.extend(&p[common..]);
    parts.join("/")
}

struct PlannedFile {
    dest: String,
    content: Content,
    executable: bool,
    /// RECORD hash and size.
    hash: String,
    size: u64,
}

struct Plan {
    dist_info: String,
    files: Vec<PlannedFile>,
}

fn plan(
    wheel: &Path,
    files: Vec<WheelMember>,
    info: &DistInfo,
    scheme: &Scheme,
    requested: bool,
) -> Result<Plan, InstallError> {
    let layout = |path: &str, reason: String| InstallError::Layout {
        wheel: wheel.to_path_buf(),
        path: path.to_string(),
        reason,
    };
    let read_err = |source: LayerError| InstallError::Layer {
        wheel: wheel.to_path_buf(),
        source,
    };
    let lib_dir = if info.wheel.root_is_purelib {
        &scheme.purelib
    } else {
        &scheme.platlib
    };
    let dist_info = join(lib_dir, &info.dir);
    let record_in_wheel = format!("{}/RECORD", info.dir);
    let scripts = generated_scripts(info, scheme).map_err(|r| layout("entry_points.txt", r))?;

    let mut planned = Vec::new();
    for file in files {
        if file.name == record_in_wheel {
            continue;
        }
        let top = file.name.split('/').next().unwrap();
        let (dest, is_script) = if top.ends_with(".data") {
            let parts: Vec<&str> = file.name.splitn(3, '/').collect();
            let [_, key, rest] = parts[..] else {
                return Err(layout(
                    &file.name,
                    "a .data directory must hold <scheme key>/<path>".into(),
                ));
            };
            let base = match key {
                "purelib" => scheme.purelib.clone(),
                "platlib" => scheme.platlib.clone(),
                "scripts" => scheme.scripts.clone(),
                "headers" => {
                    let name = &info.metadata.name;
                    if !is_project_name(name) {
                        return Err(layout(
                            &file.name,
                            format!(
                                "METADATA's Name {name:?} is not a project name, and headers \
                                 go into a directory of that name"
                            ),
                        ));
                    }
                    join(&scheme.headers, name)
                }
                "data" => scheme.data.clone(),
                other => {
                    return Err(layout(
                        &file.name,
                        format!(
                            "unknown .data key {other:?} (data, headers, platlib, purelib, scripts)"
                        ),
                    ))
                }
            };
            (join(&base, rest), key == "scripts")
        } else {
            (join(lib_dir, &file.name), false)
        };
        if is_script && is_entry_point_wrapper(&dest, info) {
            // pip skips scripts that setuptools generated for an entry point.
            continue;
        }
        if is_script && starts_with_python_shebang(&file.content).map_err(read_err)? {
            let mut bytes = Vec::new();
            file.content.copy_to(&mut bytes).map_err(read_err)?;
            let rest = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => &bytes[i + 1..],
                None => &[][..],
            };
            let mut fixed = format!("#!{}\n", scheme.interpreter).into_bytes();
            fixed.extend_from_slice(rest);
            planned.push(generated(dest, fixed, true));
            continue;
        }
        planned.push(PlannedFile {
            dest,
            content: file.content,
            executable: file.executable,
            hash: record_hash(&file.sha256),
            size: file.size,
        });
    }
    for (name, bytes) in scripts {
        planned.push(generated(join(&scheme.scripts, &name), bytes, true));
    }
    planned.push(generated(
        format!("{dist_info}/INSTALLER"),
        INSTALLER.as_bytes().to_vec(),
        false,
    ));
    if requested {
        planned.push(generated(
            format!("{dist_info}/REQUESTED"),
            Vec::new(),
            false,
        ));
    }
    // RECORD: every installed file relative to the library directory, sorted
    // by path as pip sorts its rows, and RECORD itself without hash or size.
    let record_path = format!("{dist_info}/RECORD");
    let mut rows: Vec<RecordRow> = planned
        .iter()
        .map(|f| RecordRow {
            path: relative(&f.dest, lib_dir),
            hash: f.hash.clone(),
            size: f.size.to_string(),
        })
        .collect();
    rows.push(RecordRow {
        path: relative(&record_path, lib_dir),
        hash: String::new(),
        size: String::new(),
    });
    rows.sort();
    planned.push(generated(
        record_path,
        write_record(&rows).into_bytes(),
        false,
    ));
    Ok(Plan {
        dist_info,
        files: planned,
    })
}

/// PEP 508's names: ASCII letters and digits, with `.`, `_` and `-` inside.
fn is_project_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn generated(dest: String, bytes: Vec<u8>, executable: bool) -> PlannedFile {
    PlannedFile {
        hash: record_hash(&Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        dest,
        content: Content::Bytes(bytes),
        executable,
    }
}

/// pip's `fix_script` rule: the first line starts with exactly `#!python`
/// (which `#!pythonw` does too).
fn starts_with_python_shebang(content: &Content) -> Result<bool, LayerError> {
    let mut head = [0u8; 8];
    let mut reader = content.open()?;
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(content.read_error(e)),
        }
    }
    Ok(&head[..n] == b"#!python")
}

/// pip's `is_entrypoint_wrapper`: `EP`, `EP.exe`, `EP-script.py` and `EP.pya`
/// in `.data/scripts` are setuptools' wrappers for entry point `EP`.
fn is_entry_point_wrapper(dest: &str, info: &DistInfo) -> bool {
    let name = dest.rsplit('/').next().unwrap();
    let lower = name.to_lowercase();
    let stem = if lower.ends_with(".exe") || lower.ends_with(".pya") {
        &name[..name.len() - 4]
    } else if lower.ends_with("-script.py") {
        &name[..name.len() - 10]
    } else {
        name
    };
    let ep = &info.entry_points;
    ep.console_scripts
        .iter()
        .chain(&ep.gui_scripts)
        .any(|e| e.name == stem)
}

/// The console and GUI scripts pip would generate, by file name.
fn generated_scripts(
    info: &DistInfo,
    scheme: &Scheme,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let (major, minor) = scheme.python_version;
    let mut console: Vec<ScriptEntry> = info.entry_points.console_scripts.clone();
    let mut specs: Vec<ScriptEntry> = Vec::new();
    // pip's get_console_script_specs: pip and easy_install get versioned
    // wrappers for the target Python, and the wheel's own versioned ones go.
    let renamed = |e: &ScriptEntry, name: String| ScriptEntry { name, ..e.clone() };
    if let Some(i) = console.iter().position(|e| e.name == "pip") {
        let pip = console.remove(i);
        specs.push(renamed(&pip, "pip".into()));
        specs.push(renamed(&pip, format!("pip{major}")));
        specs.push(renamed(&pip, format!("pip{major}.{minor}")));
        console.retain(|e| !is_versioned(&e.name, "pip", ""));
    }
    if let Some(i) = console.iter().position(|e| e.name == "easy_install") {
        let ei = console.remove(i);
        specs.push(renamed(&ei, "easy_install".into()));
        specs.push(renamed(&ei, format!("easy_install-{major}.{minor}")));
        console.retain(|e| !is_versioned(&e.name, "easy_install", "-"));
    }
    specs.extend(console);
    specs.extend(info.entry_points.gui_scripts.iter().cloned());
    let mut out = BTreeMap::new();
    for spec in specs {
        out.insert(spec.name.clone(), script(&scheme.interpreter, &spec));
    }
    Ok(out)
}

/// `pip(\d+(\.\d+)?)?$` (sep "") or `easy_install(-\d+\.\d+)?$` (sep "-").
fn is_versioned(name: &str, base: &str, sep: &str) -> bool {
    let Some(rest) = name.strip_prefix(base) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix(sep) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match rest.split_once('.') {
        None => sep.is_empty() && digits(rest),
        Some((a, b)) => digits(a) && digits(b),
    }
}

/// distlib's `ScriptMaker` output as pip configures it: the shebang, then
/// `SCRIPT_TEMPLATE`.
fn script(interpreter: &str, entry: &ScriptEntry) -> Vec<u8> {
    let import_name = entry.attr.split('.').next().unwrap();
    format!(
        "{shebang}# -*- coding: utf-8 -*-\n\
         import re\n\
         import sys\n\
         from {module} import {import_name}\n\
         if __name__ == '__main__':\n    \
         sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    \
         sys.exit({func}())\n",
        shebang = shebang(interpreter),
        module = entry.module,
        func = entry.attr,
    )
    .into_bytes()
}

/// distlib's `_get_shebang` + `_build_shebang` on Linux: a plain `#!` line
/// unless the interpreter has a space or the line would pass 127 bytes, then
/// the `/bin/sh` trampoline.
fn shebang(interpreter: &str) -> String {
    let mut exe = interpreter.to_string();
    if exe.contains(' ') {
        if let Some(rest) = exe.strip_prefix("/usr/bin/env ") {
            if rest.contains(' ') && !rest.starts_with('"') {
                exe = format!("/usr/bin/env \"{rest}\"");
            }
        } else if !exe.starts_with('"') {
            exe = format!("\"{exe}\"");
        }
    }
    if !exe.contains(' ') && exe.len() + 3 <= 127 {
        format!("#!{exe}\n")
    } else {
        format!("#!/bin/sh\n'''exec' {exe} \"$0\" \"$@\"\n' '''\n")
    }
}

/// Refuses paths that are already in the tree, that this wheel installs
/// twice, or where a file would have to be a directory or the reverse.
fn check_free(wheel: &Path, tree: &LayerTree, files: &[PlannedFile]) -> Result<(), InstallError> {
    let collision = |path: &str, reason: &str| InstallError::Collision {
        wheel: wheel.to_path_buf(),
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let mut mine: BTreeSet<&str> = BTreeSet::new();
    for f in files {
        if !mine.insert(&f.dest) {
            return Err(collision(&f.dest, "which the wheel installs twice"));
        }
        if tree.get(&f.dest).is_some() {
            return Err(collision(
                &f.dest,
                "which is already in the layer (another wheel installs it)",
            ));
        }
        let mut parent = f.dest.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if matches!(tree.get(p), Some(Node::File { .. } | Node::Symlink { .. })) {
                return Err(collision(
                    &f.dest,
                    &format!("but {p} is a file in the layer, not a directory"),
                ));
            }
            parent = p;
        }
    }
    for f in files {
        let prefix = format!("{}/", f.dest);
        if let Some(inner) = mine.range(prefix.as_str()..).next() {
            if inner.starts_with(&prefix) {
                return Err(collision(
                    inner,
                    &format!("but the wheel also installs {} as a file", f.dest),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use fs_err::{self as fs, File};
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn target() -> Target {
        Target {
            arch: "x86_64".into(),
            python_version: (3, 11, 2),
            interpreter: "/usr/bin/python3".into(),
            purelib: "usr/lib/python3/dist-packages".into(),
            platlib: "usr/lib/python3/plat-packages".into(),
            scripts: "usr/bin".into(),
            headers: "usr/include/python3.11".into(),
            data: "usr".into(),
            glibc: Some((2, 36)),
            installed: BTreeMap::new(),
        }
    }

    /// A zip with these members (name, bytes, unix mode), deflated.
    fn write_zip(path: &Path, members: &[(&str, &[u8], u32)]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, bytes, mode) in members {
            let options = SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(*mode);
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    fn record_row(name: &str, bytes: &[u8]) -> String {
        let name = if name.contains(',') {
            format!("\"{name}\"")
        } else {
            name.to_string()
        };
        format!(
            "{name},sha256={},{}\n",
            URL_SAFE_NO_PAD.encode(Sha256::digest(bytes)),
            bytes.len()
        )
    }

    struct Spec<'a> {
        /// METADATA Name; the file and dist-info names derive from it.
        name: &'a str,
        version: &'a str,
        purelib: bool,
        files: Vec<(&'a str, &'a [u8], u32)>,
        entry_points: Option<&'a str>,
        /// RECORD text replacing the generated one.
        record: Option<String>,
    }

    impl<'a> Spec<'a> {
        fn new(name: &'a str, files: Vec<(&'a str, &'a [u8], u32)>) -> Spec<'a> {
            Spec {
                name,
                version: "1.0",
                purelib: true,
                files,
                entry_points: None,
                record: None,
            }
        }

        fn stem(&self) -> String {
            format!("{}-{}", self.name.replace(['-', '.'], "_"), self.version)
        }

        fn dist_info(&self) -> String {
            format!("{}.dist-info", self.stem())
        }

        /// The members, RECORD last.
        fn members(&self) -> (Vec<(String, Vec<u8>, u32)>, String) {
            let di = self.dist_info();
            let mut members: Vec<(String, Vec<u8>, u32)> = self
                .files
                .iter()
                .map(|(n, b, m)| (n.to_string(), b.to_vec(), *m))
                .collect();
            members.push((
                format!("{di}/WHEEL"),
                format!(
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: {}\nTag: py3-none-any\n",
                    self.purelib
                )
                .into_bytes(),
                0o644,
            ));
            members.push((
                format!("{di}/METADATA"),
                format!(
                    "Metadata-Version: 2.1\nName: {}\nVersion: {}\nRequires-Python: >=3.8\n\
                     Requires-Dist: six (>=1.0)\nRequires-Dist: click;\n  extra == \"cli\"\n\n\
                     Long description.\nName: not-a-header\n",
                    self.name, self.version
                )
                .into_bytes(),
                0o644,
            ));
            if let Some(ep) = self.entry_points {
                members.push((
                    format!("{di}/entry_points.txt"),
                    ep.as_bytes().to_vec(),
                    0o644,
                ));
            }
            let mut record = String::new();
            for (n, b, _) in &members {
                record.push_str(&record_row(n, b));
            }
            record.push_str(&format!("{di}/RECORD,,\n"));
            (members, self.record.clone().unwrap_or(record))
        }

        fn build(&self, dir: &Path) -> PathBuf {
            let (mut members, record) = self.members();
            members.push((
                format!("{}/RECORD", self.dist_info()),
                record.into_bytes(),
                0o644,
            ));
            let path = dir.join(format!("{}-py3-none-any.whl", self.stem()));
            let refs: Vec<(&str, &[u8], u32)> = members
                .iter()
                .map(|(n, b, m)| (n.as_str(), b.as_slice(), *m))
                .collect();
            write_zip(&path, &refs);
            path
        }
    }

    fn bytes_of(tree: &LayerTree, path: &str) -> Vec<u8> {
        match tree.get(path) {
            Some(Node::File { content, .. }) => {
                let mut out = Vec::new();
                content.copy_to(&mut out).unwrap();
                out
            }
            other => panic!("{path}: {other:?}"),
        }
    }

    fn executable(tree: &LayerTree, path: &str) -> bool {
        match tree.get(path) {
            Some(Node::File { executable, .. }) => *executable,
            other => panic!("{path}: {other:?}"),
        }
    }

    fn files_of(tree: &LayerTree) -> Vec<String> {
        tree.iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .map(|(p, _)| p.to_string())
            .collect()
    }

    const SP: &str = "usr/lib/python3/dist-packages";

    #[test]
    fn purelib_wheel() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec::new(
            "Demo.Pkg",
            vec![
                ("demo/__init__.py", b"X = 1\n", 0o644),
                ("demo/data, with comma.txt", b"data", 0o644),
                ("demo/tool.sh", b"#!/bin/sh\n", 0o100755),
            ],
        );
        let wheel = spec.build(tmp.path());
        let mut tree = LayerTree::new();
        let got = install_wheel(&wheel, &target(), true, &mut tree).unwrap();
        let di = format!("{SP}/Demo_Pkg-1.0.dist-info");
        assert_eq!(got.name, "Demo.Pkg");
        assert_eq!(got.version, "1.0");
        assert_eq!(got.dist_info, di);
        assert_eq!(
            got.requires_dist,
            ["six (>=1.0)", "click; extra == \"cli\""]
        );
        assert_eq!(got.requires_python.as_deref(), Some(">=3.8"));
        let mut expected = vec![
            format!("{di}/INSTALLER"),
            format!("{di}/METADATA"),
            format!("{di}/RECORD"),
            format!("{di}/REQUESTED"),
            format!("{di}/WHEEL"),
            format!("{SP}/demo/__init__.py"),
            format!("{SP}/demo/data, with comma.txt"),
            format!("{SP}/demo/tool.sh"),
        ];
        expected.sort();
        assert_eq!(got.files, expected);
        assert_eq!(files_of(&tree), expected);
        assert_eq!(
            bytes_of(&tree, &format!("{SP}/demo/__init__.py")),
            b"X = 1\n"
        );
        assert!(executable(&tree, &format!("{SP}/demo/tool.sh")));
        assert!(!executable(&tree, &format!("{SP}/demo/__init__.py")));
        assert_eq!(
            bytes_of(&tree, &format!("{di}/INSTALLER")),
            b"dallinger-oci\n"
        );
        assert_eq!(bytes_of(&tree, &format!("{di}/REQUESTED")), b"");
        // The layer streams the wheel's files from the wheel itself.
        assert!(matches!(
            tree.get(&format!("{SP}/demo/__init__.py")),
            Some(Node::File {
                content: Content::ZipMember(m),
                ..
            }) if m.archive.path() == wheel && m.name == "demo/__init__.py"
        ));
        let record = String::from_utf8(bytes_of(&tree, &format!("{di}/RECORD"))).unwrap();
        let (members, _) = spec.members();
        let mut want = String::new();
        let mut rows: Vec<(String, Vec<u8>)> = members
            .iter()
            .map(|(n, b, _)| (n.clone(), b.clone()))
            .collect();
        rows.push((
            "Demo_Pkg-1.0.dist-info/INSTALLER".into(),
            b"dallinger-oci\n".to_vec(),
        ));
        rows.push(("Demo_Pkg-1.0.dist-info/REQUESTED".into(), Vec::new()));
        rows.push(("Demo_Pkg-1.0.dist-info/RECORD".into(), Vec::new()));
        rows.sort();
        for (n, b) in rows {
            if n.ends_with("/RECORD") {
                want.push_str(&format!("{n},,\n"));
            } else {
                want.push_str(&record_row(&n, &b));
            }
        }
        assert_eq!(record, want);

        // Not requested: no REQUESTED.
        let mut tree = LayerTree::new();
        let got = install_wheel(&wheel, &target(), false, &mut tree).unwrap();
        assert!(!got.files.iter().any(|f| f.ends_with("REQUESTED")));
        let record = String::from_utf8(bytes_of(&tree, &format!("{di}/RECORD"))).unwrap();
        assert!(!record.contains("REQUESTED"));
    }

    #[test]
    fn platlib_wheel_with_scripts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = Spec::new(
            "plat",
            vec![
                ("plat/__init__.py", b"", 0o644),
                ("plat/_ext.so", b"\x7fELF-ish", 0o755),
                ("plat-1.0.data/scripts/tool", b"#!python\nprint(1)\n", 0o755),
                (
                    "plat-1.0.data/scripts/guitool",
                    b"#!pythonw -E\r\nprint(2)\r\n",
                    0o644,
                ),
                ("plat-1.0.data/scripts/bin", b"\x7fELF\x00binary", 0o755),
                (
                    "plat-1.0.data/scripts/plain.sh",
                    b"#!/bin/sh\necho\n",
                    0o644,
                ),
                ("plat-1.0.data/scripts/py3", b"#!python3", 0o644),
                ("plat-1.0.data/purelib/plat_pure.py", b"P = 1\n", 0o644),
            ],
        );
        spec.purelib = false;
        let wheel = spec.build(tmp.path());
        let mut tree = LayerTree::new();
        let t = target();
        let got = install_wheel(&wheel, &t, false, &mut tree).unwrap();
        let plat = "usr/lib/python3/plat-packages";
        assert_eq!(got.dist_info, format!("{plat}/plat-1.0.dist-info"));
        assert!(executable(&tree, &format!("{plat}/plat/_ext.so")));
        assert_eq!(
            bytes_of(&tree, "usr/bin/tool"),
            b"#!/usr/bin/python3\nprint(1)\n"
        );
        assert!(executable(&tree, "usr/bin/tool"));
        // The whole first line goes, as pip's fix_script does.
        assert_eq!(
            bytes_of(&tree, "usr/bin/guitool"),
            b"#!/usr/bin/python3\nprint(2)\r\n"
        );
        assert!(executable(&tree, "usr/bin/guitool"));
        assert_eq!(bytes_of(&tree, "usr/bin/py3"), b"#!/usr/bin/python3\n");
        assert_eq!(bytes_of(&tree, "usr/bin/bin"), b"\x7fELF\x00binary");
        assert!(executable(&tree, "usr/bin/bin"));
        assert_eq!(bytes_of(&tree, "usr/bin/plain.sh"), b"#!/bin/sh\necho\n");
        assert!(!executable(&tree, "usr/bin/plain.sh"));
        assert_eq!(bytes_of(&tree, &format!("{SP}/plat_pure.py")), b"P = 1\n");
        let record = String::from_utf8(bytes_of(
            &tree,
            &format!("{plat}/plat-1.0.dist-info/RECORD"),
        ))
        .unwrap();
        assert!(
            record.contains(&record_row(
                "../../../bin/tool",
                b"#!/usr/bin/python3\nprint(1)\n"
            )),
            "{record}"
        );
        assert!(record.contains(&record_row("../dist-packages/plat_pure.py", b"P = 1\n")));
        assert!(record.contains(&record_row("plat/_ext.so", b"\x7fELF-ish")));
        assert!(!record.contains(".data"), "{record}");
        assert!(!files_of(&tree).iter().any(|f| f.contains(".data")));
    }

    #[test]
    fn headers_and_data() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec::new(
            "Head_Er",
            vec![
                ("head_er/__init__.py", b"", 0o644),
                ("Head_Er-1.0.data/headers/head.h", b"#pragma once\n", 0o644),
                ("Head_Er-1.0.data/headers/sub/x.h", b"", 0o644),
                ("Head_Er-1.0.data/data/share/head/readme.txt", b"hi", 0o644),
            ],
        );
        let wheel = spec.build(tmp.path());
        let mut tree = LayerTree::new();
        install_wheel(&wheel, &target(), false, &mut tree).unwrap();
        assert_eq!(
            bytes_of(&tree, "usr/include/python3.11/Head_Er/head.h"),
            b"#pragma once\n"
        );
        assert!(tree.get("usr/include/python3.11/Head_Er/sub/x.h").is_some());
        assert_eq!(bytes_of(&tree, "usr/share/head/readme.txt"), b"hi");
        let record = String::from_utf8(bytes_of(
            &tree,
            &format!("{SP}/Head_Er-1.0.dist-info/RECORD"),
        ))
        .unwrap();
        assert!(record.contains("../../../include/python3.11/Head_Er/head.h,"));
        assert!(record.contains("../../../share/head/readme.txt,"));

        // The data scheme may be the image root.
        let mut t = target();
        t.data = String::new();
        let mut tree = LayerTree::new();
        install_wheel(&wheel, &t, false, &mut tree).unwrap();
        assert_eq!(bytes_of(&tree, "share/head/readme.txt"), b"hi");

        // An unknown .data key is refused.
        let bad = Spec::new("odd", vec![("odd-1.0.data/lib/x", b"", 0o644)]).build(tmp.path());
        let err = install_wheel(&bad, &target(), false, &mut LayerTree::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("odd-1.0-py3-none-any.whl") && err.contains("odd-1.0.data/lib/x"));
        assert!(err.contains("unknown .data key"), "{err}");
    }

    #[test]
    fn entry_points_become_scripts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = Spec::new(
            "ep",
            vec![
                ("ep/__init__.py", b"", 0o644),
                // setuptools' wrapper for an entry point: pip skips it.
                (
                    "ep-1.0.data/scripts/ep-script.py",
                    b"#!python\nold\n",
                    0o755,
                ),
                ("ep-1.0.data/scripts/epg", b"#!python\nold\n", 0o755),
            ],
        );
        spec.entry_points = Some(
            "# comment\n[console_scripts]\nep = ep.cli:main\n ep-tool=ep.cli:Tool.run [extra]\n\n\
             [gui_scripts]\nepg = ep.gui:run\n[pytest11]\nplugin = ep.plugin\n",
        );
        let wheel = spec.build(tmp.path());
        let mut tree = LayerTree::new();
        let got = install_wheel(&wheel, &target(), false, &mut tree).unwrap();
        let template = |module: &str, import: &str, func: &str| {
            format!(
                "#!/usr/bin/python3\n# -*- coding: utf-8 -*-\nimport re\nimport sys\n\
                 from {module} import {import}\nif __name__ == '__main__':\n    \
                 sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    \
                 sys.exit({func}())\n"
            )
        };
        assert_eq!(
            String::from_utf8(bytes_of(&tree, "usr/bin/ep")).unwrap(),
            template("ep.cli", "main", "main")
        );
        assert_eq!(
            String::from_utf8(bytes_of(&tree, "usr/bin/ep-tool")).unwrap(),
            template("ep.cli", "Tool", "Tool.run")
        );
        assert_eq!(
            String::from_utf8(bytes_of(&tree, "usr/bin/epg")).unwrap(),
            template("ep.gui", "run", "run")
        );
        assert!(executable(&tree, "usr/bin/ep") && executable(&tree, "usr/bin/epg"));
        assert!(tree.get("usr/bin/ep-script.py").is_none());
        assert!(tree.get("usr/bin/plugin").is_none());
        assert!(got.files.contains(&"usr/bin/ep-tool".to_string()));
        let record =
            String::from_utf8(bytes_of(&tree, &format!("{SP}/ep-1.0.dist-info/RECORD"))).unwrap();
        assert!(record.contains(&record_row(
            "../../../bin/ep",
            template("ep.cli", "main", "main").as_bytes()
        )));

        // pip's versioned pip wrappers, for the target's Python.
        let mut pip = Spec::new("pip", vec![("pip/__init__.py", b"", 0o644)]);
        pip.entry_points = Some(
            "[console_scripts]\npip = pip._internal.cli.main:main\npip3 = pip._internal.cli.main:main\n\
             pip3.9 = pip._internal.cli.main:main\npipx = other:main\n",
        );
        let wheel = pip.build(tmp.path());
        let mut tree = LayerTree::new();
        install_wheel(&wheel, &target(), false, &mut tree).unwrap();
        let scripts: Vec<String> = files_of(&tree)
            .into_iter()
            .filter(|f| f.starts_with("usr/bin/"))
            .collect();
        assert_eq!(
            scripts,
            [
                "usr/bin/pip",
                "usr/bin/pip3",
                "usr/bin/pip3.11",
                "usr/bin/pipx"
            ]
        );

        // A long interpreter path gets distlib's /bin/sh trampoline.
        let long = format!("/{}/python3", "p".repeat(130));
        assert_eq!(
            shebang(&long),
            format!("#!/bin/sh\n'''exec' {long} \"$0\" \"$@\"\n' '''\n")
        );
        assert_eq!(
            shebang("/opt/my python/bin/python3"),
            "#!/bin/sh\n'''exec' \"/opt/my python/bin/python3\" \"$0\" \"$@\"\n' '''\n"
        );

        // An entry point without a callable suffix is refused, as pip does.
        let mut bad = Spec::new("bad", vec![("bad/__init__.py", b"", 0o644)]);
        bad.entry_points = Some("[console_scripts]\nbad = bad.cli\n");
        let wheel = bad.build(tmp.path());
        let err = install_wheel(&wheel, &target(), false, &mut LayerTree::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad-1.0-py3-none-any.whl") && err.contains("callable"),
            "{err}"
        );
    }

    #[test]
    fn namespace_packages_and_pth_files_merge() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Spec::new(
            "zope.a",
            vec![
                ("zope/a/__init__.py", b"A\n", 0o644),
                ("zope.a-1.0-nspkg.pth", b"import sys\n", 0o644),
            ],
        )
        .build(tmp.path());
        let b = Spec::new(
            "zope.b",
            vec![
                ("zope/b/__init__.py", b"B\n", 0o644),
                ("zope.b-1.0-nspkg.pth", b"import os\n", 0o644),
            ],
        )
        .build(tmp.path());
        let mut tree = LayerTree::new();
        install_wheel(&a, &target(), true, &mut tree).unwrap();
        install_wheel(&b, &target(), true, &mut tree).unwrap();
        assert_eq!(tree.get(&format!("{SP}/zope")), Some(&Node::Dir));
        assert!(tree.get(&format!("{SP}/zope/__init__.py")).is_none());
        assert_eq!(bytes_of(&tree, &format!("{SP}/zope/a/__init__.py")), b"A\n");
        assert_eq!(bytes_of(&tree, &format!("{SP}/zope/b/__init__.py")), b"B\n");
        assert_eq!(
            bytes_of(&tree, &format!("{SP}/zope.a-1.0-nspkg.pth")),
            b"import sys\n"
        );
        assert_eq!(
            bytes_of(&tree, &format!("{SP}/zope.b-1.0-nspkg.pth")),
            b"import os\n"
        );

        // A second wheel with the same file collides; the tree is unchanged.
        let clash =
            Spec::new("clash", vec![("zope/a/__init__.py", b"C\n", 0o644)]).build(tmp.path());
        let before = files_of(&tree);
        let err = install_wheel(&clash, &target(), false, &mut tree)
            .unwrap_err()
            .to_string();
        assert!(err.contains("clash-1.0-py3-none-any.whl"), "{err}");
        assert!(
            err.contains("zope/a/__init__.py") && err.contains("already"),
            "{err}"
        );
        assert_eq!(files_of(&tree), before);
    }

    /// Refused when it is installed, or else when its layer is written
    /// (the bytes are checked as they stream): one line naming the wheel.
    fn assert_refused(wheel: &Path, needles: &[&str]) {
        let mut tree = LayerTree::new();
        let err = match install_wheel(wheel, &target(), false, &mut tree) {
            Err(e) => e.to_string(),
            Ok(_) => {
                let options = dallinger_oci_layers::WriteOptions {
                    mtime: 0,
                    workers: 1,
                    codec: dallinger_oci_layers::Codec::Gzip,
                };
                tree.write(&options, io::sink()).err().unwrap().to_string()
            }
        };
        let name = wheel.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name), "{err}");
        assert!(!err.contains('\n'), "{err}");
        for n in needles {
            assert!(err.contains(n), "{err:?} lacks {n:?}");
        }
    }

    #[test]
    fn record_mismatch_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let files = vec![
            ("m/__init__.py", &b"print('hi')\n"[..], 0o644),
            ("m/big.bin", &[7u8; 100_000][..], 0o644),
        ];
        let mut spec = Spec::new("m", files.clone());
        let (_, record) = spec.members();
        spec.record = Some(record.replace(
            &record_row("m/__init__.py", b"print('hi')\n"),
            &record_row("m/__init__.py", b"print('bye')\n"),
        ));
        assert_refused(
            &spec.build(tmp.path()),
            &["m/__init__.py", "hash does not match RECORD"],
        );

        // The same size, other bytes: the zip and RECORD agree, so the
        // member fails as its layer is written.
        let mut spec = Spec::new("m", files.clone());
        let (_, record) = spec.members();
        spec.record = Some(record.replace(
            &record_row("m/__init__.py", b"print('hi')\n"),
            &record_row("m/__init__.py", b"print('ho')\n"),
        ));
        assert_refused(
            &spec.build(tmp.path()),
            &["\"m/__init__.py\": its hash does not match RECORD"],
        );

        let mut spec = Spec::new("m", files.clone());
        let (_, record) = spec.members();
        spec.record = Some(record.replace(",100000\n", ",10\n"));
        assert_refused(&spec.build(tmp.path()), &["m/big.bin", "larger"]);

        let mut spec = Spec::new("m", files.clone());
        let (_, record) = spec.members();
        spec.record = Some(
            record
                .lines()
                .filter(|l| !l.starts_with("m/big.bin"))
                .map(|l| format!("{l}\n"))
                .collect(),
        );
        assert_refused(
            &spec.build(tmp.path()),
            &["m/big.bin", "not listed in RECORD"],
        );

        let mut spec = Spec::new("m", files.clone());
        let (_, record) = spec.members();
        spec.record = Some(format!("{record}m/ghost.py,sha256=AAAA,1\n"));
        assert_refused(&spec.build(tmp.path()), &["m/ghost.py", "not in the wheel"]);

        let mut spec = Spec::new("m", files);
        let (_, record) = spec.members();
        spec.record = Some(record.replace(
            &record_row("m/__init__.py", b"print('hi')\n"),
            "m/__init__.py,md5=abc,12\n",
        ));
        assert_refused(&spec.build(tmp.path()), &["m/__init__.py", "md5"]);
    }

    /// A valid wheel whose member `placeholder` is renamed to `name` (same
    /// length) in the zip's headers.
    fn wheel_with_renamed_member(dir: &Path, placeholder: &str, name: &str) -> PathBuf {
        assert_eq!(placeholder.len(), name.len());
        let spec = Spec::new(
            "evil",
            vec![("evil/__init__.py", b"", 0o644), (placeholder, b"x", 0o644)],
        );
        let path = spec.build(dir);
        let bytes = fs::read(&path).unwrap();
        let (from, to) = (placeholder.as_bytes(), name.as_bytes());
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i..].starts_with(from) {
                out.extend_from_slice(to);
                i += from.len();
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        fs::write(&path, out).unwrap();
        path
    }

    #[test]
    fn bad_member_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for (placeholder, name, needle) in [
            ("evil/aa/x.py", "evil/../x.py", "'..'"),
            ("xxxx/passwd", "/etc/passwd", "absolute"),
            ("evil/a_b.py", "evil\\a_b.py", "backslash"),
            ("evil/nul.py", "evil/n\0l.py", "NUL"),
            ("evil/__init__.pz", "evil/__init__.py", "twice"),
            ("evil/./x.py", "evil/./x.py", "'.'"),
        ] {
            let wheel = wheel_with_renamed_member(tmp.path(), placeholder, name);
            let shown = format!("{name:?}");
            assert_refused(&wheel, &[&shown[1..shown.len() - 1], needle]);
        }
    }

    #[test]
    fn headers_need_a_project_name() {
        assert!(is_project_name("Head_Er") && is_project_name("a") && is_project_name("a.b-c"));
        for bad in ["", "..", ".a", "a.", "a/b", "a b"] {
            assert!(!is_project_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn same_input_same_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Spec::new(
            "det",
            vec![
                ("det/b.py", b"b", 0o644),
                ("det/a.py", b"a", 0o755),
                ("det-1.0.data/scripts/s", b"#!python\n", 0o644),
            ],
        );
        let wheel = spec.build(tmp.path());
        let layer = || {
            let mut tree = LayerTree::new();
            install_wheel(&wheel, &target(), true, &mut tree).unwrap();
            let options = dallinger_oci_layers::WriteOptions {
                mtime: 0,
                workers: 1,
                codec: dallinger_oci_layers::Codec::Gzip,
            };
            tree.write(&options, Vec::new()).unwrap().1
        };
        let one = layer();
        assert_eq!(one, layer());
        let host = tmp.path().to_str().unwrap().as_bytes();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert!(!tar.windows(host.len()).any(|w| w == host));
    }
}
