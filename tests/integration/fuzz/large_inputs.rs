//! Every parser on inputs of 1 and 2 MiB built to make it work hard (one
//! huge field, a million continuation lines, deep nesting, many entries):
//! each must finish and refuse or accept as it should. The times are
//! printed (`--nocapture`) to see that they grow with the size, not its
//! square; nothing asserts on them.

use std::path::Path;
use std::time::Instant;

use dallinger_oci::debian::control::{parse_relations, parse_stanzas};
use dallinger_oci::experiment::config::Config;
use dallinger_oci::python::install::{parse_record, CoreMetadata};
use dallinger_oci::python::spec::{applicable_dependencies, parse_file, parse_marker, MarkerEnv};
use dallinger_oci::registry::client::parse_challenge;
use dallinger_oci::registry::reference::Reference;
use dallinger_oci_layers::{compress_existing_tar, Codec};

const MIB: usize = 1 << 20;

/// Runs `f` on inputs of 1 and 2 MiB and prints how long each took.
fn at_two_sizes(what: &str, f: impl Fn(usize)) {
    let mut times = Vec::new();
    for size in [MIB, 2 * MIB] {
        let start = Instant::now();
        f(size);
        times.push(start.elapsed().as_secs_f64());
    }
    eprintln!("{what}: 1 MiB {:.3} s, 2 MiB {:.3} s", times[0], times[1]);
}

#[test]
fn config_txt() {
    at_two_sizes("config.txt continuation lines", |size| {
        let text = format!("[P]\nk = x\n{}", "  y\n".repeat(size / 4));
        assert_eq!(
            Config::parse(Path::new("c"), &text)
                .unwrap()
                .entries()
                .len(),
            1
        );
    });
    at_two_sizes("config.txt keys in one section and [DEFAULT]", |size| {
        let n = size / 40;
        let mut text = String::from("[DEFAULT]\n");
        for i in 0..n {
            text.push_str(&format!("d{i} = 1\n"));
        }
        text.push_str("[P]\n");
        for i in 0..n {
            text.push_str(&format!("k{i} = 1\n"));
        }
        assert_eq!(
            Config::parse(Path::new("c"), &text)
                .unwrap()
                .entries()
                .len(),
            2 * n
        );
    });
    at_two_sizes("config.txt references", |size| {
        // 200000 references at 2 MiB: inside the flattening budget.
        let text = format!("[P]\na = 1\nb = {}\n", "%(a)s     ".repeat(size / 10));
        assert!(Config::parse(Path::new("c"), &text).is_ok());
    });
}

#[test]
fn requirements() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requirements.txt");
    at_two_sizes("requirements backslash continuations", |size| {
        std::fs::write(&path, format!("flask{}==3.0.3\n", "\\\n".repeat(size / 2))).unwrap();
        assert_eq!(parse_file(&path).unwrap().requirements.len(), 1);
    });
    at_two_sizes("requirements lines", |size| {
        let mut text = String::new();
        for i in 0..size / 16 {
            text.push_str(&format!("p{i:08}==1.0\n"));
        }
        std::fs::write(&path, text).unwrap();
        assert_eq!(parse_file(&path).unwrap().requirements.len(), size / 16);
    });
    at_two_sizes("requirements one long marker", |size| {
        let marker = vec!["os_name == 'posix'"; size / 24].join(" and ");
        std::fs::write(&path, format!("flask==3.0.3 ; {marker}\n")).unwrap();
        assert_eq!(parse_file(&path).unwrap().requirements.len(), 1);
    });
}

#[test]
fn markers_nested_deeply() {
    at_two_sizes("marker parentheses", |size| {
        let depth = size / 2;
        let marker = format!(
            "{}os_name == 'posix'{}",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        assert!(parse_marker(&marker).is_err());
        let env = MarkerEnv::cpython_linux("x86_64", (3, 11, 2));
        let entry = format!("a ; {marker}");
        assert!(applicable_dependencies(&[entry], &[], &env).is_err());
    });
}

#[test]
fn image_reference_and_challenge() {
    at_two_sizes("image reference", |size| {
        let text = format!("ghcr.io/{}:t", "a/".repeat(size / 2));
        assert!(Reference::parse(&text).is_err());
    });
    at_two_sizes("WWW-Authenticate parameters", |size| {
        let text = format!("Bearer {}realm=\"r\"", "x=\"a\\\",b\",".repeat(size / 12));
        assert!(parse_challenge(&text).is_some());
    });
}

#[test]
fn wheel_metadata_and_record() {
    at_two_sizes("METADATA continuation lines", |size| {
        let text = format!(
            "Name: a\nVersion: 1\nDescription: x\n{}Requires-Dist: b\n",
            " y\n".repeat(size / 3)
        );
        assert_eq!(
            CoreMetadata::parse("METADATA", &text)
                .unwrap()
                .requires_dist,
            ["b"]
        );
    });
    at_two_sizes("RECORD rows", |size| {
        let text = "a/b.py,sha256=AAAA,1\n".repeat(size / 21);
        assert_eq!(parse_record("RECORD", &text).unwrap().len(), size / 21);
    });
    at_two_sizes("RECORD one quoted field", |size| {
        let text = format!("\"{}\",,\n", "\"\"".repeat(size / 2));
        assert_eq!(parse_record("RECORD", &text).unwrap().len(), 1);
    });
}

#[test]
fn debian_control() {
    at_two_sizes("deb822 continuation lines", |size| {
        let text = format!("Package: a\nDescription: x\n{}", " y\n".repeat(size / 3));
        assert_eq!(parse_stanzas(&text, "status").unwrap().len(), 1);
    });
    at_two_sizes("deb822 fields", |size| {
        let mut text = String::new();
        for i in 0..size / 16 {
            text.push_str(&format!("F{i:08}: v\n"));
        }
        assert_eq!(
            parse_stanzas(&text, "status").unwrap()[0].fields.len(),
            size / 16
        );
    });
    at_two_sizes("relations", |size| {
        let text = vec!["libc6 (>= 2.34) | libc7"; size / 26].join(", ");
        assert_eq!(parse_relations(&text).unwrap().len(), size / 26);
    });
}

#[test]
fn tar_import() {
    at_two_sizes("tar entries", |size| {
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..size / 1024 {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, format!("d/f{i}"), &b"x"[..])
                .unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        assert!(
            compress_existing_tar("big.tar", &bytes[..], std::io::sink(), Codec::Gzip, 2).is_ok()
        );
    });
}
