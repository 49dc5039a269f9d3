//! AMF0 values: decoding and encoding (Adobe "Action Message Format -- AMF 0", 2007).
//!
//! Only what RTMP commands and `onMetaData` use is modelled; AVM+ (0x11, switch to AMF3),
//! references, XML documents and typed objects are refused with an error rather than
//! half-parsed. Decoding never allocates more than the input can justify: string lengths
//! are checked against the remaining bytes before copying, containers are bounded in depth
//! and entry count.

use bytes::{Buf, BufMut, BytesMut};

/// Type markers, AMF0 spec section 2.1.
mod marker {
    pub const NUMBER: u8 = 0x00;
    pub const BOOLEAN: u8 = 0x01;
    pub const STRING: u8 = 0x02;
    pub const OBJECT: u8 = 0x03;
    pub const NULL: u8 = 0x05;
    pub const UNDEFINED: u8 = 0x06;
    pub const ECMA_ARRAY: u8 = 0x08;
    pub const OBJECT_END: u8 = 0x09;
    pub const STRICT_ARRAY: u8 = 0x0A;
    pub const DATE: u8 = 0x0B;
    pub const LONG_STRING: u8 = 0x0C;
}

/// Deepest container nesting accepted; real metadata nests two or three levels, a hostile
/// peer could otherwise recurse us off the stack.
pub const MAX_DEPTH: usize = 16;
/// Most entries accepted in one object/array; onMetaData has a few dozen.
pub const MAX_ENTRIES: usize = 4096;

/// One AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// IEEE-754 double (section 2.2).
    Number(f64),
    /// Boolean (section 2.3).
    Boolean(bool),
    /// UTF-8 string, short (2.4) or long (2.14) form; encoded in whichever fits.
    String(String),
    /// Anonymous object: ordered (name, value) pairs (section 2.5).
    Object(Vec<(String, Value)>),
    /// null (section 2.7).
    Null,
    /// undefined (section 2.8).
    Undefined,
    /// ECMA (associative) array: ordered (name, value) pairs (section 2.10).
    EcmaArray(Vec<(String, Value)>),
    /// Strict (dense) array (section 2.12).
    StrictArray(Vec<Value>),
    /// Date: milliseconds since the UNIX epoch and a time-zone field that must be 0 (2.13).
    Date(f64),
}

impl Value {
    /// The number, if this is a Number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The string, if this is a String.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The (name, value) pairs of an Object or ECMA array.
    pub fn properties(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(p) | Value::EcmaArray(p) => Some(p),
            _ => None,
        }
    }

    /// Looks up a property of an Object or ECMA array by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.properties()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Finds a Number property in a list of (name, value) pairs, e.g. `PlayEvent::Metadata`.
pub fn number_property(props: &[(String, Value)], name: &str) -> Option<f64> {
    props
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_f64())
}

/// Why an AMF0 buffer could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Amf0Error {
    /// The buffer ended inside a value.
    #[error("AMF0 value truncated")]
    Truncated,
    /// A type marker we do not accept.
    #[error("unsupported AMF0 type marker 0x{0:02x}")]
    UnsupportedType(u8),
    /// A string that is not UTF-8.
    #[error("AMF0 string is not UTF-8")]
    InvalidUtf8,
    /// Containers nested deeper than [`MAX_DEPTH`].
    #[error("AMF0 nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A container with more than [`MAX_ENTRIES`] entries.
    #[error("AMF0 container with more than {MAX_ENTRIES} entries")]
    TooManyEntries,
}

/// Decodes one value from the front of `buf`, advancing it.
pub fn decode(buf: &mut &[u8]) -> Result<Value, Amf0Error> {
    decode_depth(buf, 0)
}

/// Decodes values until `buf` is empty (a command or data message body).
pub fn decode_all(mut buf: &[u8]) -> Result<Vec<Value>, Amf0Error> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if out.len() >= MAX_ENTRIES {
            return Err(Amf0Error::TooManyEntries);
        }
        out.push(decode(&mut buf)?);
    }
    Ok(out)
}

fn need(buf: &[u8], n: usize) -> Result<(), Amf0Error> {
    if buf.len() < n {
        Err(Amf0Error::Truncated)
    } else {
        Ok(())
    }
}

