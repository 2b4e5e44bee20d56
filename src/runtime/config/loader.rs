//! The loader every configuration of the runtime shares: YAML or TOML
//! text, then `KAFKA_TOWER_*` environment overrides, deserialised with the
//! key path in errors; and the librdkafka [`Properties`] map that never
//! prints a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The prefix of environment variables that override consumer configuration.
pub const ENV_PREFIX: &str = "KAFKA_TOWER_";

/// The prefix of environment variables that override producer configuration.
pub const PRODUCER_ENV_PREFIX: &str = "KAFKA_TOWER_PRODUCER_";

/// Variables under the `KAFKA_TOWER_` prefix that the project's scripts,
/// test kit and benches read for themselves: the configuration loaders
/// ignore them, so setting one never breaks a consumer or producer that
/// loads its configuration from a file and the environment.
///
/// ```
/// use kafka_tower::runtime::ConsumerConfig;
///
/// let yaml = "group_id: g\ntopics: [orders]\nproperties:\n  bootstrap.servers: 127.0.0.1:9092\n";
/// let env = [("KAFKA_TOWER_BROKER_DIR", "/var/lib/kafka-test")];
/// let config = ConsumerConfig::from_yaml_str(yaml, "consumer.yml", env).unwrap();
/// assert_eq!(config.group_id, "g");
/// ```
pub const TOOLING_ENV_VARS: &[&str] = &["KAFKA_TOWER_BROKER_DIR"];

/// A librdkafka property value. Files may write numbers and booleans
/// unquoted; librdkafka receives them as strings.
#[derive(Clone, PartialEq, Eq)]
pub struct PropertyValue(pub String);

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(PropertyValue(s)),
            Value::Number(n) => Ok(PropertyValue(n.to_string())),
            Value::Bool(b) => Ok(PropertyValue(b.to_string())),
            // The value itself is not echoed: it may be a secret.
            Value::Null => Err(serde::de::Error::custom(
                "expected a string, number or boolean, found null",
            )),
            Value::Array(_) => Err(serde::de::Error::custom(
                "expected a string, number or boolean, found a list",
            )),
            Value::Object(_) => Err(serde::de::Error::custom(
                "expected a string, number or boolean, found a map (in TOML, quote a property name with dots)",
            )),
        }
    }
}

impl fmt::Debug for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<&str> for PropertyValue {
    fn from(s: &str) -> Self {
        PropertyValue(s.to_owned())
    }
}

impl From<String> for PropertyValue {
    fn from(s: String) -> Self {
        PropertyValue(s)
    }
}

/// A map of librdkafka properties (name → value), as every configuration
/// of the runtime holds them: consumer, producer, dead-letter producer,
/// streams, audit sink.
///
/// Its `Debug` prints `<redacted>` for every property whose name looks
/// secret ([`is_secret_property`]: `password`, `secret`, `key`, `token`,
/// `jaas`), and [`Properties::redact`] removes those values from any text
/// (librdkafka's error messages may quote a value), so a configuration
/// can be logged whole.
///
/// ```
/// use kafka_tower::runtime::Properties;
///
/// let mut p = Properties::new();
/// p.set("sasl.username", "svc-orders")
///     .set("sasl.password", "hunter2-hunter2");
/// let shown = format!("{p:?}");
/// assert!(shown.contains("svc-orders"));
/// assert!(!shown.contains("hunter2"));
/// assert_eq!(p.get_str("sasl.password"), Some("hunter2-hunter2"));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Properties(BTreeMap<String, PropertyValue>);

impl Properties {
    /// No properties.
    pub fn new() -> Self {
        Properties(BTreeMap::new())
    }

    /// Sets a property, returning the value it replaces (as
    /// `BTreeMap::insert`, which this map replaces in the configuration
    /// types).
    pub fn insert(&mut self, name: String, value: PropertyValue) -> Option<PropertyValue> {
        self.0.insert(name, value)
    }

