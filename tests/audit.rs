//! The audit trail over real HTTP: one AuditEvent per interaction with the BALP fields, failures
//! and denials included, writes atomic with their record, fail-closed, append-only, tamper-evident
//! (`cairn audit verify`), and complete across concurrent instances and a crash.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::process::{cairn, call, database, drop_database, token, verify_url, Server};
use common::{Resp, TestApp};
use serde_json::{json, Value};

impl TestApp {
    /// The AuditEvents about `target` (`Type/id`) with one of these subtypes.
    fn events(&self, target: &str, subtypes: &[&str]) -> Vec<Value> {
        let entries = self.all_entries(&format!("AuditEvent?entity={target}&_count=500"));
        entries
            .into_iter()
            .map(|e| e["resource"].clone())
            .filter(|ae| {
                ae["subtype"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|c| subtypes.contains(&c["code"].as_str().unwrap_or("")))
                })
            })
            .collect()
    }

    fn one_event(&self, target: &str, subtype: &str) -> Value {
        let got = self.events(target, &[subtype]);
        assert_eq!(got.len(), 1, "{subtype} of {target}: {got:?}");
        got.into_iter().next().unwrap()
    }

    /// A direct connection to the app's SQLite database that waits for the server's writes (its
    /// audit committer works when idle) rather than failing at once with "database is locked".
    fn sqlite(path: &str) -> Result<diesel::SqliteConnection, String> {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut conn = diesel::SqliteConnection::establish(path).map_err(|e| e.to_string())?;
        conn.batch_execute("PRAGMA busy_timeout = 10000")
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }

    /// Runs SQL on the app's database directly (as an operator, or an attacker, could).
    fn sql(&self, statements: &str) -> Result<(), String> {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        match self.db_url.strip_prefix("sqlite://") {
            Some(path) => Self::sqlite(path)?
                .batch_execute(statements)
                .map_err(|e| e.to_string()),
            None => diesel::PgConnection::establish(&self.db_url)
                .map_err(|e| e.to_string())?
                .batch_execute(statements)
                .map_err(|e| e.to_string()),
        }
    }

    /// Takes the append-only triggers off these tables (`audit_block`, `resource_history`,
    /// `resources`), as an attacker with DDL rights could.
    fn unlock(&self, tables: &[&str]) {
        let statements: Vec<String> = tables
            .iter()
            .map(|t| match self.backend {
                common::Backend::Sqlite => {
                    let prefix = match *t {
                        "audit_block" => "audit_block",
                        "resource_history" => "audit_history",
                        "resources" => "audit_resources",
                        other => panic!("no append-only triggers on {other}"),
                    };
                    format!("DROP TRIGGER {prefix}_no_update; DROP TRIGGER {prefix}_no_delete;")
                }
                common::Backend::Postgres => format!("ALTER TABLE {t} DISABLE TRIGGER USER;"),
            })
            .collect();
        self.sql(&statements.join(" ")).unwrap();
    }

    /// Rows read from the app's database directly.
    fn rows<U>(&self, query: &str) -> Vec<U>
    where
        U: diesel::QueryableByName<diesel::sqlite::Sqlite>
            + diesel::QueryableByName<diesel::pg::Pg>
            + 'static,
    {
        use diesel::{Connection, RunQueryDsl};
        let q = diesel::sql_query(query);
        match self.db_url.strip_prefix("sqlite://") {
            Some(path) => q.load(&mut Self::sqlite(path).unwrap()),
            None => q.load(&mut diesel::PgConnection::establish(&self.db_url).unwrap()),
        }
        .unwrap()
    }

    /// A count read from the app's database directly.
    fn count(&self, query: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        self.rows::<N>(query)[0].n
    }

    /// The events of the log's block ending at `seq`, as stored.
    fn block_events(&self, seq: i64) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct B {
            #[diesel(sql_type = diesel::sql_types::Binary)]
            body: Vec<u8>,
        }
        let rows: Vec<B> = self.rows(&format!("SELECT body FROM audit_block WHERE seq = {seq}"));
        cairn::audit::block::unpack(&rows[0].body).unwrap()
    }

    /// Rewrites the block ending at `seq` to hold these events (the triggers must be off).
    fn rewrite_block(&self, seq: i64, events: &[String]) {
        use diesel::{sql_types::Binary, Connection, RunQueryDsl};
        let body = cairn::audit::block::pack(events.iter().map(String::as_str));
        let text = format!("UPDATE audit_block SET body = $1 WHERE seq = {seq}");
        let n = match self.db_url.strip_prefix("sqlite://") {
            Some(path) => diesel::sql_query(text.replace("$1", "?"))
                .bind::<Binary, _>(body)
                .execute(&mut Self::sqlite(path).unwrap()),
            None => diesel::sql_query(text)
                .bind::<Binary, _>(body)
                .execute(&mut diesel::PgConnection::establish(&self.db_url).unwrap()),
        }
        .unwrap();
        assert_eq!(n, 1);
    }

    /// The id of the AuditEvent at chain position `seq` (of a block of one: a write's).
    fn event_at(&self, seq: i64) -> String {
        let events = self.block_events(seq);
        assert_eq!(events.len(), 1);
        serde_json::from_str::<Value>(&events[0]).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// How many events the log holds.
    fn logged(&self) -> i64 {
        self.count("SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) AS n FROM audit_block")
    }

    fn verify(&self) -> (bool, String) {
        let out = cairn()
            .args(["audit", "verify"])
            .env("CAIRN_DATABASE_URL", &self.db_url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn as_token(&self, token: &str, method: &str, path: &str) -> Resp {
        let auth = format!("Bearer {token}");
        self.send(method, path, &[("Authorization", auth.as_str())], None)
    }
}

fn codes(v: &Value) -> Vec<String> {
    let mut out = vec![];
    if let Some(c) = v["code"].as_str() {
        out.push(c.to_string());
    }
    for c in v["coding"].as_array().into_iter().flatten() {
        out.extend(c["code"].as_str().map(str::to_string));
    }
    out
}

fn entity_refs(ae: &Value) -> Vec<String> {
    ae["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_string))
        .collect()
}

/// The BALP fields every AuditEvent has.
fn check_shape(ae: &Value, action: &str, outcome: &str) {
    assert_eq!(codes(&ae["type"]), ["rest"], "{ae}");
    assert_eq!(ae["action"], action, "{ae}");
    assert_eq!(ae["outcome"], outcome, "{ae}");
    assert!(ae["recorded"].is_string(), "{ae}");
    let client = &ae["agent"][0];
    assert_eq!(client["requestor"], true, "{ae}");
    assert_eq!(client["network"]["address"], "127.0.0.1", "{ae}");
    assert!(ae["source"]["observer"].is_object(), "{ae}");
}

fn every_interaction_is_audited_once(app: &TestApp) {
    let p = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Audited"}]}));
    let pid = p["id"].as_str().unwrap();
    let target = format!("Patient/{pid}");
    let ae = app.one_event(&target, "create");
    check_shape(&ae, "C", "0");
    assert!(
        entity_refs(&ae).contains(&format!("Patient/{pid}/_history/1")),
        "{ae}"
    );
    assert_eq!(ae["agent"][0]["who"]["identifier"]["value"], "test");

    assert_eq!(app.get(&target).status, 200);
    let ae = app.one_event(&target, "read");
    check_shape(&ae, "R", "0");
    assert!(
        entity_refs(&ae).contains(&format!("Patient/{pid}/_history/1")),
        "{ae}"
    );

    assert_eq!(app.get(&format!("{target}/_history/1")).status, 200);
    check_shape(&app.one_event(&target, "vread"), "R", "0");

    let r = app.json(
        "PUT",
        &target,
        &json!({"resourceType": "Patient", "id": pid, "gender": "other"}),
        &[],
    );
    assert_eq!(r.status, 200);
    let ae = app.one_event(&target, "update");
    check_shape(&ae, "U", "0");
    assert!(
        entity_refs(&ae).contains(&format!("Patient/{pid}/_history/2")),
        "{ae}"
    );

    assert_eq!(app.get(&format!("{target}/_history")).status, 200);
    check_shape(&app.one_event(&target, "history-instance"), "R", "0");

    // A search: its query (base64) and the patient it names.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "phq9"},
        "subject": {"reference": target}});
    let o = app.create(&obs);
    let oid = o["id"].as_str().unwrap();
    let ae = app.one_event(&format!("Observation/{oid}"), "create");
    assert!(
        entity_refs(&ae).contains(&target),
        "a write names the patient it concerns: {ae}"
    );
    assert_eq!(
        app.get(&format!("Observation?subject={target}&code:text=phq9"))
            .status,
        200
    );
    let searches = app.events(&target, &["search-type"]);
    assert_eq!(searches.len(), 1, "{searches:?}");
    check_shape(&searches[0], "E", "0");
    let query = searches[0]["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e["query"].as_str())
        .expect("a query entity");
    let query = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(query)
            .unwrap(),
    )
    .unwrap();
    assert!(query.starts_with("Observation?subject=Patient"), "{query}");

    assert_eq!(
        app.send("DELETE", &format!("Observation/{oid}"), &[], None)
            .status,
        204
    );
    check_shape(
        &app.one_event(&format!("Observation/{oid}"), "delete"),
        "D",
        "0",
    );

    // Denied (403) and unauthenticated (401) requests are audited as failures.
    let narrow = app.token("system/Observation.rs", None);
    app.as_token(&narrow, "GET", &target).outcome(403);
    let reads = app.events(&target, &["read"]);
    assert_eq!(reads.len(), 2, "{reads:?}");
    let denied: Vec<_> = reads.iter().filter(|a| a["outcome"] != "0").collect();
    assert_eq!(denied.len(), 1);
    check_shape(denied[0], "R", "4");
    assert_eq!(denied[0]["agent"][0]["who"]["identifier"]["value"], "test");
    app.send("GET", &target, &[("Authorization", "")], None)
        .outcome(401);
    let reads = app.events(&target, &["read"]);
    let unauth: Vec<_> = reads
        .iter()
        .filter(|a| a["agent"][0]["who"]["display"] == "unauthenticated")
        .collect();
    assert_eq!(unauth.len(), 1, "{reads:?}");
    check_shape(unauth[0], "R", "4");

    // A patient token's patient and a user token's fhirUser are agents.
    let user = app.mint(&cairn::auth::server::Mint {
        subject: "dr".into(),
        client_id: "ehr".into(),
        scope: "user/*.rs".into(),
        fhir_user: Some("Practitioner/dr-1".into()),
        patient: None,
        lifetime: 60,
    });
    app.as_token(&user, "GET", &format!("{target}/_history/2"));
    let ae = app
        .events(&target, &["vread"])
        .into_iter()
        .find(|a| a["agent"][0]["who"]["identifier"]["value"] == "ehr")
        .unwrap();
    assert_eq!(ae["agent"][1]["who"]["reference"], "Practitioner/dr-1");
    let (ok, text) = app.verify();
    assert!(ok, "{text}");
}

fn audit_events_are_read_only_and_need_an_audit_scope(app: &TestApp) {
    let p = app.create(&json!({"resourceType": "Patient"}));
    let ae = app.one_event(&format!("Patient/{}", p["id"].as_str().unwrap()), "create");
    let id = ae["id"].as_str().unwrap();
    let path = format!("AuditEvent/{id}");
    app.json("PUT", &path, &ae, &[]).outcome(405);
    app.send("DELETE", &path, &[], None).outcome(405);
    app.json("POST", "AuditEvent", &ae, &[]).outcome(405);
    app.send(
        "PATCH",
        &path,
        &[("Content-Type", "application/json-patch+json")],
        Some(b"[]"),
    )
    .outcome(405);
    assert_eq!(app.get(&path).json()["meta"]["versionId"], "1");
    // Our AuditEvents are valid R4: they render as XML too.
    let xml = app.send("GET", &path, &[("Accept", "application/fhir+xml")], None);
    assert_eq!(xml.status, 200, "{}", xml.text());
    assert!(xml.text().contains("<AuditEvent"), "{}", xml.text());
    for scope in ["system/Patient.rs", "patient/*.rs", "user/*.cruds"] {
        let t = app.token(scope, Some(p["id"].as_str().unwrap()));
        app.as_token(&t, "GET", "AuditEvent").outcome(403);
        app.as_token(&t, "GET", &path).outcome(403);
    }
    let auditor = app.token("system/AuditEvent.rs", None);
    assert_eq!(app.as_token(&auditor, "GET", &path).status, 200);
    // System-wide views leave the audit trail out unless it is asked for.
    let all = app.get("?_count=1000").json();
    assert!(!all.to_string().contains("\"AuditEvent\""), "{all}");
    let hist = app.get("_history?_count=1000").json();
    assert!(!hist.to_string().contains("\"resourceType\":\"AuditEvent\""));
    assert!(app.get("?_type=AuditEvent").json()["entry"].is_array());
    // The database refuses changes too.
    let err = app
        .sql(&format!(
            "UPDATE resource_history SET content = '{{}}' WHERE res_id = '{id}'"
        ))
        .unwrap_err();
    assert!(err.contains("append-only"), "{err}");
    assert!(app
        .sql("DELETE FROM audit_block")
        .unwrap_err()
        .contains("append-only"));
    assert!(app
        .sql("UPDATE audit_block SET recorded = 0")
        .unwrap_err()
        .contains("append-only"));
    if app.backend == common::Backend::Postgres {
        for t in ["resource_history", "resources", "audit_block"] {
            let err = app.sql(&format!("TRUNCATE {t} CASCADE")).unwrap_err();
            assert!(err.contains("append-only"), "{t}: {err}");
        }
    }
}

fn audit_search_parameters(app: &TestApp) {
    let p = app.create(&json!({"resourceType": "Patient"}));
    let target = format!("Patient/{}", p["id"].as_str().unwrap());
    app.get(&target);
    let ids = |q: &str| -> Vec<String> {
        app.all_entries(&format!("AuditEvent?{q}"))
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ids(&format!("entity={target}"));
    assert_eq!(all.len(), 2);
    for (q, n) in [
        (format!("entity={target}&action=R"), 1),
        (format!("entity={target}&action=C"), 1),
        (format!("entity={target}&subtype=read"), 1),
        (
            format!("entity={target}&subtype=http://hl7.org/fhir/restful-interaction|create"),
            1,
        ),
        (format!("entity={target}&outcome=0"), 2),
        (format!("entity={target}&outcome=4"), 0),
        (format!("entity={target}&type=rest"), 2),
        (
            format!("entity={target}&agent:identifier=urn:cairn:client-id|test"),
            2,
        ),
        (format!("entity={target}&date=ge2020-01-01"), 2),
        (format!("entity={target}&date=lt2020-01-01"), 0),
        // Last: this search names the patient, so its own AuditEvent concerns them too.
        (format!("patient={target}&subtype=create,read"), 2),
    ] {
        assert_eq!(ids(&q).len(), n, "AuditEvent?{q}");
    }
    // Export: NDJSON of what was recorded since a moment.
    let out = cairn()
        .args([
            "audit",
            "export",
            "--since",
            "2020-01-01",
            "--format",
            "ndjson",
        ])
        .env("CAIRN_DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3 && lines.iter().all(|l| l["resourceType"] == "AuditEvent"));
    let later = cairn()
        .args(["audit", "export", "--since", "2999-01-01"])
        .env("CAIRN_DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(later.stdout.is_empty());
}

fn no_payload_and_no_token_in_the_trail(app: &TestApp) {
    let secret = format!("Zq{}", uuid::Uuid::new_v4().simple());
    let p = app.create(&json!({"resourceType": "Patient", "name": [{"family": secret}]}));
    let target = format!("Patient/{}", p["id"].as_str().unwrap());
    app.get(&target);
    app.get(&format!("Patient?_id={}", p["id"].as_str().unwrap()));
    let text = app.get("AuditEvent?_count=1000").text();
    assert!(!text.contains(&secret));
    let sig = app.admin_token.rsplit('.').next().unwrap();
    assert!(!text.contains(sig));
}

fn a_failed_write_leaves_neither_resource_nor_record(app: &TestApp) {
    // Break the audit store: every insert into the chain fails.
    let (arm, disarm) = match app.backend {
        common::Backend::Sqlite => (
            "CREATE TRIGGER boom BEFORE INSERT ON audit_block BEGIN SELECT RAISE(ABORT, 'boom'); END;",
            "DROP TRIGGER boom;",
        ),
        common::Backend::Postgres => (
            "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER boom BEFORE INSERT ON audit_block FOR EACH ROW EXECUTE FUNCTION boom();",
            "DROP TRIGGER boom ON audit_block; DROP FUNCTION boom();",
        ),
    };
    let p = app.create(&json!({"resourceType": "Patient"}));
    let pid = p["id"].as_str().unwrap().to_string();
    app.sql(arm).unwrap();
    let r = app.json(
        "PUT",
        "Patient/never",
        &json!({"resourceType": "Patient", "id": "never"}),
        &[],
    );
    r.outcome(503);
    let r = app.json(
        "PUT",
        &format!("Patient/{pid}"),
        &json!({"resourceType": "Patient", "id": pid, "gender": "male"}),
        &[],
    );
    r.outcome(503);
    // Fail closed: reads are not answered without their record either.
    app.get(&format!("Patient/{pid}")).outcome(503);
    app.sql(disarm).unwrap();
    assert_eq!(app.get("Patient/never").status, 404);
    assert_eq!(
        app.get(&format!("Patient/{pid}")).json()["meta"]["versionId"],
        "1"
    );
    assert!(app.events("Patient/never", &["update"]).is_empty());
    assert!(app
        .events(&format!("Patient/{pid}"), &["update"])
        .is_empty());
    let (ok, text) = app.verify();
    assert!(ok, "{text}");
}

/// Edits by SQL (with the append-only triggers out of the way, as an attacker with DDL rights
/// would) are found by `cairn audit verify`, which names the record.
fn tampering_is_detected(app: &TestApp) {
    for i in 0..5 {
        app.create(&json!({"resourceType": "Patient", "name": [{"family": format!("T{i}")}]}));
    }
    let (ok, text) = app.verify();
    assert!(ok, "{text}");
    // The server's own first records: loading the built-in instruments.
    let n = 5 + cairn::care::instruments::embedded().len();
    assert!(text.contains(&format!("intact: {n} records")), "{text}");
    app.unlock(&["resource_history", "audit_block", "resources"]);
    let event_of = |seq: i64| -> String {
        // The AuditEvent id of chain link `seq`, through the API.
        let all = app.all_entries("AuditEvent?_sort=date&_count=100");
        let ids: Vec<String> = all
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect();
        ids[(seq - 1) as usize].clone()
    };
    let third = event_of(3);
    // 1. One record edited.
    app.sql(&format!(
        "UPDATE resource_history SET content = replace(content, '\"outcome\":\"0\"', '\"outcome\":\"4\"') \
         WHERE res_type = 'AuditEvent' AND res_id = '{third}'"
    ))
    .unwrap();
    let (ok, text) = app.verify();
    assert!(
        !ok && text.contains("record 3") && text.contains("modified"),
        "{text}"
    );
}

/// The log holds each event itself; an edit there is found as surely as one in the resource row.
fn a_modified_log_entry_is_detected(app: &TestApp) {
    for _ in 0..3 {
        app.create(&json!({"resourceType": "Patient"}));
    }
    app.unlock(&["audit_block"]);
    let edit = |e: &String| e.replace("\"outcome\":\"0\"", "\"outcome\":\"4\"");
    let events = app.block_events(4);
    app.rewrite_block(4, &events.iter().map(edit).collect::<Vec<_>>());
    let (ok, text) = app.verify();
    assert!(
        !ok && text.contains("record 4") && text.contains("modified"),
        "{text}"
    );
}

/// An event edited inside a group-committed block of many (reads') is named, whether or not its
/// resource row was written before the edit (the materializer writes none for an altered event).
fn an_event_edited_in_a_batch_is_named(app: &TestApp) {
    let edit = |e: &String| e.replace("\"outcome\":\"0\"", "\"outcome\":\"4\"");
    // Many reads at once: the committer logs them in blocks of several events.
    let p = app.create(&json!({"resourceType": "Patient"}));
    let path = format!("Patient/{}", p["id"].as_str().unwrap());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                for _ in 0..10 {
                    assert_eq!(app.get(&path).status, 200);
                }
            });
        }
    });
    #[derive(diesel::QueryableByName)]
    struct Largest {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let largest: Vec<Largest> = app.rows(
        "SELECT seq, CAST(events AS BIGINT) AS n FROM audit_block ORDER BY events DESC, seq LIMIT 1",
    );
    let (seq, n) = (largest[0].seq, largest[0].n);
    assert!(n > 1, "160 concurrent reads were logged one block each");
    let (ok, text) = app.verify();
    assert!(ok, "{text}");
    app.unlock(&["audit_block"]);
    // The second event of that block edited: verify names it.
    let mut events = app.block_events(seq);
    events[1] = edit(&events[1]);
    app.rewrite_block(seq, &events);
    let (ok, text) = app.verify();
    let second = seq - n + 2;
    assert!(
        !ok && text.contains(&format!("record {second}:")) && text.contains("modified"),
        "{text}"
    );
    // Searches (which write pending resource rows first) never show the edited event.
    let id = serde_json::from_str::<Value>(&events[1]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(app
        .all_entries(&format!("AuditEvent?_id={id}&outcome=4"))
        .is_empty());
}

/// A record's resource row removed behind the log's back (the log itself intact) is found.
fn a_deleted_resource_row_is_detected(app: &TestApp) {
    for _ in 0..3 {
        app.create(&json!({"resourceType": "Patient"}));
    }
    // A search writes the resource rows of everything logged so far.
    app.all_entries("AuditEvent?_count=100");
    app.unlock(&["resource_history"]);
    app.sql(&format!(
        "DELETE FROM resource_history WHERE res_type = 'AuditEvent' AND res_id = '{}'",
        app.event_at(3)
    ))
    .unwrap();
    let (ok, text) = app.verify();
    assert!(
        !ok && text.contains("record 3") && text.contains("deleted"),
        "{text}"
    );
}

/// Answering a request appends one row to the log; the AuditEvent's resource and index rows
/// follow when the server is quiet, with no query asking for them, and are the logged event.
fn resource_rows_follow_the_log(app: &TestApp) {
    let p = app.create(&json!({"resourceType": "Patient"}));
    let path = format!("Patient/{}", p["id"].as_str().unwrap());
    for _ in 0..20 {
        assert_eq!(app.get(&path).status, 200);
    }
    let logged = || app.logged();
    let rows =
        || app.count("SELECT COUNT(*) AS n FROM resource_history WHERE res_type = 'AuditEvent'");
    let rows_follow = || {
        common::eventually(Duration::from_secs(10), || {
            let (rows, logged) = (rows(), logged());
            if rows >= logged {
                Ok(())
            } else {
                Err(format!(
                    "{rows} of {logged} logged AuditEvents have resource rows"
                ))
            }
        })
    };
    rows_follow();
    // Every row is its logged event (verify compares each with the hash in the log).
    let (ok, text) = app.verify();
    assert!(ok, "{text}");
    assert_eq!(
        app.count("SELECT seq AS n FROM audit_materialized"),
        app.count("SELECT MAX(seq) AS n FROM audit_block")
    );
    // Writes append their records in their own transactions, not through the committer's queue;
    // theirs follow too.
    let before = logged();
    for _ in 0..3 {
        app.create(&json!({"resourceType": "Patient"}));
    }
    assert_eq!(logged(), before + 3);
    rows_follow();
    // Indexed too: the reads are found by entity.
    assert_eq!(app.events(&path, &["read"]).len(), 20);
    let (ok, text) = app.verify();
    assert!(ok, "{text}");
}

fn a_deleted_record_is_detected(app: &TestApp) {
    for _ in 0..4 {
        app.create(&json!({"resourceType": "Patient"}));
    }
    app.unlock(&["audit_block", "resource_history"]);
    // The record and its block both removed: the chain jumps.
    app.sql(&format!(
        "DELETE FROM resource_history WHERE res_type = 'AuditEvent' AND res_id = '{}'; \
         DELETE FROM audit_block WHERE seq = 2;",
        app.event_at(2)
    ))
    .unwrap();
    let (ok, text) = app.verify();
    assert!(
        !ok && text.contains("record 2") && text.contains("missing"),
        "{text}"
    );
}

fn swapped_records_are_detected(app: &TestApp) {
    for _ in 0..4 {
        app.create(&json!({"resourceType": "Patient"}));
    }
    app.unlock(&["audit_block"]);
    // Records 2 and 3 (blocks of one event each: writes') trade places.
    app.sql("UPDATE audit_block SET seq = -2 WHERE seq = 2; UPDATE audit_block SET seq = 2 WHERE seq = 3; \
             UPDATE audit_block SET seq = 3 WHERE seq = -2;")
        .unwrap();
    let (ok, text) = app.verify();
    assert!(
        !ok && text.contains("record 2") && text.contains("chain breaks"),
        "{text}"
    );
}

/// Hashes replaced by text that is not even ASCII are reported as a modification; `verify` does
/// not trip over them.
fn garbled_hashes_are_detected(app: &TestApp) {
    for _ in 0..3 {
        app.create(&json!({"resourceType": "Patient"}));
    }
    app.unlock(&["audit_block"]);
    app.sql(&format!(
        "UPDATE audit_block SET hashes = '{}' WHERE seq = 3",
        "\u{e9}".repeat(32)
    ))
    .unwrap();
    let (ok, text) = app.verify();
    assert!(
        !ok && text.contains("record 3:") && text.contains("modified"),
        "{text}"
    );
}

fn an_inserted_record_is_detected(app: &TestApp) {
    app.create(&json!({"resourceType": "Patient"}));
    app.sql(
        "INSERT INTO resource_history (res_type, res_id, version, last_updated, method, deleted, content) \
         VALUES ('AuditEvent', 'forged', 1, 0, 'POST', 0, '{\"resourceType\":\"AuditEvent\"}')",
    )
    .unwrap();
    let (ok, text) = app.verify();
    assert!(
        !ok && text.contains("forged") && text.contains("not in the chain"),
        "{text}"
    );
    // A block slipped in below the first one is found too.
    app.sql(
        "INSERT INTO audit_block (seq, events, hashes, chain_hash, recorded, body) \
         VALUES (0, 1, 'x', 'y', 0, '{}')",
    )
    .unwrap();
    let (ok, text) = app.verify();
    assert!(!ok && text.contains("record 1"), "{text}");
}

/// What a caller puts in a path or an assertion cannot make the audit record unstorable (and so
/// fail every request batched with it): malformed ids are not references.
fn hostile_input_is_audited_without_failing(app: &TestApp) {
    let long = format!("Patient/{}", "x".repeat(3000));
    app.send("GET", &long, &[("Authorization", "")], None)
        .outcome(401);
    app.get(&long).outcome(404);
    let p = app.create(&json!({"resourceType": "Patient"}));
    let read = app.get(&format!("Patient/{}", p["id"].as_str().unwrap()));
    assert_eq!(read.status, 200);
    let r = app.get(&format!("Observation?patient={}", "y".repeat(3000)));
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = format!("{{\"iss\":\"a\\u0000{}\"}}", "z".repeat(5000));
    let form = format!(
        "grant_type=client_credentials&client_assertion_type=x&client_assertion=e30.{}.x",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
    );
    let token_url = format!("{}/auth/token", app.root);
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = app.send("POST", &token_url, &form_type, Some(form.as_bytes()));
    assert_eq!(r.status, 401, "{}", r.text());
    let plain = [("Content-Type", "text/plain")];
    assert_eq!(app.send("POST", &token_url, &plain, Some(b"x")).status, 400);
    let (ok, text) = app.verify();
    assert!(ok, "{text}");
    // Each of those requests was audited, as a failure where it failed.
    let failures = app.all_entries("AuditEvent?outcome=4&_count=100");
    assert!(failures.len() >= 4, "{failures:?}");
}

/// Reads are committed in batches linked from the head the committer last saw; a write appends
/// in its own transaction meanwhile, so the next batch's head is stale and the chain must still
/// hold, every record in it.
fn reads_around_writes_keep_one_chain(app: &TestApp) {
    let before = app.logged();
    let mut requests = 0;
    for i in 0..6 {
        let p =
            app.create(&json!({"resourceType": "Patient", "name": [{"family": format!("R{i}")}]}));
        let path = format!("Patient/{}", p["id"].as_str().unwrap());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5 {
                        assert_eq!(app.get(&path).status, 200);
                    }
                });
            }
        });
        requests += 1 + 4 * 5;
    }
    assert_eq!(app.logged() - before, requests);
    let (ok, text) = app.verify();
    assert!(ok, "{text}");
}

