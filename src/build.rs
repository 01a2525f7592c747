//! `build`: experiment → layers → image → outputs, in one direction.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{Codec, Content, LayerTree, WriteOptions};

use crate::base::{self, BaseRef};
use crate::experiment::{Experiment, FileKind, LoadOptions};
use crate::http::RetryPolicy;
use crate::image::store::{sha256_digest, BlobStore, StoredLayer};
use crate::image::{self, archive, layout, ConfigChanges, Image, ImageLayer, RemoteBlob};
use crate::plan::{Lock, LockInputs};
use crate::prepare;
use crate::python::install::BytecodeCompiler;
use crate::python::source::{
    dallinger_from_source, warn_about_editable_dallinger, BuilderImage, SdistBuilder, SourceMount,
};
use crate::python::spec::{parse_file, PackageName};
use crate::python::{
    python_layers, resolve, target, IndexConfig, PythonLayers, ResolveRequest, TargetOverrides,
};
use crate::registry::credentials::{self, CredentialContext};
use crate::registry::{pull, Reference, RegistryClient};

/// Seconds since the epoch used for every time in an image when
/// `SOURCE_DATE_EPOCH` is not set: 2000-01-01T00:00:00Z, fixed and after 1980
/// (zip-based tools reject earlier times).
pub const DEFAULT_EPOCH: u64 = 946_684_800;

/// Where the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputRef {
    OciLayout { dir: PathBuf, tag: Option<String> },
    DockerArchive { file: PathBuf },
}

impl OutputRef {
    pub fn parse(text: &str) -> Result<OutputRef> {
        if let Some(rest) = text.strip_prefix("oci:") {
            let (dir, tag) = base::split_dir_and_tag(rest);
            if dir.as_os_str().is_empty() {
                bail!("output {text:?} names no directory: use oci:DIR[:TAG]");
            }
            return Ok(OutputRef::OciLayout { dir, tag });
        }
        if let Some(file) = text.strip_prefix("docker-archive:") {
            if file.is_empty() {
                bail!("output {text:?} names no file: use docker-archive:FILE");
            }
            return Ok(OutputRef::DockerArchive {
                file: PathBuf::from(file),
            });
        }
        bail!("unknown output {text:?}: use oci:DIR[:TAG] or docker-archive:FILE")
    }

    pub fn describe(&self, default_tag: &str) -> String {
        match self {
            OutputRef::OciLayout { dir, tag } => {
                format!(
                    "oci:{}:{}",
                    dir.display(),
                    tag.as_deref().unwrap_or(default_tag)
                )
            }
            OutputRef::DockerArchive { file } => format!("docker-archive:{}", file.display()),
        }
    }
}

/// How to reach registries, for bases and pushes.
pub struct RegistryOptions {
    pub insecure: Vec<String>,
    pub credentials: CredentialContext,
    pub retry: RetryPolicy,
    /// Resolve registry base tags again instead of using the recorded digest.
    pub refresh_base: bool,
    /// The registry the image is pushed to (its name's), set by the build
    /// as soon as it knows the name: the only registry the explicit
    /// credentials (`--username`, `DALLINGER_OCI_REGISTRY_*`) go to.
    pub push_registry: OnceLock<String>,
}

impl RegistryOptions {
    /// Records the registry of the image named `image_name`, the push
    /// target. A name without a registry host (a local build's directory
    /// name) names none: it is not Docker Hub's.
    pub fn set_push_target(&self, image_name: &str) {
        let names_a_registry = image_name.split_once('/').is_some_and(|(first, _)| {
            first.contains('.') || first.contains(':') || first == "localhost"
        });
        if let (true, Ok(reference)) = (names_a_registry, Reference::parse(image_name)) {
            let _ = self.push_registry.set(reference.registry);
        }
    }

    /// A client for `registry`, with the credentials users expect it to use:
    /// the explicit ones for the push target's registry only, the auth
    /// files' entry for the registry's host otherwise.
    pub fn client(&self, reference: &Reference) -> Result<RegistryClient> {
        let found = credentials::find_credentials(
            &reference.registry,
            &self.credentials,
            self.push_registry.get().map(String::as_str),
        )
        .with_context(|| format!("looking up credentials for {}", reference.registry))?;
        let credential = match found {
            Some((credential, source)) => {
                eprintln!("Using credentials for {} from {source}", reference.registry);
                Some(credential)
            }
            None => None,
        };
        RegistryClient::new(reference, &self.insecure, credential, self.retry)
    }

