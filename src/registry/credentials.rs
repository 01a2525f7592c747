//! Registry credentials: find the username and password (or identity token)
//! for a registry host the way docker, podman, crane and skopeo users expect,
//! and keep secrets from ever being printed.
//!
//! Lookup order (first hit wins), see [`find_credentials`]:
//!
//! 1. explicit credentials: `--username` / `--password-stdin`, or
//!    `DALLINGER_OCI_REGISTRY_USERNAME` / `DALLINGER_OCI_REGISTRY_PASSWORD`,
//!    for the push target's registry only: a base, a builder or any other
//!    registry never gets them, so an experiment naming a base on a hostile
//!    registry cannot collect the push credentials;
//! 2. the containers-auth.json file named by `REGISTRY_AUTH_FILE`;
//! 3. podman's `auth.json`: `$XDG_RUNTIME_DIR/containers/auth.json`, then
//!    `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/containers/auth.json`);
//! 4. docker's `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`):
//!    `credHelpers`, `auths`, `credsStore`;
//! 5. `GITHUB_TOKEN`, for `ghcr.io` only;
//! 6. otherwise anonymous.
//!
//! Everything the lookup reads from the environment comes from a
//! [`CredentialContext`], so tests are hermetic.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::{Map, Value};

/// Environment variable read for the username when `--username` is not given.
pub const USERNAME_ENV: &str = "DALLINGER_OCI_REGISTRY_USERNAME";
/// Environment variable read for the password when `--password-stdin` is not given.
pub const PASSWORD_ENV: &str = "DALLINGER_OCI_REGISTRY_PASSWORD";

/// How long a `docker-credential-*` helper may run before it is killed.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// The server URL docker uses for Docker Hub, in config keys and with helpers.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
/// Host names that all mean Docker Hub.
const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
/// Helper output beyond this is not read.
const HELPER_OUTPUT_LIMIT: u64 = 1 << 20;
/// Docker's marker username: the helper's `Secret` is an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// `auth` fields: standard alphabet, padding optional (some tools drop it).
const AUTH_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A secret string that never prints itself: Debug and Display show "<redacted>".
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: Secret,
    },
    /// docker config `identitytoken`: an OAuth2 refresh token for the token endpoint.
    /// `username` may be empty (credential helpers do not report one).
    IdentityToken {
        username: String,
        token: Secret,
    },
}

impl Credential {
    /// The username, empty when an identity token came without one.
    pub fn username(&self) -> &str {
        match self {
            Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                username
            }
        }
    }
}

/// Where a credential came from, for messages ("using credentials for ghcr.io from ~/.docker/config.json").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `--username` / `--password-stdin`, or their environment variables.
    Flags,
    /// The file named by `REGISTRY_AUTH_FILE`.
    RegistryAuthFile(PathBuf),
    /// podman's `auth.json`.
    PodmanAuthFile(PathBuf),
    /// docker's `config.json` (an `auths` entry).
    DockerConfig(PathBuf),
    /// `docker-credential-NAME`, holding `NAME` as the config file spells it.
    CredentialHelper(String),
    /// `GITHUB_TOKEN` (for ghcr.io).
    GithubToken,
}

impl CredentialSource {
    /// Human text, with paths under `home` shown as `~/…`. [`Display`](fmt::Display)
    /// uses the process's home directory.
    pub fn describe(&self, home: Option<&Path>) -> String {
        match self {
            CredentialSource::Flags => {
                format!("--username/--password-stdin (or {USERNAME_ENV}/{PASSWORD_ENV})")
            }
            CredentialSource::RegistryAuthFile(p) => {
                format!("{} (REGISTRY_AUTH_FILE)", tilde(p, home))
            }
            CredentialSource::PodmanAuthFile(p) | CredentialSource::DockerConfig(p) => {
                tilde(p, home)
            }
            CredentialSource::CredentialHelper(name) => format!("docker-credential-{name}"),
            CredentialSource::GithubToken => "GITHUB_TOKEN".to_string(),
        }
    }
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(dirs::home_dir().as_deref()))
    }
}

/// `path` with a leading `home` replaced by `~`.
fn tilde(path: &Path, home: Option<&Path>) -> String {
    match home.and_then(|h| path.strip_prefix(h).ok()) {
        Some(rest) if rest.as_os_str().is_empty() => "~".to_string(),
        Some(rest) => format!("~/{}", rest.display()),
        None => path.display().to_string(),
    }
}

/// Everything lookup reads, passed in (no global env reads inside), so tests are hermetic.
///
/// `Debug` shows the environment's names only, never its values.
#[derive(Clone, Default)]
pub struct CredentialContext {
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The environment: lookup reads its variables from here, and credential
    /// helpers run with exactly this environment (and find themselves on its `PATH`).
    pub env: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
}

impl CredentialContext {
    /// A snapshot of the process environment (variables whose name and value
    /// are UTF-8) and home directory, with the CLI's explicit credentials.
    pub fn from_process(username: Option<String>, password: Option<Secret>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        CredentialContext {
            username,
            password,
            env,
            home: dirs::home_dir(),
        }
    }

    /// An environment variable; set-but-empty counts as unset.
    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// An XDG base directory variable: only absolute paths count (XDG spec).
    fn xdg_dir(&self, name: &str) -> Option<PathBuf> {
        self.var(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    }
}

impl fmt::Debug for CredentialContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialContext")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("home", &self.home)
            .finish()
    }
}

