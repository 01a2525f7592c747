//! deploy.toml (issue 14, must-show 1): on experiments with each rule
//! (paths, names, suffixes, nested directories) our file set is the one the
//! real Dallinger 12.4.0 (`dallinger deployment-files list --json`, from
//! PyPI into a venv under the test cache, scripts/dallinger-venv.sh)
//! selects; a symlink, a fifo, a socket, a nested repository and a bad
//! policy fail with Dallinger's error for the same path; `dallinger-oci
//! files --json` lists the same, and the image's /experiment holds exactly
//! that plus the generated files.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Runs the installed `dallinger.command_line.deployment_files` group (the
/// code of `dallinger deployment-files`). Only that command's module and
/// `dallinger.deployment_plan` are loaded: the packages' `__init__` files
/// import the whole framework (Flask, SQLAlchemy, ...), whose dependencies
/// the venv does not hold, so the two packages are registered by path.
const DRIVER: &str = "\
import importlib.util, sys, types
root = importlib.util.find_spec('dallinger').submodule_search_locations[0]
for name, path in (('dallinger', root), ('dallinger.command_line', root + '/command_line')):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
from dallinger.command_line.deployment_files import deployment_files
deployment_files(prog_name='dallinger deployment-files')
";

fn dallinger_bin() -> PathBuf {
    let out = ok(Command::new("bash").arg(repo_root().join("scripts/dallinger-venv.sh")));
    PathBuf::from(out.trim())
}

/// `dallinger deployment-files list --json` in `exp`: its JSON, or the
/// message of its `Error: ` line.
fn dallinger_list(sandbox: &Sandbox, exp: &Path) -> Result<serde_json::Value, String> {
    let driver = sandbox.path("deployment_files.py");
    fs::write(&driver, DRIVER).unwrap();
    let out = run(Command::new(dallinger_bin().join("python"))
        .arg(&driver)
        .args(["list", "--json"])
        .current_dir(exp));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Ok(serde_json::from_slice(&out.stdout).unwrap());
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let message = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Error: "))
        .unwrap_or_else(|| panic!("no Error: line in {stderr}"));
    Err(message.to_string())
}

fn files_json(sandbox: &Sandbox, exp: &Path) -> serde_json::Value {
    let out = ok(sandbox.cmd().args(["files", "--json"]).arg(exp));
    serde_json::from_str(&out).unwrap()
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn base_arg() -> String {
    format!("rootfs:{}", fixture("base/tiny-rootfs.tar").display())
}

/// The regular files under /experiment in the image of the OCI layout `dir`.
fn image_experiment(dir: &Path) -> BTreeSet<String> {
    let (_, manifest, _) = layout_image(dir);
    let mut files = BTreeSet::new();
    for digest in manifest_layers(&manifest) {
        let bytes = gunzip(&blob(dir, &digest));
        let mut archive = tar::Archive::new(bytes.as_slice());
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let path = path.trim_start_matches("./");
            if let Some(rel) = path.strip_prefix("experiment/") {
                if entry.header().entry_type().is_file() {
                    files.insert(rel.to_string());
                }
            }
        }
    }
    files
}

const POLICY: &str = "\
# Git globs and negation are not supported.
version = 1

[exclude]
paths = [
    \"data\",
    \"static/media\",
    \"vendor/lib\",
]
names = [
    \"__pycache__\",
    \".venv\",
]
suffixes = [
    \".db\",
    \".log\",
]
";

