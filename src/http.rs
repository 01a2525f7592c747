//! The one HTTP policy of every client we have (the registry client, the
//! package index client, the Debian archive fetcher): how clients are made
//! and how long they wait, how much of an answer is read, which failures
//! are tried again and after how long, and how URLs are shown (without
//! their secrets) in every message and log line.
//!
//! What stays with a client is what its protocol defines: the registry's
//! authentication, origin checks and chunked resume (`registry::client`),
//! what a package index's 404 means (`python::index`).

use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::redirect;
use reqwest::StatusCode;

pub use reqwest::Url;

/// Sent with every request.
pub const USER_AGENT: &str = concat!("dallinger-oci/", env!("CARGO_PKG_VERSION"));
/// How long a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The whole of a request with a small answer (a manifest, a token, an
/// index page, `InRelease`, a check) must finish within this; set on the
/// request with [`small`].
pub const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// What a client is for, which sets how long it waits for an answer and,
/// once the answer has begun, for each next piece of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Small answers only (token services): [`SMALL_REQUEST_TIMEOUT`].
    Small,
    /// Downloads of any size (blobs, wheels, `.deb`s, package lists): a
    /// body that stops for 300 s fails, however long the whole takes.
    Download,
    /// Uploads, whose whole body goes out before the answer: 1800 s, so a
    /// server that stops answering cannot hang a CI job for ever.
    Upload,
}

impl Patience {
    /// The client's bound on each wait (the answer's head, with the
    /// request's body for uploads; each read of the answer's body).
    pub const fn stall(self) -> Duration {
        match self {
            Patience::Small => SMALL_REQUEST_TIMEOUT,
            Patience::Download => Duration::from_secs(300),
            Patience::Upload => Duration::from_secs(1800),
        }
    }
}

/// A client under the policy, following redirects as [`redirects`] does.
pub fn client(patience: Patience) -> reqwest::Result<Client> {
    client_with(patience, redirects())
}

/// A client under the policy with a redirect policy of the caller's (the
/// registry's token client stays on the realm's origin).
pub fn client_with(patience: Patience, redirects: redirect::Policy) -> reqwest::Result<Client> {
    Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(patience.stall())
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(redirects)
        .build()
}

/// Bounds a request with a small answer as a whole: see [`SMALL_REQUEST_TIMEOUT`].
pub fn small(request: RequestBuilder) -> RequestBuilder {
    request.timeout(SMALL_REQUEST_TIMEOUT)
}

/// At most [`MAX_REDIRECTS`], and never from https to anything else.
/// reqwest drops `Authorization` (and `Cookie`) when a redirect leaves the
/// origin.
pub fn redirects() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let from_https = attempt.previous().iter().any(|u| u.scheme() == "https");
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if from_https && attempt.url().scheme() != "https" {
            let to = redact_url(attempt.url());
            attempt.error(format!("refusing a redirect from https to {to}"))
        } else {
            attempt.follow()
        }
    })
}

// ---------------------------------------------------------------------------
// Retries

/// How often and how patiently a failed request is tried again: `attempts`
/// in all (at least one), waiting a random time up to `first_delay`,
/// doubled after each failure up to `max_delay` (exponential backoff with
/// full jitter), or what a 429 or 503 answer's `Retry-After` asks, capped
/// at `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Whether another attempt may help, and when to make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    No,
    /// Yes, after what the server asked (`Retry-After`), if it did.
    Yes {
        after: Option<Duration>,
    },
}

/// A failure of one attempt, and whether another may help.
#[derive(Debug)]
pub struct Failure<E> {
    pub error: E,
    pub retry: Retry,
}

impl<E> Failure<E> {
    pub fn fatal(error: E) -> Self {
        Failure {
            error,
            retry: Retry::No,
        }
    }

    pub fn transient(error: E) -> Self {
        Failure {
            error,
            retry: Retry::Yes { after: None },
        }
    }

    /// The failure an answer with `status` is: tried again for 5xx, 429
    /// and 408 (after the `Retry-After` its headers give, if any), not for
    /// anything else.
    pub fn answered(error: E, status: StatusCode, headers: &HeaderMap) -> Self {
        let retry = match retry_status(status) {
            true => Retry::Yes {
                after: retry_after(headers),
            },
            false => Retry::No,
        };
        Failure { error, retry }
    }

