//! `--provenance PATH`: an in-toto v1 Statement whose predicate is SLSA
//! provenance v1, about the image (its name and manifest digest): how it
//! was built (our build type, the experiment's source and revision, the
//! options that change bytes), from what (the base, every wheel and
//! `.deb`, the lock, each with its digest) and by what (dallinger-oci's
//! version; the GitHub Actions run when there is one). Unsigned: sign it
//! with `actions/attest-build-provenance` or `cosign attest`.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::{deb_purl, oci_purl, public_url, pypi_purl, Inventory, Subject};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What our `buildDefinition` means: described in the README (Provenance).
pub const BUILD_TYPE: &str = "urn:dallinger-oci:build-type:experiment-image:v1";
/// The builder when no CI run says otherwise.
pub const LOCAL_BUILDER: &str = "urn:dallinger-oci:builder:local";

/// The statement's bytes (pretty, sorted keys, a final newline).
/// `environment` gives the GitHub Actions variables (see [`github_run`]).
pub fn render(
    inventory: &Inventory,
    subject: &Subject,
    environment: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<u8>> {
    let run = github_run(environment);
    let mut external = Map::new();
    if let Some(source) = &inventory.source {
        external.insert(
            "source".into(),
            json!({"uri": source.url, "revision": source.revision}),
        );
    }
    external.insert("options".into(), json!(inventory.parameters));
    let mut build_definition = json!({
        "buildType": BUILD_TYPE,
        "externalParameters": external,
        "resolvedDependencies": resolved_dependencies(inventory),
    });
    let mut builder = json!({
        "id": LOCAL_BUILDER,
        "version": {"dallinger-oci": env!("CARGO_PKG_VERSION")},
    });
    let mut run_details = json!({ "builder": Value::Null });
    if let Some(run) = &run {
        builder["id"] = json!(run.builder_id);
        build_definition["internalParameters"] = json!({"github": run.parameters});
        run_details["metadata"] = json!({"invocationId": run.invocation_id});
    }
    run_details["builder"] = builder;
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject.repository, "digest": {"sha256": subject.hex()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": build_definition,
            "runDetails": run_details,
        },
    });
    let mut bytes = serde_json::to_vec_pretty(&statement)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Every input with its digest, in a stable order: the experiment's
/// commit, the lock, the base, the `.deb`s, the wheels (and the sources
/// they were built from).
fn resolved_dependencies(inventory: &Inventory) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(source) = &inventory.source {
        let mut d = json!({"name": "experiment", "digest": {"gitCommit": source.revision}});
        if let Some(url) = &source.url {
            d["uri"] = json!(format!("git+{url}@{}", source.revision));
        }
        out.push(d);
    }
    if let Some(lock) = &inventory.lock_sha256 {
        out.push(json!({"name": crate::plan::LOCK_FILE, "digest": {"sha256": lock}}));
    }
    if let Some(base) = &inventory.base {
        let mut d = json!({"name": base.display_name()});
        if let Some(hex) = base
            .digest
            .as_deref()
            .and_then(|d| d.strip_prefix("sha256:"))
        {
            d["digest"] = json!({"sha256": hex});
            if let Some(repository) = base.repository() {
                d["uri"] = json!(oci_purl(
                    &repository,
                    base.digest.as_deref().unwrap_or(""),
                    None
                ));
            }
        }
        out.push(d);
    }
    for deb in inventory.debs_in_order() {
        out.push(descriptor(
            &deb_purl(&deb.name, &deb.version, &deb.arch),
            &format!("{}_{}_{}.deb", deb.name, deb.version, deb.arch),
            &deb.sha256,
            &deb.url,
        ));
    }
    for wheel in inventory.wheels_in_order() {
        let purl = pypi_purl(wheel.normalised.as_str(), &wheel.version);
        out.push(descriptor(
            &purl,
            &wheel.filename,
            &wheel.sha256,
            &wheel.url,
        ));
        if let Some(sdist) = &wheel.sdist {
            out.push(descriptor(
                &purl,
                &sdist.filename,
                &sdist.sha256,
                &sdist.url,
            ));
        }
        if let Some(vcs) = &wheel.vcs {
            out.push(json!({
                "uri": format!("git+{}@{}", vcs.url, vcs.commit_id),
                "name": wheel.name,
                "digest": {"gitCommit": vcs.commit_id},
            }));
        }
    }
    out
}

