//! Mesh policy on the verified identity (issue 14, the proxy-wasm build): Envoy's RBAC filter
//! after jwtguard allows and denies on the claims jwtguard verified and copied to request
//! headers (`claim_to_headers`), and a client can never supply those headers itself — not on a
//! route that needs a token, not on a public one. And the report-only rollout: on the same
//! traffic, a report-only Envoy lets everything through while its counts, marks and reasons are
//! exactly what an enforcing Envoy refuses.

mod support;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::echo::Echo;
use support::envoy::{bootstrap, jwtguard_filter, stat, static_cluster, Build, Envoy, Listener};
use support::tokens::{now, KeyPair};
use support::{http, scratch_dir, Reply};

const ISSUER: &str = "https://issuer.test";
/// The issuer of support::revocation's tokens.
const ISSUER_REVOCATION: &str = support::revocation::ISSUER;

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

/// The same requests to an enforcing Envoy and to one whose rules are report-only (both with
/// the real revocation service): the second lets every request through, marks each that the
/// first refuses with the same reason, and counts `would_deny.<reason>` exactly as the first
/// counts `denied.<reason>`.
#[test]
fn report_only_lets_everything_through_and_reports_what_enforcement_refuses() {
    use support::revocation::{envoy, plugin, token, world, WRITE};
    let w = world("policy-report-only", &[]);
    let scoped = json!([{"match": {"prefix": "/admin"}, "requires": {"provider_name": "main"},
                          "required_claims": [{"claim_name": "scope", "contains": "admin"}]}]);
    let enforcing = plugin(&w.key, json!({}), scoped.clone());
    let mut reporting = enforcing.clone();
    for rule in reporting["rules"].as_array_mut().unwrap() {
        rule["report_only"] = json!(true);
    }
    let enforce = envoy(&w.dir, "enforce", &[("main", enforcing)], w.service.port, &w.echo);
    let report = envoy(&w.dir, "report", &[("main", reporting)], w.service.port, &w.echo);

    let stranger = KeyPair::generate(&w.dir, Algorithm::RS256, "k1");
    let t = now();
    let good = token(&w.key, "alice", "ok-1", t);
    let revoked = token(&w.key, "bob", "revoked-1", t);
    let expired =
        w.key.sign(&json!({"iss": ISSUER_REVOCATION, "sub": "carol", "jti": "x-1", "iat": t - 900, "exp": t - 600}));
    let forged = token(&stranger, "mallory", "f-1", t);
    let r = ureq::post(&format!("{}/v1/revoke", w.service.url()))
        .set("authorization", &format!("Bearer {WRITE}"))
        .set("content-type", "application/json")
        .send_string(&json!({"jti": "revoked-1", "exp": t + 600}).to_string());
    assert_eq!(r.map(|r| r.status()).unwrap_or(0), 200);
    let requests: Vec<(&str, Option<&String>)> = vec![
        ("/api", Some(&good)),
        ("/api", None),
        ("/api", Some(&revoked)),
        ("/api", Some(&expired)),
        ("/api", Some(&forged)),
        ("/admin", Some(&good)),
        ("/admin", None),
    ];
    let send = |e: &Envoy, path: &str, t: Option<&String>| {
        let bearer = t.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
        http("GET", &e.url("main", path), &headers)
    };
    // Both hold the revocation set, with the revocation in it, before the comparison: the
    // enforcing Envoy refuses the revoked token, the reporting one marks it so (before its set
    // is in, it would mark revocation_unavailable instead).
    let ready = |e: &Envoy| {
        let r = send(e, "/api", Some(&revoked));
        let mark = r.echoed_or_none("x-jwtguard-would-deny");
        r.status == 401 || mark.as_deref() == Some("revoked")
    };
    for e in [&enforce, &report] {
        support::wait_for("the revocation set", std::time::Duration::from_secs(10), || ready(e).then_some(()));
    }
    // Counts from here on (the readiness polls above counted too).
    let reasons = ["missing", "revoked", "expired", "bad_signature", "insufficient_scope"];
    let counts = |e: &Envoy, kind: &str| -> Vec<u64> {
        reasons.iter().map(|r| e.counter(&stat(&format!("{kind}.{r}")))).collect()
    };
    let (denied_before, reported_before) = (counts(&enforce, "denied"), counts(&report, "would_deny"));
    let mut expected: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for (path, t) in &requests {
        let enforced = send(&enforce, path, *t);
        let reported = send(&report, path, *t);
        assert_eq!(reported.status, 200, "{path} {:?}: report-only lets it through", t.map(|t| &t[..12]));
        let mark = reported.echoed().get("x-jwtguard-would-deny").and_then(Value::as_str).map(String::from);
        if enforced.status == 200 {
            assert_eq!(mark, None, "{path}: allowed by enforcement, nothing to report");
        } else {
            let reason = reason_of(&enforced);
            assert_eq!(mark.as_deref(), Some(reason), "{path}: the same reason");
            *expected.entry(reason).or_default() += 1;
        }
    }
    assert_eq!(expected.len(), 5, "missing, revoked, expired, bad signature, insufficient scope: {expected:?}");
    let delta =
        |after: Vec<u64>, before: &[u64]| -> Vec<u64> { after.iter().zip(before).map(|(a, b)| a - b).collect() };
    let wanted: Vec<u64> = reasons.iter().map(|r| expected.get(r).copied().unwrap_or(0)).collect();
    assert_eq!(delta(counts(&enforce, "denied"), &denied_before), wanted, "enforced, by reason {reasons:?}");
    assert_eq!(delta(counts(&report, "would_deny"), &reported_before), wanted, "reported, by reason {reasons:?}");
    assert_eq!(counts(&report, "denied"), vec![0; reasons.len()], "the report-only Envoy refused nothing");
    // A client cannot mark its own request (or unmark a refused one): its copy is removed — on
    // the enforcing Envoy too, which has no report-only rule.
    for e in [&enforce, &report] {
        let r = http(
            "GET",
            &e.url("main", "/api"),
            &[("authorization", &format!("Bearer {good}")), ("x-jwtguard-would-deny", "none")],
        );
        assert_eq!((r.status, r.echoed().get("x-jwtguard-would-deny")), (200, None), "{r:?}");
    }
    let good_bearer = format!("Bearer {good}");
    let forged_mark = [("authorization", good_bearer.as_str()), ("x-jwtguard-would-deny", "none")];
    let r = http("GET", &report.url("main", "/api"), &forged_mark);
    assert_eq!((r.status, r.echoed().get("x-jwtguard-would-deny")), (200, None), "{r:?}");
    let r = http("GET", &report.url("main", "/api"), &[("x-jwtguard-would-deny", "none")]);
    assert_eq!(r.echoed()["x-jwtguard-would-deny"], "missing", "replaced by the true reason");
    // The reason is a Prometheus label, beside the enforced ones' (the shipped stats_tags).
    let scrape = report.prometheus();
    assert!(scrape.contains("jwtguard_would_deny{reason=\"expired\"} 1\n"), "{scrape}");
    assert!(report.log_text().contains("jwtguard: report-only: a request let through would be refused"));
}

