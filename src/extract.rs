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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header(String),
    Param,
    Cookie,
}

/// The request headers as extraction reads them; the glue fetches them from the host once.
pub trait RequestHeaders {
    /// Every value of the header, in order (a header may be repeated).
    fn values(&self, lower_case_name: &str) -> Vec<&str>;
}

/// Headers as the (name, value) pairs the host hands over, names already lower-case.
impl<T: AsRef<[(String, String)]>> RequestHeaders for T {
    fn values(&self, name: &str) -> Vec<&str> {
        self.as_ref().iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// Every token the sources yield, each with where it came from. Two or more distinct tokens
/// mean the client used more than one method (RFC 6750 §2: a 400); the same token twice
/// (an app that sends header and cookie alike) also counts, as RFC 6750 forbids it too.
pub fn extract<'a>(sources: &Sources, headers: &'a dyn RequestHeaders, path: &'a str) -> Vec<(&'a str, Location)> {
    let mut found = Vec::new();
    for source in &sources.headers {
        for value in headers.values(&source.name) {
            if let Some(token) = strip_prefix_ignore_case(value, &source.value_prefix) {
                let token = token.trim();
                if !token.is_empty() {
                    found.push((token, Location::Header(source.name.clone())));
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
                    found.push((value, Location::Param));
                }
            }
        }
    }
    if !sources.cookies.is_empty() {
        for cookie_header in headers.values("cookie") {
            for pair in cookie_header.split(';') {
                let (name, value) = pair.trim().split_once('=').unwrap_or((pair.trim(), ""));
                let value = value.trim_matches('"');
                if !value.is_empty() && sources.cookies.iter().any(|c| c == name) {
                    found.push((value, Location::Cookie));
                }
            }
        }
    }
    found
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
        let got = extract(&s, &h, "/");
        assert_eq!(got, vec![("abc", Location::Header("authorization".into()))]);
        assert!(extract(&s, &headers(&[("authorization", "Basic abc")]), "/").is_empty());
        assert!(extract(&s, &headers(&[("authorization", "Bearer ")]), "/").is_empty());
        assert!(extract(&s, &headers(&[("authorization", "Bear")]), "/").is_empty());
        assert!(extract(&s, &headers(&[("authorization", "Béarer x")]), "/").is_empty());
    }

    #[test]
    fn params_and_cookies() {
        let s = Sources { headers: vec![], params: vec!["token".into()], cookies: vec!["jwt".into()] };
        let h = headers(&[("cookie", "a=1; jwt=xyz; b=2")]);
        let got = extract(&s, &h, "/p?x=1&token=abc#f");
        assert_eq!(got, vec![("abc", Location::Param), ("xyz", Location::Cookie)]);
        assert!(extract(&s, &headers(&[]), "/p?tokenx=1&token=").is_empty());
    }

    #[test]
    fn two_methods_yield_two_tokens() {
        let s = Sources::default_bearer();
        let h = headers(&[("authorization", "Bearer a")]);
        assert_eq!(extract(&s, &h, "/?access_token=a").len(), 2);
        let repeated = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(extract(&s, &repeated, "/").len(), 2, "a repeated header is two methods too");
    }
}
