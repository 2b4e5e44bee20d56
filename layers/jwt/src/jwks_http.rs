//! JWKS documents fetched over HTTP(S) (feature `jwks-http`).
//!
//! Only the URLs given to [`JwtLayerBuilder::jwks_url`] are ever fetched: a
//! token's `jku`, `x5u`, `jwk` or `kid` header never names what to fetch.
//! A background task (spawned by [`JwtLayerBuilder::build`] on the current
//! Tokio runtime) fetches them at once, then every
//! [`jwks_refresh_interval`](JwtLayerBuilder::jwks_refresh_interval), and
//! early when a token names an unknown `kid` — at most once per
//! [`jwks_min_refresh_interval`](JwtLayerBuilder::jwks_min_refresh_interval).
//! While such a refresh is pending the refusal is `503` (retryable) with
//! reason `unknown_key`, so the record is retried once the new keys are in;
//! an unknown `kid` after a recent refresh is a permanent `401`. A failed
//! fetch keeps the previous keys. The task ends when the layer is dropped.
//!
//! HTTPS uses rustls; if the process has not installed a rustls
//! `CryptoProvider`, the first build installs *ring*'s.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::key::Jwks;
use crate::layer::JwtLayerBuilder;
use crate::verify::Verifier;

const MAX_JWKS_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
pub(crate) struct RemoteConfig {
    pub(crate) urls: Vec<String>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    timeout: Duration,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            urls: Vec::new(),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

impl JwtLayerBuilder {
    /// Fetches the keys of the JWKS document at `url` (`http` or `https`),
    /// and refreshes them. May be called several times.
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.remote.urls.push(url.into());
        self
    }

    /// How often the JWKS URLs are fetched again (default 5 min).
    pub fn jwks_refresh_interval(mut self, every: Duration) -> Self {
        self.remote.refresh_interval = every;
        self
    }

    /// The least time between two refreshes triggered by unknown `kid`s
    /// (default 30 s), so a flood of forged `kid`s cannot hammer the
    /// identity provider.
    pub fn jwks_min_refresh_interval(mut self, at_least: Duration) -> Self {
        self.remote.min_refresh_interval = at_least;
        self
    }

    /// The timeout of one JWKS fetch (default 10 s).
    pub fn jwks_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.remote.timeout = timeout;
        self
    }
}

struct RefreshState {
    last_start: Option<Instant>,
    pending: bool,
}

pub(crate) struct Remote {
    notify: Arc<tokio::sync::Notify>,
    state: Arc<Mutex<RefreshState>>,
    min_interval: Duration,
}

pub(crate) struct RefreshTask {
    notify: Arc<tokio::sync::Notify>,
    state: Arc<Mutex<RefreshState>>,
    client: reqwest::Client,
    urls: Vec<reqwest::Url>,
    interval: Duration,
}

impl Remote {
    pub(crate) fn new(config: RemoteConfig) -> Result<(Remote, RefreshTask), String> {
        let urls = config
            .urls
            .iter()
            .map(|u| {
                let url =
                    reqwest::Url::parse(u).map_err(|e| format!("invalid JWKS URL {u}: {e}"))?;
                match url.scheme() {
                    "http" | "https" => Ok(url),
                    s => Err(format!("JWKS URL {u}: scheme {s} is not http or https")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        let notify = Arc::new(tokio::sync::Notify::new());
        let state = Arc::new(Mutex::new(RefreshState {
            last_start: None,
            pending: true,
        }));
        let remote = Remote {
            notify: notify.clone(),
            state: state.clone(),
            min_interval: config.min_refresh_interval,
        };
        let task = RefreshTask {
            notify,
            state,
            client,
            urls,
            interval: config.refresh_interval,
        };
        Ok((remote, task))
    }

    /// Asks for an early refresh; `true` if one is pending or was started.
    pub(crate) fn request_refresh(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.pending {
            return true;
        }
        if s.last_start
            .is_some_and(|t| t.elapsed() < self.min_interval)
        {
            return false;
        }
        s.pending = true;
        self.notify.notify_one();
        true
    }
}

impl RefreshTask {
    pub(crate) fn spawn(self, verifier: Weak<Verifier>) -> Result<(), String> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            "a JwtLayer with JWKS URLs must be built within a Tokio runtime".to_owned()
        })?;
        handle.spawn(self.run(verifier));
        Ok(())
    }

    async fn run(self, verifier: Weak<Verifier>) {
        loop {
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_start = Some(Instant::now());
            let fetched = self.fetch_all().await;
            {
                let Some(verifier) = verifier.upgrade() else {
                    return;
                };
                if let Some(keys) = fetched {
                    verifier.keys.replace_fetched(keys);
                }
            }
            self.state.lock().unwrap_or_else(|e| e.into_inner()).pending = false;
            let _ = tokio::time::timeout(self.interval, self.notify.notified()).await;
            if verifier.strong_count() == 0 {
                return;
            }
        }
    }

    /// Every configured document's keys, or `None` if any fetch failed (the
    /// previous keys are kept then).
    async fn fetch_all(&self) -> Option<Vec<crate::key::VerificationKey>> {
        let mut keys = Vec::new();
        for url in &self.urls {
            match self.fetch(url).await {
                Ok(jwks) => keys.extend(jwks.into_keys()),
                Err(e) => {
                    tracing::warn!(target: "kafka_tower_jwt", url = %url, error = %e, "JWKS fetch failed; keeping the previous keys");
                    return None;
                }
            }
        }
        tracing::debug!(target: "kafka_tower_jwt", keys = keys.len(), "JWKS refreshed");
        Some(keys)
    }

    async fn fetch(&self, url: &reqwest::Url) -> Result<Jwks, String> {
        let mut res = self
            .client
            .get(url.clone())
            .header(
                http::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("document larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Jwks::from_json(&body).map_err(|e| e.to_string())
    }
}
