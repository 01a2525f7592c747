use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A minimal experiment directory.
fn experiment() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "config.txt", "[Parameters]\ntitle = Test\n");
    write(dir.path(), "experiment.py", "class X: pass\n");
    dir
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn load(dir: &Path) -> Result<Experiment, ExperimentError> {
    Experiment::load(dir, &LoadOptions::default())
}

fn rels(exp: &Experiment) -> Vec<&str> {
    exp.files.iter().map(|f| f.rel.as_str()).collect()
}

fn generated<'a>(exp: &'a Experiment, rel: &str) -> (&'a [u8], bool) {
    match &exp.files.iter().find(|f| f.rel == rel).unwrap().kind {
        FileKind::Generated { bytes, executable } => (bytes, *executable),
        other => panic!("{rel}: {other:?}"),
    }
}

fn error(dir: &Path) -> String {
    match load(dir) {
        Ok(exp) => panic!("expected an error, got {:?}", rels(&exp)),
        Err(e) => e.to_string(),
    }
}

/// Isolated git: its own global config, no system config.
struct Git {
    _home: tempfile::TempDir,
    global: String,
    excludes: PathBuf,
}

impl Git {
    fn new() -> Git {
        let home = tempfile::tempdir().unwrap();
        let excludes = home.path().join("global-excludes");
        let global = home.path().join("gitconfig");
        fs::write(
            &global,
            format!(
                "[core]\n\texcludesFile = {}\n[user]\n\tname = T\n\temail = t@example.org\n",
                excludes.display()
            ),
        )
        .unwrap();
        Git {
            global: global.to_str().unwrap().to_string(),
            excludes,
            _home: home,
        }
    }

    fn env(&self) -> [(&str, &str); 2] {
        [
            ("GIT_CONFIG_GLOBAL", self.global.as_str()),
            ("GIT_CONFIG_NOSYSTEM", "1"),
        ]
    }

