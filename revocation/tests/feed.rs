//! The revocation feed (`GET /v1/feed`) against real Redis that the tests start on free ports:
//! every kind of event in order, pages, expiry, trimming, strict parsing, long-polls, Redis
//! paused, a Cluster failover of the stream's shard, and a thousand idle long-polls.

mod common;

use common::{args, bin, call, Reply, MAX_LIFETIME, STATUS, WRITE};
use jsonwebtoken::Algorithm;
use jwtguard_demo::redis::{RedisCluster, RedisServer};
use jwtguard_demo::service::Service;
use jwtguard_demo::tokens::{now, KeyPair};
use jwtguard_demo::{scratch_dir, wait_for};
use jwtguard_wire::{FeedEvent, FeedResponse};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const SKEW: u64 = 60;
const FEED_KEY: &str = "jwtguard:{feed}";

fn post(svc: &Service, path: &str, body: &Value) -> Reply {
    call("POST", &format!("{}{path}", svc.url()), Some(WRITE), Some("application/json"), Some(&body.to_string()))
}

fn revoke(svc: &Service, jti: &str, exp: u64) -> u16 {
    post(svc, "/v1/revoke", &json!({"jti": jti, "exp": exp})).status
}

fn feed(svc: &Service, query: &str) -> Reply {
    call("GET", &format!("{}/v1/feed?{query}", svc.url()), Some(STATUS), None, None)
}

/// One page; the answer must be a 200 the filter accepts.
fn page(svc: &Service, query: &str) -> FeedResponse {
    let r = feed(svc, query);
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    let page: FeedResponse = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    assert!(position(&page.position).is_some(), "position {:?}", page.position);
    page
}

