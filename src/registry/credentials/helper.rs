//! Credential helpers: `docker-credential-NAME get`, run with the context's
//! environment, its output bounded and its run time limited.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Credential, CredentialContext, CredentialError, Secret};

/// How long a `docker-credential-*` helper may run before it is killed.
pub(super) const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// Helper output beyond this is not read.
const HELPER_OUTPUT_LIMIT: u64 = 1 << 20;
/// Docker's marker username: the helper's `Secret` is an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// `docker-credential-NAME get`, with `server_url` on stdin; its JSON reply
/// `{"ServerURL","Username","Secret"}` on stdout. "credentials not found" is
/// `Ok(None)`. The helper runs with `ctx.env` as its whole environment and is
/// killed after `timeout`.
pub(super) fn run_helper(
    name: &str,
    server_url: &str,
    host: &str,
    config: &Path,
    ctx: &CredentialContext,
    timeout: Duration,
) -> Result<Option<Credential>, CredentialError> {
    let program_name = format!("docker-credential-{name}");
    let program =
        find_on_path(&program_name, ctx).ok_or_else(|| CredentialError::HelperNotFound {
            helper: name.to_string(),
            host: host.to_string(),
            path: config.to_path_buf(),
        })?;
    let mut command = Command::new(&program);
    command
        .arg("get")
        .env_clear()
        .envs(&ctx.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut command).map_err(|source| CredentialError::HelperSpawn {
        program: program.clone(),
        source,
    })?;

    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its exit status.
        let _ = stdin.write_all(server_url.as_bytes());
    }

    let timed_out = || CredentialError::HelperTimeout {
        helper: name.to_string(),
        server_url: server_url.to_string(),
        timeout,
    };
    let deadline = Instant::now() + timeout;
    let status =
        wait_until(&mut child, deadline).map_err(|source| CredentialError::HelperSpawn {
            program: program.clone(),
            source,
        })?;
    let Some(status) = status else {
        return Err(timed_out());
    };
    // Pipes can outlive the helper (a daemon it started may hold them).
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let stdout = stdout.recv_timeout(grace).map_err(|_| timed_out())?;
    let stderr = stderr.recv_timeout(grace).map_err(|_| timed_out())?;

    if !status.success() {
        if says_not_found(&stdout) || says_not_found(&stderr) {
            return Ok(None);
        }
        return Err(CredentialError::HelperFailed {
            helper: name.to_string(),
            server_url: server_url.to_string(),
            status: describe_status(status),
            stderr: summarize(&stderr),
        });
    }

    let bad_output = |reason: &str| CredentialError::HelperBadOutput {
        helper: name.to_string(),
        server_url: server_url.to_string(),
        reason: reason.to_string(),
    };
    let reply: Value = serde_json::from_slice(&stdout)
        .map_err(|_| bad_output("its stdout is not JSON (not shown)"))?;
    let Value::Object(reply) = reply else {
        return Err(bad_output("its stdout is not a JSON object (not shown)"));
    };
    let text = |field: &str| -> Result<String, CredentialError> {
        match reply.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad_output(&format!("`{field}` is not a string"))),
        }
    };
    let username = text("Username")?;
    let secret = text("Secret")?;
    if secret.is_empty() {
        return Ok(None);
    }
    if username == TOKEN_USERNAME {
        return Ok(Some(Credential::IdentityToken {
            username: String::new(),
            token: Secret::new(secret),
        }));
    }
    Ok(Some(Credential::Basic {
        username,
        password: Secret::new(secret),
    }))
}

/// The first executable `program` in the absolute directories of `ctx.env["PATH"]`.
fn find_on_path(program: &str, ctx: &CredentialContext) -> Option<PathBuf> {
    let path = ctx.env.get("PATH")?;
    for dir in std::env::split_paths(path) {
        if !dir.is_absolute() {
            continue;
        }
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Some(candidate);
        }
        #[cfg(windows)]
        {
            let exe = dir.join(format!("{program}.exe"));
            if is_executable(&exe) {
                return Some(exe);
            }
        }
    }
    None
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// `spawn`, retrying briefly on ETXTBSY: a script just written can be
/// momentarily "busy" while another thread forks.
fn spawn(command: &mut Command) -> io::Result<Child> {
    const ETXTBSY: i32 = 26;
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(e) if cfg!(unix) && e.raw_os_error() == Some(ETXTBSY) && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            result => return result,
        }
    }
}

