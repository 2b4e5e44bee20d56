//! [`RegistryClient`]: the Confluent Schema Registry REST API, cached.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::error::RegistryError;
use crate::schema::{LocalSchema, RegisteredSchema, SchemaType};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// A subject, a schema type and a schema text.
type SubjectSchema = (String, SchemaType, Arc<str>);
/// Ids remembered as missing (40403) or unusable, at most; beyond it the
/// expired ones are dropped, then the oldest.
const MAX_REMEMBERED_FAILURES: usize = 4096;
/// The longest wait between two tries of one call.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A version of a subject: its number, schema id and schema.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// The version number.
    pub version: u32,
    /// The schema id.
    pub id: u32,
    /// The schema.
    pub schema: Arc<RegisteredSchema>,
}

/// The registry's answer to [`RegistryClient::test_compatibility`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompatibilityReport {
    /// Whether the schema may be registered under the subject's rule.
    pub compatible: bool,
    /// The registry's reasons when not (some registries give none).
    pub messages: Vec<String>,
}

/// A subject's compatibility rule (`GET /config/{subject}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompatibilityLevel {
    /// No checks.
    None,
    /// A new schema reads data written with the latest one.
    Backward,
    /// … with every earlier one.
    BackwardTransitive,
    /// Data written with a new schema is readable with the latest one.
    Forward,
    /// … with every earlier one.
    ForwardTransitive,
    /// Both `Backward` and `Forward`.
    Full,
    /// Both, against every earlier version.
    FullTransitive,
}

impl CompatibilityLevel {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NONE" => Self::None,
            "BACKWARD" => Self::Backward,
            "BACKWARD_TRANSITIVE" => Self::BackwardTransitive,
            "FORWARD" => Self::Forward,
            "FORWARD_TRANSITIVE" => Self::ForwardTransitive,
            "FULL" => Self::Full,
            "FULL_TRANSITIVE" => Self::FullTransitive,
            _ => return None,
        })
    }

    /// The registry's name, e.g. `BACKWARD`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether a new schema must read the older data.
    pub fn is_backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether older schemas must read the new data.
    pub fn is_forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    /// Whether the rule holds against every version, not only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone)]
enum Auth {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

/// Configures a [`RegistryClient`].
///
/// ```
/// use std::time::Duration;
/// use kafka_tower_registry::RegistryClient;
///
/// let client = RegistryClient::builder("https://registry.example:8081")
///     .basic_auth("svc-orders", "s3cret")
///     .timeout(Duration::from_secs(3))
///     .build()?;
/// assert!(!format!("{client:?}").contains("s3cret"));
/// # Ok::<(), kafka_tower_registry::RegistryError>(())
/// ```
pub struct RegistryClientBuilder {
    url: String,
    auth: Auth,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    latest_ttl: Duration,
    missing_ttl: Duration,
    ca_pem: Vec<Vec<u8>>,
}

impl fmt::Debug for RegistryClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClientBuilder")
            .field("url", &without_credentials(&self.url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RegistryClientBuilder {
    /// HTTP basic authentication (Confluent Cloud: API key and secret).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::Basic {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// A bearer token (`Authorization: Bearer …`).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Bearer(token.into());
        self
    }

    /// The timeout of one HTTP request (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times an unavailable registry is tried again before a call
    /// fails with [`RegistryError::Unavailable`] (default 2), waiting
    /// `backoff`, then twice that, … in between (default 100 ms).
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// How long a subject's latest version is cached (default 60 s). Ids
    /// are immutable and cached for the life of the client.
    pub fn latest_ttl(mut self, ttl: Duration) -> Self {
        self.latest_ttl = ttl;
        self
    }

    /// How long "no such schema id" is remembered (default 10 s), so a
    /// flood of records with an unknown id does not flood the registry.
    pub fn missing_ttl(mut self, ttl: Duration) -> Self {
        self.missing_ttl = ttl;
        self
    }

    /// Trusts the CA certificate(s) in `pem` for `https` URLs, besides the
    /// platform's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem.push(pem.into());
        self
    }

    /// Builds the client. Fails on a URL that is not `http(s)://…` or a
    /// CA certificate that does not parse.
    pub fn build(self) -> Result<RegistryClient, RegistryError> {
        let config = RegistryError::Config;
        let mut url = reqwest::Url::parse(&self.url)
            .map_err(|e| config(format!("invalid registry URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config(format!(
                "registry URL scheme {} is not http or https",
                url.scheme()
            )));
        }
        let mut auth = self.auth;
        // Credentials in the URL become basic auth and leave the URL, so
        // that no message or Debug ever prints them.
        if !url.username().is_empty() || url.password().is_some() {
            if matches!(auth, Auth::None) {
                auth = Auth::Basic {
                    user: percent_decode(url.username()),
                    password: percent_decode(url.password().unwrap_or("")),
                };
            }
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut http = reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none());
        for pem in &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| config(format!("CA certificate: {e}")))?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| config(format!("cannot build the HTTP client: {e}")))?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                base,
                http,
                auth,
                retries: self.retries,
                backoff: self.backoff,
                latest_ttl: self.latest_ttl,
                missing_ttl: self.missing_ttl,
                ids: Mutex::default(),
                failed: Mutex::default(),
                unreachable: Mutex::default(),
                latest: Mutex::default(),
                registered: Mutex::default(),
                looked_up: Mutex::default(),
                schema_fetches: AtomicU64::new(0),
                requests: AtomicU64::new(0),
            }),
        })
    }
}