    fn client_for_remote(&self, remote: &RemoteBlob) -> Result<RegistryClient> {
        self.client(&Reference {
            registry: remote.registry.clone(),
            repository: remote.repository.clone(),
            tag: None,
            digest: None,
        })
    }
}

pub struct BuildRequest {
    pub experiment_dir: PathBuf,
    pub base: Option<String>,
    pub outputs: Vec<OutputRef>,
    pub tag: Option<String>,
    pub cache_dir: PathBuf,
    pub platform: Option<String>,
    pub epoch: u64,
    pub home_config: Option<PathBuf>,
    pub registry: RegistryOptions,
    /// How to install the experiment's Python dependencies; `None` builds
    /// only the experiment layer on the base (`--no-deps`).
    pub python: Option<PythonOptions>,
    /// What to do with the experiment's own prepare script and Dockerfile.
    pub customisation: Customisation,
}

/// How far the build may go with an experiment that customises its image.
#[derive(Debug, Clone, Default)]
pub struct Customisation {
    /// Run a non-default `prepare_docker_image.sh` in the sandbox.
    pub run_prepare: bool,
    /// Give it the host's network.
    pub prepare_network: bool,
    /// Build the experiment's own Dockerfile with this engine.
    pub dockerfile_engine: Option<crate::dockerfile::DockerfileEngine>,
}

/// Settings of the Python stage.
pub struct PythonOptions {
    pub index: IndexConfig,
    pub overrides: TargetOverrides,
    /// Fail when the lock is missing or out of date.
    pub locked: bool,
    /// Write the lock (the `lock` command).
    pub write_lock: bool,
    pub parallel: usize,
    /// Build wheels for pins published only as sdists, in a sandbox.
    pub build_sdists: bool,
    /// The image to build them in (default: the base).
    pub builder_base: Option<String>,
    /// Compile `.pyc` files with the base's interpreter, as pip does.
    pub compile_bytecode: bool,
    /// Build Dallinger from this source tree instead of its pin.
    pub dallinger_src: Option<PathBuf>,
}

struct PythonStage {
    layers: PythonLayers,
    dallinger_mount: Option<SourceMount>,
}

