//! The experiment's `extra_files()` hook (Dallinger's `ExplicitFileSource`):
//! `(source, destination)` pairs, sources mostly files and directories of
//! installed packages (PsyNet's templates, favicon and logo), destinations
//! relative to the experiment directory. Dallinger calls it on the host at
//! assembly time; we call it in the sandbox, with the image's own Python on
//! an overlay of the image so far (its dependency and Dallinger layers), no
//! network, the experiment's files at `/experiment`. Sources are read
//! inside the image only: the bytes come out of the sandbox, never from a
//! host path.
//!
//! The evaluation is cached by what it depends on (the layers' digests,
//! the experiment's files, the interpreter, the environment), so a rebuild
//! with nothing changed runs no Python; and it is skipped without a Python
//! start when no source can define the hook: Dallinger's `Experiment`
//! defines none, so the experiment class has one only when the
//! experiment's own Python sources name `extra_files` or it inherits from
//! a framework known to define it ([`FRAMEWORKS_WITH_THE_HOOK`]).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{Content, KeyHasher, LayerTree, Node};
use serde::{Deserialize, Serialize};

use crate::image::store::{sha256_file, BlobStore};
use crate::image::{config_env, unpack, ImageLayer};
use crate::sandbox::{Bind, Exit, Overlay, Sandbox};

use super::Experiment;

/// Distributions whose experiment classes define `extra_files()`, so an
/// experiment built on one has the hook without naming it.
pub const FRAMEWORKS_WITH_THE_HOOK: [&str; 1] = ["psynet"];

/// The name whose mention in a source makes the experiment a candidate.
const HOOK: &[u8] = b"extra_files";

/// The program run in the sandbox.
const SCRIPT: &str = include_str!("extra_files.py");

/// Bumped when what the evaluation records changes.
const MEMO_VERSION: &str = "dallinger-oci-extra-files/1";

/// Where the sandbox's results are written (a bind of a scratch directory).
const OUT: &str = "/run/dallinger-oci-extra-files";

/// Roots of the sandbox that are not the image's tree.
const NOT_THE_IMAGE: [&str; 4] = ["/proc", "/sys", "/dev", "/run"];

/// The root names Dallinger 12.4 reserves (`deployment_plan.py`): no
/// extra file may be put there.
const RESERVED_ROOT_NAMES: [&str; 6] = [
    "deploy.toml",
    "config.txt",
    "constraints.txt",
    "experiment_id.txt",
    "requirements.txt",
    "runtime.txt",
];
const VCS_NAMES: [&str; 4] = [".git", ".hg", ".svn", ".bzr"];

/// What the evaluation needs.
pub struct HookRequest<'a> {
    pub experiment: &'a Experiment,
    /// `/experiment` as the image will have it before any extra file:
    /// entries under `experiment/`.
    pub tree: &'a LayerTree,
    /// The image so far (every layer below the experiment layer).
    pub layers: &'a [ImageLayer],
    /// Its config (the hook sees its `Env`).
    pub config: &'a serde_json::Value,
    /// The target's interpreter, when the Python stage found it.
    pub interpreter: Option<&'a str>,
    /// Normalised names of the distributions installed.
    pub installed: &'a [String],
    /// `digest`: use a cached evaluation, run nothing.
    pub adding_up: bool,
}

