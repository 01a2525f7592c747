//! `build`: experiment → layers → image → outputs, in one direction.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use dallinger_oci_layers::{Codec, Content, KeyHasher, LayerTree, WriteOptions};

use crate::base::{self, BaseRef};
use crate::experiment::{Experiment, FileKind, LoadOptions};
use crate::http::RetryPolicy;
use crate::image::metadata::ImageMetadata;
use crate::image::platform::{Platform, Platforms};
use crate::image::store::{
    sha256_digest, sha256_file, BlobFetcher, BlobStore, LayerDescription, ProducedLayer,
};
use crate::image::{self, ConfigChanges, Image, ImageLayer, RemoteBlob};
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
use crate::registry::mirrors::{Mirrors, PullSource, Puller};
use crate::registry::push::PushOptions;
use crate::registry::{pull, Reference, RegistryClient};
use crate::sink::{self, Built};

/// Seconds since the epoch used for every time in an image when
/// `SOURCE_DATE_EPOCH` is not set: 2000-01-01T00:00:00Z, fixed and after 1980
/// (zip-based tools reject earlier times).
pub const DEFAULT_EPOCH: u64 = 946_684_800;

/// Where the image goes: `--output`, parsed (see `sink`).
pub use crate::sink::OutputRef;

/// How to reach registries, for bases and pushes.
#[derive(Clone)]
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
    /// registries.conf: where images are pulled from (never pushed to).
    pub mirrors: Mirrors,
}

impl RegistryOptions {
    /// Records the registry of the image named `image_name`, the push
    /// target. A name without a registry host (a local build's directory
    /// name) names none: it is not Docker Hub's.
    pub fn set_push_target(&self, image_name: &str) {
        let names_a_registry = Reference::names_registry_host(image_name);
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

    /// Where `image` is pulled from (registries.conf: its mirrors, then its
    /// location), each source reached with the credentials of its own host.
    /// `blobs`: for blobs, which every mirror may serve.
    pub fn puller(&self, image: &Reference, blobs: bool) -> Result<Puller<'_>> {
        Ok(Puller {
            image: image.clone(),
            sources: self.mirrors.conf()?.pull_sources(image, blobs)?,
            connect: Box::new(move |source: &PullSource| {
                let mut options = self.clone();
                if source.insecure {
                    options.insecure.push(source.reference.registry.clone());
                }
                options.client(&source.reference)
            }),
        })
    }
}

/// Base layers come from the registry that holds them, with the
/// credentials [`RegistryOptions::client`] chooses.
impl BlobFetcher for RegistryOptions {
    fn fetch(
        &self,
        remote: &RemoteBlob,
        digest: &str,
        size: u64,
        import: &mut dyn FnMut(&mut dyn std::io::Read) -> Result<()>,
    ) -> Result<()> {
        let image = Reference {
            registry: remote.registry.clone(),
            repository: remote.repository.clone(),
            tag: None,
            digest: None,
        };
        self.puller(&image, true)?.get_blob(digest, size, import)
    }
}

pub struct BuildRequest {
    pub experiment_dir: PathBuf,
    pub base: Option<String>,
    pub outputs: Vec<OutputRef>,
    /// How registry outputs push (`--use-existing`, `--chunk-size`, `--parallel`).
    pub push: PushOptions,
    /// The image is pushed to its own name after the build (`push`, `--push`).
    pub pushes_image: bool,
    pub tag: Option<String>,
    /// Further tags (after `tag`), config labels and manifest annotations
    /// (`--tag`, `--label`, `--annotation` and their files).
    pub metadata: ImageMetadata,
    pub cache_dir: PathBuf,
    pub platform: Option<String>,
    pub epoch: u64,
    /// How new layers are compressed (`--compression`).
    pub compression: Codec,
    /// Compression worker threads (0: one per core); never changes bytes.
    pub compression_jobs: usize,
    pub home_config: Option<PathBuf>,
    pub registry: RegistryOptions,
    /// How to install the experiment's Python dependencies; `None` builds
    /// only the experiment layer on the base (`--no-deps`).
    pub python: Option<PythonOptions>,
    /// What to do with the experiment's own prepare script and Dockerfile.
    pub customisation: Customisation,
    /// `digest`: add the image up from the lock and the code layer, making
    /// no other layer and writing no output; a layer the lock cannot
    /// predict is an error naming it.
    pub adding_up: bool,
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
    /// The Dockerfile's `--build-arg NAME=VALUE`s (native build).
    pub build_args: Vec<(String, String)>,
    /// Give the Dockerfile's `RUN`s the host's network.
    pub build_network: bool,
    /// Replace a `RUN` that only pip-installs the requirements by our
    /// locked Python layers.
    pub native_python: bool,
    /// The Dockerfile stage to build (default: the last).
    pub dockerfile_target: Option<String>,
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
    /// Ask the package indexes again instead of using what they said
    /// about the pins before (`--refresh`).
    pub refresh: bool,
}

