//! See [`ClusterRefused`].

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::config::{is_secret_property, Properties};

/// What the cluster refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalKind {
    /// SASL authentication failed: wrong user or password, an unknown
    /// mechanism, a rejected token.
    Authentication,
    /// The TLS handshake failed: the broker's certificate is not trusted
    /// (`ssl.ca.location`), or the broker refused the client's certificate
    /// (expired, unknown issuer, missing).
    Tls,
}

/// Refusals by the cluster that no retry can fix: credentials the broker
/// rejects and TLS handshakes that fail on a certificate.
///
/// librdkafka retries both forever, logging each attempt; a consumer would
/// sit idle and a producer would hold each record until
/// `message.timeout.ms`. The runtime's clients watch what librdkafka
/// reports instead and stop with a [`ClusterRefused`] naming the cause:
/// [`Consumer::serve`](super::Consumer::serve) returns it (as the source of
/// its [`ConsumerError`](super::ConsumerError)) and
/// [`Producer::send`](super::Producer::send) fails with
/// [`ProduceError::Refused`](super::ProduceError::Refused).
///
/// A disconnect during a handshake (a broker restarting) is not a refusal:
/// only an OpenSSL error or a TLS alert in the handshake, and a SASL
/// authentication error, are.
///
/// The cluster refused this client; retrying with the same configuration
/// cannot succeed.
///
/// ```
/// use kafka_tower::runtime::{ClusterRefused, RefusalKind};
///
/// fn explain(e: &ClusterRefused) -> &'static str {
///     match e.kind() {
///         RefusalKind::Authentication => "check sasl.username / sasl.password",
///         RefusalKind::Tls => "check the certificates",
///         _ => "see the message",
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRefused {
    kind: RefusalKind,
    reason: String,
}

impl ClusterRefused {
    /// What was refused.
    pub fn kind(&self) -> RefusalKind {
        self.kind
    }

    /// librdkafka's description of the failure, with the broker's address
    /// (the values of the client's secret properties scrubbed).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ClusterRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RefusalKind::Authentication => write!(
                f,
                "the Kafka cluster refused the credentials (check `sasl.mechanism`, `sasl.username` and `sasl.password`): {}",
                self.reason
            ),
            RefusalKind::Tls => write!(
                f,
                "the TLS handshake with the Kafka cluster failed (check that `ssl.ca.location` names the CA of the broker's certificate, and that the client certificate of `ssl.certificate.location` is valid and signed by a CA the broker trusts): {}",
                self.reason
            ),
        }
    }
}

impl std::error::Error for ClusterRefused {}

/// Classifies one line librdkafka reports about a broker connection.
fn classify(text: &str) -> Option<RefusalKind> {
    // The broker's answer: "SASL authentication error: Authentication
    // failed during authentication due to invalid credentials …". Not a
    // local failure on the way ("SASL authentication error:
    // SaslAuthenticateRequest failed: Local: Broker transport failure",
    // a broker restarting), nor a token the client could not fetch
    // ("Failed to acquire SASL OAUTHBEARER token", an identity provider
    // outage).
    if text.contains("SASL authentication error") && !text.contains("Local:") {
        return Some(RefusalKind::Authentication);
    }
    if text.contains("Unsupported SASL mechanism") {
        return Some(RefusalKind::Authentication);
    }
    // "SSL handshake failed: error:0A000086:SSL routines::certificate
    // verify failed: …" (the broker's certificate is not trusted) or a TLS
    // alert from the broker ("Receive failed: error:0A000416:SSL
    // routines::sslv3 alert certificate unknown", a client certificate it
    // refuses: expired, unknown issuer). Not "SSL handshake failed:
    // Disconnected" or "… unexpected eof while reading", which a
    // restarting broker causes too.
    let tls = text.contains("SSL routines") || text.contains("SSL handshake failed");
    if tls && (text.contains(" alert ") || text.contains("certificate")) {
        return Some(RefusalKind::Tls);
    }
    None
}

