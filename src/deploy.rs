//! `debug`, `deploy-image`, `destroy` and the services commands: Dallinger's
//! `dallinger docker …` commands on podman or docker, with images we built.
//!
//! Configuration reaches the containers as environment at run time
//! (Dallinger's `load_from_environment` reads every registered key by
//! name), never inside the image. The compose file that carries it is
//! readable by its owner only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::build::{BuildResult, RegistryOptions};
use crate::experiment::config::Config;
use crate::experiment::Experiment;
use crate::registry::Reference;
use crate::runtime::compose::{self, PortMapping};
use crate::runtime::stack::{
    self, ServiceImages, Stack, StackPlan, WorkerNaming, NEW_RECRUIT_LOG_PREFIX,
};
use crate::runtime::{Compose, Engine};
use crate::sink::engine::EngineLoad;
use crate::sink::{Env, Sink};

/// Config keys (in `config.txt` or `~/.dallingerconfig`, any section) and
/// flags that choose the service images.
pub const REDIS_IMAGE_KEY: &str = "docker_redis_image";
pub const POSTGRES_IMAGE_KEY: &str = "docker_postgresql_image";

/// Keys never passed to the containers: the stack sets where its database
/// is and what the server binds to; Heroku's token has no use here.
const KEYS_NOT_PASSED: &[&str] = &["database_url", "heroku_auth_token", "host", "port"];

/// Where the compose files of stacks live, one directory per stack:
/// `debug/PROJECT` and `apps/APP` under the user's data directory.
pub fn state_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("dallinger-oci")
}

/// The redis and postgres images: flag, else config key, else the
/// official images.
pub fn service_images(
    redis_flag: Option<&str>,
    postgres_flag: Option<&str>,
    config: Option<&Config>,
) -> ServiceImages {
    let pick = |flag: Option<&str>, key: &str, default: &str| {
        flag.map(String::from)
            .or_else(|| config.and_then(|c| c.get(key)).map(String::from))
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    ServiceImages {
        redis: pick(redis_flag, REDIS_IMAGE_KEY, ServiceImages::DEFAULT_REDIS),
        postgres: pick(
            postgres_flag,
            POSTGRES_IMAGE_KEY,
            ServiceImages::DEFAULT_POSTGRES,
        ),
    }
}

/// `bytes` random bytes from the operating system, URL-safe base64
/// (Python's `secrets.token_urlsafe`).
fn random_token(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(hex::encode(buf))
}

/// Dallinger's configuration as container environment: every configured key
/// (but [`KEYS_NOT_PASSED`] and dallinger-oci's own), then `settings`, then
/// the user's `-c` overrides.
fn dallinger_environment(
    config: Option<&Config>,
    settings: &[(&str, String)],
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (key, value) in config.into_iter().flat_map(Config::iter) {
        if KEYS_NOT_PASSED.contains(&key) || crate::experiment::TOOL_ONLY_KEYS.contains(&key) {
            continue;
        }
        stack::set(&mut env, key, value);
    }
    for (key, value) in settings {
        stack::set(&mut env, key, value);
    }
    for (key, value) in overrides {
        stack::set(&mut env, key, value);
    }
    env
}

fn lookup<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Python's `strtobool`, as Dallinger casts booleans.
fn truthy(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("y" | "yes" | "t" | "true" | "on" | "1")
    )
}

fn parse_number<T: std::str::FromStr>(env: &[(String, String)], key: &str) -> Result<Option<T>> {
    match lookup(env, key) {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("config key {key} is {text:?}, which is not a whole number: set it to one (in config.txt, ~/.dallingerconfig or with -c {key} N)")),
    }
}

/// Fails, naming the port, when something on this machine listens on it;
/// `remedy` says what else the user can do.
pub fn check_port_free(port: u16, what: &str, remedy: &str) -> Result<()> {
    for address in ["0.0.0.0", "127.0.0.1"] {
        if let Err(err) = TcpListener::bind((address, port)) {
            bail!("port {port} ({what}) is already in use on this machine ({err}): stop what listens on it, or {remedy}");
        }
    }
    Ok(())
}