/// Reads a pipe to its end (at most [`HELPER_OUTPUT_LIMIT`]) on a thread.
fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    match pipe {
        Some(pipe) => {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.take(HELPER_OUTPUT_LIMIT).read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
        }
        None => {
            let _ = tx.send(Vec::new());
        }
    }
    rx
}

/// The child's exit status, or `None` (after killing it) at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn says_not_found(output: &[u8]) -> bool {
    String::from_utf8_lossy(output)
        .to_ascii_lowercase()
        .contains("credentials not found")
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

/// Stderr for an error message: trimmed, on one line, at most 300 characters.
fn summarize(stderr: &[u8]) -> String {
    const LIMIT: usize = 300;
    let text = String::from_utf8_lossy(stderr);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > LIMIT {
        let cut: String = text.chars().take(LIMIT).collect();
        format!("{cut}…")
    } else {
        text
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::credentials::testutil::*;
    #[cfg(unix)]
    #[test]
    fn helper_failures_name_the_helper_and_hide_its_output() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        write_script(
            &bin,
            "docker-credential-broken",
            &format!("cat >/dev/null\necho '{{\"Secret\":\"{PASSWORD}\"'\necho 'keychain locked' >&2\nexit 2\n"),
        );
        write_script(
            &bin,
            "docker-credential-garbled",
            &format!("cat >/dev/null\necho 'not json {PASSWORD}'\n"),
        );
        write(
            &docker_config(home.path()),
            r#"{"credHelpers": {"a.example": "broken", "b.example": "garbled", "c.example": "missing"}}"#,
        );
        let context = ctx(home.path(), &[("PATH", &path_with(&bin))]);

        let err = find_credentials("a.example", &context, None).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, CredentialError::HelperFailed { .. }),
            "{message}"
        );
        assert!(message.contains("docker-credential-broken"), "{message}");
        assert!(
            message.contains("exit status 2") && message.contains("keychain locked"),
            "{message}"
        );
        assert!(!message.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD));

        let err = find_credentials("b.example", &context, None).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, CredentialError::HelperBadOutput { .. }),
            "{message}"
        );
        assert!(
            message.contains("docker-credential-garbled") && !message.contains(PASSWORD),
            "{message}"
        );

        let err = find_credentials("c.example", &context, None).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, CredentialError::HelperNotFound { .. }),
            "{message}"
        );
        assert!(
            message.contains("docker-credential-missing") && message.contains("config.json"),
            "{message}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn helper_is_killed_after_the_timeout() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        write_script(&bin, "docker-credential-slow", "exec sleep 20\n");
        let context = ctx(home.path(), &[("PATH", &path_with(&bin))]);
        let started = Instant::now();
        let err = run_helper(
            "slow",
            "x.example",
            "x.example",
            Path::new("config.json"),
            &context,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(
            matches!(err, CredentialError::HelperTimeout { .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.to_string().contains("docker-credential-slow"));
    }

    #[test]
    fn helper_names_must_be_plain() {
        let home = tempfile::tempdir().unwrap();
        write(
            &docker_config(home.path()),
            r#"{"credHelpers": {"ghcr.io": "../../bin/sh"}}"#,
        );
        let err =
            find_credentials("ghcr.io", &ctx(home.path(), &[("PATH", "/bin")]), None).unwrap_err();
        assert!(
            matches!(err, CredentialError::InvalidHelperName { .. }),
            "{err}"
        );
        write(&docker_config(home.path()), r#"{"credsStore": "/bin/sh"}"#);
        let err =
            find_credentials("ghcr.io", &ctx(home.path(), &[("PATH", "/bin")]), None).unwrap_err();
        assert!(
            matches!(err, CredentialError::InvalidHelperName { .. }),
            "{err}"
        );
    }
}
