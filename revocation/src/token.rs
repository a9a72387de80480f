//! Reading a token submitted for revocation (RFC 7009): the same identity (`jti`, `exp`, `sub`,
//! `iss`, `iat`) the filter asks about. With keys configured the signature is verified first, so
//! only tokens we issued count.

use jwtguard::keys::Key;
use jwtguard::revocation::Identity;
use jwtguard::{jws, signature, strict_json};

/// The keys of a `--jwks-file`, held to the rules of the filter's `local_jwks`: a key that cannot
/// be used fails the whole set rather than being skipped, the set holds at least one key, and it
/// obeys `keys::check_set` (no `kid` twice, no HMAC secret beside public keys). Each key may
/// verify only the `allowed` algorithms.
pub fn keys_from_jwks(text: &str, allowed: &[jsonwebtoken::Algorithm]) -> Result<Vec<Key>, String> {
    let parsed = jwtguard::keys::parse_jwks(text, allowed)?;
    let keys = parsed.into_iter().collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err("the set has no key".into());
    }
    jwtguard::keys::check_set(&keys)?;
    Ok(keys)
}

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

    const ALL: &[jsonwebtoken::Algorithm] = jwtguard::config::ALL_ALGORITHMS;
    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec1","x":"04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY","y":"UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw"}"#;

    fn jwks(keys: &[&str]) -> String {
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }

    #[test]
    fn a_jwks_file_obeys_the_key_set_rules() {
        let secret = format!(r#"{{"kty":"oct","kid":"s1","k":"{}"}}"#, URL_SAFE_NO_PAD.encode([7; 32]));
        let other_secret = format!(r#"{{"kty":"oct","kid":"s2","k":"{}"}}"#, URL_SAFE_NO_PAD.encode([8; 32]));
        assert_eq!(keys_from_jwks(&jwks(&[EC_JWK]), ALL).unwrap().len(), 1);
        assert_eq!(keys_from_jwks(&jwks(&[&secret, &other_secret]), ALL).unwrap().len(), 2, "secrets alone are a set");
        let renamed = EC_JWK.replace("ec1", "s1");
        let off_curve = EC_JWK.replace("UI8exy", "UI8exz");
        for (set, reason) in [
            (jwks(&[EC_JWK, EC_JWK]), "duplicate kid"),
            (jwks(&[&secret, &renamed]), "cannot mix"),
            (jwks(&[EC_JWK, &secret]), "cannot mix"),
            (jwks(&[&secret, &secret]), "duplicate kid"),
            (jwks(&[EC_JWK, &off_curve]), "not a valid uncompressed point"),
            (jwks(&[EC_JWK, r#"{"kty":"XYZ"}"#]), "unsupported kty"),
            (jwks(&[EC_JWK, &EC_JWK.replace(r#""kid":"ec1""#, r#""kid":"ec2","use":"enc""#)]), "use"),
            (jwks(&[]), "no key"),
            (r#"{"keys":[],"keys":[]}"#.to_string(), "duplicate"),
            ("[]".to_string(), "object"),
        ] {
            let err = keys_from_jwks(&set, ALL).err().unwrap_or_else(|| panic!("accepted {set}"));
            assert!(err.contains(reason), "{set}: {err}");
        }
    }

    #[test]
    fn with_keys_only_valid_signatures_count() {
        let key = jwtguard::keys::from_secret(&[7; 32], None, None, &[jsonwebtoken::Algorithm::HS256]).unwrap();
        assert!(read(&unsigned(r#"{"jti":"j1"}"#), Some(&[key])).is_none());
    }
}