const CHOOSE_PORT: &str = "choose another port with --port";

fn open_browser(url: &str) {
    for opener in ["xdg-open", "open"] {
        if std::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_ok()
        {
            return;
        }
    }
}

/// A stack's directory with its `docker-compose.yml` and `.env`, written
/// readable by the owner only.
fn write_stack_files(dir: &Path, project: &str, text: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join("docker-compose.yml");
    stack::write_private(&file, text)?;
    stack::write_private(&dir.join(".env"), &compose::dotenv(project))?;
    Ok(file)
}

/// What `debug` needs besides the build.
pub struct DebugRequest<'a> {
    pub engine: &'a Engine,
    pub experiment: &'a Experiment,
    pub build: &'a BuildResult,
    /// For base layers the cache lacks, fetched before the image is loaded.
    pub registry: &'a RegistryOptions,
    pub epoch: u64,
    pub port: Option<u16>,
    pub redis_image: Option<String>,
    pub postgres_image: Option<String>,
    pub no_browsers: bool,
    pub remove_volumes: bool,
    pub verbose: bool,
    /// Write the compose file (the image loaded), start nothing.
    pub no_start: bool,
}

/// `dallinger docker debug`: load the image just built, start the stack,
/// initdb, launch, stream logs until Ctrl-C, then stop and remove the
/// containers (the data volumes only when asked).
pub fn debug(req: &DebugRequest) -> Result<()> {
    let engine = req.engine;
    let config = req.experiment.config();
    let image = &req.build.image_name;
    let built = req.build.built(req.epoch);
    let env = Env {
        registry: req.registry,
        push: &Default::default(),
    };
    EngineLoad { engine }.write(&built, &env)?;

    let port = match req.port {
        Some(p) => p,
        None => parse_number::<u16>(&dallinger_environment(Some(config), &[], &[]), "base_port")?
            .unwrap_or(5000),
    };
    if !req.no_start {
        check_port_free(port, "the experiment's web server", CHOOSE_PORT)?;
    }
    let dashboard_user = config.get("dashboard_user").unwrap_or("admin").to_string();
    let dashboard_password = match config.get("dashboard_password") {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => random_token(8)?,
    };
    let environment = dallinger_environment(
        Some(config),
        &[
            ("mode", "debug".into()),
            ("host", "0.0.0.0".into()),
            ("FLASK_SECRET_KEY", random_hex(16)?),
            ("dashboard_user", dashboard_user.clone()),
            ("dashboard_password", dashboard_password.clone()),
        ],
        &[],
    );
    let plan = StackPlan {
        experiment_image: image.clone(),
        images: service_images(
            req.redis_image.as_deref(),
            req.postgres_image.as_deref(),
            Some(config),
        ),
        worker_cpu_shares: parse_number(&environment, "docker_worker_cpu_shares")?,
        // --dallinger-src: the tree over the installed package, so edits
        // show without a rebuild.
        source_mounts: req
            .build
            .dallinger_mount
            .iter()
            .map(|m| (m.host.to_string_lossy().into_owned(), m.container.clone()))
            .collect(),
        clock: truthy(lookup(&environment, "clock_on")),
        environment,
        postgres_password: POSTGRES_DEBUG_PASSWORD.into(),
        workers: WorkerNaming::Single,
        psynet: is_psynet(req, engine, image)?,
        // Debug serves this machine only.
        web_port: PortMapping {
            host_ip: "127.0.0.1".into(),
            host_port: port,
            container_port: 5000,
        },
    };
    let project = compose::project_name(&req.experiment.dir_name());
    let file = plan.compose_file();
    let dir = state_dir().join("debug").join(&project);
    let compose_file = write_stack_files(&dir, &project, &file.render())?;
    if req.no_start {
        println!("Compose file: {}", compose_file.display());
        return Ok(());
    }
    let stack = Stack {
        engine: engine.clone(),
        compose: Compose {
            tool: engine.compose_tool()?,
            file: compose_file,
            project: project.clone(),
        },
        file,
        verbose: req.verbose,
    };
    let leftovers = engine.project_containers(&project, None)?;
    if !leftovers.is_empty() {
        bail!(
            "containers of {project} are already there ({}): stop that debug session with Ctrl-C, or remove them with `{}`",
            leftovers.join(", "),
            stack.compose.hint("down")
        );
    }
    println!("Compose file: {}", stack.compose.file.display());
    println!("Logs: {}", stack.compose.logs_hint(&["web", "worker"]));

    stack::catch_interrupts()?;
    let result = run_debug(&stack, port, &dashboard_user, &dashboard_password, req);
    eprintln!("Stopping and removing the containers of {project}…");
    let down = stack.down(req.remove_volumes);
    match (&result, &down) {
        (_, Err(_)) => {}
        _ if req.remove_volumes => println!("Removed the containers and data volumes of {project}."),
        _ => println!(
            "Removed the containers of {project}; data volumes kept: {} (remove them with --remove-volumes next time, or `{} volume rm` them).",
            stack.volume_names().join(", "),
            engine.kind.name()
        ),
    }
    match result {
        Err(err) if err.is::<stack::Interrupted>() => down,
        Err(err) => Err(err),
        Ok(()) => down,
    }
}

