//! The filter benchmark: one Envoy (`--concurrency 1`), one listener per variant, each ending in
//! the same `direct_response`, so differences are the auth filters' cost. Every jwtguard variant
//! runs in both builds side by side: the proxy-wasm filter and the dynamic module. wrk on loopback; the
//! variants interleaved over several rounds, each group of compared variants just after a
//! baseline run of its own; medians. The steadiest figure on a small noisy
//! machine is Envoy's CPU time per request (from /proc), so that is the headline, always as a
//! ratio to the no-auth baseline and to Envoy's native `jwt_authn` measured in the same run.
//!
//! Usage: jwtguard-bench filter [SECONDS_PER_RUN] [ROUNDS] [ONLY]   (defaults 5 and 4: an even
//!        count runs each group as often backwards as forwards; ONLY: run just the variants
//!        whose name contains it, and the baseline, e.g. `module`)
//!        jwtguard-bench status [SECONDS_PER_RUN] [ROUNDS]   (the revocation service's status
//!        endpoint against `redis-benchmark -t get` on the same Redis)
//! See bench/README.md.

use jsonwebtoken::{Algorithm, EncodingKey};
use jwtguard_demo::envoy::{bootstrap, module_file, wasm_file, Build, Envoy, Listener, Target};
use jwtguard_demo::redis::RedisServer;
use jwtguard_demo::service::Service;
use jwtguard_demo::tokens::{now, sign_raw, KeyPair};
use jwtguard_demo::{scratch_dir, wait_for};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const ISSUER: &str = "https://bench.jwtguard.local";
const HS_SECRET: &str = "a-benchmark-hmac-secret-of-32-bytes!";
/// The listener of the revocation-feed variant.
const FEED_VARIANT: &str = "rev_feed";

struct Variant {
    name: String,
    /// The native `jwt_authn` variant it is compared with.
    native: Option<String>,
    listener: Listener,
    token: Option<String>,
    /// A wrk script that sends many different tokens (the token above is one of them).
    script: Option<PathBuf>,
    /// Variants of one group run one after another, just after a baseline run of their own, and
    /// their overheads are taken against that run: the machine's drift over a round is then
    /// out of every comparison within a group (a native variant and its jwtguard twins).
    group: usize,
}

struct Sample {
    rps: f64,
    cpu_us_per_req: f64,
    p99_ms: f64,
    /// The CPU µs/req of the baseline run just before this one's group.
    baseline_cpu: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4).max(1);
    match args.get(1).map(String::as_str) {
        Some("filter") => filter(seconds, rounds, args.get(4).map(String::as_str)),
        Some("status") => status(seconds, rounds),
        _ => {
            eprintln!("usage: jwtguard-bench filter|status [SECONDS_PER_RUN] [ROUNDS] [ONLY]");
            std::process::exit(2);
        }
    }
}

/// The status endpoint under wrk (16 connections) against `redis-benchmark -t get` (16 clients)
/// on the same Redis, interleaved.
fn status(seconds: u32, rounds: usize) {
    let dir = scratch_dir("bench", "status");
    let redis = RedisServer::start(&dir, &[]);
    let bin = jwtguard_demo::repo_root().join("target/release/jwtguard-revocation");
    // One worker thread: on this 2-core machine the service shares the cores with Redis and wrk,
    // and cross-thread wakeups cost more than a second thread gains (measured: 60k vs 49k rps).
    let args: Vec<String> =
        ["--redis-url", &redis.url(), "--credentials", "w", "--status-credentials", "s", "--worker-threads", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let svc = Service::start(&bin, &dir, &args).unwrap_or_else(|e| panic!("service: {e}"));
    let url = format!("{}/v1/status?jti=bench-jti&sub=alice&iat={}", svc.url(), now());
    let mut service_rps = Vec::new();
    let mut p99 = Vec::new();
    let mut redis_rps = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}");
        let out = Command::new("wrk")
            .args(["-t1", "-c16", &format!("-d{seconds}s"), "--latency", "-H", "Authorization: Bearer s", &url])
            .output()
            .expect("wrk");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!text.contains("Non-2xx"), "status answered non-2xx:\n{text}");
        service_rps.push(
            text.lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0),
        );
        p99.push(
            text.lines().find_map(|l| l.trim().strip_prefix("99%")).map(|v| latency_ms(v.trim())).unwrap_or(f64::NAN),
        );
        let n = (seconds as u64 * 60_000).to_string();
        let out = Command::new("redis-benchmark")
            .args(["-p", &redis.port.to_string(), "-t", "get", "-c", "16", "-n", &n, "--csv"])
            .output()
            .expect("redis-benchmark (make deps)");
        let csv = String::from_utf8_lossy(&out.stdout).to_string();
        let rps = csv
            .lines()
            .find(|l| l.starts_with("\"GET\""))
            .and_then(|l| l.split(',').nth(1))
            .map(|v| v.trim_matches('"').parse().unwrap_or(0.0));
        redis_rps.push(rps.unwrap_or(0.0));
    }
    let (s, r, p) = (median(service_rps), median(redis_rps), median(p99));
    println!("Status endpoint: wrk -t1 -c16 -d{seconds}s; redis-benchmark -t get -c 16; {rounds} interleaved rounds, medians.");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| redis-benchmark GET rps | {r:.0} |");
    println!("| status endpoint rps | {s:.0} |");
    println!("| status ÷ GET | {:.2} |", s / r);
    println!("| status p99 latency | {p:.2} ms |");
}

