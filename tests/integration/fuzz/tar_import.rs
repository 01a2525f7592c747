//! Importing an existing tar as a layer (`dallinger_oci_layers::
//! compress_existing_tar`): tar streams built header by header (ustar, GNU
//! long names, PAX paths, prefixes, hard and symbolic links, wrong sizes
//! and checksums, lone zero blocks, data after the end), raw bytes and bit
//! flips of good archives.

use std::io::Read;

use dallinger_oci_layers::{compress_existing_tar, Codec};
use proptest::prelude::*;

use super::text::RAW;
use crate::common::sha256;
use crate::ensure;

const NAMES: &[&str] = &[
    "etc/hostname",
    "./usr/bin/x",
    "a/b/c",
    "/abs/file",
    "dir/",
    "../escape",
    "a/../../escape",
    "a/..",
    "..",
    "a//b",
    "a/./b",
    "./",
    "",
    ".wh.x",
    "a/.wh..wh..opq",
];

#[derive(Debug, Clone)]
enum Encoding {
    /// The name in the header's 100-byte field (cut if longer).
    Plain,
    /// ustar prefix (155 bytes) + name.
    Prefix,
    /// A GNU `L` entry before the header.
    GnuLong,
    /// A PAX `x` entry with `path` (and `linkpath`) before the header.
    Pax,
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    encoding: Encoding,
    kind: u8,
    link: String,
    data: Vec<u8>,
    /// Added to the size written in the header.
    size_error: i8,
    bad_checksum: bool,
}

#[derive(Debug, Clone)]
struct Archive {
    members: Vec<Member>,
    /// 0, 1 or 2 zero blocks after the members, then up to a record.
    end_blocks: u8,
    pad_to_record: bool,
    trailing: Vec<u8>,
    /// Members after the end marker (a reader that skips zero blocks sees them).
    hidden: Vec<Member>,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(NAMES).prop_map(str::to_string),
        2 => "[a-z.]{1,6}(/[a-z.]{1,6}){0,3}",
        1 => (1usize..4, prop::sample::select(NAMES))
            .prop_map(|(n, tail)| format!("{}{tail}", "long-directory-name-".repeat(n * 3))),
    ]
}

fn member() -> impl Strategy<Value = Member> {
    (
        name(),
        prop_oneof![
            4 => Just(Encoding::Plain),
            1 => Just(Encoding::Prefix),
            2 => Just(Encoding::GnuLong),
            2 => Just(Encoding::Pax),
        ],
        prop::sample::select(
            &[
                b'0', b'0', b'0', b'5', b'2', b'1', b'1', b'3', b'6', b'7', 0u8, b'g', b'S',
            ][..],
        ),
        name(),
        prop::collection::vec(any::<u8>(), 0..700),
        prop_oneof![8 => Just(0i8), 1 => -3i8..3],
        prop::bool::weighted(0.03),
    )
        .prop_map(
            |(name, encoding, kind, link, data, size_error, bad_checksum)| Member {
                name,
                encoding,
                kind,
                link,
                data,
                size_error,
                bad_checksum,
            },
        )
}

fn archive() -> impl Strategy<Value = Archive> {
    (
        prop::collection::vec(member(), 0..6),
        prop_oneof![4 => Just(2u8), 1 => Just(1u8), 1 => Just(0u8)],
        any::<bool>(),
        prop_oneof![
            6 => Just(Vec::new()),
            1 => prop::collection::vec(any::<u8>(), 1..600),
        ],
        prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(member(), 1..3)],
    )
        .prop_map(
            |(members, end_blocks, pad_to_record, trailing, hidden)| Archive {
                members,
                end_blocks,
                pad_to_record,
                trailing,
                hidden,
            },
        )
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}", width = field.len() - 1);
    let bytes = text.as_bytes();
    let n = bytes.len().min(field.len() - 1);
    field[..n].copy_from_slice(&bytes[bytes.len() - n..]);
    field[field.len() - 1] = 0;
}