struct PythonStage {
    layers: PythonLayers,
    dallinger_mount: Option<SourceMount>,
    /// The wheels installed, for the SBOM and provenance.
    wheels: Vec<crate::python::ResolvedWheel>,
    /// The target, as the lock records it.
    target: crate::plan::LockedTarget,
    /// Holds Dallinger's files when they came from its layer.
    _dallinger_files: Option<tempfile::TempDir>,
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
) -> Result<PythonStage> {
    let lock = Lock::read(&experiment.dir)?;
    let base_identity = crate::predict::base_identity(base);
    let target = match lock
        .as_ref()
        .and_then(|l| crate::predict::locked_target(l, &base_identity, &python.overrides))
    {
        // Read from this very base before: none of its bytes are needed.
        Some(target) => target,
        None => {
            // Reading the target needs the base layers' bytes.
            store.fetch_missing(&base.layers)?;
            target::detect(store, &base.layers, &base.config, &python.overrides)
                .map_err(|e| e.context("reading the base image's Python (use --no-deps to build without Python dependencies)"))?
        }
    };
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
        target: None,
        layers: Vec::new(),
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
                let store = store.clone();
                editable_check = Some(std::thread::spawn(move || {
                    warn_about_editable_dallinger(&store)
                }));
            }
            (Vec::new(), None)
        }
    };
    let resolve_request = ResolveRequest {
        requirements: &requirements,
        target: &target,
        index: &python.index,
        inputs,
        lock,
        locked: python.locked,
        parallel: python.parallel,
        // git requirements and sdists are built only with --build-sdists.
        sdists: builder.as_ref().filter(|_| python.build_sdists),
        local_wheels: &local_wheels,
        store,
        refresh: python.refresh,
    };
    let requested_of = |resolution: &crate::python::Resolution| -> Result<BTreeSet<PackageName>> {
        requested_packages(experiment, &requirements, resolution)
    };
    let clock_on = experiment.clock_on();
    if python.compile_bytecode {
        let wanted = Platform::parse(platform)?;
        crate::image::platform::can_run(&wanted).map_err(|why| {
            anyhow::anyhow!(
                "--compile-bytecode for {wanted} runs the base's {wanted} Python, which this \
                 machine cannot run ({why}): register qemu-user-static's interpreters with \
                 binfmt_misc (Debian: apt install qemu-user-static), or build {wanted} without \
                 --compile-bytecode"
            )
        })?;
    }
    let compiler = python
        .compile_bytecode
        .then(|| BytecodeCompiler::new(store, &base.layers, &base.config));
    let locked_target = crate::plan::LockedTarget {
        base_digest: base_identity.clone(),
        overrides: crate::predict::overrides_text(&python.overrides),
        python: target.clone(),
    };
    // When the lock predicts layers (or `digest` adds them up), its wheels
    // are fetched only if a layer must be made after all.
    if (store.predicts() || request.adding_up) && !python.write_lock {
        if let Some(resolution) = crate::python::locked_unfetched(&resolve_request)? {
            let requested = requested_of(&resolution)?;
            let mut wheels = resolution.wheels.clone();
            // A wheel at hand gives Dallinger's files only when it is the
            // locked one.
            for wheel in wheels.iter_mut().filter(|w| w.normalised == "dallinger") {
                let verified = wheel.path.is_file()
                    && sha256_file(&wheel.path)?.trim_start_matches("sha256:") == wheel.sha256;
                if !verified {
                    wheel.path = PathBuf::new();
                }
            }
            match python_layers(
                &store.known_only(),
                &target,
                &wheels,
                &requested,
                clock_on,
                compiler.as_ref(),
            ) {
                Ok(mut layers) => {
                    let mut files_dir = None;
                    let dallinger = wheels.iter().any(|w| w.normalised == "dallinger");
                    if dallinger && layers.experiment_files.is_empty() {
                        let layer = &layers.layers.last().context("no Dallinger layer")?.layer;
                        let (dir, files) = crate::predict::dallinger_files_from_layer(
                            store, layer, &target, clock_on,
                        )?;
                        layers.experiment_files = files
                            .into_iter()
                            .map(|(rel, path)| (rel, Content::File(path)))
                            .collect();
                        files_dir = Some(dir);
                    }
                    eprintln!(
                        "Python {}.{}.{} in the base: {} wheels from the lock, none fetched: the lock predicts their layers",
                        target.python_version.0,
                        target.python_version.1,
                        target.python_version.2,
                        wheels.len()
                    );
                    if let Some(check) = editable_check {
                        let _ = check.join();
                    }
                    return Ok(PythonStage {
                        layers,
                        wheels,
                        dallinger_mount: None,
                        target: locked_target,
                        _dallinger_files: files_dir,
                    });
                }
                Err(err) if request.adding_up => return Err(err),
                Err(err) if err.is::<crate::image::store::NotPredicted>() => {}
                Err(err) => return Err(err),
            }
        }
    }
    let resolution = resolve(&resolve_request)?;
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
    let requested = requested_of(&resolution)?;
    let layers = python_layers(
        store,
        &target,
        &resolution.wheels,
        &requested,
        clock_on,
        compiler.as_ref(),
    )?;
    if let Some(check) = editable_check {
        let _ = check.join();
    }
    Ok(PythonStage {
        layers,
        dallinger_mount,
        wheels: resolution.wheels,
        target: locked_target,
        _dallinger_files: None,
    })
}

