//! Where a token comes from: headers (with a value prefix), query parameters and cookies,
//! in `jwt_authn`'s vocabulary. Default: `Authorization: Bearer <token>`, then `?access_token=`.

/// One header a token may come in, e.g. `authorization` with prefix `Bearer `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSource {
    /// Lower-case header name.
    pub name: String,
    pub value_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    pub headers: Vec<HeaderSource>,
    pub params: Vec<String>,
    pub cookies: Vec<String>,
}

impl Sources {
    /// `jwt_authn`'s default when a provider names no source.
    pub fn default_bearer() -> Sources {
        Sources {
            headers: vec![HeaderSource { name: "authorization".into(), value_prefix: "Bearer ".into() }],
            params: vec!["access_token".into()],
            cookies: vec![],
        }
    }
}

/// Where one token was found, so the filter can strip it when `forward` is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The header source at this index of `Sources::headers`.
    Header(usize),
    Param,
    Cookie,
}

/// What the sources yield. Two or more tokens mean the client used more than one method
/// (RFC 6750 §2: a 400); the same token twice (an app that sends header and cookie alike) also
/// counts, as RFC 6750 forbids it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    None,
    One(&'a str, Location),
    Several,
}

impl<'a> Found<'a> {
    fn add(&mut self, token: &'a str, location: Location) {
        *self = match self {
            Found::None => Found::One(token, location),
            _ => Found::Several,
        };
    }
}

/// The request's token from `sources`, and where it came from. `headers` are the (name, value)
/// pairs the host hands over, names already lower-case. Allocates nothing: it runs on every
/// request.
pub fn extract<'a>(sources: &Sources, headers: &'a [(String, String)], path: &'a str) -> Found<'a> {
    let mut found = Found::None;
    for (index, source) in sources.headers.iter().enumerate() {
        for value in values(headers, &source.name) {
            if let Some(token) = strip_prefix_ignore_case(value, &source.value_prefix) {
                let token = token.trim();
                if !token.is_empty() {
                    found.add(token, Location::Header(index));
                }
            }
        }
    }
    if !sources.params.is_empty() {
        if let Some((_, query)) = path.split_once('?') {
            let query = query.split('#').next().unwrap_or("");
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if !value.is_empty() && sources.params.iter().any(|p| p == name) {
                    found.add(value, Location::Param);
                }
            }
        }
    }
    if !sources.cookies.is_empty() {
        for cookie_header in values(headers, "cookie") {
            for pair in cookie_header.split(';') {
                let (name, value) = pair.trim().split_once('=').unwrap_or((pair.trim(), ""));
                let value = value.trim_matches('"');
                if !value.is_empty() && sources.cookies.iter().any(|c| c == name) {
                    found.add(value, Location::Cookie);
                }
            }
        }
    }
    found
}

/// The values of header `name` (lower-case), in order: a header may be repeated.
fn values<'a: 'n, 'n>(headers: &'a [(String, String)], name: &'n str) -> impl Iterator<Item = &'a str> + 'n {
    headers.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Auth schemes are case-insensitive (RFC 7235 §2.1), so `bearer x` counts as `Bearer x`.
fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bearer_header_case_insensitive_scheme() {
        let s = Sources::default_bearer();
        let h = headers(&[("authorization", "bearer abc")]);
        assert_eq!(extract(&s, &h, "/"), Found::One("abc", Location::Header(0)));
        for value in ["Basic abc", "Bearer ", "Bear", "Béarer x"] {
            assert_eq!(extract(&s, &headers(&[("authorization", value)]), "/"), Found::None, "{value}");
        }
    }

    #[test]
    fn params_and_cookies() {
        let s = Sources { headers: vec![], params: vec!["token".into()], cookies: vec!["jwt".into()] };
        let h = headers(&[("cookie", "a=1; jwt=xyz; b=2")]);
        assert_eq!(extract(&s, &h, "/p?x=1&token=abc#f"), Found::Several);
        assert_eq!(extract(&s, &h, "/p?x=1"), Found::One("xyz", Location::Cookie));
        assert_eq!(extract(&s, &headers(&[]), "/p?x=1&token=abc#f"), Found::One("abc", Location::Param));
        assert_eq!(extract(&s, &headers(&[]), "/p?tokenx=1&token="), Found::None);
    }

    #[test]
    fn two_methods_yield_two_tokens() {
        let s = Sources::default_bearer();
        let h = headers(&[("authorization", "Bearer a")]);
        assert_eq!(extract(&s, &h, "/?access_token=a"), Found::Several);
        let repeated = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(extract(&s, &repeated, "/"), Found::Several, "a repeated header is two methods too");
        let second = Sources {
            headers: vec![
                HeaderSource { name: "x-a".into(), value_prefix: "".into() },
                HeaderSource { name: "x-b".into(), value_prefix: "".into() },
            ],
            params: vec![],
            cookies: vec![],
        };
        assert_eq!(extract(&second, &headers(&[("x-b", "t")]), "/"), Found::One("t", Location::Header(1)));
    }
}
