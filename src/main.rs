//! The `dallinger-oci` command line: parse, call the library, print.

mod cli_files;
mod cli_runtime;
mod cli_verify;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use dallinger_oci::attest::{provenance, sbom, Subject};
use dallinger_oci::build::{
    self, BuildRequest, BuildResult, OutputRef, PythonOptions, RegistryOptions,
};
use dallinger_oci::http::RetryPolicy;
use dallinger_oci::image::metadata::{ImageMetadata, MetadataArgs};
use dallinger_oci::image::store::Bucket;
use dallinger_oci::python::index::IndexConfig;
use dallinger_oci::python::TargetOverrides;
use dallinger_oci::registry::credentials::{CredentialContext, Secret};
use dallinger_oci::registry::mirrors::Mirrors;
use dallinger_oci::registry::push::{self, PushOptions};
use dallinger_oci::registry::referrers;
use dallinger_oci::sink::registry::RegistrySink;

#[derive(Parser)]
#[command(
    name = "dallinger-oci",
    version,
    about = "Build Dallinger experiment images without a Docker daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the experiment's image, reproducibly, into the cache and the outputs.
    Build {
        #[command(flatten)]
        build: BuildArgs,
        /// Also push the image to {docker_image_base_name}:{tag}.
        #[arg(long)]
        push: bool,
        #[command(flatten)]
        push_args: PushArgs,
        #[command(flatten)]
        attest: AttestArgs,
    },
    /// Resolve the experiment's Python pins for the base and write the lock
    /// (every wheel by URL and sha256, the base by digest) next to config.txt.
    Lock {
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Print the manifest digest the inputs give, from the lock and the
    /// experiment code, without making the other layers.
    Digest {
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Build the experiment's image and push it to {docker_image_base_name}:{tag}.
    Push {
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        push_args: PushArgs,
        #[command(flatten)]
        attest: AttestArgs,
    },

    /// Rebuild an image from its experiment and lock and compare them bit
    /// for bit; explain any difference (exit 1), layer by layer.
    #[command(mut_arg("cache_dir", |a| a.hide_env(true).help(
        "Cache for the rebuild (default: a fresh temporary one; DALLINGER_OCI_CACHE is \
         not used)"
    )))]
    #[command(mut_arg("experiment_dir", |a| a.hide_default_value(true).help(
        "The experiment directory (default: the repository and commit the image's \
         source and revision labels name, cloned)"
    )))]
    Verify(cli_verify::VerifyArgs),

    /// List what goes into /experiment (generated files marked) and, for each
    /// path left out, the rule that left it out (deploy.toml, or Dallinger's
    /// exclusion list, git and .dallingerignore).
    Files(cli_files::FilesArgs),

    // Commands that run containers (src/cli_runtime.rs).
    #[command(flatten)]
    Runtime(cli_runtime::RuntimeCommand),
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The experiment directory (holding config.txt and experiment.py).
    #[arg(default_value = ".")]
    experiment_dir: PathBuf,
    /// Base image: docker://HOST/REPO:TAG (or @sha256:…), oci:DIR[:TAG],
    /// rootfs:FILE.tar or scratch (default: docker_base_image from config.txt).
    #[arg(long)]
    base: Option<String>,
    /// Where to write the image: oci:DIR[:TAG], docker-archive:FILE or
    /// docker://HOST/REPO:TAG (pushed there); repeatable.
    #[arg(long = "output", short = 'o')]
    outputs: Vec<String>,
    /// Write the manifest digest (sha256:HEX) to this file.
    #[arg(long)]
    digest_file: Option<PathBuf>,
    #[command(flatten)]
    metadata: MetadataFlags,
    /// Layer cache and blob store.
    #[arg(long, env = "DALLINGER_OCI_CACHE")]
    cache_dir: Option<PathBuf>,
    /// Platform (os/arch[/variant]) of scratch and rootfs bases, and the one
    /// chosen from an index; several (linux/amd64,linux/arm64) or `all` (the
    /// base index's) build an image for each and an image index over them.
    #[arg(long, value_name = "OS/ARCH[,...]|all")]
    platform: Option<String>,
    /// Resolve a registry base's tag again instead of using the digest recorded earlier.
    #[arg(long)]
    pull: bool,
    /// Registry reached over plain HTTP (localhost and 127.0.0.1 always are); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Registry user name for the push target's registry (a docker://
    /// output's, else the image name's; other registries, and it without
    /// this, use auth files, credential helpers or GITHUB_TOKEN).
    #[arg(long, env = "DALLINGER_OCI_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Read the registry password or token from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Attempts per request to a registry, a package index or the Debian
    /// archive before giving up (0 counts as 1).
    #[arg(long, env = "DALLINGER_OCI_RETRIES", default_value_t = 6)]
    retries: u32,
    /// How new layers are compressed: gzip (every engine) or zstd (smaller;
    /// podman 4+, docker 23+, containerd 1.5+) [env: DALLINGER_OCI_COMPRESSION] [default: gzip]
    #[arg(long, value_name = "gzip|zstd")]
    compression: Option<String>,
    #[command(flatten)]
    python: PythonArgs,
    /// Run the experiment's own prepare_docker_image.sh in a sandbox (root,
    /// /experiment, after the dependency layers) and keep its changes as a layer.
    #[arg(long)]
    run_prepare: bool,
    /// Give the prepare script the host's network (its result may then
    /// differ between builds).
    #[arg(long, requires = "run_prepare")]
    prepare_network: bool,
    /// Build the experiment's own Dockerfile with this container engine
    /// (podman, docker or buildah), then write and push its result; without
    /// it a Dockerfile is built natively, without an engine.
    #[arg(long, value_name = "ENGINE")]
    dockerfile_engine: Option<String>,
    /// A Dockerfile ARG's value (repeatable); a bare NAME takes the
    /// variable's value from the environment, as docker does.
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    build_args: Vec<String>,
    /// Give the Dockerfile's RUN steps the host's network (the image's
    /// digest is then not reproducible).
    #[arg(long)]
    build_network: bool,
    /// Replace a Dockerfile RUN that only installs the experiment's
    /// requirements (pip install -r requirements.txt, uv pip install -r
    /// constraints.txt --system) by dallinger-oci's locked Python layers,
    /// which makes such a Dockerfile reproducible.
    #[arg(long)]
    native_python: bool,
    /// The Dockerfile stage to build (FROM … AS NAME; default: the last).
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
}