/// REQUESTED marks what the experiment asked for itself: its
/// requirements.txt when it has one, else every pin.
fn requested_packages(
    experiment: &Experiment,
    requirements: &Path,
    resolution: &crate::python::Resolution,
) -> Result<BTreeSet<PackageName>> {
    let top_level = experiment.dir.join("requirements.txt");
    Ok(if top_level.is_file() && requirements != top_level {
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
    })
}

pub struct BuildResult {
    pub store: BlobStore,
    /// `REPOSITORY:TAG`.
    pub image_name: String,
    pub tag: String,
    /// The image's other tags, after `tag`.
    pub extra_tags: Vec<String>,
    pub image: Image,
    /// Whether the experiment layer came from the cache.
    pub layer_reused: bool,
    /// What the build resolved: for `--sbom` and `--provenance`.
    pub inventory: crate::attest::Inventory,
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

/// How new layers are compressed: `--compression` (`flag`), else
/// `DALLINGER_OCI_COMPRESSION`, else gzip.
pub fn compression(flag: Option<&str>) -> Result<Codec> {
    if let Some(name) = flag {
        return name
            .parse()
            .with_context(|| format!("--compression {name}"));
    }
    match std::env::var("DALLINGER_OCI_COMPRESSION") {
        Ok(name) if !name.is_empty() => name
            .parse()
            .with_context(|| format!("DALLINGER_OCI_COMPRESSION={name}")),
        _ => Ok(Codec::default()),
    }
}

/// Compression worker threads from `DALLINGER_OCI_JOBS` (unset or 0: one
/// per core). The bytes are the same for any number.
pub fn compression_jobs() -> Result<usize> {
    match std::env::var("DALLINGER_OCI_JOBS") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| {
            format!("DALLINGER_OCI_JOBS={v:?} is not a number of threads (0: one per core)")
        }),
        _ => Ok(0),
    }
}

pub fn build(request: &BuildRequest) -> Result<BuildResult> {
    // Sources: the experiment, the image's name, the base, the platforms.
    let mut sources = Sources::read(request)?;
    let platforms = sources.resolve_platforms(request)?;
    request.metadata.warn_about_wall_clock_times(request.epoch);
    let store = BlobStore::open(&request.cache_dir)?
        .producing(WriteOptions {
            mtime: request.epoch,
            workers: request.compression_jobs,
            codec: request.compression,
        })
        .fetching_with(std::sync::Arc::new(request.registry.clone()));
    let dockerfile_engine = request
        .customisation
        .dockerfile_engine
        .filter(|_| sources.experiment.has_dockerfile());
    let mut inventory = crate::attest::Inventory {
        source: sources
            .experiment
            .git
            .as_ref()
            .map(|g| crate::attest::SourceEntry {
                url: g.source.clone(),
                revision: g.revision.clone(),
            }),
        lock_sha256: crate::attest::lock_sha256(&sources.experiment.dir)?,
        parameters: byte_changing_options(request, &sources),
        from_dockerfile: sources.experiment.has_dockerfile(),
        ..Default::default()
    };
    if request.adding_up && sources.experiment.has_dockerfile() {
        bail!(
            "{}: an image built from the experiment's own Dockerfile cannot be predicted: build it to know its digest",
            sources.experiment.dir.join("Dockerfile").display()
        );
    }
    let (image, layer_reused, dallinger_mount) = match dockerfile_engine {
        Some(engine) => (
            dockerfile_image(&sources, &store, engine, &request.metadata)?,
            false,
            None,
        ),
        None if sources.experiment.has_dockerfile() => {
            let (image, reused) = native_dockerfile_image(request, &sources, &store)?;
            (image, reused, None)
        }
        None => {
            // One image per platform, each the whole pipeline on its own
            // base manifest, then an index over them; one platform is its
            // image alone, as before.
            let mut images = Vec::new();
            let mut layer_reused = true;
            let mut dallinger_mount = None;
            for platform in &platforms {
                sources.platform = platform.clone();
                if platforms.len() > 1 {
                    eprintln!("Building for {platform}");
                }
                // The lock's record of this platform is the one read and written.
                let _lock_record = crate::plan::for_platform(platform);
                let built = platform_image(request, &sources, &store, &mut inventory)?;
                layer_reused &= built.1;
                dallinger_mount = dallinger_mount.or(built.2);
                images.push((Platform::parse(platform)?, built.0));
            }
            sources.platform = platforms[0].clone();
            if request.python.as_ref().is_some_and(|p| p.write_lock) {
                crate::plan::Lock::retain_platforms(&sources.experiment.dir, &platforms)?;
            }
            let image = match images.len() {
                1 => images.remove(0).1,
                _ => Image::index(&store, images, &request.metadata.annotations)?,
            };
            (image, layer_reused, dallinger_mount)
        }
    };

    // The outputs.
    if !request.adding_up {
        write_outputs(request, &store, &image, &sources)?;
    }
    Ok(BuildResult {
        store,
        image_name: sources.image_name,
        tag: sources.tag,
        extra_tags: sources.extra_tags,
        image,
        layer_reused,
        dallinger_mount,
        inventory,
    })
}