    fn run(&self, dir: &Path, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .envs(self.env())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn load(&self, dir: &Path) -> Result<Experiment, ExperimentError> {
        Experiment::load_with_git_env(dir, &LoadOptions::default(), &self.env())
    }
}

#[test]
fn file_set_outside_git_with_exclusions() {
    let dir = experiment();
    let root = dir.path();
    for rel in [
        "static/node_modules/x.js",
        "sub/data/x",
        "data/y",
        "a.db",
        "sub/b.db",
        "x.dmg",
        "sub/config.txt",
        "__pycache__/m.pyc",
        "pkg/__pycache__/m.pyc",
        "snapshots/s.zip",
        "local_only/l",
        "develop/d",
        "server.log",
        "sub/.git",
        // Kept:
        "static/x.js",
        "sub/database.py",
        "data.txt",
        "templates/ad.html",
        "models.py",
    ] {
        write(root, rel, "x");
    }
    fs::set_permissions(root.join("models.py"), fs::Permissions::from_mode(0o750)).unwrap();
    let exp = load(root).unwrap();
    assert_eq!(
        rels(&exp),
        [
            "config.txt",
            "data.txt",
            "experiment.py",
            "models.py",
            "prepare_docker_image.sh",
            "requirements.txt",
            "static/x.js",
            "sub/database.py",
            "templates/ad.html",
        ]
    );
    assert_eq!(exp.git, None);
    assert_eq!(exp.dir, fs::canonicalize(root).unwrap());
    let models = exp.files.iter().find(|f| f.rel == "models.py").unwrap();
    assert_eq!(
        models.kind,
        FileKind::File {
            source: exp.dir.join("models.py"),
            executable: true
        }
    );
    let e = exp.files.iter().find(|f| f.rel == "experiment.py").unwrap();
    assert!(matches!(
        e.kind,
        FileKind::File {
            executable: false,
            ..
        }
    ));
    // Defaults.
    assert_eq!(
        generated(&exp, "requirements.txt"),
        (&b"dallinger\n"[..], false)
    );
    assert_eq!(
        generated(&exp, "prepare_docker_image.sh"),
        (generated::DEFAULT_PREPARE_SCRIPT.as_bytes(), true)
    );
    assert_eq!(exp.default_tag(), "a1e72654");
    assert_eq!(
        generated(&exp, "config.txt").0,
        b"[Parameters]\ntitle = Test\n\n"
    );
}

#[test]
fn generated_files_from_experiment() {
    let dir = experiment();
    let root = dir.path();
    write(root, "requirements.txt", "dallinger\nnumpy\n");
    write(root, "constraints.txt", "dallinger==12.3.0\nnumpy==2.0.0\n");
    write(
        root,
        "prepare_docker_image.sh",
        "#!/bin/sh\napt-get install ffmpeg\n",
    );
    let exp = load(root).unwrap();
    assert_eq!(
        rels(&exp),
        [
            "config.txt",
            "experiment.py",
            "prepare_docker_image.sh",
            "requirements.txt"
        ]
    );
    let (requirements, _) = generated(&exp, "requirements.txt");
    assert_eq!(requirements, b"dallinger==12.3.0\nnumpy==2.0.0\n");
    let (prepare, executable) = generated(&exp, "prepare_docker_image.sh");
    assert_eq!(prepare, b"#!/bin/sh\napt-get install ffmpeg\n");
    assert!(executable);
    assert_eq!(
        exp.default_tag(),
        generated::tag(
            b"dallinger==12.3.0\nnumpy==2.0.0\n",
            b"#!/bin/sh\napt-get install ffmpeg\n"
        )
    );

    // Without constraints.txt, requirements.txt is used as it is.
    fs::remove_file(root.join("constraints.txt")).unwrap();
    let exp = load(root).unwrap();
    assert_eq!(generated(&exp, "requirements.txt").0, b"dallinger\nnumpy\n");
}

#[test]
fn config_layering_and_sensitive_values() {
    let dir = experiment();
    let root = dir.path();
    write(
        root,
        "config.txt",
        "[AWS]\naws_access_key_id = AKIAEXPERIMENT\naws_secret_access_key = exp-secret\n\
         [Dashboard]\ndashboard_password = exp-password\n\
         [Experiment]\ntitle = Mine\nmturk_access_key = mk\n\
         [Docker]\ndocker_image_base_name = ghcr.io/o/exp\n",
    );
    let home = tempfile::tempdir().unwrap();
    let home_config = home.path().join(".dallingerconfig");
    fs::write(
        &home_config,
        "[Heroku]\nheroku_team = lab\n[Docker]\ndocker_image_base_name = ghcr.io/o/home\n\
         [Mail]\nsmtp_password = home-pw\n",
    )
    .unwrap();
    let exp = Experiment::load(
        root,
        &LoadOptions {
            home_config: Some(home_config),
        },
    )
    .unwrap();
    assert_eq!(exp.get("docker_image_base_name"), Some("ghcr.io/o/exp"));
    assert_eq!(exp.get("heroku_team"), Some("lab"));
    assert_eq!(exp.get("smtp_password"), Some("home-pw"));
    let text = String::from_utf8(generated(&exp, "config.txt").0.to_vec()).unwrap();
    assert_eq!(
        text,
        "[Parameters]\ndocker_image_base_name = ghcr.io/o/exp\ntitle = Mine\n\n"
    );
    for secret in ["AKIA", "exp-secret", "exp-password", "mk", "home-pw", "lab"] {
        assert!(!text.contains(secret), "{secret}");
    }

    // A missing home config is fine; a broken one names the file and line.
    let exp = Experiment::load(
        root,
        &LoadOptions {
            home_config: Some(home.path().join("nope")),
        },
    )
    .unwrap();
    assert_eq!(exp.get("heroku_team"), None);
    let broken = home.path().join("broken");
    fs::write(&broken, "key = 1\n").unwrap();
    let e = Experiment::load(
        root,
        &LoadOptions {
            home_config: Some(broken.clone()),
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:1:", broken.display())),
        "{e}"
    );
    // So does a broken experiment config.
    write(root, "config.txt", "[P]\nx = 100%\n");
    let e = error(root);
    assert!(e.contains("config.txt:2:"), "{e}");
}

#[test]
fn missing_directory_and_required_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = error(&dir.path().join("absent"));
    assert!(e.contains("absent"), "{e}");

    let e = error(dir.path());
    assert!(
        e.contains(
            "is not a Dallinger experiment directory: it has no config.txt and no experiment.py"
        ),
        "{e}"
    );
    write(dir.path(), "experiment.py", "");
    let e = error(dir.path());
    assert!(e.contains("it has no config.txt;"), "{e}");
    fs::remove_file(dir.path().join("experiment.py")).unwrap();
    write(dir.path(), "config.txt", "[P]\n");
    let e = error(dir.path());
    assert!(e.contains("it has no experiment.py;"), "{e}");
}

#[test]
fn dallingerignore() {
    let dir = experiment();
    let root = dir.path();
    write(
        root,
        ".dallingerignore",
        "# media\n*.mp4\n!keep.mp4\nbig/\n/top.txt\nout/*\n!out/keep\n",
    );
    for rel in [
        "a.mp4",
        "keep.mp4",
        "static/b.mp4",
        "big/x",
        "big/keep.mp4",
        "top.txt",
        "sub/top.txt",
        "out/x",
        "out/keep",
        "sub/.dallingerignore",
    ] {
        write(root, rel, "x");
    }
    let exp = load(root).unwrap();
    assert_eq!(
        rels(&exp),
        [
            "config.txt",
            "experiment.py",
            "keep.mp4",
            "out/keep",
            "prepare_docker_image.sh",
            "requirements.txt",
            "sub/.dallingerignore",
            "sub/top.txt",
        ]
    );

    write(root, ".dallingerignore", "experiment.py\n");
    let e = error(root);
    assert!(e.contains("experiment.py is left out of the image"), "{e}");
}

#[test]
fn git_file_set() {
    let git = Git::new();
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path().join("exp");
    fs::create_dir(&root).unwrap();
    write(&root, "config.txt", "[Parameters]\ntitle = T\n");
    write(&root, "experiment.py", "");
    write(repo.path(), "outside.txt", "x");
    write(repo.path(), ".gitignore", "*.log\nbuild/\n");
    write(&root, "static/.gitignore", "gen.js\n");
    write(&root, "static/gen.js", "x");
    write(&root, "static/app.js", "x");
    write(&root, "gen.js", "x"); // the nested .gitignore does not apply here
    write(&root, "run.log", "x");
    write(&root, "forced.log", "x");
    write(&root, "build/out.js", "x");
    write(&root, "untracked.py", "x");
    write(&root, "notes.swp", "x");
    write(&root, "local-secret.txt", "x");
    write(&root, "caf\u{e9}.txt", "x");
    fs::write(&git.excludes, "*.swp\n").unwrap();
    git.run(repo.path(), &["init", "-q"]);
    write(repo.path(), ".git/info/exclude", "local-secret.txt\n");

    // No commit yet: the file set already follows git, but no GitInfo.
    let exp = git.load(&root).unwrap();
    assert_eq!(exp.git, None);

    git.run(repo.path(), &["add", "exp/config.txt", "exp/experiment.py"]);
    git.run(repo.path(), &["add", "-f", "exp/forced.log"]);
    git.run(repo.path(), &["commit", "-q", "-m", "init"]);
    git.run(
        repo.path(),
        &[
            "remote",
            "add",
            "origin",
            "https://user:ghp_s3cret@github.com/lab/exps.git",
        ],
    );
    let exp = git.load(&root).unwrap();
    assert_eq!(
        rels(&exp),
        [
            "caf\u{e9}.txt",
            "config.txt",
            "experiment.py",
            "forced.log",
            "gen.js",
            "prepare_docker_image.sh",
            "requirements.txt",
            "static/.gitignore",
            "static/app.js",
            "untracked.py",
        ]
    );
    let info = exp.git.unwrap();
    assert_eq!(info.revision.len(), 40);
    assert!(info.revision.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(info.source.as_deref(), Some("https://github.com/lab/exps"));

    // An experiment directory that git ignores entirely.
    write(repo.path(), ".gitignore", "exp/\n");
    git.run(repo.path(), &["rm", "-q", "--cached", "-r", "exp"]);
    let e = git.load(&root).unwrap_err().to_string();
    assert!(e.contains("experiment.py is left out of the image"), "{e}");
}

#[test]
fn git_failure_is_an_error() {
    let dir = experiment();
    // A `.git` that is not a repository.
    write(dir.path(), ".git", "gitdir: /nonexistent\n");
    let git = Git::new();
    let e = git.load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("git ls-files` failed"), "{e}");
}

#[test]
fn symlinks() {
    let dir = experiment();
    let root = dir.path();
    write(root, "static/lib/a.js", "x");
    symlink("lib/a.js", root.join("static/link.js")).unwrap();
    symlink("static/lib", root.join("libdir")).unwrap();
    symlink("./experiment.py", root.join("main.py")).unwrap();
    let exp = load(root).unwrap();
    assert_eq!(
        rels(&exp),
        [
            "config.txt",
            "experiment.py",
            "libdir",
            "main.py",
            "prepare_docker_image.sh",
            "requirements.txt",
            "static/lib/a.js",
            "static/link.js",
        ]
    );
    let link = exp.files.iter().find(|f| f.rel == "libdir").unwrap();
    assert_eq!(
        link.kind,
        FileKind::Symlink {
            target: "static/lib".into()
        }
    );

    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "o.txt", "x");
    let cases: Vec<(String, &str, &str)> = vec![
        ("../../o.txt".into(), "bad.txt", "points outside"),
        ("sub/../../o.txt".into(), "bad.txt", "points outside"),
        (
            outside.path().join("o.txt").display().to_string(),
            "bad.txt",
            "absolute target",
        ),
        ("nothing-here".into(), "bad.txt", "broken symlink"),
        ("nothing".into(), ".venv/bin/python", "broken symlink"),
        ("../config.txt".into(), "sub/cfg", ""),
        ("data/file".into(), "to-data", "left out of the image"),
    ];
    write(root, "data/file", "x");
    for (target, rel, want) in cases {
        let link = root.join(rel);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(&target, &link).unwrap();
        let result = load(root);
        fs::remove_file(&link).unwrap();
        if want.is_empty() {
            // Points at the experiment's config.txt, replaced by the generated one.
            result.unwrap();
            continue;
        }
        let e = result.err().unwrap().to_string();
        assert!(e.contains(want), "{target}: {e}");
        assert!(e.contains(rel), "{target}: {e}");
        if rel.contains(".venv") {
            assert!(e.contains("virtualenv"), "{e}");
        }
    }
    // A link through a directory symlink that leads outside.
    let outside_name = outside.path().file_name().unwrap().to_str().unwrap();
    symlink(format!("../{outside_name}"), root.join("zz")).unwrap();
    symlink("zz/o.txt", root.join("aa")).unwrap();
    let e = error(root);
    assert!(e.contains("/aa -> zz/o.txt resolves to"), "{e}");
    assert!(e.contains("outside the experiment directory"), "{e}");
}

