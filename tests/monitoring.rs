//! monitoring/: the alerting rules pass `promtool check rules` and their unit tests (each alert
//! fires, and stays silent where it must), the PrometheusRule holds the same rules, the
//! dashboard's queries are PromQL, and every metric and label an alert or a panel uses is
//! exported by a real Envoy running the filter and by the real service, scraped after accepted,
//! denied and revoked requests and a Redis outage.

mod support;

use jwtguard_demo::redis::RedisServer;
use jwtguard_demo::repo_root;
use jwtguard_demo::service::{self, Service};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};
use support::echo::{self, Echo};
use support::envoy::{bootstrap, jwtguard_filter, stat, static_cluster, Envoy, Listener};
use support::monitoring::{exposition, query, yaml_documents};
use support::revocation::{assert_revoked, get, plugin, post, service_args, token, STATUS, WRITE};
use support::tokens::{now, KeyPair};
use support::{http, scratch_dir, wait_for};

const RULES: &str = "monitoring/jwtguard.rules.yaml";
const RULE_TESTS: &str = "monitoring/jwtguard.rules.test.yaml";
const PROMETHEUS_RULE: &str = "monitoring/prometheusrule.yaml";
const DASHBOARD: &str = "monitoring/jwtguard-dashboard.json";

/// Runs promtool (installed into the venv by scripts/deps.sh); its output.
fn promtool(args: &[&str]) -> String {
    let bin = repo_root().join(".venv/bin/promtool");
    let out = Command::new(&bin).args(args).output().unwrap_or_else(|e| panic!("{}: {e} (make deps)", bin.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn path(file: &str) -> String {
    repo_root().join(file).display().to_string()
}

fn rule_groups() -> Value {
    yaml_documents(RULES)[0]["groups"].clone()
}

/// Every rule of the rules file.
fn rules() -> Vec<Value> {
    rule_groups().as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap()).unwrap()
}

/// Every query of the dashboard: its panels' targets and its variables' `label_values`.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut queries = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let what = format!("panel {:?} {}", p["title"].as_str().unwrap(), t["refId"].as_str().unwrap());
            queries.push((what, t["expr"].as_str().unwrap().to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
        queries.push((format!("variable {}", v["name"]), v["definition"].as_str().unwrap().to_string()));
    }
    queries
}

/// The dashboard's Grafana variables replaced by what Grafana would send.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$envoy", ".*").replace("$service", ".*")
}

#[test]
fn the_rules_pass_promtool_and_each_alert_is_tested_firing_and_silent() {
    let checked = promtool(&["check", "rules", &path(RULES)]);
    let alerts: BTreeSet<String> = rules().iter().map(|r| r["alert"].as_str().unwrap().to_string()).collect();
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alerts.len())), "{checked}");
    let tested = promtool(&["test", "rules", &path(RULE_TESTS)]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // promtool passes a test of an alert that does not exist when it expects nothing: every
    // tested name must be a rule, and every rule needs a case that fires and one that must not.
    let tests = &yaml_documents(RULE_TESTS)[0];
    assert_eq!(tests["rule_files"], json!(["jwtguard.rules.yaml"]));
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_array().unwrap().iter().flat_map(|t| t["alert_rule_test"].as_array().unwrap()) {
        let name = case["alertname"].as_str().unwrap().to_string();
        assert!(alerts.contains(&name), "{RULE_TESTS} tests {name}, which {RULES} does not define");
        if case["exp_alerts"].as_array().is_some_and(|a| a.is_empty()) {
            silent.insert(name);
        } else {
            fires.insert(name);
        }
    }
    assert_eq!(fires, alerts, "alerts without a case where they fire");
    assert_eq!(silent, alerts, "alerts without a case where they must not fire");
}

#[test]
fn the_prometheus_rule_holds_the_rules_of_the_rules_file() {
    let docs = yaml_documents(PROMETHEUS_RULE);
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(docs[0]["kind"], "PrometheusRule");
    assert_eq!(docs[0]["spec"]["groups"], rule_groups(), "{PROMETHEUS_RULE} and {RULES} differ");
}