fn descriptor(uri: &str, name: &str, sha256: &str, url: &str) -> Value {
    let mut d = json!({"uri": uri, "name": name, "digest": {"sha256": sha256}});
    if let Some(url) = public_url(url) {
        d["downloadLocation"] = json!(url);
    }
    d
}

/// A GitHub Actions run, from its environment.
struct GithubRun {
    builder_id: String,
    invocation_id: String,
    parameters: BTreeMap<&'static str, String>,
}

/// The run, when `GITHUB_ACTIONS` says this is one: which runner kind
/// built it (the builder), the run's URL (the invocation), and the
/// repository and commit it ran for. Only these variables are read;
/// never a token.
fn github_run(environment: &dyn Fn(&str) -> Option<String>) -> Option<GithubRun> {
    let get = |name: &str| environment(name).filter(|v| !v.is_empty());
    if get("GITHUB_ACTIONS").as_deref() != Some("true") {
        return None;
    }
    let server = get("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
    let repository = get("GITHUB_REPOSITORY")?;
    let run_id = get("GITHUB_RUN_ID")?;
    let attempt = get("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into());
    let hosted = get("RUNNER_ENVIRONMENT").as_deref() != Some("self-hosted");
    let mut parameters = BTreeMap::new();
    parameters.insert("server_url", server.clone());
    parameters.insert("repository", repository.clone());
    parameters.insert("run_id", run_id.clone());
    parameters.insert("run_attempt", attempt.clone());
    for (key, var) in [
        ("sha", "GITHUB_SHA"),
        ("ref", "GITHUB_REF"),
        ("workflow_ref", "GITHUB_WORKFLOW_REF"),
        ("event_name", "GITHUB_EVENT_NAME"),
    ] {
        if let Some(value) = get(var) {
            parameters.insert(key, value);
        }
    }
    Some(GithubRun {
        builder_id: format!(
            "https://github.com/actions/runner/{}",
            if hosted {
                "github-hosted"
            } else {
                "self-hosted"
            }
        ),
        invocation_id: format!("{server}/{repository}/actions/runs/{run_id}/attempts/{attempt}"),
        parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject::new(
            "ghcr.io/lab/app:v1",
            "v1",
            &format!("sha256:{}", "c".repeat(64)),
        )
    }

    #[test]
    fn a_statement_about_the_image_with_its_digest() {
        let bytes = render(&Inventory::default(), &subject(), &|_| None).unwrap();
        let statement: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(statement["_type"], STATEMENT_TYPE);
        assert_eq!(statement["predicateType"], PREDICATE_TYPE);
        assert_eq!(statement["subject"][0]["name"], "ghcr.io/lab/app");
        assert_eq!(statement["subject"][0]["digest"]["sha256"], "c".repeat(64));
        assert_eq!(
            statement["predicate"]["runDetails"]["builder"]["id"],
            LOCAL_BUILDER
        );
        assert!(statement["predicate"]["runDetails"]
            .get("metadata")
            .is_none());
    }

    #[test]
    fn a_github_run_names_itself_and_never_its_token() {
        let env = |name: &str| -> Option<String> {
            Some(
                match name {
                    "GITHUB_ACTIONS" => "true",
                    "GITHUB_SERVER_URL" => "https://github.com",
                    "GITHUB_REPOSITORY" => "lab/app",
                    "GITHUB_RUN_ID" => "42",
                    "GITHUB_SHA" => "abc",
                    "GITHUB_TOKEN" => "ghs_secret",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let bytes = render(&Inventory::default(), &subject(), &env).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("ghs_secret"), "{text}");
        let statement: Value = serde_json::from_str(&text).unwrap();
        let run = &statement["predicate"]["runDetails"];
        assert_eq!(
            run["metadata"]["invocationId"],
            "https://github.com/lab/app/actions/runs/42/attempts/1"
        );
        assert_eq!(
            run["builder"]["id"],
            "https://github.com/actions/runner/github-hosted"
        );
        let github = &statement["predicate"]["buildDefinition"]["internalParameters"]["github"];
        assert_eq!(github["sha"], "abc");
    }
}