fn read_utf8(buf: &mut &[u8], len: usize) -> Result<String, Amf0Error> {
    // Length is checked against what is actually there before any allocation.
    need(buf, len)?;
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| Amf0Error::InvalidUtf8)?
        .to_owned();
    buf.advance(len);
    Ok(s)
}

fn read_short_string(buf: &mut &[u8]) -> Result<String, Amf0Error> {
    need(buf, 2)?;
    let len = buf.get_u16() as usize;
    read_utf8(buf, len)
}

/// Reads (name, value) pairs up to the empty-name + object-end marker (section 2.5).
fn read_properties(buf: &mut &[u8], depth: usize) -> Result<Vec<(String, Value)>, Amf0Error> {
    let mut props = Vec::new();
    loop {
        let name = read_short_string(buf)?;
        if name.is_empty() {
            need(buf, 1)?;
            if buf[0] == marker::OBJECT_END {
                buf.advance(1);
                return Ok(props);
            }
        }
        if props.len() >= MAX_ENTRIES {
            return Err(Amf0Error::TooManyEntries);
        }
        let value = decode_depth(buf, depth + 1)?;
        props.push((name, value));
    }
}

fn decode_depth(buf: &mut &[u8], depth: usize) -> Result<Value, Amf0Error> {
    if depth > MAX_DEPTH {
        return Err(Amf0Error::TooDeep);
    }
    need(buf, 1)?;
    let m = buf.get_u8();
    Ok(match m {
        marker::NUMBER => {
            need(buf, 8)?;
            Value::Number(buf.get_f64())
        }
        marker::BOOLEAN => {
            need(buf, 1)?;
            Value::Boolean(buf.get_u8() != 0)
        }
        marker::STRING => Value::String(read_short_string(buf)?),
        marker::LONG_STRING => {
            need(buf, 4)?;
            let len = buf.get_u32() as usize;
            Value::String(read_utf8(buf, len)?)
        }
        marker::OBJECT => Value::Object(read_properties(buf, depth)?),
        marker::NULL => Value::Null,
        marker::UNDEFINED => Value::Undefined,
        marker::ECMA_ARRAY => {
            // The count is only a hint (section 2.10) and encoders get it wrong; the
            // terminator is authoritative, so the count is read and ignored.
            need(buf, 4)?;
            buf.advance(4);
            Value::EcmaArray(read_properties(buf, depth)?)
        }
        marker::STRICT_ARRAY => {
            need(buf, 4)?;
            let count = buf.get_u32() as usize;
            if count > MAX_ENTRIES {
                return Err(Amf0Error::TooManyEntries);
            }
            // Each value takes at least one byte: a count beyond the input is a lie.
            need(buf, count)?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(decode_depth(buf, depth + 1)?);
            }
            Value::StrictArray(items)
        }
        marker::DATE => {
            need(buf, 10)?;
            let ms = buf.get_f64();
            buf.advance(2); // time zone, "should be set to 0x0000"
            Value::Date(ms)
        }
        other => return Err(Amf0Error::UnsupportedType(other)),
    })
}

