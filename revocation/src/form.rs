//! `application/x-www-form-urlencoded` (RFC 7009 bodies and the status query), read strictly:
//! the API document lists every member, so an unknown or repeated name, a broken `%` escape or
//! bytes that are not UTF-8 are refused rather than dropped or replaced.

use std::collections::HashMap;

/// The members of `input`, each one of `names` at most once.
pub fn parse(input: &[u8], names: &[&'static str]) -> Result<HashMap<&'static str, String>, String> {
    read(input, names, false)
}

/// `parse`, ignoring members not in `names` (where a protocol defines only some and others may
/// be added, as OAuth's endpoints do: RFC 6749 §3.1).
pub fn parse_known(input: &[u8], names: &[&'static str]) -> Result<HashMap<&'static str, String>, String> {
    read(input, names, true)
}

fn read(input: &[u8], names: &[&'static str], ignore_others: bool) -> Result<HashMap<&'static str, String>, String> {
    let mut fields = HashMap::new();
    for pair in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let name = decode(name)?;
        let Some(known) = names.iter().copied().find(|n| *n == name) else {
            if ignore_others {
                continue;
            }
            return Err(format!("unknown member {name:?}; allowed: {}", names.join(", ")));
        };
        if fields.insert(known, decode(value)?).is_some() {
            return Err(format!("{known} is repeated"));
        }
    }
    Ok(fields)
}

/// `+` is a space, `%XY` a byte; the bytes must be UTF-8.
fn decode(text: &[u8]) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                // Digits checked first: from_str_radix would take a sign ("%+1").
                let hex = text.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                let byte = hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
                bytes.push(byte.ok_or("a % not followed by two hex digits")?);
                i += 2;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| "a member is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_members_and_refuses_anything_else() {
        let f = parse(b"token=a%2Bb+c&token_type_hint=", &["token", "token_type_hint"]).unwrap();
        assert_eq!((f["token"].as_str(), f["token_type_hint"].as_str()), ("a+b c", ""));
        assert_eq!(parse(b"", &["token"]).unwrap().len(), 0);
        assert_eq!(parse(b"token&", &["token"]).unwrap()["token"], "");
        assert_eq!(parse("sub=Zo%C3%AB".as_bytes(), &["sub"]).unwrap()["sub"], "Zoë");
        for bad in [
            &b"jti=x&exp=1"[..],
            b"token=a&token=b",
            b"token=%",
            b"token=%4",
            b"token=%zz",
            b"token=%+1",
            b"token=%FF",
            b"to%6Ben=a&token=b",
            b"\xff=1",
        ] {
            assert!(parse(bad, &["token"]).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
