//! The container engine (podman or docker) and its compose tool, driven
//! through their command lines: the only place the tool runs containers.
//!
//! Images are handed over by streaming our own archive into `load`; the
//! engine never builds anything. A remote engine (`DOCKER_HOST`,
//! `CONTAINER_HOST`, e.g. `ssh://user@host`) works the same way, since every
//! step is a command of the engine's own client.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Podman,
    Docker,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Podman => "podman",
            EngineKind::Docker => "docker",
        }
    }

    fn parse(text: &str, origin: &str) -> Result<EngineKind> {
        match text.trim().to_ascii_lowercase().as_str() {
            "podman" => Ok(EngineKind::Podman),
            "docker" => Ok(EngineKind::Docker),
            other => bail!("{origin} is {other:?}: use podman or docker"),
        }
    }

    /// The variable that points this engine's client at a remote engine.
    fn host_variable(self) -> &'static str {
        match self {
            EngineKind::Podman => "CONTAINER_HOST",
            EngineKind::Docker => "DOCKER_HOST",
        }
    }
}

/// How compose files are run: `docker compose`, `podman compose`, or the
/// `podman-compose` (or `docker-compose`) program.
#[derive(Debug, Clone)]
pub struct ComposeTool {
    program: PathBuf,
    /// `compose`, for the engine's own subcommand; empty for a separate program.
    subcommand: Option<&'static str>,
}

impl ComposeTool {
    /// How users type it, for the hints we print.
    pub fn display(&self) -> String {
        let name = self
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match self.subcommand {
            Some(sub) => format!("{name} {sub}"),
            None => name,
        }
    }
}

/// A container engine found on this machine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub kind: EngineKind,
    pub program: PathBuf,
    /// How it was chosen, for the line we print.
    pub found_by: String,
}

/// What build and push do not need, said whenever no engine is found.
const NO_ENGINE_HINT: &str = "build and push do not need one (they never call a container engine); install podman (or docker) to run experiments";

impl Engine {
    /// The engine from `--runtime`, else `DALLINGER_OCI_RUNTIME`, else the
    /// first of podman and docker on PATH (podman first: it needs no daemon).
    pub fn detect(flag: Option<&str>) -> Result<Engine> {
        let env = std::env::var("DALLINGER_OCI_RUNTIME")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let chosen = match (flag, env) {
            (Some(f), _) => Some((EngineKind::parse(f, "--runtime")?, "--runtime")),
            (None, Some(v)) => Some((
                EngineKind::parse(&v, "DALLINGER_OCI_RUNTIME")?,
                "DALLINGER_OCI_RUNTIME",
            )),
            (None, None) => None,
        };
        if let Some((kind, origin)) = chosen {
            let program = find_on_path(kind.name()).with_context(|| {
                format!(
                    "{origin} asks for {}, but no {} program is on PATH; {NO_ENGINE_HINT}",
                    kind.name(),
                    kind.name()
                )
            })?;
            return Ok(Engine {
                kind,
                program,
                found_by: format!("chosen by {origin}"),
            });
        }
        for kind in [EngineKind::Podman, EngineKind::Docker] {
            if let Some(program) = find_on_path(kind.name()) {
                return Ok(Engine {
                    kind,
                    program,
                    found_by: "found on PATH".into(),
                });
            }
        }
        bail!("no container engine found: this command runs containers and needs podman or docker on PATH (or --runtime / DALLINGER_OCI_RUNTIME); {NO_ENGINE_HINT}")
    }

    /// One line saying which engine is used and why.
    pub fn describe(&self) -> String {
        let remote = self
            .remote_url()
            .map(|u| format!(", remote engine at {u}"))
            .unwrap_or_default();
        format!(
            "Container engine: {} ({}, {}{remote})",
            self.kind.name(),
            self.program.display(),
            self.found_by
        )
    }

    /// `DOCKER_HOST` / `CONTAINER_HOST` when they point at another machine.
    pub fn remote_url(&self) -> Option<String> {
        std::env::var(self.kind.host_variable())
            .ok()
            .filter(|v| !v.is_empty() && !v.starts_with("unix://"))
    }

    /// The host name published ports are reached on: the remote engine's
    /// host, else this machine.
    pub fn published_host(&self) -> String {
        self.remote_url()
            .and_then(|url| host_of_url(&url))
            .unwrap_or_else(|| "localhost".into())
    }

    pub fn command(&self) -> Command {
        Command::new(&self.program)
    }