fn header(
    name: &[u8],
    prefix: &[u8],
    kind: u8,
    link: &[u8],
    size: u64,
    bad_checksum: bool,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let p = prefix.len().min(155);
    h[345..345 + p].copy_from_slice(&prefix[..p]);
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum::<u64>() + u64::from(bad_checksum);
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

fn pax_record(key: &str, value: &str) -> String {
    // "LEN key=value\n", LEN counting itself.
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

/// A GNU `L` (name) or `K` (link name) entry: the text, NUL-terminated.
fn gnu_long(out: &mut Vec<u8>, kind: u8, text: &str) {
    let mut data = text.as_bytes().to_vec();
    data.push(0);
    out.extend_from_slice(&header(
        b"././@LongLink",
        b"",
        kind,
        b"",
        data.len() as u64,
        false,
    ));
    out.extend_from_slice(&data);
    pad(out);
}

fn write_member(out: &mut Vec<u8>, m: &Member) {
    let is_link = matches!(m.kind, b'1' | b'2');
    let link = if is_link { m.link.as_bytes() } else { b"" };
    let (name, prefix): (&[u8], &[u8]) = match m.encoding {
        Encoding::Plain => (m.name.as_bytes(), b""),
        Encoding::Prefix => match m.name.rfind('/') {
            Some(i) => (&m.name.as_bytes()[i + 1..], &m.name.as_bytes()[..i]),
            None => (m.name.as_bytes(), b""),
        },
        Encoding::GnuLong => {
            gnu_long(out, b'L', &m.name);
            if is_link {
                gnu_long(out, b'K', &m.link);
            }
            (b"placeholder", b"")
        }
        Encoding::Pax => {
            let mut records = pax_record("path", &m.name);
            if is_link {
                records.push_str(&pax_record("linkpath", &m.link));
            }
            out.extend_from_slice(&header(
                b"PaxHeader",
                b"",
                b'x',
                b"",
                records.len() as u64,
                false,
            ));
            out.extend_from_slice(records.as_bytes());
            pad(out);
            (b"placeholder", b"")
        }
    };
    let size = (m.data.len() as i64 + i64::from(m.size_error)).max(0) as u64;
    out.extend_from_slice(&header(name, prefix, m.kind, link, size, m.bad_checksum));
    out.extend_from_slice(&m.data);
    pad(out);
}

fn bytes_of(a: &Archive) -> Vec<u8> {
    let mut out = Vec::new();
    for m in &a.members {
        write_member(&mut out, m);
    }
    out.extend(std::iter::repeat_n(0u8, 512 * usize::from(a.end_blocks)));
    for m in &a.hidden {
        write_member(&mut out, m);
        out.extend(std::iter::repeat_n(0u8, 1024));
    }
    if a.pad_to_record {
        while !out.len().is_multiple_of(10240) {
            out.push(0);
        }
    }
    out.extend_from_slice(&a.trailing);
    out
}

/// Raw bytes, a crafted archive, or a crafted archive with bits flipped.
fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..2048),
        6 => archive().prop_map(|a| bytes_of(&a)),
        2 => (archive(), prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6))
            .prop_map(|(a, flips)| {
                let mut bytes = bytes_of(&a);
                if !bytes.is_empty() {
                    for (at, bit) in flips {
                        let i = at.index(bytes.len());
                        bytes[i] ^= 1 << bit;
                    }
                }
                bytes
            }),
    ]
}

fn escapes(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|part| part == b"..")
}

/// Whether any member, as a reader that skips zero blocks (`tar -i`) reads
/// the stream, climbs out of the root.
fn any_reader_sees_an_escape(bytes: &[u8]) -> bool {
    let mut archive = tar::Archive::new(bytes);
    archive.set_ignore_zeros(true);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        if escapes(&entry.path_bytes()) {
            return true;
        }
        if entry.header().entry_type() == tar::EntryType::Link
            && entry.link_name_bytes().is_some_and(|l| escapes(&l))
        {
            return true;
        }
    }
    false
}

fn check(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let Ok((digests, gz)) =
        compress_existing_tar("fuzz.tar", &bytes[..], Vec::new(), Codec::Gzip, 1)
    else {
        return Ok(());
    };
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut back)
        .map_err(|e| TestCaseError::fail(format!("the layer does not gunzip: {e}")))?;
    ensure!(back == bytes, "the layer is not the tar's bytes");
    ensure!(digests.diff_id.to_string() == sha256(&bytes), "diff_id");
    ensure!(digests.digest.to_string() == sha256(&gz), "digest");
    ensure!(digests.size == gz.len() as u64, "size");
    ensure!(
        digests.uncompressed_size == bytes.len() as u64,
        "uncompressed_size"
    );
    let (again, gz2) = compress_existing_tar("fuzz.tar", &bytes[..], Vec::new(), Codec::Gzip, 2)
        .map_err(|e| TestCaseError::fail(format!("accepted once, refused with 2 workers: {e}")))?;
    ensure!(
        gz2 == gz && again.digest == digests.digest,
        "the bytes depend on the workers"
    );
    ensure!(
        !any_reader_sees_an_escape(&bytes),
        "accepted a tar in which a member climbs out with '..'"
    );
    Ok(())
}

#[test]
fn tar_import() {
    super::harness::fuzz("tar_import", input(), RAW, check);
}