/// Why credentials could not be found. Messages name the file (or helper) and
/// what is wrong, and never include a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "a registry password was given without a username: pass --username or set {USERNAME_ENV}"
    )]
    PasswordWithoutUsername,
    #[error("registry username {username:?} was given without a password: pass --password-stdin or set {PASSWORD_ENV}")]
    UsernameWithoutPassword { username: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not valid JSON: {reason}", path.display())]
    InvalidJson { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },
    #[error("{}: entry {key:?} (for {host}): {reason}", path.display())]
    InvalidEntry {
        path: PathBuf,
        host: String,
        key: String,
        reason: String,
    },
    #[error("{}: credential helper name {name:?} is not a plain name", path.display())]
    InvalidHelperName { path: PathBuf, name: String },
    #[error("credential helper docker-credential-{helper} (named for {host} in {}) is not on PATH; install it, or remove it from that file", path.display())]
    HelperNotFound {
        helper: String,
        host: String,
        path: PathBuf,
    },
    #[error("cannot run credential helper {}: {source}", program.display())]
    HelperSpawn { program: PathBuf, source: io::Error },
    #[error("credential helper docker-credential-{helper} failed for {server_url} ({status}){}", stderr_suffix(.stderr))]
    HelperFailed {
        helper: String,
        server_url: String,
        status: String,
        /// The helper's stderr, trimmed and shortened (its stdout is never kept).
        stderr: String,
    },
    #[error("credential helper docker-credential-{helper} did not finish within {} s for {server_url}; killed it", timeout.as_secs_f32())]
    HelperTimeout {
        helper: String,
        server_url: String,
        timeout: Duration,
    },
    #[error("credential helper docker-credential-{helper} gave unusable output for {server_url}: {reason}")]
    HelperBadOutput {
        helper: String,
        server_url: String,
        reason: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// The registry (and repository, if given) credentials are wanted for.
struct Target {
    /// The host as given (`ghcr.io`, `127.0.0.1:5000`, `docker.io`).
    host: String,
    /// Lowercase host, Docker Hub's aliases all as `docker.io`.
    norm: String,
    /// The repository path after the host, if the caller gave one.
    repo: Option<String>,
}

impl Target {
    fn parse(input: &str) -> Target {
        let s = input.trim();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        let (host, repo) = match s.split_once('/') {
            Some((h, r)) => (h, Some(r.trim_matches('/')).filter(|r| !r.is_empty())),
            None => (s, None),
        };
        Target {
            host: host.to_string(),
            norm: norm_host(host),
            repo: repo.map(str::to_string),
        }
    }

    fn is_docker_hub(&self) -> bool {
        self.norm == "docker.io"
    }

    /// The server URL docker uses for this registry with credential helpers.
    fn helper_server_url(&self) -> String {
        if self.is_docker_hub() {
            DOCKER_HUB_SERVER.to_string()
        } else {
            self.host.clone()
        }
    }

    /// Config keys for this host, most preferred first, when several match.
    fn preferred_keys(&self) -> Vec<String> {
        if self.is_docker_hub() {
            let mut keys = vec![DOCKER_HUB_SERVER.to_string()];
            keys.extend(DOCKER_HUB_HOSTS.iter().map(|h| h.to_string()));
            keys
        } else {
            vec![
                self.host.clone(),
                format!("https://{}", self.host),
                format!("http://{}", self.host),
            ]
        }
    }

    /// `credHelpers` keys that name this host.
    fn helper_keys(&self) -> Vec<String> {
        if self.is_docker_hub() {
            self.preferred_keys()
        } else {
            vec![self.host.clone()]
        }
    }
}

/// Lowercase, with Docker Hub's aliases as `docker.io`.
fn norm_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    if DOCKER_HUB_HOSTS.contains(&lower.as_str()) {
        "docker.io".to_string()
    } else {
        lower
    }
}

fn strip_scheme(key: &str) -> Option<&str> {
    key.strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
}

/// The registry a docker `auths` key names: docker's `ConvertToHostname`
/// (drop the scheme and any path), normalised.
fn docker_key_host(key: &str) -> String {
    let s = strip_scheme(key).unwrap_or(key);
    norm_host(s.split('/').next().unwrap_or(s))
}

/// The registry and repository scope a containers-auth.json key names: a key
/// with a scheme is a legacy docker key (host only); otherwise `host[/path]`.
fn containers_key(key: &str) -> (String, Option<String>) {
    if let Some(s) = strip_scheme(key) {
        return (docker_key_host(s), None);
    }
    match key.split_once('/') {
        Some((h, path)) => {
            let path = path.trim_matches('/');
            (
                norm_host(h),
                Some(path.to_string()).filter(|p| !p.is_empty()),
            )
        }
        None => (norm_host(key), None),
    }
}

/// `keys` ordered by preference: those in `preferred` in its order, then the rest sorted.
fn rank<'a>(mut keys: Vec<&'a String>, preferred: &[String]) -> Vec<&'a String> {
    keys.sort_by_key(|k| {
        (
            preferred
                .iter()
                .position(|p| p.eq_ignore_ascii_case(k))
                .unwrap_or(usize::MAX),
            k.as_str(),
        )
    });
    keys
}

/// Finds the credentials for `host` (`ghcr.io`, `127.0.0.1:5000`, `docker.io`),
/// trying the sources in the order of the [module docs](self); `Ok(None)` means
/// anonymous. The explicit credentials of `ctx` are used only when `host` is
/// `explicit_registry` (the push target's registry; `None`: no registry gets
/// them), though a half-given pair is an error for every host. `host` may also carry a repository (`ghcr.io/org/app`): then
/// repository-scoped keys in containers auth files (`"ghcr.io/org"`) are
/// honoured, most specific first, as podman and skopeo do; with a bare host
/// only host keys count.
pub fn find_credentials(
    host: &str,
    ctx: &CredentialContext,
    explicit_registry: Option<&str>,
) -> Result<Option<(Credential, CredentialSource)>, CredentialError> {
    let target = Target::parse(host);

    let explicit = explicit(ctx)?;
    let for_this_host = explicit_registry.is_some_and(|r| Target::parse(r).norm == target.norm);
    if let Some(credential) = explicit.filter(|_| for_this_host) {
        return Ok(Some((credential, CredentialSource::Flags)));
    }

    if let Some(path) = ctx.var("REGISTRY_AUTH_FILE").map(PathBuf::from) {
        if let Some(found) =
            lookup_containers_file(&path, &target, ctx, CredentialSource::RegistryAuthFile)?
        {
            return Ok(Some(found));
        }
    }

    for path in podman_auth_files(ctx) {
        if let Some(found) =
            lookup_containers_file(&path, &target, ctx, CredentialSource::PodmanAuthFile)?
        {
            return Ok(Some(found));
        }
    }

    if let Some(path) = docker_config_file(ctx) {
        if let Some(found) = lookup_docker_config(&path, &target, ctx)? {
            return Ok(Some(found));
        }
    }

    if target.norm == "ghcr.io" {
        if let Some(token) = ctx.var("GITHUB_TOKEN") {
            let username = ctx.var("GITHUB_ACTOR").unwrap_or("x-access-token");
            let credential = Credential::Basic {
                username: username.to_string(),
                password: Secret::new(token),
            };
            return Ok(Some((credential, CredentialSource::GithubToken)));
        }
    }

    Ok(None)
}

