//! One registry, spoken to over the OCI distribution API: authentication
//! (Basic, and the Bearer token challenge with tokens cached per scope),
//! bounded retries with backoff and jitter, blob and manifest transfers.
//!
//! Written on reqwest rather than oci-client because pushing dependably needs
//! what that crate lacks (retries, the mount source's pull scope, 202 on
//! mount, exact manifest bytes, chunked resume).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use reqwest::blocking::{Body, Client, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};

use super::credentials::Credential;
use super::reference::Reference;

/// How often and how patiently a failed request is tried again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
        }
    }
}

/// The largest PATCH GHCR accepts.
const GHCR_MAX_CHUNK: u64 = 4 << 20;

pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// What happened to a blob during a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    Existed,
    Mounted,
    Uploaded { bytes: u64 },
}

/// A failure, and whether trying again may help.
struct Failure {
    error: anyhow::Error,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: anyhow::Error) -> Self {
        Failure {
            error,
            retry: false,
            retry_after: None,
        }
    }
    fn transient(error: anyhow::Error) -> Self {
        Failure {
            error,
            retry: true,
            retry_after: None,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::fatal(error)
    }
}

/// What a registry's `WWW-Authenticate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

pub struct RegistryClient {
    http: Client,
    base: Url,
    /// The registry as users write it (`ghcr.io`), for messages.
    pub registry: String,
    credential: Option<Credential>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, String>>,
    retry: RetryPolicy,
}

impl RegistryClient {
    pub fn new(
        reference: &Reference,
        insecure: &[String],
        credential: Option<Credential>,
        retry: RetryPolicy,
    ) -> Result<RegistryClient> {
        let base = Url::parse(&format!(
            "{}://{}/",
            reference.scheme(insecure),
            reference.api_host()
        ))
        .with_context(|| format!("{} is not a valid registry host", reference.registry))?;
        let http = Client::builder()
            .user_agent(concat!("dallinger-oci/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            // Whole requests may be large uploads: a generous bound, so a
            // registry that stops answering cannot hang a CI job forever.
            .timeout(Duration::from_secs(1800))
            .tcp_keepalive(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()?;
        Ok(RegistryClient {
            http,
            base,
            registry: reference.registry.clone(),
            credential,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            retry,
        })
    }

    fn url(&self, path: &str) -> Result<Url> {
        Ok(self.base.join(path)?)
    }

    /// Sends a request, answering an auth challenge once. `build` makes the
    /// request afresh for each try (bodies cannot be replayed).
    fn send(
        &self,
        scopes: &[String],
        build: &dyn Fn(&Client) -> Result<RequestBuilder>,
    ) -> Result<Response, Failure> {
        for round in 0..2 {
            let mut request = build(&self.http)?;
            if let Some(header) = self.auth_header(scopes)? {
                request = request.header(AUTHORIZATION, header);
            }
            let response = request.send().map_err(|e| self.transport_failure(e))?;
            if response.status() != StatusCode::UNAUTHORIZED || round == 1 {
                return Ok(response);
            }
            let Some(challenge) = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
            else {
                return Ok(response);
            };
            *self.challenge.lock().unwrap() = Some(challenge);
            // A cached token that was refused is dropped and fetched again.
            self.tokens.lock().unwrap().remove(&scopes.join(" "));
        }
        unreachable!("the loop returns on its second round")
    }

    fn auth_header(&self, scopes: &[String]) -> Result<Option<String>, Failure> {
        let challenge = self.challenge.lock().unwrap();
        match &*challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(match &self.credential {
                Some(Credential::Basic { username, password }) => {
                    Some(basic(username, password.expose()))
                }
                _ => None,
            }),
            Some(Challenge::Bearer { realm, service }) => {
                let key = scopes.join(" ");
                if let Some(token) = self.tokens.lock().unwrap().get(&key) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let (realm, service) = (realm.clone(), service.clone());
                drop(challenge);
                let token = self.fetch_token(&realm, service.as_deref(), scopes)?;
                self.tokens.lock().unwrap().insert(key, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<String, Failure> {
        let mut url = Url::parse(realm).map_err(|_| {
            Failure::fatal(anyhow!("{} sent an invalid token realm", self.registry))
        })?;
        let response = match &self.credential {
            Some(Credential::IdentityToken { token, .. }) => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", token.expose().to_string()),
                    ("client_id", "dallinger-oci".to_string()),
                ];
                if let Some(service) = service {
                    form.push(("service", service.to_string()));
                }
                form.push(("scope", scopes.join(" ")));
                self.http.post(url).form(&form).send()
            }
            credential => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    for scope in scopes {
                        query.append_pair("scope", scope);
                    }
                }
                let mut request = self.http.get(url);
                if let Some(Credential::Basic { username, password }) = credential {
                    request = request.header(AUTHORIZATION, basic(username, password.expose()));
                }
                request.send()
            }
        }
        .map_err(|e| self.transport_failure(e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Failure::fatal(self.unauthorized_error()));
        }
        if !status.is_success() {
            return Err(status_failure(
                status,
                None,
                anyhow!("the token service of {} answered {status}", self.registry),
            ));
        }
        let body: serde_json::Value = response.json().map_err(|_| {
            Failure::fatal(anyhow!(
                "the token service of {} sent no JSON",
                self.registry
            ))
        })?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| {
                Failure::fatal(anyhow!(
                    "the token service of {} sent no token",
                    self.registry
                ))
            })
    }

    pub fn unauthorized_error(&self) -> anyhow::Error {
        let login = match &self.credential {
            Some(_) => "the registry refused the credentials found".to_string(),
            None => "no credentials were found".to_string(),
        };
        if self.registry == "ghcr.io" {
            anyhow!(
                "unauthenticated: {login}. You need to login to the github docker registry ghcr.io. \
                 You need to create a PAT (Personal Access Token) here: \
                 https://github.com/settings/tokens/new?scopes=write:packages \
                 and use it to log in with the command `docker login ghcr.io` \
                 (or set GITHUB_TOKEN in GitHub Actions)"
            )
        } else {
            anyhow!(
                "unauthenticated: {login}. You need to login to the {0} registry with the command: \
                 `docker login {0}` (or `podman login {0}`)",
                self.registry
            )
        }
    }

    fn transport_failure(&self, error: reqwest::Error) -> Failure {
        let text = error_chain(&error);
        let lower = text.to_lowercase();
        if lower.contains("dns error")
            || lower.contains("failed to lookup address")
            || lower.contains("name or service not known")
        {
            return Failure::fatal(anyhow!(
                "cannot resolve the registry host {}: check the image name ({text})",
                self.registry
            ));
        }
        if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
            return Failure::fatal(anyhow!(
                "TLS connection to {} failed ({text}); for a plain-HTTP registry pass --insecure-registry {}",
                self.registry, self.registry
            ));
        }
        Failure::transient(anyhow!("connection to {} failed: {text}", self.registry))
    }

