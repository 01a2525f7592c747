//! Wheel metadata: `METADATA` and `WHEEL` (`python::install::CoreMetadata`,
//! `WheelInfo`, and `python::spec`'s reading of PEP 658 metadata), and
//! `RECORD` (`python::install::parse_record`, `write_record`, and the archive
//! check of `WheelArchive::extract_verified`).

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dallinger_oci::python::install::{
    parse_record, write_record, CoreMetadata, RecordRow, WheelArchive, WheelFilename, WheelInfo,
};
use dallinger_oci::python::spec::{
    applicable_dependencies, header_values, normalise_name, python_satisfies, requires_dist,
    requires_python, MarkerEnv,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256, Sha512};

use super::harness::Bytes;
use super::requirements::pep508;
use super::text::{joined, noise, raw_text, RAW, TEXT};
use crate::ensure;

// ---------------------------------------------------------------------------
// METADATA and WHEEL
// ---------------------------------------------------------------------------

fn requires_python_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "(>=|<|~=|==|!=|=>)[23](\\.[0-9]{1,2}){0,2}(\\.\\*)?",
        1 => "\">=3\\.[0-9]\",?",
        1 => "[ -~]{0,8}",
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("Metadata-Version: 2.1".to_string()),
        2 => "Name: [A-Za-z0-9._-]{1,8}".prop_map(|s| s),
        2 => "Version: [0-9.]{1,6}".prop_map(|s| s),
        6 => pep508().prop_map(|r| format!("Requires-Dist: {r}")),
        2 => requires_python_value().prop_map(|v| format!("Requires-Python: {v}")),
        1 => Just("Wheel-Version: 1.0".to_string()),
        1 => "Wheel-Version: [0-9.]{0,4}",
        1 => "Root-Is-Purelib: (true|false|TRUE)",
        1 => "Tag: py3-none-any",
        1 => "[ \t]{1,3}[ -~]{0,20}",
        1 => "(Description|Summary|requires-dist|REQUIRES-PYTHON)[ ]?:[ -~]{0,20}",
        1 => Just(String::new()),
        1 => noise(20),
    ]
}

fn metadata_text() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => raw_text(300),
        6 => prop::collection::vec((field(), any::<u8>()), 0..12).prop_map(joined),
    ]
}

fn check_metadata(text: String) -> Result<(), TestCaseError> {
    let _ = WheelInfo::parse("WHEEL", &text);
    let core = CoreMetadata::parse("METADATA", &text);
    let pep658 = requires_dist(&text);
    let _ = header_values(&text, "Name");
    if let Ok(core) = &core {
        // The installer (wheel.rs) and the resolver (metadata.rs, from the
        // index's .metadata) must read the same dependencies.
        ensure!(
            core.requires_dist == pep658,
            "METADATA read as {:?} by the installer and {:?} from the index",
            core.requires_dist,
            pep658
        );
        ensure!(
            core.requires_python == requires_python(&text),
            "Requires-Python {:?} vs {:?}",
            core.requires_python,
            requires_python(&text)
        );
    }
    if let Some(spec) = requires_python(&text) {
        let _ = python_satisfies(&spec, (3, 11, 2));
    }
    for extras in [vec![], vec!["docker".to_string()], vec!["A-".to_string()]] {
        let env = MarkerEnv::cpython_linux("x86_64", (3, 11, 2));
        if let Ok(deps) = applicable_dependencies(&pep658, &extras, &env) {
            for d in deps {
                ensure!(
                    normalise_name(&d.name) == d.normalised,
                    "{d:?}: the name does not normalise to its key"
                );
                let _ = d.allows("1.0");
            }
        }
    }
    Ok(())
}

#[test]
fn wheel_metadata() {
    super::harness::fuzz("wheel_metadata", metadata_text(), TEXT, check_metadata);
}

// ---------------------------------------------------------------------------
// RECORD and the archive
// ---------------------------------------------------------------------------

const DIST: &str = "pkg-1.0.dist-info";
const DIST_RECORD: &str = "RECORD";

/// How a member is listed in RECORD.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Listing {
    Right,
    RightNoSize,
    RightSha512,
    WrongHash,
    WrongSize,
    SizeNotANumber,
    NoHash,
    Md5,
    Missing,
    Twice,
    TwiceDifferently,
}

impl Listing {
    fn is_right(self) -> bool {
        matches!(
            self,
            Listing::Right | Listing::RightNoSize | Listing::RightSha512 | Listing::Twice
        )
    }
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    data: Vec<u8>,
    listing: Listing,
    directory: bool,
}

#[derive(Debug, Clone)]
struct WheelCase {
    members: Vec<Member>,
    /// Rows for paths that are not members.
    extra_rows: Vec<String>,
}

#[derive(Debug, Clone)]
enum RecordCase {
    Csv(String),
    Wheel(WheelCase),
    /// A wheel's bytes (a corpus file starting with `PK`).
    Zip(Vec<u8>),
}