/// `--username`/`--password-stdin`, each falling back to its environment variable.
fn explicit(ctx: &CredentialContext) -> Result<Option<Credential>, CredentialError> {
    let username = ctx
        .username
        .clone()
        .or_else(|| ctx.var(USERNAME_ENV).map(str::to_string));
    let password = ctx
        .password
        .clone()
        .or_else(|| ctx.var(PASSWORD_ENV).map(Secret::new));
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credential::Basic { username, password })),
        (None, Some(_)) => Err(CredentialError::PasswordWithoutUsername),
        (Some(username), None) => Err(CredentialError::UsernameWithoutPassword { username }),
        (None, None) => Ok(None),
    }
}

/// podman's auth files, in the order podman reads them.
fn podman_auth_files(ctx: &CredentialContext) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(runtime) = ctx.xdg_dir("XDG_RUNTIME_DIR") {
        files.push(runtime.join("containers").join("auth.json"));
    }
    let config = ctx
        .xdg_dir("XDG_CONFIG_HOME")
        .or_else(|| ctx.home.as_ref().map(|h| h.join(".config")));
    if let Some(config) = config {
        files.push(config.join("containers").join("auth.json"));
    }
    files
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_file(ctx: &CredentialContext) -> Option<PathBuf> {
    match ctx.var("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => ctx
            .home
            .as_ref()
            .map(|h| h.join(".docker").join("config.json")),
    }
}

/// A containers-auth.json file (`REGISTRY_AUTH_FILE`, podman): `credHelpers`
/// for the host, then `auths` entries from the most specific key to the host.
fn lookup_containers_file(
    path: &Path,
    target: &Target,
    ctx: &CredentialContext,
    source: fn(PathBuf) -> CredentialSource,
) -> Result<Option<(Credential, CredentialSource)>, CredentialError> {
    let Some(doc) = read_json(path)? else {
        return Ok(None);
    };

    if let Some(found) = lookup_cred_helpers(path, &doc, target, ctx)? {
        return Ok(Some(found));
    }

    let Some(auths) = object_field(path, &doc, "auths")? else {
        return Ok(None);
    };
    // Scopes from the whole repository down to the bare host.
    let mut scopes: Vec<Option<String>> = Vec::new();
    if let Some(repo) = &target.repo {
        let mut scope = repo.as_str();
        loop {
            scopes.push(Some(scope.to_string()));
            match scope.rsplit_once('/') {
                Some((parent, _)) => scope = parent,
                None => break,
            }
        }
    }
    scopes.push(None);

    for scope in scopes {
        let keys: Vec<&String> = auths
            .keys()
            .filter(|k| containers_key(k) == (target.norm.clone(), scope.clone()))
            .collect();
        let preferred: Vec<String> = match &scope {
            Some(s) => vec![format!("{}/{s}", target.host)],
            None => target.preferred_keys(),
        };
        for key in rank(keys, &preferred) {
            if let Some(credential) = decode_entry(path, key, &target.host, &auths[key])? {
                return Ok(Some((credential, source(path.to_path_buf()))));
            }
        }
    }
    Ok(None)
}

/// Docker's `config.json`: `credHelpers[host]`, else `auths` (an empty entry
/// means a `credsStore` holds the secret), else `credsStore`.
fn lookup_docker_config(
    path: &Path,
    target: &Target,
    ctx: &CredentialContext,
) -> Result<Option<(Credential, CredentialSource)>, CredentialError> {
    let Some(doc) = read_json(path)? else {
        return Ok(None);
    };

    if helper_for(path, &doc, target)?.is_some() {
        // The host's helper is authoritative: if it has nothing, docker has nothing.
        return lookup_cred_helpers(path, &doc, target, ctx);
    }

    let mut empty_keys: Vec<&String> = Vec::new();
    if let Some(auths) = object_field(path, &doc, "auths")? {
        let keys: Vec<&String> = auths
            .keys()
            .filter(|k| docker_key_host(k) == target.norm)
            .collect();
        for key in rank(keys, &target.preferred_keys()) {
            match decode_entry(path, key, &target.host, &auths[key])? {
                Some(credential) => {
                    return Ok(Some((
                        credential,
                        CredentialSource::DockerConfig(path.to_path_buf()),
                    )))
                }
                None => empty_keys.push(key),
            }
        }
    }

    if let Some(store) = string_field(path, &doc, "credsStore")? {
        check_helper_name(path, store)?;
        let mut urls: Vec<String> = empty_keys.into_iter().cloned().collect();
        let canonical = target.helper_server_url();
        if !urls.contains(&canonical) {
            urls.push(canonical);
        }
        for url in &urls {
            if let Some(credential) =
                run_helper(store, url, &target.host, path, ctx, HELPER_TIMEOUT)?
            {
                return Ok(Some((
                    credential,
                    CredentialSource::CredentialHelper(store.to_string()),
                )));
            }
        }
    }
    Ok(None)
}

/// The `credHelpers` entry naming this host: (key, helper name).
fn helper_for<'a>(
    path: &Path,
    doc: &'a Map<String, Value>,
    target: &Target,
) -> Result<Option<(&'a str, &'a str)>, CredentialError> {
    let Some(helpers) = object_field(path, doc, "credHelpers")? else {
        return Ok(None);
    };
    for key in target.helper_keys() {
        if let Some((key, value)) = helpers.get_key_value(&key) {
            let name = value.as_str().ok_or_else(|| CredentialError::InvalidFile {
                path: path.to_path_buf(),
                reason: format!("credHelpers entry {key:?} is not a string"),
            })?;
            if name.is_empty() {
                continue;
            }
            check_helper_name(path, name)?;
            return Ok(Some((key.as_str(), name)));
        }
    }
    Ok(None)
}