#[test]
fn fifo_is_an_error() {
    let dir = experiment();
    let fifo = dir.path().join("pipe");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let e = error(dir.path());
    assert!(
        e.contains("pipe") && e.contains("not a regular file"),
        "{e}"
    );
}

#[test]
fn non_utf8_name_is_an_error() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = experiment();
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff.txt");
    fs::write(dir.path().join(name), "x").unwrap();
    let e = error(dir.path());
    assert!(e.contains("not valid UTF-8"), "{e}");
    // Left out: fine.
    write(dir.path(), ".dallingerignore", "bad-*\n");
    load(dir.path()).unwrap();
}

#[test]
fn unreadable_file_is_an_error() {
    let dir = experiment();
    let path = dir.path().join("secret.py");
    fs::write(&path, "x").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::File::open(&path).is_ok() {
        return; // running as root
    }
    let e = error(dir.path());
    assert!(
        e.contains("secret.py") && e.contains("ermission denied"),
        "{e}"
    );
}

#[test]
fn size_limit() {
    let dir = experiment();
    let file = fs::File::create(dir.path().join("huge.bin")).unwrap();
    file.set_len(257 * 1024 * 1024).unwrap();
    let e = error(dir.path());
    assert!(
        e.contains("257.0 MiB") && e.contains("256 MiB") && e.contains(".dallingerignore"),
        "{e}"
    );
    file.set_len(255 * 1024 * 1024).unwrap();
    load(dir.path()).unwrap();
}

