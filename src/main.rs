//! The `dallinger-oci` command line: parse, call the library, print.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use dallinger_oci::build::{self, BuildRequest, BuildResult, OutputRef, RegistryOptions};
use dallinger_oci::registry::credentials::{CredentialContext, Secret};
use dallinger_oci::registry::push::{push_image, PushOptions};
use dallinger_oci::registry::{Reference, RetryPolicy};

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
    },
    /// Build the experiment's image and push it to {docker_image_base_name}:{tag}.
    Push {
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        push_args: PushArgs,
    },
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
    /// Where to write the image: oci:DIR[:TAG] or docker-archive:FILE (repeatable).
    #[arg(long = "output", short = 'o')]
    outputs: Vec<String>,
    /// Write the manifest digest (sha256:HEX) to this file.
    #[arg(long)]
    digest_file: Option<PathBuf>,
    /// Image tag (default: Dallinger's, from requirements.txt and prepare_docker_image.sh).
    #[arg(long)]
    tag: Option<String>,
    /// Layer cache and blob store.
    #[arg(long, env = "DALLINGER_OCI_CACHE")]
    cache_dir: Option<PathBuf>,
    /// Platform (os/arch) of scratch and rootfs bases, and the one chosen from an index.
    #[arg(long)]
    platform: Option<String>,
    /// Resolve a registry base's tag again instead of using the digest recorded earlier.
    #[arg(long)]
    pull: bool,
    /// Registry reached over plain HTTP (localhost and 127.0.0.1 always are); repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Registry user name (else from auth files, credential helpers or GITHUB_TOKEN).
    #[arg(long, env = "DALLINGER_OCI_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Read the registry password or token from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Attempts per registry request before giving up.
    #[arg(long, default_value_t = 6)]
    retries: u32,
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
    #[arg(long, default_value_t = 3)]
    parallel: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes, joined; a cause quoting a
            // file's bytes must not break it over several lines.
            let message = format!("{err:#}").replace(['\n', '\r'], " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            build,
            push,
            push_args,
        } => {
            let (request, result) = build_command(&build)?;
            if push {
                push_command(&request, &result, &push_args)?;
            }
            Ok(())
        }
        Command::Push { build, push_args } => {
            let (request, result) = build_command(&build)?;
            push_command(&request, &result, &push_args)
        }
    }
}

fn build_command(args: &BuildArgs) -> Result<(BuildRequest, BuildResult)> {
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
    let request = BuildRequest {
        experiment_dir: args.experiment_dir.clone(),
        base: args.base.clone(),
        outputs,
        tag: args.tag.clone(),
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(build::default_cache_dir),
        platform: args.platform.clone(),
        epoch: build::epoch_from_env()?,
        home_config: dirs::home_dir().map(|h| h.join(".dallingerconfig")),
        registry: RegistryOptions {
            insecure: args.insecure_registries.clone(),
            credentials: CredentialContext::from_process(args.username.clone(), password),
            retry: RetryPolicy {
                attempts: args.retries.max(1),
                ..RetryPolicy::default()
            },
            refresh_base: args.pull,
        },
    };
    let result = build::build(&request)?;
    let digest = &result.image.manifest_digest;
    if let Some(path) = &args.digest_file {
        build::write_digest_file(path, digest)?;
    }
    eprintln!(
        "Experiment layer: {} ({})",
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
    for output in &request.outputs {
        eprintln!("Wrote {}", output.describe(&result.tag));
    }
    println!("Built image: {}", result.image_name);
    println!("{digest}");
    Ok((request, result))
}

fn push_command(request: &BuildRequest, result: &BuildResult, push_args: &PushArgs) -> Result<()> {
    let target = Reference::parse(&result.image_name)?;
    if !target.registry.contains('.')
        && !target.registry.contains(':')
        && target.registry != "localhost"
    {
        bail!(
            "cannot push {}: docker_image_base_name must name a registry",
            result.image_name
        );
    }
    let client = request.registry.client(&target)?;
    let digest = &result.image.manifest_digest;
    let repository_ref = format!("{}@{digest}", target.name());
    if push_args.use_existing
        && client
            .get_manifest(&target.repository, digest)
            .is_ok_and(|(_, _, found)| &found == digest)
    {
        eprintln!(
            "Image {repository_ref} is already in the registry and every input is unchanged: reusing it, nothing uploaded"
        );
        // The tag may still point elsewhere: point it at this image.
        client.put_manifest(
            &target.repository,
            target.tag.as_deref().unwrap_or(digest),
            dallinger_oci::image::MEDIA_TYPE_MANIFEST,
            &result.image.manifest_bytes,
            digest,
        )?;
    } else {
        let report = push_image(
            &client,
            &result.store,
            &result.image,
            &target,
            &PushOptions {
                chunk_size: push_args.chunk_size,
                parallel: push_args.parallel,
            },
        )?;
        eprintln!(
            "{}: digest: {digest} size: {}",
            target.tag.as_deref().unwrap_or(""),
            result.image.manifest_size()
        );
        eprintln!("Uploaded {} bytes of blobs", report.uploaded_bytes);
    }
    println!("Pushed image: {digest}\n");
    println!("Image {repository_ref} built and pushed.\n");
    if let Some(path) = std::env::var_os("GITHUB_OUTPUT").filter(|p| !p.is_empty()) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot append to GITHUB_OUTPUT ({})",
                    PathBuf::from(&path).display()
                )
            })?;
        writeln!(file, "digest={digest}")?;
        writeln!(file, "image={repository_ref}")?;
    }
    Ok(())
}
