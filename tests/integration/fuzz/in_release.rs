//! A mirror's clear-signed `InRelease` (`debian::release::verify_in_release`):
//! Release stanzas signed with a key made here, then altered (text bytes,
//! headers, data around the armor), signed with a key the base does not
//! trust, or raw bytes. Whatever is accepted must say exactly what the
//! trusted key signed.

use std::sync::OnceLock;

use dallinger_oci::debian::control::parse_stanzas;
use dallinger_oci::debian::release::{verify_in_release, Release};
use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, KeyType, SecretKeyParamsBuilder, SignedPublicKey,
    SignedSecretKey,
};
use pgp::types::Password;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::harness::Bytes;
use super::text::{lossy, noise};
use crate::ensure;

struct Keys {
    trusted: SignedSecretKey,
    trusted_public: SignedPublicKey,
    other: SignedSecretKey,
}

fn key(seed: u64, user: &str) -> SignedSecretKey {
    SecretKeyParamsBuilder::default()
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .primary_user_id(user.into())
        .passphrase(None)
        .build()
        .unwrap()
        .generate(ChaCha8Rng::seed_from_u64(seed))
        .unwrap()
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let trusted = key(1, "Fuzz Archive <archive@example.test>");
        let other = key(2, "Someone Else <else@example.test>");
        Keys {
            trusted_public: trusted.to_public_key(),
            trusted,
            other,
        }
    })
}

/// Signs as gpg does: trailing blanks are not part of what is signed
/// (RFC 4880 §7.1). rpgp's signer leaves them in, and its verifier (rightly)
/// takes them out, so they are trimmed here first.
fn sign(text: &str, key: &SignedSecretKey, seed: u64) -> String {
    let text = &trimmed_lines(text);
    CleartextSignedMessage::sign(
        ChaCha8Rng::seed_from_u64(seed),
        text,
        &**key,
        &Password::empty(),
    )
    .unwrap()
    .to_armored_string(ArmorOptions::default())
    .unwrap()
}

fn release_line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(
            &["Origin: Debian", "Label: Debian", "Suite: stable", "Codename: bookworm",
              "Acquire-By-Hash: yes", "Date: Sat, 10 Feb 2024 10:00:00 UTC", "SHA256:", "MD5Sum:"][..]
        )
        .prop_map(str::to_string),
        8 => ("[0-9a-fA-F]{64}", 0u64..100_000, prop::sample::select(
            &["main/binary-amd64/Packages.xz", "main/binary-amd64/Packages", "contrib/i18n/Index", "../../etc/x"][..]
        ))
            .prop_map(|(h, n, p)| format!(" {h} {n:>8} {p}")),
        1 => "[ ]?[0-9a-f]{1,8} [0-9a-z-]{0,4} [a-z/]{0,8}",
        1 => prop::sample::select(
            &["-----BEGIN PGP SIGNATURE-----", "- dash", "-", "", " ", "Hash: SHA1", "trailing blanks   "][..]
        )
        .prop_map(str::to_string),
        1 => "[ -~]{0,20}",
    ]
}

fn release_text() -> impl Strategy<Value = String> {
    prop::collection::vec(release_line(), 0..12).prop_map(|lines| {
        let mut text = String::from("Origin: Debian\n");
        for line in lines {
            text.push_str(&line);
            text.push('\n');
        }
        text
    })
}

#[derive(Debug, Clone)]
enum Change {
    None,
    /// One byte of the signed body XORed.
    FlipBody(prop::sample::Index, u8),
    /// One byte anywhere XORed.
    FlipAnywhere(prop::sample::Index, u8),
    Prepend(String),
    Append(String),
    /// A Hash: header replaced.
    HashHeader(String),
    /// The body signed by another key.
    OtherKey,
    /// The trusted key's signature of another text under this body.
    SpliceOther(String),
}

