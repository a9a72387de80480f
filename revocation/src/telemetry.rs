//! The service's Prometheus metrics: the recorder, and the HELP text of every metric it exports
//! (docs/operations.md lists them; tests/monitoring.rs checks that each one has its HELP).

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder. Real histograms (fixed buckets), not summaries, so that
/// Prometheus can add them up across instances; the caller drains them periodically
/// (`run_upkeep`), which the exporter leaves to us when installed without its own listener.
pub fn install() -> Result<PrometheusHandle, String> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0])
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("metrics: {e}"))?;
    describe_counter!(
        "jwtguard_revocation_requests_total",
        "API requests answered, by endpoint and HTTP status code (code)"
    );
    describe_histogram!(
        "jwtguard_revocation_request_duration_seconds",
        "Time from a request's arrival to its answer, by endpoint and code; a feed poll's includes the time it was held"
    );
    describe_histogram!(
        "jwtguard_revocation_redis_seconds",
        "Duration of each Redis call, by operation (op); the feed reader's blocking reads are not timed"
    );
    describe_counter!("jwtguard_revocation_redis_errors_total", "Redis calls that failed, by operation (op)");
    describe_counter!(
        "jwtguard_revocation_feed_events_appended_total",
        "Events this instance appended to the feed stream, by type"
    );
    describe_counter!("jwtguard_revocation_feed_events_sent_total", "Feed events sent to proxies in poll answers");
    describe_counter!("jwtguard_revocation_feed_reader_errors_total", "Failed reads of the feed stream from Redis");
    describe_gauge!(
        "jwtguard_revocation_feed_reader_healthy",
        "1 while the feed reader hears from Redis; 0 and feed polls answer 503"
    );
    describe_gauge!("jwtguard_revocation_feed_held_polls", "Feed polls held open now, waiting for an event");
    describe_counter!(
        "jwtguard_revocation_signals_total",
        "Logout tokens and security event tokens taken in, by receiver and outcome"
    );
    describe_counter!(
        "jwtguard_revocation_signal_events_total",
        "Events in the signals taken in, by event type and outcome (applied or ignored)"
    );
    describe_counter!("jwtguard_revocation_ssf_polls_total", "Polls of SSF transmitters, by outcome");
    describe_counter!("jwtguard_revocation_signal_jwks_fetches_total", "Fetches of a signal issuer's JWKS, by outcome");
    Ok(prometheus)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The string literal that opens each call of the `macros` in `text`.
    fn names(text: &str, macros: &[&str]) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for m in macros {
            for (at, _) in text.match_indices(m) {
                let rest = text[at + m.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    found.insert(name.to_string());
                }
            }
        }
        found
    }

    /// Every metric the service's code records is described here, and nothing else is: a new
    /// metric without HELP text, or a renamed one, fails.
    #[test]
    fn every_recorded_metric_has_help_text() {
        let mut recorded = BTreeSet::new();
        for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n != "telemetry.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                recorded.extend(names(&text, &["metrics::counter!(", "metrics::gauge!(", "metrics::histogram!("]));
            }
        }
        let this = include_str!("telemetry.rs");
        let described = names(
            &this[..this.find("#[cfg(test)]").unwrap()],
            &["describe_counter!(", "describe_gauge!(", "describe_histogram!("],
        );
        assert!(recorded.len() >= 9, "{recorded:?}");
        assert_eq!(recorded, described);
    }
}