    /// The failure a request without an answer is: tried again unless
    /// another attempt cannot help (see [`Transport::retry`]).
    pub fn transport(error: E, cause: &reqwest::Error) -> Self {
        match Transport::of(cause).retry() {
            true => Failure::transient(error),
            false => Failure::fatal(error),
        }
    }

    /// Whether another attempt may help.
    pub fn retries(&self) -> bool {
        self.retry != Retry::No
    }

    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> Failure<F> {
        Failure {
            error: f(self.error),
            retry: self.retry,
        }
    }
}

/// Why [`RetryPolicy::run`] stopped without a result.
#[derive(Debug)]
pub enum Stop<E> {
    /// A failure another attempt would not help.
    Fatal(E),
    /// Every attempt failed; this was the last failure.
    Exhausted { last: E, attempts: u32 },
}

impl<E> Stop<E> {
    /// The last failure, however the attempts ended.
    pub fn into_error(self) -> E {
        match self {
            Stop::Fatal(error) | Stop::Exhausted { last: error, .. } => error,
        }
    }
}

impl RetryPolicy {
    /// `--retries N`: N attempts in all (0 is taken as 1), with the
    /// default waits.
    pub fn with_attempts(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts: attempts.max(1),
            ..RetryPolicy::default()
        }
    }

    /// The longest wait before attempt `failed + 1`: the backoff ceiling.
    fn ceiling(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(20);
        self.first_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }

    /// How long to wait after `failed` attempts failed, the last asking
    /// for `retry_after` (honoured, but never past `max_delay`).
    pub fn wait(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(asked) => asked.min(self.max_delay),
            None => {
                let ceiling = self.ceiling(failed).as_millis() as u64;
                Duration::from_millis(fastrand::u64(0..=ceiling))
            }
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the attempts run
    /// out: at most `attempts` times, so the loop always ends. Each retry
    /// is said on stderr (`what: error; retrying in N s`; without `what`
    /// when it is empty).
    pub fn run<T, E: fmt::Display>(
        &self,
        what: &str,
        mut op: impl FnMut() -> Result<T, Failure<E>>,
    ) -> Result<T, Stop<E>> {
        let attempts = self.attempts.max(1);
        for attempt in 1..=attempts {
            let failure = match op() {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            match failure.retry {
                Retry::No => return Err(Stop::Fatal(failure.error)),
                Retry::Yes { .. } if attempt == attempts => {
                    return Err(Stop::Exhausted {
                        last: failure.error,
                        attempts,
                    })
                }
                Retry::Yes { after } => {
                    let wait = self.wait(attempt, after);
                    let prefix = if what.is_empty() {
                        String::new()
                    } else {
                        format!("{what}: ")
                    };
                    eprintln!(
                        "{prefix}{}; retrying in {:.1} s",
                        failure.error,
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// Answers worth another attempt: the server's trouble (5xx), too many
/// requests (429), a request timeout (408).
pub fn retry_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// `Retry-After` in seconds (its HTTP-date form is not read: the backoff
/// applies instead).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The host name does not resolve.
    Dns,
    /// TLS failed: a certificate, or a server that does not speak TLS.
    Tls,
    /// Our redirect policy refused to follow.
    Redirect,
    Timeout,
    /// The connection could not be made (refused, unreachable).
    Connect,
    /// The connection broke off or the exchange failed otherwise.
    Broken,
}

impl Transport {
    pub fn of(error: &reqwest::Error) -> Transport {
        if error.is_redirect() {
            return Transport::Redirect;
        }
        // Only the causes: the error's own text holds the URL, whose path
        // may say anything (a repository named `lab/tls`).
        let causes = causes(error).to_lowercase();
        let dns = [
            "dns error",
            "failed to lookup address",
            "name or service not known",
            "no address associated",
        ];
        if dns.iter().any(|s| causes.contains(s)) {
            return Transport::Dns;
        }
        let https = error.url().is_some_and(|u| u.scheme() == "https");
        let tls = [
            "certificate",
            "tls",
            "handshake",
            "received corrupt message",
            "received fatal alert",
            "peer is incompatible",
            "peer misbehaved",
        ];
        if https && tls.iter().any(|s| causes.contains(s)) {
            return Transport::Tls;
        }
        if error.is_timeout() {
            Transport::Timeout
        } else if error.is_connect() {
            Transport::Connect
        } else {
            Transport::Broken
        }
    }

    /// Whether another attempt may help: not for a name that does not
    /// resolve, a TLS failure or a refused redirect, which would recur.
    pub fn retry(self) -> bool {
        matches!(
            self,
            Transport::Timeout | Transport::Connect | Transport::Broken
        )
    }

    /// The host could not be reached at all.
    pub fn unreachable(self) -> bool {
        matches!(
            self,
            Transport::Dns | Transport::Tls | Transport::Timeout | Transport::Connect
        )
    }
}

/// Why an attempt of [`send`] got no answer to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No answer: its kind, and what happened in one line (URL redacted).
    Transport { kind: Transport, detail: String },
    /// An answer worth another attempt (see [`retry_status`]).
    Status(StatusCode),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Transport { detail, .. } => f.write_str(detail),
            Problem::Status(status) => write!(f, "HTTP {status}"),
        }
    }
}

/// Sends `request` once: its answer, whatever the status, unless it is
/// one to try again (then a transient [`Failure`]) or there is none.
pub fn send(request: RequestBuilder) -> Result<Response, Failure<Problem>> {
    let response = request.send().map_err(|e| {
        Failure::transport(
            Problem::Transport {
                kind: Transport::of(&e),
                detail: describe(&e),
            },
            &e,
        )
    })?;
    let status = response.status();
    if retry_status(status) {
        return Err(Failure::answered(
            Problem::Status(status),
            status,
            response.headers(),
        ));
    }
    Ok(response)
}

// ---------------------------------------------------------------------------
// Bounded bodies

/// An answer read whole into memory was longer than we read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("{what} is larger than {}: refusing it", show_size(*cap))]
    TooLarge { what: String, cap: u64 },
    #[error("reading {what} failed: {detail}")]
    Broken { what: String, detail: String },
}

/// Reads an answer (`what`, named in errors: its URL, redacted, or what
/// the user asked for) of at most `cap` bytes. A longer one is refused by
/// its `Content-Length`, or after `cap + 1` bytes: memory never holds more.
pub fn read_bounded(response: Response, cap: u64, what: &str) -> Result<Vec<u8>, BodyError> {
    let too_large = || BodyError::TooLarge {
        what: what.to_string(),
        cap,
    };
    if response.content_length().is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    response
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| BodyError::Broken {
            what: what.to_string(),
            detail: error_chain(&e),
        })?;
    if bytes.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The first `cap` bytes of an answer whose rest does not matter (an error
/// body), as text; nothing past them is read.
pub fn read_prefix(response: Response, cap: u64) -> String {
    let mut body = Vec::new();
    let _ = response.take(cap).read_to_end(&mut body);
    String::from_utf8_lossy(&body).into_owned()
}

/// A body read to a declared size and not a byte further: one byte more
/// is an error, noted in [`DeclaredSize::overran`], so neither memory nor
/// a file grows with what a server sends. A shorter body ends early; the
/// caller's digest and size check refuses it.
pub struct DeclaredSize<R> {
    inner: R,
    remaining: u64,
    overran: bool,
    broke: bool,
}

impl<R: Read> DeclaredSize<R> {
    pub fn new(inner: R, size: u64) -> Self {
        DeclaredSize {
            inner,
            remaining: size,
            overran: false,
            broke: false,
        }
    }

    /// Whether the body went on past its declared size.
    pub fn overran(&self) -> bool {
        self.overran
    }

    /// Whether reading the body itself failed (the connection, not the size).
    pub fn broke(&self) -> bool {
        self.broke
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.broke = true;
            }
        })
    }
}

