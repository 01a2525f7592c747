//! An experiment's own Dockerfile built without an engine: each stage from
//! its `FROM` (a registry or layout image through the base resolution,
//! `scratch`, or an earlier stage), each `RUN` in the sandbox on an overlay
//! over the stage so far (as prepare scripts run, `crate::prepare`), each
//! `COPY`/`ADD` a layer of the files it names, every other instruction a
//! change of the config. Every layer goes through the store, keyed by the
//! layers below, the instruction after substitution and the files it
//! reads, so an unchanged step is not run again and two builds give the
//! same bytes (unless a `RUN` had the network). Only the stages the target
//! needs are built.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use dallinger_oci_layers::{Content, KeyHasher, LayerTree};
use serde_json::{json, Value};

use super::parse::{self, Args, Heredoc, Instruction, Vars};
use crate::base::BaseImage;
use crate::experiment::{Experiment, FileKind};
use crate::image::store::{BlobStore, LayerDescription, ProducedLayer};
use crate::image::{config_env, rfc3339, unpack, ImageLayer};
use crate::prepare::{self, Change, OverlayRun};

/// `--native-python`: the Python layers for a stage's config and layers so far.
pub type PythonLayers<'a> = &'a dyn Fn(&Value, &[ImageLayer]) -> Result<Vec<ProducedLayer>>;

/// What a native build needs from the rest of the build.
pub struct NativeRequest<'a> {
    pub experiment: &'a Experiment,
    pub store: &'a BlobStore,
    /// `os/arch[/variant]`.
    pub platform: &'a str,
    pub epoch: u64,
    /// `--build-arg NAME=VALUE`.
    pub build_args: &'a [(String, String)],
    /// `--build-network`: `RUN` shares the host's network.
    pub network: bool,
    /// The stage to build (default: the last).
    pub target: Option<&'a str>,
    /// Resolves an image a `FROM` or `COPY --from` names (`scratch`,
    /// registry references, `oci:DIR[:TAG]`).
    pub resolve_image: &'a dyn Fn(&str) -> Result<BaseImage>,
    /// `--native-python`: the layers that replace a `RUN` that only installs
    /// the experiment's requirements, for the stage's image so far.
    pub native_python: Option<PythonLayers<'a>>,
}

/// The target stage's image.
pub struct NativeImage {
    pub config: Value,
    pub layers: Vec<ImageLayer>,
    /// The image the target stage's chain of `FROM`s starts from.
    pub base_name: Option<String>,
    pub base_digest: Option<String>,
    /// No `RUN` had the network.
    pub reproducible: bool,
    /// Its last layer came from the cache.
    pub last_reused: bool,
}

/// The instructions built natively (others stop the build).
const SUPPORTED: &str = "FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, LABEL, USER, EXPOSE, CMD, ENTRYPOINT, SHELL, VOLUME, STOPSIGNAL, MAINTAINER";

/// The experiment's Dockerfile, parsed and named as messages name it.
fn read(experiment: &Experiment) -> Result<(String, parse::Dockerfile)> {
    let dockerfile = experiment
        .files
        .iter()
        .find(|f| f.rel == "Dockerfile")
        .context("the experiment has no Dockerfile")?;
    let name = experiment.dir.join("Dockerfile").display().to_string();
    let text = match &dockerfile.kind {
        FileKind::File { source, .. } => {
            fs::read_to_string(source).with_context(|| format!("cannot read {name}"))?
        }
        FileKind::Generated { bytes, .. } => String::from_utf8_lossy(bytes).into_owned(),
        FileKind::Symlink { .. } => bail!("{name} is a symlink: make it a file"),
    };
    let parsed = parse::parse(&name, &text)?;
    Ok((name, parsed))
}

/// Stops before any work when the Dockerfile does not parse or uses an
/// instruction or option the native build does not support, naming its line.
pub fn check(experiment: &Experiment) -> Result<()> {
    let (name, parsed) = read(experiment)?;
    for ins in &parsed.instructions {
        let allowed: &[&str] = match ins.keyword.as_str() {
            "FROM" => &["platform"],
            "RUN" => &["network"],
            "COPY" => &["from", "chown", "chmod", "link"],
            "ADD" => &["chown", "chmod", "link"],
            k if SUPPORTED.split(", ").any(|s| s == k) => &[],
            other => return Err(unsupported(&name, ins, other)),
        };
        if let Some((flag, _)) = ins
            .flags
            .iter()
            .find(|(f, _)| !allowed.contains(&f.as_str()))
        {
            return Err(unsupported(
                &name,
                ins,
                &format!("{} --{flag}", ins.keyword),
            ));
        }
    }
    Ok(())
}

fn unsupported(name: &str, ins: &Instruction, what: &str) -> anyhow::Error {
    anyhow!(
        "{name}:{}: {what} is not supported by the native Dockerfile build (it builds {SUPPORTED}): \
         pass --dockerfile-engine podman|docker|buildah to build this Dockerfile with an engine",
        ins.line
    )
}

/// Builds the experiment's Dockerfile.
pub fn build(request: &NativeRequest) -> Result<NativeImage> {
    let (name, parsed) = read(request.experiment)?;
    let mut builder = Builder::new(request, name, parsed)?;
    let target = builder.target_index()?;
    let stage = builder.stage(target)?;
    let mut config = stage.config;
    config["created"] = json!(rfc3339(request.epoch)?);
    for unused in builder.unused_build_args() {
        eprintln!("warning: --build-arg {unused} is not declared by any ARG of the Dockerfile");
    }
    Ok(NativeImage {
        config,
        layers: stage.layers,
        base_name: stage.base_name,
        base_digest: stage.base_digest,
        reproducible: stage.reproducible,
        last_reused: stage.last_reused,
    })
}

/// A stage as built so far.
#[derive(Clone)]
struct Stage {
    config: Value,
    layers: Vec<ImageLayer>,
    /// The ARGs in scope, in order.
    args: Vec<(String, String)>,
    shell: Vec<String>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
    base_name: Option<String>,
    base_digest: Option<String>,
    reproducible: bool,
    /// The stage's last layer came from the cache.
    last_reused: bool,
    /// Directories this Dockerfile made or named (WORKDIR, directory
    /// copies): a copy to one of them goes inside it.
    dirs: BTreeSet<String>,
}

struct StageText {
    name: Option<String>,
    from: Instruction,
    body: Vec<Instruction>,
}

struct Builder<'a> {
    request: &'a NativeRequest<'a>,
    name: String,
    escape: char,
    /// ARGs before the first FROM, with their values.
    global: Vec<(String, String)>,
    stages: Vec<StageText>,
    built: BTreeMap<usize, Stage>,
    /// The stages being built (a cycle of --from is an error).
    building: BTreeSet<usize>,
    /// Which build args an ARG declared.
    used_args: BTreeSet<String>,
    context: BuildContext,
}

/// The build context: the experiment's file set, by path.
struct BuildContext {
    files: BTreeMap<String, FileKind>,
    dirs: BTreeSet<String>,
    /// The extra and Dallinger's files were added (`complete_context`).
    completed: bool,
    /// Unpacked trees context files are read from, kept while they are.
    held: Vec<unpack::Rootfs>,
}

impl BuildContext {
    fn of(experiment: &Experiment) -> Result<BuildContext> {
        let ignore = DockerIgnore::of(experiment)?;
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        dirs.insert(String::new());
        for file in &experiment.files {
            if file.rel == crate::plan::LOCK_FILE || ignore.excludes(&file.rel) {
                continue;
            }
            let mut parent = Path::new(&file.rel).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(p.to_string_lossy().into_owned());
                parent = p.parent();
            }
            files.insert(file.rel.clone(), file.kind.clone());
        }
        Ok(BuildContext {
            files,
            dirs,
            completed: false,
            held: Vec::new(),
        })
    }

    /// Adds `rel` unless the context has it (or it is a directory there).
    fn add_if_absent(&mut self, rel: &str, kind: FileKind) -> bool {
        if self.files.contains_key(rel) || self.dirs.contains(rel) {
            return false;
        }
        let mut parent = Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        self.files.insert(rel.to_string(), kind);
        true
    }
}

/// `rel` below `dir` when each of its components is a directory and none
/// a symlink. An image's unpacked tree is read on this machine only this
/// way: a link in it could point anywhere here (`/etc`, `/root`).
fn real_dir(dir: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = dir.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        if !path.symlink_metadata().ok()?.is_dir() {
            return None;
        }
    }
    Some(path)
}

/// The Python site directories of an unpacked image (Debian's
/// `dist-packages`, others' `site-packages`), none through a symlink.
fn site_dirs(root: &Path) -> Vec<PathBuf> {
    let mut sites: Vec<PathBuf> = real_dir(root, "usr/lib/python3/dist-packages")
        .into_iter()
        .collect();
    for lib in ["usr/local/lib", "usr/lib"] {
        let Some(Ok(entries)) = real_dir(root, lib).map(fs::read_dir) else {
            continue;
        };
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        versions.sort();
        for dir in versions {
            sites.extend(real_dir(&dir, "dist-packages"));
            sites.extend(real_dir(&dir, "site-packages"));
        }
    }
    sites
}

