//! Refusals by the cluster that no retry can fix: credentials the broker
//! rejects and TLS handshakes that fail on a certificate.
//!
//! librdkafka retries both forever, logging each attempt; a consumer would
//! sit idle and a producer would hold each record until
//! `message.timeout.ms`. The runtime's clients watch what librdkafka
//! reports instead and stop with a [`ClusterRefused`] naming the cause:
//! [`Consumer::serve`](super::Consumer::serve) returns it (as the source of
//! its [`ConsumerError`](super::ConsumerError)) and
//! [`Producer::send`](super::Producer::send) fails with
//! [`ProduceError::Refused`](super::ProduceError::Refused).
//!
//! A disconnect during a handshake (a broker restarting) is not a refusal:
//! only an OpenSSL error or a TLS alert in the handshake, and a SASL
//! authentication error, are.

use std::fmt;
use std::sync::{Mutex, OnceLock};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

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
    /// (never a secret: librdkafka does not put credentials in it).
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
    if text.contains("SASL authentication error") || text.contains("Authentication failed") {
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

/// What one client has seen of refusals; shared by its librdkafka
/// callbacks (any thread) and its users.
#[derive(Default)]
pub(crate) struct AccessWatch {
    refused: OnceLock<ClusterRefused>,
    /// The last connection failure librdkafka logged, for an error event
    /// that carries only a code.
    last_failure: Mutex<Option<String>>,
    changed: tokio::sync::Notify,
}

impl AccessWatch {
    /// The refusal, once there is one.
    pub(crate) fn refused(&self) -> Option<&ClusterRefused> {
        self.refused.get()
    }

    /// Waits until the client is refused.
    pub(crate) async fn wait_refused(&self) -> ClusterRefused {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.refused.get() {
                return r.clone();
            }
            notified.await;
        }
    }

    fn refuse(&self, kind: RefusalKind, reason: &str) {
        let first = self
            .refused
            .set(ClusterRefused {
                kind,
                reason: reason.to_owned(),
            })
            .is_ok();
        if first {
            tracing::error!(reason, ?kind, "the Kafka cluster refused this client");
            self.changed.notify_waiters();
        }
    }

    /// librdkafka's log callback: forwards to `tracing` and watches
    /// connection failures.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
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
            if let Some(kind) = classify(message) {
                self.refuse(kind, message);
            } else {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(message.to_owned());
            }
        }
    }

    /// librdkafka's error callback (producers) with its reason text.
    pub(crate) fn error(&self, error: &KafkaError, reason: &str) {
        if let Some(kind) = classify(reason).or_else(|| kind_of_code(error)) {
            self.refuse(kind, reason);
        }
    }

    /// An error event a consumer polled, which carries only a code.
    pub(crate) fn consumer_error(&self, error: &KafkaError) {
        if self.refused.get().is_some() {
            return;
        }
        if let Some(kind) = kind_of_code(error) {
            let last = self
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match last.as_deref().and_then(|l| classify(l).map(|_| l)) {
                Some(text) => self.refuse(kind, text),
                // Authentication errors are refusals whatever the text;
                // a TLS error only with the handshake's reason.
                None if kind == RefusalKind::Authentication => {
                    self.refuse(kind, &last.unwrap_or_else(|| error.to_string()))
                }
                None => {}
            }
        }
    }
}

/// The rdkafka client context of the runtime's producers (the
/// [`Producer`](super::Producer) and the dead-letter producer): librdkafka's
/// logs go to `tracing` (target `librdkafka`), and a refusal by the cluster
/// is noticed (see the [module docs](self)).
#[derive(Clone, Default)]
pub struct WatchedContext {
    pub(crate) access: std::sync::Arc<AccessWatch>,
}

impl fmt::Debug for WatchedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedContext")
            .field("refused", &self.access.refused())
            .finish()
    }
}

impl WatchedContext {
    /// The refusal this client met, if any.
    pub fn refused(&self) -> Option<&ClusterRefused> {
        self.access.refused()
    }
}

impl rdkafka::ClientContext for WatchedContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.access.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", error = %error, "{reason}");
        self.access.error(&error, reason);
    }
}

fn kind_of_code(error: &KafkaError) -> Option<RefusalKind> {
    match error.rdkafka_error_code()? {
        RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::SaslAuthenticationFailed
        | RDKafkaErrorCode::UnsupportedSASLMechanism
        | RDKafkaErrorCode::IllegalSASLState => Some(RefusalKind::Authentication),
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
        let ca = "ssl://127.0.0.1:9095/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 3ms in state SSL_HANDSHAKE)";
        assert_eq!(classify(ca), Some(RefusalKind::Tls));
        let alert = "ssl://127.0.0.1:9095/bootstrap: Receive failed: error:0A000416:SSL routines::sslv3 alert certificate unknown: SSL alert number 46 (after 0ms in state APIVERSION_QUERY)";
        assert_eq!(classify(alert), Some(RefusalKind::Tls));
        let eof = "ssl://127.0.0.1:9095/bootstrap: Receive failed: error:0A000126:SSL routines::unexpected eof while reading (after 2ms in state UP)";
        assert_eq!(classify(eof), None);
        let restart = "ssl://127.0.0.1:9095/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener? (after 1ms in state SSL_HANDSHAKE)";
        assert_eq!(classify(restart), None);
        let down = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)";
        assert_eq!(classify(down), None);
    }

    #[test]
    fn a_consumer_error_code_uses_the_logged_reason() {
        let w = AccessWatch::default();
        w.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "b/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        );
        assert!(w.refused().is_none());
        w.consumer_error(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::Authentication,
        ));
        let r = w
            .refused()
            .expect("an authentication error code is a refusal");
        assert_eq!(r.kind(), RefusalKind::Authentication);
        assert!(r.to_string().contains("sasl.password"), "{r}");
    }

    #[test]
    fn the_first_refusal_is_kept_and_wakes_waiters() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let w = std::sync::Arc::new(AccessWatch::default());
        let waiter = {
            let w = w.clone();
            rt.spawn(async move { w.wait_refused().await })
        };
        w.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "x: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
        );
        w.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "x: SASL authentication error: Authentication failed",
        );
        let got = rt.block_on(waiter).unwrap();
        assert_eq!(got.kind(), RefusalKind::Tls);
        assert_eq!(w.refused().unwrap().kind(), RefusalKind::Tls);
    }
}
