//! A Dallinger stack (postgresql, redis, web, workers, clock) as one compose
//! project: the services Dallinger's compose templates define, and the steps
//! that bring it up: start, wait for health, initdb, launch, logs, down.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::compose::{ComposeFile, Condition, Healthcheck, PortMapping, Service};
use super::engine::{Compose, Engine, Health};

/// The images the stack runs besides the experiment's.
#[derive(Debug, Clone)]
pub struct ServiceImages {
    pub redis: String,
    pub postgres: String,
}

impl ServiceImages {
    /// The official images, fully qualified so that podman never has to ask
    /// which registry a short name means. Postgres 12 as Dallinger's
    /// templates pin it (existing data volumes were made by it).
    pub const DEFAULT_REDIS: &'static str = "docker.io/library/redis";
    pub const DEFAULT_POSTGRES: &'static str = "docker.io/library/postgres:12";
}

/// How the web and worker services are named: Dallinger's debug template
/// has one `worker`; its server template `worker_1` … `worker_N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerNaming {
    Single,
    Numbered(u32),
}

impl WorkerNaming {
    pub fn names(self) -> Vec<String> {
        match self {
            WorkerNaming::Single => vec!["worker".into()],
            WorkerNaming::Numbered(n) => (1..=n.max(1)).map(|i| format!("worker_{i}")).collect(),
        }
    }
}

/// Everything that shapes a stack's compose file.
#[derive(Debug, Clone)]
pub struct StackPlan {
    pub experiment_image: String,
    pub images: ServiceImages,
    /// Dallinger's configuration for web, workers and clock, as environment
    /// (read by Dallinger's `load_from_environment`), in order, later wins.
    pub environment: Vec<(String, String)>,
    pub postgres_password: String,
    pub workers: WorkerNaming,
    pub clock: bool,
    pub web_port: PortMapping,
    pub worker_cpu_shares: Option<u32>,
    /// `(host path, container path)` bound read-only into web, workers and
    /// clock: debug's `--dallinger-src` tree over the installed package.
    pub source_mounts: Vec<(String, String)>,
    /// The image holds psynet: web, workers and clock share a volume on
    /// `/experiment/.deploy`, where PsyNet's preparation writes
    /// `deployment_info.json` (nothing of it goes into the image).
    pub psynet: bool,
}

pub const POSTGRES_USER: &str = "dallinger";
const PG_VOLUME: &str = "pg_data";
const REDIS_VOLUME: &str = "redis_data";
const PSYNET_DEPLOY_VOLUME: &str = "psynet_deploy";
/// Where PsyNet reads its deployment's state (`psynet/deployment_info.py`).
const PSYNET_DEPLOY_DIR: &str = "/experiment/.deploy";
/// Holds PsyNet's `LocalStorage` root (`~/psynet-data/assets`, under the
/// containers' `HOME`), where the preparation deposits the experiment's
/// assets and web serves them from (`static/assets` links to it).
const PSYNET_DATA_VOLUME: &str = "psynet_data";
/// The containers' home (`HOME`).
const CONTAINER_HOME: &str = "/tmp";
/// The program [`Stack::prepare_psynet`] runs, and the line it ends with.
const PSYNET_PREPARE: &str = include_str!("psynet_prepare.py");
const PSYNET_PREPARED: &str = "dallinger-oci: PsyNet prepared";

