//! Operations over real HTTP, on SQLite and on PostgreSQL: Prometheus metrics, the per-client
//! rate limit, and the page-size cap.

mod common;

use std::collections::HashMap;

use common::TestApp;
use serde_json::json;

/// The samples of a Prometheus text page, by series (name with labels).
fn scrape(app: &TestApp) -> (HashMap<String, f64>, HashMap<String, String>) {
    let r = app.send(
        "GET",
        &format!("{}/metrics", app.root),
        &[("Authorization", "")],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
    let (mut samples, mut types) = (HashMap::new(), HashMap::new());
    for line in r.text().lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            types.insert(
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        samples.insert(series.to_string(), value.parse::<f64>().unwrap());
    }
    (samples, types)
}

fn grown(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    pred: impl Fn(&str) -> bool,
) -> f64 {
    after
        .iter()
        .filter(|(k, _)| pred(k))
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
        .sum()
}

fn metrics_count_requests_latency_auth_and_pool(app: &TestApp) {
    assert_eq!(app.get("metadata").status, 200);
    let (before, types) = scrape(app);
    assert_eq!(types["cairn_http_request_duration_seconds"], "histogram");
    assert_eq!(types["cairn_audit_batch_size"], "histogram");
    for name in [
        "cairn_http_requests_total",
        "cairn_auth_failures_total",
        "cairn_db_pool_timeouts_total",
    ] {
        assert_eq!(types[name], "counter", "{name}");
    }
    app.create(&json!({"resourceType": "Patient"}));
    for _ in 0..5 {
        assert_eq!(app.get("Patient?_count=1").status, 200);
    }
    for _ in 0..3 {
        let r = app.send(
            "GET",
            "Patient",
            &[("Authorization", "Bearer nonsense")],
            None,
        );
        assert_eq!(r.status, 401);
    }
    let (after, _) = scrape(app);
    // Other tests in this process count too: the growth is at least ours.
    let searches = grown(&before, &after, |k| {
        k.starts_with("cairn_http_requests_total{")
            && k.contains("method=\"GET\"")
            && k.contains("route=\"/fhir/{type}\"")
            && k.contains("status=\"200\"")
            && k.contains("type=\"Patient\"")
    });
    assert!(searches >= 5.0, "{searches}");
    assert!(
        grown(&before, &after, |k| k.starts_with(
            "cairn_auth_failures_total{reason=\"invalid_token\""
        )) >= 3.0
    );
    assert!(
        grown(&before, &after, |k| k
            .starts_with("cairn_http_request_duration_seconds_count"))
            >= 9.0
    );
    assert!(after.keys().any(
        |k| k.starts_with("cairn_http_request_duration_seconds_bucket{")
            && k.contains("le=\"0.005\"")
    ));
    assert!(after["cairn_db_pool_connections{state=\"max\"}"] >= 1.0);
    assert!(after.contains_key("cairn_db_pool_waiting"));
    // Reads were audited in batches.
    assert!(grown(&before, &after, |k| k == "cairn_audit_batch_size_count") >= 1.0);
}

fn pages_are_capped_and_links_say_so(app: &TestApp) {
    for _ in 0..7 {
        app.create(&json!({"resourceType": "Patient", "name": [{"family": "Capped"}]}));
    }
    let b = app.get("Patient?family=Capped&_count=500").json();
    assert_eq!(b["entry"].as_array().unwrap().len(), 5);
    let self_link = common::link(&b, "self").unwrap();
    assert!(
        self_link.contains("_count=5") && !self_link.contains("_count=500"),
        "{self_link}"
    );
    assert!(common::link(&b, "next").unwrap().contains("_count=5"));
    assert_eq!(app.all_entries("Patient?family=Capped&_count=500").len(), 7);
    let h = app.get("Patient/_history?_count=500").json();
    assert_eq!(h["entry"].as_array().unwrap().len(), 5);
    assert!(
        common::link(&h, "self").unwrap().contains("_count=5&")
            || common::link(&h, "self").unwrap().ends_with("_count=5")
    );
}

/// Over the token bucket (5/s, burst 5): 429 with an OperationOutcome and Retry-After; the client
/// is served again once it refills; another client has its own bucket.
fn rate_limit_is_per_client(app: &TestApp) {
    let statuses: Vec<u16> = (0..30)
        .map(|_| app.get("Patient?_count=1").status)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((5..=10).contains(&ok), "{ok} of 30 served: {statuses:?}");
    let r = app.get("Patient?_count=1");
    let oo = r.outcome(429);
    assert_eq!(oo["issue"][0]["code"], "throttled");
    assert!(r.header("Retry-After").unwrap().parse::<u64>().unwrap() >= 1);
    let other_client = app.mint(&cairn::auth::server::Mint {
        subject: "another".into(),
        client_id: "another-client".into(),
        scope: "system/*.rs".into(),
        patient: None,
        fhir_user: None,
        lifetime: 600,
    });
    let r = app.send(
        "GET",
        "Patient?_count=1",
        &[("Authorization", &format!("Bearer {other_client}"))],
        None,
    );
    assert_eq!(
        r.status,
        200,
        "another client has its own bucket: {}",
        r.text()
    );
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(app.get("Patient?_count=1").status, 200);
}

on_both_backends!(metrics_count_requests_latency_auth_and_pool);

/// Another session, in an open transaction, holding the lock a write of Patient/`id` needs: the
/// database's write lock on SQLite, the resource's row on PostgreSQL. `ROLLBACK` releases it.
fn hold_write_lock(app: &TestApp, id: &str) -> Box<dyn diesel::connection::SimpleConnection> {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    match app.db_url.strip_prefix("sqlite://") {
        Some(path) => {
            let mut c = diesel::SqliteConnection::establish(path).unwrap();
            c.batch_execute("BEGIN IMMEDIATE").unwrap();
            Box::new(c)
        }
        None => {
            let mut c = diesel::PgConnection::establish(&app.db_url).unwrap();
            c.batch_execute(&format!(
                "BEGIN; SELECT 1 FROM resources WHERE res_type = 'Patient' AND res_id = '{id}' FOR UPDATE"
            ))
            .unwrap();
            Box::new(c)
        }
    }
}

/// A write stuck behind another transaction's lock is answered 503 (with Retry-After) at the
/// request deadline, and the resource is unchanged.
fn stuck_database_work_meets_the_deadline(app: &TestApp) {
    let p = app.create(&json!({"resourceType": "Patient", "active": false}));
    let id = p["id"].as_str().unwrap().to_string();
    // Another session holds the lock the write needs, in an open transaction.
    let mut holder = hold_write_lock(app, &id);
    let started = std::time::Instant::now();
    let r = app.json(
        "PUT",
        &format!("Patient/{id}"),
        &json!({"resourceType": "Patient", "id": id, "active": true}),
        &[],
    );
    let waited = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.outcome(503)["issue"][0]["code"], "transient");
    assert!(r.header("Retry-After").is_some());
    assert!(waited < std::time::Duration::from_secs(8), "{waited:?}");
    holder.batch_execute("ROLLBACK").unwrap();
    drop(holder);
    // Give the abandoned write time to fail on its own, then check nothing changed.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(app.get(&format!("Patient/{id}")).json()["active"], false);
}