    /// Runs `op` until it succeeds, fails fatally, or the attempts run out.
    fn with_retries<T>(&self, what: &str, mut op: impl FnMut() -> Result<T, Failure>) -> Result<T> {
        let mut delay = self.retry.first_delay;
        for attempt in 1..=self.retry.attempts {
            match op() {
                Ok(value) => return Ok(value),
                Err(failure) if !failure.retry || attempt == self.retry.attempts => {
                    if failure.retry {
                        return Err(failure.error.context(format!(
                            "{what} failed after {} attempts",
                            self.retry.attempts
                        )));
                    }
                    return Err(failure.error);
                }
                Err(failure) => {
                    let jitter =
                        Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 2));
                    let wait = failure
                        .retry_after
                        .unwrap_or(delay + jitter)
                        .min(self.retry.max_delay);
                    eprintln!(
                        "{what}: {:#}; retrying in {:.1} s",
                        failure.error,
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                    delay = (delay * 2).min(self.retry.max_delay);
                }
            }
        }
        unreachable!("attempts is at least one")
    }

    fn push_scopes(repository: &str, mount_from: Option<&str>) -> Vec<String> {
        let mut scopes = vec![format!("repository:{repository}:pull,push")];
        if let Some(from) = mount_from {
            scopes.push(format!("repository:{from}:pull"));
        }
        scopes
    }

    /// Whether the repository has the blob.
    pub fn has_blob(&self, repository: &str, digest: &str, scopes: &[String]) -> Result<bool> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        self.with_retries(&format!("checking blob {}", short(digest)), || {
            let response = self.send(scopes, &|c| Ok(c.head(url.clone())))?;
            match response.status() {
                s if s.is_success() => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                s => Err(self.response_failure(s, response, repository)),
            }
        })
    }

    /// Pushes one blob from `path`, skipping it when present and mounting it
    /// from `mount_from` (another repository of this registry) when possible.
    /// `chunk_size` forces chunked uploads of that size.
    pub fn push_blob(
        &self,
        blob: &BlobUpload,
        mount_from: Option<&str>,
        chunk_size: Option<u64>,
        progress: &ProgressBar,
    ) -> Result<BlobOutcome> {
        let (repository, digest) = (blob.repository, blob.digest);
        let mount_from = mount_from.filter(|from| *from != repository);
        let scopes = Self::push_scopes(repository, mount_from);
        if self.has_blob(repository, digest, &scopes)? {
            return Ok(BlobOutcome::Existed);
        }
        self.with_retries(&format!("uploading blob {}", short(digest)), || {
            let location = match mount_from {
                Some(from) => match self.start_upload(repository, Some((digest, from)), &scopes)? {
                    UploadStart::Mounted => return Ok(BlobOutcome::Mounted),
                    UploadStart::Session(session) => session,
                },
                None => match self.start_upload(repository, None, &scopes)? {
                    UploadStart::Session(session) => session,
                    UploadStart::Mounted => return Ok(BlobOutcome::Mounted),
                },
            };
            let result = match chunk_size {
                Some(chunk) => self.upload_chunked(blob, location, chunk, &scopes, progress),
                None => self.upload_monolithic(blob, &location.url, &scopes, progress),
            };
            match result {
                Ok(()) => Ok(BlobOutcome::Uploaded { bytes: blob.size }),
                // Before calling a commit failed, ask whether it landed anyway.
                Err(failure) => match self.has_blob(repository, digest, &scopes) {
                    Ok(true) => Ok(BlobOutcome::Uploaded { bytes: blob.size }),
                    _ => Err(failure),
                },
            }
        })
    }

    fn start_upload(
        &self,
        repository: &str,
        mount: Option<(&str, &str)>,
        scopes: &[String],
    ) -> Result<UploadStart, Failure> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        if let Some((digest, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from);
        }
        let response = self.send(scopes, &|c| {
            Ok(c.post(url.clone()).header(CONTENT_LENGTH, 0))
        })?;
        match response.status() {
            StatusCode::CREATED if mount.is_some() => Ok(UploadStart::Mounted),
            StatusCode::ACCEPTED => {
                let url = self.location(&response)?;
                let min_chunk = response
                    .headers()
                    .get("OCI-Chunk-Min-Length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                Ok(UploadStart::Session(UploadSession { url, min_chunk }))
            }
            s => Err(self.response_failure(s, response, repository)),
        }
    }

    fn location(&self, response: &Response) -> Result<Url, Failure> {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Failure::transient(anyhow!(
                    "{} started an upload without a Location",
                    self.registry
                ))
            })?;
        response.url().join(location).map_err(|_| {
            Failure::fatal(anyhow!("{} sent an invalid upload Location", self.registry))
        })
    }

    fn upload_monolithic(
        &self,
        blob: &BlobUpload,
        location: &Url,
        scopes: &[String],
        progress: &ProgressBar,
    ) -> Result<(), Failure> {
        let (repository, digest, size, path) = (blob.repository, blob.digest, blob.size, blob.path);
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let response = self.send(scopes, &|c| {
            let file =
                File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            progress.set_position(0);
            // Streamed from the store: memory does not grow with the blob.
            Ok(c.put(url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(Body::sized(progress.wrap_read(file), size)))
        })?;
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => {
                progress.set_position(size);
                Ok(())
            }
            s => Err(self.response_failure(s, response, repository)),
        }
    }

    fn upload_chunked(
        &self,
        blob: &BlobUpload,
        session: UploadSession,
        chunk: u64,
        scopes: &[String],
        progress: &ProgressBar,
    ) -> Result<(), Failure> {
        let (repository, digest, size, path) = (blob.repository, blob.digest, blob.size, blob.path);
        let mut chunk = chunk.max(session.min_chunk.unwrap_or(1)).max(1);
        if self.registry == "ghcr.io" {
            chunk = chunk.min(GHCR_MAX_CHUNK);
        }
        let mut file =
            File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut location = session.url;
        let mut offset = 0u64;
        let mut resumes = 0;
        while offset < size {
            let len = chunk.min(size - offset);
            let mut buf = vec![0u8; len as usize];
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| Failure::fatal(e.into()))?;
            file.read_exact(&mut buf)
                .map_err(|e| Failure::fatal(e.into()))?;
            let range = format!("{}-{}", offset, offset + len - 1);
            let sent = self.send(scopes, &|c| {
                Ok(c.request(Method::PATCH, location.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("Content-Range", range.clone())
                    .header(CONTENT_LENGTH, len)
                    .body(buf.clone()))
            });
            match sent {
                Ok(response) if response.status() == StatusCode::ACCEPTED => {
                    location = self.location(&response)?;
                    offset = match range_end(response.headers()) {
                        Some(end) => end + 1,
                        None => offset + len,
                    };
                    progress.set_position(offset.min(size));
                }
                // The connection dropped: the session may still be good, so
                // ask it how far it got and go on from there, a bounded
                // number of times. A PATCH the registry answered with an
                // error is not replayed: the caller starts a new session.
                Err(failure) if failure.retry && resumes < self.retry.attempts => {
                    resumes += 1;
                    std::thread::sleep(self.retry.first_delay);
                    match self.upload_status(&location, scopes) {
                        Some((url, end)) => {
                            eprintln!(
                                "uploading blob {}: connection lost, resuming at byte {end}",
                                short(digest)
                            );
                            location = url;
                            offset = end;
                        }
                        None => return Err(failure),
                    }
                }
                Ok(response) => {
                    let status = response.status();
                    return Err(self.response_failure(status, response, repository));
                }
                Err(failure) => return Err(failure),
            }
        }
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let response = self.send(scopes, &|c| {
            Ok(c.put(url.clone()).header(CONTENT_LENGTH, 0))
        })?;
        match response.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            s => Err(self.response_failure(s, response, repository)),
        }
    }

    /// The upload session's URL and the offset it has reached.
    fn upload_status(&self, location: &Url, scopes: &[String]) -> Option<(Url, u64)> {
        let response = self.send(scopes, &|c| Ok(c.get(location.clone()))).ok()?;
        if response.status() != StatusCode::NO_CONTENT {
            return None;
        }
        let url = self
            .location(&response)
            .unwrap_or_else(|_| location.clone());
        // distribution answers `0-0` both for an empty session and for one
        // holding a single byte; taking it as empty is safe (a wrong guess
        // gets a 416, and the caller starts a new session).
        let end = range_end(response.headers()).map_or(0, |e| if e == 0 { 0 } else { e + 1 });
        Some((url, end))
    }

    /// PUTs a manifest's exact bytes under `reference` (a tag or a digest).
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let scopes = Self::push_scopes(repository, None);
        self.with_retries("pushing the manifest", || {
            let response = self.send(&scopes, &|c| {
                Ok(c.put(url.clone())
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec()))
            })?;
            match response.status() {
                StatusCode::CREATED | StatusCode::OK | StatusCode::ACCEPTED => {
                    if let Some(returned) = response
                        .headers()
                        .get("Docker-Content-Digest")
                        .and_then(|v| v.to_str().ok())
                    {
                        if returned != digest {
                            return Err(Failure::fatal(anyhow!(
                                "{} stored the manifest as {returned}, not {digest}",
                                self.registry
                            )));
                        }
                    }
                    Ok(())
                }
                s => Err(self.response_failure(s, response, repository)),
            }
        })
    }

    /// Fetches a manifest (or index) and verifies its digest: against the
    /// digest asked for, else the one the registry reports.
    pub fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, String)> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let scopes = vec![format!("repository:{repository}:pull")];
        let (bytes, media_type, reported) = self.with_retries("fetching the manifest", || {
            let response = self.send(&scopes, &|c| {
                Ok(c.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT))
            })?;
            if !response.status().is_success() {
                let s = response.status();
                return Err(self.response_failure(s, response, repository));
            }
            let media_type = header(response.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
            let reported = header(response.headers(), "Docker-Content-Digest");
            let bytes = response
                .bytes()
                .map_err(|e| self.transport_failure(e))?
                .to_vec();
            Ok((bytes, media_type, reported))
        })?;
        let actual = crate::image::store::sha256_digest(&bytes);
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            reported
        };
        if let Some(expected) = expected {
            if expected != actual {
                bail!(
                    "the manifest {repository}@{expected} from {} hashes to {actual}: refusing it",
                    self.registry
                );
            }
        }
        Ok((bytes, media_type, actual))
    }

    /// Streams a blob into `sink`, returning its byte count; the caller
    /// verifies the digest.
    pub fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        sink: &mut dyn FnMut(&mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let scopes = vec![format!("repository:{repository}:pull")];
        let mut sink = Some(sink);
        self.with_retries(&format!("fetching blob {}", short(digest)), || {
            let mut response = self.send(&scopes, &|c| Ok(c.get(url.clone())))?;
            if !response.status().is_success() {
                let s = response.status();
                return Err(self.response_failure(s, response, repository));
            }
            let sink = sink.as_mut().expect("sink present");
            sink(&mut response).map_err(Failure::transient)
        })?;
        let _ = sink.take();
        Ok(())
    }

    fn response_failure(
        &self,
        status: StatusCode,
        response: Response,
        repository: &str,
    ) -> Failure {
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().unwrap_or_default();
        let (code, message) = error_code(&body);
        let image = format!("{}/{repository}", self.registry);
        let error = match (status, code.as_deref()) {
            (StatusCode::UNAUTHORIZED, _) | (_, Some("UNAUTHORIZED")) => self.unauthorized_error(),
            (StatusCode::FORBIDDEN, _) | (_, Some("DENIED")) => {
                anyhow!("denied: Your current account does not have permission to push to {image}")
            }
            (_, Some("NAME_INVALID")) => anyhow!(
                "{image} is not a valid repository name for {}: {message}",
                self.registry
            ),
            (_, Some(code)) => anyhow!("{} answered {status} {code}: {message}", self.registry),
            _ => anyhow!("{} answered {status}", self.registry),
        };
        status_failure(status, retry_after, error)
    }
}

