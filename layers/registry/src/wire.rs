//! The Confluent wire format: magic byte `0`, the schema id as a 4-byte
//! big-endian integer, then the encoded body.
//!
//! ```
//! use kafka_tower_registry::wire;
//!
//! let framed = wire::frame(7, b"\x02a");
//! assert_eq!(framed.as_ref(), b"\x00\x00\x00\x00\x07\x02a");
//! let (id, body) = wire::parse(&framed).unwrap();
//! assert_eq!((id, body), (7, &b"\x02a"[..]));
//! assert!(wire::parse(b"{\"json\":true}").is_err());
//! ```

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The first byte of every framed record.
pub const MAGIC: u8 = 0;

/// The length of the frame before the body: magic byte + schema id.
pub const HEADER_LEN: usize = 5;

/// Why bytes are not in the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer than 5 bytes (the length is given).
    TooShort(usize),
    /// The first byte is not the magic byte `0` (the byte is given).
    BadMagic(u8),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort(n) => write!(
                f,
                "{n} byte{} is shorter than the 5-byte schema registry frame (magic byte 0 + schema id)",
                if *n == 1 { "" } else { "s" }
            ),
            FrameError::BadMagic(b) => write!(
                f,
                "first byte is 0x{b:02x}, not the schema registry magic byte 0x00"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Splits framed bytes into the schema id and the body.
pub fn parse(bytes: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    match bytes {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [m, _, _, _, _, ..] => Err(FrameError::BadMagic(*m)),
        short => Err(FrameError::TooShort(short.len())),
    }
}

/// Frames `body` as written with schema `id`.
pub fn frame(id: u32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_u8(MAGIC);
    out.put_u32(id);
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let f = frame(0x0102_0304, b"xyz");
        assert_eq!(&f[..], b"\x00\x01\x02\x03\x04xyz");
        assert_eq!(parse(&f), Ok((0x0102_0304, &b"xyz"[..])));
        assert_eq!(parse(&frame(9, b"")), Ok((9, &b""[..])));
        assert_eq!(parse(b""), Err(FrameError::TooShort(0)));
        assert_eq!(parse(b"\x00\x00\x00\x01"), Err(FrameError::TooShort(4)));
        assert_eq!(parse(b"{\"a\":1}"), Err(FrameError::BadMagic(b'{')));
        assert!(FrameError::BadMagic(b'{').to_string().contains("0x7b"));
    }
}
