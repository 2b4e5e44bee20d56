//! Resolves `$ref`s to local files, and nothing else.

use std::path::{Path, PathBuf};

use jsonschema::{Retrieve, Uri};
use serde_json::Value;

/// Loads `file://` references that lie under one of `roots`; refuses every
/// other URI (no network, no file outside the schema folders).
pub(crate) struct LocalFiles {
    pub(crate) roots: Vec<PathBuf>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Retrieve for LocalFiles {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, BoxError> {
        let s = uri.as_str();
        let Some(rest) = s.strip_prefix("file://") else {
            return Err(format!("{s}: only local files are resolved (no network)").into());
        };
        let rest = rest.strip_prefix("localhost").unwrap_or(rest);
        let rest = rest.split(['#', '?']).next().unwrap_or(rest);
        let path = PathBuf::from(percent_decode(rest)?);
        let canonical = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !self.roots.iter().any(|r| canonical.starts_with(r)) {
            return Err(format!("{}: outside the schema folders", path.display()).into());
        }
        read_json(&canonical)
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value, BoxError> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: not JSON: {e}", path.display()).into())
}

fn percent_decode(s: &str) -> Result<String, BoxError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])?;
            out.push(u8::from_str_radix(hex, 16)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// `path` (absolute) as a `file://` URI, percent-encoding what URIs cannot
/// hold.
pub(crate) fn file_uri(path: &Path) -> String {
    let mut s = String::from("file://");
    for &c in path.to_string_lossy().as_bytes() {
        if c.is_ascii_alphanumeric() || b"/-._~".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_round_trip_through_percent_encoding() {
        let uri = file_uri(Path::new("/tmp/my schemas/a+b.json"));
        assert_eq!(uri, "file:///tmp/my%20schemas/a%2Bb.json");
        assert_eq!(
            percent_decode(&uri["file://".len()..]).unwrap(),
            "/tmp/my schemas/a+b.json"
        );
    }
}