impl<R: Read> Read for DeclaredSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // At the declared end: one byte more means the body is longer.
            let mut probe = [0u8; 1];
            return match self.read_inner(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.overran = true;
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the body is longer than its declared size",
                    ))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.read_inner(&mut buf[..want])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// `4 MiB`, `64 KiB`, or bytes.
pub fn show_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

// ---------------------------------------------------------------------------
// Messages

/// Query parameters whose values are secrets (lowercased): signatures of
/// presigned URLs (S3, GCS, CloudFront, Azure SAS) and tokens.
const SECRET_PARAMETERS: [&str; 14] = [
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "policy",
    "key-pair-id",
    "key",
    "apikey",
    "auth",
    "code",
    "password",
];

/// Whether a query parameter named `name` may carry a secret.
fn secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.contains(&name.as_str())
        || ["token", "secret", "signature", "credential", "password"]
            .iter()
            .any(|part| name.contains(part))
}

/// `url` as messages, logs and records show it: without a user name or
/// password, and with the value of every query parameter that may carry a
/// secret (`X-Amz-Signature`, `sig`, `token`, …) replaced by `REDACTED`.
/// A URL with nothing to hide is returned as written.
pub fn redact(url: &str) -> String {
    let url = url.trim();
    match Url::parse(url) {
        Ok(parsed) => {
            let redacted = redact_url(&parsed);
            if redacted == parsed.as_str() {
                url.to_string()
            } else {
                redacted
            }
        }
        Err(_) => redact_text(url),
    }
}