fn filter(seconds: u32, rounds: usize, only: Option<&str>) {
    let dir = scratch_dir("bench", "filter");

    let rsa = KeyPair::generate(&dir, Algorithm::RS256, "rsa");
    let ec = KeyPair::generate(&dir, Algorithm::ES256, "ec");
    let hs_jwk =
        json!({"kty": "oct", "kid": "hs", "alg": "HS256", "k": jwtguard_demo::tokens::encode(HS_SECRET.as_bytes())});
    let public_jwks = json!({"keys": [rsa.jwk(), ec.jwk()]}).to_string();
    let hmac_jwks = json!({"keys": [hs_jwk]}).to_string();
    let t = now();
    let claims = json!({"iss": ISSUER, "aud": "bench", "sub": "alice", "iat": t, "exp": t + 3600});
    let hs_token = sign_raw(
        r#"{"alg":"HS256","kid":"hs"}"#,
        &claims.to_string(),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::HS256,
    );
    let tokens = [
        ("RS256", rsa.sign(&claims), &public_jwks),
        ("ES256", ec.sign(&claims), &public_jwks),
        ("HS256", hs_token, &hmac_jwks),
    ];

    let floor = json!({"providers": jwtguard_config(&public_jwks, true)["providers"], "rules": []});
    let mut variants = vec![Variant {
        name: "no auth (baseline)".into(),
        native: None,
        listener: listener("baseline", vec![]),
        token: None,
        script: None,
        group: 0,
    }];
    for build in BUILDS {
        let id = format!("floor_{}", label(build));
        variants.push(Variant {
            name: format!("jwtguard {}, no rule matches (the build's floor)", label(build)),
            native: None,
            listener: listener(&id, vec![build.filter(&id, &floor)]),
            token: Some(tokens[0].1.clone()),
            script: None,
            group: 1,
        });
    }
    for (alg, token, jwks) in &tokens {
        for (cached, suffix) in [(false, "no cache"), (true, "cache")] {
            let kind = if cached { "cache" } else { "nocache" };
            let group = variants.len();
            let native = format!("native jwt_authn {alg}, {suffix}");
            variants.push(Variant {
                name: native.clone(),
                native: None,
                listener: listener(&format!("native_{alg}_{kind}"), vec![native_filter(jwks, cached)]),
                token: Some(token.clone()),
                script: None,
                group,
            });
            for build in BUILDS {
                let id = format!("jwtguard_{}_{alg}_{kind}", label(build));
                variants.push(Variant {
                    name: format!("jwtguard {} {alg}, {suffix}", label(build)),
                    native: Some(native.clone()),
                    listener: listener(&id, vec![build.filter(&id, &jwtguard_config(jwks, cached))]),
                    token: Some(token.clone()),
                    script: None,
                    group,
                });
            }
        }
    }
    // Revocation: the real service and Redis behind the `revocation` cluster.
    let redis = RedisServer::start(&dir, &[]);
    let service_bin = jwtguard_demo::repo_root().join("target/release/jwtguard-revocation");
    let service_args: Vec<String> =
        ["--redis-url", &redis.url(), "--credentials", "w", "--status-credentials", "s"].map(String::from).to_vec();
    let service = Service::start(&service_bin, &dir, &service_args).unwrap_or_else(|e| panic!("service: {e}"));
    let with_revocation = |source: &str, ttl_ms: u64, cache_size: usize| {
        let mut c = jwtguard_config(&public_jwks, true);
        c["providers"]["bench"]["jwt_cache_config"]["jwt_cache_size"] = json!(cache_size);
        c["revocation"] = json!({"cluster": "revocation", "authority": "revocation", "credential": "s",
                                 "source": source, "cache_ttl_ms": ttl_ms, "timeout_ms": 1000});
        c
    };
    let many: Vec<String> = (0..2000)
        .map(|i| rsa.sign(&json!({"iss": ISSUER, "aud": "bench", "sub": format!("user{i}"), "jti": format!("j{i}"), "iat": t, "exp": t + 3600})))
        .collect();
    let script = dir.join("tokens.lua");
    std::fs::write(&script, wrk_script(&many)).expect("write wrk script");
    let mut many_tokens = jwtguard_config(&public_jwks, true);
    many_tokens["providers"]["bench"]["jwt_cache_config"]["jwt_cache_size"] = json!(4096);
    for build in BUILDS {
        let group = variants.len();
        for (id, name, config, token, script) in [
            (
                "rev_warm",
                "RS256, cache + revocation status callouts (warm)",
                with_revocation("status", 600_000, 100),
                tokens[0].1.clone(),
                None,
            ),
            ("many_norev", "RS256, cache, 2000 tokens", many_tokens.clone(), many[0].clone(), Some(script.clone())),
            (
                FEED_VARIANT,
                "RS256, cache + revocation feed, 2000 tokens",
                with_revocation("feed", 1_000, 4096),
                many[0].clone(),
                Some(script.clone()),
            ),
            (
                "rev_cold",
                "RS256, cache + revocation status callouts (every request a miss), 2000 tokens",
                with_revocation("status", 0, 4096),
                many[0].clone(),
                Some(script.clone()),
            ),
        ] {
            let id = format!("{id}_{}", label(build));
            variants.push(Variant {
                name: format!("jwtguard {} {name}", label(build)),
                native: None,
                listener: listener(&id, vec![build.filter(&id, &config)]),
                token: Some(token),
                script,
                group,
            });
        }
    }
    if let Some(only) = only {
        // The baseline, what matches, and the native variants they are compared with.
        let natives: Vec<String> =
            variants.iter().filter(|v| v.name.contains(only)).filter_map(|v| v.native.clone()).collect();
        variants.retain(|v| v.token.is_none() || v.name.contains(only) || natives.contains(&v.name));
    }
    let listeners: Vec<Listener> = variants
        .iter()
        .map(|v| Listener {
            name: v.listener.name.clone(),
            filters: v.listener.filters.clone(),
            target: Target::DirectResponse,
        })
        .collect();
    let clusters = [jwtguard_demo::envoy::static_cluster("revocation", service.port)];
    let envoy = Envoy::try_start_with(&dir, &bootstrap(&listeners, &clusters), 1)
        .unwrap_or_else(|log| panic!("envoy did not start:\n{log}"));
    // Every jwtguard listener logs its configuration: a wasm one from the main thread's VM and
    // the worker's, a module one once.
    let of_build = |b: Build| variants.iter().filter(|v| v.name.starts_with(&format!("jwtguard {}", label(b)))).count();
    let (wasm, module) = (of_build(Build::Wasm), of_build(Build::Module));
    wait_for("every jwtguard configuration", Duration::from_secs(30), || {
        (envoy.log_text().matches("jwtguard: providers").count() >= 2 * wasm + module).then_some(())
    });

    for v in &variants {
        let url = envoy.url(&v.listener.name, "/");
        let status = ureq::get(&url)
            .set("authorization", &format!("Bearer {}", v.token.clone().unwrap_or_default()))
            .call()
            .map(|r| r.status())
            .unwrap_or(0);
        assert_eq!(status, 200, "{} does not answer 200", v.name);
        run_wrk(&envoy, &url, v, 2, 0.0); // warm-up: fills the caches
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    // Status callouts made while a feed variant ran (only it takes traffic then): the proof
    // that the feed answers revocation with no callout per request.
    let callouts = |e: &Envoy, build: Build| {
        ["ok", "revoked", "unavailable", "timeout"]
            .iter()
            .map(|o| e.counter(&build.stat(&format!("revocation.check.{o}"))))
            .sum::<u64>()
    };
    let mut feed = BUILDS.map(|_| (0.0, 0));
    let baseline_url = envoy.url(&variants[0].listener.name, "/");
    // The groups, in order: runs of variants (after the baseline) with the same `group`.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in 1..variants.len() {
        match groups.last_mut() {
            Some(last) if variants[last[0]].group == variants[i].group => last.push(i),
            _ => groups.push(vec![i]),
        }
    }
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}");
        for group in &groups {
            let mut baseline = run_wrk(&envoy, &baseline_url, &variants[0], seconds, 0.0);
            baseline.baseline_cpu = baseline.cpu_us_per_req;
            let baseline_cpu = baseline.cpu_us_per_req;
            samples[0].push(baseline);
            // Every other round backwards, so that no variant always runs first after the
            // baseline or last before the next one.
            let order: Vec<usize> = if round % 2 == 0 { group.iter().rev().copied().collect() } else { group.clone() };
            for i in order {
                let v = &variants[i];
                let build = BUILDS.iter().position(|&b| v.listener.name == format!("{FEED_VARIANT}_{}", label(b)));
                let before = build.map_or(0, |b| callouts(&envoy, BUILDS[b]));
                let sample = run_wrk(&envoy, &envoy.url(&v.listener.name, "/"), v, seconds, baseline_cpu);
                if let Some(b) = build {
                    feed[b].1 += callouts(&envoy, BUILDS[b]) - before;
                    feed[b].0 += sample.rps * f64::from(seconds);
                }
                samples[i].push(sample);
            }
        }
    }
    let rss_all = rss_kib(envoy.pid());
    drop(envoy);
    drop(service);
    report(&variants, &samples, seconds, rounds);
    let rss = rss_with_and_without_filter(&dir, &public_jwks);
    println!();
    let samples_of = |name: &str| variants.iter().position(|v| v.listener.name == name).map(|i| &samples[i]);
    for (b, build) in BUILDS.iter().enumerate() {
        let (requests, made) = feed[b];
        let l = label(*build);
        let (Some(with), Some(without)) =
            (samples_of(&format!("{FEED_VARIANT}_{l}")), samples_of(&format!("many_norev_{l}")))
        else {
            continue;
        };
        // Run one after the other in each round: the round's difference, then the median.
        let difference = median(with.iter().zip(without).map(|(w, o)| w.cpu_us_per_req - o.cpu_us_per_req).collect());
        println!(
            "- Revocation feed, 2000 tokens, {l}: {difference:+.1} µs/req of Envoy CPU over the same tokens without \
             revocation (median of the rounds' differences); status callouts meanwhile: {made} for {requests:.0} requests"
        );
    }
    let size = |p: PathBuf| format!("{} bytes ({})", std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0), p.display());
    println!("- `.wasm` size: {}; module: {}", size(wasm_file()), size(module_file()));
    println!(
        "- Envoy RSS, idle, `--concurrency 1`: no filter {} MiB; one jwtguard listener: wasm {} MiB, module {} MiB; \
         this run's {} listeners ({} with jwtguard) {} MiB",
        rss.0 / 1024,
        rss.1 / 1024,
        rss.2 / 1024,
        variants.len(),
        wasm + module,
        rss_all / 1024
    );
}

