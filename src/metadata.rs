//! The verified payload as Envoy dynamic metadata in the shape `jwt_authn` writes with
//! `payload_in_metadata`: namespace `envoy.filters.http.jwt_authn`, the provider's key, the
//! payload as a `google.protobuf.Struct` (numbers as doubles, arrays as `ListValue`s). Envoy's
//! RBAC metadata matchers and Istio's conventions then work on it unchanged. Encoded here, by
//! hand, as the protobuf wire format Envoy's `set_dynamic_metadata_struct` parses.

use serde_json::{Map, Value};

/// A verified token's payload.
pub type Payload = Map<String, Value>;

/// The namespace `jwt_authn` writes its payloads under.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// How deeply a payload may nest (objects and arrays, the payload itself the first): Envoy's
/// protobuf parser stops at its recursion limit, and a Struct it cannot parse is not written
/// (the payload would be missing where a policy looks: measured, a payload 32 deep was dropped,
/// 31 written). `jwt_authn` writes deeper ones; jwtguard refuses the token instead.
pub const MAX_DEPTH: usize = 30;

/// A `Struct` with one field, `key`, holding `payload` as a `Struct`, or None if it nests deeper
/// than `MAX_DEPTH`. Envoy merges it into the namespace field by field, so each provider's key
/// stands beside the others'.
pub fn payload_struct(key: &str, payload: &Payload) -> Option<Vec<u8>> {
    if 1 + payload.values().map(depth).max().unwrap_or(0) > MAX_DEPTH {
        return None;
    }
    let mut value = Vec::new();
    length_delimited(&mut value, 5, &struct_fields(payload)); // Value.struct_value
    let mut out = Vec::new();
    field_entry(&mut out, key, &value);
    Some(out)
}

/// How many objects and arrays `value` nests, itself included.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `Struct.fields` (field 1, a map: entries of key 1 and `Value` 2).
fn struct_fields(map: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in map {
        field_entry(&mut out, key, &encode_value(value));
    }
    out
}

fn field_entry(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let mut entry = Vec::with_capacity(key.len() + value.len() + 8);
    length_delimited(&mut entry, 1, key.as_bytes());
    length_delimited(&mut entry, 2, value);
    length_delimited(out, 1, &entry);
}

/// A `google.protobuf.Value`: null 1, number 2 (double), string 3, bool 4, struct 5, list 6.
fn encode_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        Value::Null => out.extend_from_slice(&[1 << 3, 0]),
        Value::Bool(b) => out.extend_from_slice(&[4 << 3, u8::from(*b)]),
        Value::Number(n) => {
            out.push(2 << 3 | 1); // fixed64
            out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
        }
        Value::String(s) => length_delimited(&mut out, 3, s.as_bytes()),
        Value::Array(items) => {
            let mut list = Vec::new();
            for item in items {
                length_delimited(&mut list, 1, &encode_value(item)); // ListValue.values
            }
            length_delimited(&mut out, 6, &list);
        }
        Value::Object(map) => length_delimited(&mut out, 5, &struct_fields(map)),
    }
    out
}

fn length_delimited(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    /// The bytes a probe module handed Envoy 1.40, which then printed the namespace exactly as
    /// `jwt_authn` writes it for the same token, and RBAC matched on it.
    #[test]
    fn a_payload_is_one_struct_field_holding_a_struct() {
        let bytes = payload_struct("jwt_payload", &payload(json!({"sub": "alice"}))).unwrap();
        let expected: Vec<u8> = [
            &[0x0a, 0x1d, 0x0a, 0x0b][..],
            b"jwt_payload",
            &[0x12, 0x0e, 0x2a, 0x0c, 0x0a, 0x0a, 0x0a, 0x03],
            b"sub",
            &[0x12, 0x03, 0x1a, 0x01],
            b"a",
        ]
        .concat();
        let short = payload_struct("jwt_payload", &payload(json!({"sub": "a"}))).unwrap();
        assert_eq!(short, expected);
        assert!(bytes.windows(5).any(|w| w == b"alice"));
    }

    #[test]
    fn every_json_type_has_its_value_field() {
        assert_eq!(encode_value(&json!(null)), [0x08, 0]);
        assert_eq!(encode_value(&json!(true)), [0x20, 1]);
        assert_eq!(encode_value(&json!(1.5)), [&[0x11][..], &1.5f64.to_le_bytes()].concat());
        assert_eq!(encode_value(&json!(4_000_000_000u64)), [&[0x11][..], &4e9f64.to_le_bytes()].concat());
        assert_eq!(encode_value(&json!("x")), [0x1a, 1, b'x']);
        assert_eq!(encode_value(&json!(["x"])), [0x32, 5, 0x0a, 3, 0x1a, 1, b'x']);
        assert_eq!(encode_value(&json!({})), [0x2a, 0]);
    }

    #[test]
    fn a_payload_nested_deeper_than_envoy_parses_is_refused() {
        let nested = |levels: usize| (0..levels).fold(json!("x"), |inner, _| json!({"a": inner}));
        // The payload is the first level.
        assert!(payload_struct("k", &payload(nested(MAX_DEPTH))).is_some());
        assert!(payload_struct("k", &payload(nested(MAX_DEPTH + 1))).is_none());
        let arrays = (0..MAX_DEPTH).fold(json!(1), |inner, _| json!([inner]));
        assert!(payload_struct("k", &payload(json!({"a": arrays}))).is_none());
    }

    #[test]
    fn long_fields_take_multi_byte_lengths() {
        let long = "x".repeat(300);
        let bytes = encode_value(&json!(long));
        assert_eq!(&bytes[..3], &[0x1a, 0xac, 0x02]); // 300 = 0b10_0101100
        assert_eq!(bytes.len(), 303);
    }
}