/// `--build-arg NAME=VALUE`, or `NAME` with the environment's value (none:
/// the ARG's default applies, as with docker).
fn build_args(args: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for arg in args {
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg.clone(), std::env::var(arg).ok()),
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            bail!("--build-arg {arg:?}: give NAME=VALUE, NAME a letter or _ then letters, digits or _");
        }
        if let Some(value) = value {
            out.push((name, value));
        }
    }
    Ok(out)
}

/// The image's tags, labels and annotations, and where its metadata goes.
#[derive(clap::Args)]
struct MetadataFlags {
    /// Image tag, or REPOSITORY:TAG of the image's own repository (default:
    /// Dallinger's, from requirements.txt and prepare_docker_image.sh);
    /// repeatable: the first names the image, the image gets every one.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Tags as --tag takes them, one per line (docker/metadata-action's
    /// `tags` output); repeatable.
    #[arg(long = "tags-file", value_name = "FILE")]
    tags_files: Vec<PathBuf>,
    /// A label of the image config (over the build's own); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Labels, KEY=VALUE one per line (metadata-action's `labels`); repeatable.
    #[arg(long = "labels-file", value_name = "FILE")]
    labels_files: Vec<PathBuf>,
    /// An annotation of the image manifest (GHCR shows
    /// org.opencontainers.image.description); repeatable.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// Annotations, KEY=VALUE one per line (metadata-action's
    /// `annotations`, `manifest:` levels); repeatable.
    #[arg(long = "annotations-file", value_name = "FILE")]
    annotations_files: Vec<PathBuf>,
    /// Write the image's digest, config digest, descriptor and names as
    /// JSON to this file, as `docker buildx build --metadata-file`.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
}

impl MetadataFlags {
    fn metadata(&self) -> Result<ImageMetadata> {
        ImageMetadata::from_args(&MetadataArgs {
            tags: &self.tags,
            tags_files: &self.tags_files,
            labels: &self.labels,
            labels_files: &self.labels_files,
            annotations: &self.annotations,
            annotations_files: &self.annotations_files,
        })
    }
}