/// Whether the image is a PsyNet experiment's: from the wheels the build
/// installed, else (a Dockerfile's image, whose installs we did not make)
/// by asking the image's Python.
fn is_psynet(req: &DebugRequest, engine: &Engine, image: &str) -> Result<bool> {
    let wheels = &req.build.inventory.wheels;
    if !wheels.is_empty() {
        return Ok(wheels.iter().any(|w| w.normalised.as_str() == "psynet"));
    }
    engine.image_has_python_module(image, "psynet")
}

/// Debug's stack is only reachable from this machine and its containers.
const POSTGRES_DEBUG_PASSWORD: &str = "dallinger";

fn run_debug(
    stack: &Stack,
    port: u16,
    dashboard_user: &str,
    dashboard_password: &str,
    req: &DebugRequest,
) -> Result<()> {
    let origin = req
        .build
        .inventory
        .source
        .as_ref()
        .and_then(|s| s.url.as_deref());
    stack.start_preparing("debug", origin)?;
    stack.initdb("worker")?;
    let base_url = format!("http://localhost:{port}");
    stack.wait_web(&base_url)?;
    println!("Server is running on {base_url}. Press Ctrl+C to exit.");
    println!("Launching the experiment...");
    let launched = stack::launch(&base_url, 6)?;
    if let Some(message) = launched["recruitment_msg"].as_str() {
        println!("{message}");
    }
    let dashboard = format!("{base_url}/dashboard/");
    println!("Experiment dashboard: {dashboard}");
    println!("Dashboard user: {dashboard_user} password: {dashboard_password}");
    if !req.no_browsers {
        open_browser(&dashboard);
    }
    println!("Monitoring the experiment's web and worker logs (Ctrl+C stops it)...");
    let mut services = vec!["web".to_string(), "worker".to_string()];
    if stack.file.service("clock").is_some() {
        services.push("clock".into());
    }
    stack::follow_logs(stack, &services, &mut |_, line| {
        if let Some((_, url)) = line.split_once(NEW_RECRUIT_LOG_PREFIX) {
            let url = url.trim();
            println!("New participant requested: {url}");
            if !req.no_browsers {
                open_browser(url);
            }
        }
    })
}

/// `--sandbox` or `--live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sandbox,
    Live,
}

