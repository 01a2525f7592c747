//! Our wheel installer against pip: the same real wheels installed by
//! `pip install --prefix` and by `install_wheel` into a layer (written,
//! then unpacked with the tar crate) must give the same tree, file for file
//! and byte for byte, but for a short list of known, intended differences,
//! which the test prints (`cargo test --test integration wheel_fidelity:: -- --nocapture`).
//!
//! The wheels are downloaded once with `pip download` into
//! `$DALLINGER_OCI_TEST_CACHE/wheels/fidelity` (default
//! `~/.cache/dallinger-oci-tests/wheels/fidelity`) and reused.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, require_tool};
use dallinger_oci::python::install::{install_wheel, WheelFilename};
use dallinger_oci::python::spec::normalise_name;
use dallinger_oci::python::Target;
use dallinger_oci_layers::{LayerTree, WriteOptions};

/// Small wheels (about 2.2 MB together) that cover what an installer must
/// get right:
/// * greenlet: `.data/headers/greenlet.h`, executable `.so` files, platlib;
/// * jmespath: `.data/scripts/jp.py` starting with `#!python`;
/// * zope.event + zope.interface: the `zope` namespace shared by two wheels
///   (no `zope/__init__.py`), each with a `-nspkg.pth` file;
/// * setuptools: `distutils-precedence.pth`, 500 files, nested `.dist-info`s;
/// * flask: a console script (`flask`); six: a py2.py3 wheel.
const WHEELS: &[(&str, &str)] = &[
    ("flask", "3.1.0"),
    ("greenlet", "3.1.1"),
    ("jmespath", "1.0.1"),
    ("setuptools", "75.8.0"),
    ("six", "1.17.0"),
    ("zope.event", "5.0"),
    ("zope.interface", "7.2"),
];

fn cache_dir() -> PathBuf {
    common::test_cache_dir().join("wheels").join("fidelity")
}

fn find_wheel(dir: &Path, name: &str, version: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| WheelFilename::parse(n).ok())
                .is_some_and(|w| {
                    normalise_name(&w.name) == normalise_name(name) && w.version == version
                })
        })
        .collect();
    found.sort();
    found.pop()
}

/// The wheels, downloaded with pip on the first run only.
fn wheels(python: &Path) -> Vec<PathBuf> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).unwrap();
    let missing: Vec<String> = WHEELS
        .iter()
        .filter(|(n, v)| find_wheel(&dir, n, v).is_none())
        .map(|(n, v)| format!("{n}=={v}"))
        .collect();
    if !missing.is_empty() {
        println!("downloading {} into {}", missing.join(" "), dir.display());
        ok(Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--disable-pip-version-check", "-d"])
            .arg(&dir)
            .args(&missing));
    }
    WHEELS
        .iter()
        .map(|(n, v)| {
            find_wheel(&dir, n, v).unwrap_or_else(|| panic!("pip did not download {n}=={v}"))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { bytes: Vec<u8>, executable: bool },
    Symlink(PathBuf),
}

fn read_tree(root: &Path) -> BTreeMap<String, Entry> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let kind = e.file_type();
        let entry = if kind.is_symlink() {
            Entry::Symlink(fs::read_link(e.path()).unwrap())
        } else if kind.is_dir() {
            Entry::Dir
        } else {
            Entry::File {
                bytes: fs::read(e.path()).unwrap(),
                executable: e.metadata().unwrap().permissions().mode() & 0o111 != 0,
            }
        };
        out.insert(rel, entry);
    }
    out
}

/// RECORD as a set of rows, line ends normalised.
fn record_rows(bytes: &[u8]) -> BTreeSet<String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
        .lines()
        .map(str::to_string)
        .collect()
}

fn is_distlib_script(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.starts_with("#!")
        && text.contains("\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom ")
}