#[derive(clap::Args)]
struct PythonArgs {
    /// Build only the experiment layer on the base: no Python dependencies.
    #[arg(
        long,
        env = "DALLINGER_OCI_NO_DEPS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    no_deps: bool,
    /// Fail unless the lock exists and is up to date.
    #[arg(long)]
    locked: bool,
    /// Package index (PEP 691 JSON Simple API); default PyPI or $PIP_INDEX_URL.
    #[arg(long)]
    index_url: Option<String>,
    /// Further package indexes; repeatable.
    #[arg(long)]
    extra_index_url: Vec<String>,
    /// A local directory of wheels to use as well; repeatable.
    #[arg(long)]
    find_links: Vec<PathBuf>,
    /// No network for Python packages: only --find-links and the cache.
    #[arg(long)]
    offline: bool,
    /// The base's full Python version, when it cannot be read from the base.
    #[arg(long, value_name = "X.Y.Z")]
    python_version: Option<String>,
    /// The interpreter inside the base, when it is not python3 in /usr/local/bin or /usr/bin.
    #[arg(long, value_name = "PATH")]
    python: Option<String>,
    /// The site-packages directory inside the base to install into.
    #[arg(long, value_name = "DIR")]
    site_packages: Option<String>,
    /// Build wheels for pins published only as sdists (psycopg2), with
    /// `pip wheel` in the builder image, in a sandbox without network.
    #[arg(
        long,
        env = "DALLINGER_OCI_BUILD_SDISTS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    build_sdists: bool,
    /// The image to build sdists in (same forms as --base; default: the
    /// base, which must then have pip, setuptools, a compiler and headers).
    #[arg(long, value_name = "REF")]
    builder_base: Option<String>,
    /// Compile .pyc files for the installed packages with the base's own
    /// Python (in the sandbox), as pip does; faster first imports.
    #[arg(
        long,
        env = "DALLINGER_OCI_COMPILE_BYTECODE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    compile_bytecode: bool,
    /// Build the Dallinger layer from this source tree (a Dallinger
    /// checkout) in the builder instead of the pinned release; `debug` also
    /// mounts PATH/dallinger into its containers. Never locked.
    #[arg(long, value_name = "PATH")]
    dallinger_src: Option<PathBuf>,
    /// Ask the package indexes again about every pin, instead of using
    /// what they answered in the last day (as uv's --refresh).
    #[arg(long)]
    refresh: bool,
}

#[derive(clap::Args)]
struct PushArgs {
    /// Reuse the image already in the registry when every input is unchanged
    /// (same digest): nothing is uploaded.
    #[arg(long)]
    use_existing: bool,
    /// Upload blobs in chunks of this many bytes (PATCH) instead of one PUT.
    #[arg(long, value_name = "BYTES")]
    chunk_size: Option<u64>,
    /// Blobs uploaded at the same time.
    #[arg(long, default_value_t = PushOptions::default().parallel)]
    parallel: usize,
}

/// `--sbom`, `--attach-sbom`, `--provenance` (src/attest).
#[derive(clap::Args)]
struct AttestArgs {
    /// Write the image's SBOM, from the lock and what the build resolved:
    /// SPDX 2.3 JSON for PATH ending .spdx.json, CycloneDX 1.6 for .cdx.json.
    #[arg(long, value_name = "PATH")]
    sbom: Option<PathBuf>,
    /// Push the SBOM to the registry as an OCI 1.1 referrer of the image
    /// (through the sha256-HEX referrers tag where the registry has no
    /// referrers API).
    #[arg(long, requires = "sbom")]
    attach_sbom: bool,
    /// Write an in-toto v1 statement of SLSA v1 provenance for the image.
    #[arg(long, value_name = "PATH")]
    provenance: Option<PathBuf>,
}

impl AttestArgs {
    /// Refuses, before any work, what cannot be done: an SBOM file name
    /// naming no format, an SBOM to attach with no registry to push to.
    fn check(&self, build: &BuildArgs, pushes_image: bool) -> Result<()> {
        if let Some(path) = &self.sbom {
            sbom::Format::from_path(path)?;
        }
        let registry_output = build.outputs.iter().any(|o| o.starts_with("docker://"));
        if self.attach_sbom && !pushes_image && !registry_output {
            bail!(
                "--attach-sbom attaches the SBOM to the image in a registry: use `push`,                  `build --push` or `build --output docker://HOST/REPO:TAG`"
            );
        }
        Ok(())
    }

    fn subject(result: &BuildResult) -> Subject {
        Subject::new(
            &result.image_name,
            &result.tag,
            &result.image.manifest_digest,
        )
    }