pub struct DeployRequest {
    pub image: String,
    pub mode: Mode,
    pub config: Vec<(String, String)>,
    pub app: Option<String>,
    pub port: u16,
    pub redis_image: Option<String>,
    pub postgres_image: Option<String>,
    pub insecure_registries: Vec<String>,
    /// Write the compose file and stop there.
    pub no_start: bool,
    pub verbose: bool,
}

fn validate_app(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("--app {name:?} is not a valid app name: use lowercase letters, digits and -, starting with a letter or digit");
    }
    Ok(())
}

fn app_dir(app: &str) -> PathBuf {
    state_dir().join("apps").join(app)
}

/// The user's `~/.dallingerconfig`, as Dallinger reads it outside an
/// experiment directory.
fn home_config() -> Result<Option<Config>> {
    match dirs::home_dir().map(|h| h.join(".dallingerconfig")) {
        Some(path) if path.is_file() => Ok(Some(Config::read(&path)?)),
        _ => Ok(None),
    }
}

/// `dallinger docker deploy-image`, on a container engine instead of Heroku:
/// the image by digest, web, worker(s), redis, postgres; initdb; `/launch`.
/// `engine` is `None` only with `no_start`.
pub fn deploy_image(engine: Option<&Engine>, req: &DeployRequest) -> Result<()> {
    let reference =
        Reference::parse(&req.image).with_context(|| format!("--image {}", req.image))?;
    let image = format!(
        "{}{}",
        reference.name(),
        match (&reference.digest, &reference.tag) {
            (Some(d), _) => format!("@{d}"),
            (None, Some(t)) => format!(":{t}"),
            (None, None) => ":latest".into(),
        }
    );
    if reference.digest.is_none() {
        eprintln!("warning: {image} names a tag, not a digest: this deployment is not reproducible (the tag can move); deploy REPO@sha256:… as `dallinger-oci push` prints it");
    }
    let app = match &req.app {
        Some(app) => app.clone(),
        None => format!("dlgr-{}", &random_hex(4)?),
    };
    validate_app(&app)?;
    let dir = app_dir(&app);
    if dir.join("docker-compose.yml").exists() {
        bail!(
            "app {app} already exists ({}): remove it with `dallinger-oci destroy --app {app} --remove-data`, or choose another --app",
            dir.join("docker-compose.yml").display()
        );
    }
    let home = home_config()?;
    let mode = match req.mode {
        Mode::Sandbox => "sandbox",
        Mode::Live => "live",
    };
    let generated_password = random_token(8)?;
    let dashboard_password = home
        .as_ref()
        .and_then(|c| c.get("dashboard_password"))
        .filter(|p| !p.is_empty())
        .map(String::from)
        .unwrap_or_else(|| generated_password.clone());
    let environment = dallinger_environment(
        home.as_ref(),
        &[
            ("mode", mode.into()),
            ("host", "0.0.0.0".into()),
            ("FLASK_SECRET_KEY", random_token(16)?),
            ("dashboard_user", "admin".into()),
            ("dashboard_password", dashboard_password),
        ],
        &req.config,
    );
    let workers = parse_number::<u32>(&environment, "num_dynos_worker")?.unwrap_or(1);
    if !(1..=64).contains(&workers) {
        bail!("num_dynos_worker is {workers}: use 1 to 64");
    }
    let dashboard_user = lookup(&environment, "dashboard_user")
        .unwrap_or("admin")
        .to_string();
    let password = lookup(&environment, "dashboard_password")
        .unwrap_or_default()
        .to_string();
    let mut plan = StackPlan {
        experiment_image: image.clone(),
        images: service_images(
            req.redis_image.as_deref(),
            req.postgres_image.as_deref(),
            home.as_ref(),
        ),
        source_mounts: Vec::new(),
        // Known once the image is here (below).
        psynet: false,
        worker_cpu_shares: parse_number(&environment, "docker_worker_cpu_shares")?,
        clock: truthy(lookup(&environment, "clock_on")),
        environment,
        postgres_password: random_token(18)?,
        workers: WorkerNaming::Numbered(workers),
        web_port: PortMapping {
            host_ip: String::new(),
            host_port: req.port,
            container_port: 5000,
        },
    };
    let Some(engine) = engine else {
        // The image is not looked at: a PsyNet image's volumes are added
        // when it is started.
        let compose_file = write_stack_files(&dir, &app, &plan.compose_file().render())?;
        println!("Compose file: {}", compose_file.display());
        println!("Not started (--no-start); compose project name: {app}");
        return Ok(());
    };
    if engine.remote_url().is_none() {
        check_port_free(req.port, "the experiment's web server", CHOOSE_PORT)?;
    }
    if engine.image_id(&image)?.is_none() {
        eprintln!("Pulling {image}…");
        let plain_http = reference.registry == "localhost"
            || reference.registry.starts_with("localhost:")
            || reference.registry.starts_with("127.")
            || req.insecure_registries.contains(&reference.registry);
        engine.pull(&image, plain_http)?;
    }
    // A PsyNet experiment's web and workers share the `.deploy` volume its
    // preparation writes (see `Stack::start_preparing`).
    plan.psynet = engine.image_has_python_module(&image, "psynet")?;
    let file = plan.compose_file();
    let compose_file = write_stack_files(&dir, &app, &file.render())?;
    println!("Compose file: {}", compose_file.display());
    let stack = Stack {
        engine: engine.clone(),
        compose: Compose {
            tool: engine.compose_tool()?,
            file: compose_file,
            project: app.clone(),
        },
        file,
        verbose: req.verbose,
    };
    println!(
        "Creating app {app} in {mode} mode on {}",
        engine.kind.name()
    );
    let host = engine.published_host();
    let base_url = format!("http://{host}:{}", req.port);
    let logs = stack.compose.logs_hint(&["web", "worker_1"]);
    let started = (|| -> Result<serde_json::Value> {
        stack.start_preparing(
            match req.mode {
                Mode::Sandbox => "sandbox",
                Mode::Live => "live",
            },
            None,
        )?;
        stack.initdb("worker_1")?;
        stack.wait_web(&base_url)?;
        println!("Launching experiment");
        stack::launch(&base_url, 6)
    })();
    let launched = started.with_context(|| {
        format!("app {app} did not start; its containers are left for inspection (`{logs}`); remove it with `dallinger-oci destroy --app {app} --remove-data`")
    })?;
    println!("Launch: {}", launched["status"].as_str().unwrap_or(""));
    if let Some(message) = launched["recruitment_msg"].as_str() {
        println!("{message}");
    }
    println!("Experiment URL: {base_url}/");
    println!("Dashboard: {base_url}/dashboard/ (user {dashboard_user})");
    if password == generated_password {
        // Printed this once; it is also in the compose file (mode 0600).
        println!("Dashboard password (generated; shown only now): {password}");
    }
    println!("Logs: {logs}");
    println!("Remove it with: dallinger-oci destroy --app {app}");
    Ok(())
}