fn write_short_str(out: &mut BytesMut, s: &str) {
    // Property names longer than u16 cannot be represented; truncating on a char boundary
    // keeps the output decodable (only our own metadata names reach here in practice).
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.put_u16(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

fn write_properties(out: &mut BytesMut, props: &[(String, Value)]) {
    for (k, v) in props {
        write_short_str(out, k);
        encode(out, v);
    }
    out.put_u16(0);
    out.put_u8(marker::OBJECT_END);
}

/// Appends the encoding of `value` to `out`.
pub fn encode(out: &mut BytesMut, value: &Value) {
    match value {
        Value::Number(n) => {
            out.put_u8(marker::NUMBER);
            out.put_f64(*n);
        }
        Value::Boolean(b) => {
            out.put_u8(marker::BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Value::String(s) if s.len() <= u16::MAX as usize => {
            out.put_u8(marker::STRING);
            out.put_u16(s.len() as u16);
            out.put_slice(s.as_bytes());
        }
        Value::String(s) => {
            out.put_u8(marker::LONG_STRING);
            out.put_u32(s.len() as u32);
            out.put_slice(s.as_bytes());
        }
        Value::Object(p) => {
            out.put_u8(marker::OBJECT);
            write_properties(out, p);
        }
        Value::Null => out.put_u8(marker::NULL),
        Value::Undefined => out.put_u8(marker::UNDEFINED),
        Value::EcmaArray(p) => {
            out.put_u8(marker::ECMA_ARRAY);
            out.put_u32(p.len() as u32);
            write_properties(out, p);
        }
        Value::StrictArray(items) => {
            out.put_u8(marker::STRICT_ARRAY);
            out.put_u32(items.len() as u32);
            for v in items {
                encode(out, v);
            }
        }
        Value::Date(ms) => {
            out.put_u8(marker::DATE);
            out.put_f64(*ms);
            out.put_u16(0);
        }
    }
}

/// Encodes a sequence of values (a command or data message body).
pub fn encode_all(values: &[Value]) -> BytesMut {
    let mut out = BytesMut::new();
    for v in values {
        encode(&mut out, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn round_trip_all_types() {
        let values = vec![
            Value::Number(1.5),
            Value::Boolean(true),
            Value::String("connect".into()),
            Value::String("x".repeat(70_000)),
            Value::Object(obj(&[
                ("app", Value::String("live".into())),
                ("n", Value::Null),
            ])),
            Value::Null,
            Value::Undefined,
            Value::EcmaArray(obj(&[
                ("duration", Value::Number(0.0)),
                (
                    "nested",
                    Value::Object(obj(&[("a", Value::Boolean(false))])),
                ),
            ])),
            Value::StrictArray(vec![Value::Number(1.0), Value::String("b".into())]),
            Value::Date(1_700_000_000_000.0),
        ];
        let bytes = encode_all(&values);
        assert_eq!(decode_all(&bytes).expect("decodes"), values);
    }

    #[test]
    fn known_bytes_of_connect_name() {
        let mut out = BytesMut::new();
        encode(&mut out, &Value::String("connect".into()));
        assert_eq!(&out[..], b"\x02\x00\x07connect");
        let mut out = BytesMut::new();
        encode(&mut out, &Value::Number(1.0));
        assert_eq!(&out[..], &[0, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn truncated_inputs_error_at_every_cut() {
        let bytes = encode_all(&[Value::EcmaArray(obj(&[
            ("width", Value::Number(320.0)),
            ("encoder", Value::String("Lavf".into())),
        ]))]);
        for cut in 0..bytes.len() {
            let mut b = &bytes[..cut];
            if cut == 0 {
                assert_eq!(decode(&mut b), Err(Amf0Error::Truncated));
            } else {
                assert!(decode(&mut b).is_err(), "cut at {cut} must fail");
            }
        }
    }

    #[test]
    fn hostile_inputs_are_errors_without_big_allocations() {
        // Long string claiming 4 GiB.
        assert_eq!(
            decode(&mut &[0x0C, 0xff, 0xff, 0xff, 0xff, b'a'][..]),
            Err(Amf0Error::Truncated)
        );
        // Strict array claiming u32::MAX entries.
        assert_eq!(
            decode(&mut &[0x0A, 0xff, 0xff, 0xff, 0xff][..]),
            Err(Amf0Error::TooManyEntries)
        );
        // Strict array claiming more entries than bytes.
        assert_eq!(
            decode(&mut &[0x0A, 0, 0, 0, 100, 5][..]),
            Err(Amf0Error::Truncated)
        );
        // Unknown / unsupported markers.
        assert_eq!(
            decode(&mut &[0x11][..]),
            Err(Amf0Error::UnsupportedType(0x11))
        );
        assert_eq!(
            decode(&mut &[0x42][..]),
            Err(Amf0Error::UnsupportedType(0x42))
        );
        // Invalid UTF-8.
        assert_eq!(
            decode(&mut &[0x02, 0, 2, 0xff, 0xfe][..]),
            Err(Amf0Error::InvalidUtf8)
        );
        // Deep nesting: strict arrays of one element, 1000 deep.
        let mut deep = Vec::new();
        for _ in 0..1000 {
            deep.extend_from_slice(&[0x0A, 0, 0, 0, 1]);
        }
        deep.push(0x05);
        assert_eq!(decode(&mut &deep[..]), Err(Amf0Error::TooDeep));
    }

    #[test]
    fn number_property_lookup() {
        let props = obj(&[
            ("streamStartTimeMs", Value::Number(42.0)),
            ("s", Value::Null),
        ]);
        assert_eq!(number_property(&props, "streamStartTimeMs"), Some(42.0));
        assert_eq!(number_property(&props, "s"), None);
        assert_eq!(number_property(&props, "missing"), None);
    }
}
