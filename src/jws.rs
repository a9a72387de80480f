//! Strict parsing of a compact JWS (RFC 7515 §7.1): exactly three base64url parts, canonical
//! encoding, a unique-named JSON header, and no header feature we do not implement.

use crate::reason::Reason;
use crate::strict_json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use std::cell::RefCell;

/// Longest `kid` we compare; identifiers are opaque, but a megabyte one is an attack.
const MAX_KID_LEN: usize = 256;

/// A compact JWS split and decoded; the signature is not checked yet.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    pub payload_b64: &'a str,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a token is not even a well-formed JWS; all map to [`Reason::Malformed`].
/// Each part's strict decoding refuses any byte outside base64url: no separate scan (a per-byte
/// check of the whole token cost ~0.7 µs).
pub fn parse(token: &str) -> Result<Jws<'_>, Malformed> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Malformed("token is not three dot-separated parts"));
    };
    let signing_input = &token[..h.len() + 1 + p.len()];
    let payload = decode(p).ok_or(Malformed("payload is not canonical base64url"))?;
    let signature = decode(s).ok_or(Malformed("signature is not canonical base64url"))?;
    if signature.is_empty() {
        return Err(Malformed("token is unsigned"));
    }
    let (alg, kid, typ) = header_fields(h)?;
    Ok(Jws { alg, kid, typ, signing_input, payload_b64: p, payload, signature })
}

thread_local! {
    /// The last header that passed on this thread, by its base64url text: an issuer's tokens
    /// share one header, so a fresh token's is usually checked already (its decoding and JSON
    /// parse cost ~0.3 µs). Only the exact same text hits.
    static LAST_HEADER: RefCell<Option<(String, HeaderFields)>> = const { RefCell::new(None) };
}

/// The header's `alg`, `kid` and `typ`, once it is canonical base64url of a unique-named JSON
/// object that uses no feature we refuse.
fn header_fields(h: &str) -> Result<HeaderFields, Malformed> {
    let known = LAST_HEADER.with(|last| last.borrow().as_ref().filter(|(text, _)| text == h).map(|(_, f)| f.clone()));
    if let Some(fields) = known {
        return Ok(fields);
    }
    let header = decode(h).ok_or(Malformed("header is not canonical base64url"))?;
    let header = strict_json::parse_object(&header).map_err(|_| Malformed("header is not a JSON object"))?;
    let fields = check_header(&header)?;
    LAST_HEADER.with(|last| *last.borrow_mut() = Some((h.to_string(), fields.clone())));
    Ok(fields)
}