on_both_backends!(
    every_interaction_is_audited_once,
    reads_around_writes_keep_one_chain,
    audit_events_are_read_only_and_need_an_audit_scope,
    audit_search_parameters,
    no_payload_and_no_token_in_the_trail,
    a_failed_write_leaves_neither_resource_nor_record,
    tampering_is_detected,
    a_deleted_record_is_detected,
    a_modified_log_entry_is_detected,
    a_deleted_resource_row_is_detected,
    resource_rows_follow_the_log,
    swapped_records_are_detected,
    garbled_hashes_are_detected,
    an_event_edited_in_a_batch_is_named,
    an_inserted_record_is_detected,
    hostile_input_is_audited_without_failing,
);

// ---------------------------------------------------------------- real processes

/// Two server processes on one PostgreSQL database, writing and reading at once, extend one chain.
#[test]
fn two_instances_keep_one_verifiable_chain() {
    let Some((url, dir, pg)) = database(common::Backend::Postgres) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    let a = Server::start(&url, &dir.0);
    let b = Server::start(&url, &dir.0);
    let t = token(&url, &dir.0);
    let ok = Arc::new(Mutex::new(0usize));
    std::thread::scope(|s| {
        for base in [&a.base, &b.base, &a.base, &b.base] {
            let (t, ok) = (&t, Arc::clone(&ok));
            s.spawn(move || {
                for i in 0..25 {
                    let p = json!({"resourceType": "Patient", "id": format!("p{}", uuid::Uuid::new_v4().simple()), "gender": "female"});
                    let id = p["id"].as_str().unwrap().to_string();
                    let c = call(base, t, "PUT", &format!("Patient/{id}"), Some(&p)).unwrap();
                    let r = call(base, t, "GET", &format!("Patient/{id}"), None).unwrap();
                    let q = call(base, t, "GET", &format!("Patient?gender=female&_count={}", i % 5 + 1), None).unwrap();
                    assert_eq!((c, r, q), (201, 200, 200));
                    *ok.lock().unwrap() += 3;
                }
            });
        }
    });
    let (good, text) = verify_url(&url);
    assert!(good, "{text}");
    // Plus the built-in instruments, loaded (once) by the first instance.
    let n = *ok.lock().unwrap() + cairn::care::instruments::embedded().len();
    assert!(
        text.contains(&format!("intact: {n} records")),
        "{n} requests: {text}"
    );
    drop((a, b));
    drop_database(pg);
}