/// The image for `sources.platform`: its base manifest, the layers on it
/// (each stage for this platform), its config; whether the experiment
/// layer came from the cache, and `--dallinger-src`'s mount. The
/// inventory gets this platform's base, wheels and Debian packages.
fn platform_image(
    request: &BuildRequest,
    sources: &Sources,
    store: &BlobStore,
    inventory: &mut crate::attest::Inventory,
) -> Result<(Image, bool, Option<SourceMount>)> {
    let base = match &sources.base_ref {
        // The base's Python is read from its blobs while they are imported.
        layout @ BaseRef::OciLayout { .. } => base::resolve_with(
            layout,
            store,
            &sources.platform,
            request.epoch,
            &|base, files| scan_target_ahead(request, sources, store, base, files),
        )?,
        other => resolve_base(other, store, &sources.platform, request)?,
    };
    // The layers the lock predicts and the registry already has
    // are taken as made (see `predict`).
    let store = store.clone().predicting(crate::predict::predictions(
        Lock::read(&sources.experiment.dir)?.as_ref(),
        store,
        &base,
        &crate::predict::Lookup {
            registry: &request.registry,
            targets: &request.push_targets(&sources.image_name),
            adding_up: request.adding_up,
        },
    )?);

    // The layers on the base, each described by its stage and
    // produced by the store.
    let stages = new_layers(request, sources, &base, &store)?;
    if inventory.base.is_none() {
        inventory.base =
            (base.digest.is_some() || !base.layers.is_empty()).then(|| crate::attest::BaseEntry {
                reference: portable_base_name(&sources.base_text),
                name: base.name.clone(),
                digest: base.digest.clone(),
            });
    }
    // Each platform's files once (a pure-Python wheel is every platform's).
    for wheel in &stages.wheels {
        if !inventory.wheels.iter().any(|w| w.sha256 == wheel.sha256) {
            inventory.wheels.push(wheel.clone());
        }
    }
    for deb in &stages.debs {
        if !inventory.debs.contains(deb) {
            inventory.debs.push(deb.clone());
        }
    }
    let layer_reused = stages.layers.last().is_some_and(|l| l.reused);

    // The image.
    let changes = config_changes(request, &sources.experiment, &base, &stages);
    let history: Vec<(&ImageLayer, &str)> = stages
        .layers
        .iter()
        .map(|l| (&l.layer, l.created_by.as_str()))
        .collect();
    let config = image::derive_config(&base.config, &changes, &history)?;
    let mut layers = base.layers;
    layers.extend(stages.layers.into_iter().map(|l| l.layer));
    let image = Image::assemble_annotated(&store, &config, layers, &request.metadata.annotations)?;
    Ok((image, layer_reused, stages.dallinger_mount))
}

/// The options that change the image's bytes, as provenance records them.
fn byte_changing_options(
    request: &BuildRequest,
    sources: &Sources,
) -> BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    let python = request.python.as_ref();
    let custom = &request.customisation;
    let mut options = BTreeMap::from([
        ("base".into(), json!(portable_base_name(&sources.base_text))),
        ("platform".into(), json!(platforms_text(&sources.platforms))),
        ("source_date_epoch".into(), json!(request.epoch)),
        ("compression".into(), json!(request.compression.to_string())),
        ("no_deps".into(), json!(python.is_none())),
        (
            "compile_bytecode".into(),
            json!(python.is_some_and(|p| p.compile_bytecode)),
        ),
        (
            "build_sdists".into(),
            json!(python.is_some_and(|p| p.build_sdists)),
        ),
        (
            "dallinger_src".into(),
            json!(python.is_some_and(|p| p.dallinger_src.is_some())),
        ),
        ("run_prepare".into(), json!(custom.run_prepare)),
        ("prepare_network".into(), json!(custom.prepare_network)),
        (
            "dockerfile".into(),
            json!(custom.dockerfile_engine.is_some()),
        ),
    ]);
    if sources.experiment.has_dockerfile() {
        // Build args by name only: a value may be a secret.
        let names: Vec<&str> = custom.build_args.iter().map(|(k, _)| k.as_str()).collect();
        options.insert("build_args".into(), json!(names));
        options.insert("build_network".into(), json!(custom.build_network));
        options.insert("native_python".into(), json!(custom.native_python));
    }
    options
}

/// The platforms as provenance records them: `linux/amd64`, or several
/// joined by commas as `--platform` takes them.
fn platforms_text(platforms: &Platforms) -> String {
    match platforms {
        Platforms::Listed(listed) => {
            let texts: Vec<String> = listed.iter().map(Platform::to_string).collect();
            texts.join(",")
        }
        Platforms::All => "all".into(),
    }
}