#[test]
fn dir_name_and_tag() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("bartlett1932");
    fs::create_dir(&root).unwrap();
    write(&root, "config.txt", "[Parameters]\n");
    write(&root, "experiment.py", "");
    let exp = load(&root).unwrap();
    assert_eq!(exp.dir_name(), "bartlett1932");
    assert_eq!(exp.default_tag(), "a1e72654");
    assert_eq!(exp.get("anything"), None);
}

const POLICY: &str = "version = 1\n[exclude]\npaths = [\"data\", \"static/big\"]\n\
                      names = [\"__pycache__\", \".venv\"]\nsuffixes = [\".db\"]\n";

fn excluded(exp: &Experiment) -> Vec<(String, &'static str, Option<String>)> {
    exp.listing
        .excluded
        .iter()
        .map(|x| {
            let slash = if x.directory { "/" } else { "" };
            (format!("{}{slash}", x.path), x.rule, x.value.clone())
        })
        .collect()
}

#[test]
fn deploy_toml_decides_the_file_set() {
    let git = Git::new();
    let dir = experiment();
    let root = dir.path();
    write(root, "deploy.toml", POLICY);
    for rel in [
        "data/raw.csv",
        "static/data/keep.csv",
        "static/big/video.mp4",
        "static/bigger.txt",
        "pkg/__pycache__/m.pyc",
        "__pycache__/n.pyc",
        ".venv/pyvenv.cfg",
        "results.db",
        "pkg/db.sqlite",
        "server.log",
        "snapshots/s.zip",
        "node_modules/x.js",
        ".dockerignore",
        "static/.dockerignore",
        ".slugignore",
        ".dallingerignore",
        "constraints.txt",
        "requirements.txt",
        "runtime.txt",
        "experiment_id.txt",
        "untracked.py",
        "ignored.txt",
        "sub/deploy.toml",
        "sub/config.txt",
    ] {
        write(root, rel, "x\n");
    }
    write(root, ".gitignore", "ignored.txt\n");
    write(root, ".dallingerignore", "static/\n");
    fs::write(root.join("constraints.txt"), "pin==1\n").unwrap();
    git.run(root, &["init", "-q"]);
    git.run(root, &["add", "experiment.py", "config.txt"]);
    git.run(root, &["commit", "-qm", "first"]);
    let exp = git.load(root).unwrap();
    assert_eq!(exp.listing.selection, Selection::DeployToml);
    assert_eq!(
        rels(&exp),
        [
            ".dallingerignore",
            ".gitignore",
            "config.txt",
            "deploy.toml",
            "experiment.py",
            "ignored.txt",
            "node_modules/x.js",
            "pkg/db.sqlite",
            "prepare_docker_image.sh",
            "requirements.txt",
            "server.log",
            "snapshots/s.zip",
            "static/bigger.txt",
            "static/data/keep.csv",
            "sub/config.txt",
            "sub/deploy.toml",
            "untracked.py",
        ]
    );
    // constraints.txt, restored outside the plan, is the requirements.
    assert_eq!(generated(&exp, "requirements.txt").0, b"pin==1\n");
    assert_eq!(
        exp.listing.generated,
        ["config.txt", "prepare_docker_image.sh", "requirements.txt"]
    );
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        excluded(&exp),
        [
            (".dockerignore".into(), "backend-ignore", None),
            (".git/".into(), "vcs", None),
            (".slugignore".into(), "backend-ignore", None),
            (".venv/".into(), "exclude.names", s(".venv")),
            ("__pycache__/".into(), "exclude.names", s("__pycache__")),
            ("config.txt".into(), "configuration", None),
            ("constraints.txt".into(), "generated", None),
            ("data/".into(), "exclude.paths", s("data")),
            ("experiment_id.txt".into(), "generated", None),
            ("pkg/__pycache__/".into(), "exclude.names", s("__pycache__")),
            ("requirements.txt".into(), "generated", None),
            ("results.db".into(), "exclude.suffixes", s(".db")),
            ("runtime.txt".into(), "generated", None),
            ("static/.dockerignore".into(), "backend-ignore", None),
            ("static/big/".into(), "exclude.paths", s("static/big")),
        ]
    );
    assert!(exp.git.is_some(), "git still gives the labels");

    // The experiment's prepare script is copied, not generated.
    write(
        root,
        "prepare_docker_image.sh",
        "#!/bin/sh\napt-get install -y ffmpeg\n",
    );
    let exp = git.load(root).unwrap();
    assert_eq!(exp.listing.generated, ["config.txt", "requirements.txt"]);
    assert!(exp.custom_prepare_script().is_some());
}