    /// Sets a property.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<PropertyValue>) -> &mut Self {
        self.0.insert(name.into(), value.into());
        self
    }

    /// A property's value.
    pub fn get(&self, name: &str) -> Option<&PropertyValue> {
        self.0.get(name)
    }

    /// A property's value as text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.0.as_str())
    }

    /// Whether the property is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Removes a property, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<PropertyValue> {
        self.0.remove(name)
    }

    /// The properties, by name.
    pub fn iter(&self) -> std::collections::btree_map::Iter<'_, String, PropertyValue> {
        self.0.iter()
    }

    /// How many properties are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with the value of every secret-looking property replaced by
    /// `<redacted>`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (k, v) in &self.0 {
            if is_secret_property(k) && !v.0.is_empty() && out.contains(v.0.as_str()) {
                out = out.replace(v.0.as_str(), "<redacted>");
            }
        }
        out
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown: &dyn fmt::Debug = if is_secret_property(k) {
                    &"<redacted>"
                } else {
                    &v.0
                };
                (k, shown)
            }))
            .finish()
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a PropertyValue);
    type IntoIter = std::collections::btree_map::Iter<'a, String, PropertyValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Properties {
    type Item = (String, PropertyValue);
    type IntoIter = std::collections::btree_map::IntoIter<String, PropertyValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<K: Into<String>, V: Into<PropertyValue>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Properties(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<PropertyValue>> Extend<(K, V)> for Properties {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.0
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

impl From<BTreeMap<String, PropertyValue>> for Properties {
    fn from(map: BTreeMap<String, PropertyValue>) -> Self {
        Properties(map)
    }
}

/// Applies one `KAFKA_TOWER_*` variable (prefix removed) to the parsed
/// file. Segments separated by `__` walk nested maps; after a `properties`
/// or `producer_properties` segment the rest is a librdkafka property name
/// (lower-cased, `_` → `.`); `topics` takes a comma-separated list.
///
/// Any other value goes in as a string; [`load`] retypes it as a number or
/// boolean only if the field needs one, so that `KAFKA_TOWER_GROUP_ID=2024`
/// is the group "2024". Returns the segments of the field set that way.
fn apply_env(
    root: &mut Value,
    rest: &str,
    raw: &str,
    fields: &[&str],
) -> Result<Option<Vec<String>>, String> {
    let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(String::is_empty) {
        return Err("empty name segment".into());
    }
    if !fields.contains(&segments[0].as_str()) {
        return Err(format!(
            "`{}` names no configuration field",
            segments.join(".")
        ));
    }
    let mut node = root;
    let mut i = 0;
    loop {
        let seg = &segments[i];
        let obj = node
            .as_object_mut()
            .ok_or_else(|| format!("`{}` is not a map", segments[..i].join(".")))?;
        let last = i + 1 == segments.len();
        if (seg == "properties" || seg == "producer_properties") && !last {
            let prop = segments[i + 1..].join("_").replace('_', ".");
            let props = obj
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            props
                .as_object_mut()
                .ok_or_else(|| format!("`{seg}` is not a map"))?
                .insert(prop, Value::String(raw.to_owned()));
            return Ok(None);
        }
        if last {
            if seg == "topics" {
                let topics = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect();
                obj.insert(seg.clone(), Value::Array(topics));
                return Ok(None);
            }
            obj.insert(seg.clone(), Value::String(raw.to_owned()));
            return Ok(Some(segments));
        }
        node = obj
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Default::default()));
        i += 1;
    }
}