/// What a build starts from: the experiment, its image's name and tag,
/// the base it names and the platform.
struct Sources {
    experiment: Experiment,
    tag: String,
    /// The image's other tags (`--tag`, `--tags-file`).
    extra_tags: Vec<String>,
    /// `REPOSITORY:TAG`.
    image_name: String,
    base_text: String,
    base_ref: BaseRef,
    /// The platform being built (the first of `platforms` until the
    /// per-platform loop sets each in turn).
    platform: String,
    /// `--platform`: every platform the image is built for, in order
    /// (`all` is resolved against the base by [`Sources::resolve_platforms`]).
    platforms: Platforms,
}

impl Sources {
    fn read(request: &BuildRequest) -> Result<Sources> {
        let experiment = Experiment::load(
            &request.experiment_dir,
            &LoadOptions {
                home_config: request.home_config.clone(),
            },
        )?;
        refuse_unrequested_customisation(&experiment, &request.customisation)?;
        let configured = configured_repository(&experiment)?;
        let (named, mut tags) = request.metadata.resolve_tags(configured.as_deref())?;
        if let Some(tag) = &request.tag {
            let tag = validate_tag(tag)?;
            tags.retain(|t| *t != tag);
            tags.insert(0, tag);
        }
        let repository = match configured.or(named) {
            Some(repository) => repository,
            None => image_repository(&experiment, request, !tags.is_empty())?,
        };
        let tag = match tags.is_empty() {
            true => experiment.default_tag(),
            false => tags.remove(0),
        };
        let extra_tags = tags;
        let image_name = format!("{repository}:{tag}");
        request.claim_push_target(&image_name)?;
        let base_text = match (&request.base, experiment.get("docker_base_image")) {
            (Some(b), _) => b.clone(),
            (None, Some(b)) => b.to_string(),
            // A Dockerfile names its own bases.
            (None, None) if experiment.has_dockerfile() => "scratch".to_string(),
            (None, None) => {
                let (base, why) = default_base(&experiment.dir);
                eprintln!("No base image configured: using {base} ({why}); set docker_base_image under [Docker] or pass --base to choose");
                base
            }
        };
        let base_ref = BaseRef::parse(&base_text)?;
        // Parsed once: everything below gets the canonical `os/arch[/variant]`.
        let platforms = Platforms::parse(
            request
                .platform
                .as_deref()
                .unwrap_or(base::DEFAULT_PLATFORM),
        )?;
        let platform = match &platforms {
            Platforms::Listed(listed) => listed[0].to_string(),
            Platforms::All => String::new(),
        };
        Ok(Sources {
            experiment,
            tag,
            extra_tags,
            image_name,
            base_text,
            base_ref,
            platform,
            platforms,
        })
    }

    /// The platforms to build, `all` read from the base's index; refuses
    /// several for an output that holds one platform (a docker-archive)
    /// or a build that makes one (the experiment's Dockerfile).
    fn resolve_platforms(&mut self, request: &BuildRequest) -> Result<Vec<String>> {
        let platforms: Vec<String> = match &self.platforms {
            Platforms::Listed(listed) => listed.iter().map(Platform::to_string).collect(),
            Platforms::All => base_platforms(&self.base_ref, &self.base_text, request)?
                .iter()
                .map(Platform::to_string)
                .collect(),
        };
        if platforms.len() > 1 {
            let one = request
                .outputs
                .iter()
                .find_map(|o| o.sink().one_platform())
                .or(request
                    .customisation
                    .dockerfile_engine
                    .filter(|_| self.experiment.has_dockerfile())
                    .map(|_| "the experiment's Dockerfile, built by --dockerfile-engine,"));
            if let Some(output) = one {
                bail!(
                    "{}",
                    crate::image::archive::one_platform_only(output, &platforms)
                );
            }
        }
        self.platform = platforms[0].clone();
        self.platforms = Platforms::Listed(
            platforms
                .iter()
                .map(|p| Platform::parse(p))
                .collect::<Result<_, _>>()?,
        );
        Ok(platforms)
    }
}

/// `--platform all`: the platforms of the base's image index.
fn base_platforms(
    base_ref: &BaseRef,
    base_text: &str,
    request: &BuildRequest,
) -> Result<Vec<Platform>> {
    let found = match base_ref {
        BaseRef::Registry(reference) => {
            let client = request.registry.client(reference)?;
            let (bytes, _, _) = client
                .get_manifest(&reference.repository, reference.manifest_ref())
                .with_context(|| format!("base {reference}"))?;
            let parsed: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("the manifest of {reference} is not JSON"))?;
            parsed
                .get("manifests")
                .and_then(serde_json::Value::as_array)
                .map(|m| crate::image::platform::index_platforms(m))
        }
        BaseRef::OciLayout { dir, tag } => image::layout::index_platforms(dir, tag.as_deref())?,
        BaseRef::Scratch | BaseRef::Rootfs { .. } => None,
    };
    match found {
        Some(platforms) if !platforms.is_empty() => Ok(platforms),
        _ => bail!(
            "--platform all builds every platform of the base's image index, and the base {} \
             is a single image: name the platforms, e.g. --platform linux/amd64,linux/arm64",
            portable_base_name(base_text)
        ),
    }
}