#[test]
fn deploy_toml_errors_name_the_path() {
    let dir = experiment();
    let root = dir.path();
    let canonical = fs::canonicalize(root).unwrap();
    write(root, "deploy.toml", POLICY);

    symlink("experiment.py", root.join("link.py")).unwrap();
    assert_eq!(
        error(root),
        format!(
            "Symbolic links are unsupported deployment sources: {}/link.py. Exclude the link \
             or replace it with a regular file or directory.",
            canonical.display()
        )
    );
    // An excluded one is fine, as is anything below an excluded directory.
    fs::create_dir_all(root.join("data")).unwrap();
    fs::rename(root.join("link.py"), root.join("data/link.py")).unwrap();
    load(root).unwrap();

    let status = Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(error(root).starts_with(&format!(
        "Unsupported FIFO deployment source: {}/pipe.",
        canonical.display()
    )));
    fs::remove_file(root.join("pipe")).unwrap();

    write(root, "vendor/lib/.git/HEAD", "ref: refs/heads/main\n");
    assert!(error(root).starts_with(&format!(
        "Nested repository or submodule metadata is unsupported: {}/vendor/lib/.git.",
        canonical.display()
    )));
    write(
        root,
        "deploy.toml",
        &format!("{POLICY}# vendored\n").replace("\"data\"", "\"data\", \"vendor/lib\""),
    );
    load(root).unwrap();

    // Two names that are one destination after NFC.
    write(root, "a\u{30a}.txt", "1");
    write(root, "\u{e5}.txt", "2");
    assert!(error(root)
        .starts_with("Source paths normalize to the same deployment destination '\u{e5}.txt'"));
    fs::remove_file(root.join("\u{e5}.txt")).unwrap();
    let exp = load(root).unwrap();
    assert!(rels(&exp).contains(&"\u{e5}.txt"));

    fs::remove_dir_all(root.join("vendor")).unwrap();
    fs::remove_dir_all(root.join("data")).unwrap();
    write(
        root,
        "deploy.toml",
        "version = 1\n[exclude]\nnames = [\"experiment.py\"]\n",
    );
    assert!(error(root).contains("experiment.py is excluded by"));

    write(
        root,
        "deploy.toml",
        "version = 1\n\n[exclude]\nsuffixes = [\"*.db\"]\n",
    );
    assert_eq!(
        error(root),
        format!(
            "{}/deploy.toml:4: exclude.suffixes: Glob syntax is unsupported in \
             exclude.suffixes: '*.db'.",
            canonical.display()
        )
    );

    fs::remove_file(root.join("deploy.toml")).unwrap();
    symlink("elsewhere.toml", root.join("deploy.toml")).unwrap();
    assert!(error(root).ends_with("deploy.toml must not be a symbolic link."));
}