#[derive(Debug, Clone)]
enum Case {
    Signed {
        text: String,
        change: Change,
        seed: u64,
    },
    Raw(String),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => Just(Change::None),
        4 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Change::FlipBody(i, x)),
        2 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Change::FlipAnywhere(i, x)),
        1 => prop_oneof![Just("Origin: Evil\n\n".to_string()), noise(12)].prop_map(Change::Prepend),
        1 => prop_oneof![
            Just("\nSHA256:\n 00 1 main/binary-amd64/Packages\n".to_string()),
            noise(12)
        ]
        .prop_map(Change::Append),
        1 => prop::sample::select(&["Hash: SHA1", "Hash: MD5", "Hash: ", "Hash: SHA512, SHA256", "Comment: x"][..])
            .prop_map(|h| Change::HashHeader(h.to_string())),
        1 => Just(Change::OtherKey),
        1 => release_text().prop_map(Change::SpliceOther),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        1 => noise(200).prop_map(Case::Raw),
        6 => (release_text(), change(), any::<u64>())
            .prop_map(|(text, change, seed)| Case::Signed { text, change, seed }),
    ]
}

fn xor_at(text: &str, at: usize, x: u8) -> String {
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] ^= x;
    String::from_utf8_lossy(&bytes).into_owned()
}

fn same(a: &Release, b: &Release) -> bool {
    a.stanza == b.stanza && a.sha256 == b.sha256
}

/// What the signature covers: each line without its trailing blanks
/// (RFC 4880 §7.1), read as deb822.
fn signed_stanza(text: &str) -> Option<dallinger_oci::debian::control::Stanza> {
    parse_stanzas(&trimmed_lines(text), "signed")
        .ok()?
        .into_iter()
        .next()
}

fn trimmed_lines(text: &str) -> String {
    text.split('\n')
        .map(|l| l.trim_end_matches([' ', '\t', '\r']))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let k = keys();
    let trusted = std::slice::from_ref(&k.trusted_public);
    let (text, change, seed) = match case {
        Case::Raw(text) => {
            let _ = verify_in_release(&text, trusted, "InRelease");
            return Ok(());
        }
        Case::Signed { text, change, seed } => (text, change, seed),
    };
    let armored = sign(&text, &k.trusted, seed);
    let baseline = verify_in_release(&armored, trusted, "InRelease");
    match (&baseline, signed_stanza(&text)) {
        (Ok(release), Some(stanza)) => ensure!(
            release.stanza == stanza,
            "signed {text:?}, verified as {:?}",
            release.stanza
        ),
        (Ok(release), None) => ensure!(false, "signed {text:?}, verified as {:?}", release.stanza),
        (Err(_), _) => {}
    }
    let altered = match &change {
        Change::None => armored.clone(),
        Change::FlipBody(at, x) => {
            let body_start = armored.find("\n\n").map_or(0, |i| i + 2);
            let body_end = armored
                .find("-----BEGIN PGP SIGNATURE-----")
                .unwrap_or(armored.len());
            if body_end <= body_start {
                return Ok(());
            }
            xor_at(&armored, body_start + at.index(body_end - body_start), *x)
        }
        Change::FlipAnywhere(at, x) => xor_at(&armored, at.index(armored.len()), *x),
        Change::Prepend(junk) => format!("{junk}{armored}"),
        Change::Append(junk) => format!("{armored}{junk}"),
        Change::HashHeader(h) => armored.replacen("Hash: SHA256", h, 1),
        Change::OtherKey => sign(&text, &k.other, seed),
        Change::SpliceOther(other) => {
            // The trusted key's signature of another text under this body.
            let replayed = sign(other, &k.trusted, seed);
            let marker = "-----BEGIN PGP SIGNATURE-----";
            let body = &armored[..armored.find(marker).unwrap()];
            format!("{body}{}", &replayed[replayed.find(marker).unwrap()..])
        }
    };
    let result = verify_in_release(&altered, trusted, "InRelease");
    if let Ok(release) = &result {
        let Ok(original) = &baseline else {
            return Err(TestCaseError::fail(format!(
                "accepted after {change:?} what was refused unaltered: {altered:?}"
            )));
        };
        ensure!(
            same(release, original),
            "{change:?}: accepted {:?}, signed {:?}\n{altered}",
            release.stanza,
            original.stanza
        );
        ensure!(
            !matches!(change, Change::OtherKey),
            "accepted a signature by a key the base does not trust"
        );
    }
    Ok(())
}

#[test]
fn in_release() {
    super::harness::fuzz(
        "in_release",
        case(),
        Bytes {
            read: |bytes| Case::Raw(lossy(bytes)),
            write: |case| match case {
                Case::Raw(text) => text.clone().into_bytes(),
                Case::Signed { text, .. } => text.clone().into_bytes(),
            },
        },
        check,
    );
}
