//! Reading a token submitted for revocation (RFC 7009): the same identity (`jti`, `exp`, `sub`,
//! `iss`, `iat`) the filter asks about. With keys configured the signature is verified first, so
//! only tokens we issued count.

use jwtguard::keys::Key;
use jwtguard::revocation::Identity;
use jwtguard::{jws, signature, strict_json};

/// `None` for anything that is not a well-formed (and, with keys, validly signed) JWT: RFC 7009
/// answers 200 for invalid tokens, so the caller just stores nothing.
pub fn read(token: &str, keys: Option<&[Key]>) -> Option<Identity> {
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
    Some(Identity::from_claims(&claims))
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
    fn reads_the_identity() {
        let id = read(&unsigned(r#"{"jti":"j1","exp":99,"sub":"alice","iss":"i"}"#), None).unwrap();
        assert_eq!(
            (id.jti.as_deref(), id.exp, id.sub.as_deref(), id.iss.as_deref()),
            (Some("j1"), Some(99), Some("alice"), Some("i"))
        );
        assert_eq!(read(&unsigned(r#"{"exp":"soon"}"#), None).unwrap().exp, None);
        // Fractional NumericDates (RFC 7519 §2) as the filter reads them: whole seconds.
        let id = read(&unsigned(r#"{"jti":"j","exp":1700000095.5,"iat":1700000000.9}"#), None).unwrap();
        assert_eq!((id.exp, id.iat), (Some(1_700_000_095), Some(1_700_000_000)));
        assert!(read("garbage", None).is_none());
        assert!(read(&unsigned(r#"{"jti":"a","jti":"b"}"#), None).is_none());
    }

    #[test]
    fn with_keys_only_valid_signatures_count() {
        let key = jwtguard::keys::from_secret(&[7; 32], None, None, &[jsonwebtoken::Algorithm::HS256]).unwrap();
        assert!(read(&unsigned(r#"{"jti":"j1"}"#), Some(&[key])).is_none());
    }
}