/// Runs the `credHelpers` helper for this host, if there is one.
fn lookup_cred_helpers(
    path: &Path,
    doc: &Map<String, Value>,
    target: &Target,
    ctx: &CredentialContext,
) -> Result<Option<(Credential, CredentialSource)>, CredentialError> {
    let Some((_, name)) = helper_for(path, doc, target)? else {
        return Ok(None);
    };
    let url = target.helper_server_url();
    Ok(
        run_helper(name, &url, &target.host, path, ctx, HELPER_TIMEOUT)?
            .map(|c| (c, CredentialSource::CredentialHelper(name.to_string()))),
    )
}

/// Helper names become `docker-credential-NAME` looked up on PATH: no paths.
fn check_helper_name(path: &Path, name: &str) -> Result<(), CredentialError> {
    if name.is_empty() || name.contains(['/', '\\', '\0']) {
        return Err(CredentialError::InvalidHelperName {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The file's top-level object; `None` if it does not exist. An empty file is `{}`.
fn read_json(path: &Path) -> Result<Option<Map<String, Value>>, CredentialError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    // Parsed as a Value and walked by hand: serde's typed errors can quote
    // the offending value, which may be a secret. Syntax errors only give a
    // position.
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| CredentialError::InvalidJson {
            path: path.to_path_buf(),
            reason: json_reason(&e),
        })?;
    match value {
        Value::Object(map) => Ok(Some(map)),
        _ => Err(CredentialError::InvalidFile {
            path: path.to_path_buf(),
            reason: "the top level is not a JSON object".to_string(),
        }),
    }
}

fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "invalid data",
        Category::Eof => "unexpected end of file",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// A top-level object field (`auths`, `credHelpers`); absent or null is `None`.
fn object_field<'a>(
    path: &Path,
    doc: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>, CredentialError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(CredentialError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("`{field}` is not an object"),
        }),
    }
}

/// A top-level string field (`credsStore`); absent, null or empty is `None`.
fn string_field<'a>(
    path: &Path,
    doc: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, CredentialError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.is_empty())),
        Some(_) => Err(CredentialError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("`{field}` is not a string"),
        }),
    }
}

/// One `auths` entry: `auth` (base64 `user:pass`), else `username`/`password`;
/// with `identitytoken` it is an identity token. `None` for an entry with
/// none of these (docker writes `{}` when a `credsStore` holds the secret).
fn decode_entry(
    path: &Path,
    key: &str,
    host: &str,
    entry: &Value,
) -> Result<Option<Credential>, CredentialError> {
    let invalid = |reason: &str| CredentialError::InvalidEntry {
        path: path.to_path_buf(),
        host: host.to_string(),
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let obj = match entry {
        Value::Object(obj) => obj,
        Value::Null => return Ok(None),
        _ => return Err(invalid("is not an object")),
    };
    let field = |name: &str| -> Result<Option<&str>, CredentialError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.is_empty())),
            Some(_) => Err(invalid(&format!("field `{name}` is not a string"))),
        }
    };

    let (username, password) = match field("auth")? {
        Some(auth) => {
            let compact: String = auth.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            // The decoder's own error names the offending symbol: not shown.
            let bytes = AUTH_BASE64
                .decode(compact)
                .map_err(|_| invalid("field `auth` is not valid base64"))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| invalid("field `auth` does not decode to UTF-8 text"))?;
            let (user, pass) = text
                .split_once(':')
                .ok_or_else(|| invalid("field `auth` does not decode to `username:password`"))?;
            (
                Some(user.to_string()).filter(|u| !u.is_empty()),
                Some(pass.to_string()).filter(|p| !p.is_empty()),
            )
        }
        None => (
            field("username")?.map(str::to_string),
            field("password")?.map(str::to_string),
        ),
    };

    if let Some(token) = field("identitytoken")? {
        return Ok(Some(Credential::IdentityToken {
            username: username.unwrap_or_default(),
            token: Secret::new(token),
        }));
    }
    if username.is_none() && password.is_none() {
        return Ok(None);
    }
    Ok(Some(Credential::Basic {
        username: username.unwrap_or_default(),
        password: Secret::new(password.unwrap_or_default()),
    }))
}

