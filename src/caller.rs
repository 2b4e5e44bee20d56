//! See [`Caller`].

use std::sync::Arc;

/// [`Caller`]: who sent a request, as an authentication layer established
/// it — the common ground of authentication, metrics and audit.
///
/// An authentication layer (such as `kafka-tower-jwt`'s `JwtLayer`) inserts
/// a `Caller` into the request extensions; metrics label by its client id,
/// audit records its subject and client. Layers that read it need not
/// depend on the layer that wrote it.
///
/// ```
/// use kafka_tower::Caller;
///
/// let caller = Caller::new(Some("user-7"), Some("mobile-app"), None);
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(caller);
/// assert_eq!(req.extensions().get::<Caller>().and_then(Caller::client_id), Some("mobile-app"));
/// ```
///
/// The authenticated caller of a request. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Caller {
    subject: Option<Arc<str>>,
    client_id: Option<Arc<str>>,
    service_id: Option<Arc<str>>,
}

impl Caller {
    /// A caller with the given subject (user or principal), client id (the
    /// OAuth client) and service id (the calling service).
    pub fn new(subject: Option<&str>, client_id: Option<&str>, service_id: Option<&str>) -> Self {
        Caller {
            subject: subject.map(Arc::from),
            client_id: client_id.map(Arc::from),
            service_id: service_id.map(Arc::from),
        }
    }

    /// The user or principal (`sub` of a JWT).
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The client application the caller used.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The service that made the call on the caller's behalf.
    pub fn service_id(&self) -> Option<&str> {
        self.service_id.as_deref()
    }
}