    /// Writes the SBOM and the provenance statement; returns the SBOM.
    fn write(
        &self,
        request: &BuildRequest,
        result: &BuildResult,
    ) -> Result<Option<(sbom::Format, Vec<u8>)>> {
        let mut written = None;
        if let Some(path) = &self.sbom {
            let format = sbom::Format::from_path(path)?;
            let subject = Self::subject(result);
            let bytes = sbom::render(format, &result.inventory, &subject, request.epoch)?;
            sbom::write(path, &bytes)?;
            eprintln!("Wrote the SBOM {}", path.display());
            written = Some((format, bytes));
        }
        if let Some(path) = &self.provenance {
            let bytes = provenance::render(&result.inventory, &Self::subject(result), &|name| {
                std::env::var(name).ok()
            })?;
            dallinger_oci::fsutil::write(path, &bytes, 0o644)?;
            eprintln!("Wrote the provenance statement {}", path.display());
        }
        Ok(written)
    }

    /// `--attach-sbom`: the SBOM as a referrer of the image in every
    /// registry it was pushed to.
    fn attach(
        &self,
        request: &BuildRequest,
        result: &BuildResult,
        pushed: bool,
        sbom: Option<(sbom::Format, Vec<u8>)>,
    ) -> Result<()> {
        let Some((format, bytes)) = sbom.filter(|_| self.attach_sbom) else {
            return Ok(());
        };
        let mut targets: Vec<_> = request
            .outputs
            .iter()
            .filter_map(|o| o.sink().push_target().cloned())
            .collect();
        if pushed {
            targets.push(push::image_target(&result.image_name)?);
        }
        let title = self
            .sbom
            .as_deref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let created = dallinger_oci::image::rfc3339(request.epoch)?;
        let image = &result.image;
        for target in targets {
            let client = request.registry.client(&target)?;
            let attached = referrers::attach(
                &client,
                &result.store,
                &target.repository,
                &referrers::SubjectImage {
                    digest: &image.manifest_digest,
                    size: image.manifest_size(),
                    media_type: image.media_type(),
                },
                &referrers::Artifact {
                    artifact_type: format.media_type(),
                    bytes: &bytes,
                    title: &title,
                    created: &created,
                },
            )
            .with_context(|| format!("attaching the SBOM to {}", target.name()))?;
            match attached {
                referrers::Attached::ReferrersApi { manifest } => eprintln!(
                    "Attached the SBOM to {}@{}: {manifest} (referrers API)",
                    target.name(),
                    image.manifest_digest
                ),
                referrers::Attached::FallbackTag { manifest, tag } => eprintln!(
                    "Attached the SBOM to {}@{}: {manifest}, listed in the referrers tag {tag}",
                    target.name(),
                    image.manifest_digest
                ),
            }
        }
        Ok(())
    }
}

impl PushArgs {
    fn options(&self) -> PushOptions {
        PushOptions {
            chunk_size: self.chunk_size,
            parallel: self.parallel,
            use_existing: self.use_existing,
        }
    }
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let cli = match cli.command {
        // verify has exit codes of its own (src/cli_verify.rs).
        Command::Verify(args) => {
            return cli_verify::run(args, matches.subcommand_matches("verify"))
        }
        command => Cli { command },
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes as one line, joined by ": ". A cause whose text
/// the line already holds is left out (an error that quotes its source, or
/// an fs-err error naming the path the context named), and a cause quoting
/// a file's bytes must not break the line.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string().replace(['\n', '\r'], " ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            build,
            push,
            push_args,
            attest,
        } => {
            attest.check(&build, push)?;
            let (request, result) = build_command(&build, push_args.options(), push, false)?;
            let sbom = attest.write(&request, &result)?;
            if push {
                push_command(&request, &result)?;
            }
            attest.attach(&request, &result, push, sbom)?;
            report_metadata(&build, &request, &result)
        }
        Command::Digest { build } => digest_command(&build),
        Command::Lock { build } => {
            build_command(&build, PushOptions::default(), false, true)?;
            Ok(())
        }
        Command::Push {
            build,
            push_args,
            attest,
        } => {
            attest.check(&build, true)?;
            let (request, result) = build_command(&build, push_args.options(), true, false)?;
            let sbom = attest.write(&request, &result)?;
            push_command(&request, &result)?;
            attest.attach(&request, &result, true, sbom)?;
            report_metadata(&build, &request, &result)
        }
        Command::Runtime(command) => cli_runtime::run(command),
        Command::Files(args) => cli_files::run(args),
        Command::Verify(_) => unreachable!("main runs verify"),
    }
}

