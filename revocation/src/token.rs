//! Reading a token submitted for revocation (RFC 7009): its `jti`, `exp`, `sub` and `iss`.
//! With keys configured the signature is verified first, so only tokens we issued count.

use jwtguard::keys::Key;
use jwtguard::{jws, signature, strict_json};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    pub jti: Option<String>,
    pub exp: Option<u64>,
    pub sub: Option<String>,
    pub iss: Option<String>,
}

/// `None` for anything that is not a well-formed (and, with keys, validly signed) JWT: RFC 7009
/// answers 200 for invalid tokens, so the caller just stores nothing.
pub fn read(token: &str, keys: Option<&[Key]>) -> Option<TokenFacts> {
    if token.len() > crate::validate::MAX_BODY_BYTES {
        return None;
    }
    let parsed = jws::parse(token).ok()?;
    if let Some(keys) = keys {
        if !signature::verify(keys, &parsed, None).valid {
            return None;
        }
    }
    let claims = strict_json::parse_object(&parsed.payload).ok()?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(String::from);
    Some(TokenFacts {
        jti: text("jti"),
        exp: claims.get("exp").and_then(Value::as_u64),
        sub: text("sub"),
        iss: text("iss"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    fn unsigned(payload: &str) -> String {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#), URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn reads_the_facts() {
        let facts = read(&unsigned(r#"{"jti":"j1","exp":99,"sub":"alice","iss":"i"}"#), None).unwrap();
        assert_eq!(
            facts,
            TokenFacts { jti: Some("j1".into()), exp: Some(99), sub: Some("alice".into()), iss: Some("i".into()) }
        );
        assert_eq!(read(&unsigned(r#"{"exp":"soon"}"#), None).unwrap().exp, None);
        assert!(read("garbage", None).is_none());
        assert!(read(&unsigned(r#"{"jti":"a","jti":"b"}"#), None).is_none());
    }

    #[test]
    fn with_keys_only_valid_signatures_count() {
        let key = jwtguard::keys::from_secret(&[7; 32], None, None, &[jsonwebtoken::Algorithm::HS256]).unwrap();
        assert!(read(&unsigned(r#"{"jti":"j1"}"#), Some(&[key])).is_none());
    }
}