/// The panels' queries, given to promtool as recording rules: a query Prometheus would refuse
/// fails here. Panel ids are unique and every panel reads the dashboard's data source.
#[test]
fn the_dashboard_queries_are_promql() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    let mut recording = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            let expr = as_promql(t["expr"].as_str().unwrap());
            recording.push(json!({"record": format!("dashboard:panel_{}:{}", p["id"], t["refId"].as_str().unwrap()), "expr": expr}));
        }
    }
    let dir = scratch_dir("monitoring-dashboard");
    let file = dir.join("dashboard.rules.json"); // JSON is YAML
    std::fs::write(&file, json!({"groups": [{"name": "dashboard", "rules": recording}]}).to_string()).unwrap();
    let checked = promtool(&["check", "rules", &file.display().to_string()]);
    assert!(checked.contains(&format!("SUCCESS: {} rules found", recording.len())), "{checked}");
}

/// The filter's plugin configuration of the revocation tests, its provider's keys fetched from
/// a JWKS endpoint (cluster `jwks`) so that the per-provider JWKS stats exist.
fn remote_jwks_plugin(key: &KeyPair) -> Value {
    // A report-only rule, so that its would_deny counts exist to be scraped.
    let trial = json!([{"match": {"prefix": "/trial"}, "requires": {"provider_name": "main"}, "report_only": true}]);
    let mut config = plugin(key, json!({}), trial);
    let provider = config["providers"]["main"].as_object_mut().unwrap();
    provider.remove("local_jwks");
    provider.insert("remote_jwks".into(), json!({"cluster": "jwks", "uri": "http://jwks.test/keys"}));
    config
}

fn scrape(url: &str) -> String {
    ureq::get(url).call().unwrap_or_else(|e| panic!("{url}: {e}")).into_string().unwrap()
}

#[test]
fn every_metric_and_label_the_alerts_and_the_dashboard_use_is_exported() {
    let dir = scratch_dir("monitoring");
    let key = KeyPair::generate(&dir, jsonwebtoken::Algorithm::RS256, "k1");
    let mut redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&service::binary(), &dir, &service_args(&[redis.url()], false, &[])).expect("service");
    let upstream = Echo::start("127.0.0.1:0").unwrap();
    let jwks = echo::start_static("127.0.0.1:0", json!({"keys": [key.jwk()]}).to_string()).unwrap();
    let listeners =
        [Listener::to_cluster("main", vec![jwtguard_filter("monitoring", &remote_jwks_plugin(&key))], "upstream")];
    let clusters = [
        static_cluster("upstream", upstream.port),
        static_cluster("revocation", svc.port),
        static_cluster("jwks", jwks),
    ];
    let started = Instant::now();
    let envoy = Envoy::try_start_with(&dir, &bootstrap(&listeners, &clusters), 1)
        .unwrap_or_else(|log| panic!("envoy did not start:\n{log}"));

    // Accepted (once the keys and the revocation set are in), denied, revoked at a logout.
    let t = token(&key, "alice", "jti-monitoring", now());
    wait_for("a token to be accepted", Duration::from_secs(10), || {
        (get(&envoy, "main", &t).status == 200).then_some(())
    });
    assert_eq!(http("GET", &envoy.url("main", "/api"), &[]).status, 401);
    assert_eq!(http("GET", &envoy.url("main", "/trial"), &[]).status, 200, "report-only: let through");
    assert_eq!(get(&envoy, "main", "not-a-token").status, 401);
    assert_eq!(post(&envoy, "main", "/logout", &t).status, 204);
    assert_revoked(&get(&envoy, "main", &t));
    let age = wait_for("the key set's age gauge", Duration::from_secs(5), || {
        Some(envoy.stat_now(&stat("jwks.main.age_ms"))).filter(|&age| age > 0)
    });
    assert!(age <= started.elapsed().as_millis() as u64, "age {age} ms: older than this Envoy");

    // Redis down: the service's status answers fail and count a Redis error.
    redis.kill();
    let status = format!("{}/v1/status?jti=x", svc.url());
    let service = wait_for("a Redis error on the service's metrics", Duration::from_secs(20), || {
        assert_eq!(http("GET", &status, &[("authorization", &format!("Bearer {STATUS}"))]).status, 503);
        let metrics = scrape(&format!("{}/metrics", svc.url()));
        metrics.contains("jwtguard_revocation_redis_errors_total{").then_some(metrics)
    });
    let filter = envoy.prometheus();
    // Kept beside the test's logs, to read what was scraped.
    std::fs::write(dir.join("envoy.prom"), &filter).unwrap();
    std::fs::write(dir.join("service.prom"), &service).unwrap();
    let mut exported = exposition(&filter);
    exported.extend(exposition(&service));
    assert!(
        exported.get("jwtguard_jwks_age_ms").is_some_and(|l| l.contains("provider")),
        "the provider tag (stats_tags) must cover age_ms:\n{filter}"
    );

    let mut queries: Vec<(String, String)> =
        rules().iter().map(|r| (format!("alert {}", r["alert"]), r["expr"].as_str().unwrap().to_string())).collect();
    queries.extend(dashboard_queries());
    for (what, expr) in &queries {
        check_query(what, expr, &exported);
    }
    every_service_metric_has_help(&service);
}