/// With every pooled connection busy, a request waits `CAIRN_POOL_TIMEOUT` and is answered 503
/// with Retry-After instead of hanging; the timeout is counted in /metrics.
fn an_exhausted_pool_answers_503(app: &TestApp) {
    let p = app.create(&json!({"resourceType": "Patient"}));
    let id = p["id"].as_str().unwrap().to_string();
    let (before, _) = scrape(app);
    // The pool's only connection gets stuck in a write behind another session's lock.
    let mut holder = hold_write_lock(app, &id);
    let (root, base, token) = (app.root.clone(), app.base.clone(), app.admin_token.clone());
    let stuck_id = id.clone();
    let stuck = std::thread::spawn(move || {
        let _ = ureq::put(&format!("{base}/Patient/{stuck_id}"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/fhir+json")
            .send_string(
                &json!({"resourceType": "Patient", "id": stuck_id, "active": true}).to_string(),
            );
        root
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let r = app.get(&format!("Patient/{id}"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("Retry-After").is_some());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    holder.batch_execute("ROLLBACK").unwrap();
    drop(holder);
    stuck.join().unwrap();
    let (after, _) = scrape(app);
    assert!(grown(&before, &after, |k| k == "cairn_db_pool_timeouts_total") >= 1.0);
}

on_both_backends!(mod capped, |s| s.max_count = 5; pages_are_capped_and_links_say_so);
on_both_backends!(mod limited, |s| {
    s.rate_limit_per_second = 5;
    s.rate_limit_burst = 5;
}; rate_limit_is_per_client);
on_both_backends!(mod deadline, |s| s.request_timeout_secs = 1; stuck_database_work_meets_the_deadline);
on_both_backends!(mod tiny_pool, |s| {
    s.pool_size = 1;
    s.pool_timeout_secs = 1;
    s.request_timeout_secs = 0;
}; an_exhausted_pool_answers_503);

/// A replica whose listener loses its connection (the backend is terminated) never answers from a
/// cache that missed a notification meanwhile: it bypasses the cache until the listener is back,
/// and the listener comes back on its own.
#[test]
fn a_replica_whose_listener_is_cut_off_still_sees_writes() {
    use common::process::{database, drop_database, token, Server};
    use diesel::{Connection, RunQueryDsl};
    let Some((url, dir, pg)) = database(common::Backend::Postgres) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let db_url = url.clone();
    let listeners = move || -> Vec<i32> {
        let mut c = diesel::PgConnection::establish(&db_url).unwrap();
        diesel::sql_query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'cairn-cache-listener' ORDER BY pid",
        )
        .load::<Pid>(&mut c)
        .unwrap()
        .into_iter()
        .map(|p| p.pid)
        .collect()
    };
    let (a, b) = (Server::start(&url, &dir.0), Server::start(&url, &dir.0));
    let t = token(&url, &dir.0);
    let auth = format!("Bearer {t}");
    let version = |base: &str| -> String {
        let r = ureq::get(&format!("{base}/Patient/cut"))
            .set("Authorization", &auth)
            .call()
            .unwrap();
        let body: serde_json::Value = r.into_json().unwrap();
        body["meta"]["versionId"].as_str().unwrap_or("").to_string()
    };
    let put = |active: bool| {
        ureq::put(&format!("{}/Patient/cut", a.base))
            .set("Authorization", &auth)
            .set("Content-Type", "application/fhir+json")
            .send_string(
                &json!({"resourceType": "Patient", "id": "cut", "active": active}).to_string(),
            )
            .unwrap();
    };
    let within = |what: &str, done: &dyn Fn() -> bool| {
        common::eventually(std::time::Duration::from_secs(10), || {
            if done() {
                Ok(())
            } else {
                Err(format!("not yet: {what}"))
            }
        })
    };
    within("both listeners connected", &|| listeners().len() == 2);
    let before = listeners();
    put(true);
    // Cached in b.
    assert_eq!(version(&b.base), "1");
    assert_eq!(version(&b.base), "1");
    let mut c = diesel::PgConnection::establish(&url).unwrap();
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'cairn-cache-listener'",
    )
    .execute(&mut c)
    .unwrap();
    // Written while b's listener is gone or reconnecting: its notification reaches nobody in b.
    put(false);
    within("b sees version 2", &|| version(&b.base) == "2");
    within("new listeners connected", &|| {
        let now = listeners();
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    });
    // And b's cache, live again, follows the next write.
    assert_eq!(version(&b.base), "2");
    put(true);
    within("b sees version 3", &|| version(&b.base) == "3");
    drop((a, b));
    drop_database(pg);
}

/// Two server processes on one PostgreSQL database (stateless replicas): a write through one is
/// seen by the other's next reads once its notification arrives, even where the other had the old
/// version in its read cache.
#[test]
fn replicas_forget_what_the_other_wrote() {
    use common::process::{database, drop_database, token, Server};
    let Some((url, dir, pg)) = database(common::Backend::Postgres) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    let (a, b) = (Server::start(&url, &dir.0), Server::start(&url, &dir.0));
    let t = token(&url, &dir.0);
    let auth = format!("Bearer {t}");
    let send = |base: &str, method: &str, path: &str, body: Option<serde_json::Value>| {
        let req = ureq::request(method, &format!("{base}/{path}"))
            .set("Authorization", &auth)
            .set("Content-Type", "application/fhir+json");
        let r = match body {
            Some(b) => req.send_string(&b.to_string()),
            None => req.call(),
        };
        let r = match r {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = r.status();
        let body: serde_json::Value = r.into_json().unwrap_or_default();
        (
            status,
            body["meta"]["versionId"].as_str().unwrap_or("").to_string(),
        )
    };
    // b's read of `path` becomes `want` within a few seconds.
    let seen = |path: &str, want: (u16, &str)| {
        common::eventually(std::time::Duration::from_secs(5), || {
            let got = send(&b.base, "GET", path, None);
            if (got.0, got.1.as_str()) == want {
                Ok(())
            } else {
                Err(format!("{path}: still {got:?}, not {want:?}"))
            }
        })
    };
    for i in 0..10 {
        let path = format!("Patient/replica-{i}");
        let p = |active: bool| {
            Some(json!({"resourceType": "Patient", "id": format!("replica-{i}"), "active": active}))
        };
        assert_eq!(send(&a.base, "PUT", &path, p(true)).0, 201);
        // Read twice through b: cached there.
        assert_eq!(send(&b.base, "GET", &path, None), (200, "1".to_string()));
        assert_eq!(send(&b.base, "GET", &path, None), (200, "1".to_string()));
        assert_eq!(send(&a.base, "PUT", &path, p(false)).0, 200);
        seen(&path, (200, "2"));
        assert_eq!(send(&a.base, "DELETE", &path, None).0, 204);
        seen(&path, (410, ""));
    }
    drop((a, b));
    drop_database(pg);
}
