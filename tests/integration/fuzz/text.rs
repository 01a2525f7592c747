//! Strategies shared by the text targets.

use proptest::prelude::*;

use super::harness::Bytes;

/// Any bytes, read as text the way a file of them would be (lossy UTF-8).
pub fn raw_text(max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(any::<u8>(), 0..max)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
        .boxed()
}

/// Printable noise with the characters parsers split on.
pub fn noise(max: usize) -> BoxedStrategy<String> {
    let pattern = format!("[ -~\\t\u{e9}\u{130}\u{feff}]{{0,{max}}}");
    proptest::string::string_regex(&pattern).unwrap().boxed()
}

/// Lines joined with a mix of `\n`, `\r\n` and `\r`.
pub fn joined(lines: Vec<(String, u8)>) -> String {
    let mut out = String::new();
    for (line, end) in lines {
        out.push_str(&line);
        out.push_str(match end % 8 {
            0 => "\r\n",
            1 => "\r",
            _ => "\n",
        });
    }
    out
}

/// Text from bytes, for the corpus.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn text_bytes(text: &String) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// A text target's corpus files: the text itself.
pub const TEXT: Bytes<String> = Bytes {
    read: lossy,
    write: text_bytes,
};

fn raw_read(bytes: &[u8]) -> Vec<u8> {
    bytes.to_vec()
}

// The signature `Bytes::write` takes for a `Vec<u8>` input.
#[allow(clippy::ptr_arg)]
fn raw_write(bytes: &Vec<u8>) -> Vec<u8> {
    bytes.clone()
}

/// A byte target's corpus files: the bytes themselves.
pub const RAW: Bytes<Vec<u8>> = Bytes {
    read: raw_read,
    write: raw_write,
};