/// A blob to push: where it goes and where its bytes are.
pub struct BlobUpload<'a> {
    pub repository: &'a str,
    pub digest: &'a str,
    pub size: u64,
    pub path: &'a Path,
}

enum UploadStart {
    Mounted,
    Session(UploadSession),
}

struct UploadSession {
    url: Url,
    min_chunk: Option<u64>,
}

fn status_failure(
    status: StatusCode,
    retry_after: Option<Duration>,
    error: anyhow::Error,
) -> Failure {
    let retry = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    Failure {
        error,
        retry,
        retry_after: if retry { retry_after } else { None },
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The last byte offset in a `Range: 0-N` header.
fn range_end(headers: &HeaderMap) -> Option<u64> {
    let value = header(headers, "Range")?;
    let (_, end) = value.trim().trim_start_matches("bytes=").split_once('-')?;
    end.parse().ok()
}

fn basic(username: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// The text of an error and its sources, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The first `errors[]` entry of a distribution error body.
fn error_code(body: &str) -> (Option<String>, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let first = parsed
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(|e| e.get(0));
    let code = first
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_str())
        .map(String::from);
    let message = first
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    (code, message)
}

/// Parses `WWW-Authenticate: Bearer realm="…",service="…"` or `Basic …`.
/// Public for tests/fuzz.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params;
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted-string (RFC 9110): `\` takes the next character as is.
            let mut value = String::new();
            let mut end = quoted.len();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, next)| next)),
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            // A token; the list's optional white space before `,` is not part of it.
            (after[..end].trim_end().to_string(), &after[end..])
        };
        match key.as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            _ => {}
        }
        rest = remainder.trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        match parse_challenge(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull""#,
        ) {
            Some(Challenge::Bearer { realm, service }) => {
                assert_eq!(realm, "https://ghcr.io/token");
                assert_eq!(service.as_deref(), Some("ghcr.io"));
            }
            _ => panic!("not a bearer challenge"),
        }
        assert!(matches!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        ));
        assert!(parse_challenge("Negotiate").is_none());
    }

    #[test]
    fn quoted_challenge_values_keep_escaped_quotes() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://r.test/t\"x\\",service="a\"b, c""#),
            Some(Challenge::Bearer {
                realm: r#"https://r.test/t"x\"#.into(),
                service: Some(r#"a"b, c"#.into()),
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=https://r.test/t , service=s"),
            Some(Challenge::Bearer {
                realm: "https://r.test/t".into(),
                service: Some("s".into()),
            })
        );
        // An escape inside the value does not end it early.
        assert_eq!(
            parse_challenge(r#"Bearer realm="a\",realm=\"b",service=s"#),
            Some(Challenge::Bearer {
                realm: r#"a",realm="b"#.into(),
                service: Some("s".into()),
            })
        );
    }

    #[test]
    fn reads_error_bodies() {
        let (code, message) = error_code(
            r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
        );
        assert_eq!(code.as_deref(), Some("DENIED"));
        assert!(message.contains("denied"));
    }
}