/// The experiment's own Dockerfile, built by a container engine: its
/// result is the image.
fn dockerfile_image(
    sources: &Sources,
    store: &BlobStore,
    engine: crate::dockerfile::DockerfileEngine,
    metadata: &ImageMetadata,
) -> Result<Image> {
    let mut built = crate::dockerfile::build_with_engine(
        engine,
        &sources.experiment,
        &sources.image_name,
        store,
        &sources.platform,
    )?;
    image::add_labels(&mut built.config, &metadata.labels)?;
    Image::assemble_annotated(store, &built.config, built.layers, &metadata.annotations)
}

/// The experiment's own Dockerfile, built without an engine (see
/// `dockerfile::native`): bases resolved as `--base` is, a pip install of
/// the requirements replaced by our Python layers with `--native-python`.
fn native_dockerfile_image(
    request: &BuildRequest,
    sources: &Sources,
    store: &BlobStore,
) -> Result<(Image, bool)> {
    let custom = &request.customisation;
    let resolve = |text: &str| -> Result<base::BaseImage> {
        resolve_base(&BaseRef::parse(text)?, store, &sources.platform, request)
    };
    let python_layers =
        |config: &serde_json::Value, layers: &[ImageLayer]| -> Result<Vec<ProducedLayer>> {
            let python = request.python.as_ref().context(
                "--native-python installs the requirements with the Python stage: drop --no-deps",
            )?;
            let so_far = base::BaseImage {
                config: config.clone(),
                layers: layers.to_vec(),
                name: None,
                digest: None,
            };
            let stage = python_stage(
                &sources.experiment,
                &so_far,
                "Dockerfile",
                &sources.platform,
                store,
                request,
                python,
            )?;
            Ok(stage.layers.layers)
        };
    let native_python: Option<crate::dockerfile::native::PythonLayers> = match custom.native_python
    {
        true => Some(&python_layers),
        false => None,
    };
    let built = crate::dockerfile::native::build(&crate::dockerfile::native::NativeRequest {
        experiment: &sources.experiment,
        store,
        platform: &sources.platform,
        epoch: request.epoch,
        build_args: &custom.build_args,
        network: custom.build_network,
        target: custom.dockerfile_target.as_deref(),
        resolve_image: &resolve,
        native_python,
    })?;
    if !built.reproducible {
        eprintln!(
            "warning: a RUN of the Dockerfile had the host's network (--build-network): this image's digest is not reproducible"
        );
    }
    let mut config = built.config;
    image::add_labels(&mut config, &request.metadata.labels)?;
    let image =
        Image::assemble_annotated(store, &config, built.layers, &request.metadata.annotations)?;
    Ok((image, built.last_reused))
}

/// The layers a build adds to its base, in order, and what they leave for
/// the image.
struct NewLayers {
    /// Debian packages, Python dependencies, Dallinger, the prepare
    /// script's changes, the experiment code (always last).
    layers: Vec<ProducedLayer>,
    /// The sha256 of the prepare script that ran, for its label.
    prepare_script: Option<String>,
    dallinger_mount: Option<SourceMount>,
    /// What was resolved, for the inventory.
    wheels: Vec<crate::python::ResolvedWheel>,
    debs: Vec<crate::plan::LockedDeb>,
}

