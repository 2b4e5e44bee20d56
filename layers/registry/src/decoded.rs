//! What the layer puts in the request extensions: [`Decoded`] (the value)
//! and [`DecodedKey`] (the key).

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::schema::{RegisteredSchema, SchemaType};

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DecodedValue {
    /// An Avro datum, resolved into the reader schema when one is set.
    Avro(apache_avro::types::Value),
    /// A JSON document that passed its JSON Schema.
    Json(serde_json::Value),
}

/// A record's value decoded and validated with its writer schema from the
/// registry: a request extension set by
/// [`Registry`](crate::Registry). The key, when decoded, is a
/// [`DecodedKey`].
///
/// ```
/// # use kafka_tower_registry::Decoded;
/// # fn handler(req: http::Request<kafka_tower::RecordBody>) {
/// let decoded = req.extensions().get::<Decoded>().expect("the registry layer ran");
/// println!("schema id {} ({})", decoded.schema_id(), decoded.schema_type());
/// #[derive(serde::Deserialize)]
/// struct Order { id: String, total: f64 }
/// let order: Order = decoded.deserialize().expect("shape of the reader schema");
/// # }
/// ```
#[derive(Clone)]
pub struct Decoded {
    pub(crate) schema: Arc<RegisteredSchema>,
    pub(crate) subject: Option<Arc<str>>,
    pub(crate) version: Option<u32>,
    pub(crate) value: DecodedValue,
}

impl fmt::Debug for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value is record data; only its shape is shown.
        f.debug_struct("Decoded")
            .field("schema_id", &self.schema.id())
            .field("schema_type", &self.schema.schema_type())
            .field("subject", &self.subject)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why a decoded value does not convert into the type asked for.
#[derive(Debug)]
pub struct ConvertError(String);

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConvertError {}

impl Decoded {
    /// The writer's schema id (from the record's frame).
    pub fn schema_id(&self) -> u32 {
        self.schema.id()
    }

    /// The writer's schema.
    pub fn schema(&self) -> &Arc<RegisteredSchema> {
        &self.schema
    }

    /// The writer schema's format.
    pub fn schema_type(&self) -> SchemaType {
        self.schema.schema_type()
    }

    /// The subject the id was checked against, when the layer enforces
    /// subjects.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The writer schema's version under [`subject`](Self::subject).
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// The decoded value.
    pub fn value(&self) -> &DecodedValue {
        &self.value
    }

    /// The Avro datum, if the record was Avro.
    pub fn avro(&self) -> Option<&apache_avro::types::Value> {
        match &self.value {
            DecodedValue::Avro(v) => Some(v),
            DecodedValue::Json(_) => None,
        }
    }

    /// The value as JSON: a JSON record as it is, an Avro datum converted
    /// (records become objects, bytes arrays of numbers, unions their
    /// branch).
    pub fn to_json(&self) -> Result<serde_json::Value, ConvertError> {
        match &self.value {
            DecodedValue::Json(v) => Ok(v.clone()),
            DecodedValue::Avro(v) => serde_json::Value::try_from(v.clone())
                .map_err(|e| ConvertError(format!("Avro value as JSON: {e}"))),
        }
    }

    /// The value as a `T` (serde): Avro through `apache_avro::from_value`,
    /// JSON through `serde_json::from_value`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConvertError> {
        match &self.value {
            DecodedValue::Avro(v) => apache_avro::from_value(v)
                .map_err(|e| ConvertError(format!("Avro value as the requested type: {e}"))),
            DecodedValue::Json(v) => T::deserialize(v)
                .map_err(|e| ConvertError(format!("JSON value as the requested type: {e}"))),
        }
    }
}

/// A record's key decoded with its writer schema: the key's [`Decoded`],
/// as a distinct request extension.
#[derive(Debug, Clone)]
pub struct DecodedKey(pub Decoded);