/// One extra file: its path under `/experiment` and its bytes.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    pub rel: String,
    pub content: Content,
    /// Where it came from in the image, for messages.
    pub source: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Memo {
    files: Vec<MemoFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MemoFile {
    destination: String,
    source: String,
    digest: String,
    size: u64,
}

/// What the sandboxed program wrote.
#[derive(Debug, Deserialize)]
struct Outcome {
    #[serde(default)]
    files: Vec<Copied>,
    failure: Option<Failure>,
    refused: Option<String>,
    /// Pairs whose source, inside the experiment, does not exist yet (a
    /// launch writes it, as PsyNet's `.deploy`).
    #[serde(default)]
    skipped: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Copied {
    source: String,
    real: String,
    destination: String,
    file: String,
}

#[derive(Debug, Deserialize)]
struct Failure {
    during: String,
    file: Option<String>,
    line: Option<u64>,
    function: Option<String>,
    exception: String,
}

/// Whether the experiment can have the hook: its Python sources name
/// `extra_files`, or a framework that defines it is installed.
pub fn may_define_hook(experiment: &Experiment, installed: &[String]) -> Result<bool> {
    if installed
        .iter()
        .any(|name| FRAMEWORKS_WITH_THE_HOOK.contains(&name.as_str()))
    {
        return Ok(true);
    }
    for file in &experiment.files {
        if !file.rel.ends_with(".py") {
            continue;
        }
        let bytes = match &file.kind {
            super::FileKind::File { source, .. } => {
                fs::read(source).with_context(|| format!("cannot read {}", source.display()))?
            }
            super::FileKind::Generated { bytes, .. } => bytes.clone(),
            super::FileKind::Symlink { .. } => continue,
        };
        if bytes.windows(HOOK.len()).any(|w| w == HOOK) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The extra files, in the hook's order (the first of two with one
/// destination wins, as in Dallinger), from the cache when the same
/// inputs were evaluated before. Empty without running anything when the
/// experiment cannot have the hook.
pub fn extra_files(store: &BlobStore, request: &HookRequest) -> Result<Vec<ExtraFile>> {
    if !may_define_hook(request.experiment, request.installed)? {
        return Ok(Vec::new());
    }
    let interpreter = request.interpreter.unwrap_or("/usr/bin/python3");
    let mut key = KeyHasher::new();
    key.str(MEMO_VERSION)
        .str(SCRIPT)
        .str(interpreter)
        .list(request.layers.iter(), |key, layer| {
            key.str(&layer.blob.digest);
        })
        .list(config_env(request.config).iter(), |key, (k, v)| {
            key.str(k).str(v);
        });
    request.tree.add_to_key(&mut key)?;
    let memo_path = store.memo_path("extra-files", key.finish().hex());
    if let Some(files) = cached(store, &memo_path) {
        if !files.is_empty() {
            eprintln!(
                "extra_files(): {} files, as evaluated before for these layers and experiment files",
                files.len()
            );
        }
        return Ok(files);
    }
    let hook_file = request.experiment.dir.join("experiment.py");
    if request.adding_up {
        bail!(
            "{}: the experiment's extra_files() was not evaluated for these layers in this cache, so the experiment layer cannot be predicted: build the image once (with this cache) to know its digest",
            hook_file.display()
        );
    }
    store.fetch_missing(request.layers)?;
    let memo = evaluate(store, request, interpreter)?;
    store.write_entry(&memo_path, &serde_json::to_vec(&memo)?)?;
    if !memo.files.is_empty() {
        eprintln!(
            "extra_files(): {} files, evaluated in the sandbox",
            memo.files.len()
        );
    }
    memo_files(store, &memo)
}

/// The cached evaluation, when it and every file it names are intact.
fn cached(store: &BlobStore, memo_path: &Path) -> Option<Vec<ExtraFile>> {
    let memo: Memo = serde_json::from_slice(&fs::read(memo_path).ok()?).ok()?;
    for file in &memo.files {
        let path = store.blob_path(&file.digest).ok()?;
        // Small files, checked every time: a changed one is evaluated again.
        if !store.has_blob(&file.digest, file.size) || sha256_file(&path).ok()? != file.digest {
            return None;
        }
    }
    memo_files(store, &memo).ok()
}

fn memo_files(store: &BlobStore, memo: &Memo) -> Result<Vec<ExtraFile>> {
    memo.files
        .iter()
        .map(|f| {
            Ok(ExtraFile {
                rel: f.destination.clone(),
                content: Content::File(store.blob_path(&f.digest)?),
                source: f.source.clone(),
            })
        })
        .collect()
}

/// Runs the hook in the sandbox and keeps what it names in the store.
fn evaluate(store: &BlobStore, request: &HookRequest, interpreter: &str) -> Result<Memo> {
    let experiment = request.experiment;
    let rootfs = unpack::cached_rootfs(store, request.layers)
        .context("unpacking the image for the experiment's extra_files()")?;
    let scratch = store
        .scratch_dir("extra-files-")
        .context("cannot make a directory for the experiment's extra_files()")?;
    let upper = scratch.path().join("upper");
    let work = scratch.path().join("work");
    let out = scratch.path().join("out");
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&out)?;
    seed(&upper, request.tree)?;
    // The program sits beside its results: ours, read once at its start.
    fs::write(out.join("extra_files.py"), SCRIPT)?;
    let mut sandbox = Sandbox::new(&rootfs)
        .overlay(Overlay {
            upper: upper.clone(),
            work,
        })
        .bind(Bind {
            host: out.clone(),
            inside: OUT.into(),
            writable: true,
        })
        .workdir("/experiment");
    let env = config_env(request.config);
    for (k, v) in &env {
        sandbox = sandbox.env(k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        sandbox = sandbox.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    sandbox = sandbox
        .env("HOME", "/root")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONHASHSEED", "0");
    let log_path = scratch.path().join("log");
    let log = fs::File::create(&log_path)?;
    eprintln!("Evaluating the experiment's extra_files() in the sandbox (no network)");
    let exit = sandbox.run(&[interpreter, &format!("{OUT}/extra_files.py"), OUT], &log)?;
    let outcome = read_outcome(&out);
    let log_tail = || {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    };
    let hook_file = experiment.dir.join("experiment.py");
    let outcome = match (exit, outcome) {
        (Exit::Code(0), Some(outcome)) => outcome,
        (
            _,
            Some(Outcome {
                failure: Some(failure),
                ..
            }),
        ) => bail!("{}", failure_line(experiment, &failure)),
        (
            _,
            Some(Outcome {
                refused: Some(why), ..
            }),
        ) => bail!("{}: extra_files(): {why}", hook_file.display()),
        _ => bail!(
            "{}: evaluating extra_files() with {interpreter} in the image failed ({exit}): {}",
            hook_file.display(),
            log_tail()
        ),
    };
    for skipped in &outcome.skipped {
        eprintln!(
            "warning: {}: extra_files(): {skipped} (a launch writes it): nothing copied",
            hook_file.display()
        );
    }
    let mut memo = Memo { files: Vec::new() };
    for copied in outcome.files {
        let destination = check_destination(&copied.destination).map_err(|why| {
            anyhow::anyhow!(
                "{}: extra_files(): the destination of {} is {why}",
                hook_file.display(),
                copied.source
            )
        })?;
        if let Some(root) = NOT_THE_IMAGE
            .iter()
            .find(|root| is_under(&copied.real, root))
        {
            bail!(
                "{}: extra_files(): the source {} is {}, under {root}, which is the sandbox's and not the image's: name a file of the image or the experiment",
                hook_file.display(),
                copied.source,
                copied.real
            );
        }
        // First wins, as Dallinger skips a destination that exists.
        if memo.files.iter().any(|f| f.destination == destination) {
            continue;
        }
        let path = copied_file(&out, &copied.file)?;
        let digest = sha256_file(&path)?;
        let size = fs::metadata(&path)?.len();
        store.import_blob(&path, &digest, size)?;
        memo.files.push(MemoFile {
            destination,
            source: copied.source,
            digest,
            size,
        });
    }
    Ok(memo)
}

/// The result the program wrote, if it wrote one that parses.
fn read_outcome(out: &Path) -> Option<Outcome> {
    let path = out.join("result.json");
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > 64 << 20 {
        return None;
    }
    serde_json::from_slice(&fs::read(&path).ok()?).ok()
}

/// A copied file the program named: a plain file directly in `files/`.
fn copied_file(out: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        bail!("extra_files(): the sandbox named a copied file {name:?}");
    }
    let path = out.join("files").join(name);
    let meta = fs::symlink_metadata(&path)
        .with_context(|| format!("extra_files(): the copied file {name} is missing"))?;
    if !meta.is_file() {
        bail!("extra_files(): the copied file {name} is not a regular file");
    }
    Ok(path)
}

/// The one line for an exception in the hook (or in loading the
/// experiment): its traceback's last frame and the exception. Files of the
/// experiment are named by their path on the host.
fn failure_line(experiment: &Experiment, failure: &Failure) -> String {
    let file = match failure.file.as_deref() {
        Some(file) => match file.strip_prefix("/experiment/") {
            Some(rel) => experiment.dir.join(rel).display().to_string(),
            None => file.to_string(),
        },
        None => experiment.dir.join("experiment.py").display().to_string(),
    };
    let place = match (failure.line, &failure.function) {
        (Some(line), Some(function)) => format!("{file}:{line} in {function}"),
        (Some(line), None) => format!("{file}:{line}"),
        _ => file,
    };
    format!(
        "{place}: {} (raised in {}, evaluated in the sandbox with the image's Python; the build stops)",
        failure.exception, failure.during
    )
}

fn is_under(path: &str, root: &str) -> bool {
    path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

/// A destination as Dallinger 12.4 accepts it (`validate_explicit_provider_destination`):
/// relative to the experiment, inside it, POSIX, and not one of the paths
/// Dallinger writes itself or never deploys.
fn check_destination(rel: &str) -> std::result::Result<String, String> {
    if rel.is_empty() || rel == "." || rel.starts_with('/') {
        return Err(format!("{rel:?}, the experiment directory itself"));
    }
    if rel.contains('\\') {
        return Err(format!("{rel:?}, which is not a POSIX path"));
    }
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.iter().any(|p| matches!(*p, "" | "." | "..")) {
        return Err(format!(
            "{rel:?}, outside the experiment directory /experiment"
        ));
    }
    let reserved = RESERVED_ROOT_NAMES.contains(&parts[0])
        || parts.iter().any(|p| VCS_NAMES.contains(p))
        || parts
            .iter()
            .any(|p| *p == ".slugignore" || p.ends_with(".dockerignore"));
    if reserved {
        return Err(format!(
            "{rel:?}, which Dallinger reserves for its own files"
        ));
    }
    Ok(rel.to_string())
}

/// Writes the experiment tree (entries under `experiment/`) into the
/// overlay's upper directory: copies, never links, so nothing the hook
/// does reaches the experiment's own files.
fn seed(upper: &Path, tree: &LayerTree) -> Result<()> {
    fs::create_dir_all(upper.join("experiment"))?;
    for (path, node) in tree.iter() {
        let dest = upper.join(path);
        match node {
            Node::Dir => fs::create_dir_all(&dest)?,
            Node::File { content, .. } => {
                let mut reader = content.open()?;
                let mut file = fs::File::create(&dest)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
                std::io::copy(&mut reader, &mut file)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
            }
            Node::Symlink { target } => std::os::unix::fs::symlink(target, &dest)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An experiment directory with `experiment.py` (and config.txt).
    fn experiment_dir(experiment_py: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.txt"), "[Experiment]\n").unwrap();
        fs::write(dir.path().join("experiment.py"), experiment_py).unwrap();
        dir
    }

    #[test]
    fn destinations_follow_dallingers_rules() {
        assert_eq!(
            check_destination("static/images/logo.png").unwrap(),
            "static/images/logo.png"
        );
        for bad in [
            "",
            ".",
            "/etc/passwd",
            "../outside",
            "a/../../b",
            "a\\b",
            "config.txt",
            "requirements.txt",
            "deploy.toml",
            "static/.git/x",
            "x/.dockerignore",
        ] {
            assert!(check_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sandboxs_own_roots_are_not_the_image() {
        assert!(is_under("/proc/self/environ", "/proc"));
        assert!(is_under("/run", "/run"));
        assert!(!is_under("/runner/x", "/run"));
    }

    #[test]
    fn the_failure_line_names_the_experiments_file_on_the_host() {
        let dir = experiment_dir("x = 1\n");
        let experiment = Experiment::load(dir.path(), &Default::default()).unwrap();
        let line = failure_line(
            &experiment,
            &Failure {
                during: "extra_files()".into(),
                file: Some("/experiment/experiment.py".into()),
                line: Some(12),
                function: Some("extra_files".into()),
                exception: "RuntimeError: no logo".into(),
            },
        );
        assert_eq!(
            line,
            format!(
                "{}:12 in extra_files: RuntimeError: no logo (raised in extra_files(), evaluated in the sandbox with the image's Python; the build stops)",
                dir.path().join("experiment.py").display()
            )
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn only_an_experiment_that_can_have_the_hook_is_evaluated() {
        let dir = experiment_dir("class A: pass\n");
        let experiment = Experiment::load(dir.path(), &Default::default()).unwrap();
        assert!(!may_define_hook(&experiment, &["dallinger".into()]).unwrap());
        assert!(may_define_hook(&experiment, &["psynet".into()]).unwrap());
        fs::write(
            dir.path().join("helpers.py"),
            "def extra_files():\n    return []\n",
        )
        .unwrap();
        let experiment = Experiment::load(dir.path(), &Default::default()).unwrap();
        assert!(may_define_hook(&experiment, &[]).unwrap());
    }
}