/// `dallinger-oci destroy --app NAME`: stops and removes the app's
/// containers and network; its data volumes and compose file too with
/// `remove_data`.
pub fn destroy(engine: &Engine, app: &str, remove_data: bool, verbose: bool) -> Result<()> {
    validate_app(app)?;
    let dir = app_dir(app);
    let file = dir.join("docker-compose.yml");
    if !file.is_file() {
        bail!(
            "no app {app}: {} does not exist (apps are listed in {})",
            file.display(),
            state_dir().join("apps").display()
        );
    }
    let compose = Compose {
        tool: engine.compose_tool()?,
        file,
        project: app.to_string(),
    };
    let mut args = vec!["down"];
    if remove_data {
        args.push("-v");
    }
    compose.run(&args, verbose)?;
    let left = engine.project_containers(app, None)?;
    if !left.is_empty() {
        bail!(
            "containers of {app} are still there after `down`: {}",
            left.join(", ")
        );
    }
    if remove_data {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
        println!("Destroyed app {app}: containers, network and data volumes removed.");
    } else {
        println!("Destroyed app {app}'s containers and network; its data volumes are kept (add --remove-data to remove them).");
    }
    Ok(())
}

/// The containers `start-services` runs, as Dallinger names them.
const REDIS_CONTAINER: &str = "dallinger_redis";
const POSTGRES_CONTAINER: &str = "dallinger_postgres";