/// [`redact`] for a parsed URL.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
    }
    if let Some(query) = url.query() {
        let hidden = redact_query(query);
        if hidden != query {
            shown.set_query(Some(&hidden));
        }
    }
    shown.into()
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_parameter(name) => format!("{name}=REDACTED"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// [`redact`] for text that does not parse as a URL: the user
/// information (up to the last `@` before the path) is dropped, and the
/// query redacted as text.
fn redact_text(text: &str) -> String {
    let (before, query) = match text.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (text, None),
    };
    let mut shown = match before.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => before.to_string(),
    };
    if let Some(query) = query {
        shown.push('?');
        shown.push_str(&redact_query(query));
    }
    shown
}

/// A request error in one line, without repeating a URL the message
/// already names (and never with a secret of it): for a failed connection
/// only the root cause ("Connection refused (os error 111)"), else the
/// causes; the error itself (its URL redacted) for a timeout or when it has
/// no cause.
pub fn describe(error: &reqwest::Error) -> String {
    if error.is_connect() {
        let mut root: &dyn std::error::Error = error;
        while let Some(s) = root.source() {
            root = s;
        }
        if !std::ptr::addr_eq(root, error) {
            return root.to_string();
        }
    }
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() || error.is_timeout() {
        parts.insert(0, own_text(error));
    }
    parts.join(": ")
}

/// The error's own text (no causes) with its URL redacted.
fn own_text(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match error.url() {
        Some(url) => text.replace(url.as_str(), &redact_url(url)),
        None => text,
    }
}