/// PostgreSQL: a block linked by its caller from a head that is no longer the head is linked by
/// the database instead; the caller's chain hash is not used.
#[test]
fn a_stale_head_is_linked_by_the_database() {
    use sha2::{Digest, Sha256};
    let Some(app) = common::spawn_app(common::Backend::Postgres) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    app.create(&json!({"resourceType": "Patient"}));
    #[derive(diesel::QueryableByName)]
    struct H {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        chain_hash: String,
    }
    let head = |q: &str| -> H { app.rows::<H>(q).pop().unwrap() };
    let last = head("SELECT seq, chain_hash FROM audit_block ORDER BY seq DESC LIMIT 1");
    let event = "e".repeat(64);
    let appended = head(&format!(
        "SELECT (r).new_seq AS seq, (r).new_hash AS chain_hash FROM \
         (SELECT cairn_audit_append_linked(ARRAY['ev-1'], ARRAY['{event}'], 0, '\\x00'::bytea, \
          {}, '{}', 'not-the-link') AS r) x",
        last.seq - 1,
        last.chain_hash
    ));
    let seq = last.seq + 1;
    let expected = format!(
        "{:x}",
        Sha256::digest(format!("{}|{seq}|ev-1|{event}", last.chain_hash))
    );
    assert_eq!(
        (appended.seq, appended.chain_hash.as_str()),
        (seq, expected.as_str())
    );
    let stored = head("SELECT seq, chain_hash FROM audit_block ORDER BY seq DESC LIMIT 1");
    assert_eq!((stored.seq, stored.chain_hash), (seq, expected));
}