/// `dallinger docker start-services`: redis on 6379 and postgres on 5432
/// for a local `dallinger debug`, with persistent volumes.
pub fn start_services(engine: &Engine, images: &ServiceImages) -> Result<()> {
    // Dallinger's fixed ports, which a local Dallinger expects.
    let remedy = "run `dallinger-oci stop-services` if they are ours";
    check_port_free(6379, "redis, as Dallinger publishes it", remedy)?;
    check_port_free(5432, "postgres, as Dallinger publishes it", remedy)?;
    engine.run([
        "run",
        "--rm",
        "-d",
        "--name",
        REDIS_CONTAINER,
        "-p",
        "6379:6379",
        "-v",
        "dallinger_redis:/data",
        &images.redis,
        "redis-server",
        "--appendonly",
        "yes",
    ])?;
    engine.run([
        "run",
        "--rm",
        "-d",
        "--name",
        POSTGRES_CONTAINER,
        "-p",
        "5432:5432",
        "-e",
        "POSTGRES_USER=dallinger",
        "-e",
        "POSTGRES_PASSWORD=dallinger",
        "-e",
        "POSTGRES_DB=dallinger",
        "-v",
        "dallinger_postgres:/var/lib/postgresql/data",
        &images.postgres,
    ])?;
    println!(
        "Started {REDIS_CONTAINER} ({}) on port 6379 and {POSTGRES_CONTAINER} ({}) on port 5432.",
        images.redis, images.postgres
    );
    Ok(())
}

/// `dallinger docker stop-services`: stops (and so removes) both containers.
pub fn stop_services(engine: &Engine) -> Result<()> {
    engine.run(["stop", REDIS_CONTAINER, POSTGRES_CONTAINER])?;
    println!("Stopped {REDIS_CONTAINER} and {POSTGRES_CONTAINER}.");
    Ok(())
}

/// `dallinger docker remove-services-data`: removes both data volumes.
pub fn remove_services_data(engine: &Engine) -> Result<()> {
    engine.run(["volume", "rm", "dallinger_redis", "dallinger_postgres"])?;
    println!("Removed the volumes dallinger_redis and dallinger_postgres.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_then_settings_then_overrides() {
        let config = Config::parse(
            Path::new("config.txt"),
            "[x]\nmode = debug\ntitle = T\ndatabase_url = postgresql://x\ndocker_redis_image = r\n",
        )
        .unwrap();
        let env = dallinger_environment(
            Some(&config),
            &[("mode", "sandbox".into())],
            &[("title".into(), "$1.50".into())],
        );
        assert_eq!(
            env,
            vec![
                ("mode".to_string(), "sandbox".to_string()),
                ("title".into(), "$1.50".into())
            ]
        );
        assert_eq!(service_images(None, Some("pg"), Some(&config)).redis, "r");
    }

    #[test]
    fn app_names() {
        assert!(validate_app("dlgr-1a2b3c4d").is_ok());
        assert!(validate_app("Bad_Name").is_err());
        assert!(validate_app("-x").is_err());
    }

    #[test]
    fn booleans_as_dallinger_reads_them() {
        assert!(truthy(Some("True")));
        assert!(truthy(Some(" on ")));
        assert!(!truthy(Some("false")));
        assert!(!truthy(None));
    }
}
