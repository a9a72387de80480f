//! End-to-end: the built filter in a real Envoy, in front of an echo upstream.

mod support;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::echo::Echo;
use support::envoy::{bootstrap, jwtguard_filter, stat, static_cluster, Build, Envoy, Listener, ListenerFile};
use support::tokens::{now, sign_raw, KeyPair};
use support::{http, scratch_dir, wait_for, Reply};

const ISSUER: &str = "https://issuer.test";
const HS_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

struct Keys {
    rsa: KeyPair,
    ec: KeyPair,
    ed: KeyPair,
    ps: KeyPair,
    es384: KeyPair,
    stranger: KeyPair,
}

impl Keys {
    fn generate(dir: &std::path::Path) -> Keys {
        Keys {
            rsa: KeyPair::generate(dir, Algorithm::RS256, "rsa1"),
            ec: KeyPair::generate(dir, Algorithm::ES256, "ec1"),
            ed: KeyPair::generate(dir, Algorithm::EdDSA, "ed1"),
            ps: KeyPair::generate(dir, Algorithm::PS256, "ps1"),
            es384: KeyPair::generate(dir, Algorithm::ES384, "ec384"),
            stranger: KeyPair::generate(dir, Algorithm::RS256, "rsa1"),
        }
    }

    /// The RSA key is published without `alg`, so it serves RS256/384/512 and PS*; the others
    /// are bound to their one algorithm.
    fn jwks(&self) -> String {
        let mut rsa = self.rsa.jwk();
        rsa.as_object_mut().unwrap().remove("alg");
        json!({"keys": [rsa, self.ec.jwk(), self.ed.jwk(), self.ps.jwk(), self.es384.jwk()]}).to_string()
    }
}

fn claims(extra: Value) -> Value {
    let t = now();
    let mut c = json!({"iss": ISSUER, "aud": "api", "sub": "alice", "iat": t, "exp": t + 600,
                       "roles": ["reader", "writer"], "org": {"tier": "gold"}, "scope": "orders:read"});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn plugin_config(keys: &Keys, overrides: Value) -> Value {
    let mut config = json!({
        "providers": {
            "main": {
                "issuer": ISSUER,
                "audiences": ["api"],
                "local_jwks": {"inline_string": keys.jwks()},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "from_params": ["access_token"],
                "from_cookies": ["jwt"],
                "claim_to_headers": [
                    {"header_name": "x-jwt-sub", "claim_name": "sub"},
                    {"header_name": "x-jwt-roles", "claim_name": "roles"},
                    {"header_name": "x-jwt-tier", "claim_name": "org.tier"}
                ],
                "forward_payload_header": "x-jwt-payload",
                "clock_skew_seconds": 0
            },
            "hs": {
                "issuer": "https://hs.test",
                "hmac_secrets": [{"secret": HS_SECRET}],
                "from_headers": [{"name": "x-api-token"}],
                "forward": true,
                "claim_to_headers": [{"header_name": "x-hs-sub", "claim_name": "sub"}]
            }
        },
        "rules": [
            {"match": {"prefix": "/public"}},
            {"match": {"prefix": "/admin"}, "requires": {"provider_name": "main"},
             "required_claims": [{"claim_name": "scope", "contains": "admin"}]},
            {"match": {"prefix": "/either"}, "requires": {"requires_any": {"requirements": [{"provider_name": "main"}, {"provider_name": "hs"}]}}},
            {"match": {"prefix": "/both"}, "requires": {"requires_all": {"requirements": [{"provider_name": "main"}, {"provider_name": "hs"}]}}},
            {"match": {"prefix": "/optional"}, "requires": {"requires_any": {"requirements": [{"provider_name": "main"}, {"allow_missing": {}}]}}},
            {"match": {"safe_regex": {"regex": "/orders/[0-9]+"}, "methods": ["DELETE"]}, "requires": {"provider_name": "main"},
             "required_claims": [{"claim_name": "roles", "contains": "writer"}]},
            {"match": {"prefix": "/api"}, "requires": {"provider_name": "main"}}
        ]
    });
    if let (Some(c), Some(o)) = (config.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            c.insert(k.clone(), v.clone());
        }
    }
    config
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn get(envoy: &Envoy, listener: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    http("GET", &envoy.url(listener, path), headers)
}

fn assert_denied(reply: &Reply, status: u16, challenge: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("www-authenticate"), Some(challenge), "{reply:?}");
    let body: Value = serde_json::from_str(&reply.body).expect("JSON error body");
    assert!(body["error"].is_string(), "{body}");
}

