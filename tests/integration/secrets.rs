//! Secrets in config.txt or ~/.dallingerconfig never reach any blob.

use crate::common;

use std::fs;

use common::*;

const SECRETS: &[(&str, &str)] = &[
    ("aws_access_key_id", "AKIAFIXTURE000SECRET1"),
    ("aws_secret_access_key", "fixture/secret+access/key/0002"),
    ("dashboard_password", "dashboard-pass-0003"),
    ("dashboard_user", "dashboard-user-0004"),
    (
        "database_url",
        "postgresql://u:dbpass0005@db.example.test/x",
    ),
    ("prolific_api_token", "prolific-token-0006"),
    ("smtp_password", "smtp-pass-0007"),
    ("mturk_access_key", "mturk-key-0008"),
    ("my_custom_secret", "custom-secret-0009"),
    ("github_token", "ghp_fixture0010"),
];

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn no_secret_value_occurs_in_any_blob() {
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let mut config = fs::read_to_string(exp.join("config.txt")).unwrap();
    config.push_str("\n[AWS Access]\n");
    for (k, v) in &SECRETS[..6] {
        config.push_str(&format!("{k} = {v}\n"));
    }
    config.push_str("\n[Misc]\n");
    for (k, v) in &SECRETS[6..] {
        config.push_str(&format!("{k} = {v}\n"));
    }
    config.push_str("public_value = visible-0011\n");
    fs::write(exp.join("config.txt"), config).unwrap();
    fs::write(
        sandbox.home().join(".dallingerconfig"),
        "[AWS Access]\naws_access_key_id = HOMEKEY0012\naws_secret_access_key = homesecret0013\n\
         [Heroku]\nheroku_auth_token = herokutoken0014\n[Other]\nhome_plain = homeplain0015\n",
    )
    .unwrap();
    let archive = sandbox.path("image.tar");
    ok(sandbox
        .cmd()
        .arg("build")
        .arg(&exp)
        .arg("--base")
        .arg(format!(
            "rootfs:{}",
            fixture("base/tiny-rootfs.tar").display()
        ))
        .args(["--output", "oci:layout"])
        .arg("--output")
        .arg(format!("docker-archive:{}", archive.display())));

    let mut haystacks: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in fs::read_dir(sandbox.path("layout/blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = fs::read(&path).unwrap();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            haystacks.push((format!("{} (gunzipped)", path.display()), gunzip(&path)));
        }
        haystacks.push((path.display().to_string(), bytes));
    }
    haystacks.push(("archive".into(), fs::read(&archive).unwrap()));
    let home_values = [
        "HOMEKEY0012",
        "homesecret0013",
        "herokutoken0014",
        "homeplain0015",
    ];
    for (name, bytes) in &haystacks {
        for (key, value) in SECRETS {
            assert!(!contains(bytes, value), "{key}'s value found in {name}");
        }
        for value in home_values {
            assert!(
                !contains(bytes, value),
                "~/.dallingerconfig value {value} found in {name}"
            );
        }
    }
    // The filter is not simply dropping the file: public values are there.
    assert!(haystacks.iter().any(|(_, b)| contains(b, "visible-0011")));
}
