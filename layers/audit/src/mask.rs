//! Payload capture and masking of fields by JSON pointer.
//!
//! A captured payload that parses as JSON is kept as a JSON value in which
//! every field named by a mask — an [RFC 6901](https://www.rfc-editor.org/rfc/rfc6901)
//! JSON pointer, where a `*` segment also matches every array element or
//! object member — is replaced by [`MASK`]. A payload that is not JSON is
//! kept as text only when no mask is configured (nothing could be masked in
//! it), and never when it is not UTF-8; a payload larger than the
//! configured limit is not kept. `payload_size` is recorded either way.
//!
//! ```
//! use kafka_tower_audit::mask::{mask_value, MASK};
//! use serde_json::json;
//!
//! let mut v = json!({"card": {"number": "4111", "expiry": "12/30"}, "items": [{"pin": 1}, {"pin": 2}]});
//! mask_value(&mut v, "/card/number");
//! mask_value(&mut v, "/items/*/pin");
//! assert_eq!(v, json!({"card": {"number": MASK, "expiry": "12/30"}, "items": [{"pin": MASK}, {"pin": MASK}]}));
//! ```

use bytes::Bytes;
use serde_json::Value;

/// What a masked field is replaced with.
pub const MASK: &str = "***";

/// Replaces every field of `value` that `pointer` names with [`MASK`];
/// returns how many fields were masked. A pointer that names nothing masks
/// nothing; the empty pointer masks the whole value.
pub fn mask_value(value: &mut Value, pointer: &str) -> usize {
    if pointer.is_empty() {
        *value = Value::String(MASK.to_owned());
        return 1;
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return 0;
    };
    let segments: Vec<String> = rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    mask_segments(value, &segments)
}

fn mask_segments(value: &mut Value, segments: &[String]) -> usize {
    let Some((first, rest)) = segments.split_first() else {
        *value = Value::String(MASK.to_owned());
        return 1;
    };
    match value {
        Value::Object(map) if first == "*" => {
            map.values_mut().map(|v| mask_segments(v, rest)).sum()
        }
        Value::Object(map) => map
            .get_mut(first.as_str())
            .map_or(0, |v| mask_segments(v, rest)),
        Value::Array(items) if first == "*" => {
            items.iter_mut().map(|v| mask_segments(v, rest)).sum()
        }
        Value::Array(items) => first
            .parse::<usize>()
            .ok()
            .filter(|_| first == "0" || !first.starts_with('0'))
            .and_then(|i| items.get_mut(i))
            .map_or(0, |v| mask_segments(v, rest)),
        _ => 0,
    }
}

/// How captured payloads are rendered: masks and a size limit.
#[derive(Debug, Clone)]
pub(crate) struct PayloadPolicy {
    pub(crate) masks: Vec<String>,
    pub(crate) max_bytes: usize,
}

impl PayloadPolicy {
    /// The value kept in `payload`, per the [module docs](self).
    pub(crate) fn render(&self, bytes: &Bytes) -> Option<Value> {
        if bytes.len() > self.max_bytes {
            return None;
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut v) => {
                for m in &self.masks {
                    mask_value(&mut v, m);
                }
                Some(v)
            }
            Err(_) if self.masks.is_empty() => std::str::from_utf8(bytes)
                .ok()
                .map(|s| Value::String(s.to_owned())),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_mask_exactly_what_they_name() {
        let mut v = json!({"a/b": 1, "m~n": 2, "list": [10, 11, 12], "keep": {"x": 1}});
        assert_eq!(mask_value(&mut v, "/a~1b"), 1);
        assert_eq!(mask_value(&mut v, "/m~0n"), 1);
        assert_eq!(mask_value(&mut v, "/list/1"), 1);
        assert_eq!(
            mask_value(&mut v, "/list/01"),
            0,
            "leading zeros are not indices"
        );
        assert_eq!(mask_value(&mut v, "/missing/x"), 0);
        assert_eq!(mask_value(&mut v, "no-slash"), 0);
        assert_eq!(
            v,
            json!({"a/b": MASK, "m~n": MASK, "list": [10, MASK, 12], "keep": {"x": 1}})
        );
    }

    #[test]
    fn wildcards_reach_every_member() {
        let mut v = json!({"users": {"u1": {"ssn": "1"}, "u2": {"ssn": "2", "name": "n"}}});
        assert_eq!(mask_value(&mut v, "/users/*/ssn"), 2);
        assert_eq!(v["users"]["u2"]["name"], "n");
        assert_eq!(v["users"]["u1"]["ssn"], MASK);
    }

    #[test]
    fn rendering_respects_masks_text_and_size() {
        let masked = PayloadPolicy {
            masks: vec!["/password".into()],
            max_bytes: 64,
        };
        assert_eq!(
            masked.render(&Bytes::from_static(br#"{"user":"u","password":"hunter2"}"#)),
            Some(json!({"user": "u", "password": MASK}))
        );
        // Not JSON, and a mask is configured: nothing could be masked, so nothing is kept.
        assert_eq!(
            masked.render(&Bytes::from_static(b"password=hunter2")),
            None
        );
        assert_eq!(
            masked.render(&Bytes::from(vec![b'1'; 65])),
            None,
            "over the limit"
        );
        let plain = PayloadPolicy {
            masks: vec![],
            max_bytes: 64,
        };
        assert_eq!(
            plain.render(&Bytes::from_static(b"hello")),
            Some(json!("hello"))
        );
        assert_eq!(
            plain.render(&Bytes::from_static(&[0xff, 0xfe])),
            None,
            "not UTF-8"
        );
    }
}