impl StackPlan {
    /// The compose file: services, health checks and `depends_on` as
    /// Dallinger's templates have them, each stack with its own data volumes
    /// (compose prefixes them with the project name).
    pub fn compose_file(&self) -> ComposeFile {
        let postgresql = Service {
            name: "postgresql".into(),
            image: self.images.postgres.clone(),
            environment: vec![
                ("POSTGRES_USER".into(), POSTGRES_USER.into()),
                ("POSTGRES_PASSWORD".into(), self.postgres_password.clone()),
                ("POSTGRES_DB".into(), POSTGRES_USER.into()),
            ],
            healthcheck: Some(Healthcheck {
                shell: "pg_isready -U ${POSTGRES_USER}".into(),
                interval: "2s",
                timeout: "5s",
                retries: 5,
            }),
            volumes: vec![(PG_VOLUME.into(), "/var/lib/postgresql/data".into())],
            ..Service::default()
        };
        let redis = Service {
            name: "redis".into(),
            image: self.images.redis.clone(),
            command: vec!["redis-server".into(), "--appendonly".into(), "yes".into()],
            healthcheck: Some(Healthcheck {
                shell: "[ $(redis-cli ping) = 'PONG' ]".into(),
                interval: "2s",
                timeout: "1s",
                retries: 5,
            }),
            volumes: vec![(REDIS_VOLUME.into(), "/data".into())],
            ..Service::default()
        };
        let depends_on = vec![
            ("postgresql".to_string(), Condition::Healthy),
            ("redis".to_string(), Condition::Healthy),
        ];
        let env = self.container_environment();
        let app = |name: &str, command: &str| Service {
            name: name.into(),
            image: self.experiment_image.clone(),
            command: vec![command.into()],
            environment: env.clone(),
            depends_on: depends_on.clone(),
            binds: self.source_mounts.clone(),
            volumes: if self.psynet {
                vec![
                    (PSYNET_DEPLOY_VOLUME.into(), PSYNET_DEPLOY_DIR.into()),
                    (
                        PSYNET_DATA_VOLUME.into(),
                        format!("{CONTAINER_HOME}/psynet-data"),
                    ),
                ]
            } else {
                vec![]
            },
            ..Service::default()
        };
        let mut web = app("web", "dallinger_heroku_web");
        web.ports = vec![self.web_port.clone()];
        let mut services = vec![postgresql, redis, web];
        for name in self.workers.names() {
            let mut worker = app(&name, "dallinger_heroku_worker");
            worker.cpu_shares = self.worker_cpu_shares;
            services.push(worker);
        }
        if self.clock {
            services.push(app("clock", "dallinger_heroku_clock"));
        }
        let mut volumes = vec![PG_VOLUME.into(), REDIS_VOLUME.into()];
        if self.psynet {
            volumes.push(PSYNET_DEPLOY_VOLUME.into());
            volumes.push(PSYNET_DATA_VOLUME.into());
        }
        ComposeFile { services, volumes }
    }

    /// The environment of web, workers and clock: how to reach the stack's
    /// postgres and redis, then Dallinger's configuration (which may
    /// override even those, as `-c DATABASE_URL …` would).
    fn container_environment(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("REDIS_URL".to_string(), "redis://redis:6379".to_string()),
            (
                "DATABASE_URL".into(),
                format!(
                    "postgresql://{POSTGRES_USER}:{}@postgresql/{POSTGRES_USER}",
                    self.postgres_password
                ),
            ),
            ("HOME".into(), CONTAINER_HOME.into()),
            ("PORT".into(), self.web_port.container_port.to_string()),
        ];
        for (key, value) in &self.environment {
            set(&mut env, key, value);
        }
        env
    }
}

/// Whether the stack is a PsyNet experiment's (it has the `.deploy` volume).
pub fn is_psynet(file: &ComposeFile) -> bool {
    file.volumes.iter().any(|v| v == PSYNET_DEPLOY_VOLUME)
}

/// Sets `key` in an ordered list of pairs: replaced in place, else appended.
pub fn set(pairs: &mut Vec<(String, String)>, key: &str, value: &str) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value.to_string(),
        None => pairs.push((key.to_string(), value.to_string())),
    }
}

/// Set by Ctrl-C (SIGINT/SIGTERM); every wait checks it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Routes Ctrl-C to [`INTERRUPTED`], so a stack is stopped rather than left
/// running when the user interrupts. Call once, after the build.
pub fn catch_interrupts() -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!(Interrupted);
    }
    Ok(())
}