#[test]
fn installs_like_pip() {
    let python = require_tool("python3");
    let probe = ok(Command::new(&python).args([
        "-c",
        "import sys, pip; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])",
    ]));
    let mut lines = probe.lines();
    let interpreter = lines.next().unwrap().to_string();
    let version: Vec<u32> = lines
        .next()
        .unwrap()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    let wheels = wheels(&python);
    let total: u64 = wheels.iter().map(|w| fs::metadata(w).unwrap().len()).sum();
    assert!(total < 20 << 20, "the wheels are {total} bytes");
    let tmp = tempfile::tempdir().unwrap();

    // pip, into a prefix. Installed by name from a find-links directory (as
    // from an index) so that pip writes no direct_url.json.
    let pip_root = tmp.path().join("pip");
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-compile",
        "--no-index",
    ])
    // Also the ones the host Python already has (six, setuptools).
    .arg("--ignore-installed")
    .args(["--disable-pip-version-check", "--no-warn-script-location"])
    .arg("--find-links")
    .arg(cache_dir())
    .arg("--prefix")
    .arg(&pip_root)
    .args(WHEELS.iter().map(|(n, v)| format!("{n}=={v}")))
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .env_remove("PIP_REQUIRE_VIRTUALENV")
    .env_remove("PIP_USER");
    let started = std::time::Instant::now();
    ok(&mut pip);
    println!("pip install: {:.1} s", started.elapsed().as_secs_f32());

    // Ours, into a layer whose paths mirror that prefix.
    let site = format!("lib/python{}.{}/site-packages", version[0], version[1]);
    let target = Target {
        arch: std::env::consts::ARCH.to_string(),
        python_version: (version[0], version[1], version[2]),
        interpreter: interpreter.clone(),
        purelib: site.clone(),
        platlib: site.clone(),
        scripts: "bin".into(),
        headers: format!("include/python{}.{}", version[0], version[1]),
        data: String::new(),
        glibc: None,
        installed: BTreeMap::new(),
    };
    let mut tree = LayerTree::new();
    let started = std::time::Instant::now();
    for wheel in &wheels {
        let installed =
            install_wheel(wheel, &target, true, &mut tree).unwrap_or_else(|e| panic!("{e}"));
        assert!(installed.dist_info.starts_with(&site));
    }
    let options = WriteOptions {
        mtime: 946_684_800,
        workers: 2,
        codec: dallinger_oci_layers::Codec::Gzip,
    };
    println!("install_wheel: {:.1} s", started.elapsed().as_secs_f32());
    let started = std::time::Instant::now();
    let (_, layer) = tree.write(&options, Vec::new()).unwrap();
    println!("layer write: {:.1} s", started.elapsed().as_secs_f32());
    // Installing again gives the same layer.
    let mut again = LayerTree::new();
    for wheel in &wheels {
        install_wheel(wheel, &target, true, &mut again).unwrap();
    }
    assert_eq!(
        tree.content_key().unwrap(),
        again.content_key().unwrap(),
        "the layer is not reproducible"
    );
    let host = tmp.path().to_str().unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&layer[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    assert!(
        !tar_bytes.windows(host.len()).any(|w| w == host.as_bytes()),
        "a host path is in the layer"
    );
    let our_root = tmp.path().join("ours");
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    archive.set_preserve_permissions(true);
    archive.unpack(&our_root).unwrap();

    let theirs = read_tree(&pip_root);
    let ours = read_tree(&our_root);

    // The features the wheels were chosen for are really there.
    for must in [
        "include/python3.11/greenlet/greenlet.h".to_string(),
        "bin/jp.py".into(),
        "bin/flask".into(),
        format!("{site}/distutils-precedence.pth"),
        format!("{site}/zope.event-5.0-py3.11-nspkg.pth"),
        format!("{site}/zope/interface/__init__.py"),
        format!("{site}/zope/event/__init__.py"),
    ] {
        let must = must.replace(
            "python3.11",
            &format!("python{}.{}", version[0], version[1]),
        );
        assert!(theirs.contains_key(&must), "pip did not install {must}");
        assert!(ours.contains_key(&must), "we did not install {must}");
    }
    assert!(!ours.contains_key(&format!("{site}/zope/__init__.py")));
    match &ours["bin/jp.py"] {
        Entry::File { bytes, executable } => {
            assert!(bytes.starts_with(format!("#!{interpreter}\n").as_bytes()));
            assert!(*executable);
        }
        other => panic!("bin/jp.py: {other:?}"),
    }

    let mut allowed: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let paths: BTreeSet<&String> = theirs.keys().chain(ours.keys()).collect();
    // Console scripts whose text differs: their RECORD rows differ too.
    let mut script_rows: BTreeSet<String> = BTreeSet::new();
    for path in &paths {
        let (Some(t), Some(o)) = (theirs.get(*path), ours.get(*path)) else {
            failures.push(format!(
                "{path}: only in {}",
                if theirs.contains_key(*path) {
                    "pip's tree"
                } else {
                    "ours"
                }
            ));
            continue;
        };
        if t == o {
            continue;
        }
        match (t, o) {
            (
                Entry::File {
                    bytes: tb,
                    executable: te,
                },
                Entry::File {
                    bytes: ob,
                    executable: oe,
                },
            ) => {
                if te != oe {
                    failures.push(format!("{path}: pip executable={te}, ours executable={oe}"));
                }
                if tb == ob {
                    continue;
                }
                if path.ends_with(".dist-info/INSTALLER") {
                    allowed.push(format!(
                        "{path}: INSTALLER is {:?} (pip: {:?})",
                        String::from_utf8_lossy(ob),
                        String::from_utf8_lossy(tb)
                    ));
                } else if path.starts_with("bin/") && is_distlib_script(tb) {
                    allowed.push(format!("{path}: console script text differs"));
                    script_rows.insert(format!("../../../{path},"));
                } else if path.ends_with(".dist-info/RECORD") {
                    // Compared below.
                } else {
                    failures.push(format!("{path}: contents differ"));
                }
            }
            _ => failures.push(format!("{path}: pip has {t:?}, ours {o:?}")),
        }
    }
    for path in paths.iter().filter(|p| p.ends_with(".dist-info/RECORD")) {
        let (Some(Entry::File { bytes: tb, .. }), Some(Entry::File { bytes: ob, .. })) =
            (theirs.get(*path), ours.get(*path))
        else {
            continue;
        };
        if tb == ob {
            continue;
        }
        if tb.windows(2).any(|w| w == b"\r\n") && !ob.contains(&b'\r') {
            allowed.push(format!("{path}: LF line ends (pip: CRLF)"));
        }
        let t_rows = record_rows(tb);
        let o_rows = record_rows(ob);
        let exempt = |row: &String| {
            row.contains(".dist-info/INSTALLER,") || script_rows.iter().any(|s| row.starts_with(s))
        };
        for row in t_rows.symmetric_difference(&o_rows) {
            if exempt(row) {
                allowed.push(format!(
                    "{path}: row {row:?} only in {}",
                    if t_rows.contains(row) {
                        "pip's"
                    } else {
                        "ours"
                    }
                ));
            } else {
                failures.push(format!(
                    "{path}: row {row:?} only in {}",
                    if t_rows.contains(row) {
                        "pip's"
                    } else {
                        "ours"
                    }
                ));
            }
        }
        let order = |b: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(b)
                .replace("\r\n", "\n")
                .lines()
                .map(|l| l.split(',').next().unwrap().to_string())
                .collect()
        };
        if order(tb) != order(ob) {
            failures.push(format!("{path}: rows are not in pip's order"));
        }
    }

    println!(
        "{} wheels, {} entries in both trees; {} allowed differences:",
        wheels.len(),
        ours.len(),
        allowed.len()
    );
    for a in &allowed {
        println!("  allowed: {a}");
    }
    for f in &failures {
        println!("  FAILED: {f}");
    }
    assert!(
        failures.is_empty(),
        "{} unexpected differences",
        failures.len()
    );
    // Nothing is allowed to differ but INSTALLER, RECORD and console scripts.
    assert!(allowed
        .iter()
        .all(|a| a.contains("INSTALLER") || a.contains("RECORD") || a.contains("console script")));
}