#[test]
fn legacy_listing_names_each_rule() {
    let git = Git::new();
    let dir = experiment();
    let root = dir.path();
    for rel in [
        "data/x",
        "a.db",
        "venv/lib/a.py",
        "venv/lib/b.py",
        "notes/keep.md",
        "notes/draft.md",
        "scratch.txt",
        "constraints.txt",
    ] {
        write(root, rel, "x\n");
    }
    write(root, ".gitignore", "venv/\nscratch.txt\n");
    write(root, ".dallingerignore", "notes/draft.md\n");
    git.run(root, &["init", "-q"]);
    let exp = git.load(root).unwrap();
    assert_eq!(exp.listing.selection, Selection::Dallinger);
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        excluded(&exp),
        [
            (".dallingerignore".into(), ".dallingerignore", None),
            (".git/".into(), "dallinger", s(".git")),
            ("a.db".into(), "dallinger", s("*.db")),
            ("config.txt".into(), "dallinger", s("config.txt")),
            ("constraints.txt".into(), "generated", None),
            ("data/".into(), "dallinger", s("data")),
            (
                "notes/draft.md".into(),
                ".dallingerignore",
                s("notes/draft.md")
            ),
            ("scratch.txt".into(), "git", None),
            ("venv/".into(), "git", None),
        ]
    );
}