/// Target, pins, wheels and the dependency layers.
#[allow(clippy::too_many_arguments)]
fn python_stage(
    experiment: &Experiment,
    base: &base::BaseImage,
    base_text: &str,
    platform: &str,
    store: &BlobStore,
    request: &BuildRequest,
    python: &PythonOptions,
    options: &WriteOptions,
) -> Result<PythonStage> {
    // Reading the target needs the base layers' bytes.
    pull::fetch_missing(store, &base.layers, &|remote| {
        request.registry.client_for_remote(remote)
    })?;
    let target = target::detect(store, &base.layers, &base.config, &python.overrides)
        .map_err(|e| e.context("reading the base image's Python (use --no-deps to build without Python dependencies)"))?;
    let requirements = ["constraints.txt", "requirements.txt"]
        .iter()
        .map(|f| experiment.dir.join(f))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{} has neither constraints.txt nor requirements.txt: pin the experiment's dependencies (`dallinger constraints generate`)",
                experiment.dir.display()
            )
        })?;
    let inputs = LockInputs {
        base: portable_base_name(base_text),
        base_digest: base.digest.clone().unwrap_or_else(|| "none".into()),
        platform: platform.to_string(),
        // The requirements file and everything it includes (-r, -c).
        requirements_sha256: parse_file(&requirements)?.inputs_sha256(),
        builder: None,
        builder_digest: None,
        debian: None,
    };
    let builder = (python.build_sdists || python.dallinger_src.is_some())
        .then(|| sdist_builder(base, base_text, platform, store, request, python));
    let mut editable_check = None;
    let (local_wheels, dallinger_mount) = match (&python.dallinger_src, &builder) {
        (Some(dir), Some(builder)) => {
            let (wheel, mount) =
                dallinger_from_source(dir, builder, &target, &python.index, request.epoch)?;
            (vec![wheel], Some(mount))
        }
        _ => {
            // Asking the host's python3 takes ~0.1 s, done beside the build.
            // A --locked build follows its lock by definition: no question.
            if !python.locked {
                editable_check = Some(std::thread::spawn(warn_about_editable_dallinger));
            }
            (Vec::new(), None)
        }
    };
    let resolution = resolve(&ResolveRequest {
        requirements: &requirements,
        target: &target,
        index: &python.index,
        inputs,
        lock: Lock::read(&experiment.dir)?,
        locked: python.locked,
        parallel: python.parallel,
        // git requirements and sdists are built only with --build-sdists.
        sdists: builder.as_ref().filter(|_| python.build_sdists),
        local_wheels: &local_wheels,
    })?;
    eprintln!(
        "Python {}.{}.{} in the base: {} wheels to install{}{}",
        target.python_version.0,
        target.python_version.1,
        target.python_version.2,
        resolution.wheels.len(),
        if resolution.already_in_base.is_empty() {
            String::new()
        } else {
            format!(", {} already in the base", resolution.already_in_base.len())
        },
        if resolution.from_lock {
            " (from the lock)"
        } else {
            ""
        }
    );
    if python.write_lock {
        let path = resolution.lock.write(&experiment.dir)?;
        eprintln!("Wrote {}", path.display());
    }
    // REQUESTED marks what the experiment asked for itself: its
    // requirements.txt when it has one, else every pin.
    let top_level = experiment.dir.join("requirements.txt");
    let requested: BTreeSet<PackageName> = if top_level.is_file() && requirements != top_level {
        parse_file(&top_level)?
            .requirements
            .iter()
            .map(|r| r.normalised.clone())
            .collect()
    } else {
        resolution
            .wheels
            .iter()
            .map(|w| w.normalised.clone())
            .collect()
    };
    let clock_on = experiment.get("clock_on").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        )
    });
    let compiler = python
        .compile_bytecode
        .then(|| BytecodeCompiler::new(store, &base.layers, &base.config));
    let layers = python_layers(
        store,
        &target,
        &resolution.wheels,
        &requested,
        clock_on,
        compiler.as_ref(),
        options,
    )?;
    if let Some(check) = editable_check {
        let _ = check.join();
    }
    Ok(PythonStage {
        layers,
        dallinger_mount,
    })
}

pub struct BuildResult {
    pub store: BlobStore,
    /// `REPOSITORY:TAG`.
    pub image_name: String,
    pub tag: String,
    pub image: Image,
    /// Whether the experiment layer came from the cache.
    pub layer_reused: bool,
    /// `--dallinger-src`: what `debug` mounts into its containers.
    pub dallinger_mount: Option<SourceMount>,
}

/// The epoch from `SOURCE_DATE_EPOCH`, or [`DEFAULT_EPOCH`].
pub fn epoch_from_env() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a whole number of seconds since 1970")
        }),
        _ => Ok(DEFAULT_EPOCH),
    }
}