/// Strict base64url: no padding, no whitespace, zero trailing bits (the engine's defaults).
pub fn decode(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl From<Malformed> for Reason {
    fn from(_: Malformed) -> Reason {
        Reason::Malformed
    }
}

type HeaderFields = (String, Option<String>, Option<String>);

fn check_header(header: &Map<String, Value>) -> Result<HeaderFields, Malformed> {
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Malformed("header has no string alg")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(Malformed("alg none is never accepted"));
    }
    // We implement no extension, so any `crit` (even an empty one, RFC 7515 §4.1.11) is fatal;
    // `b64: false` (RFC 7797) would change what the signature covers; zip/enc mean JWE.
    for refused in ["crit", "b64", "zip", "enc"] {
        if header.contains_key(refused) {
            return Err(Malformed("header uses a feature that is not supported"));
        }
    }
    if let Some(cty) = header.get("cty") {
        match cty {
            Value::String(c) if !c.eq_ignore_ascii_case("JWT") => {}
            _ => return Err(Malformed("nested tokens are not accepted")),
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= MAX_KID_LEN => Some(k.clone()),
        Some(_) => return Err(Malformed("kid is not a short string")),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(Malformed("typ is not a string")),
    };
    // `jwk`, `jku`, `x5u` and `x5c` are ignored: keys come only from configuration (RFC 8725 §3.10).
    Ok((alg, kid, typ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(r#"{"sub":"a"}"#))
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = token(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#);
        let jws = parse(&t).unwrap();
        assert_eq!(jws.alg, "RS256");
        assert_eq!(jws.kid.as_deref(), Some("k1"));
        assert_eq!(jws.signature, b"sig");
        assert_eq!(jws.payload, br#"{"sub":"a"}"#);
        assert_eq!(jws.signing_input.matches('.').count(), 1);
    }

    #[test]
    fn refuses_non_compact_and_non_canonical_forms() {
        let good = token(r#"{"alg":"RS256"}"#);
        assert!(parse(&format!("{good}.")).is_err(), "extra part");
        assert!(parse(&format!("{good}.x.y")).is_err(), "JWE-like five parts");
        assert!(parse(good.rsplit_once('.').unwrap().0).is_err(), "two parts");
        assert!(parse(&format!("{good}=")).is_err(), "padding");
        assert!(parse(&good.replacen('e', "+", 1)).is_err(), "standard alphabet");
        assert!(parse(&format!(" {good}")).is_err(), "whitespace");
        assert!(parse(&format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64("{}"))).is_err(), "unsigned");
        assert!(parse(r#"{"payload":"x","signatures":[]}"#).is_err(), "JSON serialization");
        // "c2k" and "c2l" decode to the same bytes; only the zero-trailing-bits form is valid.
        assert_eq!(decode("c2k").as_deref(), Some(&b"si"[..]));
        assert!(decode("c2l").is_none());
    }

    #[test]
    fn refuses_dangerous_headers() {
        for h in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"nOnE"}"#,
            r#"{"alg":"RS256","crit":[]}"#,
            r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#,
            r#"{"alg":"RS256","cty":"JWT"}"#,
            r#"{"alg":"RS256","zip":"DEF"}"#,
            r#"{"alg":"RS256","alg":"HS256"}"#,
            r#"{"alg":256}"#,
            r#"{"alg":"RS256","kid":7}"#,
            r#"{"kid":"x"}"#,
            r#"[]"#,
        ] {
            assert!(parse(&token(h)).is_err(), "{h}");
        }
        let long_kid = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "a".repeat(MAX_KID_LEN + 1));
        assert!(parse(&token(&long_kid)).is_err());
    }

    /// The class the decoder alone now guards: any byte outside base64url and the dots, in any
    /// part, makes the token malformed.
    #[test]
    fn every_byte_outside_base64url_is_refused_in_every_part() {
        let good = token(r#"{"alg":"RS256","kid":"k1"}"#);
        assert!(parse(&good).is_ok());
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
        let dots: Vec<usize> = good.match_indices('.').map(|(i, _)| i).collect();
        for b in (0u8..=255).filter(|b| !allowed(*b)) {
            // A byte as text: ASCII as itself, the rest as the two-byte UTF-8 of that code point.
            let c = char::from(b).to_string();
            for at in [1, dots[0] + 2, dots[1] + 2] {
                let mut t = good.clone();
                t.insert_str(at, &c);
                assert!(parse(&t).is_err(), "byte {b:#04x} at {at} was accepted");
            }
        }
    }

    #[test]
    fn a_remembered_header_answers_as_a_fresh_parse() {
        let good = token(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#);
        let bad = token(r#"{"alg":"none","kid":"k1"}"#);
        for _ in 0..2 {
            let jws = parse(&good).unwrap();
            assert_eq!((jws.alg.as_str(), jws.kid.as_deref(), jws.typ.as_deref()), ("RS256", Some("k1"), Some("JWT")));
            assert!(parse(&bad).is_err(), "a refused header is never remembered");
        }
        // Same header text, other payload: the payload is still decoded and checked.
        let (header, _) = good.split_once('.').unwrap();
        assert!(parse(&format!("{header}.e30=.c2ln")).is_err(), "padded payload");
        assert_eq!(parse(&format!("{header}.e30.c2ln")).unwrap().payload, b"{}");
    }

    #[test]
    fn header_keys_are_never_taken_from_the_token() {
        let h = r#"{"alg":"RS256","jku":"http://evil/","jwk":{"kty":"oct","k":"AA"},"x5u":"u","x5c":["c"]}"#;
        let t = token(h);
        assert_eq!(parse(&t).unwrap().kid, None);
    }
}