/// The stat name of an enforced refusal, from its answer (status and RFC 6750 challenge).
fn reason_of(reply: &Reply) -> &'static str {
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    match (reply.status, challenge) {
        (401, c) if !c.contains("error=") => "missing",
        (401, c) if c.contains("token revoked") => "revoked",
        (401, c) if c.contains("expired") => "expired",
        (401, c) if c.contains("signature") => "bad_signature",
        (403, _) => "insufficient_scope",
        _ => panic!("an unexpected refusal: {reply:?}"),
    }
}

trait Echoed {
    /// A header the echo upstream saw, if the reply is the upstream's.
    fn echoed_or_none(&self, name: &str) -> Option<String>;
}

impl Echoed for Reply {
    fn echoed_or_none(&self, name: &str) -> Option<String> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v["headers"][name].as_str().map(String::from)
    }
}

/// The dynamic-module build writes the verified payload where `jwt_authn` writes it
/// (`payload_in_metadata`), so one RBAC policy on that metadata decides the same behind
/// jwtguard as behind Envoy's own `jwt_authn`; the proxy-wasm build cannot write dynamic
/// metadata and refuses the field at start, naming it.
#[test]
fn rbac_on_jwt_authn_metadata_works_unchanged_behind_the_module() {
    let dir = scratch_dir("policy-metadata");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").expect("echo upstream");
    let jwks = json!({"keys": [key.jwk()]}).to_string();
    let plugin = json!({"providers": {"idp": {"issuer": ISSUER, "local_jwks": {"inline_string": jwks},
                                               "payload_in_metadata": "jwt_payload"}},
                        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]});
    let clusters = [static_cluster("upstream", echo.port)];
    if Build::current() == Build::Wasm {
        let listeners = [Listener::to_cluster("main", vec![jwtguard_filter("md", &plugin)], "upstream")];
        let log = Envoy::try_start(&dir, &bootstrap(&listeners, &clusters)).err().expect("the wasm build took it");
        let line = "jwtguard: providers.idp.payload_in_metadata: proxy-wasm cannot write dynamic metadata";
        assert!(log.contains(line), "no `{line}` in Envoy's log:\n{log}");
        return;
    }
    // POST only with the orders:write scope (a whole word of the scope string), DELETE only for
    // the subject admin, reading the payload jwt_authn would have written; `roles` is an array
    // (a ListValue).
    let payload = |claim: &str, matcher: Value| {
        json!({"sourced_metadata": {"metadata_source": "DYNAMIC", "metadata_matcher": {
            "filter": "envoy.filters.http.jwt_authn", "path": [{"key": "jwt_payload"}, {"key": claim}], "value": matcher}}})
    };
    let method = |m: &str| json!({"header": {"name": ":method", "string_match": {"exact": m}}});
    let rbac = json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {
                "read": {"permissions": [method("GET")], "principals": [{"any": true}]},
                "write-orders": {"permissions": [method("POST")],
                    "principals": [payload("scope", json!({"string_match": {"safe_regex": {"regex": "(.* )?orders:write( .*)?"}}}))]},
                "admin-deletes": {"permissions": [method("DELETE")],
                    "principals": [payload("sub", json!({"string_match": {"exact": "admin"}}))]},
                "auditors-put": {"permissions": [method("PUT")],
                    "principals": [payload("roles", json!({"list_match": {"one_of": {"string_match": {"exact": "auditor"}}}}))]}
            }}}
    });
    let native = json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"idp": {"issuer": ISSUER, "local_jwks": {"inline_string": jwks}, "payload_in_metadata": "jwt_payload"}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]}
    });
    let listeners = [
        Listener::to_cluster("jwtguard", vec![jwtguard_filter("md", &plugin), rbac.clone()], "upstream"),
        Listener::to_cluster("jwt_authn", vec![native, rbac], "upstream"),
    ];
    let envoy = Envoy::start(&dir, &bootstrap(&listeners, &clusters));
    let token = |sub: &str, scope: &str, roles: Value| {
        format!(
            "Bearer {}",
            key.sign(&json!({"iss": ISSUER, "sub": sub, "scope": scope, "roles": roles, "exp": now() + 600}))
        )
    };
    let writer = token("alice", "orders:read orders:write", json!(["auditor"]));
    let reader = token("bob", "orders:read", json!(["viewer"]));
    let lookalike = token("eve", "orders:writer xorders:write", json!(["auditors"]));
    let admin = token("admin", "", json!([]));
    let cases = [
        ("GET", &reader, 200),
        ("POST", &writer, 200),
        ("POST", &reader, 403),
        ("POST", &lookalike, 403),
        ("DELETE", &admin, 200),
        ("DELETE", &writer, 403),
        ("PUT", &writer, 200),
        ("PUT", &lookalike, 403),
    ];
    for listener in ["jwtguard", "jwt_authn"] {
        for (method, bearer, status) in &cases {
            let reply = http(method, &envoy.url(listener, "/orders"), &[("authorization", bearer)]);
            assert_eq!(reply.status, *status, "{listener}: {method} {bearer}: {reply:?}");
        }
    }
    // A client cannot send metadata: without a token there is none, and jwtguard answers first.
    assert_eq!(http("POST", &envoy.url("jwtguard", "/orders"), &[]).status, 401);
}