/// kill -9 of a server under load loses no response it sent: every 2xx the client got has its
/// AuditEvent after a restart.
fn crash_loses_no_answered_request(backend: common::Backend) {
    let Some((url, dir, pg)) = database(backend) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    let server = Server::start(&url, &dir.0);
    let t = token(&url, &dir.0);
    let ids: Vec<String> = (0..400).map(|i| format!("crash-{i}")).collect();
    for chunk in ids.chunks(100) {
        for id in chunk {
            let p = json!({"resourceType": "Patient", "id": id});
            assert_eq!(
                call(&server.base, &t, "PUT", &format!("Patient/{id}"), Some(&p)).unwrap(),
                201
            );
        }
    }
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut server = server;
    std::thread::scope(|s| {
        for w in 0..8 {
            let (ids, answered, stop, t, base) = (
                &ids,
                Arc::clone(&answered),
                Arc::clone(&stop),
                &t,
                &server.base,
            );
            s.spawn(move || {
                for id in ids.iter().skip(w).step_by(8) {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(200) = call(base, t, "GET", &format!("Patient/{id}"), None) {
                        answered.lock().unwrap().push(id.clone());
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(400));
        // kill -9 in the middle of the load.
        let _ = server.child.kill();
        stop.store(true, Ordering::SeqCst);
    });
    let _ = server.child.wait();
    let answered = answered.lock().unwrap().clone();
    assert!(
        !answered.is_empty(),
        "no read was answered before the crash"
    );
    let restarted = Server::start(&url, &dir.0);
    let mut missing = vec![];
    for id in &answered {
        let u = format!(
            "{}/AuditEvent?entity=Patient/{id}&subtype=read",
            restarted.base
        );
        let b: Value = ureq::get(&u)
            .set("Authorization", &format!("Bearer {t}"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        if b["entry"].as_array().map_or(0, Vec::len) == 0 {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} answered reads have no AuditEvent: {missing:?}",
        missing.len(),
        answered.len()
    );
    assert!(verify_url(&url).0);
    drop(restarted);
    drop_database(pg);
}

#[test]
fn crash_loses_no_answered_request_sqlite() {
    crash_loses_no_answered_request(common::Backend::Sqlite);
}

#[test]
fn crash_loses_no_answered_request_postgres() {
    crash_loses_no_answered_request(common::Backend::Postgres);
}

/// A log kept as one row per event (before migration `2026-12-01-000006_audit_blocks`) is carried
/// over as blocks of one event each: its chain still verifies and goes on, its events are still
/// exported, the ones not yet indexed get their resource rows, and one whose event was already
/// gone is still reported.
fn upgrade_from_a_log_of_one_row_per_event(backend: common::Backend) {
    use sha2::{Digest, Sha256};
    let hex = |s: &str| format!("{:x}", Sha256::digest(s.as_bytes()));
    let event = |id: &str| {
        format!(
            "{{\"resourceType\":\"AuditEvent\",\"id\":\"{id}\",\"meta\":{{\"versionId\":\"1\",\
             \"lastUpdated\":\"2026-11-01T00:00:00.000000Z\"}},\"type\":{{\"system\":\
             \"http://terminology.hl7.org/CodeSystem/audit-event-type\",\"code\":\"rest\"}},\
             \"action\":\"R\",\"recorded\":\"2026-11-01T00:00:00.000000Z\",\"outcome\":\"0\",\
             \"agent\":[{{\"who\":{{\"display\":\"legacy\"}},\"requestor\":true}}],\
             \"source\":{{\"observer\":{{\"display\":\"Cairn\"}}}},\
             \"entity\":[{{\"what\":{{\"reference\":\"Patient/{id}\"}}}}]}}"
        )
    };
    for gone in [false, true] {
        let Some((url, dir, pg)) = database(backend) else {
            return;
        };
        // The schema as it was: the earlier migrations, from their files, marked as run.
        let sub = match backend {
            common::Backend::Sqlite => "sqlite",
            common::Backend::Postgres => "postgres",
        };
        let mut dirs: Vec<std::path::PathBuf> =
            std::fs::read_dir(format!("{}/migrations/{sub}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_str().unwrap() < "2026-12-01-000006")
                .collect();
        dirs.sort();
        assert_eq!(dirs.len(), 5);
        let mut sql = String::from(
            "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, \
             run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);\n",
        );
        for d in &dirs {
            sql += &std::fs::read_to_string(d.join("up.sql")).unwrap();
            let name = d.file_name().unwrap().to_str().unwrap().to_string();
            let version = name.split('_').next().unwrap().replace('-', "");
            sql += &format!(
                "\nINSERT INTO __diesel_schema_migrations (version) VALUES ('{version}');\n"
            );
        }
        // Three links: the first from before the log held events (its event is its resource
        // row), the other two holding theirs, not yet indexed.
        let ids = ["legacy-1", "legacy-2", "legacy-3"];
        let mut prev = "0".repeat(64);
        for (i, id) in ids.iter().enumerate() {
            let seq = i + 1;
            let ev = event(id);
            let eh = hex(&ev);
            prev = hex(&format!("{prev}|{seq}|{id}|{eh}"));
            let (recorded, content) = if seq == 1 {
                ("NULL".to_string(), "NULL".to_string())
            } else {
                ("1793491200000000".to_string(), format!("'{ev}'"))
            };
            sql += &format!(
                "INSERT INTO audit_chain (seq, event_id, event_hash, chain_hash, recorded, content) \
                 VALUES ({seq}, '{id}', '{eh}', '{prev}', {recorded}, {content});\n"
            );
        }
        if !gone {
            sql += &format!(
                "INSERT INTO resource_history (res_type, res_id, version, last_updated, method, \
                 deleted, content) VALUES ('AuditEvent', 'legacy-1', 1, 1793491200000000, 'POST', \
                 0, '{}');\n",
                event("legacy-1")
            );
        }
        sql += "UPDATE audit_materialized SET seq = 1;\n";
        {
            use diesel::connection::SimpleConnection;
            use diesel::Connection;
            match url.strip_prefix("sqlite://") {
                Some(path) => diesel::SqliteConnection::establish(path)
                    .unwrap()
                    .batch_execute(&sql),
                None => diesel::PgConnection::establish(&url)
                    .unwrap()
                    .batch_execute(&sql),
            }
            .unwrap();
        }
        // The server migrates on start, then logs on.
        let server = Server::start(&url, &dir.0);
        let t = token(&url, &dir.0);
        assert_eq!(
            call(&server.base, &t, "GET", "AuditEvent?_id=legacy-3", None).unwrap(),
            200
        );
        let (ok, text) = verify_url(&url);
        if gone {
            assert!(
                !ok && text.contains("record 1:") && text.contains("deleted"),
                "{text}"
            );
        } else {
            assert!(ok, "{text}");
            let n = 3 + cairn::care::instruments::embedded().len() as i64;
            let records: i64 = text
                .split("intact: ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|r| r.parse().ok())
                .unwrap();
            assert!(records > n, "{text}");
            let out = cairn()
                .args([
                    "audit",
                    "export",
                    "--since",
                    "2026-01-01",
                    "--format",
                    "ndjson",
                ])
                .env("CAIRN_DATABASE_URL", &url)
                .output()
                .unwrap();
            let lines: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .take(3)
                .map(str::to_string)
                .collect();
            assert_eq!(lines, ids.map(event));
            // The carried-over events not yet indexed were indexed from their blocks.
            let resp = ureq::get(&format!("{}/AuditEvent?_id=legacy-2,legacy-3", server.base))
                .set("Authorization", &format!("Bearer {t}"))
                .call()
                .unwrap()
                .into_json::<Value>()
                .unwrap();
            let found = resp["entry"].as_array().map_or(0, Vec::len);
            assert_eq!(found, 2, "{resp}");
        }
        drop(server);
        drop_database(pg);
    }
}

#[test]
fn upgrade_from_a_log_of_one_row_per_event_sqlite() {
    upgrade_from_a_log_of_one_row_per_event(common::Backend::Sqlite);
}

#[test]
fn upgrade_from_a_log_of_one_row_per_event_postgres() {
    upgrade_from_a_log_of_one_row_per_event(common::Backend::Postgres);
}