/// How long a refusal counts after librdkafka last reported it. librdkafka
/// retries a refused connection at least every `reconnect.backoff.max.ms`
/// (10 s by default) and reports each failure again; a refusal not reported
/// for this long has been fixed (a password reset on the broker, say).
const REFUSAL_FRESH: Duration = Duration::from_secs(30);

/// What one client has seen of refusals; shared by its librdkafka
/// callbacks (any thread) and its users.
#[derive(Default)]
pub(crate) struct AccessWatch {
    refused: Mutex<Option<(ClusterRefused, Instant)>>,
    /// The values of the client's secret properties, scrubbed from every
    /// text librdkafka reports before it is logged or kept.
    secrets: Vec<String>,
    changed: tokio::sync::Notify,
}

impl AccessWatch {
    /// A watch for a client configured with `properties` (whose secret
    /// values it scrubs from librdkafka's texts).
    pub(crate) fn new<'a>(properties: impl IntoIterator<Item = &'a Properties>) -> Self {
        let mut secrets: Vec<String> = properties
            .into_iter()
            .flat_map(|p| p.iter())
            .filter(|(k, v)| is_secret_property(k) && !v.0.is_empty())
            .map(|(_, v)| v.0.clone())
            .collect();
        secrets.sort();
        secrets.dedup();
        AccessWatch {
            secrets,
            ..Default::default()
        }
    }

    fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), "<redacted>"));
            }
        }
        out
    }

    /// The refusal, if librdkafka reported one lately.
    pub(crate) fn refused(&self) -> Option<ClusterRefused> {
        let state = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match &*state {
            Some((r, at)) if at.elapsed() < REFUSAL_FRESH => Some(r.clone()),
            _ => None,
        }
    }

    /// Waits until the client is refused (again).
    pub(crate) async fn wait_refused(&self) -> ClusterRefused {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.refused() {
                return r;
            }
            notified.await;
        }
    }

    fn refuse(&self, kind: RefusalKind, reason: &str) {
        let mut state = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = matches!(&*state, Some((_, at)) if at.elapsed() < REFUSAL_FRESH);
        if !fresh {
            tracing::error!(reason, ?kind, "the Kafka cluster refused this client");
        }
        *state = Some((
            ClusterRefused {
                kind,
                reason: reason.to_owned(),
            },
            Instant::now(),
        ));
        drop(state);
        self.changed.notify_waiters();
    }

    /// librdkafka's log callback: forwards to `tracing` (secrets scrubbed)
    /// and watches connection failures.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let message = self.scrub(message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
        if fac == "FAIL" || fac == "ERROR" {
            if let Some(kind) = classify(&message) {
                self.refuse(kind, &message);
            }
        }
    }

    /// librdkafka's error callback, with its reason text (consumers' error
    /// events reach it too).
    pub(crate) fn error(&self, error: &KafkaError, reason: &str) {
        let reason = self.scrub(reason);
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
        if let Some(kind) = classify(&reason).or_else(|| kind_of_code(error)) {
            self.refuse(kind, &reason);
        }
    }
}

/// The rdkafka client context of the runtime's producers (the
/// [`Producer`](super::Producer), the dead-letter producer and the
/// [`TransactionalProducer`](super::TransactionalProducer)): librdkafka's
/// logs go to `tracing` (target `librdkafka`, secrets scrubbed), and a
/// refusal by the cluster is noticed (see [`ClusterRefused`]).
#[derive(Clone, Default)]
pub struct WatchedContext {
    pub(crate) access: Arc<AccessWatch>,
}

impl fmt::Debug for WatchedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedContext")
            .field("refused", &self.access.refused())
            .finish()
    }
}

impl WatchedContext {
    pub(crate) fn new(access: Arc<AccessWatch>) -> Self {
        WatchedContext { access }
    }

    /// The refusal this client met, if librdkafka reported it lately.
    pub fn refused(&self) -> Option<ClusterRefused> {
        self.access.refused()
    }
}

impl rdkafka::ClientContext for WatchedContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.access.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.access.error(&error, reason);
    }
}