pub fn build(request: &BuildRequest) -> Result<BuildResult> {
    let experiment = Experiment::load(
        &request.experiment_dir,
        &LoadOptions {
            home_config: request.home_config.clone(),
        },
    )?;
    refuse_unrequested_customisation(&experiment, &request.customisation)?;
    let tag = match &request.tag {
        Some(tag) => validate_tag(tag)?,
        None => experiment.default_tag(),
    };
    let repository = image_repository(&experiment, request)?;
    let image_name = format!("{repository}:{tag}");
    request.registry.set_push_target(&image_name);

    let base_text = match (&request.base, experiment.get("docker_base_image")) {
        (Some(b), _) => b.clone(),
        (None, Some(b)) => b.to_string(),
        (None, None) => {
            let (base, why) = default_base(&experiment.dir);
            eprintln!("No base image configured: using {base} ({why}); set docker_base_image under [Docker] or pass --base to choose");
            base
        }
    };
    let base_ref = BaseRef::parse(&base_text)?;
    // Parsed once: everything below gets the canonical `os/arch[/variant]`.
    let platform = crate::image::platform::Platform::parse(
        request
            .platform
            .as_deref()
            .unwrap_or(base::DEFAULT_PLATFORM),
    )?
    .to_string();
    let platform = platform.as_str();
    let store = BlobStore::open(&request.cache_dir)?;
    if let (true, Some(engine)) = (
        experiment.has_dockerfile(),
        request.customisation.dockerfile_engine,
    ) {
        let built = crate::dockerfile::build_with_engine(
            engine,
            &experiment,
            &image_name,
            &store,
            platform,
        )?;
        let image = Image::assemble(&store, &built.config, built.layers)?;
        write_outputs(request, &store, &image, &tag, &image_name)?;
        return Ok(BuildResult {
            store,
            image_name,
            tag,
            image,
            layer_reused: false,
            dallinger_mount: None,
        });
    }
    let base = resolve_base(&base_ref, &store, platform, request)?;

    let options = WriteOptions {
        mtime: request.epoch,
        workers: 0,
        codec: Codec::Gzip,
    };
    // Debian packages sit right on the base: system libraries change less
    // often than Python pins, and wheels may load them.
    let debian = crate::debian::debian_layer(
        &experiment,
        &base.layers,
        platform,
        &store,
        &options,
        request.python.as_ref().is_some_and(|p| p.locked),
        request.registry.retry,
        &|remote| request.registry.client_for_remote(remote),
    )?;
    let python = match &request.python {
        Some(python) => Some(python_stage(
            &experiment,
            &base,
            &base_text,
            platform,
            &store,
            request,
            python,
            &options,
        )?),
        None => None,
    };
    let prepared = match experiment.custom_prepare_script() {
        Some(script) => {
            let mut so_far = base.layers.clone();
            if let Some(debian) = &debian {
                so_far.push(debian.layer.clone());
            }
            if let Some(python) = &python {
                so_far.extend(python.layers.layers.iter().map(|l| l.layer.clone()));
            }
            pull::fetch_missing(&store, &so_far, &|remote| {
                request.registry.client_for_remote(remote)
            })?;
            let (layer, reused) = prepare::prepare_layer(
                &store,
                &prepare::PrepareRequest {
                    script,
                    requirements: experiment.generated("requirements.txt").unwrap_or_default(),
                    layers: &so_far,
                    config: &base.config,
                    network: request.customisation.prepare_network,
                    options: &options,
                },
            )?;
            eprintln!(
                "prepare_docker_image.sh layer: {} ({})",
                layer.blob.digest,
                if reused { "unchanged, reused" } else { "built" }
            );
            Some((layer, sha256_digest(script)))
        }
        None => None,
    };
    if request.python.as_ref().is_some_and(|p| p.write_lock) {
        crate::debian::record_in_lock(&experiment.dir, debian.as_ref())?;
    }
    let mut tree = experiment_tree(&experiment)?;
    if let Some(python) = &python {
        // Dallinger's files go in where the experiment has none, as its
        // assembly copies the experiment first and skips what exists.
        for (rel, source) in &python.layers.experiment_files {
            let path = format!("experiment/{rel}");
            if tree.get(&path).is_none() {
                tree.add_file(&path, Content::File(source.clone()), false)?;
            }
        }
    }
    let (code_layer, layer_reused) = layer_from_cache_or_write(&store, &tree, &options)?;
    let code_layer = ImageLayer::written(code_layer);

    let mut labels = BTreeMap::new();
    if let Some(git) = &experiment.git {
        if let Some(source) = &git.source {
            labels.insert("org.opencontainers.image.source".into(), source.clone());
        }
        labels.insert(
            "org.opencontainers.image.revision".into(),
            git.revision.clone(),
        );
    }
    if let Some((_, script)) = &prepared {
        labels.insert(prepare::LABEL_PREPARE_SCRIPT.into(), script.clone());
    }
    if let Some(name) = &base.name {
        labels.insert("org.opencontainers.image.base.name".into(), name.clone());
    }
    if let Some(digest) = &base.digest {
        labels.insert(
            "org.opencontainers.image.base.digest".into(),
            digest.clone(),
        );
    }
    // As Dallinger's generated Dockerfile: WORKDIR /experiment, ENV PORT=5000,
    // shell-form CMD dallinger_heroku_web.
    let changes = ConfigChanges {
        epoch: request.epoch,
        env: vec![("PORT".into(), "5000".into())],
        working_dir: Some("/experiment".into()),
        cmd: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "dallinger_heroku_web".into(),
        ]),
        labels,
    };
    let mut new_layers: Vec<(ImageLayer, String)> = Vec::new();
    if let Some(debian) = debian {
        new_layers.push((debian.layer, debian.created_by));
    }
    let dallinger_mount = python.as_ref().and_then(|p| p.dallinger_mount.clone());
    if let Some(python) = python {
        for l in python.layers.layers {
            new_layers.push((l.layer, l.created_by));
        }
    }
    if let Some((layer, script)) = prepared {
        new_layers.push((
            layer,
            format!("dallinger-oci: ran prepare_docker_image.sh ({script}) in a sandbox"),
        ));
    }
    new_layers.push((
        code_layer,
        "dallinger-oci: experiment code at /experiment".into(),
    ));
    let history: Vec<(&ImageLayer, &str)> =
        new_layers.iter().map(|(l, c)| (l, c.as_str())).collect();
    let config = image::derive_config(&base.config, &changes, &history)?;
    let mut layers = base.layers;
    layers.extend(new_layers.into_iter().map(|(l, _)| l));
    let image = Image::assemble(&store, &config, layers)?;

    write_outputs(request, &store, &image, &tag, &image_name)?;
    Ok(BuildResult {
        store,
        image_name,
        tag,
        image,
        layer_reused,
        dallinger_mount,
    })
}

