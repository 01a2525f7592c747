//! A registry's `WWW-Authenticate` challenge
//! (`registry::client::parse_challenge`): schemes, parameters, quoted
//! strings with commas, `=` and escapes.

use dallinger_oci::registry::client::{parse_challenge, Challenge};
use proptest::prelude::*;

use super::harness::Bytes;
use super::text::{lossy, noise};
use crate::ensure;

/// A header and, when it is well formed, what it says: (scheme is Bearer,
/// realm, service).
#[derive(Debug, Clone)]
struct Header {
    text: String,
    expected: Option<Expected>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Basic,
    Bearer {
        realm: Option<String>,
        service: Option<String>,
    },
    Other,
}

fn quoted_value() -> impl Strategy<Value = (String, String)> {
    // (as sent, as meant)
    let piece = prop_oneof![
        6 => "[ !#-\\[\\]-~]{1,6}".prop_map(|s| (s.clone(), s)),
        1 => Just(("\\\"".to_string(), "\"".to_string())),
        1 => Just(("\\\\".to_string(), "\\".to_string())),
        1 => Just((",".to_string(), ",".to_string())),
        1 => Just(("=".to_string(), "=".to_string())),
    ];
    prop::collection::vec(piece, 0..5).prop_map(|pieces| {
        let sent: String = pieces.iter().map(|(s, _)| s.as_str()).collect();
        let meant: String = pieces.iter().map(|(_, m)| m.as_str()).collect();
        (format!("\"{sent}\""), meant)
    })
}

fn token_value() -> impl Strategy<Value = (String, String)> {
    "[A-Za-z0-9!#$%&'*+.^_`|~:/-]{1,12}".prop_map(|t| (t.clone(), t))
}

fn well_formed() -> impl Strategy<Value = Header> {
    let key = prop::sample::select(
        &[
            "realm", "service", "scope", "error", "Realm", "SERVICE", "x",
        ][..],
    );
    let param = (key, prop_oneof![3 => quoted_value(), 1 => token_value()]);
    let scheme =
        prop::sample::select(&["Bearer", "bearer", "BEARER", "Basic", "basic", "Negotiate"][..]);
    let separator = prop::sample::select(&[",", ", ", " , ", ",,", ",\t"][..]);
    (
        scheme,
        prop::collection::vec((param, separator), 0..5),
        "[ ]{0,2}",
    )
        .prop_map(|(scheme, params, pad)| {
            // RFC 7235: a parameter name occurs once per challenge.
            let mut seen: Vec<String> = Vec::new();
            let mut parts: Vec<(String, &str)> = Vec::new();
            let (mut realm, mut service) = (None, None);
            for ((key, (sent, meant)), sep) in params {
                let lower = key.to_ascii_lowercase();
                if seen.contains(&lower) {
                    continue;
                }
                seen.push(lower.clone());
                match lower.as_str() {
                    "realm" => realm = Some(meant),
                    "service" => service = Some(meant),
                    _ => {}
                }
                parts.push((format!("{key}={sent}"), sep));
            }
            let mut text = format!("{pad}{scheme}");
            for (i, (part, sep)) in parts.iter().enumerate() {
                text.push_str(if i == 0 { " " } else { sep });
                text.push_str(part);
            }
            let expected = match scheme.to_ascii_lowercase().as_str() {
                "basic" => Expected::Basic,
                "bearer" => Expected::Bearer { realm, service },
                _ => Expected::Other,
            };
            Header {
                text,
                expected: Some(expected),
            }
        })
}

fn header() -> impl Strategy<Value = Header> {
    prop_oneof![
        1 => noise(60).prop_map(|text| Header { text, expected: None }),
        1 => (well_formed(), any::<prop::sample::Index>(), noise(4)).prop_map(|(h, at, junk)| {
            // Damaged: some bytes of a well-formed header replaced.
            let chars: Vec<char> = h.text.chars().collect();
            let i = at.index(chars.len() + 1);
            let mut text: String = chars[..i.min(chars.len())].iter().collect();
            text.push_str(&junk);
            text.extend(chars.iter().skip(i + junk.chars().count()));
            Header { text, expected: None }
        }),
        4 => well_formed(),
    ]
}

fn check(h: Header) -> Result<(), TestCaseError> {
    let got = parse_challenge(&h.text);
    let Some(expected) = h.expected else {
        return Ok(());
    };
    match (&expected, &got) {
        (Expected::Basic, Some(Challenge::Basic)) => {}
        (Expected::Other, None) => {}
        (Expected::Bearer { realm: None, .. }, None) => {}
        (
            Expected::Bearer {
                realm: Some(realm),
                service,
            },
            Some(Challenge::Bearer {
                realm: got_realm,
                service: got_service,
            }),
        ) => {
            ensure!(
                realm == got_realm && service == got_service,
                "{:?}: realm {got_realm:?} service {got_service:?}, expected {realm:?} {service:?}",
                h.text
            );
        }
        _ => {
            ensure!(false, "{:?}: {got:?}, expected {expected:?}", h.text);
        }
    }
    Ok(())
}

#[test]
fn www_authenticate() {
    super::harness::fuzz(
        "www_authenticate",
        header(),
        Bytes {
            read: |bytes| Header {
                text: lossy(bytes),
                expected: None,
            },
            write: |h| h.text.clone().into_bytes(),
        },
        check,
    );
}