/// Normalised names of the distributions installed in `sites`.
fn installed_distributions(sites: &[PathBuf]) -> Vec<String> {
    let mut names = BTreeSet::new();
    for site in sites {
        let Ok(entries) = fs::read_dir(site) else {
            continue;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".dist-info") {
                let project = stem.split_once('-').map_or(stem, |(p, _)| p);
                names.insert(crate::python::spec::normalise_name(project));
            }
        }
    }
    names.into_iter().collect()
}

/// Regular files below `dir`, with paths relative to it under `prefix`.
fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if rel.ends_with("__pycache__") {
                continue;
            }
            collect_files(&entry.path(), &rel, out)?;
        } else if kind.is_file() {
            out.push((rel, entry.path()));
        }
    }
    Ok(())
}

/// The context's `.dockerignore`, as docker reads it (moby's
/// patternmatcher): one pattern a line, `#` comments, `!` exceptions, the
/// last matching pattern deciding, a pattern that matches a directory
/// excluding what is below it, `**` any number of directories. With a
/// `deploy.toml` (Dallinger 12.4) it has no effect, as there.
struct DockerIgnore {
    patterns: Vec<(globset::GlobMatcher, bool)>,
}

impl DockerIgnore {
    fn of(experiment: &Experiment) -> Result<DockerIgnore> {
        let file = experiment.files.iter().find(|f| f.rel == ".dockerignore");
        let Some(file) = file.filter(|_| !experiment.dir.join("deploy.toml").is_file()) else {
            return Ok(DockerIgnore {
                patterns: Vec::new(),
            });
        };
        let name = experiment.dir.join(".dockerignore");
        let (content, _) = source_content(&file.kind);
        let mut text = String::new();
        content.open()?.read_to_string(&mut text)?;
        DockerIgnore::parse(&name.display().to_string(), &text)
    }

    fn parse(name: &str, text: &str) -> Result<DockerIgnore> {
        let mut patterns = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = clean_rel(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = globset::GlobBuilder::new(&pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .with_context(|| format!("{name}:{}: {line:?} is not a pattern", n + 1))?;
            patterns.push((glob.compile_matcher(), exception));
        }
        Ok(DockerIgnore { patterns })
    }

    fn excludes(&self, rel: &str) -> bool {
        let mut excluded = false;
        for (matcher, exception) in &self.patterns {
            // The path or one of its parent directories.
            let mut candidate = Some(rel);
            let mut matched = false;
            while let Some(path) = candidate {
                if matcher.is_match(path) {
                    matched = true;
                    break;
                }
                candidate = path.rsplit_once('/').map(|(parent, _)| parent);
            }
            if matched {
                excluded = !exception;
            }
        }
        excluded
    }
}

impl<'a> Builder<'a> {
    fn new(request: &'a NativeRequest, name: String, parsed: parse::Dockerfile) -> Result<Self> {
        let mut builder = Builder {
            request,
            name,
            escape: parsed.escape,
            global: predefined_args(request.platform),
            stages: Vec::new(),
            built: BTreeMap::new(),
            building: BTreeSet::new(),
            used_args: BTreeSet::new(),
            context: BuildContext::of(request.experiment)?,
        };
        let mut instructions = parsed.instructions.into_iter().peekable();
        // ARGs before the first FROM are in scope for the FROMs.
        while let Some(ins) = instructions.next_if(|i| i.keyword != "FROM") {
            if ins.keyword != "ARG" {
                bail!(
                    "{}:{}: {} before the first FROM: only ARG may come before it",
                    builder.name,
                    ins.line,
                    ins.keyword
                );
            }
            let pairs = builder.pairs(&ins, &builder.global.clone())?;
            for (key, default) in pairs {
                let value = builder.arg_value(&key, default, &[]);
                builder.global.retain(|(k, _)| *k != key);
                if let Some(value) = value {
                    builder.global.push((key, value));
                }
            }
        }
        for ins in instructions {
            if ins.keyword == "FROM" {
                let words = match &ins.args {
                    Args::Shell(text) => text.split_whitespace().map(String::from).collect(),
                    Args::Json(words) => words.clone(),
                };
                let name = match words.as_slice() {
                    [_] => None,
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        Some(name.to_ascii_lowercase())
                    }
                    _ => bail!(
                        "{}:{}: FROM takes IMAGE [AS NAME], not {:?}",
                        builder.name,
                        ins.line,
                        ins.text
                    ),
                };
                builder.stages.push(StageText {
                    name,
                    from: ins,
                    body: Vec::new(),
                });
            } else {
                builder
                    .stages
                    .last_mut()
                    .expect("instructions before FROM are handled above")
                    .body
                    .push(ins);
            }
        }
        if builder.stages.is_empty() {
            bail!(
                "{}: no FROM: a Dockerfile starts with FROM IMAGE",
                builder.name
            );
        }
        Ok(builder)
    }

    fn target_index(&self) -> Result<usize> {
        match self.request.target {
            None => Ok(self.stages.len() - 1),
            Some(target) => self.stage_named(target).with_context(|| {
                format!(
                    "{}: no stage named {target:?} (--target): name one with FROM IMAGE AS {target}",
                    self.name
                )
            }),
        }
    }