/// `docker-credential-NAME get`, with `server_url` on stdin; its JSON reply
/// `{"ServerURL","Username","Secret"}` on stdout. "credentials not found" is
/// `Ok(None)`. The helper runs with `ctx.env` as its whole environment and is
/// killed after `timeout`.
fn run_helper(
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
    use std::fs;

    const PASSWORD: &str = "hunter2-very-secret";

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// A context with no variables but `env`, and `home` as home.
    fn ctx(home: &Path, env: &[(&str, &str)]) -> CredentialContext {
        CredentialContext {
            username: None,
            password: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: Some(home.to_path_buf()),
        }
    }

    fn write(path: &Path, contents: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn auths_file(entries: &[(&str, &str, &str)]) -> String {
        let auths: Map<String, Value> = entries
            .iter()
            .map(|(key, user, pass)| {
                (
                    key.to_string(),
                    serde_json::json!({ "auth": b64(&format!("{user}:{pass}")) }),
                )
            })
            .collect();
        serde_json::json!({ "auths": auths }).to_string()
    }

    fn docker_config(home: &Path) -> PathBuf {
        home.join(".docker").join("config.json")
    }

    fn basic(user: &str, pass: &str) -> Credential {
        Credential::Basic {
            username: user.to_string(),
            password: Secret::new(pass),
        }
    }

    fn find(host: &str, ctx: &CredentialContext) -> Option<(Credential, CredentialSource)> {
        find_credentials(host, ctx, None).unwrap()
    }

    /// As [`find`], with `push` as the push target's registry.
    fn find_pushing(
        host: &str,
        ctx: &CredentialContext,
        push: &str,
    ) -> Option<(Credential, CredentialSource)> {
        find_credentials(host, ctx, Some(push)).unwrap()
    }

    #[cfg(unix)]
    fn write_script(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        write(&path, &format!("#!/bin/sh\n{body}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `PATH` with `bin` first, then the system directories `sh` needs.
    fn path_with(bin: &Path) -> String {
        format!("{}:/usr/bin:/bin", bin.display())
    }

    /// A helper that answers `user-<server url>` / `secret-<name>` for any URL.
    #[cfg(unix)]
    fn echo_helper(bin: &Path, name: &str) {
        write_script(
            bin,
            &format!("docker-credential-{name}"),
            &format!(
                "[ \"$1\" = get ] || exit 3\nurl=$(cat)\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"user-%s\",\"Secret\":\"secret-{name}\"}}' \"$url\" \"$url\"\n"
            ),
        );
    }

    /// A helper that knows nothing.
    #[cfg(unix)]
    fn empty_helper(bin: &Path, name: &str) {
        write_script(
            bin,
            &format!("docker-credential-{name}"),
            "cat >/dev/null\necho 'credentials not found in native keychain'\nexit 1\n",
        );
    }

    #[test]
    fn secret_never_prints_itself() {
        let secret = Secret::new(PASSWORD);
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(secret.expose(), PASSWORD);

        let credential = basic("alice", PASSWORD);
        let debug = format!("{credential:?}");
        assert!(!debug.contains(PASSWORD), "{debug}");
        assert!(
            debug.contains("alice") && debug.contains("<redacted>"),
            "{debug}"
        );
        let token = Credential::IdentityToken {
            username: "bob".into(),
            token: Secret::new(PASSWORD),
        };
        assert!(!format!("{token:?}").contains(PASSWORD));
        assert!(!format!("{:#?}", (token, CredentialSource::Flags)).contains(PASSWORD));

        let mut context = ctx(Path::new("/nonexistent"), &[("GITHUB_TOKEN", PASSWORD)]);
        context.password = Some(Secret::new(PASSWORD));
        let debug = format!("{context:?}");
        assert!(!debug.contains(PASSWORD), "{debug}");
        assert!(debug.contains("GITHUB_TOKEN"), "{debug}");
    }

    #[test]
    fn explicit_flags_win_over_everything() {
        let home = tempfile::tempdir().unwrap();
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "docker", "d")]),
        );
        let mut context = ctx(
            home.path(),
            &[("GITHUB_TOKEN", "gh"), (USERNAME_ENV, "envuser")],
        );
        context.username = Some("flaguser".into());
        context.password = Some(Secret::new(PASSWORD));
        assert_eq!(
            find_pushing("ghcr.io", &context, "ghcr.io"),
            Some((basic("flaguser", PASSWORD), CredentialSource::Flags))
        );
        assert_eq!(
            find_pushing("GHCR.io", &context, "ghcr.io").unwrap().1,
            CredentialSource::Flags
        );
    }

    #[test]
    fn explicit_credentials_go_to_the_push_target_only() {
        let home = tempfile::tempdir().unwrap();
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "docker", "d")]),
        );
        let mut context = ctx(home.path(), &[("GITHUB_TOKEN", "gh")]);
        context.username = Some("flaguser".into());
        context.password = Some(Secret::new(PASSWORD));
        // Another registry (a base's) is looked up by its own host.
        assert_eq!(
            find_pushing("ghcr.io", &context, "quay.io"),
            Some((
                basic("docker", "d"),
                CredentialSource::DockerConfig(docker_config(home.path()))
            ))
        );
        assert_eq!(find_pushing("evil.example", &context, "quay.io"), None);
        // Another port is another registry.
        assert_eq!(
            find_pushing("127.0.0.1:5001", &context, "127.0.0.1:5000"),
            None
        );
        // No push target: no registry gets them.
        assert_eq!(find("quay.io", &context), None);
        // Docker Hub's aliases are one registry.
        assert_eq!(
            find_pushing("registry-1.docker.io", &context, "docker.io")
                .unwrap()
                .1,
            CredentialSource::Flags
        );
        // The environment's pair likewise.
        let context = ctx(
            home.path(),
            &[(USERNAME_ENV, "envuser"), (PASSWORD_ENV, "envpass")],
        );
        assert_eq!(find_pushing("evil.example", &context, "quay.io"), None);
        assert_eq!(
            find_pushing("quay.io", &context, "quay.io"),
            Some((basic("envuser", "envpass"), CredentialSource::Flags))
        );
    }

    #[test]
    fn explicit_from_environment_and_mixed() {
        let home = tempfile::tempdir().unwrap();
        let context = ctx(
            home.path(),
            &[(USERNAME_ENV, "envuser"), (PASSWORD_ENV, "envpass")],
        );
        let push = "127.0.0.1:5000";
        assert_eq!(
            find_pushing(push, &context, push),
            Some((basic("envuser", "envpass"), CredentialSource::Flags))
        );
        // A flag fills one half, the environment the other.
        let mut context = ctx(home.path(), &[(PASSWORD_ENV, "envpass")]);
        context.username = Some("flaguser".into());
        assert_eq!(
            find_pushing(push, &context, push),
            Some((basic("flaguser", "envpass"), CredentialSource::Flags))
        );
        // Empty variables are unset.
        let context = ctx(home.path(), &[(USERNAME_ENV, ""), (PASSWORD_ENV, "")]);
        assert_eq!(find_pushing(push, &context, push), None);
    }

    #[test]
    fn password_without_username_is_an_error_without_the_password() {
        let home = tempfile::tempdir().unwrap();
        let mut context = ctx(home.path(), &[]);
        context.password = Some(Secret::new(PASSWORD));
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        assert!(matches!(err, CredentialError::PasswordWithoutUsername));
        let message = err.to_string();
        assert!(message.contains("without a username"), "{message}");
        assert!(!message.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD));

        let context = ctx(home.path(), &[(PASSWORD_ENV, PASSWORD)]);
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        assert!(!err.to_string().contains(PASSWORD));

        let context = ctx(home.path(), &[(USERNAME_ENV, "alice")]);
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        assert!(
            matches!(err, CredentialError::UsernameWithoutPassword { .. }),
            "{err}"
        );
    }

    #[test]
    fn registry_auth_file_wins_over_podman_and_docker() {
        let home = tempfile::tempdir().unwrap();
        let auth_file = home.path().join("custom").join("auth.json");
        write(&auth_file, &auths_file(&[("ghcr.io", "raf", "p1")]));
        let podman = home.path().join(".config/containers/auth.json");
        write(&podman, &auths_file(&[("ghcr.io", "podman", "p2")]));
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "docker", "p3")]),
        );

        let context = ctx(
            home.path(),
            &[
                ("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap()),
                ("GITHUB_TOKEN", "gh"),
            ],
        );
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("raf", "p1"),
                CredentialSource::RegistryAuthFile(auth_file.clone())
            ))
        );
        // Another host falls through to podman's file, then docker's.
        write(&auth_file, &auths_file(&[("quay.io", "raf", "p1")]));
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("podman", "p2"),
                CredentialSource::PodmanAuthFile(podman.clone())
            ))
        );
        fs::remove_file(&podman).unwrap();
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("docker", "p3"),
                CredentialSource::DockerConfig(docker_config(home.path()))
            ))
        );
        // A missing REGISTRY_AUTH_FILE is not an error.
        let context = ctx(
            home.path(),
            &[("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")],
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("docker", "p3"));
    }

    #[test]
    fn containers_auth_key_forms() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("auth.json");
        let context = ctx(
            home.path(),
            &[("REGISTRY_AUTH_FILE", file.to_str().unwrap())],
        );

        for key in [
            "127.0.0.1:5000",
            "https://127.0.0.1:5000",
            "http://127.0.0.1:5000",
            "https://127.0.0.1:5000/v1/",
        ] {
            write(&file, &auths_file(&[(key, "u", "p")]));
            assert_eq!(
                find("127.0.0.1:5000", &context).unwrap().0,
                basic("u", "p"),
                "{key}"
            );
        }
        // The bare host beats the scheme forms, https beats http.
        write(
            &file,
            &auths_file(&[
                ("http://h.example", "http", "1"),
                ("https://h.example", "https", "2"),
                ("h.example", "bare", "3"),
            ]),
        );
        assert_eq!(find("h.example", &context).unwrap().0, basic("bare", "3"));
        write(
            &file,
            &auths_file(&[
                ("http://h.example", "http", "1"),
                ("https://h.example", "https", "2"),
            ]),
        );
        assert_eq!(find("h.example", &context).unwrap().0, basic("https", "2"));
        // Host names compare case-insensitively.
        assert_eq!(find("H.Example", &context).unwrap().0, basic("https", "2"));
    }

    #[test]
    fn containers_auth_repository_scopes() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("auth.json");
        let context = ctx(
            home.path(),
            &[("REGISTRY_AUTH_FILE", file.to_str().unwrap())],
        );
        write(
            &file,
            &auths_file(&[
                ("ghcr.io/org/app", "app", "1"),
                ("ghcr.io/org", "org", "2"),
                ("ghcr.io", "host", "3"),
            ]),
        );
        assert_eq!(
            find("ghcr.io/org/app", &context).unwrap().0,
            basic("app", "1")
        );
        assert_eq!(
            find("ghcr.io/org/other", &context).unwrap().0,
            basic("org", "2")
        );
        assert_eq!(
            find("ghcr.io/else/x", &context).unwrap().0,
            basic("host", "3")
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("host", "3"));
        // A bare host does not pick up another repository's credentials.
        write(&file, &auths_file(&[("ghcr.io/org/app", "app", "1")]));
        assert_eq!(find("ghcr.io", &context), None);
    }

    #[test]
    fn podman_runtime_dir_then_config_dir() {
        let home = tempfile::tempdir().unwrap();
        let runtime = home.path().join("run");
        let config = home.path().join("cfg");
        let runtime_file = runtime.join("containers/auth.json");
        let config_file = config.join("containers/auth.json");
        let default_file = home.path().join(".config/containers/auth.json");
        write(&runtime_file, &auths_file(&[("quay.io", "run", "1")]));
        write(&config_file, &auths_file(&[("quay.io", "cfg", "2")]));
        write(&default_file, &auths_file(&[("quay.io", "default", "3")]));
        write(
            &docker_config(home.path()),
            &auths_file(&[("quay.io", "docker", "4")]),
        );

        let both = [
            ("XDG_RUNTIME_DIR", runtime.to_str().unwrap()),
            ("XDG_CONFIG_HOME", config.to_str().unwrap()),
        ];
        assert_eq!(
            find("quay.io", &ctx(home.path(), &both)),
            Some((
                basic("run", "1"),
                CredentialSource::PodmanAuthFile(runtime_file.clone())
            ))
        );
        fs::remove_file(&runtime_file).unwrap();
        assert_eq!(
            find("quay.io", &ctx(home.path(), &both)),
            Some((
                basic("cfg", "2"),
                CredentialSource::PodmanAuthFile(config_file)
            ))
        );
        assert_eq!(
            find("quay.io", &ctx(home.path(), &[])),
            Some((
                basic("default", "3"),
                CredentialSource::PodmanAuthFile(default_file.clone())
            ))
        );
        // Relative XDG directories are ignored.
        assert_eq!(
            find(
                "quay.io",
                &ctx(home.path(), &[("XDG_CONFIG_HOME", "relative")])
            )
            .unwrap()
            .1,
            CredentialSource::PodmanAuthFile(default_file)
        );
    }

    #[test]
    fn docker_config_entries() {
        let home = tempfile::tempdir().unwrap();
        let file = docker_config(home.path());
        let context = ctx(home.path(), &[]);
        write(&file, &auths_file(&[("ghcr.io", "alice", "pa:ss")]));
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("alice", "pa:ss"),
                CredentialSource::DockerConfig(file.clone())
            ))
        );
        // username/password fields, and unpadded base64.
        write(
            &file,
            r#"{"auths": {"ghcr.io": {"username": "bob", "password": "pw"}}}"#,
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("bob", "pw"));
        let unpadded = b64("carol:pw").trim_end_matches('=').to_string();
        assert_ne!(unpadded, b64("carol:pw"));
        write(
            &file,
            &format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{unpadded}"}}}}}}"#),
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("carol", "pw"));
        // Other hosts: nothing.
        assert_eq!(find("quay.io", &context), None);
        // Keys with a path name their host.
        write(
            &file,
            &auths_file(&[("https://127.0.0.1:5000/v1/", "u", "p")]),
        );
        assert_eq!(find("127.0.0.1:5000", &context).unwrap().0, basic("u", "p"));
    }

    #[test]
    fn docker_config_env_replaces_home() {
        let home = tempfile::tempdir().unwrap();
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "home", "1")]),
        );
        let dir = home.path().join("elsewhere");
        write(
            &dir.join("config.json"),
            &auths_file(&[("ghcr.io", "env", "2")]),
        );
        let context = ctx(home.path(), &[("DOCKER_CONFIG", dir.to_str().unwrap())]);
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("env", "2"),
                CredentialSource::DockerConfig(dir.join("config.json"))
            ))
        );
        // DOCKER_CONFIG without a config.json: no fallback to ~/.docker.
        let context = ctx(home.path(), &[("DOCKER_CONFIG", "/nonexistent")]);
        assert_eq!(find("ghcr.io", &context), None);
    }

    #[test]
    fn docker_hub_aliases() {
        let home = tempfile::tempdir().unwrap();
        let file = docker_config(home.path());
        let context = ctx(home.path(), &[]);
        for key in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io",
            "https://index.docker.io/v2/",
        ] {
            write(&file, &auths_file(&[(key, "hub", "pw")]));
            for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
                assert_eq!(
                    find(host, &context).unwrap().0,
                    basic("hub", "pw"),
                    "key {key}, host {host}"
                );
            }
        }
        // Docker's own key wins when several are present.
        write(
            &file,
            &auths_file(&[
                ("docker.io", "short", "1"),
                ("https://index.docker.io/v1/", "canonical", "2"),
            ]),
        );
        assert_eq!(
            find("docker.io", &context).unwrap().0,
            basic("canonical", "2")
        );
        // Not a prefix match: docker.io.example.com is another host.
        write(&file, &auths_file(&[("docker.io.example.com", "x", "y")]));
        assert_eq!(find("docker.io", &context), None);
    }

    #[test]
    fn docker_identity_token() {
        let home = tempfile::tempdir().unwrap();
        let file = docker_config(home.path());
        write(
            &file,
            &format!(
                r#"{{"auths": {{"myacr.azurecr.io": {{"auth": "{}", "identitytoken": "{PASSWORD}"}}}}}}"#,
                b64("00000000-0000-0000-0000-000000000000:")
            ),
        );
        let (credential, source) = find("myacr.azurecr.io", &ctx(home.path(), &[])).unwrap();
        assert_eq!(
            credential,
            Credential::IdentityToken {
                username: "00000000-0000-0000-0000-000000000000".into(),
                token: Secret::new(PASSWORD),
            }
        );
        assert_eq!(source, CredentialSource::DockerConfig(file));
        assert_eq!(
            credential.username(),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    #[cfg(unix)]
    #[test]
    fn cred_helpers_run_the_helper() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        echo_helper(&bin, "test");
        write(
            &docker_config(home.path()),
            &format!(
                r#"{{"credHelpers": {{"ghcr.io": "test", "docker.io": "test", "127.0.0.1:5000": "test"}},
                   "auths": {}}}"#,
                serde_json::json!({"ghcr.io": {"auth": b64("inline:x")}})
            ),
        );
        let context = ctx(home.path(), &[("PATH", &path_with(&bin))]);
        // credHelpers wins over the inline entry.
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("user-ghcr.io", "secret-test"),
                CredentialSource::CredentialHelper("test".into())
            ))
        );
        assert_eq!(
            find("127.0.0.1:5000", &context).unwrap().0,
            basic("user-127.0.0.1:5000", "secret-test")
        );
        // Docker Hub's server URL is docker's.
        assert_eq!(
            find("registry-1.docker.io", &context).unwrap().0,
            basic("user-https://index.docker.io/v1/", "secret-test")
        );
    }

    #[cfg(unix)]
    #[test]
    fn helper_without_credentials_falls_through() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        empty_helper(&bin, "empty");
        write(
            &docker_config(home.path()),
            r#"{"credHelpers": {"ghcr.io": "empty", "quay.io": "empty"}}"#,
        );
        let context = ctx(
            home.path(),
            &[("PATH", &path_with(&bin)), ("GITHUB_TOKEN", "ghtok")],
        );
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("x-access-token", "ghtok"),
                CredentialSource::GithubToken
            ))
        );
        assert_eq!(find("quay.io", &context), None);
    }

    #[cfg(unix)]
    #[test]
    fn empty_auths_entry_uses_creds_store() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        echo_helper(&bin, "store");
        let file = docker_config(home.path());
        write(
            &file,
            &format!(
                r#"{{"credsStore": "store", "auths": {{"https://ghcr.io": {{}}, "quay.io": {{"auth": "{}"}}}}}}"#,
                b64("inline:pw")
            ),
        );
        let context = ctx(home.path(), &[("PATH", &path_with(&bin))]);
        // The empty entry's key is the server URL the store knows.
        assert_eq!(
            find("ghcr.io", &context),
            Some((
                basic("user-https://ghcr.io", "secret-store"),
                CredentialSource::CredentialHelper("store".into())
            ))
        );
        // An inline entry is used as is.
        assert_eq!(
            find("quay.io", &context),
            Some((basic("inline", "pw"), CredentialSource::DockerConfig(file)))
        );
        // No entry at all: the store is asked for the host.
        assert_eq!(
            find("docker.io", &context).unwrap().0,
            basic("user-https://index.docker.io/v1/", "secret-store")
        );
        assert_eq!(
            find("127.0.0.1:5000", &context).unwrap().0,
            basic("user-127.0.0.1:5000", "secret-store")
        );

        // A store without the credentials: anonymous.
        empty_helper(&bin, "store");
        assert_eq!(find("ghcr.io", &context), None);
    }

    #[cfg(unix)]
    #[test]
    fn helper_identity_token() {
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join("bin");
        write_script(
            &bin,
            "docker-credential-acr",
            &format!("cat >/dev/null\necho '{{\"ServerURL\":\"x\",\"Username\":\"<token>\",\"Secret\":\"{PASSWORD}\"}}'\n"),
        );
        write(
            &docker_config(home.path()),
            r#"{"credHelpers": {"myacr.azurecr.io": "acr"}}"#,
        );
        let context = ctx(home.path(), &[("PATH", &path_with(&bin))]);
        assert_eq!(
            find("myacr.azurecr.io", &context).unwrap().0,
            Credential::IdentityToken {
                username: String::new(),
                token: Secret::new(PASSWORD)
            }
        );
    }

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

    #[test]
    fn github_token_only_for_ghcr() {
        let home = tempfile::tempdir().unwrap();
        let context = ctx(
            home.path(),
            &[("GITHUB_TOKEN", PASSWORD), ("GITHUB_ACTOR", "octocat")],
        );
        assert_eq!(
            find("ghcr.io", &context),
            Some((basic("octocat", PASSWORD), CredentialSource::GithubToken))
        );
        assert_eq!(
            find("GHCR.io", &context).unwrap().1,
            CredentialSource::GithubToken
        );
        assert_eq!(find("docker.io", &context), None);
        assert_eq!(find("ghcr.io.example.com", &context), None);
        let context = ctx(home.path(), &[("GITHUB_TOKEN", PASSWORD)]);
        assert_eq!(
            find("ghcr.io", &context).unwrap().0,
            basic("x-access-token", PASSWORD)
        );
        // Docker's config comes first.
        write(
            &docker_config(home.path()),
            &auths_file(&[("ghcr.io", "docker", "d")]),
        );
        assert_eq!(find("ghcr.io", &context).unwrap().0, basic("docker", "d"));
    }

    #[test]
    fn nothing_anywhere_is_anonymous() {
        let home = tempfile::tempdir().unwrap();
        assert_eq!(find("ghcr.io", &ctx(home.path(), &[])), None);
        let no_home = CredentialContext::default();
        assert_eq!(find_credentials("ghcr.io", &no_home, None).unwrap(), None);
        // Empty files count as empty configs.
        write(&docker_config(home.path()), "\n");
        assert_eq!(find("ghcr.io", &ctx(home.path(), &[])), None);
    }

    #[test]
    fn malformed_files_are_errors_without_secrets() {
        let home = tempfile::tempdir().unwrap();
        let file = docker_config(home.path());
        let context = ctx(home.path(), &[]);

        write(
            &file,
            &format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{PASSWORD}"#),
        );
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, CredentialError::InvalidJson { .. }),
            "{message}"
        );
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(!message.contains(PASSWORD), "{message}");

        // Bad base64 (with a `-` the decoder would quote).
        let bad = format!("{PASSWORD}!!");
        write(
            &file,
            &format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{bad}"}}}}}}"#),
        );
        let err = find_credentials("ghcr.io", &context, None).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, CredentialError::InvalidEntry { .. }),
            "{message}"
        );
        assert!(
            message.contains(&file.display().to_string()) && message.contains("\"ghcr.io\""),
            "{message}"
        );
        assert!(message.contains("base64"), "{message}");
        assert!(
            !message.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD),
            "{message}"
        );
        // Another host's broken entry does not matter.
        assert_eq!(find("quay.io", &context), None);

        // Base64 without a colon.
        write(
            &file,
            &format!(
                r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#,
                b64(PASSWORD)
            ),
        );
        let message = find_credentials("ghcr.io", &context, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("username:password") && !message.contains(PASSWORD),
            "{message}"
        );

        // Wrong types: the value is not quoted.
        write(
            &file,
            &format!(r#"{{"auths": {{"ghcr.io": {{"password": ["{PASSWORD}"]}}}}}}"#),
        );
        let message = find_credentials("ghcr.io", &context, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("`password` is not a string") && !message.contains(PASSWORD),
            "{message}"
        );
        write(&file, &format!(r#"{{"auths": "{PASSWORD}"}}"#));
        let message = find_credentials("ghcr.io", &context, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("`auths` is not an object") && !message.contains(PASSWORD),
            "{message}"
        );

        // Same for a containers auth file.
        let auth_file = home.path().join("auth.json");
        write(&auth_file, "[1, 2");
        let context = ctx(
            home.path(),
            &[("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap())],
        );
        let message = find_credentials("ghcr.io", &context, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&auth_file.display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn source_display_uses_tilde() {
        let home = Path::new("/home/alice");
        let docker = CredentialSource::DockerConfig(home.join(".docker/config.json"));
        assert_eq!(docker.describe(Some(home)), "~/.docker/config.json");
        assert_eq!(docker.describe(None), "/home/alice/.docker/config.json");
        assert_eq!(
            docker.describe(Some(Path::new("/home/al"))),
            "/home/alice/.docker/config.json"
        );
        assert_eq!(
            CredentialSource::RegistryAuthFile("/etc/auth.json".into()).describe(Some(home)),
            "/etc/auth.json (REGISTRY_AUTH_FILE)"
        );
        assert_eq!(
            CredentialSource::PodmanAuthFile(home.join(".config/containers/auth.json"))
                .describe(Some(home)),
            "~/.config/containers/auth.json"
        );
        assert_eq!(
            CredentialSource::CredentialHelper("osxkeychain".into()).to_string(),
            "docker-credential-osxkeychain"
        );
        assert_eq!(CredentialSource::GithubToken.to_string(), "GITHUB_TOKEN");
        assert!(CredentialSource::Flags.to_string().contains("--username"));
        if let Some(real_home) = dirs::home_dir() {
            let source = CredentialSource::DockerConfig(real_home.join(".docker/config.json"));
            assert_eq!(source.to_string(), "~/.docker/config.json");
        }
    }

    #[test]
    fn from_process_snapshots_the_environment() {
        let context = CredentialContext::from_process(Some("u".into()), None);
        assert_eq!(context.username.as_deref(), Some("u"));
        assert_eq!(context.home, dirs::home_dir());
        if let Ok(path) = std::env::var("PATH") {
            assert_eq!(context.env.get("PATH"), Some(&path));
        }
    }
}