struct Setup {
    envoy: Envoy,
    keys: Keys,
    _echo: Echo,
}

fn setup(name: &str, overrides: Value) -> Setup {
    let dir = scratch_dir(name);
    let keys = Keys::generate(&dir);
    let echo = Echo::start("127.0.0.1:0").expect("echo upstream");
    let quiet = plugin_config(&keys, json!({"include_error_description": false, "realm": "quiet"}));
    let listeners = [
        Listener::to_cluster("main", vec![jwtguard_filter("main", &plugin_config(&keys, overrides))], "upstream"),
        Listener::to_cluster("quiet", vec![jwtguard_filter("quiet", &quiet)], "upstream"),
    ];
    let envoy = Envoy::start(&dir, &bootstrap(&listeners, &[static_cluster("upstream", echo.port)]));
    Setup { envoy, keys, _echo: echo }
}

#[test]
fn valid_tokens_reach_the_upstream_with_claim_headers() {
    let s = setup("valid", json!({}));
    let token = s.keys.rsa.sign(&claims(json!({})));
    let reply = get(&s.envoy, "main", "/api/orders", &[("authorization", &bearer(&token)), ("x-jwt-sub", "mallory")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = reply.echoed();
    assert_eq!(seen["x-jwt-sub"], "alice", "the client's x-jwt-sub is replaced");
    assert_eq!(seen["x-jwt-roles"], "reader,writer", "array claims are joined");
    assert_eq!(seen["x-jwt-tier"], "gold", "nested claims");
    assert_eq!(seen["x-jwt-payload"], token.split('.').nth(1).unwrap(), "payload header is the base64url payload");
    assert!(seen.get("authorization").is_none(), "forward: false strips the token");

    for (name, key) in [("ES256", &s.keys.ec), ("EdDSA", &s.keys.ed), ("PS256", &s.keys.ps), ("ES384", &s.keys.es384)] {
        let reply = get(&s.envoy, "main", "/api", &[("authorization", &bearer(&key.sign(&claims(json!({})))))]);
        assert_eq!(reply.status, 200, "{name}: {reply:?}");
    }
    assert!(s.envoy.counter(&stat("allowed")) >= 5);
}

#[test]
fn token_sources_and_spoofed_headers() {
    let s = setup("sources", json!({}));
    let token = s.keys.rsa.sign(&claims(json!({})));
    let by_param = get(&s.envoy, "main", &format!("/api?access_token={token}"), &[]);
    assert_eq!(by_param.status, 200, "{by_param:?}");
    let by_cookie = get(&s.envoy, "main", "/api", &[("cookie", &format!("a=b; jwt={token}"))]);
    assert_eq!(by_cookie.status, 200, "{by_cookie:?}");
    assert_eq!(by_cookie.echoed()["x-jwt-sub"], "alice");

    let twice = get(&s.envoy, "main", &format!("/api?access_token={token}"), &[("authorization", &bearer(&token))]);
    assert_denied(
        &twice,
        400,
        r#"Bearer realm="jwtguard", error="invalid_request", error_description="token sent by more than one method""#,
    );

    // Public and unmatched routes need no token, but spoofed identity headers never pass.
    for path in ["/public/x", "/unmatched"] {
        let reply =
            get(&s.envoy, "main", path, &[("x-jwt-sub", "mallory"), ("x-jwt-payload", "e30"), ("x-hs-sub", "m")]);
        assert_eq!(reply.status, 200, "{path}");
        let seen = reply.echoed();
        for h in ["x-jwt-sub", "x-jwt-payload", "x-hs-sub"] {
            assert!(seen.get(h).is_none(), "{path}: {h} was forwarded");
        }
    }

    // A token verified by a provider with forward: true stays on the request.
    let hs = sign_raw(
        r#"{"alg":"HS256"}"#,
        &json!({"iss": "https://hs.test", "sub": "svc", "exp": now() + 60}).to_string(),
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::HS256,
    );
    let reply = get(&s.envoy, "main", "/either", &[("x-api-token", &hs)]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.echoed()["x-api-token"], hs.as_str());
    assert_eq!(reply.echoed()["x-hs-sub"], "svc");
}

#[test]
fn every_denial_has_its_rfc6750_response() {
    let s = setup("denials", json!({}));
    let e = &s.envoy;
    let t = now();
    let denied = |path: &str, token: &str| get(e, "main", path, &[("authorization", &bearer(token))]);
    let invalid = |desc: &str| format!(r#"Bearer realm="jwtguard", error="invalid_token", error_description="{desc}""#);

    let missing = get(e, "main", "/api", &[]);
    assert_denied(&missing, 401, r#"Bearer realm="jwtguard""#);
    assert_eq!(get(e, "main", "/api", &[("authorization", "Basic dXNlcjpwdw==")]).status, 401);

    let cases: Vec<(String, &str)> = vec![
        (s.keys.rsa.sign(&claims(json!({"exp": t - 10}))), "token expired"),
        (s.keys.rsa.sign(&claims(json!({"nbf": t + 300}))), "token not yet valid"),
        (s.keys.rsa.sign(&claims(json!({"iss": "https://evil.test"}))), "token issuer is not accepted"),
        (s.keys.rsa.sign(&claims(json!({"aud": "other"}))), "token audience is not accepted"),
        (s.keys.stranger.sign(&claims(json!({}))), "token signature is invalid"),
        (s.keys.rsa.sign(&claims(json!({"exp": "never"}))), "token is malformed"),
        ("not.a.jwt".to_string(), "token is malformed"),
        (
            format!(
                "{}.",
                sign_raw(r#"{"alg":"none"}"#, "{}", &jsonwebtoken::EncodingKey::from_secret(b"x"), Algorithm::HS256)
                    .rsplit_once('.')
                    .unwrap()
                    .0
            ),
            "token is malformed",
        ),
        (format!("{}x", "a".repeat(9000)), "token is malformed"),
    ];
    for (token, description) in &cases {
        assert_denied(&denied("/api", token), 401, &invalid(description));
    }
    // A tampered payload keeps the signature of another.
    let good = s.keys.rsa.sign(&claims(json!({})));
    let other = s.keys.rsa.sign(&claims(json!({"sub": "root"})));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], other.split('.').nth(1).unwrap(), parts[2]);
    assert_denied(&denied("/api", &tampered), 401, &invalid("token signature is invalid"));

    let no_scope = denied("/admin", &good);
    assert_denied(
        &no_scope,
        403,
        r#"Bearer realm="jwtguard", error="insufficient_scope", error_description="token lacks a required claim", scope="admin""#,
    );
    assert_eq!(denied("/admin", &s.keys.rsa.sign(&claims(json!({"scope": "orders:read admin"})))).status, 200);
    assert_eq!(http("DELETE", &e.url("main", "/orders/7"), &[("authorization", &bearer(&good))]).status, 200);
    let reader = s.keys.rsa.sign(&claims(json!({"roles": ["reader"]})));
    assert_eq!(http("DELETE", &e.url("main", "/orders/7"), &[("authorization", &bearer(&reader))]).status, 403);
    assert_eq!(
        http("GET", &e.url("main", "/orders/7"), &[("authorization", &bearer(&reader))]).status,
        200,
        "rule is for DELETE only"
    );

    // Requirement trees.
    assert_eq!(get(e, "main", "/optional", &[]).status, 200);
    assert_eq!(denied("/optional", &good).status, 200);
    assert_eq!(denied("/optional", &cases[0].0).status, 401, "allow_missing still refuses a bad token");
    assert_eq!(denied("/both", &good).status, 401, "requires_all needs the hs token too");

    // The description can be turned off; the realm is configurable.
    let quiet = get(e, "quiet", "/api", &[("authorization", &bearer(&cases[0].0))]);
    assert_denied(&quiet, 401, r#"Bearer realm="quiet", error="invalid_token""#);
    assert_eq!(quiet.body, r#"{"error":"invalid_token"}"#);

    assert!(e.counter(&stat("denied.expired")) >= 1);
    assert!(e.counter(&stat("denied.missing")) >= 1);
    let prom = e.prometheus();
    for reason in [
        "missing",
        "malformed",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "insufficient_scope",
    ] {
        // One series, the reason a label (the stats_tags of envoy/envoy.yaml, in the harness too).
        let series = format!("jwtguard_denied{{reason=\"{reason}\"}} ");
        assert!(prom.lines().any(|l| l.starts_with(&series)), "{series} missing from /stats/prometheus:\n{prom}");
    }
}

#[test]
fn verified_tokens_are_cached_but_never_past_expiry() {
    let s = setup("cache", json!({}));
    let e = &s.envoy;
    let exp = now() + 600;
    let token = s.keys.rsa.sign(&claims(json!({"exp": exp})));
    let (hits, misses) = (e.counter(&stat("jwt_cache_hit")), e.counter(&stat("jwt_cache_miss")));
    for _ in 0..3 {
        assert_eq!(get(e, "main", "/api", &[("authorization", &bearer(&token))]).status, 200);
    }
    // A different token never hits, even with the same claims but another signature.
    let other = s.keys.ec.sign(&claims(json!({"exp": exp})));
    assert_eq!(get(e, "main", "/api", &[("authorization", &bearer(&other))]).status, 200);
    assert_eq!(e.counter(&stat("jwt_cache_miss")) - misses, 2);
    assert_eq!(e.counter(&stat("jwt_cache_hit")) - hits, 2);

    // A cached token is refused once its exp passes (clock_skew_seconds is 0 here).
    let short_exp = now() + 2;
    let short = s.keys.rsa.sign(&claims(json!({"exp": short_exp})));
    assert_eq!(get(e, "main", "/api", &[("authorization", &bearer(&short))]).status, 200);
    let refused_at = wait_for("the cached token to expire", Duration::from_secs(10), || {
        let r = get(e, "main", "/api", &[("authorization", &bearer(&short))]);
        (r.status == 401).then(|| (now(), r))
    });
    assert!(refused_at.0 >= short_exp, "refused before exp");
    assert!(refused_at.1.header("www-authenticate").unwrap().contains("token expired"));
}

#[test]
fn host_and_wasm_crypto_give_identical_verdicts() {
    let dir = scratch_dir("crypto");
    let keys = Keys::generate(&dir);
    let echo = Echo::start("127.0.0.1:0").expect("echo upstream");
    let no_cache = |host: bool| {
        let mut c = plugin_config(&keys, json!({"host_crypto": host}));
        c["providers"]["main"]["jwt_cache_config"] = json!({"jwt_cache_size": 0});
        c
    };
    let listeners = [
        Listener::to_cluster("host", vec![jwtguard_filter("host", &no_cache(true))], "upstream"),
        Listener::to_cluster("wasm", vec![jwtguard_filter("wasm", &no_cache(false))], "upstream"),
    ];
    let envoy = Envoy::start(&dir, &bootstrap(&listeners, &[static_cluster("upstream", echo.port)]));
    // Only the wasm build calls Envoy's `verify_signature` foreign function (and logs finding it).
    if Build::current() == Build::Wasm {
        wait_for("host crypto to be detected", Duration::from_secs(10), || {
            envoy.log_text().contains("crypto: Envoy verify_signature").then_some(())
        });
    }

    let ec_key = keys.ec.encoding_key();
    let good_ec = keys.ec.sign(&claims(json!({})));
    let ec_header = r#"{"alg":"ES256","kid":"ec1"}"#;
    let ec_input = good_ec.rsplit_once('.').unwrap().0;
    let raw_sig = support::tokens::decode(good_ec.rsplit_once('.').unwrap().1);
    let zero_sig = format!("{ec_input}.{}", support::tokens::encode(&[0u8; 64]));
    let der_sig = format!("{ec_input}.{}", support::tokens::encode(&p256_der(&raw_sig)));
    let mut flipped = raw_sig.clone();
    flipped[40] ^= 1;
    let flipped_sig = format!("{ec_input}.{}", support::tokens::encode(&flipped));
    let mut tokens: Vec<(String, String)> = vec![
        ("rs256".into(), keys.rsa.sign(&claims(json!({})))),
        ("es256".into(), good_ec.clone()),
        ("es384".into(), keys.es384.sign(&claims(json!({})))),
        ("ps256".into(), keys.ps.sign(&claims(json!({})))),
        ("eddsa".into(), keys.ed.sign(&claims(json!({})))),
        ("stranger".into(), keys.stranger.sign(&claims(json!({})))),
        ("es256 r=s=0".into(), zero_sig),
        ("es256 DER signature".into(), der_sig),
        ("es256 flipped bit".into(), flipped_sig),
        (
            "es256 key as RS256".into(),
            sign_raw(
                r#"{"alg":"RS256","kid":"ec1"}"#,
                &claims(json!({})).to_string(),
                &keys.rsa.encoding_key(),
                Algorithm::RS256,
            ),
        ),
        (
            "es256 fresh".into(),
            sign_raw(ec_header, &claims(json!({"sub": "bob"})).to_string(), &ec_key, Algorithm::ES256),
        ),
    ];
    for alg in [Algorithm::RS384, Algorithm::RS512] {
        let header = json!({"alg": support::tokens::alg_name(alg), "kid": "rsa1"}).to_string();
        tokens.push((
            format!("{alg:?}"),
            sign_raw(&header, &claims(json!({})).to_string(), &keys.rsa.encoding_key(), alg),
        ));
    }
    let verdicts = |listener: &str| -> Vec<u16> {
        tokens.iter().map(|(_, t)| get(&envoy, listener, "/api", &[("authorization", &bearer(t))]).status).collect()
    };
    let host_before = envoy.counter(&stat("verify.host_crypto"));
    let on_host = verdicts("host");
    let host_used = envoy.counter(&stat("verify.host_crypto")) - host_before;
    let wasm_before = envoy.counter(&stat("verify.wasm_crypto"));
    let in_wasm = verdicts("wasm");
    match Build::current() {
        Build::Wasm => {
            assert_eq!(
                envoy.counter(&stat("verify.host_crypto")) - host_before,
                host_used,
                "wasm listener used the host"
            );
            let wasm_used = envoy.counter(&stat("verify.wasm_crypto")) - wasm_before;
            // Every token but the one no key fits ("es256 key as RS256") is verified once.
            assert_eq!(wasm_used, tokens.len() as u64 - 1, "the wasm listener verifies everything in wasm");
            assert_eq!(host_used, tokens.len() as u64 - 3, "the host listener sends all but PS256 and EdDSA to Envoy");
        }
        // The module has no wasm crypto to fall back to: both listeners verify every RS*/ES*
        // token natively, counted under verify.host_crypto, whatever `host_crypto` says.
        Build::Module => {
            let native = tokens.len() as u64 - 3;
            assert_eq!(host_used, native, "the host listener verifies all but PS256 and EdDSA natively");
            let by_wasm = envoy.counter(&stat("verify.host_crypto")) - host_before - host_used;
            assert_eq!(by_wasm, native, "the wasm listener verifies all but PS256 and EdDSA natively");
        }
    }
    for (i, (name, _)) in tokens.iter().enumerate() {
        assert_eq!(on_host[i], in_wasm[i], "{name}: host {} vs wasm {}", on_host[i], in_wasm[i]);
    }
    let expected: Vec<u16> = vec![200, 200, 200, 200, 200, 401, 401, 401, 401, 401, 200, 200, 200];
    assert_eq!(on_host, expected, "{:?}", tokens.iter().map(|t| &t.0).collect::<Vec<_>>());

    // Every algorithm's signature out of range or out of its one encoding (s + n, r = n, S + L,
    // extra octets…): refused on both paths, where Envoy's BoringSSL and RustCrypto each check
    // less than the whole of it.
    let mut noncanonical = Vec::new();
    for (pair, alg) in [
        (&keys.rsa, Algorithm::RS256),
        (&keys.ps, Algorithm::PS256),
        (&keys.ec, Algorithm::ES256),
        (&keys.es384, Algorithm::ES384),
        (&keys.ed, Algorithm::EdDSA),
    ] {
        let token = pair.sign(&claims(json!({})));
        assert_eq!(get(&envoy, "wasm", "/api", &[("authorization", &bearer(&token))]).status, 200, "{alg:?}");
        noncanonical.extend(support::tokens::noncanonical_signatures(alg, &pair.jwk(), &token));
    }
    for (name, token) in &noncanonical {
        for listener in ["host", "wasm"] {
            let status = get(&envoy, listener, "/api", &[("authorization", &bearer(token))]).status;
            assert_eq!(status, 401, "{name} on {listener}");
        }
    }
}

/// A raw P-256 r‖s signature as DER, the form JWS forbids.
fn p256_der(raw: &[u8]) -> Vec<u8> {
    p256::ecdsa::Signature::from_slice(raw).expect("signature").to_der().as_bytes().to_vec()
}

#[test]
fn bad_configuration_fails_plugin_start_naming_the_field() {
    let dir = scratch_dir("badconfig");
    let echo = Echo::start("127.0.0.1:0").expect("echo upstream");
    let bad = json!({"providers": {"main": {"issuer": 5, "hmac_secrets": [{"secret": HS_SECRET}]}}});
    let listeners = [Listener::to_cluster("main", vec![jwtguard_filter("main", &bad)], "upstream")];
    let started = Instant::now();
    let log = match Envoy::try_start(&dir, &bootstrap(&listeners, &[static_cluster("upstream", echo.port)])) {
        Err(log) => log,
        Ok(envoy) => panic!("envoy accepted a bad plugin config:\n{}", envoy.log_text()),
    };
    assert!(log.contains("jwtguard: invalid configuration at providers.main.issuer: invalid type"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn hostile_input_never_kills_the_vm() {
    let s = setup("hostile", json!({}));
    let e = &s.envoy;
    let good = s.keys.rsa.sign(&claims(json!({})));
    let (h, p, _) = {
        let v: Vec<&str> = good.split('.').collect();
        (v[0].to_string(), v[1].to_string(), v[2].to_string())
    };
    let hostile = [
        String::new(),
        ".".into(),
        "..".into(),
        "....".into(),
        format!("{h}.{p}"),
        format!("{h}.{p}.AAAA.BBBB.CCCC"),
        format!("{h}.{}.x", "e30".repeat(2000)),
        format!("{}.{p}.x", support::tokens::encode(b"{\"alg\":\"RS256\",\"kid\":\"\\u0000../../etc/passwd\"}")),
        format!("{}.{p}.x", support::tokens::encode(b"{\"alg\":\"RS256\"")),
        format!(
            "{}.{}.x",
            support::tokens::encode(b"{\"alg\":\"HS256\"}"),
            support::tokens::encode(format!("{}1{}", "[".repeat(5000), "]".repeat(5000)).as_bytes())
        ),
        format!(
            "{}.{}.x",
            support::tokens::encode(b"{\"alg\":\"ES256\",\"kid\":\"ec1\"}"),
            support::tokens::encode(b"{\"exp\":1e400}")
        ),
        "\u{00e9}\u{00e9}.\u{00e9}.x".into(),
    ];
    for token in &hostile {
        let r = http(
            "GET",
            &e.url("main", "/api"),
            &[("authorization", &format!("Bearer {}", token.replace(|c: char| !c.is_ascii(), "_")))],
        );
        assert!(r.status == 401 || r.status == 400, "{token:.80}: {r:?}");
    }
    let weird_headers = [("cookie", ";;;=;jwt=;jwt"), ("authorization", "Bearer"), ("authorization", "bearer      ")];
    for (k, v) in weird_headers {
        assert_eq!(get(e, "main", "/api", &[(k, v)]).status, 401);
    }
    // Header values that are not UTF-8 (HTTP/1.1 allows obs-text): the SDK's header reader
    // panicked on them, and one such request killed the VM for every request on its worker.
    let url = e.url("main", "/api");
    let authority = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
    let raw = |extra: &[u8]| -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&authority).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = format!("GET /api HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n").into_bytes();
        request.extend_from_slice(extra);
        request.extend_from_slice(b"\r\n");
        stream.write_all(&request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).to_string();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, text)
    };
    let (status, text) = raw(b"authorization: Bearer \xff\xfe\r\n");
    assert_eq!(status, 401, "{text}");
    // A valid token beside a forged claim header whose value is not UTF-8: the forged header is
    // still seen, and stripped.
    let forged = [format!("authorization: Bearer {good}\r\n").as_bytes(), b"x-jwt-sub: \xffadmin\r\n"].concat();
    let (status, text) = raw(&forged);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"x-jwt-sub\":\"alice\"") && !text.contains("admin"),
        "the forged header reached upstream: {text}"
    );
    // Repeated headers, whatever the case of their names. Envoy joins a repeated
    // `authorization` into one value ("Bearer a,Bearer a"), which is no token; every copy of a
    // forged claim header (kept apart by Envoy) goes.
    let twice = format!("authorization: Bearer {good}\r\nAuthorization: Bearer {good}\r\n");
    let (status, text) = raw(twice.as_bytes());
    assert!(status == 401 && text.contains("token is malformed"), "{text}");
    let forged = format!("X-JWT-Sub: mallory\r\nauthorization: Bearer {good}\r\nx-jwt-sub: eve\r\n");
    let (status, text) = raw(forged.as_bytes());
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"x-jwt-sub\":\"alice\"") && !text.contains("mallory") && !text.contains("eve"),
        "a forged copy reached upstream: {text}"
    );
    // More headers than the module reads on its stack (32), the wanted ones last; then the same
    // without a token, and a request with few headers and no token, whose headers reuse the
    // earlier ones' buffers: nothing of an earlier request may count.
    let filler: String = (0..40).map(|i| format!("x-filler-{i}: {i}\r\n")).collect();
    let (status, text) = raw(format!("{filler}x-jwt-sub: mallory\r\nauthorization: Bearer {good}\r\n").as_bytes());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"x-jwt-sub\":\"alice\"") && !text.contains("mallory"), "{text}");
    let (status, text) = raw(format!("{filler}x-jwt-sub: mallory\r\n").as_bytes());
    assert_eq!(status, 401, "no token among many headers: {text}");
    let (status, text) = raw(b"");
    assert_eq!(status, 401, "no token after requests that had one: {text}");
    assert_eq!(get(e, "main", "/api", &[("authorization", &bearer(&good))]).status, 200, "VM still serves");
    assert!(!e.log_text().contains("panicked"), "a panic was logged");
}