/// The error a wait returns when Ctrl-C arrived.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// Sleeps up to `total`, waking early on Ctrl-C.
fn pause(total: Duration) -> Result<()> {
    let end = Instant::now() + total;
    while Instant::now() < end {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
    check_interrupt()
}

/// A running (or starting) stack.
pub struct Stack {
    pub engine: Engine,
    pub compose: Compose,
    pub file: ComposeFile,
    pub verbose: bool,
}

/// How long services may take to become healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the web server may take to answer HTTP after it started.
const WEB_TIMEOUT: Duration = Duration::from_secs(240);

impl Stack {
    /// Starts postgres and redis, waits until their health checks pass, then
    /// starts the rest: `depends_on` conditions hold whichever compose tool
    /// runs the file (podman-compose 1.0 ignores them).
    pub fn start(&self) -> Result<()> {
        self.start_services()?;
        self.start_apps()
    }

    /// [`Stack::start`], with PsyNet's preparation of the launch between
    /// the services and the apps when the stack is a PsyNet experiment's
    /// (`mode`: PsyNet's deployment mode, debug, sandbox or live).
    pub fn start_preparing(&self, mode: &str, origin: Option<&str>) -> Result<()> {
        if !is_psynet(&self.file) {
            return self.start();
        }
        self.start_services()?;
        self.prepare_psynet(mode, origin)?;
        self.start_apps()
    }

    /// Starts postgres and redis and waits until they are healthy.
    fn start_services(&self) -> Result<()> {
        eprintln!("Starting postgresql and redis…");
        self.compose
            .run(&["up", "-d", "postgresql", "redis"], self.verbose)?;
        self.wait_healthy(&["postgresql", "redis"])
    }

    /// PsyNet's preparation of a launch (`psynet_prepare.py`: PsyNet's own
    /// `deployment_info.init`, `update_deployment_id` and `_prepare`, as
    /// `psynet debug` runs them before Dallinger's): the deployment's info,
    /// pre-deploy constants and database template in the `.deploy` volume,
    /// written by a one-off container of the web service against the
    /// stack's postgres and redis. Dallinger's initdb and launch follow,
    /// and the launch ingests the template.
    /// `origin` is the experiment's git origin, for PsyNet's record.
    fn prepare_psynet(&self, mode: &str, origin: Option<&str>) -> Result<()> {
        eprintln!("Preparing the PsyNet experiment (its deployment info and database)…");
        self.compose
            .run_expecting(
                &[
                    "run",
                    "--rm",
                    "--no-deps",
                    "-T",
                    "web",
                    "python3",
                    "-c",
                    PSYNET_PREPARE,
                    mode,
                    origin.unwrap_or(""),
                ],
                self.verbose,
                PSYNET_PREPARED,
            )
            .context("PsyNet's preparation of the launch failed (in a one-off web container)")
    }

    /// Starts web, workers and clock (postgres and redis are healthy).
    fn start_apps(&self) -> Result<()> {
        eprintln!("Postgresql and redis are healthy; starting web and workers…");
        self.compose.run(&["up", "-d"], self.verbose)?;
        for service in &self.file.services {
            let names = self.containers(&service.name)?;
            if names.is_empty() {
                bail!(
                    "compose started no container for service {}: see `{}`",
                    service.name,
                    self.compose.logs_hint(&[&service.name])
                );
            }
        }
        Ok(())
    }

    /// The containers of one service.
    pub fn containers(&self, service: &str) -> Result<Vec<String>> {
        self.engine
            .project_containers(&self.compose.project, Some(service))
    }

    /// Waits (bounded) until every container of `services` is running and
    /// healthy; a container that stopped is an error quoting its last logs.
    pub fn wait_healthy(&self, services: &[&str]) -> Result<()> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let mut pending: Vec<(String, String)> = Vec::new();
        for service in services {
            for name in self.containers(service)? {
                pending.push((service.to_string(), name));
            }
        }
        while !pending.is_empty() {
            check_interrupt()?;
            let mut still = Vec::new();
            for (service, name) in pending {
                match self.engine.health(&name)? {
                    Health::Healthy => eprintln!("{service} is healthy"),
                    Health::Starting => still.push((service, name)),
                    Health::NotRunning(state) => bail!(
                        "service {service} ({name}) is {state}, not running: its last logs: {}",
                        self.engine.log_tail(&name, 15).trim()
                    ),
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let names: Vec<&str> = pending.iter().map(|(s, _)| s.as_str()).collect();
                bail!(
                    "{} did not become healthy within {} s: see `{}`",
                    names.join(", "),
                    HEALTH_TIMEOUT.as_secs(),
                    self.compose.logs_hint(&names)
                );
            }
            pause(Duration::from_secs(1))?;
        }
        Ok(())
    }

    /// `dallinger-housekeeper initdb` in the first worker, as Dallinger does.
    pub fn initdb(&self, worker_service: &str) -> Result<()> {
        let container = self
            .containers(worker_service)?
            .into_iter()
            .next()
            .with_context(|| format!("no container for service {worker_service}"))?;
        eprintln!("Initializing the database (dallinger-housekeeper initdb in {worker_service})…");
        let out = self
            .engine
            .exec(&container, &["dallinger-housekeeper", "initdb"])?;
        if !out.status.success() {
            bail!(
                "There was a problem initializing the database: `dallinger-housekeeper initdb` in {container} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Waits (bounded) until the web server answers HTTP at `base_url`; if
    /// the web container stops meanwhile, says so with its last logs.
    pub fn wait_web(&self, base_url: &str) -> Result<()> {
        let client = http_client()?;
        let deadline = Instant::now() + WEB_TIMEOUT;
        let web = self.containers("web")?;
        loop {
            check_interrupt()?;
            if client.get(base_url).send().is_ok() {
                return Ok(());
            }
            for name in &web {
                let state = self.engine.state(name)?;
                if state != "running" {
                    bail!(
                        "the web container {name} is {state}: its last logs: {}",
                        self.engine.log_tail(name, 20).trim()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the web server did not answer at {base_url} within {} s: see `{}`",
                    WEB_TIMEOUT.as_secs(),
                    self.compose.logs_hint(&["web"])
                );
            }
            pause(Duration::from_secs(1))?;
        }
    }

    /// Stops and removes the containers (and network); the data volumes
    /// too when `remove_volumes`.
    pub fn down(&self, remove_volumes: bool) -> Result<()> {
        let mut args = vec!["down"];
        if remove_volumes {
            args.push("-v");
        }
        self.compose.run(&args, self.verbose)
    }

    /// The data volumes' names as the engine knows them.
    pub fn volume_names(&self) -> Vec<String> {
        self.file
            .volumes
            .iter()
            .map(|v| format!("{}_{v}", self.compose.project))
            .collect()
    }
}

fn http_client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("cannot make an HTTP client")
}

/// POSTs `/launch` as Dallinger's `handle_launch_data` does: up to
/// `attempts` times, waiting 2, 4, 8 … s between tries. Returns the JSON
/// answer once its status is `success`.
pub fn launch(base_url: &str, attempts: u32) -> Result<serde_json::Value> {
    let client = http_client()?;
    let url = format!("{base_url}/launch");
    let mut delay = Duration::from_secs(1);
    let mut last_error = String::new();
    for attempt in 1..=attempts.max(1) {
        check_interrupt()?;
        match client.post(&url).send() {
            Ok(response) => {
                let status = response.status();
                let text = response.text().unwrap_or_default();
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(json) if status.is_success() && json["status"] == "success" => {
                        return Ok(json)
                    }
                    Ok(json) => {
                        last_error = format!(
                            "{status}: {}",
                            json["message"].as_str().unwrap_or(text.trim())
                        )
                    }
                    Err(_) => last_error = format!("{status}: {}", first_line(&text)),
                }
            }
            Err(err) => last_error = format!("{err}"),
        }
        if attempt < attempts {
            delay *= 2;
            eprintln!(
                "Experiment launch failed ({last_error}). Trying again (attempt {} of {attempts}) in {} seconds…",
                attempt + 1,
                delay.as_secs()
            );
            pause(delay)?;
        }
    }
    bail!("Experiment launch failed after {attempts} attempts: POST {url} gave {last_error}")
}

fn first_line(text: &str) -> &str {
    text.trim().lines().next().unwrap_or("")
}

/// Dallinger's recruiters log this before a participant URL
/// (`NEW_RECRUIT_LOG_PREFIX`).
pub const NEW_RECRUIT_LOG_PREFIX: &str = "New participant requested:";

/// Streams the logs of `services`' containers to stderr, each line prefixed
/// with its service, until Ctrl-C or until every container has stopped.
/// `on_line` sees every line (to spot new participants).
pub fn follow_logs(
    stack: &Stack,
    services: &[String],
    on_line: &mut dyn FnMut(&str, &str),
) -> Result<()> {
    let engine = &stack.engine;
    let (sender, receiver) = mpsc::channel::<(String, Option<String>)>();
    let mut children = Vec::new();
    let mut open_streams = 0;
    for service in services {
        for name in stack.containers(service)? {
            let mut child = engine.follow_logs(&name)?;
            let streams: Vec<Box<dyn Read + Send>> = vec![
                Box::new(child.stdout.take().expect("piped")),
                Box::new(child.stderr.take().expect("piped")),
            ];
            for stream in streams {
                open_streams += 1;
                let sender = sender.clone();
                let service = service.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { break };
                        if sender.send((service.clone(), Some(line))).is_err() {
                            return;
                        }
                    }
                    let _ = sender.send((service, None));
                });
            }
            children.push(child);
        }
    }
    drop(sender);
    let result = loop {
        if interrupted() {
            break Ok(());
        }
        match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok((service, Some(line))) => {
                eprintln!("{service:>10} | {line}");
                on_line(&service, &line);
            }
            Ok((_, None)) => {
                open_streams -= 1;
                if open_streams == 0 {
                    break Err(anyhow::anyhow!(
                        "every followed container stopped: see `{}`",
                        stack.compose.logs_hint(&["web"])
                    ));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Writes `text` to `path` readable by the owner only: compose files hold
/// the experiment's secrets as environment values. The file is created
/// exclusively (0600) under a random name and renamed over `path`, so no
/// file or symlink planted at any name makes it world-readable or sends
/// the secrets elsewhere.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    crate::fsutil::write(path, text.as_bytes(), 0o600)
}