/// Parses YAML or TOML (by `kind`), applies the environment, deserializes
/// with key paths in errors. Unknown env fields are checked against `fields`.
pub(crate) fn load<T: serde::de::DeserializeOwned, K: AsRef<str>, V: AsRef<str>>(
    mut value: Value,
    origin: &str,
    env: impl IntoIterator<Item = (K, V)>,
    prefix: &str,
    fields: &[&str],
) -> Result<T, ConfigError> {
    if value.is_null() {
        value = Value::Object(Default::default());
    }
    let mut env_origin = None;
    // (field segments, raw value, variable, retyped) of the scalar fields set
    // by variables.
    let mut from_env: Vec<(Vec<String>, String, String, bool)> = Vec::new();
    for (k, v) in env {
        let k = k.as_ref();
        if TOOLING_ENV_VARS.contains(&k) {
            continue;
        }
        let Some(rest) = k.strip_prefix(prefix) else {
            continue;
        };
        let set = apply_env(&mut value, rest, v.as_ref(), fields)
            .map_err(|msg| ConfigError::new(&format!("environment variable {k}"), None, msg))?;
        if let Some(segments) = set {
            from_env.retain(|(s, ..)| *s != segments);
            from_env.push((segments, v.as_ref().to_owned(), k.to_owned(), false));
        }
        env_origin.get_or_insert_with(|| format!("{origin} (with {prefix}* overrides)"));
    }
    let origin = env_origin.as_deref().unwrap_or(origin);
    loop {
        let e = match serde_path_to_error::deserialize(&value) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        let path = e.path().to_string();
        if let Some((segments, raw, name, retyped)) = from_env
            .iter_mut()
            .find(|(segments, ..)| segments.join(".") == path)
        {
            // A variable's value is a string unless the field wants a number
            // or a boolean: retype it once and try again.
            let typed = scalar(raw);
            if !*retyped && !typed.is_string() {
                *retyped = true;
                let slot = segments
                    .iter()
                    .try_fold(&mut value, |node, seg| node.get_mut(seg.as_str()))
                    .expect("set by apply_env");
                *slot = typed;
                continue;
            }
            // The variable's own field is wrong (unknown, or a bad value):
            // name the variable.
            return Err(ConfigError::new(
                &format!("environment variable {name}"),
                Some(path),
                e.into_inner().to_string(),
            ));
        }
        let key = (path != ".").then_some(path);
        return Err(ConfigError::new(origin, key, e.into_inner().to_string()));
    }
}

/// Reads a `.yml` / `.yaml` / `.toml` file into a JSON value.
pub(crate) fn read_file(path: &Path) -> Result<(Value, String), ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(&origin, None, format!("cannot read the file: {e}")))?;
    let value = match path.extension().and_then(|e| e.to_str()) {
        Some("yml" | "yaml") => parse_yaml(&text, &origin)?,
        Some("toml") => parse_toml(&text, &origin)?,
        _ => {
            return Err(ConfigError::new(
                &origin,
                None,
                "unknown file type: expected a .yml, .yaml or .toml extension",
            ))
        }
    };
    Ok((value, origin))
}

pub(crate) fn parse_yaml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    serde_yaml::from_str(text)
        .map_err(|e| ConfigError::new(origin, None, format!("invalid YAML: {e}")))
}

pub(crate) fn parse_toml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    // Not `{e}`: toml's Display quotes the offending line, which may hold a
    // secret.
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        let message = e.message().trim_end().replace('\n', "; ");
        ConfigError::new(origin, None, format!("invalid TOML{at}: {message}"))
    })
}

/// Numbers and booleans as such, anything else as a string.
fn scalar(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(raw.to_owned()),
    }
}

/// Whether a librdkafka property holds a secret and must never be printed.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key",
        "token",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// A configuration that cannot be used: names where it came from (file or
/// environment variable), the key, and what is wrong. Never contains a
/// secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(origin: &str, key: Option<String>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_owned(),
            key,
            message: message.into(),
        }
    }

    /// The file (or environment variable) the bad value came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The offending key, dotted (`retry.max_attempts`), when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(
                f,
                "invalid configuration in {}: `{k}`: {}",
                self.origin, self.message
            ),
            None => write!(
                f,
                "invalid configuration in {}: {}",
                self.origin, self.message
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
