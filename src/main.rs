//! The `dallinger-oci` command line: parse, call the library, print.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use dallinger_oci::build::{self, BuildRequest, OutputRef};

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
    Build(BuildArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The experiment directory (holding config.txt and experiment.py).
    #[arg(default_value = ".")]
    experiment_dir: PathBuf,
    /// Base image: oci:DIR[:TAG], rootfs:FILE.tar or scratch
    /// (default: docker_base_image from config.txt).
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
        Command::Build(args) => build_command(args),
    }
}

fn build_command(args: BuildArgs) -> Result<()> {
    let outputs = args
        .outputs
        .iter()
        .map(|o| OutputRef::parse(o))
        .collect::<Result<Vec<_>>>()?;
    let request = BuildRequest {
        experiment_dir: args.experiment_dir,
        base: args.base,
        outputs,
        tag: args.tag,
        cache_dir: args.cache_dir.unwrap_or_else(build::default_cache_dir),
        platform: args.platform,
        epoch: build::epoch_from_env()?,
        home_config: dirs::home_dir().map(|h| h.join(".dallingerconfig")),
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
    Ok(())
}