fn new_layers(
    request: &BuildRequest,
    sources: &Sources,
    base: &base::BaseImage,
    store: &BlobStore,
) -> Result<NewLayers> {
    let experiment = &sources.experiment;
    // `digest` makes no layer but the code layer.
    let known = if request.adding_up {
        store.known_only()
    } else {
        store.clone()
    };
    // Debian packages sit right on the base: system libraries change less
    // often than Python pins, and wheels may load them.
    let debian = crate::debian::debian_layer(
        experiment,
        &base.layers,
        &sources.platform,
        &known,
        request.python.as_ref().is_some_and(|p| p.locked),
        request.registry.retry,
    )?;
    let python = match &request.python {
        Some(python) => Some(python_stage(
            experiment,
            base,
            &sources.base_text,
            &sources.platform,
            store,
            request,
            python,
        )?),
        None => None,
    };
    if request.python.as_ref().is_some_and(|p| p.write_lock) {
        crate::debian::record_in_lock(&experiment.dir, debian.as_ref())?;
    }
    let debs = debian
        .as_ref()
        .map(|d| d.lock.packages.clone())
        .unwrap_or_default();
    let mut layers: Vec<ProducedLayer> = debian.map(|d| d.produced).into_iter().collect();
    let (experiment_files, dallinger_mount, wheels, target, _dallinger_files) = match python {
        Some(python) => {
            layers.extend(python.layers.layers);
            (
                python.layers.experiment_files,
                python.dallinger_mount,
                python.wheels,
                Some(python.target),
                python._dallinger_files,
            )
        }
        None => (BTreeMap::new(), None, Vec::new(), None, None),
    };
    let prepare_script = match experiment.custom_prepare_script() {
        Some(_) if request.adding_up && request.customisation.prepare_network => bail!(
            "{}: a prepare script run with --prepare-network gives a layer no lock predicts: build the image to know its digest",
            experiment.dir.join("prepare_docker_image.sh").display()
        ),
        Some(script) => {
            let mut so_far = base.layers.clone();
            so_far.extend(layers.iter().map(|l| l.layer.clone()));
            let produced = prepare::prepare_layer(
                &known,
                &prepare::PrepareRequest {
                    script,
                    requirements: experiment.generated("requirements.txt").unwrap_or_default(),
                    layers: &so_far,
                    config: &base.config,
                    network: request.customisation.prepare_network,
                },
            )?;
            eprintln!(
                "prepare_docker_image.sh layer: {} ({})",
                produced.layer.blob.digest,
                if produced.reused {
                    "unchanged, reused"
                } else {
                    "built"
                }
            );
            layers.push(produced);
            Some(sha256_digest(script))
        }
        None => None,
    };
    let interpreter = target.as_ref().map(|t| t.python.interpreter.clone());
    if request.python.as_ref().is_some_and(|p| p.write_lock) {
        let predictable: Vec<&ProducedLayer> = layers
            .iter()
            .filter(|l| l.kind != "prepare" || !request.customisation.prepare_network)
            .collect();
        crate::predict::record_in_lock(&experiment.dir, store, target, &predictable)?;
    }
    let mut tree = experiment_tree(experiment)?;
    // The experiment's extra_files(), evaluated on the image so far; then
    // Dallinger's files: each goes in where nothing is yet, as Dallinger's
    // assembly copies the experiment first and skips what exists.
    let mut so_far = base.layers.clone();
    so_far.extend(layers.iter().map(|l| l.layer.clone()));
    let installed: Vec<String> = wheels.iter().map(|w| w.normalised.to_string()).collect();
    let hook = crate::experiment::extra_files::HookRequest {
        experiment,
        tree: &tree,
        layers: &so_far,
        config: &base.config,
        interpreter: interpreter.as_deref(),
        installed: &installed,
        adding_up: request.adding_up,
    };
    let extras = crate::experiment::extra_files::extra_files(store, &hook)?;
    add_extra_files(&mut tree, experiment, extras)?;
    for (rel, content) in experiment_files {
        let path = format!("experiment/{rel}");
        if tree.get(&path).is_none() {
            tree.add_file(&path, content, false)?;
        }
    }
    layers.push(store.produce(code_layer(tree)?)?);
    Ok(NewLayers {
        layers,
        prepare_script,
        dallinger_mount,
        wheels,
        debs,
    })
}

/// What the build changes in the base's config: labels naming the
/// sources, and, as Dallinger's generated Dockerfile, WORKDIR /experiment,
/// ENV PORT=5000, shell-form CMD dallinger_heroku_web.
fn config_changes(
    request: &BuildRequest,
    experiment: &Experiment,
    base: &base::BaseImage,
    stages: &NewLayers,
) -> ConfigChanges {
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
    if let Some(script) = &stages.prepare_script {
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
    // The user's labels (`--label`, `--labels-file`) override ours.
    labels.extend(request.metadata.labels.clone());
    ConfigChanges {
        epoch: request.epoch,
        env: vec![("PORT".into(), "5000".into())],
        working_dir: Some("/experiment".into()),
        cmd: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "dallinger_heroku_web".into(),
        ]),
        labels,
    }
}

/// Writes the image to every `--output`.
fn write_outputs(
    request: &BuildRequest,
    store: &BlobStore,
    image: &Image,
    sources: &Sources,
) -> Result<()> {
    let built = Built {
        store,
        image,
        name: &sources.image_name,
        tag: &sources.tag,
        extra_tags: &sources.extra_tags,
        epoch: request.epoch,
    };
    sink::write_all(&request.outputs, &built, &request.sink_env())
}

impl BuildRequest {
    /// Records the registry the explicit credentials go to (see
    /// `sink::claim_push_target`), once the image's name is known.
    fn claim_push_target(&self, image_name: &str) -> Result<()> {
        sink::claim_push_target(&self.registry, &self.outputs, image_name, self.pushes_image)
    }

    /// The registry repositories the image is pushed to: the `docker://`
    /// outputs', and its own name's when it is pushed there (`push`).
    /// For `digest`, the name's when it names a registry.
    fn push_targets(&self, image_name: &str) -> Vec<Reference> {
        let mut targets: Vec<Reference> = self
            .outputs
            .iter()
            .filter_map(|o| o.sink().push_target().cloned())
            .collect();
        if self.pushes_image || self.adding_up {
            if let Ok(target) = crate::registry::push::image_target(image_name) {
                targets.push(target);
            }
        }
        targets
    }

    /// What sinks need of the request.
    pub fn sink_env(&self) -> sink::Env<'_> {
        sink::Env {
            registry: &self.registry,
            push: &self.push,
        }
    }
}