    fn stage_named(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .filter(|i| *i < self.stages.len())
            })
    }

    fn unused_build_args(&self) -> Vec<String> {
        self.request
            .build_args
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !self.used_args.contains(k))
            .collect()
    }

    /// An ARG's value: `--build-arg`, else its default, else the global one.
    fn arg_value(
        &mut self,
        key: &str,
        default: Option<String>,
        global: &[(String, String)],
    ) -> Option<String> {
        if let Some((_, v)) = self.request.build_args.iter().rev().find(|(k, _)| k == key) {
            self.used_args.insert(key.to_string());
            return Some(v.clone());
        }
        default.or_else(|| global.lookup(key))
    }

    fn at(&self, ins: &Instruction) -> String {
        format!("{}:{}", self.name, ins.line)
    }

    fn unsupported(&self, ins: &Instruction, what: &str) -> anyhow::Error {
        unsupported(&self.name, ins, what)
    }

    fn pairs(&self, ins: &Instruction, vars: &dyn Vars) -> Result<Vec<(String, Option<String>)>> {
        let text = shell_text(ins);
        parse::expand_pairs(&text, vars, self.escape, &ins.keyword)
            .with_context(|| format!("{}: {}", self.at(ins), ins.text))
    }

    /// The stage `index`, built (once).
    fn stage(&mut self, index: usize) -> Result<Stage> {
        if let Some(done) = self.built.get(&index) {
            return Ok(done.clone());
        }
        let from = self.stages[index].from.clone();
        if !self.building.insert(index) {
            bail!(
                "{}: the stage of this FROM needs itself (through COPY --from): break the cycle",
                self.at(&from)
            );
        }
        let body = self.stages[index].body.clone();
        let mut stage = self.from(&from, index)?;
        for ins in &body {
            self.instruction(&mut stage, ins)?;
        }
        self.building.remove(&index);
        self.built.insert(index, stage.clone());
        Ok(stage)
    }

    fn from(&mut self, ins: &Instruction, index: usize) -> Result<Stage> {
        for (flag, value) in &ins.flags {
            match (flag.as_str(), value) {
                ("platform", Some(p)) => {
                    let p = parse::expand_word(p, &self.global, self.escape)?;
                    let wanted = crate::image::platform::Platform::parse(&p)
                        .with_context(|| format!("{}: --platform={p}", self.at(ins)))?
                        .to_string();
                    if wanted != self.request.platform {
                        bail!(
                            "{}: FROM --platform={p} differs from the build's platform {}: pass --platform {p}",
                            self.at(ins),
                            self.request.platform
                        );
                    }
                }
                _ => return Err(self.unsupported(ins, &format!("FROM --{flag}"))),
            }
        }
        let words = match &ins.args {
            Args::Shell(text) => text
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
            Args::Json(words) => words.clone(),
        };
        let image = parse::expand_word(&words[0], &self.global, self.escape)
            .with_context(|| format!("{}: {}", self.at(ins), ins.text))?;
        if image.is_empty() {
            bail!("{}: FROM names no image ({})", self.at(ins), ins.text);
        }
        if let Some(earlier) = self.stage_named(&image).filter(|i| {
            *i < index && self.stages[*i].name.as_deref() == Some(&image.to_ascii_lowercase())
        }) {
            let mut stage = self.stage(earlier)?;
            stage.args.clear();
            stage.cmd_set = false;
            return Ok(stage);
        }
        if self
            .stages
            .iter()
            .skip(index)
            .any(|s| s.name.as_deref() == Some(&image.to_ascii_lowercase()))
        {
            bail!(
                "{}: FROM {image} names this stage or a later one: a stage can only build on an earlier one",
                self.at(ins)
            );
        }
        let base = (self.request.resolve_image)(&image)
            .with_context(|| format!("{}: FROM {image}", self.at(ins)))?;
        let mut config = base.config.clone();
        placeholder_history(&mut config, base.layers.len(), self.request.epoch)?;
        let digest = base.digest.clone();
        Ok(Stage {
            config,
            layers: base.layers,
            args: Vec::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
            base_name: base.name.or(Some(image)),
            base_digest: digest,
            reproducible: true,
            last_reused: true,
            dirs: BTreeSet::new(),
        })
    }

    fn instruction(&mut self, stage: &mut Stage, ins: &Instruction) -> Result<()> {
        let keyword = ins.keyword.as_str();
        if !ins.flags.is_empty() && !matches!(keyword, "RUN" | "COPY" | "ADD") {
            return Err(self.unsupported(ins, &format!("{keyword} --{}", ins.flags[0].0)));
        }
        let vars = stage_vars(stage);
        match keyword {
            "RUN" => self.run(stage, ins),
            "COPY" | "ADD" => self.copy(stage, ins),
            "ENV" => {
                let pairs = self.pairs(ins, &vars)?;
                let mut shown = Vec::new();
                for (key, value) in pairs {
                    let value = value.unwrap_or_default();
                    shown.push(format!("{key}={value}"));
                    set_env(&mut stage.config, &key, &value)?;
                }
                config_step(
                    stage,
                    &format!("ENV {}", shown.join(" ")),
                    self.request.epoch,
                )
            }
            "ARG" => {
                let pairs = self.pairs(ins, &vars)?;
                for (key, default) in pairs {
                    let global = self.global.clone();
                    let value = self.arg_value(&key, default, &global);
                    stage.args.retain(|(k, _)| *k != key);
                    if let Some(value) = value {
                        stage.args.push((key, value));
                    }
                }
                Ok(())
            }
            "WORKDIR" => {
                let dir = self.word(ins, &vars)?;
                let dir = absolute(&workdir(stage), &dir);
                stage.dirs.insert(dir.clone());
                inner(&mut stage.config)?.insert("WorkingDir".into(), json!(dir));
                config_step(stage, &format!("WORKDIR {dir}"), self.request.epoch)
            }
            "LABEL" => {
                let pairs = self.pairs(ins, &vars)?;
                let mut labels = BTreeMap::new();
                let mut shown = Vec::new();
                for (key, value) in pairs {
                    let value = value.unwrap_or_default();
                    shown.push(format!("{key}={value}"));
                    labels.insert(key, value);
                }
                crate::image::add_labels(&mut stage.config, &labels)?;
                config_step(
                    stage,
                    &format!("LABEL {}", shown.join(" ")),
                    self.request.epoch,
                )
            }
            "MAINTAINER" => {
                let who = shell_text(ins);
                stage.config["author"] = json!(who);
                config_step(stage, &format!("MAINTAINER {who}"), self.request.epoch)
            }
            "USER" => {
                let user = self.word(ins, &vars)?;
                if user.is_empty() {
                    bail!("{}: USER names no user", self.at(ins));
                }
                inner(&mut stage.config)?.insert("User".into(), json!(user));
                config_step(stage, &format!("USER {user}"), self.request.epoch)
            }
            "EXPOSE" => {
                let ports = parse::expand_words(&shell_text(ins), &vars, self.escape)
                    .with_context(|| self.at(ins))?;
                let inner = inner(&mut stage.config)?;
                let exposed = inner.entry("ExposedPorts").or_insert_with(|| json!({}));
                if exposed.is_null() {
                    *exposed = json!({});
                }
                for port in &ports {
                    let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
                    let valid = !number.is_empty()
                        && number.split('-').all(|n| n.parse::<u16>().is_ok())
                        && matches!(proto, "tcp" | "udp" | "sctp");
                    if !valid {
                        bail!(
                            "{}: EXPOSE {port} is not a port (80, 80/tcp, 53/udp)",
                            self.at(ins)
                        );
                    }
                    exposed[format!("{number}/{}", proto.to_ascii_lowercase())] = json!({});
                }
                config_step(
                    stage,
                    &format!("EXPOSE {}", ports.join(" ")),
                    self.request.epoch,
                )
            }
            "CMD" | "ENTRYPOINT" => {
                let argv = match &ins.args {
                    Args::Json(words) => words.clone(),
                    Args::Shell(text) => {
                        let mut argv = stage.shell.clone();
                        argv.push(text.clone());
                        argv
                    }
                };
                let field = if keyword == "CMD" {
                    "Cmd"
                } else {
                    "Entrypoint"
                };
                let config = inner(&mut stage.config)?;
                config.insert(field.into(), json!(argv));
                if keyword == "CMD" {
                    stage.cmd_set = true;
                } else if !stage.cmd_set {
                    // An ENTRYPOINT drops the base image's CMD, as docker does.
                    config.insert("Cmd".into(), Value::Null);
                }
                config_step(
                    stage,
                    &format!("{keyword} {}", serde_json::to_string(&argv)?),
                    self.request.epoch,
                )
            }
            "SHELL" => match &ins.args {
                Args::Json(words) if !words.is_empty() => {
                    stage.shell = words.clone();
                    inner(&mut stage.config)?.insert("Shell".into(), json!(words));
                    config_step(
                        stage,
                        &format!("SHELL {}", serde_json::to_string(words)?),
                        self.request.epoch,
                    )
                }
                _ => bail!(
                    "{}: SHELL takes a JSON list, e.g. SHELL [\"/bin/bash\", \"-c\"]",
                    self.at(ins)
                ),
            },
            "VOLUME" => {
                let volumes = match &ins.args {
                    Args::Json(words) => words.clone(),
                    Args::Shell(text) => parse::expand_words(text, &vars, self.escape)
                        .with_context(|| self.at(ins))?,
                };
                let inner = inner(&mut stage.config)?;
                let entry = inner.entry("Volumes").or_insert_with(|| json!({}));
                if entry.is_null() {
                    *entry = json!({});
                }
                for v in &volumes {
                    entry[v.as_str()] = json!({});
                }
                config_step(stage, &format!("VOLUME {volumes:?}"), self.request.epoch)
            }
            "STOPSIGNAL" => {
                let signal = self.word(ins, &vars)?;
                inner(&mut stage.config)?.insert("StopSignal".into(), json!(signal));
                config_step(stage, &format!("STOPSIGNAL {signal}"), self.request.epoch)
            }
            "FROM" => unreachable!("stages are split at FROM"),
            other => Err(self.unsupported(ins, other)),
        }
    }

    fn word(&self, ins: &Instruction, vars: &dyn Vars) -> Result<String> {
        parse::expand_word(&shell_text(ins), vars, self.escape)
            .with_context(|| format!("{}: {}", self.at(ins), ins.text))
    }

    fn run(&mut self, stage: &mut Stage, ins: &Instruction) -> Result<()> {
        let mut network = self.request.network;
        for (flag, value) in &ins.flags {
            match (flag.as_str(), value.as_deref()) {
                ("network", Some("none")) => network = false,
                ("network", Some("default")) => {}
                ("network", Some("host")) if self.request.network => network = true,
                ("network", Some("host")) => bail!(
                    "{}: RUN --network=host needs --build-network (the image is then not reproducible)",
                    self.at(ins)
                ),
                _ => return Err(self.unsupported(ins, &format!("RUN --{flag}"))),
            }
        }
        let epoch = self.request.epoch;
        // `--native-python`: our locked layers instead of a pip install.
        if let (Some(native), Args::Shell(text)) = (self.request.native_python, &ins.args) {
            if ins.heredocs.is_empty() && installs_requirements(text) {
                eprintln!(
                    "{}: `{text}` replaced by dallinger-oci's locked Python layers (--native-python)",
                    self.at(ins)
                );
                let produced = native(&stage.config, &stage.layers)
                    .with_context(|| format!("{}: --native-python", self.at(ins)))?;
                for layer in produced {
                    let created_by = format!("RUN {text} # {}", layer.created_by);
                    stage.last_reused = layer.reused;
                    push_layer(stage, layer.layer, &created_by, epoch)?;
                }
                return Ok(());
            }
        }
        let mut seeded = Vec::new();
        let argv = match &ins.args {
            Args::Json(words) if ins.heredocs.is_empty() => {
                if words.is_empty() {
                    bail!("{}: RUN [] runs nothing", self.at(ins));
                }
                words.clone()
            }
            Args::Json(_) => return Err(self.unsupported(ins, "RUN in JSON form with a heredoc")),
            Args::Shell(text) => {
                let only = ins.heredocs.len() == 1
                    && (text == &format!("<<{}", ins.heredocs[0].name)
                        || text == &format!("<<-{}", ins.heredocs[0].name)
                        || text == &format!("<<\"{}\"", ins.heredocs[0].name)
                        || text == &format!("<<'{}'", ins.heredocs[0].name));
                let mut argv = stage.shell.clone();
                if only && ins.heredocs[0].body.starts_with("#!") {
                    // A script with its own interpreter runs as a file.
                    let rel = format!(".dallinger-oci-heredoc-{}", ins.line);
                    seeded.push(prepare::Seed {
                        rel: rel.clone(),
                        bytes: ins.heredocs[0].body.clone().into_bytes(),
                        mode: 0o755,
                    });
                    vec![format!("/{rel}")]
                } else if only {
                    argv.push(ins.heredocs[0].body.clone());
                    argv
                } else {
                    // The shell reads the heredocs itself.
                    let mut script = text.clone();
                    for heredoc in &ins.heredocs {
                        script.push('\n');
                        script.push_str(&heredoc.body);
                        script.push_str(&heredoc.name);
                    }
                    argv.push(script);
                    argv
                }
            }
        };
        let (uid, gid) = self.user_ids(stage, ins)?;
        let mut env = config_env(&stage.config);
        for (k, v) in &stage.args {
            if !env.iter().any(|(e, _)| e == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        let defaults = [
            ("PATH", prepare::DEFAULT_PATH.to_string()),
            ("HOME", if uid == 0 { "/root".into() } else { "/".into() }),
            ("SOURCE_DATE_EPOCH", epoch.to_string()),
        ];
        for (k, v) in defaults {
            if !env.iter().any(|(e, _)| e == k) {
                env.push((k.to_string(), v));
            }
        }
        let dir = workdir(stage);
        let what = format!("{} RUN", self.at(ins));
        let mut key = KeyHasher::new();
        key.str("dockerfile-run/1")
            .list(stage.layers.iter(), |key, l| {
                key.str(&l.blob.digest);
            })
            .list(argv.iter(), |key, a| {
                key.str(a);
            })
            .list(env.iter(), |key, (k, v)| {
                key.str(k).str(v);
            })
            .str(&dir)
            .u64(uid.into())
            .u64(gid.into())
            .bool(network)
            .list(seeded.iter(), |key, s| {
                key.str(&s.rel).bytes(&s.bytes);
            });
        let shown = argv.join(" ");
        let created_by = format!("RUN {shown}");
        if network {
            stage.reproducible = false;
            eprintln!(
                "{what}: with the host's network (--build-network): the image's digest is not reproducible"
            );
        }
        let layers = stage.layers.clone();
        let store = self.request.store;
        let at = self.at(ins);
        let produced = store.produce(LayerDescription {
            kind: "dockerfile-run",
            key,
            created_by: created_by.clone(),
            fill: Box::new(move |writer| {
                store.fetch_missing(&layers)?;
                let rootfs = unpack::cached_rootfs(store, &layers)?;
                // WORKDIR makes its directory, owned by the user.
                let mkdirs = match followed_in_root(&rootfs, &dir) {
                    Some(p) if p.is_dir() => Vec::new(),
                    _ => vec![dir.trim_start_matches('/').to_string()],
                };
                let run = OverlayRun {
                    layers: &layers,
                    argv,
                    env,
                    workdir: dir.clone(),
                    user: (uid, gid),
                    network,
                    seeded,
                    mkdirs,
                    what: &what,
                };
                eprintln!("{at}: running `{shown}` in the sandbox");
                let (exit, ran) = prepare::run_on_overlay(store, &run)?;
                if !exit.success() {
                    bail!(
                        "{at}: RUN failed ({exit}); its output is above{}",
                        if network {
                            ""
                        } else {
                            " (it ran without network: pass --build-network if it downloads, or --native-python for a pip install of the requirements)"
                        }
                    );
                }
                let mut entries = Vec::new();
                prepare::overlay_changes(&ran, &run, |rel, meta, change| {
                    let new = in_root(&ran.lower, rel).is_none();
                    let (u, g) = if new { (uid, gid) } else { (0, 0) };
                    let mode = meta.permissions().mode() & 0o7777;
                    let kind = match change {
                        Change::Deleted => {
                            entries.push(Entry::whiteout(rel));
                            return Ok(());
                        }
                        Change::Dir { opaque } => {
                            if opaque {
                                entries.push(Entry::file(
                                    &format!("{rel}/.wh..wh..opq"),
                                    Content::Bytes(Vec::new()),
                                    0o644,
                                    (0, 0),
                                ));
                            }
                            EntryKind::Dir
                        }
                        Change::Symlink { target } => EntryKind::Symlink(target),
                        Change::File { path } => EntryKind::File(Content::File(path.into())),
                    };
                    entries.push(Entry {
                        path: rel.to_string(),
                        kind,
                        mode,
                        owner: (u, g),
                    });
                    Ok(())
                })?;
                write_entries(writer, store, entries, &[])
            }),
        })?;
        report(&self.at(ins), &produced);
        stage.last_reused = produced.reused;
        push_layer(stage, produced.layer, &created_by, epoch)
    }

    /// The uid and gid of the stage's USER (root without one), from the
    /// image's /etc/passwd and /etc/group for names.
    fn user_ids(&self, stage: &Stage, ins: &Instruction) -> Result<(u32, u32)> {
        let user = stage
            .config
            .pointer("/config/User")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if user.is_empty() {
            return Ok((0, 0));
        }
        self.owner(stage, &stage.layers, ins, &user, "USER")
    }

    /// `USER[:GROUP]` as ids, names looked up in the image `layers`.
    fn owner(
        &self,
        _stage: &Stage,
        layers: &[ImageLayer],
        ins: &Instruction,
        spec: &str,
        what: &str,
    ) -> Result<(u32, u32)> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let numeric = |s: &str| s.parse::<u32>().ok();
        let needs_files = numeric(user).is_none() || group.is_some_and(|g| numeric(g).is_none());
        let (passwd, groups) = if needs_files || group.is_none() {
            let store = self.request.store;
            if layers.is_empty() {
                (String::new(), String::new())
            } else {
                store.fetch_missing(layers)?;
                let root = unpack::cached_rootfs(store, layers)?;
                let read = |rel: &str| {
                    followed_in_root(&root, rel)
                        .and_then(|p| fs::read_to_string(p).ok())
                        .unwrap_or_default()
                };
                (read("etc/passwd"), read("etc/group"))
            }
        } else {
            (String::new(), String::new())
        };
        let account = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && (f[0] == user || numeric(user).is_some_and(|n| f[2] == n.to_string())))
                .then(|| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
        });
        let uid = match numeric(user) {
            Some(n) => n,
            None => account.and_then(|a| a.0).with_context(|| {
                format!(
                    "{}: {what} {spec}: the image has no user {user} in /etc/passwd: add it first (RUN useradd) or give a number",
                    self.at(ins)
                )
            })?,
        };
        let gid = match group {
            None => account.and_then(|a| a.1).unwrap_or(0),
            Some(g) => match numeric(g) {
                Some(n) => n,
                None => groups
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g).then(|| f[2].parse::<u32>().ok())?
                    })
                    .with_context(|| {
                        format!(
                            "{}: {what} {spec}: the image has no group {g} in /etc/group",
                            self.at(ins)
                        )
                    })?,
            },
        };
        Ok((uid, gid))
    }

    fn copy(&mut self, stage: &mut Stage, ins: &Instruction) -> Result<()> {
        let add = ins.keyword == "ADD";
        let vars = stage_vars(stage);
        let mut from = None;
        let mut chown = None;
        let mut chmod = None;
        for (flag, value) in &ins.flags {
            let value = value
                .as_deref()
                .map(|v| parse::expand_word(v, &vars, self.escape))
                .transpose()?;
            match (flag.as_str(), value) {
                ("from", Some(v)) if !add => from = Some(v),
                ("chown", Some(v)) => chown = Some(v),
                ("chmod", Some(v)) => {
                    let mode = u32::from_str_radix(&v, 8).ok().filter(|m| *m <= 0o7777);
                    chmod = Some(mode.with_context(|| {
                        format!(
                            "{}: --chmod={v} is not an octal mode such as 0755",
                            self.at(ins)
                        )
                    })?);
                }
                ("link", None) => {}
                _ => return Err(self.unsupported(ins, &format!("{} --{flag}", ins.keyword))),
            }
        }
        let words = match &ins.args {
            Args::Json(words) => words.clone(),
            Args::Shell(text) => parse::expand_words(text, &vars, self.escape)
                .with_context(|| format!("{}: {}", self.at(ins), ins.text))?,
        };
        if words.len() < 2 {
            bail!(
                "{}: {} needs a source and a destination ({})",
                self.at(ins),
                ins.keyword,
                ins.text
            );
        }
        let (sources, dest) = words.split_at(words.len() - 1);
        let dest_text = &dest[0];
        let dest = absolute(&workdir(stage), dest_text);
        let owner = match &chown {
            Some(spec) => self.owner(stage, &stage.layers, ins, spec, "--chown")?,
            None => (0, 0),
        };
        // Where the files come from.
        let source_root = match &from {
            None => None,
            Some(name) => {
                let layers = match self.stage_named(name) {
                    Some(i) => self.stage(i)?.layers,
                    None => {
                        (self.request.resolve_image)(name)
                            .with_context(|| format!("{}: COPY --from={name}", self.at(ins)))?
                            .layers
                    }
                };
                self.request.store.fetch_missing(&layers)?;
                Some(unpack::cached_rootfs(self.request.store, &layers)?)
            }
        };
        if source_root.is_none() && sources.iter().any(|s| clean_rel(s).is_empty()) {
            self.complete_context(stage, ins)?;
        }
        let mut picked: Vec<Picked> = Vec::new();
        for source in sources {
            if let Some(name) = source.strip_prefix("<<").map(|n| n.trim_start_matches('-')) {
                let name = name.trim_matches(|c| c == '"' || c == '\'');
                if let Some(h) = ins.heredocs.iter().find(|h| h.name == name) {
                    picked.push(Picked::Heredoc(self.heredoc_body(h, &vars)?, name.into()));
                    continue;
                }
            }
            if add && (source.contains("://") || source.starts_with("git@")) {
                return Err(self.unsupported(ins, &format!("ADD of a URL ({source})")));
            }
            let found = match &source_root {
                None => self.context_sources(source),
                Some(root) => root_sources(root, source),
            };
            if found.is_empty() && !has_glob(source) {
                bail!(
                    "{}: {} {source}: no such file or directory in the {}",
                    self.at(ins),
                    ins.keyword,
                    match &from {
                        None => "build context (the experiment's file set)".to_string(),
                        Some(f) => format!("image of --from={f}"),
                    }
                );
            }
            picked.extend(found);
        }
        if picked.is_empty() {
            // Globs that match nothing copy nothing, as BuildKit has it.
            return config_step(
                stage,
                &format!(
                    "{} {} {dest} (no file matched)",
                    ins.keyword,
                    sources.join(" ")
                ),
                self.request.epoch,
            );
        }
        let into_dir = dest_text.ends_with('/')
            || picked.len() > 1
            || dest_text == "."
            || dest == "/"
            || stage.dirs.contains(&dest)
            || STANDARD_DIRS.contains(&dest.as_str())
            || matches!(&picked[0], Picked::Dir(..));
        if picked.len() > 1 && !dest_text.ends_with('/') && dest_text != "." {
            bail!(
                "{}: {} of several sources needs a destination directory ending in /, not {dest_text}",
                self.at(ins),
                ins.keyword
            );
        }
        let dest_rel = dest.trim_start_matches('/').to_string();
        let mut entries = Vec::new();
        let mut tars = Vec::new();
        let mode_of = |executable: bool, dir: bool| {
            chmod.unwrap_or(if dir || executable { 0o755 } else { 0o644 })
        };
        let join = |base: &str, name: &str| -> String {
            if base.is_empty() {
                name.to_string()
            } else {
                format!("{base}/{name}")
            }
        };
        for item in picked {
            match item {
                Picked::Heredoc(body, name) => {
                    let path = if into_dir {
                        join(&dest_rel, &name)
                    } else {
                        dest_rel.clone()
                    };
                    entries.push(Entry::file(
                        &path,
                        Content::Bytes(body.into_bytes()),
                        mode_of(false, false),
                        owner,
                    ));
                }
                Picked::File(rel, kind) if add && is_archive(&kind)? => {
                    let _ = rel;
                    tars.push(kind);
                }
                Picked::File(rel, kind) => {
                    let name = Path::new(&rel)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or(rel.clone());
                    let path = if into_dir {
                        join(&dest_rel, &name)
                    } else {
                        dest_rel.clone()
                    };
                    entries.push(file_entry(&path, kind, &mode_of, owner));
                }
                Picked::Dir(rel, contents) => {
                    if !dest_rel.is_empty() {
                        entries.push(Entry {
                            path: dest_rel.clone(),
                            kind: EntryKind::Dir,
                            mode: mode_of(false, true),
                            owner,
                        });
                    }
                    stage.dirs.insert(dest.clone());
                    for (sub, kind) in contents {
                        let inner = sub
                            .strip_prefix(&rel)
                            .unwrap_or(&sub)
                            .trim_start_matches('/');
                        if inner.is_empty() {
                            continue;
                        }
                        let path = join(&dest_rel, inner);
                        match kind {
                            None => entries.push(Entry {
                                path,
                                kind: EntryKind::Dir,
                                mode: mode_of(false, true),
                                owner,
                            }),
                            Some(kind) => entries.push(file_entry(&path, kind, &mode_of, owner)),
                        }
                    }
                }
            }
        }
        if dest_rel.is_empty() && !tars.is_empty() {
            // extraction at the root: fine.
        }
        let store = self.request.store;
        let mut key = KeyHasher::new();
        key.str("dockerfile-copy/1")
            .list(stage.layers.iter(), |key, l| {
                key.str(&l.blob.digest);
            })
            .str(&ins.keyword)
            .str(&format!("{from:?} {chown:?} {chmod:?}"))
            .str(&dest)
            .u64(owner.0.into())
            .u64(owner.1.into());
        for e in &entries {
            e.add_to_key(&mut key)?;
        }
        for t in &tars {
            let (content, _) = source_content(t);
            let reader = content.open()?;
            let len = reader.len();
            key.str("tar").stream(len, reader)?;
        }
        let shown = format!(
            "{}{} {} {dest}",
            ins.keyword,
            ins.flags
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!(" --{k}={v}"),
                    None => format!(" --{k}"),
                })
                .collect::<String>(),
            sources.join(" ")
        );
        let tar_dest = dest_rel.clone();
        // --chown applies to what an ADD extracts as well.
        let tar_owner = chown.is_some().then_some(owner);
        let produced = store.produce(LayerDescription {
            kind: "dockerfile-copy",
            key,
            created_by: shown.clone(),
            fill: Box::new(move |writer| {
                let tars: Vec<Extract> = tars
                    .iter()
                    .map(|t| Extract {
                        content: source_content(t).0,
                        dest: tar_dest.clone(),
                        owner: tar_owner,
                    })
                    .collect();
                write_entries(writer, store, entries, &tars)
            }),
        })?;
        report(&self.at(ins), &produced);
        stage.last_reused = produced.reused;
        push_layer(stage, produced.layer, &shown, self.request.epoch)
    }

    fn heredoc_body(&self, heredoc: &Heredoc, vars: &dyn Vars) -> Result<String> {
        if !heredoc.expand {
            return Ok(heredoc.body.clone());
        }
        parse::expand_variables(&heredoc.body, vars, self.escape)
    }

    /// Dallinger's staging directory, which is the context of Dallinger's
    /// own Dockerfile builds, also holds what the experiment's
    /// `extra_files()` names and Dallinger's frontend files (its
    /// `collate_experiment_files`, on the host's Python). Here both come
    /// from the image the Dockerfile has made when it first copies the
    /// whole context (`COPY . DEST`, as Dallinger's and PsyNet's
    /// Dockerfiles do after their installs): the hook is evaluated in the
    /// sandbox on that image, and the frontend files are its installed
    /// Dallinger's. Each goes in where the context has nothing, extra
    /// files first, as in a build without a Dockerfile.
    fn complete_context(&mut self, stage: &Stage, ins: &Instruction) -> Result<()> {
        if self.context.completed {
            return Ok(());
        }
        self.context.completed = true;
        let store = self.request.store;
        let experiment = self.request.experiment;
        store.fetch_missing(&stage.layers)?;
        let rootfs = unpack::cached_rootfs(store, &stage.layers)?;
        let sites = site_dirs(&rootfs);
        let installed = installed_distributions(&sites);
        let interpreter = ["/usr/local/bin/python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| rootfs.join(&p[1..]).symlink_metadata().is_ok());
        let mut added = 0usize;
        if let Some(interpreter) = interpreter {
            let tree = crate::build::experiment_tree(experiment)?;
            let hook = crate::experiment::extra_files::HookRequest {
                experiment,
                tree: &tree,
                layers: &stage.layers,
                config: &stage.config,
                interpreter: Some(interpreter),
                installed: &installed,
                adding_up: false,
            };
            for extra in crate::experiment::extra_files::extra_files(store, &hook)? {
                let Content::File(source) = extra.content else {
                    continue;
                };
                added += self.context.add_if_absent(
                    &extra.rel,
                    FileKind::File {
                        source,
                        executable: false,
                    },
                ) as usize;
            }
        }
        if let Some(dallinger) = sites
            .iter()
            .find_map(|site| real_dir(site, "dallinger/frontend"))
            .and_then(|frontend| frontend.parent().map(Path::to_path_buf))
        {
            let clock_on = experiment.clock_on();
            let mut files = Vec::new();
            collect_files(&dallinger.join("frontend"), "", &mut files)?;
            let procfile = if clock_on {
                "Procfile"
            } else {
                "Procfile_no_clock"
            };
            let procfile = dallinger.join("heroku").join(procfile);
            if real_dir(&dallinger, "heroku").is_some()
                && procfile.symlink_metadata().is_ok_and(|m| m.is_file())
            {
                files.push(("Procfile".to_string(), procfile));
            }
            for (rel, source) in files {
                let executable = source.symlink_metadata()?.permissions().mode() & 0o111 != 0;
                added += self
                    .context
                    .add_if_absent(&rel, FileKind::File { source, executable })
                    as usize;
            }
        }
        // Read when the layer is written: the tree stays while the build runs.
        self.context.held.push(rootfs);
        if added > 0 {
            eprintln!(
                "{}: the context also has {added} files of the image's extra_files() and Dallinger's frontend, as Dallinger's staging directory has them",
                self.at(ins)
            );
        }
        Ok(())
    }

    /// The context paths `pattern` names: a file, a directory (with its
    /// contents), or what a glob matches.
    fn context_sources(&self, pattern: &str) -> Vec<Picked> {
        let clean = clean_rel(pattern);
        let files = &self.context.files;
        let dirs = &self.context.dirs;
        let dir_contents = |dir: &str| -> Vec<(String, Option<FileKind>)> {
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            let mut out: Vec<(String, Option<FileKind>)> = dirs
                .iter()
                .filter(|d| !d.is_empty() && d.starts_with(&prefix))
                .map(|d| (d.clone(), None))
                .collect();
            out.extend(
                files
                    .iter()
                    .filter(|(f, _)| f.starts_with(&prefix))
                    .map(|(f, k)| (f.clone(), Some(k.clone()))),
            );
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        };
        let pick = |path: &str| -> Option<Picked> {
            if let Some(kind) = files.get(path) {
                return Some(Picked::File(path.to_string(), kind.clone()));
            }
            dirs.contains(path)
                .then(|| Picked::Dir(path.to_string(), dir_contents(path)))
        };
        if !has_glob(&clean) {
            return pick(&clean).into_iter().collect();
        }
        let Ok(glob) = globset::GlobBuilder::new(&clean)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
        else {
            return Vec::new();
        };
        let matcher = glob.compile_matcher();
        let mut all: Vec<&String> = files
            .keys()
            .chain(dirs.iter().filter(|d| !d.is_empty()))
            .collect();
        all.sort();
        all.into_iter()
            .filter(|p| matcher.is_match(p.as_str()))
            .filter_map(|p| pick(p))
            .collect()
    }
}