/// The golden fixture with a deploy.toml and a file for each rule.
fn policy_experiment(sandbox: &Sandbox) -> PathBuf {
    let exp = sandbox.experiment("golden", "exp");
    // The fixture's symlink, which deploy.toml does not allow, as a copy.
    let link = exp.join("static/current.js");
    let bytes = fs::read(&link).unwrap();
    fs::remove_file(&link).unwrap();
    fs::write(&link, bytes).unwrap();
    write(&exp, "deploy.toml", POLICY);
    for rel in [
        // paths: root-relative prefixes, nested ones included.
        "data/raw.csv",
        "data/deep/er/x.csv",
        "static/data/keep.csv",
        "static/media/big.mp4",
        "static/mediafile.txt",
        // names, in any directory.
        "__pycache__/a.pyc",
        "pkg/sub/__pycache__/b.pyc",
        ".venv/pyvenv.cfg",
        "pkg/__init__.py",
        "pkg/sub/deep/er/mod.py",
        // suffixes.
        "results.db",
        "pkg/cache.db",
        "server.log",
        "logs/app.log",
        "logs/readme.txt",
        // Always left out by Dallinger.
        "constraints.txt",
        "runtime.txt",
        "experiment_id.txt",
        "static/.dockerignore",
        ".slugignore",
        // Not deciding any more: .dockerignore, git, .dallingerignore.
        "untracked.txt",
        "ignored-by-git.txt",
        ".hidden/file",
        "caf\u{65}\u{301}.txt",
        // An excluded nested repository is fine.
        "vendor/lib/.git/HEAD",
        "vendor/keep.py",
    ] {
        write(&exp, rel, &format!("{rel}\n"));
    }
    write(&exp, ".dockerignore", "static\npkg\n");
    write(&exp, ".gitignore", "ignored-by-git.txt\n.hidden/\n");
    write(&exp, ".dallingerignore", "logs/\n");
    fs::write(exp.join("constraints.txt"), "dallinger==12.4.0\n").unwrap();
    let git = |args: &[&str]| {
        ok(Command::new("git")
            .arg("-C")
            .arg(&exp)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1"));
    };
    git(&["init", "-q"]);
    git(&["add", "experiment.py", "config.txt"]);
    exp
}

#[test]
fn file_set_is_dallinger_12_4s_and_the_image_holds_it() {
    let sandbox = Sandbox::new();
    let exp = policy_experiment(&sandbox);

    let theirs = dallinger_list(&sandbox, &exp).expect("Dallinger selects the files");
    let ours = files_json(&sandbox, &exp);
    for key in ["destinations", "file_count", "total_size"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    let destinations = strings(&ours["destinations"]);
    for kept in [
        "deploy.toml",
        "static/data/keep.csv",
        "static/mediafile.txt",
        "pkg/sub/deep/er/mod.py",
        "logs/readme.txt",
        "untracked.txt",
        "ignored-by-git.txt",
        ".hidden/file",
        ".dallingerignore",
        "caf\u{e9}.txt",
        "vendor/keep.py",
    ] {
        assert!(
            destinations.iter().any(|d| d == kept),
            "{kept}: {destinations:?}"
        );
    }
    assert_eq!(ours["selection"], "deploy.toml");
    assert_eq!(
        strings(&ours["generated"]),
        ["config.txt", "prepare_docker_image.sh", "requirements.txt"]
    );
    let excluded: Vec<(String, String)> = ours["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let slash = if x["directory"] == true { "/" } else { "" };
            let value = x["value"]
                .as_str()
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            (
                format!("{}{slash}", x["path"].as_str().unwrap()),
                format!("{}{value}", x["rule"].as_str().unwrap()),
            )
        })
        .collect();
    let expected = [
        (".dockerignore", "backend-ignore"),
        (".git/", "vcs"),
        (".slugignore", "backend-ignore"),
        (".venv/", "exclude.names .venv"),
        ("__pycache__/", "exclude.names __pycache__"),
        ("config.txt", "configuration"),
        ("constraints.txt", "generated"),
        ("data/", "exclude.paths data"),
        ("experiment_id.txt", "generated"),
        ("logs/app.log", "exclude.suffixes .log"),
        ("pkg/cache.db", "exclude.suffixes .db"),
        ("pkg/sub/__pycache__/", "exclude.names __pycache__"),
        ("requirements.txt", "generated"),
        ("results.db", "exclude.suffixes .db"),
        ("runtime.txt", "generated"),
        ("server.log", "exclude.suffixes .log"),
        ("static/.dockerignore", "backend-ignore"),
        ("static/media/", "exclude.paths static/media"),
        ("vendor/lib/", "exclude.paths vendor/lib"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    assert_eq!(excluded, expected);

    // The text form marks the generated files and names the rules.
    let out = run(sandbox.cmd().arg("files").arg(&exp));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(".dallingerignore has no effect beside deploy.toml"),
        "{stderr}"
    );
    assert!(text.contains("\nconfig.txt  (generated)\n"), "{text}");
    assert!(
        text.contains("\n  data/  exclude.paths \"data\"\n"),
        "{text}"
    );

    // The image's /experiment: Dallinger's set and the generated files.
    let layout = sandbox.path("layout");
    ok(sandbox
        .cmd()
        .arg("build")
        .arg(&exp)
        .args(["--base", &base_arg()])
        .arg("-o")
        .arg(format!("oci:{}", layout.display())));
    let mut expected: BTreeSet<String> = strings(&theirs["destinations"]).into_iter().collect();
    expected.extend(strings(&ours["generated"]));
    assert_eq!(image_experiment(&layout), expected);
    let entries: BTreeSet<String> = ours["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["destination"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(entries, expected);
    // requirements.txt is constraints.txt, restored outside the plan.
    let (_, manifest, _) = layout_image(&layout);
    let last = manifest_layers(&manifest).pop().unwrap();
    let bytes = gunzip(&blob(&layout, &last));
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut requirements = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry
            .path()
            .unwrap()
            .ends_with("experiment/requirements.txt")
        {
            std::io::Read::read_to_string(&mut entry, &mut requirements).unwrap();
        }
    }
    assert_eq!(requirements, "dallinger==12.4.0\n");
}

/// Dallinger's error and ours (`files` and `build`) for `exp`: the same
/// message, so the same path and kind.
fn same_error(sandbox: &Sandbox, exp: &Path) -> String {
    let theirs = dallinger_list(sandbox, exp).expect_err("Dallinger refuses it");
    for command in ["files", "build"] {
        let mut cmd = sandbox.cmd();
        cmd.arg(command).arg(exp);
        if command == "build" {
            cmd.args(["--base", &base_arg()]);
        }
        let ours = one_line_error(&run(&mut cmd));
        assert!(
            ours.ends_with(&theirs),
            "{command}: ours {ours:?}, Dallinger's {theirs:?}"
        );
    }
    theirs
}

#[test]
fn symlinks_special_files_and_nested_repositories_fail_as_in_dallinger() {
    let sandbox = Sandbox::new();
    let exp = policy_experiment(&sandbox);
    let root = fs::canonicalize(&exp).unwrap();
    dallinger_list(&sandbox, &exp).expect("the fixture is valid");

    std::os::unix::fs::symlink("experiment.py", exp.join("static/link.py")).unwrap();
    let message = same_error(&sandbox, &exp);
    assert!(message.starts_with(&format!(
        "Symbolic links are unsupported deployment sources: {}/static/link.py.",
        root.display()
    )));
    // Excluded, it is fine for both.
    fs::rename(exp.join("static/link.py"), exp.join("data/link.py")).unwrap();
    assert_eq!(
        files_json(&sandbox, &exp)["destinations"],
        dallinger_list(&sandbox, &exp).unwrap()["destinations"]
    );

    let fifo = exp.join("pkg/sub/pipe");
    ok(Command::new("mkfifo").arg(&fifo));
    let message = same_error(&sandbox, &exp);
    assert!(message.starts_with(&format!(
        "Unsupported FIFO deployment source: {}.",
        root.join("pkg/sub/pipe").display()
    )));
    fs::remove_file(&fifo).unwrap();

    let socket = exp.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let message = same_error(&sandbox, &exp);
    assert!(message.starts_with("Unsupported socket deployment source: "));
    drop(listener);
    fs::remove_file(&socket).unwrap();

    ok(Command::new("git")
        .args(["init", "-q"])
        .arg(exp.join("plugins/tool")));
    let message = same_error(&sandbox, &exp);
    assert!(message.starts_with(&format!(
        "Nested repository or submodule metadata is unsupported: {}.",
        root.join("plugins/tool/.git").display()
    )));
    fs::remove_dir_all(exp.join("plugins")).unwrap();

    dallinger_list(&sandbox, &exp).expect("valid again");
}

#[test]
fn a_bad_policy_is_one_line_naming_the_file_line_and_key_with_dallingers_reason() {
    let sandbox = Sandbox::new();
    let exp = policy_experiment(&sandbox);
    let policy = fs::canonicalize(exp.join("deploy.toml")).unwrap();
    let cases = [
        (
            POLICY.replace("\"static/media\"", "\"static/*\""),
            7,
            "exclude.paths",
        ),
        (
            POLICY.replace("\"__pycache__\"", "\"pkg/__pycache__\""),
            11,
            "exclude.names",
        ),
        (
            POLICY.replace("\".log\"", "\"log\""),
            16,
            "exclude.suffixes",
        ),
        (
            POLICY.replace("\"vendor/lib\"", "\"config.txt\""),
            8,
            "exclude.paths",
        ),
        (POLICY.replace("\"data\"", "\"!data\""), 6, "exclude.paths"),
        (
            POLICY.replace("version = 1", "version = \"1\""),
            2,
            "version",
        ),
        (
            POLICY.replace("version = 1\n", "version = 1\ninclude = []\n"),
            3,
            "include",
        ),
        (format!("{POLICY}include = []\n"), 18, "exclude.include"),
        (POLICY.replace("names", "name"), 10, "exclude.name"),
    ];
    for (text, line, key) in cases {
        fs::write(exp.join("deploy.toml"), &text).unwrap();
        let theirs = dallinger_list(&sandbox, &exp).expect_err(&text);
        let ours = one_line_error(&run(sandbox.cmd().arg("files").arg(&exp)));
        assert_eq!(
            ours,
            format!("error: {}:{line}: {key}: {theirs}", policy.display()),
            "{text}"
        );
    }
    // A TOML syntax error: the line, and Dallinger's opening words.
    fs::write(
        exp.join("deploy.toml"),
        POLICY.replace("[exclude]", "[exclude"),
    )
    .unwrap();
    let theirs = dallinger_list(&sandbox, &exp).expect_err("bad TOML");
    assert!(
        theirs.starts_with("Invalid TOML in deployment policy"),
        "{theirs}"
    );
    let ours = one_line_error(&run(sandbox.cmd().arg("files").arg(&exp)));
    assert!(
        ours.starts_with(&format!(
            "error: {}:4: Invalid TOML in deployment policy {}",
            policy.display(),
            policy.display()
        )),
        "{ours}"
    );
}