    /// Runs the engine with `args`; an error names the command and quotes
    /// its standard error.
    pub fn run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        checked_output(&mut cmd)
    }

    /// Streams an image archive (written by `write`) into `ENGINE load`.
    pub fn load(&self, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("load")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(&mut cmd)?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = write(&mut stdin);
        drop(stdin);
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "{} load failed ({}): {}",
                self.kind.name(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        written.with_context(|| format!("streaming the image into {} load", self.kind.name()))
    }

    /// The image ID (`sha256:…`, the config digest) of a local image.
    pub fn image_id(&self, reference: &str) -> Result<Option<String>> {
        let out = self
            .command()
            .args(["image", "inspect", "--format", "{{.Id}}", reference])
            .output()
            .with_context(|| format!("cannot run {}", self.program.display()))?;
        if !out.status.success() {
            return Ok(None);
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Some(if id.starts_with("sha256:") {
            id
        } else {
            format!("sha256:{id}")
        }))
    }

    /// Pulls `reference`. `plain_http` allows a registry without TLS (only
    /// asked for local registries, as pushes do); docker decides that itself.
    pub fn pull(&self, reference: &str, plain_http: bool) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("pull");
        if plain_http && self.kind == EngineKind::Podman {
            cmd.arg("--tls-verify=false");
        }
        cmd.arg(reference);
        checked_output(&mut cmd)
            .map(drop)
            .with_context(|| format!("cannot pull {reference}"))
    }

    /// Names of the containers of a compose project (all states), sorted;
    /// only those of `service` when given. Both compose tools label their
    /// containers with docker compose's labels.
    pub fn project_containers(&self, project: &str, service: Option<&str>) -> Result<Vec<String>> {
        let mut args = vec![
            "ps".to_string(),
            "-a".into(),
            "--filter".into(),
            format!("label=com.docker.compose.project={project}"),
        ];
        if let Some(service) = service {
            args.push("--filter".into());
            args.push(format!("label=com.docker.compose.service={service}"));
        }
        args.extend(["--format".into(), "{{.Names}}".into()]);
        let out = self.run(&args)?;
        let mut names: Vec<String> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Runs a container's health check once (podman runs checks only when
    /// asked, unless systemd timers do it) or reads its status (docker).
    pub fn health(&self, container: &str) -> Result<Health> {
        let state = self.state(container)?;
        if state != "running" {
            return Ok(Health::NotRunning(state));
        }
        match self.kind {
            EngineKind::Podman => {
                let out = self
                    .command()
                    .args(["healthcheck", "run", container])
                    .output()?;
                Ok(if out.status.success() {
                    Health::Healthy
                } else {
                    Health::Starting
                })
            }
            EngineKind::Docker => {
                let status = self.run([
                    "inspect",
                    "--format",
                    "{{if .State.Health}}{{.State.Health.Status}}{{else}}healthy{{end}}",
                    container,
                ])?;
                Ok(match status.trim() {
                    "healthy" => Health::Healthy,
                    _ => Health::Starting,
                })
            }
        }
    }

    /// A container's state: `running`, `exited`, …
    pub fn state(&self, container: &str) -> Result<String> {
        let state = self.run(["inspect", "--format", "{{.State.Status}}", container])?;
        Ok(state.trim().to_string())
    }

    /// Whether Python in `image` imports `module`: a one-off container
    /// without network runs the image's own `python3` (an image without one
    /// has no such module).
    pub fn image_has_python_module(&self, image: &str, module: &str) -> Result<bool> {
        let script = format!(
            "import importlib.util, sys\nsys.exit(0 if importlib.util.find_spec({module:?}) else 3)"
        );
        let out = self
            .command()
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "python3",
            ])
            .arg(image)
            .args(["-c", &script])
            .output()
            .with_context(|| format!("cannot run {}", self.program.display()))?;
        Ok(out.status.success())
    }

    /// `ENGINE exec CONTAINER ARGS…`, its output captured.
    pub fn exec(&self, container: &str, args: &[&str]) -> Result<Output> {
        self.command()
            .arg("exec")
            .arg(container)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.program.display()))
    }

    /// `ENGINE logs -f CONTAINER`, both streams piped.
    pub fn follow_logs(&self, container: &str) -> Result<Child> {
        let mut cmd = self.command();
        cmd.args(["logs", "-f", container])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        spawn(&mut cmd)
    }

    /// The last lines a container logged, for error messages.
    pub fn log_tail(&self, container: &str, lines: u32) -> String {
        self.command()
            .args(["logs", "--tail", &lines.to_string(), container])
            .output()
            .map(|o| {
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                text
            })
            .unwrap_or_default()
    }

    /// The compose tool that goes with this engine: the engine's own
    /// `compose` subcommand when it works, else `podman-compose` /
    /// `docker-compose`.
    pub fn compose_tool(&self) -> Result<ComposeTool> {
        let standalone = match self.kind {
            EngineKind::Podman => "podman-compose",
            EngineKind::Docker => "docker-compose",
        };
        let own = ComposeTool {
            program: self.program.clone(),
            subcommand: Some("compose"),
        };
        // podman-compose first for podman: `podman compose` only forwards to
        // an external provider, which may need podman's API socket.
        let separate = find_on_path(standalone).map(|program| ComposeTool {
            program,
            subcommand: None,
        });
        let own_works = || {
            self.command()
                .args(["compose", "version"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        };
        match (self.kind, separate) {
            (EngineKind::Podman, Some(tool)) => Ok(tool),
            (EngineKind::Docker, _) if own_works() => Ok(own),
            (_, Some(tool)) => Ok(tool),
            (EngineKind::Podman, None) if own_works() => Ok(own),
            _ => bail!(
                "no compose tool for {}: install {standalone}{}",
                self.kind.name(),
                match self.kind {
                    EngineKind::Docker => " or the docker compose plugin",
                    EngineKind::Podman => " (Debian package podman-compose)",
                }
            ),
        }
    }
}

/// A container's health, as far as waiting is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Starting,
    NotRunning(String),
}