/// Directories every Linux image has: a file copied to one of them goes
/// inside it, as docker copies into an existing directory (other existing
/// directories are known when this Dockerfile made or named them; name
/// any other with a trailing `/`).
const STANDARD_DIRS: [&str; 23] = [
    "/bin",
    "/etc",
    "/home",
    "/lib",
    "/mnt",
    "/opt",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/lib",
    "/usr/local/sbin",
    "/usr/local/share",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/tmp",
];

/// A source a COPY picked.
enum Picked {
    /// A file (or symlink) of the context, by its path.
    File(String, FileKind),
    /// A directory and everything below it (`None`: a directory).
    Dir(String, Vec<(String, Option<FileKind>)>),
    /// A heredoc: its body and name.
    Heredoc(String, String),
}

/// Sources in an image's unpacked root (`COPY --from`), as context files.
fn root_sources(root: &Path, pattern: &str) -> Vec<Picked> {
    let clean = clean_rel(pattern);
    let kind_of = |path: &Path| -> Option<FileKind> {
        let meta = path.symlink_metadata().ok()?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(path).ok()?;
            return Some(FileKind::Symlink {
                target: target.to_string_lossy().into_owned(),
            });
        }
        meta.is_file().then(|| FileKind::File {
            source: path.to_path_buf(),
            executable: meta.permissions().mode() & 0o111 != 0,
        })
    };
    let pick = |rel: &str| -> Option<Picked> {
        let path = followed_in_root(root, rel)?;
        let meta = path.symlink_metadata().ok()?;
        if meta.is_dir() {
            let mut contents = Vec::new();
            for entry in walkdir::WalkDir::new(&path)
                .min_depth(1)
                .sort_by_file_name()
                .follow_links(false)
                .into_iter()
                .flatten()
            {
                let sub = entry
                    .path()
                    .strip_prefix(&path)
                    .ok()?
                    .to_string_lossy()
                    .into_owned();
                let sub = if rel.is_empty() {
                    sub
                } else {
                    format!("{rel}/{sub}")
                };
                if entry.file_type().is_dir() {
                    contents.push((sub, None));
                } else if let Some(kind) = kind_of(entry.path()) {
                    contents.push((sub, Some(kind)));
                }
            }
            return Some(Picked::Dir(rel.to_string(), contents));
        }
        Some(Picked::File(rel.to_string(), kind_of(&path)?))
    };
    if !has_glob(&clean) {
        return pick(&clean).into_iter().collect();
    }
    // A glob in the last component of a directory of the image.
    let (dir, name) = clean.rsplit_once('/').unwrap_or(("", &clean));
    let Ok(glob) = globset::Glob::new(name) else {
        return Vec::new();
    };
    let matcher = glob.compile_matcher();
    let Some(dir_path) = followed_in_root(root, dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = fs::read_dir(dir_path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| matcher.is_match(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| {
            pick(&if dir.is_empty() {
                n.clone()
            } else {
                format!("{dir}/{n}")
            })
        })
        .collect()
}

/// `path` inside `root`, symlinks resolved as if `root` were `/` (never
/// out of it); `None` when it does not exist. The last component is not
/// followed when it is a symlink.
fn in_root(root: &Path, rel: &str) -> Option<PathBuf> {
    resolve_in_root(root, rel, false)
}

/// [`in_root`], a symlink at the end followed too (inside the root): what
/// is read or entered through the path, never a host file.
fn followed_in_root(root: &Path, rel: &str) -> Option<PathBuf> {
    resolve_in_root(root, rel, true)
}

fn resolve_in_root(root: &Path, rel: &str, follow_last: bool) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&parts);
        candidate.push(&part);
        let meta = candidate.symlink_metadata().ok()?;
        if meta.file_type().is_symlink() && (follow_last || !pending.is_empty()) {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&candidate).ok()?;
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                parts.clear();
            }
            for c in target.split('/').filter(|c| !c.is_empty()).rev() {
                pending.push(c.to_string());
            }
            continue;
        }
        parts.push(part);
    }
    let mut out = root.to_path_buf();
    out.extend(&parts);
    out.symlink_metadata().ok().map(|_| out)
}

fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// A context path without `./`, leading `/` or trailing `/` (`.` is the
/// context's root, ``).
fn clean_rel(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// `path` made absolute against `dir`, cleaned.
fn absolute(dir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{dir}/{path}")
    };
    format!("/{}", clean_rel(&joined))
}

fn workdir(stage: &Stage) -> String {
    stage
        .config
        .pointer("/config/WorkingDir")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .unwrap_or("/")
        .to_string()
}

/// The variables a word of the stage sees: its ARGs, then its ENV over them.
fn stage_vars(stage: &Stage) -> Vec<(String, String)> {
    let mut vars = stage.args.clone();
    vars.extend(config_env(&stage.config));
    vars
}

/// An instruction's arguments as one text (a JSON form rejoined).
fn shell_text(ins: &Instruction) -> String {
    match &ins.args {
        Args::Shell(text) => text.clone(),
        Args::Json(words) => words.join(" "),
    }
}

/// The ARGs every build has (`TARGETPLATFORM`, `TARGETOS`, …), for the build's platform.
fn predefined_args(platform: &str) -> Vec<(String, String)> {
    let mut parts = platform.split('/');
    let os = parts.next().unwrap_or("linux").to_string();
    let arch = parts.next().unwrap_or("amd64").to_string();
    let variant = parts.next().unwrap_or("").to_string();
    let mut args = Vec::new();
    for prefix in ["TARGET", "BUILD"] {
        args.push((format!("{prefix}PLATFORM"), platform.to_string()));
        args.push((format!("{prefix}OS"), os.clone()));
        args.push((format!("{prefix}ARCH"), arch.clone()));
        args.push((format!("{prefix}VARIANT"), variant.clone()));
    }
    args
}

