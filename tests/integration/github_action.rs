//! The GitHub Action (`action.yml`) and the example workflow: actionlint
//! passes on both, and the action's own steps, run as the runner runs a
//! composite action's, push to a local registry and report the digest.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::registry::{Registry, RegistryAuth};
use common::*;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

fn yaml_file(path: &Path) -> Yaml {
    let text = fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .remove(0)
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_string())
}

/// actionlint: on PATH, or where scripts/install-test-deps.sh puts it.
fn actionlint() -> PathBuf {
    let venv = test_cache_dir().join("actionlint/bin/actionlint");
    if venv.is_file() {
        return venv;
    }
    require_tool("actionlint")
}

fn lint(dir: &Path, files: &[&str]) {
    let out = run(Command::new(actionlint())
        .arg("-no-color")
        .args(files)
        .current_dir(dir));
    assert!(
        out.status.success(),
        "actionlint {files:?} in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The action's steps as a reusable workflow's job (its inputs as the
/// workflow's), so actionlint checks their expressions and, with
/// shellcheck, their scripts, as it checks a workflow's.
fn action_as_workflow(action: &Yaml) -> String {
    let mut inputs = yaml_rust2::yaml::Hash::new();
    for (name, _) in action["inputs"].as_hash().unwrap() {
        let mut input = yaml_rust2::yaml::Hash::new();
        input.insert(key("type"), key("string"));
        input.insert(key("required"), Yaml::Boolean(false));
        inputs.insert(name.clone(), Yaml::Hash(input));
    }
    let mut call = yaml_rust2::yaml::Hash::new();
    call.insert(key("inputs"), Yaml::Hash(inputs));
    let mut on = yaml_rust2::yaml::Hash::new();
    on.insert(key("workflow_call"), Yaml::Hash(call));
    let mut job = yaml_rust2::yaml::Hash::new();
    job.insert(key("runs-on"), key("ubuntu-24.04"));
    job.insert(key("steps"), action["runs"]["steps"].clone());
    let mut jobs = yaml_rust2::yaml::Hash::new();
    jobs.insert(key("action"), Yaml::Hash(job));
    let mut workflow = yaml_rust2::yaml::Hash::new();
    workflow.insert(key("name"), key("action steps"));
    workflow.insert(key("on"), Yaml::Hash(on));
    workflow.insert(key("jobs"), Yaml::Hash(jobs));
    let mut text = String::new();
    let mut emitter = YamlEmitter::new(&mut text);
    emitter.multiline_strings(true);
    emitter.dump(&Yaml::Hash(workflow)).unwrap();
    text
}

#[test]
fn actionlint_passes_on_the_action_and_the_example_workflow() {
    require_tool("shellcheck");
    let root = repo_root();
    lint(&root, &["examples/github-workflow.yml"]);
    // The example using this repository's action (`uses: ./`), so its
    // inputs and outputs are checked against action.yml; and the action's
    // steps as a workflow.
    let repo = tempfile::tempdir().unwrap();
    ok(Command::new("git")
        .args(["init", "-q"])
        .current_dir(repo.path()));
    fs::copy(root.join("action.yml"), repo.path().join("action.yml")).unwrap();
    let workflows = repo.path().join(".github/workflows");
    fs::create_dir_all(&workflows).unwrap();
    let example = fs::read_to_string(root.join("examples/github-workflow.yml")).unwrap();
    let ours = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("uses: dallinger-oci/dallinger-oci@"))
        .expect("the example uses the action");
    let local = example.replace(
        &format!("uses: dallinger-oci/dallinger-oci@{ours}"),
        "uses: ./",
    );
    fs::write(workflows.join("example.yml"), local).unwrap();
    let action = yaml_file(&root.join("action.yml"));
    assert_eq!(action["runs"]["using"].as_str(), Some("composite"));
    fs::write(workflows.join("steps.yml"), action_as_workflow(&action)).unwrap();
    lint(repo.path(), &[]);
}

/// What the runner gives a composite action's expressions.
struct Contexts {
    inputs: BTreeMap<String, String>,
    github: BTreeMap<&'static str, String>,
    steps: BTreeMap<String, BTreeMap<String, String>>,
    env: BTreeMap<String, String>,
}

impl Contexts {
    /// The value of one expression of the forms the action uses.
    fn value(&self, expression: &str) -> String {
        let expression = expression.trim();
        let parts: Vec<&str> = expression.split('.').collect();
        match parts.as_slice() {
            ["inputs", name] => self.inputs[*name].clone(),
            ["github", name] => self
                .github
                .get(name)
                .unwrap_or_else(|| panic!("github.{name} is not set by the test"))
                .clone(),
            ["runner", "os"] => "Linux".into(),
            ["runner", "arch"] => "X64".into(),
            ["env", name] => self.env.get(*name).cloned().unwrap_or_default(),
            ["steps", id, "outputs", name] => self
                .steps
                .get(*id)
                .and_then(|o| o.get(*name))
                .cloned()
                .unwrap_or_default(),
            _ => panic!("the test's evaluator does not know the expression {expression:?}"),
        }
    }

    /// `text` with every `${{ … }}` replaced by its value.
    fn substitute(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("an expression ends") + start;
            out.push_str(&self.value(&rest[start + 3..end]));
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    /// An `if:` of the forms the action uses: `A == 'x'`, `A != 'x'`.
    fn condition(&self, text: &str) -> bool {
        let text = text.trim();
        let text = text
            .strip_prefix("${{")
            .and_then(|t| t.strip_suffix("}}"))
            .unwrap_or(text);
        for (op, equal) in [("!=", false), ("==", true)] {
            if let Some((left, right)) = text.split_once(op) {
                let literal = right.trim().trim_matches('\'');
                return (self.value(left) == literal) == equal;
            }
        }
        panic!("the test's evaluator does not know the condition {text:?}")
    }
}

/// `GITHUB_OUTPUT` / `GITHUB_ENV` lines: `KEY=VALUE` and `KEY<<DELIMITER`.
fn parse_command_file(path: &Path) -> Vec<(String, String)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut pairs = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
            pairs.push((name.to_string(), value.join("\n")));
        } else if let Some((name, value)) = line.split_once('=') {
            pairs.push((name.to_string(), value.to_string()));
        }
    }
    pairs
}