/// A compose file and its project, run with the engine's compose tool.
#[derive(Debug, Clone)]
pub struct Compose {
    pub tool: ComposeTool,
    pub file: PathBuf,
    pub project: String,
}

impl Compose {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.tool.program);
        if let Some(sub) = self.tool.subcommand {
            cmd.arg(sub);
        }
        cmd.arg("-f").arg(&self.file).arg("-p").arg(&self.project);
        if let Some(dir) = self.file.parent() {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs `compose ARGS…`; output is shown only when it fails (or when
    /// `verbose`).
    pub fn run(&self, args: &[&str], verbose: bool) -> Result<()> {
        self.run_checked(args, verbose, None)
    }

    /// [`Compose::run`] of a command that prints `line` when it succeeded:
    /// without that line it failed, whatever the exit status
    /// (podman-compose 1.0's `run` exits 0 when the container did not).
    pub fn run_expecting(&self, args: &[&str], verbose: bool, line: &str) -> Result<()> {
        self.run_checked(args, verbose, Some(line))
    }

    fn run_checked(&self, args: &[&str], verbose: bool, expected: Option<&str>) -> Result<()> {
        let mut cmd = self.command();
        cmd.args(args).stdin(Stdio::null());
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", self.tool.display()))?;
        if verbose {
            std::io::stderr().write_all(&out.stdout).ok();
            std::io::stderr().write_all(&out.stderr).ok();
        }
        let printed = match expected {
            None => true,
            Some(line) => String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim_end() == line),
        };
        if !out.status.success() || !printed {
            // The command itself (a long line, secrets in its `-e`s) is
            // left out: `compose ARGS` names it.
            let shown: Vec<&str> = args
                .iter()
                .map(|a| if a.contains('\n') { "…" } else { a })
                .collect();
            // podman-compose echoes a program given as an argument, too.
            let echoed: Vec<&str> = args
                .iter()
                .filter(|a| a.contains('\n'))
                .flat_map(|a| a.lines())
                .filter(|l| !l.trim().is_empty())
                .collect();
            let output = last_lines_except(&out, 20, &echoed);
            bail!(
                "`{} -f {} {}` failed ({}): {}",
                self.tool.display(),
                self.file.display(),
                shown.join(" "),
                out.status,
                output
            );
        }
        Ok(())
    }

    /// What a user types to run `compose ARGS` on this project.
    pub fn hint(&self, args: &str) -> String {
        format!(
            "{} -f {} -p {} {args}",
            self.tool.display(),
            shell_quote(&self.file.to_string_lossy()),
            self.project,
        )
    }

    /// What a user types to see the logs, as Dallinger's docs show.
    pub fn logs_hint(&self, services: &[&str]) -> String {
        self.hint(&format!("logs -f {}", services.join(" ")))
    }
}

fn last_lines(out: &Output, n: usize) -> String {
    last_lines_except(out, n, &[])
}

/// [`last_lines`] without the lines in `echoed`.
fn last_lines_except(out: &Output, n: usize, echoed: &[&str]) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    // podman-compose echoes each podman command it runs, environment values
    // (passwords, secret keys) included: those lines are never shown.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !is_echoed_command(l) && !l.trim().is_empty() && !echoed.contains(l))
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A line in which podman-compose echoes a command it runs.
fn is_echoed_command(line: &str) -> bool {
    line.starts_with("['podman'") || line.starts_with("podman ")
}

/// A word for a POSIX shell, quoted only when it needs it.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:@,+".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.spawn()
        .with_context(|| format!("cannot run {}", Path::new(cmd.get_program()).display()))
}

fn checked_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", Path::new(cmd.get_program()).display()))?;
    if !out.status.success() {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        bail!(
            "`{} {}` failed ({}): {}",
            Path::new(cmd.get_program()).display(),
            args.join(" "),
            out.status,
            last_lines(&out, 20)
        );
    }
    let mut stdout = String::new();
    out.stdout.as_slice().read_to_string(&mut stdout).ok();
    Ok(stdout)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `ssh://user@host:22` → `host`; `tcp://10.0.0.5:2376` → `10.0.0.5`.
fn host_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(inner) = host_port.strip_prefix('[') {
        inner.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_hosts() {
        assert_eq!(
            host_of_url("ssh://core@exp.example.org:22/run/podman.sock").as_deref(),
            Some("exp.example.org")
        );
        assert_eq!(
            host_of_url("tcp://10.0.0.5:2376").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(host_of_url("ssh://[::1]:22").as_deref(), Some("::1"));
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("/a/b.yml"), "/a/b.yml");
        assert_eq!(shell_quote("a b'c"), r"'a b'\''c'");
    }
}
