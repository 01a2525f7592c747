//! `--sbom`, `--attach-sbom` and `--provenance`: documents checked by
//! independent validators (PyPI's spdx-tools and cyclonedx-python-lib, from
//! scripts/sbom-validators.sh), against the lock, byte for byte on a
//! rebuild, and the SBOM found in a real registry (CNCF distribution, which
//! has no referrers API) from the image digest through the referrers tag.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{http_request, Registry, RegistryAuth};
use common::*;
use serde_json::Value;

fn experiment(sandbox: &Sandbox, dir: &str, image: &str) -> PathBuf {
    let exp = sandbox.experiment("golden", dir);
    sandbox.name_image(&exp, image);
    fs::write(exp.join("requirements.txt"), "flask\n").unwrap();
    fs::write(exp.join("constraints.txt"), FLASK_CLOSURE).unwrap();
    exp
}

/// `dallinger-oci COMMAND EXP --base <python base>` with the Python layers.
fn run_with_deps(sandbox: &Sandbox, command: &str, exp: &Path, extra: &[&str]) -> Output {
    let mut cmd = sandbox.cmd();
    cmd.env_remove("DALLINGER_OCI_NO_DEPS")
        .arg(command)
        .arg(exp)
        .args(["--base", &python_base_layout()])
        .args(extra);
    run(&mut cmd)
}

