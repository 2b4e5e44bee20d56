//! Schemas: the registry's ([`RegisteredSchema`]) and the service's own
//! ([`LocalSchema`]).

use std::fmt;
use std::sync::Arc;

use kafka_tower_schema::JsonSchemaLayer;

use crate::error::RegistryError;

/// The format of a schema, as the registry's `schemaType` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SchemaType {
    /// Apache Avro (the registry's default when `schemaType` is absent).
    Avro,
    /// JSON Schema.
    Json,
    /// Protocol Buffers (recognised; decoding is not supported yet).
    Protobuf,
}

impl SchemaType {
    /// The registry's name: `AVRO`, `JSON` or `PROTOBUF`.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Json => "JSON",
            SchemaType::Protobuf => "PROTOBUF",
        }
    }

    /// Parses the registry's `schemaType`; absent means Avro.
    pub(crate) fn from_registry(name: Option<&str>) -> Option<SchemaType> {
        match name {
            None | Some("AVRO") | Some("") => Some(SchemaType::Avro),
            Some("JSON") => Some(SchemaType::Json),
            Some("PROTOBUF") => Some(SchemaType::Protobuf),
            Some(_) => None,
        }
    }
}

impl fmt::Display for SchemaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name the compiled JSON Schema validator is kept under.
pub(crate) const JSON_KEY: &str = "schema";

/// A compiled schema.
#[derive(Clone)]
pub(crate) enum Compiled {
    Avro(Arc<apache_avro::Schema>),
    Json(JsonSchemaLayer),
    Protobuf,
}

/// A schema as the registry holds it under an id: immutable, so it is
/// fetched once and cached for the life of the client.
#[derive(Clone)]
pub struct RegisteredSchema {
    id: u32,
    text: Arc<str>,
    name: Option<Arc<str>>,
    pub(crate) recursive: bool,
    pub(crate) compiled: Compiled,
}

impl fmt::Debug for RegisteredSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredSchema")
            .field("id", &self.id)
            .field("type", &self.schema_type())
            .finish_non_exhaustive()
    }
}

impl RegisteredSchema {
    /// Parses and compiles the registry's answer for `id`.
    pub(crate) fn compile(
        id: u32,
        schema_type: SchemaType,
        text: &str,
    ) -> Result<RegisteredSchema, RegistryError> {
        let unusable = |detail: String| RegistryError::Unusable { id, detail };
        let compiled = match schema_type {
            SchemaType::Avro => Compiled::Avro(Arc::new(
                apache_avro::Schema::parse_str(text)
                    .map_err(|e| unusable(format!("invalid Avro schema: {e}")))?,
            )),
            SchemaType::Json => Compiled::Json(compile_json(text).map_err(unusable)?),
            SchemaType::Protobuf => Compiled::Protobuf,
        };
        Ok(RegisteredSchema {
            id,
            text: text.into(),
            name: name_of(&compiled, text).map(Arc::from),
            recursive: is_recursive(&compiled),
            compiled,
        })
    }

    /// The schema id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The format.
    pub fn schema_type(&self) -> SchemaType {
        match self.compiled {
            Compiled::Avro(_) => SchemaType::Avro,
            Compiled::Json(_) => SchemaType::Json,
            Compiled::Protobuf => SchemaType::Protobuf,
        }
    }

    /// The schema text as registered.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed Avro schema, if this is one.
    pub fn avro(&self) -> Option<&apache_avro::Schema> {
        match &self.compiled {
            Compiled::Avro(s) => Some(s),
            _ => None,
        }
    }

    /// The Avro full name of a named Avro schema (a record, enum or fixed),
    /// the `title` of a JSON Schema: what the record-name subject
    /// strategies use.
    pub fn record_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// The Avro full name, or a JSON Schema's `title`.
fn name_of(compiled: &Compiled, text: &str) -> Option<String> {
    match compiled {
        Compiled::Avro(s) => s.name().map(|n| n.fullname(None)),
        Compiled::Json(_) => serde_json::from_str::<serde_json::Value>(text)
            .ok()?
            .get("title")?
            .as_str()
            .map(str::to_owned),
        Compiled::Protobuf => None,
    }
}

/// Whether an Avro schema refers to a named type from inside it (a linked
/// list, a tree): its data can nest as deep as its bytes allow.
fn is_recursive(compiled: &Compiled) -> bool {
    use apache_avro::Schema as S;
    fn walk<'a>(
        s: &'a apache_avro::Schema,
        enclosing: &mut Vec<&'a apache_avro::schema::Name>,
    ) -> bool {
        match s {
            S::Ref { name } => enclosing
                .iter()
                .any(|n| n.fullname(None) == name.fullname(None)),
            S::Record(r) => {
                enclosing.push(&r.name);
                let found = r.fields.iter().any(|f| walk(&f.schema, enclosing));
                enclosing.pop();
                found
            }
            S::Array(a) => walk(&a.items, enclosing),
            S::Map(m) => walk(&m.types, enclosing),
            S::Union(u) => u.variants().iter().any(|v| walk(v, enclosing)),
            _ => false,
        }
    }
    match compiled {
        Compiled::Avro(s) => walk(s, &mut Vec::new()),
        _ => false,
    }
}