/// `url` with any `user:password@` removed, for messages.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(an invalid URL)".to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let [b'%', h, l, ..] = bytes[i..] {
            if let (Some(h), Some(l)) = (hex(h), hex(l)) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A client of the Confluent Schema Registry REST API (also served by
/// Apicurio Registry at `/apis/ccompat/v7`, Redpanda and Karapace).
/// Cloning is an `Arc` clone; clones share the caches.
///
/// * **Schemas by id** are fetched once and cached for the life of the
///   client: ids are immutable. Concurrent misses on one id make one fetch.
///   [`cached`](Self::cached) answers from the cache without waiting.
/// * **Latest versions** are cached for [`latest_ttl`](RegistryClientBuilder::latest_ttl).
/// * **Registrations and lookups** of a local schema under a subject are
///   cached for the life of the client.
/// * A registry that cannot be reached is tried again `retries` times, then
///   the call fails with [`RegistryError::Unavailable`] (retryable).
/// * Proxies: the client connects directly; `HTTPS_PROXY` and friends are
///   not read.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    http: reqwest::Client,
    auth: Auth,
    retries: u32,
    backoff: Duration,
    latest_ttl: Duration,
    missing_ttl: Duration,
    /// Schemas by id; an entry is an in-flight or finished fetch, removed
    /// when the fetch fails.
    ids: Mutex<Map<u32, Arc<OnceCell<Arc<RegisteredSchema>>>>>,
    /// Ids the registry does not have (until `missing_ttl`) or that cannot
    /// be used here (for good: ids are immutable).
    failed: Mutex<Map<u32, (Option<Instant>, RegistryError)>>,
    /// Until when the registry is taken as unreachable after a failed
    /// fetch, so that the records waiting on the same id fail at once.
    unreachable: Mutex<Option<(Instant, RegistryError)>>,
    latest: Mutex<Map<String, (Instant, SubjectVersion)>>,
    registered: Mutex<Map<SubjectSchema, u32>>,
    looked_up: Mutex<Map<SubjectSchema, SubjectVersion>>,
    schema_fetches: AtomicU64,
    requests: AtomicU64,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.inner.auth {
            Auth::None => "none",
            Auth::Basic { .. } => "basic",
            Auth::Bearer(_) => "bearer",
        };
        f.debug_struct("RegistryClient")
            .field("url", &self.inner.base)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct VersionAnswer {
    subject: String,
    version: u32,
    id: u32,
    #[serde(flatten)]
    schema: SchemaAnswer,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct SubjectVersionRef {
    subject: String,
    version: u32,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: Option<u32>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct CompatibilityAnswer {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigAnswer {
    #[serde(rename = "compatibilityLevel", alias = "compatibility")]
    level: String,
}

fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

use crate::lock;

impl RegistryClient {
    /// Starts a configuration for the registry at `url` (e.g.
    /// `http://localhost:8081`, or Apicurio's
    /// `http://host:8080/apis/ccompat/v7`). `user:password@` in the URL is
    /// taken as basic auth.
    pub fn builder(url: impl Into<String>) -> RegistryClientBuilder {
        RegistryClientBuilder {
            url: url.into(),
            auth: Auth::None,
            timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(100),
            latest_ttl: Duration::from_secs(60),
            missing_ttl: Duration::from_secs(10),
            ca_pem: Vec::new(),
        }
    }

    /// The registry's base URL (without credentials).
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// How many schemas were fetched by id so far (cache misses).
    pub fn schema_fetches(&self) -> u64 {
        self.inner.schema_fetches.load(Ordering::Relaxed)
    }

    /// How many HTTP requests were sent so far, retries included.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// The schema with `id` if it is cached; never waits.
    pub fn cached(&self, id: u32) -> Option<Arc<RegisteredSchema>> {
        lock(&self.inner.ids).get(&id)?.get().cloned()
    }

    /// Puts a schema the service already knows into the id cache, as if
    /// fetched: for offline starts, tests and benchmarks. The caller
    /// vouches that the registry holds `text` under `id`.
    pub fn insert_schema(
        &self,
        id: u32,
        schema_type: SchemaType,
        text: &str,
    ) -> Result<Arc<RegisteredSchema>, RegistryError> {
        let schema = Arc::new(RegisteredSchema::compile(id, schema_type, text)?);
        let cell = Arc::new(OnceCell::new());
        let _ = cell.set(schema.clone());
        lock(&self.inner.ids).insert(id, cell);
        Ok(schema)
    }

    /// The schema with `id`: from the cache, else `GET /schemas/ids/{id}`.
    ///
    /// Concurrent calls for one id share one fetch. An id the registry
    /// does not have is remembered for `missing_ttl`, an id whose schema
    /// cannot be used here for good; after a fetch found the registry
    /// unreachable, calls fail at once for the retry backoff instead of
    /// each waiting for their own timeouts.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        let cell = {
            let mut ids = lock(&self.inner.ids);
            if let Some(s) = ids.get(&id).and_then(|c| c.get()) {
                return Ok(s.clone());
            }
            ids.entry(id).or_default().clone()
        };
        let result = cell
            .get_or_try_init(|| async {
                // Checked here, inside the one fetch: the waiters that
                // follow a failure see what it left.
                self.remembered_failure(id)?;
                self.inner.schema_fetches.fetch_add(1, Ordering::Relaxed);
                let answer: Result<SchemaAnswer, _> = self.get(&format!("/schemas/ids/{id}")).await;
                let compiled = answer.and_then(|a| compile(id, &a).map(Arc::new));
                if let Err(e) = &compiled {
                    self.remember_failure(id, e);
                }
                compiled
            })
            .await
            .cloned();
        if result.is_err() {
            // No empty entry stays behind for an id that failed: the map
            // holds only schemas and fetches in flight.
            let mut ids = lock(&self.inner.ids);
            if ids.get(&id).is_some_and(|c| c.get().is_none()) {
                ids.remove(&id);
            }
        }
        result
    }

    fn remembered_failure(&self, id: u32) -> Result<(), RegistryError> {
        if let Some((until, e)) = &*lock(&self.inner.unreachable) {
            if Instant::now() < *until {
                return Err(e.clone());
            }
        }
        match lock(&self.inner.failed).get(&id) {
            Some((None, e)) => Err(e.clone()),
            Some((Some(at), e)) if at.elapsed() < self.inner.missing_ttl => Err(e.clone()),
            _ => Ok(()),
        }
    }

    fn remember_failure(&self, id: u32, e: &RegistryError) {
        let at = match e {
            RegistryError::Unavailable { .. } => {
                let until = Instant::now() + self.inner.backoff.min(MAX_BACKOFF);
                *lock(&self.inner.unreachable) = Some((until, e.clone()));
                return;
            }
            RegistryError::Unusable { .. } => None,
            e if e.is_unknown_schema() => Some(Instant::now()),
            _ => return,
        };
        let mut failed = lock(&self.inner.failed);
        if failed.len() >= MAX_REMEMBERED_FAILURES {
            let ttl = self.inner.missing_ttl;
            failed.retain(|_, (at, _)| at.is_none_or(|t| t.elapsed() < ttl));
            if failed.len() >= MAX_REMEMBERED_FAILURES {
                // Still full of permanent ones: forget an arbitrary tenth.
                let drop: Vec<u32> = failed
                    .keys()
                    .take(MAX_REMEMBERED_FAILURES / 10)
                    .copied()
                    .collect();
                for k in drop {
                    failed.remove(&k);
                }
            }
        }
        failed.insert(id, (at, e.clone()));
    }

    /// The subjects and versions under which schema `id` is registered
    /// (`GET /schemas/ids/{id}/versions`), asked every time.
    pub async fn subjects_of(&self, id: u32) -> Result<Vec<(String, u32)>, RegistryError> {
        let answer: Vec<SubjectVersionRef> =
            self.get(&format!("/schemas/ids/{id}/versions")).await?;
        Ok(answer.into_iter().map(|r| (r.subject, r.version)).collect())
    }

    /// The latest version of `subject`, cached for the latest TTL.
    pub async fn latest(&self, subject: &str) -> Result<SubjectVersion, RegistryError> {
        if let Some((at, v)) = lock(&self.inner.latest).get(subject) {
            if at.elapsed() < self.inner.latest_ttl {
                return Ok(v.clone());
            }
        }
        let v = self.version_uncached(subject, "latest").await?;
        lock(&self.inner.latest).insert(subject.to_owned(), (Instant::now(), v.clone()));
        Ok(v)
    }

    /// Version `version` of `subject` (`GET /subjects/{s}/versions/{v}`).
    pub async fn version(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<SubjectVersion, RegistryError> {
        self.version_uncached(subject, &version.to_string()).await
    }

    /// The version numbers of `subject`, oldest first.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        self.get(&format!("/subjects/{}/versions", path_segment(subject)))
            .await
    }

    async fn version_uncached(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<SubjectVersion, RegistryError> {
        let a: VersionAnswer = self
            .get(&format!(
                "/subjects/{}/versions/{version}",
                path_segment(subject)
            ))
            .await?;
        self.subject_version(a)
    }

    fn subject_version(&self, a: VersionAnswer) -> Result<SubjectVersion, RegistryError> {
        let schema = match self.cached(a.id) {
            Some(s) => s,
            None => {
                let s = Arc::new(compile(a.id, &a.schema)?);
                let cell = lock(&self.inner.ids).entry(a.id).or_default().clone();
                let _ = cell.set(s.clone());
                s
            }
        };
        Ok(SubjectVersion {
            subject: a.subject,
            version: a.version,
            id: a.id,
            schema,
        })
    }

    /// Registers `schema` under `subject` (`POST /subjects/{s}/versions`)
    /// and returns its id; registering a schema already there returns its
    /// existing id. An incompatible schema is
    /// [`RegistryError::Incompatible`]. Cached per subject and schema.
    pub async fn register(
        &self,
        subject: &str,
        schema: &LocalSchema,
    ) -> Result<u32, RegistryError> {
        let key = (subject.to_owned(), schema.schema_type, schema.text.clone());
        if let Some(id) = lock(&self.inner.registered).get(&key) {
            return Ok(*id);
        }
        let path = format!("/subjects/{}/versions", path_segment(subject));
        let a: IdAnswer = self
            .post(&path, &schema_body(schema), Some(subject))
            .await?;
        lock(&self.inner.registered).insert(key, a.id);
        Ok(a.id)
    }

    /// Finds `schema` among `subject`'s versions (`POST /subjects/{s}`)
    /// without registering it. Not registered is
    /// [`RegistryError::NotFound`] (`40403`, or `40401` for no subject).
    /// Cached per subject and schema.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &LocalSchema,
    ) -> Result<SubjectVersion, RegistryError> {
        let key = (subject.to_owned(), schema.schema_type, schema.text.clone());
        if let Some(v) = lock(&self.inner.looked_up).get(&key) {
            return Ok(v.clone());
        }
        let path = format!("/subjects/{}", path_segment(subject));
        let a: VersionAnswer = self
            .post(&path, &schema_body(schema), Some(subject))
            .await?;
        let v = self.subject_version(a)?;
        lock(&self.inner.looked_up).insert(key, v.clone());
        Ok(v)
    }

    /// Asks the registry whether `schema` is compatible with `subject`'s
    /// latest version under the subject's rule
    /// (`POST /compatibility/subjects/{s}/versions/latest?verbose=true`).
    pub async fn test_compatibility(
        &self,
        subject: &str,
        schema: &LocalSchema,
    ) -> Result<CompatibilityReport, RegistryError> {
        let path = format!(
            "/compatibility/subjects/{}/versions/latest?verbose=true",
            path_segment(subject)
        );
        let a: CompatibilityAnswer = self
            .post(&path, &schema_body(schema), Some(subject))
            .await?;
        Ok(CompatibilityReport {
            compatible: a.is_compatible,
            messages: a.messages,
        })
    }

    /// The compatibility rule of `subject`, or the registry's global one
    /// when the subject has none.
    pub async fn compatibility_level(
        &self,
        subject: &str,
    ) -> Result<CompatibilityLevel, RegistryError> {
        let path = format!("/config/{}", path_segment(subject));
        let answer: ConfigAnswer = match self.get(&path).await {
            Ok(a) => a,
            Err(RegistryError::NotFound { .. }) => self.get("/config").await?,
            Err(e) => return Err(e),
        };
        CompatibilityLevel::parse(&answer.level).ok_or_else(|| RegistryError::Protocol {
            operation: format!("GET {path}"),
            detail: format!("unknown compatibility level {}", answer.level),
        })
    }

    /// Sets `subject`'s compatibility rule (`PUT /config/{subject}`).
    pub async fn set_compatibility_level(
        &self,
        subject: &str,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        let path = format!("/config/{}", path_segment(subject));
        let body = json!({ "compatibility": level.as_str() });
        let _: serde_json::Value = self
            .send(reqwest::Method::PUT, &path, Some(&body), None)
            .await?;
        Ok(())
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, RegistryError> {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &serde_json::Value,
        subject: Option<&str>,
    ) -> Result<T, RegistryError> {
        self.send(reqwest::Method::POST, path, Some(body), subject)
            .await
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        subject: Option<&str>,
    ) -> Result<T, RegistryError> {
        let operation = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let url = format!("{}{path}", self.inner.base);
        let mut attempt = 0;
        loop {
            let result = self.send_once(&method, &url, body, &operation).await;
            match result {
                Ok((status, bytes)) => {
                    return decode_answer(status, &bytes, &operation, subject);
                }
                Err(e) if e.is_retryable() && attempt < self.inner.retries => {
                    tracing::debug!(target: "kafka_tower_registry", error = %e, attempt, "registry call failed, trying again");
                    let delay = self
                        .inner
                        .backoff
                        .saturating_mul(2u32.saturating_pow(attempt));
                    tokio::time::sleep(delay.min(MAX_BACKOFF)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request; `Err` only for what is worth trying again.
    async fn send_once(
        &self,
        method: &reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
        operation: &str,
    ) -> Result<(u16, bytes::Bytes), RegistryError> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let unavailable = |detail: String| RegistryError::Unavailable {
            operation: operation.to_owned(),
            detail,
        };
        let mut req = self
            .inner
            .http
            .request(method.clone(), url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(body.to_string());
        }
        req = match &self.inner.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        };
        let res = req.send().await.map_err(|e| unavailable(describe(&e)))?;
        let status = res.status().as_u16();
        if status >= 500 || status == 429 {
            return Err(unavailable(format!("status {status}")));
        }
        if res
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(RegistryError::Protocol {
                operation: operation.to_owned(),
                detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
            });
        }
        let mut res = res;
        let mut bytes = bytes::BytesMut::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| unavailable(describe(&e)))? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(RegistryError::Protocol {
                    operation: operation.to_owned(),
                    detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, bytes.freeze()))
    }
}

/// An error's message and its causes, without the URL (which reqwest
/// includes and which would repeat the operation).
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn schema_body(schema: &LocalSchema) -> serde_json::Value {
    match schema.schema_type {
        SchemaType::Avro => json!({ "schema": &*schema.text }),
        t => json!({ "schema": &*schema.text, "schemaType": t.as_str() }),
    }
}

fn compile(id: u32, answer: &SchemaAnswer) -> Result<RegisteredSchema, RegistryError> {
    let (schema_type, text) = (answer.schema_type.as_deref(), &answer.schema);
    if !answer.references.is_empty() {
        return Err(RegistryError::Unusable {
            id,
            detail: "schemas with references are not supported".into(),
        });
    }
    let t = SchemaType::from_registry(schema_type).ok_or_else(|| RegistryError::Unusable {
        id,
        detail: format!("unknown schemaType {}", schema_type.unwrap_or_default()),
    })?;
    RegisteredSchema::compile(id, t, text)
}

fn decode_answer<T: for<'de> Deserialize<'de>>(
    status: u16,
    bytes: &[u8],
    operation: &str,
    subject: Option<&str>,
) -> Result<T, RegistryError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(bytes).map_err(|e| RegistryError::Protocol {
            operation: operation.to_owned(),
            detail: format!("status {status} with an unexpected body: {e}"),
        });
    }
    let answer: Option<ErrorAnswer> = serde_json::from_slice(bytes).ok();
    let code = answer.as_ref().and_then(|a| a.error_code);
    let message = answer
        .and_then(|a| a.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned());
    Err(match status {
        404 => RegistryError::NotFound {
            operation: operation.to_owned(),
            code: code.unwrap_or(404),
            message,
        },
        409 => RegistryError::Incompatible {
            subject: subject.unwrap_or_default().to_owned(),
            messages: vec![message],
        },
        422 => RegistryError::Invalid {
            operation: operation.to_owned(),
            message,
        },
        _ => RegistryError::Refused {
            operation: operation.to_owned(),
            status,
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let c = RegistryClient::builder("http://user:p%40ss@localhost:8081/apis/ccompat/v7/")
            .build()
            .unwrap();
        assert_eq!(c.url(), "http://localhost:8081/apis/ccompat/v7");
        match &c.inner.auth {
            Auth::Basic { user, password } => {
                assert_eq!(user, "user");
                assert_eq!(password, "p@ss");
            }
            _ => panic!("expected basic auth from the URL"),
        }
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("p@ss") && !shown.contains("p%40ss"),
            "{shown}"
        );
        assert!(RegistryClient::builder("ftp://x").build().is_err());
        assert!(RegistryClient::builder("not a url").build().is_err());
    }

    #[test]
    fn subjects_are_escaped_in_paths() {
        assert_eq!(path_segment("orders-value"), "orders-value");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn answers_map_to_typed_errors() {
        let nf: Result<IdAnswer, _> = decode_answer(
            404,
            br#"{"error_code":40403,"message":"Schema not found"}"#,
            "GET /schemas/ids/9",
            None,
        );
        assert!(nf.err().is_some_and(|e| e.is_not_found(40403)));
        let inc: Result<IdAnswer, _> = decode_answer(
            409,
            br#"{"error_code":409,"message":"field x"}"#,
            "POST",
            Some("s"),
        );
        assert_eq!(
            inc.err(),
            Some(RegistryError::Incompatible {
                subject: "s".into(),
                messages: vec!["field x".into()]
            })
        );
        let bad: Result<IdAnswer, _> = decode_answer(200, b"<html>", "GET /x", None);
        assert!(matches!(bad.err(), Some(RegistryError::Protocol { .. })));
        let unauthorized: Result<IdAnswer, _> = decode_answer(401, b"no", "GET /x", None);
        assert!(matches!(
            unauthorized.err(),
            Some(RegistryError::Refused { status: 401, .. })
        ));
    }

    #[test]
    fn levels_parse() {
        for l in [
            CompatibilityLevel::None,
            CompatibilityLevel::Backward,
            CompatibilityLevel::BackwardTransitive,
            CompatibilityLevel::Forward,
            CompatibilityLevel::ForwardTransitive,
            CompatibilityLevel::Full,
            CompatibilityLevel::FullTransitive,
        ] {
            assert_eq!(CompatibilityLevel::parse(l.as_str()), Some(l));
        }
        assert!(CompatibilityLevel::Full.is_backward() && CompatibilityLevel::Full.is_forward());
        assert!(!CompatibilityLevel::Backward.is_forward());
    }
}