fn inner(config: &mut Value) -> Result<&mut serde_json::Map<String, Value>> {
    let root = config
        .as_object_mut()
        .context("the image config is not a JSON object")?;
    let inner = root.entry("config").or_insert_with(|| json!({}));
    if inner.is_null() {
        *inner = json!({});
    }
    inner
        .as_object_mut()
        .context("the image config's \"config\" is not an object")
}

fn set_env(config: &mut Value, key: &str, value: &str) -> Result<()> {
    let inner = inner(config)?;
    let env = inner.entry("Env").or_insert_with(|| json!([]));
    if !env.is_array() {
        *env = json!([]);
    }
    let list = env.as_array_mut().expect("made an array");
    let entry = json!(format!("{key}={value}"));
    let prefix = format!("{key}=");
    match list
        .iter_mut()
        .find(|e| e.as_str().is_some_and(|s| s.starts_with(&prefix)))
    {
        Some(existing) => *existing = entry,
        None => list.push(entry),
    }
    Ok(())
}

fn history(config: &mut Value) -> Result<&mut Vec<Value>> {
    let root = config
        .as_object_mut()
        .context("the image config is not a JSON object")?;
    let history = root.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    Ok(history.as_array_mut().expect("made an array"))
}

/// One history entry per base layer, as tools that pair them expect.
fn placeholder_history(config: &mut Value, layers: usize, epoch: u64) -> Result<()> {
    let created = rfc3339(epoch)?;
    crate::image::pad_history(history(config)?, layers, &created);
    Ok(())
}

