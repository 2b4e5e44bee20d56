//! The startup compatibility check: can the service's local schemas read
//! what the registry says the topics are written with?

use std::fmt;

use apache_avro::error::CompatibilityError;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

use crate::client::{CompatibilityLevel, RegistryClient};
use crate::error::RegistryError;
use crate::layer::RegistryLayer;
use crate::schema::{Compiled, LocalSchema};

/// A local reader schema that cannot read a registered version.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Incompatibility {
    /// The subject.
    pub subject: String,
    /// The subject's compatibility rule (for the message: the check is
    /// the same under every rule).
    pub level: CompatibilityLevel,
    /// The registered version the local schema cannot read.
    pub version: u32,
    /// Its schema id.
    pub id: u32,
    /// The path of the first incompatible field (`customer.address.zip`),
    /// empty when the schemas differ at the top.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject {} ({}): the local schema cannot read data written with version {} (id {})",
            self.subject, self.level, self.version, self.id
        )?;
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Why the startup check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckError {
    /// The registry could not answer (or has no such subject).
    Registry {
        /// The subject being checked.
        subject: String,
        /// The failure.
        error: RegistryError,
    },
    /// A local schema does not fit.
    Incompatible(Incompatibility),
    /// The registry's own check (formats without a local checker, e.g. JSON
    /// Schema) refused the local schema.
    Refused {
        /// The subject.
        subject: String,
        /// The registry's reasons.
        messages: Vec<String>,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Registry { subject, error } => write!(f, "subject {subject}: {error}"),
            CheckError::Incompatible(i) => write!(f, "{i}"),
            CheckError::Refused { subject, messages } => write!(
                f,
                "subject {subject}: the registry finds the local schema incompatible: {}",
                messages.join("; ")
            ),
        }
    }
}

impl std::error::Error for CheckError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckError::Registry { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The path and reason of an Avro incompatibility.
fn explain(e: &CompatibilityError) -> (String, String) {
    let mut path = Vec::new();
    let mut e = e;
    loop {
        match e {
            CompatibilityError::FieldTypeMismatch(name, inner) => {
                path.push(name.clone());
                e = inner;
            }
            CompatibilityError::MissingDefaultValue(name) => {
                path.push(name.clone());
                return (
                    path.join("."),
                    "the field is not in the writer's schema and has no default".into(),
                );
            }
            other => return (path.join("."), other.to_string()),
        }
    }
}

/// Whether an Avro `reader` reads everything `writer` writes: only a full
/// `can_read` counts.
pub(crate) fn avro_reads(
    writer: &apache_avro::Schema,
    reader: &apache_avro::Schema,
) -> Result<(), (String, String)> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err((
            String::new(),
            "only partly compatible (some enum symbols or union branches of the writer are unknown to the reader)".into(),
        )),
        Err(e) => Err(explain(&e)),
    }
}

/// Checks that `local`, a consumer's reader schema, reads every version
/// registered under `subject`: a topic still holds records of old versions,
/// so the subject's rule (transitive or not, backward or forward) does not
/// narrow what a reader must read.
///
/// Avro is checked here with apache-avro's checker — only a full
/// `can_read` counts — naming the first incompatible field; other formats
/// are asked to the registry's compatibility endpoint.
pub async fn check_schema(
    client: &RegistryClient,
    subject: &str,
    local: &LocalSchema,
) -> Result<(), CheckError> {
    let registry = |error| CheckError::Registry {
        subject: subject.to_owned(),
        error,
    };
    let Compiled::Avro(local_avro) = &local.compiled else {
        let report = client
            .test_compatibility(subject, local)
            .await
            .map_err(registry)?;
        return if report.compatible {
            Ok(())
        } else {
            Err(CheckError::Refused {
                subject: subject.to_owned(),
                messages: report.messages,
            })
        };
    };
    let level = client
        .compatibility_level(subject)
        .await
        .map_err(registry)?;
    for number in client.versions(subject).await.map_err(registry)? {
        let v = client.version(subject, number).await.map_err(registry)?;
        let Some(registered) = v.schema.avro() else {
            return Err(CheckError::Refused {
                subject: subject.to_owned(),
                messages: vec![format!(
                    "version {} is {}, the local schema is Avro",
                    v.version,
                    v.schema.schema_type()
                )],
            });
        };
        avro_reads(registered, local_avro).map_err(|(field, reason)| {
            CheckError::Incompatible(Incompatibility {
                subject: subject.to_owned(),
                level,
                version: v.version,
                id: v.id,
                field,
                reason,
            })
        })?;
    }
    Ok(())
}

impl RegistryLayer {
    /// The startup check of every reader schema the layer was given (see
    /// [`check_schema`]), under the subjects of the layer's strategy. Call
    /// it before serving: a service whose reader schema cannot read what
    /// producers register stops at start with a message naming the subject,
    /// the version and the first incompatible field, instead of
    /// dead-lettering every record.
    pub async fn check_compatibility(&self) -> Result<(), CheckError> {
        let config = &self.inner;
        for (topic, part, reader) in config.parts() {
            let Some(reader) = reader else { continue };
            let Some(subject) = config.strategy().subject(topic, part, reader.record_name()) else {
                return Err(CheckError::Refused {
                    subject: format!("{topic}-{part}"),
                    messages: vec![format!(
                        "the {:?} strategy needs a named reader schema",
                        config.strategy()
                    )],
                });
            };
            check_schema(&config.client, &subject, reader).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avro(text: &str) -> apache_avro::Schema {
        apache_avro::Schema::parse_str(text).unwrap()
    }

    #[test]
    fn names_the_first_incompatible_field() {
        let v1 = avro(
            r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},
            {"name":"customer","type":{"type":"record","name":"Customer","fields":[{"name":"name","type":"string"}]}}]}"#,
        );
        let no_default = avro(
            r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},
            {"name":"customer","type":{"type":"record","name":"Customer","fields":[{"name":"name","type":"string"},
            {"name":"tier","type":"int"}]}}]}"#,
        );
        let (field, reason) = avro_reads(&v1, &no_default).unwrap_err();
        assert_eq!(field, "customer.tier");
        assert!(reason.contains("no default"), "{reason}");
        let with_default = avro(
            r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},
            {"name":"customer","type":{"type":"record","name":"Customer","fields":[{"name":"name","type":"string"},
            {"name":"tier","type":"int","default":0}]}}]}"#,
        );
        assert_eq!(avro_reads(&v1, &with_default), Ok(()));
        let retyped = avro(
            r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"int"},
            {"name":"customer","type":{"type":"record","name":"Customer","fields":[{"name":"name","type":"string"}]}}]}"#,
        );
        let (field, _) = avro_reads(&v1, &retyped).unwrap_err();
        assert_eq!(field, "id");
    }
}
