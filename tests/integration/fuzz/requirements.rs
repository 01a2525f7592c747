//! `requirements.txt` / `constraints.txt` (`python::spec::parse_file`
//! and the pin set built from it, `python::spec::pins_for_target`): lines
//! from a grammar of names, extras, versions, markers, hashes, URLs, git
//! sources and options, in files that include each other.

use dallinger_oci::python::spec::{normalise_name, parse_file, pins_for_target, MarkerEnv};
use proptest::prelude::*;

use super::harness::Bytes;
use super::text::{joined, noise, raw_text};
use crate::ensure;

/// The files of a case: `requirements.txt` and two it may include.
const FILES: &[&str] = &["requirements.txt", "inc.txt", "c.txt"];

fn name() -> BoxedStrategy<String> {
    prop_oneof![
        12 => "[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?",
        1 => prop::sample::select(
            &["-x", "x-", "\u{e9}", "a_", "A.", ""][..]
        )
        .prop_map(str::to_string),
    ]
    .boxed()
}

fn extras() -> BoxedStrategy<String> {
    prop_oneof![
        8 => Just(String::new()),
        6 => prop::collection::vec("[A-Za-z]([A-Za-z0-9._-]{0,4}[A-Za-z0-9])?", 1..3)
            .prop_map(|e| format!("[{}]", e.join(","))),
        1 => "\\[[ -~]{0,6}\\]?",
    ]
    .boxed()
}

fn version() -> BoxedStrategy<String> {
    prop_oneof![
        12 => "[0-9]{1,3}(\\.[0-9]{1,3}){1,2}",
        2 => "[0-9]{1,2}\\.[0-9](a|b|rc|\\.post|\\.dev)[0-9]",
        1 => "[0-9]!?[0-9]\\.[0-9]\\+[a-z0-9.]{1,4}",
        1 => "[ -~]{0,5}",
    ]
    .boxed()
}