/// Control planes (Istio's on every mesh change) push listener updates all day: each makes a new
/// filter configuration, and the old one is drained and destroyed. With two workers, each with
/// engines of the old configuration: the update is made in place, the new configuration decides
/// once the old filter chain has drained, the module destroys the old configuration (on the main
/// thread, which it checks), Envoy lives on, and every request let through is counted once,
/// across both configurations.
#[test]
fn a_listener_update_replaces_the_configuration() {
    let dir = scratch_dir("listener-update");
    let keys = Keys::generate(&dir);
    let echo = Echo::start("127.0.0.1:0").expect("echo upstream");
    let (first, second) = (
        plugin_config(&keys, json!({})),
        plugin_config(&keys, json!({"rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "hs"}}]})),
    );
    let bootstrap_with = |plugin: &Value| {
        let filter = jwtguard_filter("main", plugin);
        bootstrap(&[Listener::to_cluster("main", vec![filter], "upstream")], &[static_cluster("upstream", echo.port)])
    };
    let mut config = bootstrap_with(&first);
    let listeners = ListenerFile::serve(&dir, &mut config);
    let envoy = Envoy::try_start_with(&dir, &config, 2).unwrap_or_else(|log| panic!("envoy did not start:\n{log}"));

    let main_token = bearer(&keys.rsa.sign(&claims(json!({}))));
    let hs_token = sign_raw(
        r#"{"alg":"HS256"}"#,
        &json!({"iss": "https://hs.test", "sub": "svc", "exp": now() + 600}).to_string(),
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::HS256,
    );
    // Every request on a new connection (the kernel spreads them over the workers); the 200s
    // are counted here to check `allowed` against.
    let allowed = std::cell::Cell::new(0);
    let status = |header: &str, token: &str| {
        let status = get(&envoy, "main", "/api", &[(header, token)]).status;
        allowed.set(allowed.get() + u64::from(status == 200));
        status
    };
    let main = || status("authorization", &main_token);
    let hs = || status("x-api-token", &hs_token);
    for _ in 0..20 {
        assert_eq!(main(), 200);
    }
    assert_eq!(hs(), 401, "the first configuration wants main's token on /api");
    for worker in 0..2 {
        let connections = envoy.stat_now(&format!("listener.main.worker_{worker}.downstream_cx_total"));
        assert!(connections > 0, "worker {worker} served none of the first configuration's requests");
    }

    listeners.publish(&bootstrap_with(&second));
    // Requests while both configurations live (the old chain drains) count too.
    envoy.await_listener_update(1, || {
        wait_for("the new configuration", Duration::from_secs(10), || (hs() == 200).then_some(()));
    });
    if Build::current() == Build::Module {
        // The first configuration's namespace: its SHA-256 (module/src/filter.rs, parse_config).
        let digest = <sha2::Sha256 as sha2::Digest>::digest(first.to_string().as_bytes());
        let namespace: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        let destroyed = format!("jwtguard: configuration {namespace} destroyed");
        wait_for("the old configuration to be destroyed", Duration::from_secs(10), || {
            envoy.log_text().contains(&destroyed).then_some(())
        });
        assert!(!envoy.log_text().contains("off the main thread"), "{}", envoy.log_text());
    }
    for _ in 0..20 {
        assert_eq!(main(), 401, "the old configuration no longer decides");
        assert_eq!(hs(), 200);
    }
    assert_eq!(envoy.counter(&stat("allowed")), allowed.get(), "each request let through counted once");
}
