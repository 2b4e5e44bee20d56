//! [`Encoder`]: the producing side — values encoded with a registered
//! schema and framed in the wire format.

use std::fmt;

use apache_avro::writer::datum::GenericDatumWriter;
use bytes::Bytes;
use kafka_tower::mapping::OutgoingRecord;
use serde::Serialize;

use crate::client::RegistryClient;
use crate::error::RegistryError;
use crate::layer::avro_message;
use crate::schema::{Compiled, LocalSchema, JSON_KEY};
use crate::subject::{Part, SubjectNameStrategy};
use crate::wire;

/// Why a value was not encoded. Nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The registry refused or could not be reached (registration,
    /// lookup). [`RegistryError::Incompatible`] when the schema breaks the
    /// subject's compatibility rule; [`RegistryError::NotFound`] when
    /// auto-registration is off and the schema is not registered.
    Registry(RegistryError),
    /// The subject strategy needs a named schema and this one has no name.
    NoSubject(String),
    /// The value does not fit the schema (the message says where).
    Value(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Registry(e) => write!(f, "{e}"),
            EncodeError::NoSubject(m) => write!(f, "no subject: {m}"),
            EncodeError::Value(m) => write!(f, "value does not fit the schema: {m}"),
        }
    }
}

impl std::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EncodeError::Registry(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RegistryError> for EncodeError {
    fn from(e: RegistryError) -> Self {
        EncodeError::Registry(e)
    }
}

/// Encodes values with a schema registered under their topic's subject and
/// frames them (magic byte `0`, schema id, body): what Confluent's
/// serializers write, readable by any of their deserializers.
///
/// The schema's id is found once per subject and schema (registration and
/// lookup are cached by the client). With [`auto_register`]
/// (off by default, as production registries are usually managed by CI),
/// an unregistered schema is registered — and refused with
/// [`RegistryError::Incompatible`] if it breaks the subject's rule.
///
/// [`auto_register`]: EncoderBuilder::auto_register
///
/// ```no_run
/// use kafka_tower_registry::{Encoder, LocalSchema, Part, RegistryClient};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// #[derive(serde::Serialize)]
/// struct Order { id: String, total: f64 }
///
/// let client = RegistryClient::builder("http://localhost:8081").build()?;
/// let schema = LocalSchema::avro(r#"{"type":"record","name":"Order","fields":[
///     {"name":"id","type":"string"},{"name":"total","type":"double"}]}"#)?;
/// let encoder = Encoder::builder(client).build();
/// let payload = encoder
///     .encode("orders", Part::Value, &schema, &Order { id: "o-1".into(), total: 9.5 })
///     .await?;
/// assert_eq!(payload[0], 0); // the magic byte
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Encoder {
    client: RegistryClient,
    strategy: SubjectNameStrategy,
    auto_register: bool,
}

/// Builds an [`Encoder`].
#[derive(Debug)]
pub struct EncoderBuilder {
    client: RegistryClient,
    strategy: SubjectNameStrategy,
    auto_register: bool,
}

impl EncoderBuilder {
    /// How subjects are named (default `TopicName`).
    pub fn subject_strategy(mut self, strategy: SubjectNameStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Registers a schema that is not yet registered under its subject
    /// (default off: the schema must already be registered).
    pub fn auto_register(mut self, register: bool) -> Self {
        self.auto_register = register;
        self
    }

    /// The encoder.
    pub fn build(self) -> Encoder {
        Encoder {
            client: self.client,
            strategy: self.strategy,
            auto_register: self.auto_register,
        }
    }
}

impl Encoder {
    /// Starts a configuration using `client`.
    pub fn builder(client: RegistryClient) -> EncoderBuilder {
        EncoderBuilder {
            client,
            strategy: SubjectNameStrategy::TopicName,
            auto_register: false,
        }
    }

    /// The subject `schema` is registered under for `topic`'s `part`.
    pub fn subject(
        &self,
        topic: &str,
        part: Part,
        schema: &LocalSchema,
    ) -> Result<String, EncodeError> {
        self.strategy
            .subject(topic, part, schema.record_name())
            .ok_or_else(|| {
                EncodeError::NoSubject(format!(
                    "the {:?} strategy needs a named schema",
                    self.strategy
                ))
            })
    }

    /// The id of `schema` under `topic`'s `part` subject: registered (with
    /// auto-registration) or looked up, once.
    pub async fn schema_id(
        &self,
        topic: &str,
        part: Part,
        schema: &LocalSchema,
    ) -> Result<u32, EncodeError> {
        let subject = self.subject(topic, part, schema)?;
        Ok(if self.auto_register {
            self.client.register(&subject, schema).await?
        } else {
            self.client.lookup(&subject, schema).await?.id
        })
    }

    /// Encodes a serde value with `schema` and frames it.
    pub async fn encode<T: Serialize>(
        &self,
        topic: &str,
        part: Part,
        schema: &LocalSchema,
        value: &T,
    ) -> Result<Bytes, EncodeError> {
        let body = encode_body(schema, value)?;
        let id = self.schema_id(topic, part, schema).await?;
        Ok(wire::frame(id, &body))
    }

    /// Encodes an Avro datum with `schema` and frames it.
    pub async fn encode_avro(
        &self,
        topic: &str,
        part: Part,
        schema: &LocalSchema,
        value: apache_avro::types::Value,
    ) -> Result<Bytes, EncodeError> {
        let Compiled::Avro(s) = &schema.compiled else {
            return Err(EncodeError::Value("the schema is not Avro".into()));
        };
        let body = avro_datum(s, value)?;
        let id = self.schema_id(topic, part, schema).await?;
        Ok(wire::frame(id, &body))
    }

    /// Encodes `value` as `record`'s payload, with `record.topic`'s value
    /// subject.
    pub async fn encode_payload<T: Serialize>(
        &self,
        record: &mut OutgoingRecord,
        schema: &LocalSchema,
        value: &T,
    ) -> Result<(), EncodeError> {
        let bytes = self
            .encode(&record.topic, Part::Value, schema, value)
            .await?;
        record.payload = Some(bytes);
        Ok(())
    }

    /// Encodes `key` as `record`'s key, with `record.topic`'s key subject.
    pub async fn encode_key<T: Serialize>(
        &self,
        record: &mut OutgoingRecord,
        schema: &LocalSchema,
        key: &T,
    ) -> Result<(), EncodeError> {
        let bytes = self.encode(&record.topic, Part::Key, schema, key).await?;
        record.key = Some(bytes);
        Ok(())
    }
}

fn avro_datum(
    schema: &apache_avro::Schema,
    value: apache_avro::types::Value,
) -> Result<Vec<u8>, EncodeError> {
    let value = value
        .resolve(schema)
        .map_err(|e| EncodeError::Value(avro_message(&e)))?;
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| EncodeError::Value(avro_message(&e)))
}

/// The body (without frame) of `value` encoded with `schema`.
pub(crate) fn encode_body<T: Serialize>(
    schema: &LocalSchema,
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    match &schema.compiled {
        Compiled::Avro(s) => {
            let direct = GenericDatumWriter::builder(s)
                .build()
                .and_then(|w| w.write_ser_to_vec(value));
            match direct {
                Ok(body) => Ok(body),
                // The schema-aware serializer takes the value's serde types
                // literally: a `u64` (every positive number of a
                // `serde_json::Value`) is not an Avro `int` or `long` to it.
                // Through JSON, numbers, strings and objects resolve into
                // the schema's types (int, long, enum, record, …).
                Err(first) => serde_json::to_value(value)
                    .ok()
                    .and_then(|json| apache_avro::types::Value::try_from(json).ok())
                    .and_then(|v| avro_datum(s, v).ok())
                    .ok_or_else(|| EncodeError::Value(avro_message(&first))),
            }
        }
        Compiled::Json(validator) => {
            let v = serde_json::to_value(value).map_err(|e| EncodeError::Value(e.to_string()))?;
            validator
                .validate_value(JSON_KEY, &v)
                .map_err(|e| EncodeError::Value(e.summary(1024)))?;
            serde_json::to_vec(&v).map_err(|e| EncodeError::Value(e.to_string()))
        }
        Compiled::Protobuf => Err(EncodeError::Value(
            "Protobuf is not encoded by this version".into(),
        )),
    }
}