/// An identity let through without a revocation answer (`failure_mode: open`, the service
/// unreachable) carries `x-jwtguard-revocation: unchecked`, which no client can send: an RBAC
/// DENY policy after jwtguard refuses such identities where it matters (here writes) and keeps
/// reads available.
#[test]
fn rbac_refuses_writes_from_identities_whose_revocation_went_unchecked() {
    use support::revocation::{plugin, token};
    let dir = scratch_dir("policy-unchecked");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").expect("echo upstream");
    // The revocation service is down: a port this test holds, closing every connection.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_port = down.local_addr().unwrap().port();
    std::thread::spawn(move || down.incoming().for_each(drop));
    let plugin = plugin(&key, json!({"source": "status", "failure_mode": "open"}), json!([]));
    let rbac = json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {"unchecked-writes": {
                "permissions": [{"header": {"name": ":method", "string_match": {"exact": "POST"}}}],
                "principals": [{"header": {"name": "x-jwtguard-revocation", "present_match": true}}]
            }}}}
    });
    let listeners = [Listener::to_cluster("main", vec![jwtguard_filter("unchecked", &plugin), rbac], "upstream")];
    let clusters = [static_cluster("upstream", echo.port), static_cluster("revocation", down_port)];
    let envoy = Envoy::start(&dir, &bootstrap(&listeners, &clusters));
    let bearer = format!("Bearer {}", token(&key, "ivan", "i1", now()));
    let read = http("GET", &envoy.url("main", "/orders"), &[("authorization", &bearer)]);
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.echoed()["x-jwtguard-revocation"], "unchecked");
    assert!(denied_by_rbac(&http("POST", &envoy.url("main", "/orders"), &[("authorization", &bearer)])));
}