/// Writes the image to every `--output`, fetching base blobs first.
fn write_outputs(
    request: &BuildRequest,
    store: &BlobStore,
    image: &Image,
    tag: &str,
    image_name: &str,
) -> Result<()> {
    if !request.outputs.is_empty() {
        pull::fetch_missing(store, &image.layers, &|remote| {
            request.registry.client_for_remote(remote)
        })?;
    }
    for output in &request.outputs {
        match output {
            OutputRef::OciLayout { dir, tag: out_tag } => {
                layout::write(store, image, dir, out_tag.as_deref().unwrap_or(tag))?
            }
            OutputRef::DockerArchive { file } => {
                archive::write(store, image, file, image_name, request.epoch)?
            }
        }
    }
    Ok(())
}

/// Stops before any work when the experiment customises its image in a way
/// the user has not allowed: a prepare script must run inside the image, a
/// Dockerfile needs a container engine. Neither is ever ignored.
fn refuse_unrequested_customisation(
    experiment: &Experiment,
    customisation: &Customisation,
) -> Result<()> {
    if experiment.has_dockerfile() && customisation.dockerfile_engine.is_none() {
        bail!(
            "{}: the experiment has its own Dockerfile, which Dallinger builds instead of its \
             generated one; a Dockerfile needs a container engine, so dallinger-oci does not \
             build it: pass --dockerfile-engine podman|docker|buildah to build it with that engine (dallinger-oci \
             then writes and pushes the result), or remove it (declare \
             Debian packages with `system_packages` under [Docker] and put other steps in \
             prepare_docker_image.sh) to build without a daemon",
            experiment.dir.join("Dockerfile").display()
        );
    }
    if experiment.custom_prepare_script().is_some() && !customisation.run_prepare {
        bail!(
            "{}: this script must run inside the image to customise it, and is never skipped: \
             pass --run-prepare to run it in a sandbox (as root in /experiment, no network \
             unless --prepare-network) and keep its changes as a layer, or declare Debian \
             packages with `system_packages` under [Docker] in config.txt instead",
            experiment.dir.join("prepare_docker_image.sh").display()
        );
    }
    Ok(())
}

/// A base (or builder) image from a registry, a layout, a rootfs or scratch.
fn resolve_base(
    base_ref: &BaseRef,
    store: &BlobStore,
    platform: &str,
    request: &BuildRequest,
) -> Result<base::BaseImage> {
    match base_ref {
        BaseRef::Registry(reference) => {
            let client = request.registry.client(reference)?;
            pull::resolve_base(
                &client,
                store,
                reference,
                platform,
                request.registry.refresh_base,
            )
        }
        local => base::resolve(local, store, platform, request.epoch),
    }
}