#[test]
fn the_actions_own_steps_push_and_report_the_digest() {
    const USER: &str = "octocat";
    const TOKEN: &str = "ghs_test-token-4f8a1c";
    let registry = Registry::start(RegistryAuth::htpasswd(USER, TOKEN));
    let host = registry.host();
    let sandbox = Sandbox::new();
    let workspace = sandbox.path("workspace");
    let exp = sandbox.experiment("golden", "workspace/exp");
    sandbox.name_image(&exp, &format!("{host}/lab/action"));
    let runner_temp = sandbox.path("runner-temp");
    fs::create_dir_all(&runner_temp).unwrap();
    let files = sandbox.path("files");
    fs::create_dir_all(&files).unwrap();

    let action = yaml_file(&repo_root().join("action.yml"));
    // docker/metadata-action's outputs, as a workflow hands them over.
    let given: BTreeMap<&str, String> = BTreeMap::from([
        ("experiment-dir", "exp".to_string()),
        (
            "tags",
            format!("{host}/lab/action:main\n{host}/lab/action:sha-860c190"),
        ),
        (
            "labels",
            "org.opencontainers.image.created=2026-12-01T23:10:04.123Z\n\
             org.opencontainers.image.title=action"
                .to_string(),
        ),
        (
            "annotations",
            "manifest:org.opencontainers.image.description=Stroop task".to_string(),
        ),
        (
            "base",
            format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display()),
        ),
    ]);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_dallinger-oci"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut contexts = Contexts {
        inputs: BTreeMap::new(),
        github: BTreeMap::from([
            ("actor", USER.to_string()),
            ("token", TOKEN.to_string()),
            ("action_path", repo_root().display().to_string()),
            ("action_ref", "main".to_string()),
            ("action_repository", String::new()),
            ("workspace", workspace.display().to_string()),
        ]),
        steps: BTreeMap::new(),
        env: BTreeMap::from([
            (
                "PATH".to_string(),
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            ("HOME".to_string(), sandbox.home().display().to_string()),
            ("CI".to_string(), "true".to_string()),
            ("GITHUB_ACTIONS".to_string(), "true".to_string()),
            ("GITHUB_TOKEN".to_string(), TOKEN.to_string()),
            ("GITHUB_ACTOR".to_string(), USER.to_string()),
            (
                "GITHUB_WORKSPACE".to_string(),
                workspace.display().to_string(),
            ),
            (
                "GITHUB_ACTION_PATH".to_string(),
                repo_root().display().to_string(),
            ),
            ("RUNNER_TEMP".to_string(), runner_temp.display().to_string()),
            (
                "RUNNER_TOOL_CACHE".to_string(),
                sandbox.path("tool-cache").display().to_string(),
            ),
            // The fixture base has no Python.
            ("DALLINGER_OCI_NO_DEPS".to_string(), "1".to_string()),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
            ("GIT_CONFIG_GLOBAL".to_string(), "/dev/null".to_string()),
        ]),
    };
    for (name, input) in action["inputs"].as_hash().unwrap() {
        let name = name.as_str().unwrap();
        let default = input["default"].as_str().unwrap_or("");
        let value = match given.get(name) {
            Some(value) => value.clone(),
            None => contexts.substitute(default),
        };
        contexts.inputs.insert(name.to_string(), value);
    }
    for name in given.keys() {
        assert!(contexts.inputs.contains_key(*name), "no input {name}");
    }

    let summary = files.join("step-summary.md");
    let env_file = files.join("env");
    let path_file = files.join("path");
    let mut ran = Vec::new();
    let mut skipped_uses = Vec::new();
    let mut printed = String::new();
    for (n, step) in action["runs"]["steps"].as_vec().unwrap().iter().enumerate() {
        let id = step["id"].as_str().map(String::from);
        let label = id
            .clone()
            .or_else(|| step["name"].as_str().map(String::from))
            .unwrap();
        if let Some(condition) = step["if"].as_str() {
            if !contexts.condition(condition) {
                continue;
            }
        }
        if let Some(uses) = step["uses"].as_str() {
            skipped_uses.push(uses.to_string());
            continue;
        }
        assert_eq!(step["shell"].as_str(), Some("bash"), "{label}");
        let script = files.join(format!("step-{n}.sh"));
        fs::write(&script, contexts.substitute(step["run"].as_str().unwrap())).unwrap();
        let output = files.join(format!("output-{n}"));
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(&script)
            .current_dir(&workspace)
            .env_clear()
            .envs(&contexts.env)
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_ENV", &env_file)
            .env("GITHUB_PATH", &path_file)
            .env("GITHUB_STEP_SUMMARY", &summary);
        if let Some(env) = step["env"].as_hash() {
            for (name, value) in env {
                cmd.env(
                    name.as_str().unwrap(),
                    contexts.substitute(value.as_str().unwrap()),
                );
            }
        }
        let out = run(&mut cmd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "step {label} failed:\n{text}");
        printed.push_str(&text);
        ran.push(label);
        if let Some(id) = id {
            contexts
                .steps
                .insert(id, parse_command_file(&output).into_iter().collect());
        }
        for (name, value) in parse_command_file(&env_file) {
            contexts.env.insert(name, value);
        }
        for dir in fs::read_to_string(&path_file).unwrap_or_default().lines() {
            let path = format!("{dir}:{}", contexts.env["PATH"]);
            contexts.env.insert("PATH".into(), path);
        }
        let _ = fs::remove_file(&path_file);
    }
    // dallinger-oci of the action's version is on PATH: nothing installed;
    // the runner's actions/cache is not ours to run.
    assert_eq!(ran, ["tool", "cache", "build", "Summary"], "{printed}");
    assert_eq!(skipped_uses, ["actions/cache@v5"]);
    assert!(printed.contains("Using "), "{printed}");
    assert_eq!(
        contexts.env.get("DALLINGER_OCI_CACHE").map(PathBuf::from),
        Some(runner_temp.join("dallinger-oci-cache"))
    );
    // The metadata-action `created` label is named.
    assert!(
        printed.contains("warning: the label org.opencontainers.image.created="),
        "{printed}"
    );

    let outputs: BTreeMap<String, String> = action["outputs"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(name, output)| {
            (
                name.as_str().unwrap().to_string(),
                contexts.substitute(output["value"].as_str().unwrap()),
            )
        })
        .collect();
    let creds = format!("{USER}:{TOKEN}");
    let skopeo = |reference: &str, extra: &[&str]| -> serde_json::Value {
        let out = ok(Command::new(require_tool("skopeo"))
            .args(["inspect", "--tls-verify=false", "--creds", &creds])
            .args(extra)
            .arg(reference));
        serde_json::from_str(&out).unwrap()
    };
    let digest = outputs["digest"].clone();
    for tag in ["main", "sha-860c190"] {
        let reference = format!("docker://{host}/lab/action:{tag}");
        assert_eq!(skopeo(&reference, &[])["Digest"], digest.as_str(), "{tag}");
    }
    let manifest = skopeo(&format!("docker://{host}/lab/action@{digest}"), &["--raw"]);
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.description"],
        "Stroop task"
    );
    assert_eq!(
        outputs["imageid"],
        manifest["config"]["digest"].as_str().unwrap()
    );
    assert_eq!(outputs["name"], format!("{host}/lab/action"));
    let metadata: serde_json::Value = serde_json::from_str(&outputs["metadata"]).unwrap();
    assert_eq!(metadata["containerimage.digest"], digest.as_str());
    assert_eq!(
        metadata["image.name"],
        format!("{host}/lab/action:main,{host}/lab/action:sha-860c190")
    );

    let summary = fs::read_to_string(&summary).unwrap();
    for line in [
        format!("### dallinger-oci: {host}/lab/action"),
        format!("| Image | `{host}/lab/action@{digest}` (pushed) |"),
        "| Tags | `main` `sha-860c190` |".to_string(),
        format!("| Digest | `{digest}` |"),
        format!("| Image ID | `{}` |", outputs["imageid"]),
    ] {
        assert!(summary.lines().any(|l| l == line), "{line}\n{summary}");
    }

    // The token is masked, never printed, and left nowhere.
    let mask = format!("::add-mask::{TOKEN}");
    let unmasked = printed.replace(&mask, "");
    assert!(!unmasked.contains(TOKEN), "{printed}");
    assert!(printed.contains(&mask));
    for file in fs::read_dir(&files).unwrap() {
        let path = file.unwrap().path();
        let text = fs::read_to_string(&path).unwrap_or_default();
        assert!(!text.contains(TOKEN), "{}: {text}", path.display());
    }
}
