//! One registry, spoken to over the OCI distribution API: authentication
//! (Basic, and the Bearer token challenge with tokens cached per scope),
//! blob and manifest transfers, the origin checks for our Authorization,
//! and the chunked upload's resume. Timeouts, body bounds and retries are
//! the policy of `crate::http`; errors are [`RegistryError`]s.
//!
//! Written on reqwest rather than oci-client because pushing dependably needs
//! what that crate lacks (retries, the mount source's pull scope, 202 on
//! mount, exact manifest bytes, chunked resume).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;

use indicatif::ProgressBar;
use reqwest::blocking::{Body, Client, Request, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};

use super::credentials::Credential;
use super::error::RegistryError;
use super::reference::Reference;
use crate::http::{self, redact_url, BodyError, DeclaredSize, Patience, RetryPolicy, Stop};

/// A failure of one attempt, and whether another may help.
type Failure = http::Failure<RegistryError>;

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Self {
        Failure::fatal(error)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::fatal(RegistryError::Local(error))
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

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
    /// For uploads, and (bounded per request by `http::small`) requests
    /// with small answers.
    http: Client,
    /// For blob downloads: a body that stalls fails (and is tried again),
    /// however long the blob.
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
    ) -> anyhow::Result<RegistryClient> {
        use anyhow::Context as _;
        let base = Url::parse(&format!(
            "{}://{}/",
            reference.scheme(insecure),
            reference.api_host()
        ))
        .with_context(|| format!("{} is not a valid registry host", reference.registry))?;
        // Blob downloads are redirected to CDNs: followed (the policy's
        // redirects: never from https to plain HTTP).
        let http = http::client(Patience::Upload)?;
        let downloads = http::client(Patience::Download)?;
        let token_http = http::client_with(
            Patience::Small,
            reqwest::redirect::Policy::custom(|attempt| {
                let same_origin = attempt
                    .previous()
                    .last()
                    .is_some_and(|u| origin_of(u) == origin_of(attempt.url()));
                if attempt.previous().len() > http::MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if !same_origin {
                    let to = redact_url(attempt.url());
                    attempt.error(format!(
                        "the token service redirected to another origin ({to}): not followed"
                    ))
                } else {
                    attempt.follow()
                }
            }),
        )?;
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
        self.base.join(path).map_err(|e| RegistryError::Refused {
            registry: self.registry.clone(),
            message: format!("{path} does not make a URL on {}: {e}", self.registry),
        })
    }

    fn refused(&self, message: String) -> RegistryError {
        RegistryError::Refused {
            registry: self.registry.clone(),
            message,
        }
    }

    fn protocol(&self, message: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            message,
        }
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
            return Err(Failure::fatal(self.refused(format!(
                "{} sent {what} {}, which is not https like the registry: refusing it \
                 (credentials and image data go to an https registry over https only)",
                self.registry,
                redact_url(url)
            ))));
        }
        Ok(())
    }

    /// Learns the challenge the registry's own origin sent. A token realm
    /// on plain HTTP for an https registry is refused: the credentials
    /// would go over the network in the clear.
    fn learn_challenge(&self, challenge: Challenge) -> Result<(), Failure> {
        if let Challenge::Bearer { realm, .. } = &challenge {
            let url = Url::parse(realm).map_err(|_| {
                Failure::fatal(self.protocol(format!(
                    "{} named an invalid token realm {:?}",
                    self.registry,
                    http::redact(realm)
                )))
            })?;
            let shown = redact_url(&url);
            if self.base.scheme() == "https" && url.scheme() != "https" {
                return Err(Failure::fatal(self.refused(format!(
                    "{} named the token realm {shown}, which is not https: refusing to send \
                     credentials there (the registry's auth configuration must name an https realm)",
                    self.registry
                ))));
            }
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Failure::fatal(self.refused(format!(
                    "{} named the token realm {shown}, which is not an HTTP URL",
                    self.registry
                ))));
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
        build: &dyn Fn(&Client) -> anyhow::Result<RequestBuilder>,
    ) -> Result<Response, Failure> {
        for round in 0..2 {
            // `build` may take another of our clients (downloads do).
            let (client, request) = build(&self.http)?.build_split();
            let mut request: Request = request.map_err(|e| {
                Failure::fatal(RegistryError::Local(anyhow::anyhow!(
                    "cannot make a request: {}",
                    http::describe(&e)
                )))
            })?;
            let url = request.url().clone();
            self.check_scheme(&url, "a request to")?;
            if self.may_authorize(&url) {
                if let Some(header) = self.auth_header(scopes)? {
                    let value = header.parse().map_err(|_| {
                        Failure::fatal(self.protocol(format!(
                            "the token from {} is not a valid header value",
                            self.registry
                        )))
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
            Failure::fatal(self.protocol(format!("{} sent an invalid token realm", self.registry)))
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
        .timeout(http::SMALL_REQUEST_TIMEOUT)
        .send()
        .map_err(|e| self.transport_failure(e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Failure::fatal(self.unauthorized_error()));
        }
        if !status.is_success() {
            let error = RegistryError::Status {
                registry: self.registry.clone(),
                status: status.as_u16(),
                code: None,
                message: format!("the token service of {} answered {status}", self.registry),
            };
            return Err(Failure::answered(error, status, &HeaderMap::new()));
        }
        let what = format!(
            "the answer of the token service of {} ({})",
            self.registry,
            http::redact(realm)
        );
        let bytes = self.read_answer(response, &what)?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
            Failure::fatal(self.protocol(format!(
                "the token service of {} sent no JSON",
                self.registry
            )))
        })?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| {
                Failure::fatal(self.protocol(format!(
                    "the token service of {} sent no token",
                    self.registry
                )))
            })
    }

    /// The registry wants credentials: the message naming it and how to log in.
    pub fn unauthorized_error(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            credentials_sent: self.credential.is_some(),
        }
    }

    fn transport_failure(&self, error: reqwest::Error) -> Failure {
        let kind = http::Transport::of(&error);
        let detail = http::describe(&error);
        if kind == http::Transport::Redirect {
            // Our policy refused it (to plain HTTP, or too many): trying
            // again would be refused again.
            return Failure::fatal(self.refused(format!(
                "{} sent a redirect we do not follow: {detail}",
                self.registry
            )));
        }
        let registry = self.registry.clone();
        Failure::transport(
            RegistryError::Transport {
                registry,
                kind,
                detail,
            },
            &error,
        )
    }

    /// A manifest or token answer (`what`, for messages), read whole up to
    /// [`MAX_ANSWER`].
    fn read_answer(&self, response: Response, what: &str) -> Result<Vec<u8>, Failure> {
        http::read_bounded(response, MAX_ANSWER, what).map_err(|e| match e {
            BodyError::TooLarge { what, cap } => Failure::fatal(RegistryError::TooLarge {
                what,
                limit: cap,
                declared: false,
            }),
            broken @ BodyError::Broken { .. } => Failure::transient(RegistryError::Transport {
                registry: self.registry.clone(),
                kind: http::Transport::Broken,
                detail: broken.to_string(),
            }),
        })
    }

    /// Runs `op` under the retry policy; `what` names it in messages.
    fn with_retries<T>(&self, what: &str, op: impl FnMut() -> Result<T, Failure>) -> Result<T> {
        self.retry.run(what, op).map_err(|stop| match stop {
            Stop::Fatal(error) => error,
            Stop::Exhausted { last, attempts } => RegistryError::Exhausted {
                what: what.to_string(),
                attempts,
                last: Box::new(last),
            },
        })
    }

    fn push_scopes(repository: &str, mount_from: Option<&str>) -> Vec<String> {
        let mut scopes = vec![format!("repository:{repository}:pull,push")];
        if let Some(from) = mount_from {
            scopes.push(format!("repository:{from}:pull"));
        }
        scopes
    }

    /// Whether the repository has the blob: `false` only for a 404; a
    /// refusal (401, 403) or any other failure is an error.
    pub fn has_blob(&self, repository: &str, digest: &str, scopes: &[String]) -> Result<bool> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let what = format!("checking blob {}", short(digest));
        self.exists(&what, repository, &url, None, scopes)
    }

    /// Whether the repository has the manifest `digest` (HEAD): `false`
    /// only for a 404, as [`RegistryClient::has_blob`]. Asked with the push
    /// scopes, so the token is the one a push uses next.
    pub fn has_manifest(&self, repository: &str, digest: &str) -> Result<bool> {
        let url = self.url(&format!("v2/{repository}/manifests/{digest}"))?;
        let scopes = Self::push_scopes(repository, None);
        let accept = Some(MANIFEST_ACCEPT);
        self.exists("checking the manifest", repository, &url, accept, &scopes)
    }

    /// A HEAD: `true` for a success, `false` for a 404, else the error.
    fn exists(
        &self,
        what: &str,
        repository: &str,
        url: &Url,
        accept: Option<&str>,
        scopes: &[String],
    ) -> Result<bool> {
        let result = self.with_retries(what, || {
            let response = self.send(scopes, &|c| {
                let head = http::small(c.head(url.clone()));
                Ok(match accept {
                    Some(accept) => head.header(ACCEPT, accept),
                    None => head,
                })
            })?;
            match response.status() {
                s if s.is_success() => Ok(true),
                s => Err(self.response_failure(s, response, repository)),
            }
        });
        match result {
            Err(error) if error.is_not_found() => Ok(false),
            other => other,
        }
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
            Ok(http::small(c.post(url.clone()).header(CONTENT_LENGTH, 0)))
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
                Failure::transient(self.protocol(format!(
                    "{} started an upload without a Location",
                    self.registry
                )))
            })?;
        let url = response.url().join(location).map_err(|_| {
            Failure::fatal(
                self.protocol(format!("{} sent an invalid upload Location", self.registry)),
            )
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
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| Failure::fatal(RegistryError::Local(e.into())))?;
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
                        return Err(Failure::fatal(self.protocol(format!(
                            "{} answered that it holds {reached} bytes of blob {} after we sent \
                             {}: refusing the upload",
                            self.registry,
                            short(digest),
                            offset + len
                        ))));
                    }
                    if reached <= confirmed {
                        stalled += 1;
                        if stalled >= MAX_STALLED_CHUNKS {
                            return Err(Failure::fatal(self.protocol(format!(
                                "{} did not move the chunked upload of blob {} past byte \
                                 {confirmed} in {stalled} answers (its Range does not advance): \
                                 giving up; push again without --chunk-size (one PUT per blob)",
                                self.registry,
                                short(digest)
                            ))));
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
                Err(failure) if failure.retries() && resumes < self.retry.attempts => {
                    resumes += 1;
                    std::thread::sleep(self.retry.wait(resumes, None));
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
            .send(scopes, &|c| Ok(http::small(c.get(location.clone()))))
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
        self.put_manifest_with_subject(repository, reference, media_type, bytes, digest)
            .map(drop)
    }

    /// [`RegistryClient::put_manifest`], returning the `OCI-Subject`
    /// header of the answer: a registry with the OCI 1.1 referrers API
    /// names the manifest's `subject` there; one without it says nothing.
    pub fn put_manifest_with_subject(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Option<String>> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let scopes = Self::push_scopes(repository, None);
        self.with_retries("pushing the manifest", || {
            let response = self.send(&scopes, &|c| {
                Ok(http::small(c.put(url.clone()))
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
                            return Err(Failure::fatal(self.protocol(format!(
                                "{} stored the manifest as {returned}, not {digest}",
                                self.registry
                            ))));
                        }
                    }
                    Ok(header(response.headers(), "OCI-Subject"))
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
                Ok(http::small(c.get(url.clone())).header(ACCEPT, MANIFEST_ACCEPT))
            })?;
            if !response.status().is_success() {
                let s = response.status();
                return Err(self.response_failure(s, response, repository));
            }
            let media_type = header(response.headers(), CONTENT_TYPE.as_str()).unwrap_or_default();
            let reported = header(response.headers(), "Docker-Content-Digest");
            let what = format!("the manifest {}/{repository}:{reference}", self.registry);
            let bytes = self.read_answer(response, &what)?;
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
                return Err(self.protocol(format!(
                    "the manifest {repository}@{expected} from {} hashes to {actual}: refusing it",
                    self.registry
                )));
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
        sink: &mut dyn FnMut(&mut dyn Read) -> anyhow::Result<()>,
    ) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let scopes = vec![format!("repository:{repository}:pull")];
        let too_long = || {
            Failure::fatal(RegistryError::TooLarge {
                what: format!("blob {digest} from {}/{repository}", self.registry),
                limit: size,
                declared: true,
            })
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
            let mut body = DeclaredSize::new(response, size);
            match sink(&mut body) {
                Ok(()) => Ok(()),
                Err(_) if body.overran() => Err(too_long()),
                // The connection broke, or the bytes did not verify (a
                // CDN's bad copy): another attempt may do better.
                Err(e) => Err(Failure::transient(RegistryError::Local(e))),
            }
        })
    }

    /// The error an answer we cannot use is, typed by its status (and the
    /// distribution error code of its body), tried again or not by the
    /// policy (`http::Failure::answered`).
    fn response_failure(
        &self,
        status: StatusCode,
        response: Response,
        repository: &str,
    ) -> Failure {
        let headers = response.headers().clone();
        let elsewhere = origin_of(response.url()) != origin_of(&self.base);
        if status == StatusCode::UNAUTHORIZED && elsewhere {
            let url = response.url();
            return Failure::fatal(self.refused(format!(
                "{} (where {} sent the upload) asks for credentials: ours are for {} \
                 only and are not sent to another host; the registry must take uploads at its \
                 own address",
                url.origin().ascii_serialization(),
                self.registry,
                self.registry
            )));
        }
        // The first error is all we use: an endless body is cut short.
        let body = http::read_prefix(response, MAX_ERROR_BODY);
        let (code, message) = error_code(&body);
        let image = format!("{}/{repository}", self.registry);
        let registry = self.registry.clone();
        let error = match (status, code.as_deref()) {
            (StatusCode::UNAUTHORIZED, _) | (_, Some("UNAUTHORIZED")) => self.unauthorized_error(),
            (StatusCode::FORBIDDEN, _) | (_, Some("DENIED")) => {
                RegistryError::Denied { registry, image }
            }
            (_, Some("NAME_INVALID")) => RegistryError::InvalidName {
                registry,
                image,
                message,
            },
            (StatusCode::NOT_FOUND, _) => RegistryError::NotFound {
                message: answered(&registry, status, code.as_deref(), &message),
                registry,
            },
            _ => RegistryError::Status {
                message: answered(&registry, status, code.as_deref(), &message),
                registry,
                status: status.as_u16(),
                code,
            },
        };
        Failure::answered(error, status, &headers)
    }
}

/// `REGISTRY answered STATUS [CODE: message]`.
fn answered(registry: &str, status: StatusCode, code: Option<&str>, message: &str) -> String {
    match code {
        Some(code) => format!("{registry} answered {status} {code}: {message}"),
        None => format!("{registry} answered {status}"),
    }
}

/// A blob to push: where it goes and how to read its bytes (from the
/// store, checked against the digest as they stream: see
/// `BlobStore::open_blob`).
pub struct BlobUpload<'a> {
    pub repository: &'a str,
    pub digest: &'a str,
    pub size: u64,
    pub open: &'a (dyn Fn() -> anyhow::Result<crate::image::store::VerifiedBlob> + Sync),
}

enum UploadStart {
    Mounted,
    Session(UploadSession),
}

struct UploadSession {
    url: Url,
    min_chunk: Option<u64>,
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