/// The image sdists are built in: `--builder-base`, else the base itself.
/// Nothing is resolved or pulled until a build needs it.
fn sdist_builder<'a>(
    base: &base::BaseImage,
    base_text: &str,
    platform: &'a str,
    store: &BlobStore,
    request: &'a BuildRequest,
    python: &'a PythonOptions,
) -> SdistBuilder<'a> {
    let the_base = base.clone();
    let resolve = move |store: &BlobStore| -> Result<BuilderImage> {
        let image = match &python.builder_base {
            Some(text) => resolve_base(&BaseRef::parse(text)?, store, platform, request)?,
            None => the_base.clone(),
        };
        pull::fetch_missing(store, &image.layers, &|remote| {
            request.registry.client_for_remote(remote)
        })?;
        // A rootfs or scratch base has no manifest digest of its own: its
        // layers' digests name it.
        let digest = image.digest.clone().unwrap_or_else(|| {
            let layers: Vec<&str> = image
                .layers
                .iter()
                .map(|l| l.blob.digest.as_str())
                .collect();
            sha256_digest(layers.join("\n").as_bytes())
        });
        Ok(BuilderImage {
            digest,
            layers: image.layers,
            config: image.config,
        })
    };
    let description = python.builder_base.as_deref().unwrap_or(base_text);
    SdistBuilder::new(
        portable_base_name(description),
        store.clone(),
        request.epoch,
        Box::new(resolve),
    )
}

/// Python used by the default base when the experiment does not say.
const DEFAULT_PYTHON: &str = "3.13";

/// The base used when none is configured: the official Python image on
/// Debian bookworm (with libpq5, a compiler and headers, as Dallinger's own
/// bases), for the Python the experiment asks for: `.python-version`, else
/// the version `dallinger constraints generate` compiled for.
pub fn default_base(experiment_dir: &Path) -> (String, String) {
    let minor = |text: &str| -> Option<String> {
        let mut parts = text.trim().split('.');
        let (major, minor) = (parts.next()?, parts.next()?);
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        (major == "3" && digits(minor)).then(|| format!("3.{minor}"))
    };
    if let Some(v) = fs::read_to_string(experiment_dir.join(".python-version"))
        .ok()
        .and_then(|t| t.lines().next().and_then(minor))
    {
        return (
            format!("docker.io/library/python:{v}-bookworm"),
            format!("Python {v} from .python-version"),
        );
    }
    if let Some(v) = fs::read_to_string(experiment_dir.join("constraints.txt"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.split("requesting Python ").nth(1).and_then(minor))
        })
    {
        return (
            format!("docker.io/library/python:{v}-bookworm"),
            format!("Python {v}, as constraints.txt was compiled for"),
        );
    }
    (
        format!("docker.io/library/python:{DEFAULT_PYTHON}-bookworm"),
        format!("Python {DEFAULT_PYTHON}, the default"),
    )
}

/// The base as the lock records it: no host path (only a file or directory
/// name for local bases), since the lock is committed with the experiment.
fn portable_base_name(base_text: &str) -> String {
    let last = |path: &str| {
        Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if let Some(file) = base_text.strip_prefix("rootfs:") {
        return format!("rootfs:{}", last(file));
    }
    if let Some(rest) = base_text.strip_prefix("oci:") {
        let (dir, tag) = base::split_dir_and_tag(rest);
        let dir = last(&dir.to_string_lossy());
        return match tag {
            Some(tag) => format!("oci:{dir}:{tag}"),
            None => format!("oci:{dir}"),
        };
    }
    base_text.to_string()
}

/// `docker_image_base_name`, or — for builds that name their own output or
/// tag — the directory name, as Dallinger's `debug` does.
fn image_repository(experiment: &Experiment, request: &BuildRequest) -> Result<String> {
    if let Some(name) = experiment.get("docker_image_base_name") {
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('@') {
            bail!(
                "docker_image_base_name = {name:?} in config.txt is not an image repository \
                 (e.g. ghcr.io/USER/EXPERIMENT)"
            );
        }
        return Ok(name.to_string());
    }
    if request.tag.is_some() || !request.outputs.is_empty() {
        return Ok(sanitise_repository(&experiment.dir_name()));
    }
    bail!(
        "docker_image_base_name is not set: add `docker_image_base_name = ghcr.io/USER/EXPERIMENT` \
         under [Docker] in {}/config.txt (or in ~/.dallingerconfig), or pass --output/--tag",
        experiment.dir.display()
    )
}

/// A repository name from a directory name: lowercase, other characters `-`.
fn sanitise_repository(name: &str) -> String {
    let cleaned: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "experiment".into()
    } else {
        trimmed.to_string()
    }
}

fn validate_tag(tag: &str) -> Result<String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        bail!("--tag {tag:?} is not a valid tag (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')");
    }
    Ok(tag.to_string())
}