fn compile_json(text: &str) -> Result<JsonSchemaLayer, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("JSON Schema is not JSON: {e}"))?;
    JsonSchemaLayer::builder()
        .schema(JSON_KEY, value)
        .build()
        .map_err(|e| format!("invalid JSON Schema: {e}"))
}

/// A schema the service holds itself: the reader schema a consumer
/// decodes into, or the writer schema a producer encodes with.
///
/// ```
/// use kafka_tower_registry::LocalSchema;
///
/// let order = LocalSchema::avro(r#"{"type":"record","name":"Order","namespace":"shop",
///     "fields":[{"name":"id","type":"string"}]}"#)?;
/// assert_eq!(order.record_name(), Some("shop.Order"));
/// assert!(LocalSchema::avro("{").is_err());
/// # Ok::<(), kafka_tower_registry::SchemaError>(())
/// ```
#[derive(Clone)]
pub struct LocalSchema {
    pub(crate) schema_type: SchemaType,
    pub(crate) text: Arc<str>,
    name: Option<Arc<str>>,
    pub(crate) compiled: Compiled,
}

impl fmt::Debug for LocalSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSchema")
            .field("type", &self.schema_type)
            .field("name", &self.record_name())
            .finish_non_exhaustive()
    }
}

/// A local schema that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SchemaError {}

impl LocalSchema {
    /// An Avro schema from its JSON text.
    pub fn avro(text: &str) -> Result<LocalSchema, SchemaError> {
        let schema = apache_avro::Schema::parse_str(text).map_err(|e| SchemaError {
            message: format!("invalid Avro schema: {e}"),
        })?;
        // Sent as given: the parsing canonical form would drop defaults,
        // which compatibility checks need. Registries dedup by canonical
        // form themselves.
        let compiled = Compiled::Avro(Arc::new(schema));
        Ok(LocalSchema {
            schema_type: SchemaType::Avro,
            text: text.trim().into(),
            name: name_of(&compiled, text).map(Arc::from),
            compiled,
        })
    }

    /// A JSON Schema document.
    pub fn json(schema: &serde_json::Value) -> Result<LocalSchema, SchemaError> {
        let text = schema.to_string();
        let compiled =
            Compiled::Json(compile_json(&text).map_err(|message| SchemaError { message })?);
        Ok(LocalSchema {
            schema_type: SchemaType::Json,
            name: name_of(&compiled, &text).map(Arc::from),
            text: text.into(),
            compiled,
        })
    }

    /// The format.
    pub fn schema_type(&self) -> SchemaType {
        self.schema_type
    }

    /// Encodes a serde value with this schema, without the frame: Avro
    /// binary, or JSON checked against the JSON Schema. Frame it with the
    /// schema's id ([`wire::frame`](crate::wire::frame)), or let an
    /// [`Encoder`](crate::Encoder) find the id and frame it.
    ///
    /// ```
    /// use kafka_tower_registry::{wire, LocalSchema};
    ///
    /// let schema = LocalSchema::avro(r#"{"type":"record","name":"T","fields":[{"name":"n","type":"int"}]}"#)?;
    /// let body = schema.encode(&serde_json::json!({"n": 3}))?;
    /// assert_eq!(body, [6]); // zig-zag 3
    /// assert!(schema.encode(&serde_json::json!({"n": "three"})).is_err());
    /// let framed = wire::frame(7, &body);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, crate::EncodeError> {
        crate::encode::encode_body(self, value)
    }

    /// The text sent to the registry.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed Avro schema, if this is one.
    pub fn avro_schema(&self) -> Option<&apache_avro::Schema> {
        match &self.compiled {
            Compiled::Avro(s) => Some(s),
            _ => None,
        }
    }

    /// The Avro full name, or a JSON Schema's `title`.
    pub fn record_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}
