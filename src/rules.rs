//! Which rule applies to a request (first match wins, as in `jwt_authn`) and the claim
//! requirements a rule adds on top of a verified token.

use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(regex_lite::Regex),
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub path: PathMatch,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
}

impl Matcher {
    /// Matches on the path without its query string, as Envoy's route `path` and `prefix` do.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(re) => re.find(path).is_some_and(|m| m.start() == 0 && m.end() == path.len()),
        };
        path_ok && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
    }
}

/// A claim that must contain a value, e.g. `scope` containing `orders:read`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequirement {
    /// Dotted path into nested objects, e.g. `realm_access.roles`.
    pub claim_path: Vec<String>,
    pub contains: String,
}

impl ClaimRequirement {
    /// A string claim counts as a space-delimited list (OAuth `scope`); an array by its elements.
    pub fn is_met(&self, claims: &Map<String, Value>) -> bool {
        match lookup(claims, &self.claim_path) {
            Some(Value::String(s)) => s.split(' ').any(|v| v == self.contains),
            Some(Value::Array(items)) => items.iter().any(|v| scalar_text(v).is_some_and(|t| t == self.contains)),
            Some(other) => scalar_text(other).is_some_and(|t| t == self.contains),
            None => false,
        }
    }
}

/// A scalar claim as text (strings as they are, numbers and booleans in JSON form); `None` for
/// null, arrays and objects.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Follows a dotted claim path; `None` if any step is missing or not an object.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(claims.get(first)?, |v, step| v.as_object()?.get(step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(path: PathMatch, methods: &[&str]) -> Matcher {
        Matcher { path, methods: methods.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn path_matching_ignores_query() {
        let prefix = m(PathMatch::Prefix("/api".into()), &[]);
        assert!(prefix.matches("GET", "/api/x?y=1"));
        assert!(!prefix.matches("GET", "/ap"));
        let exact = m(PathMatch::Exact("/logout".into()), &["POST"]);
        assert!(exact.matches("POST", "/logout?next=/"));
        assert!(!exact.matches("GET", "/logout"));
        assert!(!exact.matches("POST", "/logout/x"));
        let re = m(PathMatch::Regex(regex_lite::Regex::new("/users/[0-9]+").unwrap()), &[]);
        assert!(re.matches("GET", "/users/42"));
        assert!(!re.matches("GET", "/users/42/x"), "regex must match the whole path");
        assert!(!re.matches("GET", "/x/users/42"));
    }

    #[test]
    fn claim_requirements() {
        let claims =
            json!({"scope": "orders:read orders:write", "roles": ["admin", 7], "org": {"tier": "gold"}, "n": 3});
        let claims = claims.as_object().unwrap();
        let req = |path: &str, v: &str| ClaimRequirement {
            claim_path: path.split('.').map(String::from).collect(),
            contains: v.into(),
        };
        assert!(req("scope", "orders:read").is_met(claims));
        assert!(!req("scope", "orders").is_met(claims));
        assert!(req("roles", "admin").is_met(claims));
        assert!(req("roles", "7").is_met(claims));
        assert!(req("org.tier", "gold").is_met(claims));
        assert!(!req("org", "gold").is_met(claims));
        assert!(!req("missing.x", "a").is_met(claims));
        assert!(req("n", "3").is_met(claims));
    }
}