fn listener(name: &str, filters: Vec<Value>) -> Listener {
    Listener { name: name.into(), filters, target: Target::DirectResponse }
}

fn jwtguard_config(jwks: &str, cached: bool) -> Value {
    json!({
        "providers": {"bench": {"issuer": ISSUER, "audiences": ["bench"], "local_jwks": {"inline_string": jwks},
                                "forward": true, "jwt_cache_config": {"jwt_cache_size": if cached { 100 } else { 0 }}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]
    })
}

fn native_filter(jwks: &str, cached: bool) -> Value {
    let mut provider =
        json!({"issuer": ISSUER, "audiences": ["bench"], "local_jwks": {"inline_string": jwks}, "forward": true});
    if cached {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 100});
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]
        }
    })
}

/// Envoy's user+system CPU time in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    ticks * 1e6 / 100.0 // USER_HZ is 100 on Linux
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A wrk script sending the tokens in turn.
fn wrk_script(tokens: &[String]) -> String {
    let list: Vec<String> = tokens.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "local tokens = {{ {} }}\nlocal i = 0\nrequest = function()\n  i = (i % #tokens) + 1\n  \
         return wrk.format(\"GET\", \"/\", {{[\"Authorization\"] = \"Bearer \" .. tokens[i]}})\nend\n",
        list.join(",\n")
    )
}