fn succeeds(out: Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The venv's bin directory holding the validators (made once).
fn validators() -> PathBuf {
    let out = ok(Command::new("bash").arg(repo_root().join("scripts/sbom-validators.sh")));
    PathBuf::from(out.trim())
}

/// `pyspdxtools -i FILE` passes.
pub(crate) fn validate_spdx(file: &Path) {
    let tool = validators().join("pyspdxtools");
    assert!(tool.is_file(), "{} is missing", tool.display());
    let out = run(Command::new(tool).arg("-i").arg(file));
    assert!(
        out.status.success(),
        "pyspdxtools refused {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// cyclonedx-python-lib's strict JSON validator for schema 1.6 passes.
fn validate_cyclonedx(file: &Path) {
    let script = "import sys\n\
from cyclonedx.schema import SchemaVersion\n\
from cyclonedx.validation.json import JsonStrictValidator\n\
errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(open(sys.argv[1]).read())\n\
print(errors if errors else 'valid')\n\
sys.exit(1 if errors else 0)\n";
    let out = run(Command::new(validators().join("python"))
        .args(["-c", script])
        .arg(file));
    assert!(
        out.status.success(),
        "cyclonedx-python-lib refused {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (name, version, sha256) of every wheel of the lock.
fn locked_wheels(exp: &Path) -> Vec<(String, String, String)> {
    let text = fs::read_to_string(exp.join("pylock.dallinger-oci.toml")).unwrap();
    let lock: toml::Value = toml::from_str(&text).unwrap();
    let wheels: Vec<_> = lock["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["version"].as_str().unwrap().to_string(),
                p["wheels"][0]["hashes"]["sha256"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(wheels.len(), 7, "{text}");
    wheels
}

fn normalised(name: &str) -> String {
    name.to_lowercase().replace(['_', '.'], "-")
}

/// The SPDX SBOM at `path` validates and holds every `.deb` of the lock
/// `lock_text`, with its purl, sha256 and URL, contained in the image.
pub(crate) fn assert_spdx_has_locked_debs(path: &Path, lock_text: &str) {
    validate_spdx(path);
    let sbom = read_json(path);
    let lock: toml::Value = toml::from_str(lock_text).unwrap();
    let debs = lock["tool"]["dallinger-oci"]["debian"]["packages"]
        .as_array()
        .unwrap();
    assert!(!debs.is_empty(), "{lock_text}");
    for deb in debs {
        let escape = |t: &str| t.replace(':', "%3A").replace('+', "%2B");
        let purl = format!(
            "pkg:deb/debian/{}@{}?arch={}",
            deb["name"].as_str().unwrap(),
            escape(deb["version"].as_str().unwrap()),
            deb["arch"].as_str().unwrap()
        );
        let package = sbom["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["externalRefs"][0]["referenceLocator"] == purl.as_str())
            .unwrap_or_else(|| panic!("{purl} is not in the SBOM"));
        assert_eq!(
            package["checksums"][0]["checksumValue"],
            deb["sha256"].as_str().unwrap()
        );
        assert_eq!(package["downloadLocation"], deb["url"].as_str().unwrap());
        assert!(sbom["relationships"].as_array().unwrap().iter().any(|r| {
            r["relationshipType"] == "CONTAINS" && r["relatedSpdxElement"] == package["SPDXID"]
        }));
    }
}

/// Every wheel of the lock is an SPDX package with its purl and sha256.
fn assert_spdx_has_wheels(sbom: &Value, wheels: &[(String, String, String)]) {
    let packages = sbom["packages"].as_array().unwrap();
    for (name, version, sha256) in wheels {
        let purl = format!("pkg:pypi/{}@{version}", normalised(name));
        let found = packages.iter().find(|p| {
            p["externalRefs"][0]["referenceLocator"] == purl.as_str()
                && p["checksums"][0]["algorithm"] == "SHA256"
                && p["checksums"][0]["checksumValue"] == sha256.as_str()
        });
        let package = found.unwrap_or_else(|| panic!("{purl} {sha256} is not in the SPDX SBOM"));
        let id = package["SPDXID"].as_str().unwrap();
        assert!(
            sbom["relationships"].as_array().unwrap().iter().any(|r| {
                r["spdxElementId"] == "SPDXRef-Image"
                    && r["relationshipType"] == "CONTAINS"
                    && r["relatedSpdxElement"] == id
            }),
            "the image does not CONTAIN {id}"
        );
        assert!(
            package["downloadLocation"]
                .as_str()
                .unwrap()
                .starts_with("https://"),
            "{package}"
        );
    }
}

/// Every wheel of the lock is a CycloneDX component the image depends on.
fn assert_cyclonedx_has_wheels(sbom: &Value, wheels: &[(String, String, String)]) {
    let components = sbom["components"].as_array().unwrap();
    let depends_on = sbom["dependencies"][0]["dependsOn"].as_array().unwrap();
    assert_eq!(sbom["dependencies"][0]["ref"], "image");
    for (name, version, sha256) in wheels {
        let purl = format!("pkg:pypi/{}@{version}", normalised(name));
        let component = components
            .iter()
            .find(|c| c["purl"] == purl.as_str() && c["hashes"][0]["content"] == sha256.as_str())
            .unwrap_or_else(|| panic!("{purl} {sha256} is not in the CycloneDX SBOM"));
        assert!(depends_on.contains(&component["bom-ref"]), "{component}");
    }
}

fn registry_get(registry: &Registry, path: &str, accept: &str) -> (u16, Vec<u8>) {
    let response = http_request(&registry.host(), "GET", path, &[("Accept", accept)], &[]).unwrap();
    (response.status, response.body)
}

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The referrer of `digest` in `repository` with this artifact type, found
/// as a client without the referrers API finds it: through the tag
/// `sha256-HEX`. Returns the referrer manifest and the whole index.
fn referrer(registry: &Registry, repository: &str, digest: &str, artifact: &str) -> (Value, Value) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    // The registry has no referrers API: the fallback is what is exercised.
    let (status, _) = registry_get(
        registry,
        &format!("/v2/{repository}/referrers/{digest}"),
        INDEX,
    );
    assert_eq!(status, 404, "the test registry answers the referrers API");
    let (status, body) = registry_get(
        registry,
        &format!("/v2/{repository}/manifests/sha256-{hex}"),
        INDEX,
    );
    assert_eq!(
        status,
        200,
        "no referrers tag: {}",
        String::from_utf8_lossy(&body)
    );
    let index: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(index["mediaType"], INDEX);
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["artifactType"] == artifact)
        .unwrap_or_else(|| panic!("no {artifact} referrer in {index}"))
        .clone();
    let (status, body) = registry_get(
        registry,
        &format!(
            "/v2/{repository}/manifests/{}",
            entry["digest"].as_str().unwrap()
        ),
        MANIFEST,
    );
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), entry["digest"].as_str().unwrap());
    (serde_json::from_slice(&body).unwrap(), index)
}

#[test]
fn sbom_and_provenance_from_the_lock_validate_attach_and_rebuild_to_the_same_bytes() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let repository = "lab/sbom";
    let image = format!("{host}/{repository}");
    let sandbox = Sandbox::new();
    let exp = experiment(&sandbox, "first/sbom", &image);
    succeeds(run_with_deps(&sandbox, "lock", &exp, &[]));
    let wheels = locked_wheels(&exp);

    // push --sbom (SPDX) --attach-sbom --provenance.
    let spdx = sandbox.path("image.spdx.json");
    let statement = sandbox.path("provenance.json");
    let (stdout, stderr) = succeeds(run_with_deps(
        &sandbox,
        "push",
        &exp,
        &[
            "--locked",
            "--sbom",
            spdx.to_str().unwrap(),
            "--attach-sbom",
            "--provenance",
            statement.to_str().unwrap(),
        ],
    ));
    let digest = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Pushed image: "))
        .expect(&stdout)
        .to_string();
    assert!(
        stderr.contains(&format!(
            "listed in the referrers tag sha256-{}",
            &digest[7..]
        )),
        "{stderr}"
    );

    // The same image built again, its SBOM in CycloneDX.
    let cdx = sandbox.path("image.cdx.json");
    let (stdout, _) = succeeds(run_with_deps(
        &sandbox,
        "build",
        &exp,
        &["--locked", "--sbom", cdx.to_str().unwrap()],
    ));
    assert_eq!(printed_digest(&stdout), digest);

    // Both validate with independent tools, and hold every locked wheel.
    validate_spdx(&spdx);
    validate_cyclonedx(&cdx);
    let spdx_doc = read_json(&spdx);
    assert_eq!(spdx_doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(spdx_doc["packages"][0]["versionInfo"], digest.as_str());
    assert_spdx_has_wheels(&spdx_doc, &wheels);
    let cdx_doc = read_json(&cdx);
    assert_eq!(cdx_doc["specVersion"], "1.6");
    assert_eq!(
        cdx_doc["metadata"]["component"]["hashes"][0]["content"],
        &digest[7..]
    );
    assert_cyclonedx_has_wheels(&cdx_doc, &wheels);

    // The provenance: an in-toto v1 statement about the pushed digest.
    let provenance = read_json(&statement);
    assert_eq!(provenance["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        provenance["predicateType"],
        "https://slsa.dev/provenance/v1"
    );
    assert_eq!(provenance["subject"][0]["name"], image.as_str());
    assert_eq!(provenance["subject"][0]["digest"]["sha256"], &digest[7..]);
    let resolved = provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let lock_bytes = fs::read(exp.join("pylock.dallinger-oci.toml")).unwrap();
    let has = |sha: &str| resolved.iter().any(|d| d["digest"]["sha256"] == sha);
    assert!(
        has(&sha256_hex(&lock_bytes)),
        "the lock is not a resolved dependency"
    );
    for (name, _, sha) in &wheels {
        assert!(has(sha), "{name} is not a resolved dependency");
    }

    // Found from the image digest through the referrers tag: its one layer
    // is the file, its subject the image.
    let (manifest, _) = referrer(&registry, repository, &digest, "application/spdx+json");
    let spdx_bytes = fs::read(&spdx).unwrap();
    assert_eq!(manifest["artifactType"], "application/spdx+json");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(manifest["config"]["size"], 2);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        manifest["layers"][0]["digest"],
        sha256(&spdx_bytes).as_str()
    );
    assert_eq!(manifest["subject"]["digest"], digest.as_str());
    assert_eq!(manifest["subject"]["mediaType"], MANIFEST);
    let (status, blob) = registry_get(
        &registry,
        &format!("/v2/{repository}/blobs/{}", sha256(&spdx_bytes)),
        "*/*",
    );
    assert_eq!((status, blob), (200, spdx_bytes.clone()));

    // A second SBOM attached keeps the first in the index.
    let second = sandbox.path("again.cdx.json");
    succeeds(run_with_deps(
        &sandbox,
        "push",
        &exp,
        &[
            "--locked",
            "--sbom",
            second.to_str().unwrap(),
            "--attach-sbom",
        ],
    ));
    let (manifest, index) = referrer(
        &registry,
        repository,
        &digest,
        "application/vnd.cyclonedx+json",
    );
    assert_eq!(
        manifest["layers"][0]["digest"],
        sha256(&fs::read(&second).unwrap()).as_str()
    );
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    referrer(&registry, repository, &digest, "application/spdx+json");

    // Another checkout, another path, a cold cache: the same bytes.
    let other = Sandbox::new();
    let exp_b = other.path("somewhere/else/sbom");
    fs::create_dir_all(&exp_b).unwrap();
    copy_tree(&exp, &exp_b);
    let (spdx_b, cdx_b) = (other.path("b.spdx.json"), other.path("b.cdx.json"));
    for file in [&spdx_b, &cdx_b] {
        let (stdout, _) = succeeds(run_with_deps(
            &other,
            "build",
            &exp_b,
            &["--locked", "--sbom", file.to_str().unwrap()],
        ));
        assert_eq!(printed_digest(&stdout), digest);
    }
    assert_eq!(fs::read(&spdx_b).unwrap(), spdx_bytes);
    assert_eq!(fs::read(&cdx_b).unwrap(), fs::read(&cdx).unwrap());
}

#[test]
fn build_output_to_a_registry_attaches_and_bad_requests_fail_first() {
    let registry = Registry::start(RegistryAuth::None);
    let host = registry.host();
    let sandbox = Sandbox::new();
    let exp = sandbox.experiment("golden", "golden");
    let base = format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display());

    // Refused before any work, each in one line.
    let mut cmd = sandbox.cmd();
    cmd.arg("build")
        .arg(&exp)
        .args(["--base", &base, "--tag", "t", "--sbom", "sbom.json"]);
    let err = one_line_error(&run(&mut cmd));
    assert!(
        err.contains("--sbom sbom.json") && err.contains(".spdx.json") && err.contains(".cdx.json"),
        "{err}"
    );
    let mut cmd = sandbox.cmd();
    cmd.arg("build").arg(&exp).args([
        "--base",
        &base,
        "--tag",
        "t",
        "--sbom",
        "x.spdx.json",
        "--attach-sbom",
    ]);
    let err = one_line_error(&run(&mut cmd));
    assert!(
        err.contains("--attach-sbom") && err.contains("docker://"),
        "{err}"
    );
    assert!(!sandbox.path("x.spdx.json").exists());

    // build --output docker://…: attached there; without Python only the
    // base is in it.
    let sbom = sandbox.path("tiny.cdx.json");
    let mut cmd = sandbox.cmd();
    cmd.arg("build").arg(&exp).args([
        "--base",
        &base,
        "--output",
        &format!("docker://{host}/lab/tiny:t"),
        "--sbom",
        sbom.to_str().unwrap(),
        "--attach-sbom",
    ]);
    let digest = printed_digest(&ok(&mut cmd));
    validate_cyclonedx(&sbom);
    let (manifest, _) = referrer(
        &registry,
        "lab/tiny",
        &digest,
        "application/vnd.cyclonedx+json",
    );
    assert_eq!(
        manifest["layers"][0]["digest"],
        sha256(&fs::read(&sbom).unwrap()).as_str()
    );
    let doc = read_json(&sbom);
    let components = doc["components"].as_array().unwrap();
    assert_eq!(components.len(), 1, "{doc}");
    assert_eq!(components[0]["type"], "container");
}

/// A wheel file holding only `.dist-info` files, METADATA as given.
fn tiny_wheel(dir: &Path, name: &str, version: &str, metadata: &str) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join(format!("{name}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    let info = format!("{name}-{version}.dist-info");
    for (member, text) in [
        ("METADATA", metadata.to_string()),
        (
            "WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n".into(),
        ),
        ("RECORD", String::new()),
    ] {
        zip.start_file(format!("{info}/{member}"), options).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    path
}

#[test]
fn debs_sdists_git_sources_dallinger_and_license_texts_validate_in_both_formats() {
    use dallinger_oci::attest::{sbom, BaseEntry, Inventory, Subject};
    use dallinger_oci::plan::{LockedDeb, LockedVcs};
    use dallinger_oci::python::spec::PackageName;
    use dallinger_oci::python::{ResolvedWheel, SdistSource};

    let dir = tempfile::tempdir().unwrap();
    let hex = |c: char| c.to_string().repeat(64);
    let wheel = |name: &str, version: &str, metadata: &str| {
        let path = tiny_wheel(dir.path(), name, version, metadata);
        ResolvedWheel {
            name: name.to_string(),
            normalised: PackageName::new(name),
            version: version.to_string(),
            filename: path.file_name().unwrap().to_string_lossy().into_owned(),
            url: format!("https://files.example.test/{name}-{version}-py3-none-any.whl"),
            sha256: sha256_hex(&fs::read(&path).unwrap()),
            path,
            sdist: None,
            vcs: None,
        }
    };
    let dallinger = wheel(
        "dallinger",
        "12.4.0",
        "Metadata-Version: 2.1\nName: dallinger\nVersion: 12.4.0\nLicense: MIT\n",
    );
    let mut psycopg2 = wheel(
        "psycopg2",
        "2.9.9",
        "Metadata-Version: 2.1\nName: psycopg2\nVersion: 2.9.9\nLicense: LGPL with exceptions\n",
    );
    psycopg2.url = dir.path().join("built.whl").display().to_string();
    psycopg2.sdist = Some(SdistSource {
        filename: "psycopg2-2.9.9.tar.gz".into(),
        url: "https://files.example.test/psycopg2-2.9.9.tar.gz".into(),
        sha256: hex('d'),
    });
    let mut psynet = wheel(
        "psynet",
        "13.0.0",
        "Metadata-Version: 2.4\nName: psynet\nVersion: 13.0.0\nLicense-Expression: MIT OR LicenseRef-PsyNet\n",
    );
    psynet.vcs = Some(LockedVcs {
        kind: "git".into(),
        url: "https://gitlab.com/PsyNetDev/PsyNet".into(),
        requested_revision: Some("v13".into()),
        commit_id: "e".repeat(40),
        subdirectory: None,
    });
    let bsd = wheel(
        "Flask_Login",
        "0.6.3",
        "Metadata-Version: 2.1\nName: Flask-Login\nVersion: 0.6.3\nClassifier: License :: OSI Approved :: BSD License\n",
    );
    let inventory = Inventory {
        base: Some(BaseEntry {
            reference: "docker://ghcr.io/astral-sh/uv:python3.12-bookworm".into(),
            name: Some("ghcr.io/astral-sh/uv:python3.12-bookworm".into()),
            digest: Some(format!("sha256:{}", hex('a'))),
        }),
        wheels: vec![bsd, dallinger, psycopg2, psynet],
        debs: vec![LockedDeb {
            name: "libpq5".into(),
            version: "15.10-0+deb12u1".into(),
            arch: "amd64".into(),
            url: "https://deb.debian.org/debian/pool/main/p/postgresql-15/libpq5_15.10-0+deb12u1_amd64.deb".into(),
            sha256: hex('b'),
            size: 1,
        }],
        ..Default::default()
    };
    let subject = Subject::new("ghcr.io/lab/app:v1", "v1", &format!("sha256:{}", hex('c')));
    let spdx_path = dir.path().join("x.spdx.json");
    let cdx_path = dir.path().join("x.cdx.json");
    for (format, path) in [
        (sbom::Format::Spdx, &spdx_path),
        (sbom::Format::CycloneDx, &cdx_path),
    ] {
        let bytes = sbom::render(format, &inventory, &subject, 946_684_800).unwrap();
        sbom::write(path, &bytes).unwrap();
    }
    validate_spdx(&spdx_path);
    validate_cyclonedx(&cdx_path);

    let spdx = read_json(&spdx_path);
    let text = spdx.to_string();
    // No host path is told: the locally built wheel has no download location.
    assert!(!text.contains(&dir.path().display().to_string()), "{text}");
    let package = |purl: &str| -> Value {
        spdx["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["externalRefs"][0]["referenceLocator"] == purl
                    && p["primaryPackagePurpose"] != "SOURCE"
            })
            .unwrap_or_else(|| panic!("no {purl} in {text}"))
            .clone()
    };
    let deb = package("pkg:deb/debian/libpq5@15.10-0%2Bdeb12u1?arch=amd64");
    assert_eq!(deb["checksums"][0]["checksumValue"], hex('b').as_str());
    assert_eq!(
        package("pkg:pypi/dallinger@12.4.0")["primaryPackagePurpose"],
        "FRAMEWORK"
    );
    assert_eq!(
        package("pkg:pypi/dallinger@12.4.0")["licenseDeclared"],
        "MIT"
    );
    assert_eq!(
        package("pkg:pypi/psynet@13.0.0")["licenseDeclared"],
        "MIT OR LicenseRef-PsyNet"
    );
    assert_eq!(
        package("pkg:pypi/psycopg2@2.9.9")["downloadLocation"],
        "NOASSERTION"
    );
    let flask_login = package("pkg:pypi/flask-login@0.6.3");
    let license_ref = flask_login["licenseDeclared"].as_str().unwrap();
    assert!(license_ref.starts_with("LicenseRef-"), "{flask_login}");
    assert!(spdx["hasExtractedLicensingInfos"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["licenseId"] == license_ref
            && l["extractedText"] == "OSI Approved :: BSD License"));
    // The built wheels are GENERATED_FROM their sdist and their commit.
    let generated: Vec<&str> = spdx["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "GENERATED_FROM")
        .map(|r| r["relatedSpdxElement"].as_str().unwrap())
        .collect();
    assert_eq!(generated.len(), 2, "{generated:?}");
    let sources: Vec<Value> = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| generated.contains(&p["SPDXID"].as_str().unwrap()))
        .cloned()
        .collect();
    assert!(sources
        .iter()
        .any(|s| s["checksums"][0]["checksumValue"] == hex('d').as_str()
            && s["downloadLocation"] == "https://files.example.test/psycopg2-2.9.9.tar.gz"));
    assert!(sources.iter().any(|s| s["downloadLocation"]
        == format!("git+https://gitlab.com/PsyNetDev/PsyNet@{}", "e".repeat(40)).as_str()));

    let cdx = read_json(&cdx_path);
    let components = cdx["components"].as_array().unwrap();
    let psynet = components.iter().find(|c| c["name"] == "psynet").unwrap();
    assert_eq!(
        psynet["pedigree"]["ancestors"][0]["version"],
        "e".repeat(40).as_str()
    );
    let dallinger = components
        .iter()
        .find(|c| c["name"] == "dallinger")
        .unwrap();
    assert_eq!(dallinger["type"], "framework");
    assert_eq!(components[0]["type"], "container");
    assert_eq!(
        components[0]["purl"],
        format!(
            "pkg:oci/uv@sha256%3A{}?repository_url=ghcr.io/astral-sh/uv",
            hex('a')
        )
        .as_str()
    );
}
