//! Mesh policy on the verified identity (issue 14, the proxy-wasm build): Envoy's RBAC filter
//! after jwtguard allows and denies on the claims jwtguard verified and copied to request
//! headers (`claim_to_headers`), and a client can never supply those headers itself — not on a
//! route that needs a token, not on a public one.

mod support;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::echo::Echo;
use support::envoy::{bootstrap, jwtguard_filter, static_cluster, Envoy, Listener};
use support::tokens::{now, KeyPair};
use support::{http, scratch_dir, Reply};

const ISSUER: &str = "https://issuer.test";

/// RBAC (ALLOW): any GET; a POST only with the `orders:write` scope in the verified
/// `x-jwt-scope` (an OAuth scope string: space-separated, matched as a whole word); DELETE only
/// for the subject `admin`.
fn rbac() -> Value {
    let header = |name: &str, matcher: Value| json!({"header": {"name": name, "string_match": matcher}});
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {
                "read": {"permissions": [header(":method", json!({"exact": "GET"}))], "principals": [{"any": true}]},
                "write-orders": {
                    "permissions": [header(":method", json!({"exact": "POST"}))],
                    "principals": [header("x-jwt-scope", json!({"safe_regex": {"regex": "(.* )?orders:write( .*)?"}}))]
                },
                "admin-deletes": {
                    "permissions": [header(":method", json!({"exact": "DELETE"}))],
                    "principals": [header("x-jwt-sub", json!({"exact": "admin"}))]
                }
            }}
        }
    })
}

struct Setup {
    envoy: Envoy,
    key: KeyPair,
    _echo: Echo,
}

fn setup() -> Setup {
    let dir = scratch_dir("policy");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").expect("echo upstream");
    let plugin = json!({
        "providers": {"idp": {
            "issuer": ISSUER,
            "local_jwks": {"inline_string": json!({"keys": [key.jwk()]}).to_string()},
            "claim_to_headers": [
                {"header_name": "x-jwt-sub", "claim_name": "sub"},
                {"header_name": "x-jwt-scope", "claim_name": "scope"}
            ]
        }},
        "rules": [
            {"match": {"prefix": "/public"}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}
        ]
    });
    let filters = vec![jwtguard_filter("policy", &plugin), rbac()];
    let listeners = [Listener::to_cluster("main", filters, "upstream")];
    let envoy = Envoy::start(&dir, &bootstrap(&listeners, &[static_cluster("upstream", echo.port)]));
    Setup { envoy, key, _echo: echo }
}

impl Setup {
    fn token(&self, sub: &str, scope: &str) -> String {
        self.key.sign(&json!({"iss": ISSUER, "sub": sub, "scope": scope, "exp": now() + 600}))
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        http(method, &self.envoy.url("main", path), headers)
    }
}

fn denied_by_rbac(reply: &Reply) -> bool {
    reply.status == 403 && reply.body.contains("RBAC: access denied")
}

#[test]
fn rbac_after_jwtguard_decides_on_verified_claims_only() {
    let s = setup();
    let bearer = |t: &str| format!("Bearer {t}");
    let writer = s.token("alice", "orders:read orders:write");
    let reader = s.token("bob", "orders:read");
    let lookalike = s.token("eve", "orders:writer xorders:write");

    assert_eq!(s.call("GET", "/orders", &[("authorization", &bearer(&reader))]).status, 200);
    let r = s.call("POST", "/orders", &[("authorization", &bearer(&writer))]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed()["x-jwt-scope"], "orders:read orders:write");
    assert!(denied_by_rbac(&s.call("POST", "/orders", &[("authorization", &bearer(&reader))])), "no scope");
    assert!(denied_by_rbac(&s.call("POST", "/orders", &[("authorization", &bearer(&lookalike))])), "look-alikes");

    // The reader adds the header a writer would have: jwtguard replaces it with the verified one.
    let reader_bearer = bearer(&reader);
    let forged = [("authorization", reader_bearer.as_str()), ("x-jwt-scope", "orders:write")];
    assert!(denied_by_rbac(&s.call("POST", "/orders", &forged)), "a forged scope beside a token");
    // No token on a public route: the forged headers are removed before RBAC sees the request.
    let public = [("x-jwt-scope", "orders:write"), ("x-jwt-sub", "admin")];
    assert!(denied_by_rbac(&s.call("POST", "/public/orders", &public)), "a forged scope without a token");
    assert!(denied_by_rbac(&s.call("DELETE", "/public/orders", &public)), "a forged subject without a token");
    assert_eq!(s.call("GET", "/public/orders", &public).echoed().get("x-jwt-sub"), None);

    // No token where one is required: jwtguard answers first (401), RBAC never decides.
    assert_eq!(s.call("POST", "/orders", &[("x-jwt-scope", "orders:write")]).status, 401);
    let admin = s.token("admin", "");
    assert_eq!(s.call("DELETE", "/orders/7", &[("authorization", &bearer(&admin))]).status, 200);
    assert!(denied_by_rbac(&s.call("DELETE", "/orders/7", &[("authorization", &bearer(&writer))])));
}
