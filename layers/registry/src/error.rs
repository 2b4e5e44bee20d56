//! [`RegistryError`]: what a call to the registry can fail with.

use std::fmt;

/// A failed call to the schema registry, or a schema it returned that
/// cannot be used. The message names the operation (`GET /schemas/ids/7`)
/// and never contains credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached or answered a server error (a
    /// refused connection, a timeout, `5xx`, `429`), after the configured
    /// retries. Retryable: the layer answers `503`.
    Unavailable {
        /// The operation, e.g. `GET /schemas/ids/7`.
        operation: String,
        /// What went wrong.
        detail: String,
    },
    /// `404`: no such schema id, subject or version.
    NotFound {
        /// The operation.
        operation: String,
        /// The registry's `error_code` (`40401` subject, `40402` version,
        /// `40403` schema), or `404` when it gave none.
        code: u32,
        /// The registry's message.
        message: String,
    },
    /// `409`: the schema is incompatible with the subject's earlier
    /// versions under its compatibility rule.
    Incompatible {
        /// The subject.
        subject: String,
        /// The registry's explanation(s).
        messages: Vec<String>,
    },
    /// `422`: the registry refused the schema itself (invalid schema,
    /// invalid compatibility level, …).
    Invalid {
        /// The operation.
        operation: String,
        /// The registry's message.
        message: String,
    },
    /// Another `4xx` (e.g. `401`/`403`: wrong or missing credentials).
    Refused {
        /// The operation.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The registry answered something that is not its documented API.
    Protocol {
        /// The operation.
        operation: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The client's configuration is unusable: the URL, a CA certificate.
    Config(String),
    /// A schema from the registry that cannot be used here: it does not
    /// parse, it has references, or its type is not supported.
    Unusable {
        /// The schema id.
        id: u32,
        /// Why.
        detail: String,
    },
}

impl RegistryError {
    /// Whether trying again later may succeed (the registry was
    /// unavailable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }

    /// Whether this says the registry has no schema with the id asked for
    /// (`404` with `error_code` `40403`): the record's fault, not the
    /// registry's. Any other `404` (a wrong base path, a proxy's default
    /// page) is not.
    pub fn is_unknown_schema(&self) -> bool {
        self.is_not_found(40403)
    }

    /// Whether this is a `404` with the given registry `error_code`
    /// (`40401` subject, `40402` version, `40403` schema not found).
    pub fn is_not_found(&self, code: u32) -> bool {
        matches!(self, RegistryError::NotFound { code: c, .. } if *c == code)
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Unavailable { operation, detail } => {
                write!(f, "schema registry unavailable: {operation}: {detail}")
            }
            RegistryError::NotFound {
                operation,
                code,
                message,
            } => write!(f, "{operation}: not found ({code}): {message}"),
            RegistryError::Incompatible { subject, messages } => {
                write!(f, "schema incompatible with subject {subject}")?;
                for m in messages {
                    write!(f, "; {m}")?;
                }
                Ok(())
            }
            RegistryError::Invalid { operation, message } => {
                write!(f, "{operation}: refused as invalid: {message}")
            }
            RegistryError::Refused {
                operation,
                status,
                message,
            } => write!(f, "{operation}: refused with status {status}: {message}"),
            RegistryError::Protocol { operation, detail } => {
                write!(f, "{operation}: unexpected answer: {detail}")
            }
            RegistryError::Config(m) => write!(f, "schema registry client: {m}"),
            RegistryError::Unusable { id, detail } => {
                write!(f, "schema id {id} cannot be used: {detail}")
            }
        }
    }
}

impl std::error::Error for RegistryError {}