/// The experiment-code layer: everything under `/experiment`.
fn experiment_tree(experiment: &Experiment) -> Result<LayerTree> {
    let mut tree = LayerTree::new();
    tree.add_dir("experiment")?;
    for file in &experiment.files {
        // The lock is an input recorded by digest, not experiment code: the
        // image must not change when it is (re)written.
        if file.rel == crate::plan::LOCK_FILE {
            continue;
        }
        let path = format!("experiment/{}", file.rel);
        match &file.kind {
            FileKind::File { source, executable } => {
                tree.add_file(&path, Content::File(source.clone()), *executable)?
            }
            FileKind::Generated { bytes, executable } => {
                tree.add_file(&path, Content::Bytes(bytes.clone()), *executable)?
            }
            FileKind::Symlink { target } => tree.add_symlink(&path, target)?,
        }
    }
    Ok(tree)
}

/// The layer for `tree` from the store when its inputs were built before,
/// else written now and remembered.
fn layer_from_cache_or_write(
    store: &BlobStore,
    tree: &LayerTree,
    options: &WriteOptions,
) -> Result<(StoredLayer, bool)> {
    let key = tree.input_key(options)?;
    if let Some(layer) = store.cached_layer(&key) {
        return Ok((layer, true));
    }
    let layer = store.put_layer_with(options.codec.media_type(), |sink| {
        Ok(tree.write(options, sink)?)
    })?;
    store.remember_layer(&key, &layer)?;
    Ok((layer, false))
}

/// The default cache directory: `$DALLINGER_OCI_CACHE` is handled by the CLI;
/// this is the user cache dir's `dallinger-oci`.
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("dallinger-oci")
}

/// Writes `sha256:HEX` and a newline to `path`, atomically.
pub fn write_digest_file(path: &Path, digest: &str) -> Result<()> {
    crate::fsutil::write(path, format!("{digest}\n").as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RegistryOptions {
        RegistryOptions {
            insecure: Vec::new(),
            credentials: CredentialContext::default(),
            retry: RetryPolicy::default(),
            refresh_base: false,
            push_registry: OnceLock::new(),
        }
    }

    #[test]
    fn the_push_target_is_the_registry_the_image_name_names() {
        let named = options();
        named.set_push_target("ghcr.io/lab/stroop:abc");
        assert_eq!(
            named.push_registry.get().map(String::as_str),
            Some("ghcr.io")
        );
        let port = options();
        port.set_push_target("127.0.0.1:5000/lab/app:1");
        assert_eq!(
            port.push_registry.get().map(String::as_str),
            Some("127.0.0.1:5000")
        );
        // A local build's name is no registry's, Docker Hub's least of all.
        for name in ["stroop:abc", "lab/stroop:abc"] {
            let local = options();
            local.set_push_target(name);
            assert_eq!(local.push_registry.get(), None, "{name}");
        }
    }

    #[test]
    fn parses_outputs() {
        assert_eq!(
            OutputRef::parse("oci:out:v1").unwrap(),
            OutputRef::OciLayout {
                dir: "out".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            OutputRef::parse("docker-archive:x.tar").unwrap(),
            OutputRef::DockerArchive {
                file: "x.tar".into()
            }
        );
        assert!(OutputRef::parse("dir:x").is_err());
    }

    #[test]
    fn default_base_follows_the_experiments_python() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            default_base(dir.path()).0,
            "docker.io/library/python:3.13-bookworm"
        );
        fs::write(
            dir.path().join("constraints.txt"),
            "# Compiled from a requirements.txt file with md5sum x and a .python-version file requesting Python 3.12\n",
        )
        .unwrap();
        assert_eq!(
            default_base(dir.path()).0,
            "docker.io/library/python:3.12-bookworm"
        );
        fs::write(dir.path().join(".python-version"), "3.11.9\n").unwrap();
        assert_eq!(
            default_base(dir.path()).0,
            "docker.io/library/python:3.11-bookworm"
        );
        fs::write(dir.path().join(".python-version"), "pypy3.10\n").unwrap();
        assert_eq!(
            default_base(dir.path()).0,
            "docker.io/library/python:3.12-bookworm"
        );
    }

    #[test]
    fn directory_names_become_repositories() {
        assert_eq!(sanitise_repository("Bartlett 1932"), "bartlett-1932");
        assert_eq!(sanitise_repository("--"), "experiment");
        assert!(validate_tag("v1.0").is_ok());
        assert!(validate_tag("-x").is_err());
    }
}