fn position(p: &str) -> Option<(u64, u64)> {
    let (ms, seq) = p.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Every page from `after` (from the start without it) until one says `more: false`: the
/// events, the final position and the number of pages. From page to page positions only move
/// forward (the first may go back: a position no stream reached starts over).
fn read_all(svc: &Service, after: Option<&str>) -> (Vec<FeedEvent>, String, usize) {
    let (mut events, mut at, mut pages) = (Vec::new(), after.map(String::from), 0);
    loop {
        let query = match &at {
            Some(p) => format!("after={p}&wait_ms=0"),
            None => "wait_ms=0".into(),
        };
        let page = page(svc, &query);
        pages += 1;
        assert!(pages < 100, "no end to the pages");
        if let (Some(previous), true) = (&at, pages > 1) {
            assert!(position(&page.position) > position(previous), "{} after {previous}", page.position);
        }
        events.extend(page.events);
        at = Some(page.position);
        if !page.more {
            return (events, at.unwrap_or_default(), pages);
        }
    }
}

fn revoked_jtis(events: &[FeedEvent]) -> HashSet<String> {
    events
        .iter()
        .filter_map(|e| match e {
            FeedEvent::Revoked { jti, .. } => Some(jti.clone()),
            _ => None,
        })
        .collect()
}

fn metric(svc: &Service, name: &str) -> f64 {
    let text = call("GET", &format!("{}/metrics", svc.url()), None, None, None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn held_polls(svc: &Service) -> f64 {
    metric(svc, "jwtguard_revocation_feed_held_polls")
}

/// Adds `n` entries in the documented format straight to the stream (far quicker than `n`
/// requests): revocations of `PREFIX-i` until `until`. Returns the last entry's id.
fn bulk_append(redis: &RedisServer, prefix: &str, n: usize, until: u64) -> String {
    let script = r#"local id
        for i = 1, tonumber(ARGV[1]) do
        id = redis.call('XADD', KEYS[1], '*', 'event', '{"type":"revoked","jti":"' .. ARGV[2] .. i .. '","until":' .. ARGV[3] .. '}')
        end
        return id"#;
    let out = redis.cli(&["EVAL", script, "1", FEED_KEY, &n.to_string(), prefix, &until.to_string()]);
    assert!(!out.contains("ERR"), "{out}");
    out.trim().to_string()
}

/// Waits until the service's feed reaches `last`: a running instance's reader takes the entries
/// in batches, and until it has them all its pages (rightly) end where it is.
fn caught_up(svc: &Service, last: &str) {
    wait_for(&format!("the feed to reach {last}"), Duration::from_secs(10), || {
        (read_all(svc, None).1 == last).then_some(())
    });
}

#[test]
fn the_feed_carries_every_write_in_order_in_pages() {
    let dir = scratch_dir("revocation", "feed-order");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    let t = now();
    let empty = page(&svc, "wait_ms=0");
    assert_eq!((empty.position.as_str(), empty.more, empty.events.len()), ("0-0", false, 0));
    assert_eq!(page(&svc, "").position, "0-0", "wait_ms defaults to 0");

    // Each write's events, read right after it from the previous position.
    let key = KeyPair::load_or_generate(&dir, Algorithm::ES256, "feed");
    let token = key.sign(&json!({"jti": "raw-1", "sub": "bob", "iat": t, "exp": t + 300}));
    let form = format!("token={token}&token_type_hint=access_token");
    let session = |jti: &str| json!({"jti": jti, "sub": "erin", "exp": t + 600});
    type Write<'a> = Box<dyn Fn() -> Reply + 'a>;
    let writes: Vec<(Write, Vec<FeedEvent>)> = vec![
        (
            Box::new(|| post(&svc, "/v1/revoke", &json!({"jti": "j-1", "exp": t + 600}))),
            vec![FeedEvent::Revoked { jti: "j-1".into(), until: t + 600 + SKEW }],
        ),
        (
            Box::new(|| {
                let url = format!("{}/v1/revoke", svc.url());
                call("POST", &url, Some(WRITE), Some("application/x-www-form-urlencoded"), Some(&form))
            }),
            vec![FeedEvent::Revoked { jti: "raw-1".into(), until: t + 300 + SKEW }],
        ),
        (
            Box::new(|| post(&svc, "/v1/revoke", &json!({"token": token}))),
            vec![FeedEvent::Revoked { jti: "raw-1".into(), until: t + 300 + SKEW }],
        ),
        (
            Box::new(|| post(&svc, "/v1/revoke-subject", &json!({"sub": "carol", "issued_before": t}))),
            vec![FeedEvent::SubjectCutoff {
                sub: "carol".into(),
                iss: None,
                before: t,
                until: t + MAX_LIFETIME + SKEW,
            }],
        ),
        // The event goes first and carries the cutoff asked for; the one in force (t) had its
        // own, and a filter keeps the latest cutoff it has seen.
        (
            Box::new(|| post(&svc, "/v1/revoke-subject", &json!({"sub": "carol", "issued_before": t - 100}))),
            vec![FeedEvent::SubjectCutoff {
                sub: "carol".into(),
                iss: None,
                before: t - 100,
                until: t - 100 + MAX_LIFETIME + SKEW,
            }],
        ),
        (
            Box::new(|| {
                post(&svc, "/v1/revoke-subject", &json!({"sub": "dave", "iss": "https://a", "issued_before": t}))
            }),
            vec![FeedEvent::SubjectCutoff {
                sub: "dave".into(),
                iss: Some("https://a".into()),
                before: t,
                until: t + MAX_LIFETIME + SKEW,
            }],
        ),
        (Box::new(|| post(&svc, "/v1/sessions", &session("s1"))), vec![]),
        (
            Box::new(|| post(&svc, "/v1/sessions", &session("s2"))),
            vec![FeedEvent::SessionEnded { jti: "s1".into(), until: t + 600 }],
        ),
        (
            Box::new(|| call("DELETE", &format!("{}/v1/sessions/s2", svc.url()), Some(WRITE), None, None)),
            vec![FeedEvent::SessionEnded { jti: "s2".into(), until: t + 600 }],
        ),
        (Box::new(|| call("DELETE", &format!("{}/v1/sessions/s2", svc.url()), Some(WRITE), None, None)), vec![]),
        (Box::new(|| post(&svc, "/v1/revoke", &json!({"jti": "old", "exp": t - 3600}))), vec![]),
    ];
    let mut at = empty.position;
    let mut expected = Vec::new();
    for (i, (write, events)) in writes.iter().enumerate() {
        let r = write();
        assert_eq!(r.status, 200, "write {i}: {}", r.body);
        let p = page(&svc, &format!("after={at}&wait_ms=0"));
        assert_eq!(p.events, *events, "write {i}");
        assert!(!p.more);
        if events.is_empty() {
            assert_eq!(p.position, at, "write {i}: nothing new, the same position");
        } else {
            assert!(position(&p.position) > position(&at), "write {i}: {} after {at}", p.position);
        }
        at = p.position;
        expected.extend(events.iter().cloned());
    }
    let (all, end, _) = read_all(&svc, None);
    assert_eq!((all, end.as_str()), (expected.clone(), at.as_str()), "the whole feed, from the start");

    // Expired and unreadable entries are never sent, but the position moves past them.
    redis.cli(&["XADD", FEED_KEY, "*", "event", r#"{"type":"revoked","jti":"expired","until":1}"#]);
    redis.cli(&["XADD", FEED_KEY, "*", "event", "{not json"]);
    redis.cli(&["XADD", FEED_KEY, "*", "event", r#"{"type":"unknown","jti":"x","until":99999999999}"#]);
    let last = redis.cli(&["XADD", FEED_KEY, "*", "other", "x"]);
    caught_up(&svc, &last);
    let p = page(&svc, &format!("after={at}&wait_ms=0"));
    assert_eq!((p.events.len(), p.position.as_str(), p.more), (0, last.as_str(), false));
    assert_eq!(revoke(&svc, "j-2", t + 600), 200, "the service reads on after those");
    assert_eq!(revoked_jtis(&page(&svc, &format!("after={last}")).events), HashSet::from(["j-2".to_string()]));

    // Pages: 2,100 more entries come in three pages, from memory (this instance's reader saw
    // them) and from Redis (an instance started after them: XRANGE, a page per 1000 entries).
    // The instance's own write right after them: a poll after its answer carries the write and
    // all before it, however far behind the reader still is (it takes 1000 entries a read).
    bulk_append(&redis, "bulk-", 2_100, t + 600);
    assert_eq!(revoke(&svc, "own", t + 600), 200);
    let later = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("second service");
    for svc in [&svc, &later] {
        let first = page(svc, "wait_ms=0");
        assert!(first.more && (990..=1000).contains(&first.events.len()), "{}", first.events.len());
        let (events, _, pages) = read_all(svc, None);
        assert_eq!(pages, 3, "1000 + 1000 + the rest");
        assert_eq!(events.len(), expected.len() + 1 + 2_100 + 1);
        assert_eq!(events[..expected.len()], expected[..]);
    }

    // Long events: the page is cut by size, well under the filter's 1 MiB.
    let (_, before_long, _) = read_all(&svc, None);
    let last = bulk_append(&redis, &"é".repeat(250), 1_000, t + 600);
    let latest = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("third service");
    for svc in [&svc, &latest] {
        caught_up(svc, &last);
        let r = feed(svc, &format!("after={before_long}&wait_ms=0"));
        let p: FeedResponse = serde_json::from_str(&r.body).unwrap();
        assert!(
            p.more && p.events.len() < 1000 && r.body.len() < 600 * 1024,
            "{} events, {} bytes",
            p.events.len(),
            r.body.len()
        );
        let (events, _, _) = read_all(svc, Some(&before_long));
        assert_eq!(events.len(), 1_000);
    }

    // A position older than the stream's first entry (trimmed away) gets the whole stream.
    redis.cli(&["XTRIM", FEED_KEY, "MAXLEN", "5"]);
    let (events, _, _) = read_all(&later, Some(&at));
    assert_eq!(events.len(), 5, "the five entries left, from the first");
    assert!(revoked_jtis(&events).iter().all(|j| j.starts_with('é')));
    // The instance that saw the trimmed entries may send them too; never fewer.
    assert!(revoked_jtis(&read_all(&svc, Some(&at)).0).is_superset(&revoked_jtis(&events)));
    // A position no stream reached starts over as well.
    for beyond in ["99999999999999999999-0", "18446744073709551615-18446744073709551615"] {
        let (events, _, _) = read_all(&later, Some(beyond));
        assert_eq!(events.len(), 5, "{beyond}");
    }
}

#[test]
fn a_poll_after_a_write_carries_it_however_far_behind_the_reader_is() {
    let dir = scratch_dir("revocation", "feed-own-writes");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    // 50,000 entries at once: the reader takes them 1000 a read, the write lands behind them.
    let last = bulk_append(&redis, "bulk-", 50_000, now() + 600);
    assert_eq!(revoke(&svc, "own", now() + 600), 200);
    let p = page(&svc, &format!("after={last}&wait_ms=0"));
    assert_eq!(revoked_jtis(&p.events), HashSet::from(["own".to_string()]));
}

#[test]
fn the_feed_refuses_what_the_document_forbids_and_needs_the_status_credential() {
    let dir = scratch_dir("revocation", "feed-refusals");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    for q in [
        "after=",
        "after=1",
        "after=1-",
        "after=-1",
        "after=1-2-3",
        "after=a-1",
        "after=%2B1-1",
        "after=1-1%00",
        "after=123456789012345678901-0",
        "after=1-0&after=2-0",
        "wait_ms=",
        "wait_ms=-1",
        "wait_ms=1.5",
        "wait_ms=%2B5",
        "wait_ms=60001",
        "wait_ms=99999999999999999999",
        "wait_ms=1&wait_ms=2",
        "wait_ms=1e3",
        "unknown=1",
        "after=0-0&jti=x",
        "after=%FF",
        "after=%",
    ] {
        let r = feed(&svc, q);
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_request", "{q}");
    }
    let url = format!("{}/v1/feed?wait_ms=0", svc.url());
    for credential in [None, Some("wrong"), Some(WRITE)] {
        assert_eq!(call("GET", &url, credential, None, None).status, 401, "{credential:?}");
    }
}

#[test]
fn a_held_poll_gets_the_next_revocation_at_once_or_a_heartbeat_after_wait_ms() {
    let dir = scratch_dir("revocation", "feed-longpoll");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    assert_eq!(revoke(&svc, "first", now() + 600), 200);
    let at = page(&svc, "wait_ms=0").position;

    let started = Instant::now();
    let heartbeat = page(&svc, &format!("after={at}&wait_ms=300"));
    let took = started.elapsed();
    assert_eq!((heartbeat.position.as_str(), heartbeat.events.len(), heartbeat.more), (at.as_str(), 0, false));
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1500), "heartbeat after {took:?}");

    let url = format!("{}/v1/feed?after={at}&wait_ms=10000", svc.url());
    let held = std::thread::spawn(move || call("GET", &url, Some(STATUS), None, None));
    wait_for("the poll to be held", Duration::from_secs(10), || (held_polls(&svc) == 1.0).then_some(()));
    let revoked_at = Instant::now();
    assert_eq!(revoke(&svc, "while-held", now() + 600), 200);
    let r = held.join().expect("the held poll");
    let latency = revoked_at.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    let p: FeedResponse = serde_json::from_str(&r.body).unwrap();
    assert_eq!(revoked_jtis(&p.events), HashSet::from(["while-held".to_string()]));
    eprintln!("held poll answered {latency:?} after the revocation was sent (heartbeat after {took:?})");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    wait_for("the held-polls gauge back to 0", Duration::from_secs(5), || (held_polls(&svc) == 0.0).then_some(()));

    // --feed-max-wait-ms caps what a client asks for.
    let capped = Service::start(&bin(), &dir, &args(&[redis.url()], false, &["--feed-max-wait-ms", "200"]))
        .expect("service with a short wait");
    let started = Instant::now();
    let p = page(&capped, &format!("after={}&wait_ms=60000", p.position));
    assert!(p.events.is_empty() && started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn with_redis_paused_the_feed_answers_503_and_afterwards_misses_nothing_acknowledged() {
    let dir = scratch_dir("revocation", "feed-paused");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    let exp = now() + 600;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let jti = format!("before-{i}");
        assert_eq!(revoke(&svc, &jti, exp), 200);
        acknowledged.push(jti);
    }
    let at = page(&svc, "wait_ms=0").position;
    let url = format!("{}/v1/feed?after={at}&wait_ms=20000", svc.url());
    let held = std::thread::spawn(move || call("GET", &url, Some(STATUS), None, None));
    wait_for("the poll to be held", Duration::from_secs(10), || (held_polls(&svc) == 1.0).then_some(()));

    redis.pause();
    let paused = Instant::now();
    let r = held.join().expect("the held poll");
    let released = paused.elapsed();
    assert_eq!(r.status, 503, "a held poll must not be answered as current: {}", r.body);
    let started = Instant::now();
    let r = feed(&svc, &format!("after={at}&wait_ms=0"));
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(started.elapsed() < Duration::from_secs(1), "a new poll waited {:?}", started.elapsed());
    let during = revoke(&svc, "during", exp);
    assert_eq!(during, 503, "not acknowledged while Redis is stopped");
    eprintln!("Redis paused: the held poll got 503 after {released:?}");
    assert!(released < Duration::from_secs(6), "{released:?}");

    redis.resume();
    let resumed = Instant::now();
    wait_for("the feed to answer again", Duration::from_secs(15), || {
        (feed(&svc, &format!("after={at}&wait_ms=0")).status == 200).then_some(())
    });
    eprintln!("Redis resumed: the feed answered again after {:?}", resumed.elapsed());
    for i in 0..5 {
        let jti = format!("after-{i}");
        assert_eq!(revoke(&svc, &jti, exp), 200);
        acknowledged.push(jti);
    }
    let seen = revoked_jtis(&read_all(&svc, None).0);
    for jti in &acknowledged {
        assert!(seen.contains(jti), "{jti} was acknowledged and is not in the feed");
    }
}

/// With `--min-replicas-ack 1`, the primary of the feed's shard is killed while revocations
/// stream in: every one answered 200 is in the feed afterwards, read from the start both through
/// the instance that watched the failover and through a new one (straight from Redis).
#[test]
fn acknowledged_revocations_are_in_the_feed_after_its_primary_fails_over() {
    let dir = scratch_dir("revocation", "feed-failover");
    let mut cluster = RedisCluster::start(&dir);
    let extra = ["--min-replicas-ack", "1", "--wait-timeout-ms", "100"];
    let svc = Service::start(&bin(), &dir, &args(&cluster.urls(), true, &extra)).expect("service");
    let victim = cluster.primary_for(FEED_KEY);
    let exp = now() + 600;
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    let (mut killed_at, mut promoted, mut writes_back) = (None::<Instant>, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while Instant::now() < deadline && !(writes_back.is_some() && acknowledged.len() > 150) {
        let jti = format!("fo-{i}");
        i += 1;
        let status = revoke(&svc, &jti, exp);
        match status {
            200 => acknowledged.push(jti),
            503 => refused += 1,
            other => panic!("{other}"),
        }
        let Some(t) = killed_at else {
            if i == 50 {
                cluster.nodes[victim].kill();
                killed_at = Some(Instant::now());
            }
            continue;
        };
        if promoted.is_none() {
            if cluster.try_primary_for(FEED_KEY).is_some_and(|p| p != victim) {
                promoted = Some(t.elapsed());
                // Back as a replica, as a restarted pod would: WAIT 1 can be met again.
                cluster.nodes[victim].restart();
            }
        } else if writes_back.is_none() && status == 200 {
            writes_back = Some(t.elapsed());
        }
    }
    let promoted = promoted.expect("the feed's shard never got a new primary");
    let writes_back = writes_back.expect("no revocation was acknowledged after the failover");
    eprintln!(
        "feed failover: {} acknowledged, {refused} answered 503; replica promoted after {promoted:?}, \
         revocations acknowledged again after {writes_back:?}",
        acknowledged.len()
    );
    cluster.wait_healthy(Duration::from_secs(30));
    let fresh = Service::start(&bin(), &dir, &args(&cluster.urls(), true, &extra)).expect("a new instance");
    for (name, instance) in [("the instance that saw it", &svc), ("a new instance", &fresh)] {
        let seen = wait_for("the feed to answer", Duration::from_secs(15), || {
            let r = feed(instance, "wait_ms=0");
            (r.status == 200).then(|| revoked_jtis(&read_all(instance, None).0))
        });
        let missing: Vec<&String> = acknowledged.iter().filter(|j| !seen.contains(*j)).collect();
        assert!(missing.is_empty(), "{name}: acknowledged and not in the feed: {missing:?}");
    }
}

/// Raises this process's soft limit on open files: a thousand client sockets.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: both calls only read or write the struct passed, which outlives them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// User + system CPU time of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

/// The same from each thread's scheduler statistics (nanoseconds on a CPU): `stat` counts whole
/// clock ticks (10 ms), too coarse to tell 0.1% from 0.3% over a few seconds.
fn cpu_seconds_fine(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    ns as f64 / 1e9
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// Whether `buffer` holds a whole HTTP response; then its status line and body.
fn complete_response(buffer: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(buffer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))?
        .parse()
        .ok()?;
    (body.len() >= length).then(|| (head.lines().next().unwrap_or("").to_string(), body[..length].to_string()))
}

/// A thousand clients hold long-polls on one instance: the instance's CPU and memory while
/// they are idle, then the time until every one of them has a revocation made meanwhile.
#[test]
fn a_thousand_idle_long_polls_cost_little_and_all_hear_a_revocation_at_once() {
    const CLIENTS: usize = 1000;
    const IDLE: Duration = Duration::from_secs(3);
    raise_open_files_limit();
    let dir = scratch_dir("revocation", "feed-thousand");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    let at = page(&svc, "wait_ms=0").position;
    let rss_before = rss_mb(svc.pid());
    let request = format!(
        "GET /v1/feed?after={at}&wait_ms=20000 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {STATUS}\r\n\r\n"
    );
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", svc.port)).expect("connect");
            s.write_all(request.as_bytes()).expect("send");
            s
        })
        .collect();
    wait_for("every poll to be held", Duration::from_secs(15), || (held_polls(&svc) == CLIENTS as f64).then_some(()));

    // The measuring window: nothing happens but the held polls.
    let (cpu_start, fine_start, idle_start) = (cpu_seconds(svc.pid()), cpu_seconds_fine(svc.pid()), Instant::now());
    std::thread::sleep(IDLE);
    let idle = idle_start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(svc.pid()) - cpu_start) / idle;
    let cpu_fine = (cpu_seconds_fine(svc.pid()) - fine_start) / idle;
    let rss = rss_mb(svc.pid());

    for c in &clients {
        c.set_nonblocking(true).expect("non-blocking");
    }
    let sent = Instant::now();
    assert_eq!(revoke(&svc, "fan-out", now() + 600), 200);
    let acknowledged = sent.elapsed();
    let mut buffers = vec![Vec::new(); CLIENTS];
    let mut done = vec![false; CLIENTS];
    let mut remaining = CLIENTS;
    let give_up = Instant::now() + Duration::from_secs(10);
    while remaining > 0 && Instant::now() < give_up {
        let mut fds: Vec<libc::pollfd> = clients
            .iter()
            .enumerate()
            .filter(|(i, _)| !done[*i])
            .map(|(_, c)| libc::pollfd { fd: c.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        let open: Vec<usize> = (0..CLIENTS).filter(|i| !done[*i]).collect();
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the call's duration.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if ready <= 0 {
            continue;
        }
        for (fd, &i) in fds.iter().zip(&open) {
            if fd.revents == 0 {
                continue;
            }
            let mut chunk = [0u8; 4096];
            match clients[i].read(&mut chunk) {
                Ok(0) => panic!("client {i}: closed before an answer"),
                Ok(n) => buffers[i].extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("client {i}: {e}"),
            }
            if let Some((status, body)) = complete_response(&buffers[i]) {
                assert!(status.contains(" 200 "), "client {i}: {status} {body}");
                assert!(body.contains(r#""jti":"fan-out""#), "client {i}: {body}");
                done[i] = true;
                remaining -= 1;
            }
        }
    }
    let delivered = sent.elapsed();
    eprintln!(
        "{CLIENTS} idle long-polls: service CPU {:.2}% of one core over {IDLE:?} (utime+stime; {:.3}% by \
         schedstat), RSS {rss:.1} MB ({rss_before:.1} MB before, {:.1} KB per held poll); one revocation \
         (acknowledged in {acknowledged:?}) reached all {CLIENTS} in {delivered:?}",
        cpu * 100.0,
        cpu_fine * 100.0,
        (rss - rss_before) * 1024.0 / CLIENTS as f64
    );
    assert_eq!(remaining, 0, "{remaining} clients never got the revocation");
    assert!(cpu < 0.20, "idle CPU {:.1}%", cpu * 100.0);
    assert!(rss < 200.0, "RSS {rss:.1} MB");
    assert!(delivered < Duration::from_secs(2), "{delivered:?}");
    drop(clients);
}

#[test]
fn the_cli_prints_the_feed_and_follows_it() {
    let dir = scratch_dir("revocation", "feed-cli");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    let exp = now() + 600;
    assert_eq!(revoke(&svc, "cli-a", exp), 200);
    assert_eq!(post(&svc, "/v1/revoke-subject", &json!({"sub": "zed"})).status, 200);
    let cli = |args: &[&str]| {
        std::process::Command::new(bin())
            .arg("feed")
            .args(args)
            .env("JWTGUARD_REVOCATION_URL", svc.url())
            .env("JWTGUARD_STATUS_CREDENTIAL", STATUS)
            .output()
            .expect("run the CLI")
    };
    let out = cli(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!((lines[0]["type"].as_str(), lines[0]["jti"].as_str()), (Some("revoked"), Some("cli-a")));
    assert_eq!((lines[1]["type"].as_str(), lines[1]["sub"].as_str()), (Some("subject_cutoff"), Some("zed")));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let at = stderr.lines().find_map(|l| l.strip_prefix("position ")).expect("the position on stderr").to_string();
    let out = cli(&["--after", &at]);
    assert!(out.status.success() && out.stdout.is_empty(), "nothing after {at}");
    let refused = std::process::Command::new(bin())
        .args(["feed", "--url", &svc.url(), "--credential", "wrong"])
        .output()
        .expect("run the CLI");
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("401"));

    let mut follow = std::process::Command::new(bin())
        .args(["feed", "--follow", "--wait-ms", "5000", "--after", &at])
        .env("JWTGUARD_REVOCATION_URL", svc.url())
        .env("JWTGUARD_STATUS_CREDENTIAL", STATUS)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the CLI");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    wait_for("the CLI's poll to be held", Duration::from_secs(10), || (held_polls(&svc) >= 1.0).then_some(()));
    assert_eq!(revoke(&svc, "cli-b", exp), 200);
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = follow.kill();
    let _ = follow.wait();
    let line = line.expect("the followed event");
    assert!(line.contains(r#""jti":"cli-b""#), "{line}");
}
