//! The commands that run containers: `debug`, `deploy-image`, `destroy`,
//! `start-services`, `stop-services`, `remove-services-data`. Kept apart
//! from build and push, which never need a container engine.

use anyhow::Result;
use clap::Subcommand;

use dallinger_oci::deploy::{self, DebugRequest, DeployRequest, Mode};
use dallinger_oci::experiment::{Experiment, LoadOptions};
use dallinger_oci::runtime::Engine;

use crate::{build_command, BuildArgs};

// Parsed once per run: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum RuntimeCommand {
    /// Run the experiment locally: build it (no daemon), load it into podman
    /// or docker, start postgresql, redis, web and worker with compose,
    /// launch it and stream its logs; Ctrl+C stops and removes the containers.
    Debug {
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        engine: EngineArgs,
        /// Host port of the web server (default: base_port from the config, else 5000).
        #[arg(long)]
        port: Option<u16>,
        /// Do not open the dashboard and participant pages in a browser.
        #[arg(long)]
        no_browsers: bool,
        /// Also remove the stack's postgres and redis data volumes on exit.
        #[arg(long)]
        remove_volumes: bool,
        /// Build, load the image and write the compose file; start nothing.
        #[arg(long)]
        no_start: bool,
    },
    /// Run a pushed image (REPO@sha256:…) on podman or docker, locally or on
    /// a remote engine (DOCKER_HOST / CONTAINER_HOST): web, workers, redis,
    /// postgres; initdb; launch.
    DeployImage {
        /// The image, by digest: REPO@sha256:HEX (a tag works, with a warning).
        #[arg(long)]
        image: String,
        /// MTurk sandbox mode (the default).
        #[arg(long, conflicts_with = "live")]
        sandbox: bool,
        /// Live mode.
        #[arg(long)]
        live: bool,
        /// A Dallinger config value for the containers, e.g. -c recruiter hotair (repeatable).
        #[arg(short = 'c', long = "config", num_args = 2, value_names = ["KEY", "VALUE"], action = clap::ArgAction::Append)]
        config: Vec<String>,
        /// The app's name (default: dlgr-XXXXXXXX); also its compose project.
        #[arg(long)]
        app: Option<String>,
        /// Host port of the web server.
        #[arg(long, default_value_t = 5000)]
        port: u16,
        /// Registry reached over plain HTTP when the engine pulls (repeatable).
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure_registries: Vec<String>,
        /// Write the compose file, print its path, start nothing.
        #[arg(long)]
        no_start: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Stop and remove an app started by deploy-image.
    Destroy {
        #[arg(long)]
        app: String,
        /// Also remove its postgres and redis data volumes and its compose file.
        #[arg(long)]
        remove_data: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Start redis (port 6379) and postgres (port 5432) containers with
    /// persistent volumes, for Dallinger run outside containers.
    StartServices {
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Stop (and remove) the containers start-services started.
    StopServices {
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Remove the data volumes of start-services.
    RemoveServicesData {
        #[command(flatten)]
        engine: EngineArgs,
    },
}

#[derive(clap::Args)]
pub struct EngineArgs {
    /// Container engine: podman or docker (default: $DALLINGER_OCI_RUNTIME,
    /// else whichever is on PATH, podman first).
    #[arg(long, value_name = "podman|docker")]
    runtime: Option<String>,
    /// Redis image (default: docker_redis_image from the config, else the official redis).
    #[arg(long)]
    redis_image: Option<String>,
    /// Postgres image (default: docker_postgresql_image from the config, else the official postgres:12).
    #[arg(long)]
    postgres_image: Option<String>,
    /// Show what compose prints.
    #[arg(long)]
    verbose: bool,
}

impl EngineArgs {
    fn engine(&self) -> Result<Engine> {
        let engine = Engine::detect(self.runtime.as_deref())?;
        eprintln!("{}", engine.describe());
        Ok(engine)
    }
}

/// `~/.dallingerconfig` under `config.txt` of the current directory, when
/// there is one: where the services commands find their image keys.
fn services_config() -> Option<dallinger_oci::experiment::config::Config> {
    use dallinger_oci::experiment::config::Config;
    let read =
        |path: std::path::PathBuf| path.is_file().then(|| Config::read(&path).ok()).flatten();
    let home = dirs::home_dir().and_then(|h| read(h.join(".dallingerconfig")));
    let local = read("config.txt".into());
    match (home, local) {
        (Some(h), Some(l)) => Some(Config::layered(h, l)),
        (h, l) => l.or(h),
    }
}

pub fn run(command: RuntimeCommand) -> Result<()> {
    match command {
        RuntimeCommand::Debug {
            mut build,
            engine,
            port,
            no_browsers,
            remove_volumes,
            no_start,
        } => {
            // Before the build: without an engine there is nothing to debug on.
            let found = engine.engine()?;
            // debug runs the image here: this machine's platform, one.
            build.platform = Some(crate::debug_platform(build.platform.as_deref())?);
            let (request, result) = build_command(&build, Default::default(), false, false)?;
            let experiment = Experiment::load(
                &build.experiment_dir,
                &LoadOptions {
                    home_config: dirs::home_dir().map(|h| h.join(".dallingerconfig")),
                },
            )?;
            deploy::debug(&DebugRequest {
                engine: &found,
                experiment: &experiment,
                build: &result,
                registry: &request.registry,
                epoch: request.epoch,
                port,
                redis_image: engine.redis_image,
                postgres_image: engine.postgres_image,
                no_browsers,
                remove_volumes,
                verbose: engine.verbose,
                no_start,
            })
        }
        RuntimeCommand::DeployImage {
            image,
            sandbox: _,
            live,
            config,
            app,
            port,
            insecure_registries,
            no_start,
            engine,
        } => {
            let found = if no_start {
                None
            } else {
                Some(engine.engine()?)
            };
            let pairs = config
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
            deploy::deploy_image(
                found.as_ref(),
                &DeployRequest {
                    image,
                    mode: if live { Mode::Live } else { Mode::Sandbox },
                    config: pairs,
                    app,
                    port,
                    redis_image: engine.redis_image,
                    postgres_image: engine.postgres_image,
                    insecure_registries,
                    no_start,
                    verbose: engine.verbose,
                },
            )
        }
        RuntimeCommand::Destroy {
            app,
            remove_data,
            engine,
        } => deploy::destroy(&engine.engine()?, &app, remove_data, engine.verbose),
        RuntimeCommand::StartServices { engine } => {
            let images = deploy::service_images(
                engine.redis_image.as_deref(),
                engine.postgres_image.as_deref(),
                services_config().as_ref(),
            );
            deploy::start_services(&engine.engine()?, &images)
        }
        RuntimeCommand::StopServices { engine } => deploy::stop_services(&engine.engine()?),
        RuntimeCommand::RemoveServicesData { engine } => {
            deploy::remove_services_data(&engine.engine()?)
        }
    }
}