/// One wrk run; `baseline_cpu` is the paired baseline's figure, kept with it.
fn run_wrk(envoy: &Envoy, url: &str, variant: &Variant, seconds: u32, baseline_cpu: f64) -> Sample {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c16", &format!("-d{seconds}s"), "--latency"]);
    match (&variant.script, &variant.token) {
        (Some(script), _) => {
            cmd.arg("-s").arg(script);
        }
        (None, Some(t)) => {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        (None, None) => {}
    }
    let before = cpu_us(envoy.pid());
    let out = cmd.arg(url).output().expect("run wrk (make deps installs it)");
    let cpu = cpu_us(envoy.pid()) - before;
    let text = String::from_utf8_lossy(&out.stdout);
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in").map(|(n, _)| n.trim().to_string()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let rps =
        text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
    let non_2xx = text.contains("Non-2xx");
    assert!(!non_2xx && requests > 0.0, "wrk against {url} failed:\n{text}");
    let p99_ms =
        text.lines().find_map(|l| l.trim().strip_prefix("99%")).map(|v| latency_ms(v.trim())).unwrap_or(f64::NAN);
    Sample { rps, cpu_us_per_req: cpu / requests, p99_ms, baseline_cpu }
}

fn latency_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

/// The median; of an even count, the mean of the middle two. NaN for none.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
        n => xs[n / 2],
    }
}

