//! Prometheus metrics (the `prometheus` crate's default registry), served as text at `/metrics`:
//! requests by route, method, status and resource type; a latency histogram; the database pool
//! (in use, idle, waiting, timeouts); audit batch sizes; authentication failures; rate limiting.
//! Process-wide, so every instance (and every app a test process starts) counts into one set.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Encoder, Histogram, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cairn_http_requests_total",
        "HTTP requests answered, by route pattern, method, status and FHIR resource type",
        &["route", "method", "status", "type"]
    )
    .expect("register cairn_http_requests_total")
});

pub static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "cairn_http_request_duration_seconds",
        "Time to answer an HTTP request, by route pattern and method",
        &["route", "method"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("register cairn_http_request_duration_seconds")
});

pub static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "cairn_auth_failures_total",
        "Requests refused for want of a valid token (401), by reason",
        &["reason"]
    )
    .expect("register cairn_auth_failures_total")
});

pub static RATE_LIMITED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "cairn_rate_limited_total",
        "Requests refused by the per-client rate limit (429)"
    )
    .expect("register cairn_rate_limited_total")
});

pub static AUDIT_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "cairn_audit_batch_size",
        "AuditEvents the group committer stored per transaction",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
    )
    .expect("register cairn_audit_batch_size")
});

pub static POOL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "cairn_db_pool_connections",
        "Database pool connections, by state (in_use, idle, max)",
        &["state"]
    )
    .expect("register cairn_db_pool_connections")
});

pub static POOL_WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "cairn_db_pool_waiting",
        "Requests waiting for a database connection"
    )
    .expect("register cairn_db_pool_waiting")
});

pub static POOL_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "cairn_db_pool_timeouts_total",
        "Requests that waited for a database connection in vain (answered 503)"
    )
    .expect("register cairn_db_pool_timeouts_total")
});

/// Every metric in the Prometheus text format.
pub fn render() -> String {
    // Registered at first use: touch each so a fresh process shows them all (at zero).
    LazyLock::force(&REQUESTS);
    LazyLock::force(&LATENCY);
    for reason in ["no_token", "invalid_token"] {
        AUTH_FAILURES.with_label_values(&[reason]);
    }
    LazyLock::force(&RATE_LIMITED);
    LazyLock::force(&AUDIT_BATCH);
    LazyLock::force(&POOL);
    LazyLock::force(&POOL_WAITING);
    LazyLock::force(&POOL_TIMEOUTS);
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        tracing::error!(error = %e, "metrics could not be encoded");
    }
    String::from_utf8(out).unwrap_or_default()
}