fn python_options(
    args: &BuildArgs,
    cache_dir: &std::path::Path,
    write_lock: bool,
) -> Result<Option<PythonOptions>> {
    let p = &args.python;
    if p.no_deps {
        if write_lock {
            bail!("`lock` resolves Python dependencies: drop --no-deps");
        }
        return Ok(None);
    }
    if p.builder_base.is_some() && !p.build_sdists && p.dallinger_src.is_none() {
        bail!("--builder-base is used only with --build-sdists or --dallinger-src: add one");
    }
    if write_lock && p.dallinger_src.is_some() {
        bail!(
            "`lock` records released inputs, and a --dallinger-src tree is never locked: run \
             `lock` without --dallinger-src (builds with it use the lock for everything else)"
        );
    }
    let python_version = match &p.python_version {
        Some(text) => {
            let parts: Vec<u32> = text
                .split('.')
                .map(|x| x.parse())
                .collect::<Result<_, _>>()
                .ok()
                .filter(|v: &Vec<u32>| v.len() == 3)
                .with_context(|| format!("--python-version {text:?} is not X.Y.Z"))?;
            Some((parts[0], parts[1], parts[2]))
        }
        None => None,
    };
    Ok(Some(PythonOptions {
        index: IndexConfig {
            retry: RetryPolicy::with_attempts(args.retries),
            ..IndexConfig::from_env_and_flags(
                p.index_url.clone(),
                p.extra_index_url.clone(),
                p.find_links.clone(),
                Bucket::Wheels.under(cache_dir),
                p.offline,
            )
        },
        overrides: TargetOverrides {
            python_version,
            interpreter: p.python.clone(),
            site_packages: p.site_packages.clone(),
        },
        locked: p.locked,
        build_sdists: p.build_sdists,
        builder_base: p.builder_base.clone(),
        compile_bytecode: p.compile_bytecode,
        dallinger_src: p.dallinger_src.clone(),
        refresh: p.refresh,
        write_lock,
        parallel: 4,
    }))
}

/// The build `args` ask for; `push` is how registry outputs push,
/// `pushes_image` that the image is pushed to its own name afterwards
/// (`push`, `build --push`).
fn build_request(
    args: &BuildArgs,
    push: PushOptions,
    pushes_image: bool,
    write_lock: bool,
) -> Result<BuildRequest> {
    build_request_adding_up(args, push, pushes_image, write_lock, false)
}

/// `digest`: the image added up from the lock (`--locked`) and the code
/// layer; prints its digest as `build` does.
fn digest_command(args: &BuildArgs) -> Result<()> {
    let mut request = build_request_adding_up(args, PushOptions::default(), false, false, true)?;
    if let Some(python) = &mut request.python {
        python.locked = true;
    }
    let result = build::build(&request)?;
    let digest = &result.image.manifest_digest;
    if let Some(path) = &args.digest_file {
        build::write_digest_file(path, digest)?;
    }
    println!("{digest}");
    Ok(())
}

fn build_request_adding_up(
    args: &BuildArgs,
    push: PushOptions,
    pushes_image: bool,
    write_lock: bool,
    adding_up: bool,
) -> Result<BuildRequest> {
    let outputs = args
        .outputs
        .iter()
        .map(|o| OutputRef::parse(o))
        .collect::<Result<Vec<_>>>()?;
    let password = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the password from standard input")?;
        Some(Secret::new(text.trim_end_matches(['\n', '\r'])))
    } else {
        None
    };
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(build::default_cache_dir);
    let request = BuildRequest {
        experiment_dir: args.experiment_dir.clone(),
        base: args.base.clone(),
        outputs,
        push,
        pushes_image,
        tag: None,
        metadata: args.metadata.metadata()?,
        python: python_options(args, &cache_dir, write_lock)?,
        cache_dir,
        platform: args.platform.clone(),
        epoch: build::epoch_from_env()?,
        compression: build::compression(args.compression.as_deref())?,
        compression_jobs: build::compression_jobs()?,
        home_config: dirs::home_dir().map(|h| h.join(".dallingerconfig")),
        registry: {
            let credentials = CredentialContext::from_process(args.username.clone(), password);
            let mirrors =
                Mirrors::from_environment(credentials.env.clone(), credentials.home.clone());
            RegistryOptions {
                insecure: args.insecure_registries.clone(),
                credentials,
                retry: RetryPolicy::with_attempts(args.retries),
                refresh_base: args.pull,
                push_registry: Default::default(),
                mirrors,
            }
        },
        adding_up,
        customisation: build::Customisation {
            run_prepare: args.run_prepare,
            prepare_network: args.prepare_network,
            dockerfile_engine: args
                .dockerfile_engine
                .as_deref()
                .map(dallinger_oci::dockerfile::DockerfileEngine::parse)
                .transpose()?,
            build_args: build_args(&args.build_args)?,
            build_network: args.build_network,
            native_python: args.native_python,
            dockerfile_target: args.target.clone(),
        },
    };
    Ok(request)
}