impl BuildResult {
    /// The image as sinks take it.
    pub fn built(&self, epoch: u64) -> Built<'_> {
        Built {
            store: &self.store,
            image: &self.image,
            name: &self.image_name,
            tag: &self.tag,
            extra_tags: &self.extra_tags,
            epoch,
        }
    }
}

/// Stops before any work when the experiment customises its image in a way
/// the user has not allowed: a prepare script must run inside the image, a
/// Dockerfile needs a container engine. Neither is ever ignored.
fn refuse_unrequested_customisation(
    experiment: &Experiment,
    customisation: &Customisation,
) -> Result<()> {
    // A Dockerfile is built natively (or by the engine named): it decides
    // what runs, prepare script included.
    if experiment.has_dockerfile() {
        if customisation.dockerfile_engine.is_none() {
            crate::dockerfile::native::check(experiment)?;
        }
        return Ok(());
    }
    if customisation.native_python || customisation.build_network {
        bail!(
            "{}: --native-python and --build-network apply to an experiment's own Dockerfile, and this experiment has none",
            experiment.dir.display()
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
            let puller = request.registry.puller(reference, false)?;
            pull::resolve_base(
                &puller,
                store,
                reference,
                platform,
                request.registry.refresh_base,
            )
        }
        local => base::resolve(local, store, platform, request.epoch),
    }
}

/// Starts reading the base's Python (`target::scan_ahead`) when
/// `python_stage` will need it: Python dependencies, and no target the
/// lock recorded for this base.
fn scan_target_ahead(
    request: &BuildRequest,
    sources: &Sources,
    store: &BlobStore,
    base: &base::BaseImage,
    files: Vec<PathBuf>,
) {
    let Some(python) = request.python.as_ref().filter(|_| !request.adding_up) else {
        return;
    };
    let lock = Lock::read(&sources.experiment.dir).ok().flatten();
    let identity = crate::predict::base_identity(base);
    if lock
        .as_ref()
        .and_then(|l| crate::predict::locked_target(l, &identity, &python.overrides))
        .is_none()
    {
        target::scan_ahead(store, &base.layers, &base.config, files);
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
        store.fetch_missing(&image.layers)?;
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
    .for_platform(Platform::parse(platform).ok())
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

/// `docker_image_base_name`, when config.txt (or ~/.dallingerconfig) sets it.
fn configured_repository(experiment: &Experiment) -> Result<Option<String>> {
    if let Some(name) = experiment.get("docker_image_base_name") {
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('@') {
            bail!(
                "docker_image_base_name = {name:?} in config.txt is not an image repository \
                 (e.g. ghcr.io/USER/EXPERIMENT)"
            );
        }
        return Ok(Some(name.to_string()));
    }
    Ok(None)
}

/// For an image without `docker_image_base_name` or a `--tag` reference:
/// for builds that name their own output or tag, the directory name, as
/// Dallinger's `debug` does.
fn image_repository(
    experiment: &Experiment,
    request: &BuildRequest,
    tagged: bool,
) -> Result<String> {
    if tagged || !request.outputs.is_empty() || request.adding_up {
        return Ok(sanitise_repository(&experiment.dir_name()));
    }
    bail!(
        "docker_image_base_name is not set: add `docker_image_base_name = ghcr.io/USER/EXPERIMENT` \
         under [Docker] in {}/config.txt (or in ~/.dallingerconfig), or pass --output, --tag \
         TAG or --tag REPOSITORY:TAG",
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
    image::metadata::validate_tag(tag, &format!("--tag {tag:?}"))
}

/// The experiment-code layer: everything under `/experiment`.
pub(crate) fn experiment_tree(experiment: &Experiment) -> Result<LayerTree> {
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

/// Adds the files the experiment's `extra_files()` names to its tree,
/// where the experiment has none (see `experiment::extra_files`).
fn add_extra_files(
    tree: &mut LayerTree,
    experiment: &Experiment,
    extras: Vec<crate::experiment::extra_files::ExtraFile>,
) -> Result<()> {
    for extra in extras {
        let path = format!("experiment/{}", extra.rel);
        if tree.get(&path).is_none() {
            tree.add_file(&path, extra.content, false)
                .with_context(|| {
                    format!(
                        "{}: extra_files(): cannot put {} at /{path}",
                        experiment.dir.join("experiment.py").display(),
                        extra.source
                    )
                })?;
        }
    }
    Ok(())
}

/// The experiment-code layer: keyed by the tree itself (every file is read
/// once for the key), so an unchanged experiment reuses its layer.
fn code_layer(tree: LayerTree) -> Result<LayerDescription<'static>> {
    let mut key = KeyHasher::new();
    tree.add_to_key(&mut key)?;
    Ok(LayerDescription {
        kind: "code",
        key,
        created_by: "dallinger-oci: experiment code at /experiment".into(),
        fill: Box::new(move |writer| writer.tree(&tree)),
    })
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
            mirrors: Mirrors::default(),
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