fn report(variants: &[Variant], samples: &[Vec<Sample>], seconds: u32, rounds: usize) {
    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    // Each run's overhead is taken against its group's own baseline run (see `Variant::group`).
    let overhead = |i: usize| med(i, |s| s.cpu_us_per_req - s.baseline_cpu);
    let base_cpu = med(0, |s| s.cpu_us_per_req);
    println!(
        "wrk -t1 -c16 -d{seconds}s --latency per variant, {rounds} interleaved rounds, medians; Envoy --concurrency 1; \
         overheads are medians of each run's difference from the baseline run just before its group."
    );
    println!();
    println!("| variant | rps | Envoy CPU µs/req | × baseline | overhead µs/req | overhead ÷ native's | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for (i, v) in variants.iter().enumerate() {
        let cpu = med(i, |s| s.cpu_us_per_req);
        let native_overhead =
            v.native.as_ref().and_then(|native| variants.iter().position(|n| &n.name == native)).map(overhead);
        let vs_native = native_overhead.map_or("".to_string(), |n| format!("{:.2}", overhead(i) / n));
        println!(
            "| {} | {:.0} | {:.1} | {:.2} | {:.1} | {} | {:.2} |",
            v.name,
            med(i, |s| s.rps),
            cpu,
            1.0 + overhead(i) / base_cpu,
            overhead(i),
            vs_native,
            med(i, |s| s.p99_ms)
        );
    }
}

/// Idle RSS (KiB) of an Envoy without a filter, with one wasm listener, with one module listener.
fn rss_with_and_without_filter(dir: &std::path::Path, jwks: &str) -> (u64, u64, u64) {
    let mut rss = Vec::new();
    let config = jwtguard_config(jwks, true);
    for filters in [vec![], vec![Build::Wasm.filter("rss", &config)], vec![Build::Module.filter("rss", &config)]] {
        let sub = dir.join(format!("rss{}", rss.len()));
        std::fs::create_dir_all(&sub).expect("dir");
        let envoy = Envoy::try_start_with(&sub, &bootstrap(&[listener("l", filters)], &[]), 1).expect("envoy");
        let _ = ureq::get(&envoy.url("l", "/")).call();
        rss.push(rss_kib(envoy.pid()));
    }
    (rss[0], rss[1], rss[2])
}

const BUILDS: [Build; 2] = [Build::Wasm, Build::Module];

fn label(build: Build) -> &'static str {
    match build {
        Build::Wasm => "wasm",
        Build::Module => "module",
    }
}