/// A config-only step's history entry.
fn config_step(stage: &mut Stage, created_by: &str, epoch: u64) -> Result<()> {
    let created = rfc3339(epoch)?;
    history(&mut stage.config)?.push(json!({
        "created": created,
        "created_by": created_by,
        "comment": "dallinger-oci",
        "empty_layer": true,
    }));
    Ok(())
}

/// Adds a layer to the stage: its blob, diff id and history entry.
fn push_layer(stage: &mut Stage, layer: ImageLayer, created_by: &str, epoch: u64) -> Result<()> {
    let created = rfc3339(epoch)?;
    let diff_id = layer.blob.diff_id.clone();
    let root = stage
        .config
        .as_object_mut()
        .context("the image config is not a JSON object")?;
    let rootfs = root
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .context("the image config has no rootfs.diff_ids list")?
        .push(json!(diff_id));
    history(&mut stage.config)?.push(json!({
        "created": created,
        "created_by": created_by,
        "comment": "dallinger-oci",
    }));
    stage.layers.push(layer);
    Ok(())
}

fn report(at: &str, produced: &ProducedLayer) {
    eprintln!(
        "{at}: layer {} ({})",
        produced.layer.blob.digest,
        if produced.reused {
            "unchanged, reused"
        } else {
            "built"
        }
    );
}

/// Whether a RUN only installs the experiment's requirements with pip or
/// uv (`pip install -r requirements.txt`, `python -m pip install …`,
/// `uv pip install -r constraints.txt --system`, with the usual flags),
/// alone or as both branches of an `if` on a requirements file's
/// presence (PsyNet's stock Dockerfile:
/// `if [ -f constraints.txt ]; then … -r constraints.txt …; else … -r
/// requirements.txt …; fi`). Either branch installs the experiment's
/// requirements, so our locked layers stand for the whole RUN.
pub fn installs_requirements(command: &str) -> bool {
    single_install(command) || if_else_install(command)
}

/// `if [ -f F ]; then INSTALL; else INSTALL; fi` (or `test -f F`, `-e`),
/// F a requirements file, each INSTALL a [`single_install`], nothing else
/// before or after.
fn if_else_install(command: &str) -> bool {
    if command.contains(['&', '|', '`', '$', '>', '<', '(', '\n']) {
        return false;
    }
    let spaced = command.replace(';', " ; ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let Some(rest) = words.strip_prefix(&["if"][..]) else {
        return false;
    };
    let rest = match rest {
        ["[", "-f" | "-e", file, "]", ";", "then", rest @ ..]
        | ["test", "-f" | "-e", file, ";", "then", rest @ ..]
            if is_requirements_file(file) =>
        {
            rest
        }
        _ => return false,
    };
    let Some(else_at) = rest.iter().position(|w| *w == "else") else {
        return false;
    };
    let (then, otherwise) = (&rest[..else_at], &rest[else_at + 1..]);
    let Some(otherwise) = otherwise.strip_suffix(&["fi"][..]) else {
        return false;
    };
    // Each branch one command, its `;` before `else` and `fi` optional.
    let branch = |words: &[&str]| {
        let words = words.strip_suffix(&[";"][..]).unwrap_or(words);
        !words.contains(&";") && single_install(&words.join(" "))
    };
    branch(then) && branch(otherwise)
}

/// One pip or uv command installing requirements files, nothing more.
fn single_install(command: &str) -> bool {
    if command.contains(['&', ';', '|', '`', '$', '>', '<', '(', '\n']) {
        return false;
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    let rest = match words.as_slice() {
        ["pip" | "pip3", "install", rest @ ..] => rest,
        [py, "-m", "pip", "install", rest @ ..] if is_python(py) => rest,
        ["uv", "pip", "install", rest @ ..] => rest,
        [py, "-m", "uv", "pip", "install", rest @ ..] if is_python(py) => rest,
        _ => return false,
    };
    let mut files = 0;
    let mut i = 0;
    while i < rest.len() {
        let w = rest[i];
        let file = match w {
            "-r" | "--requirement" | "-c" | "--constraint" => {
                i += 1;
                rest.get(i).copied()
            }
            _ => w
                .strip_prefix("--requirement=")
                .or_else(|| w.strip_prefix("--constraint="))
                .or_else(|| w.strip_prefix("-r")),
        };
        match file {
            Some(f) if is_requirements_file(f) => files += 1,
            Some(_) => return false,
            None if is_harmless_pip_flag(w) => {}
            None => return false,
        }
        i += 1;
    }
    files > 0
}

fn is_python(word: &str) -> bool {
    let name = word.rsplit('/').next().unwrap_or(word);
    name == "python"
        || name.strip_prefix("python3").is_some_and(|v| {
            v.is_empty()
                || v.strip_prefix('.')
                    .is_some_and(|m| m.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn is_requirements_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    matches!(name, "requirements.txt" | "constraints.txt")
}

fn is_harmless_pip_flag(flag: &str) -> bool {
    matches!(
        flag,
        "--system"
            | "--no-cache-dir"
            | "--no-cache"
            | "--break-system-packages"
            | "-q"
            | "--quiet"
            | "-v"
            | "--verbose"
            | "--no-input"
            | "--disable-pip-version-check"
            | "--root-user-action=ignore"
            | "--compile"
            | "--no-compile"
            | "--no-warn-script-location"
            | "--progress-bar=off"
    )
}

/// An entry of a Dockerfile layer: owners and modes as given.
struct Entry {
    /// Below the root, no leading or trailing `/`.
    path: String,
    kind: EntryKind,
    mode: u32,
    owner: (u32, u32),
}

enum EntryKind {
    Dir,
    File(Content),
    Symlink(String),
}

impl Entry {
    fn file(path: &str, content: Content, mode: u32, owner: (u32, u32)) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::File(content),
            mode,
            owner,
        }
    }

    fn whiteout(rel: &str) -> Entry {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        Entry::file(&path, Content::Bytes(Vec::new()), 0o644, (0, 0))
    }

    fn add_to_key(&self, key: &mut KeyHasher) -> Result<()> {
        key.str(&self.path)
            .u64(self.mode.into())
            .u64(self.owner.0.into())
            .u64(self.owner.1.into());
        match &self.kind {
            EntryKind::Dir => {
                key.str("d");
            }
            EntryKind::Symlink(target) => {
                key.str("l").str(target);
            }
            EntryKind::File(content) => {
                let reader = content.open()?;
                let len = reader.len();
                key.str("f").stream(len, reader)?;
            }
        }
        Ok(())
    }
}

fn file_entry(
    path: &str,
    kind: FileKind,
    mode_of: &dyn Fn(bool, bool) -> u32,
    owner: (u32, u32),
) -> Entry {
    match kind {
        FileKind::Symlink { target } => Entry {
            path: path.to_string(),
            kind: EntryKind::Symlink(target),
            mode: 0o777,
            owner,
        },
        other => {
            let (content, executable) = source_content(&other);
            Entry::file(path, content, mode_of(executable, false), owner)
        }
    }
}

fn source_content(kind: &FileKind) -> (Content, bool) {
    match kind {
        FileKind::File { source, executable } => (Content::File(source.clone()), *executable),
        FileKind::Generated { bytes, executable } => (Content::Bytes(bytes.clone()), *executable),
        FileKind::Symlink { .. } => (Content::Bytes(Vec::new()), false),
    }
}

/// Whether ADD extracts this file: a tar, plain or gzip, zstd or xz compressed.
fn is_archive(kind: &FileKind) -> Result<bool> {
    if matches!(kind, FileKind::Symlink { .. }) {
        return Ok(false);
    }
    let (content, _) = source_content(kind);
    let mut head = Vec::with_capacity(512);
    content.open()?.take(512).read_to_end(&mut head)?;
    Ok(compression_of(&head).is_some() || (head.len() >= 262 && &head[257..262] == b"ustar"))
}

#[derive(Clone, Copy)]
enum Compression {
    Gzip,
    Zstd,
    Xz,
}

fn compression_of(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(Compression::Xz)
    } else {
        None
    }
}

/// Writes `entries` (sorted by path; a later entry of the same path wins)
/// and then each tar's entries under its directory, as one deterministic
/// tar: the build's time, owners and modes as given.
fn write_entries(
    writer: crate::image::store::LayerWriter<'_>,
    store: &BlobStore,
    entries: Vec<Entry>,
    tars: &[Extract],
) -> Result<crate::image::store::WrittenLayer> {
    if entries.is_empty() && tars.is_empty() {
        return writer.tree(&LayerTree::new());
    }
    let mtime = writer.epoch();
    let mut sorted: BTreeMap<String, Entry> = BTreeMap::new();
    for e in entries {
        sorted.insert(e.path.clone(), e);
    }
    let scratch = store
        .scratch_dir("dockerfile-layer-")
        .context("cannot make a directory for a Dockerfile layer")?;
    let path = scratch.path().join("layer.tar");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    for (path, e) in &sorted {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime);
        header.set_uid(e.owner.0.into());
        header.set_gid(e.owner.1.into());
        header.set_mode(e.mode);
        match &e.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            EntryKind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, path, target)?;
            }
            EntryKind::File(content) => {
                header.set_entry_type(tar::EntryType::Regular);
                let reader = content.open()?;
                header.set_size(reader.len());
                tar.append_data(&mut header, path, reader)?;
            }
        }
    }
    for extract in tars {
        extract_into(&mut tar, extract, mtime)?;
    }
    let mut out = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    out.rewind()?;
    writer.tar("a Dockerfile layer", std::io::BufReader::new(out))
}