/// Every API request is counted and timed under its route's endpoint, also those refused before
/// a handler runs (a wrong method, a body over the limit) and those to a path no route has (as
/// `other`: the label never holds a raw path); probes and /metrics are not. Before issue 11's
/// review only the answers of handlers were counted.
#[test]
fn the_service_counts_every_api_request_by_route() {
    let dir = scratch_dir("monitoring-requests");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&service::binary(), &dir, &service_args(&[redis.url()], false, &[])).expect("service");
    let oversized = ureq::post(&format!("{}/v1/revoke", svc.url()))
        .set("authorization", &format!("Bearer {WRITE}"))
        .set("content-type", "application/json")
        .send_string(&format!(r#"{{"jti": "{}"}}"#, "x".repeat(20 * 1024)));
    assert!(matches!(oversized, Err(ureq::Error::Status(413, _))), "{oversized:?}");
    assert_eq!(http("GET", &format!("{}/v1/revoke", svc.url()), &[]).status, 405);
    assert_eq!(http("GET", &format!("{}/v1/no-such-route/42", svc.url()), &[]).status, 404);
    let status = format!("{}/v1/status?jti=x", svc.url());
    assert_eq!(http("GET", &status, &[("authorization", &format!("Bearer {STATUS}"))]).status, 200);
    assert_eq!(http("GET", &format!("{}/healthz", svc.url()), &[]).status, 200);

    let metrics = scrape(&format!("{}/metrics", svc.url()));
    for (endpoint, code) in [("revoke", "413"), ("revoke", "405"), ("other", "404"), ("status", "200")] {
        let labels = format!(r#"{{endpoint="{endpoint}",code="{code}""#);
        assert!(metrics.contains(&format!("jwtguard_revocation_requests_total{labels}")), "{labels}:\n{metrics}");
        assert!(metrics.contains(&format!("jwtguard_revocation_request_duration_seconds_count{labels}")));
    }
    let endpoints: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("jwtguard_revocation_requests_total{"))
        .filter_map(|l| l.split(r#"endpoint=""#).nth(1)?.split('"').next())
        .collect();
    assert_eq!(endpoints, BTreeSet::from(["other", "revoke", "status"]), "probes and /metrics are not counted");
}

/// Every metric `expr` names is exported, with every label it matches or groups by (but
/// `instance` and `job`, which Prometheus adds when it scrapes).
fn check_query(what: &str, expr: &str, exported: &BTreeMap<String, BTreeSet<String>>) {
    let q = query(expr);
    assert!(!q.metrics.is_empty(), "{what} names no jwtguard metric: {expr}");
    let scraped = |name: &str| exported.get(name).unwrap_or_else(|| panic!("{what}: {name} is not exported ({expr})"));
    for name in &q.metrics {
        scraped(name);
    }
    let added_by_prometheus = ["instance", "job"];
    for (name, label) in q.matched.iter().filter(|(_, l)| !added_by_prometheus.contains(&l.as_str())) {
        assert!(scraped(name).contains(label), "{what}: {name} has no label {label} ({expr})");
    }
    for (label, scope) in q.grouped.iter().filter(|(l, _)| !added_by_prometheus.contains(&l.as_str())) {
        assert!(
            scope.iter().all(|n| scraped(n).contains(label)),
            "{what}: grouped by {label}, not a label of all of {scope:?} ({expr})"
        );
    }
}

/// The service describes every metric it exports (`# HELP`), not only names it.
fn every_service_metric_has_help(text: &str) {
    let typed: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(typed.len() >= 8, "{text}");
    for name in typed {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP:\n{text}");
    }
}