fn specifier() -> BoxedStrategy<String> {
    let op = prop_oneof![
        12 => prop::sample::select(&["==", ">=", "<", "~=", "!=", "<=", ">"][..]),
        1 => prop::sample::select(&["===", "=>", "=", ""][..]),
    ];
    prop_oneof![
        6 => version().prop_map(|v| format!("=={v}")),
        2 => (op.clone(), version()).prop_map(|(o, v)| format!("{o}{v}")),
        2 => prop::collection::vec((op, version()), 2..3).prop_map(|parts| {
            parts
                .into_iter()
                .map(|(o, v)| format!("{o}{v}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
        1 => Just("==1.*".to_string()),
        1 => Just(String::new()),
    ]
    .boxed()
}

fn marker() -> BoxedStrategy<String> {
    let versioned = (
        prop::sample::select(
            &[
                "python_version",
                "python_full_version",
                "implementation_version",
            ][..],
        ),
        prop::sample::select(&["==", ">=", "<", "!=", "~=", "<=", ">"][..]),
        "[23]\\.[0-9]{1,2}",
    )
        .prop_map(|(v, o, x)| format!("{v} {o} \"{x}\""));
    let named = (
        prop::sample::select(
            &[
                "sys_platform",
                "platform_machine",
                "extra",
                "os_name",
                "implementation_name",
                "platform_release",
            ][..],
        ),
        prop::sample::select(&["==", "!=", "in", "not in"][..]),
        prop::sample::select(
            &[
                "linux", "x86_64", "aarch64", "posix", "cpython", "docker", "A-", "", "win32",
            ][..],
        ),
    )
        .prop_map(|(v, o, x)| format!("{v} {o} '{x}'"));
    let one = prop_oneof![
        6 => versioned,
        6 => named,
        1 => "[ -~]{0,10}",
    ];
    prop::collection::vec(one, 1..3)
        .prop_map(|m| m.join(" and "))
        .prop_flat_map(|m| prop_oneof![Just(m.clone()), Just(format!("({m}) or extra == 'x'"))])
        .boxed()
}

/// A PEP 508 requirement as `Requires-Dist` writes one: name, extras,
/// specifier or URL, marker.
pub fn pep508() -> BoxedStrategy<String> {
    (
        name(),
        extras(),
        prop_oneof![
            4 => specifier(),
            1 => Just(" @ https://x.test/p-1.0-py3-none-any.whl".to_string()),
        ],
        prop::option::weighted(0.4, marker()),
        prop::sample::select(&["; ", " ; ", ";"][..]),
    )
        .prop_map(|(n, e, s, m, semi)| match m {
            Some(m) => format!("{n}{e}{s}{semi}{m}"),
            None => format!("{n}{e}{s}"),
        })
        .boxed()
}

fn hash() -> BoxedStrategy<String> {
    prop_oneof![
        12 => "[0-9a-fA-F]{64}".prop_map(|h| format!("sha256:{h}")),
        1 => "(sha256|md5|SHA256):[0-9a-f]{0,66}",
    ]
    .boxed()
}

fn wheel_url(name: String) -> BoxedStrategy<String> {
    (
        prop_oneof![
            8 => Just("https://"),
            1 => prop::sample::select(&["http://", "file:///", "ftp://", ""][..]),
        ],
        "[a-z]{1,5}(\\.[a-z]{2,3})?(:[0-9]{1,5})?",
        version(),
        prop_oneof![
            8 => Just("-py3-none-any.whl"),
            1 => prop::sample::select(&[".whl", ".tar.gz", "-1-py3-none-any.whl", "-py3-none-any.whl.zip"][..]),
        ],
        prop::option::weighted(0.8, hash()),
        "(\\?[a-z=&]{0,6})?",
    )
        .prop_map(move |(scheme, host, v, ext, h, query)| {
            let file = format!("{}-{v}{ext}", name.replace('-', "_"));
            let fragment = h
                .map(|h| format!("#{}", h.replacen(':', "=", 1)))
                .unwrap_or_default();
            format!("{scheme}{host}/p%2Fq/{file}{query}{fragment}")
        })
        .boxed()
}

fn git_url() -> BoxedStrategy<String> {
    (
        prop_oneof![
            8 => prop::sample::select(&["git+https://", "git+ssh://git@", "git+file://"][..]),
            1 => prop::sample::select(&["git+ftp://", "git://", "hg+https://", "git+"][..]),
        ],
        "[a-z]{1,5}\\.[a-z]{2}(/[a-z]{1,4}){1,2}(\\.git)?",
        prop_oneof![Just(String::new()), "@[0-9a-f]{40}", "@[a-z0-9._/-]{0,8}",],
        prop_oneof![
            Just(String::new()),
            name().prop_map(|n| format!("#egg={n}")),
            "#subdirectory=[a-z./]{0,8}",
            "#egg=[a-z]{1,4}&subdirectory=[a-z./]{0,6}",
        ],
    )
        .prop_map(|(scheme, path, rev, fragment)| format!("{scheme}{path}{rev}{fragment}"))
        .boxed()
}

fn requirement() -> BoxedStrategy<String> {
    let tail = (
        prop::option::weighted(0.3, marker()),
        prop::collection::vec(
            (
                prop_oneof![
                    8 => prop::sample::select(&["--hash=", "--hash "][..]),
                    1 => prop::sample::select(&["--config-settings=", "-e ", "--pre "][..]),
                ],
                hash(),
            ),
            0..3,
        ),
        prop::sample::select(&[" ;", "; ", ";", " ; "][..]),
    )
        .prop_map(|(marker, opts, semi)| {
            let mut s = String::new();
            if let Some(m) = marker {
                s.push_str(&format!("{semi}{m}"));
            }
            for (o, h) in opts {
                s.push_str(&format!(" {o}{h}"));
            }
            s
        });
    let head = prop_oneof![
        12 => (name(), extras(), "[ ]{0,2}", specifier())
            .prop_map(|(n, e, pad, s)| format!("{n}{e}{pad}{s}")),
        3 => (name(), extras())
            .prop_flat_map(|(n, e)| wheel_url(n.clone()).prop_map(move |u| format!("{n}{e} @ {u}"))),
        1 => name().prop_flat_map(wheel_url),
        3 => (name(), git_url()).prop_map(|(n, u)| format!("{n} @ {u}")),
        1 => git_url(),
        1 => prop::sample::select(&["./pkg", "../x.whl", "/abs/path", "pkg.zip", "~/w", "a\\\\b"][..])
            .prop_map(str::to_string),
    ];
    (head, tail).prop_map(|(h, t)| format!("{h}{t}")).boxed()
}

fn option_line() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (prop::sample::select(&["-r ", "-r", "--requirement=", "-c ", "--constraint "][..]),
              prop::sample::select(FILES))
            .prop_map(|(o, f)| format!("{o}{f}")),
        1 => prop::sample::select(&["-r missing.txt", "-r https://x/r.txt", "-e .", "--editable=x"][..])
            .prop_map(str::to_string),
        4 => (
            prop::sample::select(&["--index-url ", "-i", "--extra-index-url=", "-f ", "--find-links="][..]),
            prop::sample::select(&["https://pypi.test/simple", "./wheels", "wheels", "'quoted dir'", "\"a\\\"b\""][..]),
        )
            .prop_map(|(o, v)| format!("{o}{v}")),
        3 => prop::sample::select(
            &["--no-index", "--require-hashes", "--pre", "--prefer-binary", "--only-binary :all:",
              "--trusted-host x"][..]
        )
        .prop_map(str::to_string),
        1 => prop::sample::select(&["--hash=sha256:00", "--unknown", "-", "--no-index=1", "-x"][..])
            .prop_map(str::to_string),
    ]
    .boxed()
}

fn line() -> BoxedStrategy<String> {
    prop_oneof![
        16 => requirement(),
        4 => option_line(),
        2 => "[ \t]*#[ -~]{0,10}",
        2 => requirement().prop_map(|r| format!("{r} # comment")),
        2 => requirement().prop_map(|r| {
            // Split across a backslash continuation.
            let cut = r.char_indices().map(|(i, _)| i).nth(r.chars().count() / 2).unwrap_or(0);
            format!("{}\\\n{}", &r[..cut], &r[cut..])
        }),
        1 => Just("${HOME}".to_string()),
        1 => Just("${NO_SUCH_FUZZ_VARIABLE}==1".to_string()),
        1 => noise(20),
    ]
    .boxed()
}

fn file_text() -> BoxedStrategy<String> {
    prop_oneof![
        1 => raw_text(200),
        12 => prop::collection::vec((line(), any::<u8>()), 0..6).prop_map(joined),
    ]
    .boxed()
}

fn files() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(file_text(), FILES.len())
}

/// A corpus file holds the three files, separated by `\0--\0`.
const SEPARATOR: &str = "\0--\0";

fn read_files(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut files: Vec<String> = text
        .splitn(FILES.len(), SEPARATOR)
        .map(str::to_string)
        .collect();
    files.resize(FILES.len(), String::new());
    files
}

// The signature `Bytes::write` takes for a `Vec<String>` input.
#[allow(clippy::ptr_arg)]
fn write_files(files: &Vec<String>) -> Vec<u8> {
    files.join(SEPARATOR).into_bytes()
}

fn is_extra_normalised(e: &str) -> bool {
    !e.is_empty()
        && e.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !e.contains("--")
}

fn check(texts: Vec<String>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in FILES.iter().zip(&texts) {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    std::fs::create_dir(dir.path().join("wheels")).unwrap();
    let top = dir.path().join(FILES[0]);
    let Ok(parsed) = parse_file(&top) else {
        return Ok(());
    };
    ensure!(
        parsed.inputs.first().map(|(p, _)| p.as_path()) == Some(top.as_path()),
        "the top file is not the first input"
    );
    for r in parsed.requirements.iter().chain(&parsed.constraints) {
        ensure!(
            normalise_name(&r.name) == r.normalised,
            "{r:?}: the name {:?} does not normalise to {:?}",
            r.name,
            r.normalised
        );
        ensure!(
            !r.normalised.is_empty()
                && r.normalised
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{r:?}: normalised name {:?}",
            r.normalised
        );
        ensure!(
            r.extras.iter().all(|e| is_extra_normalised(e)),
            "{r:?}: extras {:?}",
            r.extras
        );
        for h in &r.hashes {
            let hex = h.strip_prefix("sha256:").unwrap_or("");
            ensure!(
                hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{r:?}: hash {h:?}"
            );
        }
        let mut unique = r.hashes.clone();
        unique.sort();
        unique.dedup();
        ensure!(unique.len() == r.hashes.len(), "{r:?}: a hash twice");
        if let Some(url) = &r.url {
            ensure!(
                url.starts_with("https://") || url.starts_with("http://"),
                "{r:?}: url {url:?}"
            );
            ensure!(!r.hashes.is_empty(), "{r:?}: a URL without a hash");
            ensure!(r.pinned.is_some() && r.git.is_none(), "{r:?}");
        }
        if let Some(git) = &r.git {
            ensure!(r.hashes.is_empty() && r.pinned.is_none(), "{r:?}");
            if let Some(sub) = &git.subdirectory {
                ensure!(
                    !sub.starts_with('/') && !sub.split('/').any(|c| c == ".."),
                    "{r:?}: subdirectory {sub:?}"
                );
            }
        }
        let file = r.file.file_name().and_then(|f| f.to_str()).unwrap_or("");
        ensure!(FILES.contains(&file), "{r:?}: from {:?}", r.file);
        let text = &texts[FILES.iter().position(|f| *f == file).unwrap()];
        ensure!(
            r.line >= 1 && r.line <= text.lines().count().max(1),
            "{r:?}: line {} of {file}",
            r.line
        );
    }
    for arch in ["x86_64", "aarch64"] {
        let env = MarkerEnv::cpython_linux(arch, (3, 11, 2));
        if let Ok(pins) = pins_for_target(&parsed, &env) {
            for (key, pin) in &pins {
                ensure!(normalise_name(&pin.name) == *key, "pin {key} is {pin:?}");
            }
        }
    }
    drop(dir);
    Ok(())
}

#[test]
fn requirements() {
    super::harness::fuzz(
        "requirements",
        files(),
        Bytes {
            read: read_files,
            write: write_files,
        },
        check,
    );
}
