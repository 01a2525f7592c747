//! One registry, spoken to over the OCI distribution API: authentication
//! (Basic, and the Bearer token challenge with tokens cached per scope),
//! bounded retries with backoff and jitter, blob and manifest transfers.
//!
//! Written on reqwest rather than oci-client because pushing dependably needs
//! what that crate lacks (retries, the mount source's pull scope, 202 on
//! mount, exact manifest bytes, chunked resume).

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use reqwest::blocking::{Body, Client, Request, RequestBuilder, Response};
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

/// The most we read of a manifest, an index or a token answer: real ones
/// are a few KiB; anything past this is refused.
pub const MAX_ANSWER: u64 = 4 << 20;
/// The most we read of an error body: only its first error is used.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Answers in a row to a chunked upload that do not move its `Range` on
/// before we give up on the session.
const MAX_STALLED_CHUNKS: u32 = 3;
/// Requests with small answers (manifests, tokens, checks, upload starts)
/// must finish within this; blob transfers have the client's longer bound.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a blob download may wait for its answer or for the next bytes.
const DOWNLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

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

/// A URL's origin: scheme, host and port (the port a scheme implies when
/// none is written).
type Origin = (String, String, u16);

fn origin_of(url: &Url) -> Origin {
    (
        url.scheme().to_string(),
        url.host_str().unwrap_or_default().to_ascii_lowercase(),
        url.port_or_known_default().unwrap_or(0),
    )
}