/// An archive an ADD extracts.
struct Extract {
    content: Content,
    /// The directory it goes to, below the root.
    dest: String,
    /// `--chown`'s, over the archive's owners.
    owner: Option<(u32, u32)>,
}

/// ADD of a local archive: its entries under its directory, their owners
/// (unless `--chown`) and modes kept, times the build's.
fn extract_into<W: Write>(tar: &mut tar::Builder<W>, extract: &Extract, mtime: u64) -> Result<()> {
    let (content, dest) = (&extract.content, extract.dest.as_str());
    let mut head = Vec::new();
    content.open()?.take(8).read_to_end(&mut head)?;
    let reader: Box<dyn Read> = {
        let raw = content.open()?;
        match compression_of(&head) {
            Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Some(Compression::Zstd) => Box::new(
                ruzstd::decoding::StreamingDecoder::new(raw)
                    .map_err(|e| anyhow!("ADD: cannot read the zstd archive: {e}"))?,
            ),
            Some(Compression::Xz) => Box::new(lzma_rust2::XzReader::new(raw, true)),
            None => Box::new(raw),
        }
    };
    let mut archive = tar::Archive::new(reader);
    let prefix = |p: &str| -> Option<String> {
        let clean = clean_rel(p);
        if clean.is_empty() {
            return None;
        }
        Some(if dest.is_empty() {
            clean
        } else {
            format!("{dest}/{clean}")
        })
    };
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if name.split('/').any(|c| c == "..") {
            bail!("ADD: the archive's entry {name:?} climbs out of its directory");
        }
        let Some(path) = prefix(&name) else { continue };
        let mut header = entry.header().clone();
        header.set_mtime(mtime);
        if let Some((uid, gid)) = extract.owner {
            header.set_uid(uid.into());
            header.set_gid(gid.into());
            // Names would say otherwise to a reader that prefers them.
            let _ = header.set_username("");
            let _ = header.set_groupname("");
        }
        let kind = header.entry_type();
        if kind.is_dir() {
            tar.append_data(&mut header, format!("{path}/"), std::io::empty())?;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let target = if kind.is_hard_link() {
                prefix(&target).context("ADD: a hard link to nothing")?
            } else {
                target
            };
            tar.append_link(&mut header, path, target)?;
        } else if kind.is_file() {
            tar.append_data(&mut header, path, &mut entry)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile image's links are never followed to this machine's files:
    /// a site directory or Dallinger's frontend that is a symlink is not
    /// read.
    #[test]
    fn image_trees_are_read_only_through_real_directories() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        fs::create_dir_all(host.path().join("frontend")).unwrap();
        fs::write(host.path().join("frontend/secret"), "this machine's").unwrap();
        let site = root.path().join("usr/local/lib/python3.11/dist-packages");
        fs::create_dir_all(&site).unwrap();
        std::os::unix::fs::symlink(host.path(), site.join("dallinger")).unwrap();
        fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.path().join("usr/lib/python3.12")).unwrap();
        assert_eq!(site_dirs(root.path()), vec![site.clone()]);
        assert!(real_dir(&site, "dallinger/frontend").is_none());
        // A real directory is read, its symlinked entries skipped.
        fs::remove_file(site.join("dallinger")).unwrap();
        fs::create_dir_all(site.join("dallinger/frontend/static")).unwrap();
        fs::write(site.join("dallinger/frontend/static/a.js"), "a").unwrap();
        std::os::unix::fs::symlink(
            host.path().join("frontend/secret"),
            site.join("dallinger/frontend/static/b.js"),
        )
        .unwrap();
        let frontend = real_dir(&site, "dallinger/frontend").unwrap();
        let mut files = Vec::new();
        collect_files(&frontend, "", &mut files).unwrap();
        assert_eq!(
            files,
            vec![("static/a.js".to_string(), frontend.join("static/a.js"))]
        );
    }

    #[test]
    fn requirement_installs_are_recognised_and_nothing_else() {
        for yes in [
            "pip install -r requirements.txt",
            "pip3 install --no-cache-dir -r requirements.txt",
            "python -m pip install -r constraints.txt",
            "python3.12 -m pip install --requirement=requirements.txt -q",
            "/usr/local/bin/python3 -m pip install -r /experiment/requirements.txt",
            "uv pip install -r constraints.txt --system",
            "uv pip install --system -r requirements.txt -c constraints.txt",
            // PsyNet's stock RUN, as the parser joins its continued lines.
            "if [ -f constraints.txt ]; then         uv pip install -r constraints.txt --system;     \
             else         uv pip install -r requirements.txt --system;     fi",
            "if test -f constraints.txt; then pip install -r constraints.txt; else pip install -r requirements.txt; fi",
            "if [ -e requirements.txt ] ; then uv pip install -r requirements.txt --system ; else uv pip install -r constraints.txt --system ; fi",
        ] {
            assert!(installs_requirements(yes), "{yes}");
        }
        for no in [
            "pip install flask",
            "pip install -r requirements.txt && rm -rf /x",
            "pip install -r other.txt",
            "pip install -e .",
            "pip install --index-url http://x -r requirements.txt",
            "uv pip install --system",
            "apt-get install -y ffmpeg",
            "pip install -r $REQS",
            // An `if` that does anything more than install the requirements.
            "if [ -f constraints.txt ]; then uv pip install -r constraints.txt --system; fi",
            "if [ -f constraints.txt ]; then uv pip install -r constraints.txt --system; else rm -rf /; fi",
            "if [ -f constraints.txt ]; then uv pip install -r constraints.txt --system; rm -rf /x; else uv pip install -r requirements.txt --system; fi",
            "if [ -f constraints.txt ]; then uv pip install -r constraints.txt --system; else uv pip install -r requirements.txt --system; fi; rm -rf /x",
            "if [ -f constraints.txt ]; then uv pip install -r constraints.txt --system; else uv pip install -r requirements.txt --system; fi; fi",
            "if [ -f other.txt ]; then uv pip install -r constraints.txt --system; else uv pip install -r requirements.txt --system; fi",
            "if [ ! -f constraints.txt ]; then pip install -r requirements.txt; else pip install -r constraints.txt; fi",
            "if pip install -r requirements.txt; then pip install -r constraints.txt; else pip install -r requirements.txt; fi",
            "if [ -f constraints.txt ]; then pip install -r constraints.txt; else pip install -r requirements.txt; else pip install flask; fi",
            "if [ -f constraints.txt ]; then pip install -r constraints.txt; elif [ -f x ]; then pip install -r requirements.txt; else pip install -r requirements.txt; fi",
        ] {
            assert!(!installs_requirements(no), "{no}");
        }
    }

    #[test]
    fn paths_resolve_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(root.join("usr/lib/f"), "x").unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("up")).unwrap();
        assert_eq!(in_root(root, "lib/f"), Some(root.join("usr/lib/f")));
        assert_eq!(
            in_root(root, "/usr/../usr/lib/f"),
            Some(root.join("usr/lib/f"))
        );
        // A link never leads out: `..` stops at the root.
        assert_eq!(in_root(root, "up/passwd"), None);
        assert!(in_root(root, "missing").is_none());
        // The last component is not followed, unless asked.
        assert_eq!(in_root(root, "lib"), Some(root.join("lib")));
        assert_eq!(followed_in_root(root, "lib"), Some(root.join("usr/lib")));
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        assert_eq!(followed_in_root(root, "passwd"), None);
    }

    #[test]
    fn dockerignore_patterns_as_docker_reads_them() {
        let ignore = |text: &str| DockerIgnore::parse(".dockerignore", text).unwrap();
        let i = ignore("# comment\n*.log\n/build\n**/cache\n!keep.log\ndocs/*.md\n");
        assert!(i.excludes("a.log"));
        assert!(!i.excludes("keep.log"));
        assert!(!i.excludes("sub/a.log"));
        assert!(i.excludes("build/x/y.txt"));
        assert!(i.excludes("deep/er/cache/file"));
        assert!(i.excludes("docs/readme.md"));
        assert!(!i.excludes("docs/sub/readme.md"));
        assert!(!i.excludes("experiment.py"));
    }

    #[test]
    fn destinations_are_absolute_and_clean() {
        assert_eq!(absolute("/app", "."), "/app");
        assert_eq!(absolute("/app", "sub/../x.txt"), "/app/x.txt");
        assert_eq!(absolute("/app", "/etc/"), "/etc");
        assert_eq!(absolute("/", "../.."), "/");
        assert_eq!(clean_rel("./static/"), "static");
        assert_eq!(clean_rel("."), "");
    }
}