/// Builds (see [`build_request`]).
fn build_command(
    args: &BuildArgs,
    push: PushOptions,
    pushes_image: bool,
    write_lock: bool,
) -> Result<(BuildRequest, BuildResult)> {
    let request = build_request(args, push, pushes_image, write_lock)?;
    let result = build::build(&request)?;
    let digest = &result.image.manifest_digest;
    if let Some(path) = &args.digest_file {
        build::write_digest_file(path, digest)?;
    }
    eprintln!(
        "{}: {} ({})",
        // A Dockerfile's last step need not be the experiment's code.
        if result.inventory.from_dockerfile {
            "Last layer"
        } else {
            "Experiment layer"
        },
        result
            .image
            .layers
            .last()
            .map_or("", |l| l.blob.digest.as_str()),
        if result.layer_reused {
            "unchanged, reused"
        } else {
            "built"
        }
    );
    println!("Built image: {}", result.image_name);
    println!("{digest}");
    Ok((request, result))
}

/// The platform `debug` builds: one it can run, this machine's unless
/// `--platform` names another (run under emulation by the engine).
fn debug_platform(flag: Option<&str>) -> Result<String> {
    use dallinger_oci::image::platform::{Platform, Platforms};
    match flag.map(Platforms::parse).transpose()? {
        None => Ok(Platform::host().to_string()),
        Some(Platforms::Listed(listed)) if listed.len() == 1 => Ok(listed[0].to_string()),
        Some(_) => bail!(
            "debug runs the image on this machine: give --platform one platform (default: this \
             machine's, {})",
            Platform::host()
        ),
    }
}

/// `push` and `build --push`: the image to its own name, ending as
/// Dallinger does.
fn push_command(request: &BuildRequest, result: &BuildResult) -> Result<()> {
    let sink = RegistrySink {
        target: push::image_target(&result.image_name)?,
    };
    let published = sink.publish_tagged(
        &result.built(request.epoch),
        &request.sink_env(),
        &result.extra_tags,
    )?;
    push::announce(&published)
}

/// `--metadata-file`: the image's metadata as `docker buildx build
/// --metadata-file` writes it (and docker/build-push-action's `metadata`
/// output holds): digests, the manifest's descriptor, every name.
fn report_metadata(args: &BuildArgs, request: &BuildRequest, result: &BuildResult) -> Result<()> {
    let Some(path) = &args.metadata.metadata_file else {
        return Ok(());
    };
    let image = &result.image;
    let mut descriptor = serde_json::json!({
        "mediaType": image.media_type(),
        "digest": image.manifest_digest,
        "size": image.manifest_size(),
    });
    if !request.metadata.annotations.is_empty() {
        descriptor["annotations"] = serde_json::json!(request.metadata.annotations);
    }
    let mut metadata = serde_json::json!({
        "containerimage.config.digest": image.config_digest,
        "containerimage.descriptor": descriptor,
        "containerimage.digest": image.manifest_digest,
        "image.name": result.built(request.epoch).names().join(","),
    });
    // An index has no config of its own (buildx writes none for one).
    if image.is_index() {
        metadata
            .as_object_mut()
            .map(|m| m.remove("containerimage.config.digest"));
    }
    let mut json = dallinger_oci::image::canonical_json(&metadata);
    json.push(b'\n');
    dallinger_oci::fsutil::write(path, &json, 0o644)
        .with_context(|| format!("cannot write the --metadata-file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_leaves_out_causes_the_line_already_says() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read x: {source}")]
        struct Quoting {
            #[source]
            source: std::io::Error,
        }
        let io = std::io::Error::other("Not a directory");
        let err = anyhow::Error::new(Quoting { source: io }).context("in\nexperiment");
        assert_eq!(
            one_line(&err),
            "in experiment: cannot read x: Not a directory"
        );
    }
}
