//! Target `amf0`: the input is the body of an AMF0 command or data message (`connect`,
//! `publish`, `@setDataFrame`/`onMetaData`), decoded as the ingest and the packager do.
//!
//! Invariants: decoding stays within the input; whatever decodes, encodes, and the encoding
//! decodes back to the same values (compared as bytes, since NaN is not equal to itself).

use rtmp::amf0;

/// The target body.
pub fn run(data: &[u8]) {
    let mut rest = data;
    if amf0::decode(&mut rest).is_ok() {
        assert!(rest.len() < data.len(), "a decoded value consumed nothing");
    }
    let Ok(values) = amf0::decode_all(data) else {
        return;
    };
    let encoded = amf0::encode_all(&values);
    let again = amf0::decode_all(&encoded).expect("our own encoding decodes");
    assert_eq!(again.len(), values.len());
    assert_eq!(
        amf0::encode_all(&again),
        encoded,
        "values changed by an encode/decode round trip"
    );
}