const MEMBER_NAMES: &[&str] = &[
    "pkg/__init__.py",
    "pkg/x.py",
    "pkg/sub/y.py",
    "pkg",
    "pkg-1.0.data/scripts/tool",
    "pkg-1.0.data/purelib/z.py",
    "../evil.py",
    "pkg/../../evil.py",
    "/etc/evil",
    "C:/evil",
    "pkg/./x.py",
    "pkg//x.py",
    "pkg\\evil.py",
    "pkg/a,b\"c.py",
    "pkg/new\nline.py",
    "pkg-1.0.dist-info/RECORD.jws",
    "other-1.0.dist-info/METADATA",
    "pkg/nul\0.py",
];

fn member() -> impl Strategy<Value = Member> {
    (
        prop_oneof![
            4 => prop::sample::select(MEMBER_NAMES).prop_map(str::to_string),
            1 => "pkg/[a-z]{1,4}(/[a-z]{1,4})?\\.py",
        ],
        prop::collection::vec(any::<u8>(), 0..300),
        prop_oneof![
            12 => Just(Listing::Right),
            2 => Just(Listing::RightNoSize),
            2 => Just(Listing::RightSha512),
            1 => Just(Listing::WrongHash),
            1 => Just(Listing::WrongSize),
            1 => Just(Listing::SizeNotANumber),
            1 => Just(Listing::NoHash),
            1 => Just(Listing::Md5),
            1 => Just(Listing::Missing),
            1 => Just(Listing::Twice),
            1 => Just(Listing::TwiceDifferently),
        ],
        prop::bool::weighted(0.05),
    )
        .prop_map(|(name, data, listing, directory)| Member {
            name,
            data,
            listing,
            directory,
        })
}

fn record_field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z/._-]{0,10}",
        "[ -~]{0,6}",
        Just("\"".to_string()),
        Just("\"a,b\"".to_string()),
        Just("\"q\"\"uote\"".to_string()),
        Just("\"multi\nline\"".to_string()),
        Just("sha256=AAAA".to_string()),
    ]
}

fn record_csv() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => raw_text(200),
        4 => prop::collection::vec(
            (prop::collection::vec(record_field(), 1..5), prop::sample::select(&["\n", "\r\n", "\r", ""][..])),
            0..8,
        )
        .prop_map(|rows| rows.into_iter().map(|(f, end)| format!("{}{end}", f.join(","))).collect()),
    ]
}

fn record_case() -> impl Strategy<Value = RecordCase> {
    prop_oneof![
        1 => record_csv().prop_map(RecordCase::Csv),
        2 => (
            prop::collection::vec(member(), 0..6),
            prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(
                prop::sample::select(MEMBER_NAMES).prop_map(str::to_string), 1..3)],
        )
            .prop_map(|(members, extra_rows)| RecordCase::Wheel(WheelCase { members, extra_rows })),
    ]
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn row(path: &str, data: &[u8], listing: Listing) -> Option<RecordRow> {
    let sha256 = format!("sha256={}", b64(&Sha256::digest(data)));
    let size = data.len().to_string();
    let (hash, size) = match listing {
        Listing::Right | Listing::Twice => (sha256, size),
        Listing::RightNoSize => (sha256, String::new()),
        Listing::RightSha512 => (format!("sha512={}", b64(&Sha512::digest(data))), size),
        Listing::WrongHash => (format!("sha256={}", b64(&Sha256::digest(b"other"))), size),
        Listing::WrongSize => (sha256, (data.len() + 1).to_string()),
        Listing::SizeNotANumber => (sha256, "12a".to_string()),
        Listing::NoHash => (String::new(), size),
        Listing::Md5 => ("md5=AAAAAAAAAAAAAAAAAAAAAA".to_string(), size),
        Listing::Missing => return None,
        Listing::TwiceDifferently => (sha256, size),
    };
    Some(RecordRow {
        path: path.to_string(),
        hash,
        size,
    })
}

/// The wheel's bytes: the members, a valid WHEEL and METADATA, and RECORD.
fn build_wheel(case: &WheelCase) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    let wheel = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec();
    let metadata = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n".to_vec();
    let mut rows = Vec::new();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (format!("{DIST}/WHEEL"), wheel),
        (format!("{DIST}/METADATA"), metadata),
    ];
    for (name, data) in &files {
        rows.push(row(name, data, Listing::Right).unwrap());
    }
    for m in &case.members {
        if m.directory {
            let _ = zip.add_directory(format!("{}/", m.name), options);
            continue;
        }
        files.push((m.name.clone(), m.data.clone()));
        if let Some(r) = row(&m.name, &m.data, m.listing) {
            rows.push(r.clone());
            match m.listing {
                Listing::Twice => rows.push(r),
                Listing::TwiceDifferently => rows.push(RecordRow {
                    size: String::new(),
                    ..r
                }),
                _ => {}
            }
        }
    }
    for path in &case.extra_rows {
        rows.push(row(path, b"", Listing::Right).unwrap());
    }
    rows.push(RecordRow {
        path: format!("{DIST}/RECORD"),
        hash: String::new(),
        size: String::new(),
    });
    files.push((format!("{DIST}/RECORD"), write_record(&rows).into_bytes()));
    for (name, data) in files {
        // The writer refuses some names (a second one of a name): skip them.
        if zip.start_file(name, options).is_ok() {
            let _ = zip.write_all(&data);
        }
    }
    zip.finish().unwrap().into_inner()
}