/// The broker's own refusals: codes it answers with, not local failures.
fn kind_of_code(error: &KafkaError) -> Option<RefusalKind> {
    match error.rdkafka_error_code()? {
        RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::UnsupportedSASLMechanism => {
            Some(RefusalKind::Authentication)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_librdkafka_failures() {
        let auth = "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 5ms in state AUTH_REQ)";
        assert_eq!(classify(auth), Some(RefusalKind::Authentication));
        let mechanism = "sasl_ssl://127.0.0.1:9094/bootstrap: SASL SCRAM-SHA-256 mechanism handshake failed: Broker: Unsupported SASL mechanism: broker's supported mechanisms: SCRAM-SHA-512";
        assert_eq!(classify(mechanism), Some(RefusalKind::Authentication));
        let ca = "ssl://127.0.0.1:9095/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 3ms in state SSL_HANDSHAKE)";
        assert_eq!(classify(ca), Some(RefusalKind::Tls));
        let alert = "ssl://127.0.0.1:9095/bootstrap: Receive failed: error:0A000416:SSL routines::sslv3 alert certificate unknown: SSL alert number 46 (after 0ms in state APIVERSION_QUERY)";
        assert_eq!(classify(alert), Some(RefusalKind::Tls));
        // What a restarting broker or an identity-provider outage causes:
        // retried, not refusals.
        for transient in [
            "ssl://127.0.0.1:9095/bootstrap: Receive failed: error:0A000126:SSL routines::unexpected eof while reading (after 2ms in state UP)",
            "ssl://127.0.0.1:9095/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener? (after 1ms in state SSL_HANDSHAKE)",
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)",
            "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: SaslAuthenticateRequest failed: Local: Broker transport failure (after 12ms in state AUTH_REQ)",
            "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: SaslAuthenticateRequest failed: Local: Timed out (after 10003ms in state AUTH_REQ)",
            "sasl_ssl://127.0.0.1:9094/bootstrap: SASL SCRAM-SHA-512 mechanism handshake failed: Local: Broker transport failure",
            "Failed to acquire SASL OAUTHBEARER token: Failed to retrieve OIDC token from \"https://idp/token\": 503",
        ] {
            assert_eq!(classify(transient), None, "{transient}");
        }
    }

    #[test]
    fn only_the_brokers_refusal_codes_count() {
        let w = AccessWatch::default();
        w.error(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "Failed to initialize SASL authentication: SASL handshake failed (start (-4)): SASL(-4): no mechanism available",
        );
        assert!(
            w.refused().is_none(),
            "a local __AUTHENTICATION is not the broker's answer"
        );
        w.error(
            &KafkaError::Global(RDKafkaErrorCode::SaslAuthenticationFailed),
            "Broker: SASL Authentication failed",
        );
        let r = w.refused().expect("the broker's code 58 is a refusal");
        assert_eq!(r.kind(), RefusalKind::Authentication);
        assert!(r.to_string().contains("sasl.password"), "{r}");
    }

    #[test]
    fn secrets_are_scrubbed_from_what_librdkafka_reports() {
        let mut p = Properties::new();
        p.set("sasl.password", "pw-9f3e")
            .set("sasl.username", "alice");
        let w = AccessWatch::new([&p]);
        w.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "b: SASL authentication error: bad password pw-9f3e for alice",
        );
        let r = w.refused().unwrap();
        assert!(!r.reason().contains("pw-9f3e"), "{}", r.reason());
        assert!(r.reason().contains("alice"), "{}", r.reason());
    }

    #[test]
    fn a_waiter_parked_before_the_refusal_is_woken() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let w = Arc::new(AccessWatch::default());
        let waiter = {
            let w = w.clone();
            rt.spawn(async move { w.wait_refused().await })
        };
        // Let the waiter run until it parks on the notification.
        rt.block_on(async {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        });
        assert!(!waiter.is_finished());
        w.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "x: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
        );
        let got = rt.block_on(waiter).unwrap();
        assert_eq!(got.kind(), RefusalKind::Tls);
    }
}