pub struct RegistryClient {
    http: Client,
    /// For blob downloads: a body that stops for [`DOWNLOAD_STALL_TIMEOUT`]
    /// fails (and is tried again), however long the blob.
    downloads: Client,
    /// For token services: redirects only within the realm's origin, so a
    /// credential in a token request (a refresh token in a POSTed form, which
    /// a 307 would carry along) cannot be sent on to another host.
    token_http: Client,
    base: Url,
    /// The registry as users write it (`ghcr.io`), for messages.
    pub registry: String,
    credential: Option<Credential>,
    /// The last challenge the registry's own origin sent. Only it decides
    /// where a token is fetched from and what Basic credentials answer.
    challenge: Mutex<Option<Challenge>>,
    /// Other origins (an upload `Location` on another host) that answered
    /// with exactly the registry's Bearer challenge: they get its tokens.
    challenged: Mutex<Vec<Origin>>,
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
        // The blocking client's timeout bounds the wait for an answer's head
        // (with the request's body, for uploads) and each read of its body.
        let builder = |timeout: Duration| {
            Client::builder()
                .user_agent(concat!("dallinger-oci/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(15))
                .timeout(timeout)
                .tcp_keepalive(Duration::from_secs(30))
        };
        // Blob downloads are redirected to CDNs: followed, but never from
        // https to plain HTTP. reqwest drops Authorization when a redirect
        // leaves the origin.
        let registry_redirects = || {
            reqwest::redirect::Policy::custom(|attempt| {
                let from_https = attempt.previous().iter().any(|u| u.scheme() == "https");
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if from_https && attempt.url().scheme() != "https" {
                    let to = attempt.url().to_string();
                    attempt.error(format!("refusing a redirect from https to {to}"))
                } else {
                    attempt.follow()
                }
            })
        };
        // Uploads send a whole blob before the answer: a generous bound, so
        // a registry that stops answering cannot hang a CI job forever.
        // Requests with small answers have a shorter, total one of their own.
        let http = builder(Duration::from_secs(1800))
            .redirect(registry_redirects())
            .build()?;
        let downloads = builder(DOWNLOAD_STALL_TIMEOUT)
            .redirect(registry_redirects())
            .build()?;
        let token_http = builder(SMALL_REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same_origin = attempt
                    .previous()
                    .last()
                    .is_some_and(|u| origin_of(u) == origin_of(attempt.url()));
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if !same_origin {
                    let to = attempt.url().to_string();
                    attempt.error(format!(
                        "the token service redirected to another origin ({to}): not followed"
                    ))
                } else {
                    attempt.follow()
                }
            }))
            .build()?;
        Ok(RegistryClient {
            http,
            downloads,
            token_http,
            base,
            registry: reference.registry.clone(),
            credential,
            challenge: Mutex::new(None),
            challenged: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            retry,
        })
    }

    fn url(&self, path: &str) -> Result<Url> {
        Ok(self.base.join(path)?)
    }

    /// Whether a request to `url` may carry our Authorization: only to the
    /// registry's own origin, or to an origin that answered with the
    /// registry's own Bearer challenge (and then only its tokens).
    fn may_authorize(&self, url: &Url) -> bool {
        let origin = origin_of(url);
        if origin == origin_of(&self.base) {
            return true;
        }
        matches!(
            *self.challenge.lock().unwrap(),
            Some(Challenge::Bearer { .. })
        ) && self.challenged.lock().unwrap().contains(&origin)
    }

    /// Refuses a URL that would take a request from an https registry to
    /// plain HTTP (or to anything but HTTP).
    fn check_scheme(&self, url: &Url, what: &str) -> Result<(), Failure> {
        let downgrade = self.base.scheme() == "https" && url.scheme() != "https";
        if downgrade || !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::fatal(anyhow!(
                "{} sent {what} {url}, which is not https like the registry: refusing it \
                 (credentials and image data go to an https registry over https only)",
                self.registry
            )));
        }
        Ok(())
    }

    /// Learns the challenge the registry's own origin sent. A token realm
    /// on plain HTTP for an https registry is refused: the credentials
    /// would go over the network in the clear.
    fn learn_challenge(&self, challenge: Challenge) -> Result<(), Failure> {
        if let Challenge::Bearer { realm, .. } = &challenge {
            let url = Url::parse(realm).map_err(|_| {
                Failure::fatal(anyhow!(
                    "{} named an invalid token realm {realm:?}",
                    self.registry
                ))
            })?;
            if self.base.scheme() == "https" && url.scheme() != "https" {
                return Err(Failure::fatal(anyhow!(
                    "{} named the token realm {realm}, which is not https: refusing to send \
                     credentials there (the registry's auth configuration must name an https realm)",
                    self.registry
                )));
            }
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Failure::fatal(anyhow!(
                    "{} named the token realm {realm}, which is not an HTTP URL",
                    self.registry
                )));
            }
        }
        let mut current = self.challenge.lock().unwrap();
        if current.as_ref() != Some(&challenge) {
            // Tokens from another realm, and origins that matched the old
            // challenge, are not for this one.
            self.tokens.lock().unwrap().clear();
            self.challenged.lock().unwrap().clear();
        }
        *current = Some(challenge);
        Ok(())
    }

    /// Sends a request, answering an auth challenge once. `build` makes the
    /// request afresh for each try (bodies cannot be replayed).
    fn send(
        &self,
        scopes: &[String],
        build: &dyn Fn(&Client) -> Result<RequestBuilder>,
    ) -> Result<Response, Failure> {
        for round in 0..2 {
            // `build` may take another of our clients (downloads do).
            let (client, request) = build(&self.http)?.build_split();
            let mut request: Request =
                request.map_err(|e| Failure::fatal(anyhow!("cannot make a request: {e}")))?;
            let url = request.url().clone();
            self.check_scheme(&url, "a request to")?;
            if self.may_authorize(&url) {
                if let Some(header) = self.auth_header(scopes)? {
                    let value = header.parse().map_err(|_| {
                        Failure::fatal(anyhow!(
                            "the token from {} is not a valid header value",
                            self.registry
                        ))
                    })?;
                    request.headers_mut().insert(AUTHORIZATION, value);
                }
            }
            let response = client
                .execute(request)
                .map_err(|e| self.transport_failure(e))?;
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
            if origin_of(&url) == origin_of(&self.base) {
                self.learn_challenge(challenge)?;
            } else if matches!(challenge, Challenge::Bearer { .. })
                && self.challenge.lock().unwrap().as_ref() == Some(&challenge)
            {
                // Another origin asking for the registry's own tokens.
                let mut challenged = self.challenged.lock().unwrap();
                let origin = origin_of(&url);
                if !challenged.contains(&origin) {
                    challenged.push(origin);
                }
            } else {
                // Anything else another origin asks for is not answered:
                // our credentials are for the registry.
                return Ok(response);
            }
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
                self.token_http.post(url).form(&form)
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
                let mut request = self.token_http.get(url);
                if let Some(Credential::Basic { username, password }) = credential {
                    request = request.header(AUTHORIZATION, basic(username, password.expose()));
                }
                request
            }
        }
        .timeout(SMALL_REQUEST_TIMEOUT)
        .send()
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
        let what = format!(
            "the answer of the token service of {} ({realm})",
            self.registry
        );
        let bytes = read_answer(response, &what)?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
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
        if error.is_redirect() {
            // Our policy refused it (to plain HTTP, or too many): trying
            // again would be refused again.
            return Failure::fatal(anyhow!(
                "{} sent a redirect we do not follow: {text}",
                self.registry
            ));
        }
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
            let response = self.send(scopes, &|c| {
                Ok(c.head(url.clone()).timeout(SMALL_REQUEST_TIMEOUT))
            })?;
            match response.status() {
                s if s.is_success() => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                s => Err(self.response_failure(s, response, repository)),
            }
        })
    }

    /// Pushes one blob from the store, skipping it when present and mounting it
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
            Ok(c.post(url.clone())
                .header(CONTENT_LENGTH, 0)
                .timeout(SMALL_REQUEST_TIMEOUT))
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
        let url = response.url().join(location).map_err(|_| {
            Failure::fatal(anyhow!("{} sent an invalid upload Location", self.registry))
        })?;
        // Followed by hand: an https registry's upload goes on over https.
        // Another origin gets no Authorization unless it asks for the
        // registry's own token (see `send`).
        self.check_scheme(&url, "the upload Location")?;
        Ok(url)
    }

    fn upload_monolithic(
        &self,
        blob: &BlobUpload,
        location: &Url,
        scopes: &[String],
        progress: &ProgressBar,
    ) -> Result<(), Failure> {
        let (repository, digest, size) = (blob.repository, blob.digest, blob.size);
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let response = self.send(scopes, &|c| {
            let file = (blob.open)()?;
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
        let (repository, digest, size) = (blob.repository, blob.digest, blob.size);
        let mut chunk = chunk.max(session.min_chunk.unwrap_or(1)).max(1);
        if self.registry == "ghcr.io" {
            chunk = chunk.min(GHCR_MAX_CHUNK);
        }
        let mut file = (blob.open)()?;
        let mut location = session.url;
        let mut offset = 0u64;
        let mut resumes = 0;
        // Answers that did not take the upload past the furthest byte any
        // answer confirmed: a registry whose Range never advances must not
        // keep us sending the same chunk for ever.
        let mut confirmed = 0u64;
        let mut stalled = 0u32;
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
                    let reached = match range_end(response.headers()) {
                        Some(end) => end.saturating_add(1),
                        None => offset + len,
                    };
                    if reached > offset + len {
                        return Err(Failure::fatal(anyhow!(
                            "{} answered that it holds {reached} bytes of blob {} after we sent \
                             {}: refusing the upload",
                            self.registry,
                            short(digest),
                            offset + len
                        )));
                    }
                    if reached <= confirmed {
                        stalled += 1;
                        if stalled >= MAX_STALLED_CHUNKS {
                            return Err(Failure::fatal(anyhow!(
                                "{} did not move the chunked upload of blob {} past byte \
                                 {confirmed} in {stalled} answers (its Range does not advance): \
                                 giving up; push again without --chunk-size (one PUT per blob)",
                                self.registry,
                                short(digest)
                            )));
                        }
                    } else {
                        confirmed = reached;
                    }
                    offset = reached;
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
        let response = self
            .send(scopes, &|c| {
                Ok(c.get(location.clone()).timeout(SMALL_REQUEST_TIMEOUT))
            })
            .ok()?;
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
                    .timeout(SMALL_REQUEST_TIMEOUT)
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
                Ok(c.get(url.clone())
                    .header(ACCEPT, MANIFEST_ACCEPT)
                    .timeout(SMALL_REQUEST_TIMEOUT))
            })?;
            if !response.status().is_success() {
                let s = response.status();
                return Err(self.response_failure(s, response, repository));
            }
            let media_type = header(response.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
            let reported = header(response.headers(), "Docker-Content-Digest");
            let what = format!("the manifest {}/{repository}:{reference}", self.registry);
            let bytes = read_answer(response, &what)?;
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

    /// Streams a blob of `size` bytes (its descriptor's) into `sink`; the
    /// caller verifies the digest. A body longer than `size` is refused
    /// after `size + 1` bytes: `sink` never sees more than `size`.
    pub fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        sink: &mut dyn FnMut(&mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let scopes = vec![format!("repository:{repository}:pull")];
        let mut sink = Some(sink);
        let too_long = || {
            Failure::fatal(anyhow!(
                "blob {digest} from {}/{repository} is longer than the {size} bytes its \
                 descriptor gives: refusing it",
                self.registry
            ))
        };
        self.with_retries(&format!("fetching blob {}", short(digest)), || {
            let response = self.send(&scopes, &|_| Ok(self.downloads.get(url.clone())))?;
            if !response.status().is_success() {
                let s = response.status();
                return Err(self.response_failure(s, response, repository));
            }
            if response.content_length().is_some_and(|n| n > size) {
                return Err(too_long());
            }
            let overrun = Cell::new(false);
            let mut body = SizedBody {
                inner: response,
                remaining: size,
                overrun: &overrun,
            };
            let sink = sink.as_mut().expect("sink present");
            match sink(&mut body) {
                Ok(()) => Ok(()),
                Err(_) if overrun.get() => Err(too_long()),
                Err(e) => Err(Failure::transient(e)),
            }
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
        let elsewhere = origin_of(response.url()) != origin_of(&self.base);
        if status == StatusCode::UNAUTHORIZED && elsewhere {
            let url = response.url();
            return Failure::fatal(anyhow!(
                "{} (where {} sent the upload) asks for credentials: ours are for {} \
                 only and are not sent to another host; the registry must take uploads at its \
                 own address",
                url.origin().ascii_serialization(),
                self.registry,
                self.registry
            ));
        }
        // The first error is all we use: an endless body is cut short.
        let mut body = Vec::new();
        let _ = response.take(MAX_ERROR_BODY).read_to_end(&mut body);
        let (code, message) = error_code(&String::from_utf8_lossy(&body));
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

/// A blob to push: where it goes and how to read its bytes (from the
/// store, checked against the digest as they stream: see
/// `BlobStore::open_blob`).
pub struct BlobUpload<'a> {
    pub repository: &'a str,
    pub digest: &'a str,
    pub size: u64,
    pub open: &'a (dyn Fn() -> Result<crate::image::store::VerifiedBlob> + Sync),
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

/// A manifest or token answer (`what`, for messages), read whole up to
/// [`MAX_ANSWER`]: a longer one is refused after `MAX_ANSWER + 1` bytes (or
/// at once, by its Content-Length).
fn read_answer(response: Response, what: &str) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::fatal(anyhow!(
            "{what} is larger than {} MiB: refusing it",
            MAX_ANSWER >> 20
        ))
    };
    if response.content_length().is_some_and(|n| n > MAX_ANSWER) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    response
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::transient(anyhow!("reading {what} failed: {e}")))?;
    if bytes.len() as u64 > MAX_ANSWER {
        return Err(too_large());
    }
    Ok(bytes)
}

/// A blob's body, read to its descriptor's size and not a byte further: a
/// longer body is an error (noted in `overrun`), so neither memory nor the
/// store's temporary file grows with what a registry sends.
struct SizedBody<'a, R> {
    inner: R,
    remaining: u64,
    overrun: &'a Cell<bool>,
}

impl<R: Read> Read for SizedBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // At the declared end: one byte more means the body is longer.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.overrun.set(true);
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the blob is longer than its descriptor says",
                    ))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.remaining -= n as u64;
        Ok(n)
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
/// Public for tests/integration/fuzz.
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
    fn blob_bodies_are_read_to_their_size_only() {
        let read = |body: &[u8], size: u64| {
            let overrun = Cell::new(false);
            let mut reader = SizedBody {
                inner: body,
                remaining: size,
                overrun: &overrun,
            };
            let mut out = Vec::new();
            let result = reader.read_to_end(&mut out);
            (result.is_ok(), out.len(), overrun.get())
        };
        assert_eq!(read(b"abcd", 4), (true, 4, false));
        // Short: the store's digest and size check refuses it.
        assert_eq!(read(b"ab", 4), (true, 2, false));
        // Longer: an error after the declared bytes, never more of them.
        let (ok, len, overrun) = read(&[7u8; 1 << 16], 10);
        assert!(!ok && overrun && len <= 10);
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        let origin = |u: &str| origin_of(&Url::parse(u).unwrap());
        assert_eq!(
            origin("https://ghcr.io/v2/"),
            origin("https://GHCR.io:443/x")
        );
        assert_ne!(origin("https://ghcr.io/"), origin("http://ghcr.io/"));
        assert_ne!(
            origin("http://127.0.0.1:5000/"),
            origin("http://127.0.0.1:5001/")
        );
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