/// The causes of an error, joined (not the error's own text).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = Vec::new();
    let mut source = error.source();
    while let Some(s) = source {
        text.push(s.to_string());
        source = s.source();
    }
    text.join(": ")
}

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let rest = causes(error);
    if !rest.is_empty() {
        text.push_str(": ");
        text.push_str(&rest);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_urls() {
        assert_eq!(
            redact("https://user:secret@host.example/simple/"),
            "https://host.example/simple/"
        );
        assert_eq!(
            redact("https://token@host.example/simple/"),
            "https://host.example/simple/"
        );
        let s3 = "https://bucket.s3.amazonaws.com/blob?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                  &X-Amz-Credential=AKIA%2F2024&X-Amz-Signature=abcdef0123&X-Amz-Expires=600";
        let shown = redact(s3);
        assert_eq!(
            shown,
            "https://bucket.s3.amazonaws.com/blob?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Expires=600"
        );
        for (url, secret) in [
            (
                "https://acct.blob.core.windows.net/c/b?sv=2020&sig=s3cr3t%3D",
                "s3cr3t",
            ),
            (
                "https://cdn.example/l?Expires=1&Signature=zzz&Key-Pair-Id=K1",
                "zzz",
            ),
            ("https://h.example/x?access_token=tok123", "tok123"),
            ("https://h.example/x?Token=tok123&a=b", "tok123"),
            ("https://h.example/x?X-Goog-Signature=gs1", "gs1"),
        ] {
            let shown = redact(url);
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("REDACTED"), "{shown}");
        }
        // Nothing to hide: as written, not normalised.
        assert_eq!(
            redact(" http://127.0.0.1:9/simple "),
            "http://127.0.0.1:9/simple"
        );
        assert_eq!(
            redact("https://h.example/v2/x/blobs/uploads/1?_state=abc&digest=sha256%3Aff"),
            "https://h.example/v2/x/blobs/uploads/1?_state=abc&digest=sha256%3Aff"
        );
        // Not a URL reqwest would take, still no user information shown.
        assert_eq!(
            redact("http://alice:pw@host:99999/simple/?token=t"),
            "http://host:99999/simple/?token=REDACTED"
        );
    }

    #[test]
    fn waits_back_off_with_full_jitter_and_honour_retry_after() {
        let policy = RetryPolicy::default();
        for failed in 1..=8 {
            let ceiling = policy.ceiling(failed);
            assert!(ceiling <= policy.max_delay);
            for _ in 0..50 {
                assert!(policy.wait(failed, None) <= ceiling);
            }
        }
        assert_eq!(policy.ceiling(1), Duration::from_millis(500));
        assert_eq!(policy.ceiling(3), Duration::from_secs(2));
        assert_eq!(policy.ceiling(60), policy.max_delay);
        assert_eq!(
            policy.wait(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            policy.wait(1, Some(Duration::from_secs(3600))),
            policy.max_delay,
            "Retry-After is capped"
        );
        assert_eq!(RetryPolicy::with_attempts(0).attempts, 1);
    }

    #[test]
    fn retries_are_bounded_and_stop_on_fatal_failures() {
        let policy = RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut calls = 0;
        let result: Result<(), _> = policy.run("", || {
            calls += 1;
            Err(Failure::transient("busy"))
        });
        assert!(matches!(
            result,
            Err(Stop::Exhausted {
                last: "busy",
                attempts: 3
            })
        ));
        assert_eq!(calls, 3);
        let mut calls = 0;
        let result: Result<(), _> = policy.run("x", || {
            calls += 1;
            Err(Failure::fatal("no"))
        });
        assert!(matches!(result, Err(Stop::Fatal("no"))));
        assert_eq!(calls, 1);
        let mut calls = 0;
        let result = policy.run("x", || {
            calls += 1;
            if calls < 3 {
                Err(Failure::transient("busy"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.unwrap(), 3);
    }

    #[test]
    fn statuses_worth_another_attempt() {
        for status in [500, 502, 503, 504, 429, 408] {
            assert!(retry_status(StatusCode::from_u16(status).unwrap()));
        }
        for status in [200, 301, 400, 401, 403, 404, 416] {
            assert!(!retry_status(StatusCode::from_u16(status).unwrap()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        let failure = Failure::answered((), StatusCode::TOO_MANY_REQUESTS, &headers);
        assert_eq!(
            failure.retry,
            Retry::Yes {
                after: Some(Duration::from_secs(7))
            }
        );
        let failure = Failure::answered((), StatusCode::NOT_FOUND, &headers);
        assert_eq!(failure.retry, Retry::No);
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        let failure = Failure::answered((), StatusCode::SERVICE_UNAVAILABLE, &headers);
        assert_eq!(failure.retry, Retry::Yes { after: None });
    }

    #[test]
    fn bodies_are_read_to_their_declared_size_only() {
        let read = |body: &[u8], size: u64| {
            let mut reader = DeclaredSize::new(body, size);
            let mut out = Vec::new();
            let result = reader.read_to_end(&mut out);
            (result.is_ok(), out.len(), reader.overran())
        };
        assert_eq!(read(b"abcd", 4), (true, 4, false));
        // Short: the caller's digest and size check refuses it.
        assert_eq!(read(b"ab", 4), (true, 2, false));
        // Longer: an error after the declared bytes, never more of them.
        let (ok, len, overran) = read(&[7u8; 1 << 16], 10);
        assert!(!ok && overran && len <= 10);
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        let mut reader = DeclaredSize::new(Failing, 10);
        assert!(reader.read_to_end(&mut Vec::new()).is_err());
        assert!(reader.broke() && !reader.overran());
    }

    #[test]
    fn sizes_are_shown_in_their_unit() {
        assert_eq!(show_size(4 << 20), "4 MiB");
        assert_eq!(show_size(64 << 10), "64 KiB");
        assert_eq!(show_size(1000), "1000 bytes");
        let error = BodyError::TooLarge {
            what: "the manifest r.example/a:1".into(),
            cap: 4 << 20,
        };
        assert_eq!(
            error.to_string(),
            "the manifest r.example/a:1 is larger than 4 MiB: refusing it"
        );
    }
}