/// Every path under `root` (relative, `/`-separated), with file contents.
fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let content = if entry.file_type().is_file() {
            Some(std::fs::read(entry.path()).unwrap())
        } else {
            assert!(
                entry.file_type().is_dir(),
                "{rel} is neither a file nor a directory"
            );
            None
        };
        out.insert(rel, content);
    }
    out
}

/// Extracts the wheel `bytes`; `case` (when it was built from one) tells
/// what RECORD vouches for.
fn check_wheel(bytes: Vec<u8>, case: Option<&WheelCase>) -> Result<(), TestCaseError> {
    let filename = WheelFilename::parse("pkg-1.0-py3-none-any.whl").unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("sentinel"), b"outside").unwrap();
    let dest = root.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let result = WheelArchive::new(filename, Cursor::new(bytes)).and_then(|mut w| {
        let names: Vec<String> = w.files().iter().map(|f| f.name.clone()).collect();
        w.extract_verified(&dest).map(|_| names)
    });
    let outside = tree(root.path());
    for (path, content) in &outside {
        ensure!(
            path == "sentinel" || path == "dest" || path.starts_with("dest/"),
            "{path} was written outside the destination"
        );
        if path == "sentinel" {
            ensure!(
                content.as_deref() == Some(&b"outside"[..]),
                "the sentinel changed"
            );
        }
    }
    let Ok(names) = result else {
        return Ok(());
    };
    let Some(case) = case else {
        return Ok(());
    };
    let written: BTreeMap<String, Vec<u8>> = tree(&dest)
        .into_iter()
        .filter_map(|(p, c)| c.map(|c| (p, c)))
        .collect();
    ensure!(
        written.keys().cloned().collect::<Vec<_>>() == names,
        "written {:?}, members {names:?}",
        written.keys().collect::<Vec<_>>()
    );
    for m in &case.members {
        if m.directory || !written.contains_key(&m.name) {
            continue;
        }
        if !m.listing.is_right() && !m.name.starts_with(&format!("{DIST}/RECORD.")) {
            // A later member of the same name may be the one written.
            let same: Vec<&Member> = case.members.iter().filter(|o| o.name == m.name).collect();
            ensure!(
                same.len() > 1,
                "{:?} was accepted with RECORD {:?}",
                m.name,
                m.listing
            );
        }
    }
    for (path, data) in &written {
        // RECORD's signatures are not in RECORD (as in pip).
        if [DIST_RECORD, "RECORD.jws", "RECORD.p7s"]
            .iter()
            .any(|f| path == &format!("{DIST}/{f}"))
        {
            continue;
        }
        let listed =
            case.members.iter().any(|m| {
                !m.directory && m.name == *path && m.data == *data && m.listing.is_right()
            }) || path.ends_with("/WHEEL")
                || path.ends_with("/METADATA");
        ensure!(
            listed,
            "{path} was written with bytes RECORD does not vouch for"
        );
    }
    Ok(())
}

fn check_record(case: RecordCase) -> Result<(), TestCaseError> {
    match case {
        RecordCase::Csv(text) => {
            let Ok(rows) = parse_record("RECORD", &text) else {
                return Ok(());
            };
            ensure!(
                rows.iter().all(|r| !r.path.is_empty()),
                "a row without a path"
            );
            let written = write_record(&rows);
            let again = parse_record("RECORD", &written)
                .map_err(|e| TestCaseError::fail(format!("{e}: in {written:?}")))?;
            ensure!(
                again == rows,
                "RECORD written back reads differently: {written:?}"
            );
            Ok(())
        }
        RecordCase::Wheel(case) => check_wheel(build_wheel(&case), Some(&case)),
        RecordCase::Zip(bytes) => check_wheel(bytes, None),
    }
}

fn read_record_case(bytes: &[u8]) -> RecordCase {
    if bytes.starts_with(b"PK") {
        RecordCase::Zip((RAW.read)(bytes))
    } else {
        RecordCase::Csv(String::from_utf8_lossy(bytes).into_owned())
    }
}

fn write_record_case(case: &RecordCase) -> Vec<u8> {
    match case {
        RecordCase::Csv(text) => text.clone().into_bytes(),
        RecordCase::Wheel(case) => build_wheel(case),
        RecordCase::Zip(bytes) => bytes.clone(),
    }
}

#[test]
fn wheel_record() {
    super::harness::fuzz(
        "wheel_record",
        record_case(),
        Bytes {
            read: read_record_case,
            write: write_record_case,
        },
        check_record,
    );
}
