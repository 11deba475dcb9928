//! Transactions, batches, conditional operations, PATCH and referential integrity over real HTTP,
//! on SQLite and on PostgreSQL; and a server killed in the middle of a large transaction.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use common::process::{database, drop_database, token, Server};
use common::TestApp;
use diesel::sql_types::BigInt;
use diesel::{Connection, QueryableByName, RunQueryDsl};
use serde_json::{json, Value};

fn urn() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

fn system() -> String {
    format!("urn:test:{}", uuid::Uuid::new_v4().simple())
}

fn entry(resource: Value, method: &str, url: &str, full_url: Option<&str>) -> Value {
    let mut e = json!({"resource": resource, "request": {"method": method, "url": url}});
    if let Some(f) = full_url {
        e["fullUrl"] = json!(f);
    }
    e
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

fn ident(sys: &str, v: &str) -> Value {
    json!([{"system": sys, "value": v}])
}

fn observation(sys: &str, v: &str, subject: &str) -> Value {
    json!({"resourceType": "Observation", "identifier": ident(sys, v), "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
        "subject": {"reference": subject}})
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A number from the app's database, read directly (not through the API).
fn count(app: &TestApp, sql: &str) -> i64 {
    let q = diesel::sql_query(sql);
    match app.db_url.strip_prefix("sqlite://") {
        Some(path) => {
            q.get_result::<N>(&mut diesel::SqliteConnection::establish(path).unwrap())
                .unwrap()
                .n
        }
        None => {
            q.get_result::<N>(&mut diesel::PgConnection::establish(&app.db_url).unwrap())
                .unwrap()
                .n
        }
    }
}

/// Rows anywhere in the store (current, history, every index table) of resources whose content
/// mentions `marker`.
fn rows_mentioning(app: &TestApp, marker: &str) -> i64 {
    let like = format!("'%{marker}%'");
    let hist = count(
        app,
        &format!("SELECT COUNT(*) AS n FROM resource_history WHERE content LIKE {like}"),
    );
    let idx = count(
        app,
        &format!(
            "SELECT COUNT(*) AS n FROM idx_token WHERE system = '{marker}' OR code LIKE {like}"
        ),
    );
    hist + idx
}

fn found(app: &TestApp, ty: &str, sys: &str) -> usize {
    let r = app.get(&format!("{ty}?identifier={sys}|&_count=1000"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entry"].as_array().map_or(0, Vec::len)
}

fn transaction_stores_everything_with_references_rewritten(app: &TestApp) {
    let s = system();
    let (p, g, t) = (urn(), urn(), urn());
    let plan = json!({"resourceType": "CarePlan", "identifier": ident(&s, "cp"), "status": "active",
        "intent": "plan", "subject": {"reference": p}, "goal": [{"reference": g}],
        "careTeam": [{"reference": t}],
        "text": {"status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"{p}\">patient</a></div>")},
        "activity": [{"detail": {"status": "scheduled", "goal": [{"reference": g}],
            "performer": [{"reference": t}]}}]});
    let entries = vec![
        entry(plan, "POST", "CarePlan", Some(&urn())),
        entry(
            json!({"resourceType": "CareTeam", "identifier": ident(&s, "t"),
            "participant": [{"member": {"reference": p}}]}),
            "POST",
            "CareTeam",
            Some(&t),
        ),
        entry(
            json!({"resourceType": "Goal", "identifier": ident(&s, "g"), "lifecycleStatus": "active",
            "description": {"text": "PHQ-9 below 5"}, "subject": {"reference": p}}),
            "POST",
            "Goal",
            Some(&g),
        ),
        entry(
            json!({"resourceType": "Patient", "identifier": ident(&s, "p")}),
            "POST",
            "Patient",
            Some(&p),
        ),
    ];
    let r = app.json("POST", "", &bundle("transaction", entries), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    assert_eq!(b["type"], "transaction-response");
    let locations: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["response"]["status"], "201 Created");
            assert_eq!(e["response"]["etag"], "W/\"1\"");
            assert!(e["response"]["lastModified"].is_string());
            e["response"]["location"].as_str().unwrap().to_string()
        })
        .collect();
    let id = |i: usize| {
        let parts: Vec<&str> = locations[i].split('/').collect();
        format!("{}/{}", parts[0], parts[1])
    };
    assert!(id(0).starts_with("CarePlan/") && id(3).starts_with("Patient/"));
    let cp = app.get(&id(0)).json();
    assert_eq!(cp["subject"]["reference"], id(3));
    assert_eq!(cp["goal"][0]["reference"], id(2));
    assert_eq!(cp["activity"][0]["detail"]["goal"][0]["reference"], id(2));
    assert_eq!(
        cp["activity"][0]["detail"]["performer"][0]["reference"],
        id(1)
    );
    let div = cp["text"]["div"].as_str().unwrap();
    assert!(div.contains(&id(3)) && !div.contains("urn:uuid"), "{div}");
    let team = app.get(&id(1)).json();
    assert_eq!(team["participant"][0]["member"]["reference"], id(3));
    // Searchable at once: the index rows were written in the same transaction.
    let pid = id(3).split('/').nth(1).unwrap().to_string();
    assert_eq!(
        app.all_entries(&format!("Goal?subject=Patient/{pid}"))
            .len(),
        1
    );
}

fn a_failing_entry_rolls_back_everything(app: &TestApp) {
    let s = system();
    let before = app.create(
        &json!({"resourceType": "Patient", "identifier": ident(&s, "old"),
        "name": [{"family": "Before"}]}),
    );
    let other = app.create(&json!({"resourceType": "Patient", "identifier": ident(&s, "other")}));
    let p = urn();
    let mut changed = before.clone();
    changed["name"] = json!([{"family": "After"}]);
    let entries = vec![
        entry(
            json!({"resourceType": "Patient", "identifier": ident(&s, "new")}),
            "POST",
            "Patient",
            Some(&p),
        ),
        entry(
            observation(&s, "obs", &p),
            "POST",
            "Observation",
            Some(&urn()),
        ),
        entry(
            changed,
            "PUT",
            &format!("Patient/{}", before["id"].as_str().unwrap()),
            None,
        ),
        // Late in processing (after the creates and the update): a version that is not current.
        json!({"resource": {"resourceType": "Patient", "id": other["id"], "identifier": ident(&s, "late")},
            "request": {"method": "PUT", "url": format!("Patient/{}", other["id"].as_str().unwrap()), "ifMatch": "W/\"3\""}}),
    ];
    let hist_before = count(
        app,
        "SELECT COUNT(*) AS n FROM resource_history WHERE res_type <> 'AuditEvent'",
    );
    let r = app.json("POST", "", &bundle("transaction", entries), &[]);
    assert_eq!(r.status, 412, "{}", r.text());
    let o = r.outcome(412);
    assert!(o.to_string().contains("entry[3]"), "{o}");
    // Nothing reached the database: no version, no index row, no change to the existing Patient.
    assert_eq!(
        count(
            app,
            "SELECT COUNT(*) AS n FROM resource_history WHERE res_type <> 'AuditEvent'"
        ),
        hist_before
    );
    assert_eq!(
        rows_mentioning(app, &s),
        4,
        "only the existing Patients' versions and index rows"
    );
    let cur = app
        .get(&format!("Patient/{}", before["id"].as_str().unwrap()))
        .json();
    assert_eq!(cur["meta"]["versionId"], "1");
    assert_eq!(cur["name"][0]["family"], "Before");
    // An invalid resource fails the Bundle before anything runs, naming the entry.
    let bad = vec![
        entry(
            json!({"resourceType": "Patient", "identifier": ident(&s, "x")}),
            "POST",
            "Patient",
            None,
        ),
        entry(
            json!({"resourceType": "Patient", "favouriteColour": "blue"}),
            "POST",
            "Patient",
            None,
        ),
    ];
    let r = app.json("POST", "", &bundle("transaction", bad), &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("Bundle.entry[1]"), "{}", r.text());
    assert_eq!(rows_mentioning(app, &s), 4);
}

fn entries_run_in_the_spec_order(app: &TestApp) {
    let s = system();
    let x = app.create(&json!({"resourceType": "Patient", "identifier": ident(&s, "x")}));
    let xid = x["id"].as_str().unwrap();
    let mut renamed = x.clone();
    renamed["name"] = json!([{"family": "New"}]);
    let entries = vec![
        json!({"request": {"method": "GET", "url": format!("Patient/{xid}")}}),
        json!({"request": {"method": "GET", "url": format!("Patient?identifier={s}|new")}}),
        entry(renamed, "PUT", &format!("Patient/{xid}"), None),
        entry(
            json!({"resourceType": "Patient", "identifier": ident(&s, "new")}),
            "POST",
            "Patient",
            None,
        ),
    ];
    let b = app
        .json("POST", "", &bundle("transaction", entries), &[])
        .json();
    let e = b["entry"].as_array().unwrap();
    assert_eq!(e[0]["resource"]["name"][0]["family"], "New");
    assert_eq!(e[1]["resource"]["entry"].as_array().unwrap().len(), 1);
    assert_eq!(e[2]["response"]["status"], "200 OK");
    assert_eq!(e[3]["response"]["status"], "201 Created");
}

fn conditional_references_resolve_or_fail(app: &TestApp) {
    let s = system();
    let one = app.create(&json!({"resourceType": "Patient", "identifier": ident(&s, "one")}));
    for _ in 0..2 {
        app.create(&json!({"resourceType": "Patient", "identifier": ident(&s, "two")}));
    }
    let ok = vec![entry(
        observation(&s, "o1", &format!("Patient?identifier={s}|one")),
        "POST",
        "Observation",
        None,
    )];
    let b = app.json("POST", "", &bundle("transaction", ok), &[]).json();
    let loc = b["entry"][0]["response"]["location"].as_str().unwrap();
    let o = app.get(loc.split("/_history").next().unwrap()).json();
    assert_eq!(
        o["subject"]["reference"],
        format!("Patient/{}", one["id"].as_str().unwrap())
    );
    for (v, status) in [("two", 412), ("none", 412)] {
        let e = vec![entry(
            observation(&s, v, &format!("Patient?identifier={s}|{v}")),
            "POST",
            "Observation",
            None,
        )];
        assert_eq!(
            app.json("POST", "", &bundle("transaction", e), &[]).status,
            status
        );
    }
    assert_eq!(found(app, "Observation", &s), 1);
}

fn batch_entries_are_independent(app: &TestApp) {
    let s = system();
    let entries = vec![
        entry(
            json!({"resourceType": "Patient", "identifier": ident(&s, "ok")}),
            "POST",
            "Patient",
            None,
        ),
        entry(
            json!({"resourceType": "Patient", "favouriteColour": "blue"}),
            "POST",
            "Patient",
            None,
        ),
        json!({"request": {"method": "GET", "url": "Patient/missing-one"}}),
        entry(
            observation(&s, "dangling", "Patient/not-there"),
            "POST",
            "Observation",
            None,
        ),
    ];
    let r = app.json("POST", "", &bundle("batch", entries), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    assert_eq!(b["type"], "batch-response");
    let st: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(st[0], "201 Created");
    assert!(st[1].starts_with("400"), "{st:?}");
    assert!(st[2].starts_with("404"), "{st:?}");
    assert!(st[3].starts_with("422"), "{st:?}");
    assert_eq!(
        b["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(found(app, "Patient", &s), 1);
    assert_eq!(found(app, "Observation", &s), 0);
}

fn every_entry_is_checked_against_the_scopes(app: &TestApp) {
    let s = system();
    let t = app.token("system/Patient.cruds", None);
    let auth = format!("Bearer {t}");
    let p = urn();
    let entries = vec![
        entry(
            json!({"resourceType": "Patient", "identifier": ident(&s, "p")}),
            "POST",
            "Patient",
            Some(&p),
        ),
        entry(observation(&s, "o", &p), "POST", "Observation", None),
    ];
    let r = app.json(
        "POST",
        "",
        &bundle("transaction", entries),
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("entry[1]"));
    assert_eq!(found(app, "Patient", &s), 0);
}

fn each_entry_has_its_audit_event_in_the_transaction(app: &TestApp) {
    let s = system();
    let p = urn();
    let entries = vec![
        entry(
            json!({"resourceType": "Patient", "identifier": ident(&s, "p")}),
            "POST",
            "Patient",
            Some(&p),
        ),
        entry(observation(&s, "o", &p), "POST", "Observation", None),
    ];
    let b = app
        .json("POST", "", &bundle("transaction", entries), &[])
        .json();
    let t = app.token("system/AuditEvent.rs", None);
    let auth = format!("Bearer {t}");
    for e in b["entry"].as_array().unwrap() {
        let loc = e["response"]["location"].as_str().unwrap();
        let target = loc.split("/_history").next().unwrap();
        let r = app.send(
            "GET",
            &format!("AuditEvent?entity={target}&subtype=create"),
            &[("Authorization", &auth)],
            None,
        );
        // The events whose resource entity is this version (a patient is also named, unversioned,
        // by the events of what is in its compartment).
        let own = r.json()["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["resource"]["entity"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| {
                        x["what"]["reference"].as_str() == Some(&format!("{target}/_history/1"))
                    })
            })
            .count();
        assert_eq!(own, 1, "{target}");
    }
}

fn conditional_create_update_delete(app: &TestApp) {
    let s = system();
    let body = json!({"resourceType": "Patient", "identifier": ident(&s, "a")});
    let cond = format!("identifier={s}|a");
    let h = [("If-None-Exist", cond.as_str())];
    let first = app.json("POST", "Patient", &body, &h);
    assert_eq!(first.status, 201);
    let again = app.json("POST", "Patient", &body, &h);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], first.json()["id"]);
    // Update by search: the single match gets a new version.
    let mut upd = body.clone();
    upd["gender"] = json!("female");
    let r = app.json("PUT", &format!("Patient?{cond}"), &upd, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], first.json()["id"]);
    assert_eq!(r.json()["meta"]["versionId"], "2");
    // No match: the update creates.
    let r = app.json(
        "PUT",
        &format!("Patient?identifier={s}|b"),
        &json!({"resourceType": "Patient", "identifier": ident(&s, "b")}),
        &[],
    );
    assert_eq!(r.status, 201);
    // Delete by search, within the cap; over it nothing goes.
    let cap = app.settings.writes.conditional_delete_max as usize;
    for _ in 0..=cap {
        app.create(&json!({"resourceType": "Patient", "identifier": ident(&s, "many")}));
    }
    let r = app.send("DELETE", &format!("Patient?identifier={s}|many"), &[], None);
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(
        app.all_entries(&format!("Patient?identifier={s}|many"))
            .len(),
        cap + 1
    );
    let r = app.send("DELETE", &format!("Patient?identifier={s}|b"), &[], None);
    assert_eq!(r.status, 204);
    assert_eq!(
        app.all_entries(&format!("Patient?identifier={s}|b")).len(),
        0
    );
    // Matching nothing deletes nothing, and is audited all the same.
    let t = app.token("system/AuditEvent.rs", None);
    let audits = |app: &TestApp| {
        app.send(
            "GET",
            "AuditEvent?subtype=delete&_summary=count",
            &[("Authorization", &format!("Bearer {t}"))],
            None,
        )
        .json()["total"]
            .as_i64()
            .unwrap()
    };
    let before = audits(app);
    let r = app.send(
        "DELETE",
        &format!("Patient?identifier={s}|nobody"),
        &[],
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(audits(app), before + 1);
    // A conditional URL without parameters would match everything: refused.
    assert_eq!(app.send("DELETE", "Patient", &[], None).status, 412);
}

fn concurrent_conditional_creates_make_one(app: &TestApp) {
    let s = system();
    let body = json!({"resourceType": "Patient", "identifier": ident(&s, "same")});
    let cond = format!("identifier={s}|same");
    let statuses: Vec<(u16, String)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                sc.spawn(|| {
                    let r = app.json(
                        "POST",
                        "Patient",
                        &body,
                        &[("If-None-Exist", cond.as_str())],
                    );
                    (
                        r.status,
                        r.json()["id"].as_str().unwrap_or_default().to_string(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|(s, _)| *s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|(s, _)| *s == 200).count(),
        11,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .map(|(_, id)| id)
            .collect::<HashSet<_>>()
            .len(),
        1
    );
    assert_eq!(found(app, "Patient", &s), 1);
}

/// The examples of the FHIRPath Patch page (fhirpatch.html) and RFC 6902, on a Patient.
fn patches_apply_validate_and_honour_if_match(app: &TestApp) {
    let p = app.create(
        &json!({"resourceType": "Patient", "active": true, "gender": "male",
        "birthDate": "1990-04-02", "name": [{"family": "Chen", "given": ["A"]}],
        "contact": [{"name": {"text": "first"}}, {"name": {"text": "second"}}]}),
    );
    let id = p["id"].as_str().unwrap();
    let url = format!("Patient/{id}");
    let op = |kind: &str, path: &str, extra: Vec<Value>| {
        let mut part = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        part.extend(extra);
        json!({"name": "operation", "part": part})
    };
    let fp = json!({"resourceType": "Parameters", "parameter": [
        op("add", "Patient", vec![json!({"name": "name", "valueString": "deceasedBoolean"}), json!({"name": "value", "valueBoolean": false})]),
        op("replace", "Patient.birthDate", vec![json!({"name": "value", "valueDate": "1930-01-01"})]),
        op("insert", "Patient.name.given", vec![json!({"name": "index", "valueInteger": 0}), json!({"name": "value", "valueString": "Z"})]),
        op("move", "Patient.contact", vec![json!({"name": "source", "valueInteger": 0}), json!({"name": "destination", "valueInteger": 1})]),
        op("delete", "Patient.active", vec![]),
    ]});
    let r = app.json("PATCH", &url, &fp, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let cur = app.get(&url).json();
    assert_eq!(cur["deceasedBoolean"], false);
    assert_eq!(cur["birthDate"], "1930-01-01");
    assert_eq!(cur["name"][0]["given"], json!(["Z", "A"]));
    assert_eq!(cur["contact"][0]["name"]["text"], "second");
    assert!(cur.get("active").is_none());
    assert_eq!(cur["meta"]["versionId"], "2");
    let jp = [("Content-Type", "application/json-patch+json")];
    let ops = json!([{"op": "test", "path": "/gender", "value": "male"},
        {"op": "replace", "path": "/gender", "value": "female"},
        {"op": "copy", "from": "/name/0", "path": "/name/-"}]);
    let r = app.send(
        "PATCH",
        &url,
        &[jp[0], ("If-Match", "W/\"2\"")],
        Some(ops.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.get(&url).json()["name"].as_array().unwrap().len(), 2);
    // Stale If-Match, a failing test op, an invalid result: refused, nothing changes.
    let stale = app.send(
        "PATCH",
        &url,
        &[jp[0], ("If-Match", "W/\"1\"")],
        Some(
            json!([{"op": "remove", "path": "/gender"}])
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(stale.status, 412);
    let failing = app.send(
        "PATCH",
        &url,
        &jp,
        Some(
            json!([{"op": "test", "path": "/gender", "value": "male"}])
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(failing.status, 422);
    let invalid = app.send(
        "PATCH",
        &url,
        &jp,
        Some(
            json!([{"op": "replace", "path": "/birthDate", "value": "1930-02-30"}])
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(invalid.status, 422);
    let retyped = app.send(
        "PATCH",
        &url,
        &jp,
        Some(
            json!([{"op": "replace", "path": "/id", "value": "other"}])
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(retyped.status, 422);
    let malformed = app.send(
        "PATCH",
        &url,
        &jp,
        Some(json!({"op": "add"}).to_string().as_bytes()),
    );
    assert_eq!(malformed.status, 400);
    assert_eq!(app.get(&url).json()["meta"]["versionId"], "3");
    // In a transaction: FHIRPath Patch as Parameters, JSON Patch as a Binary.
    let data = base64::engine::general_purpose::STANDARD
        .encode(json!([{"op": "add", "path": "/birthDate", "value": "1931-01-01"}]).to_string());
    let entries = vec![entry(
        json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}),
        "PATCH",
        &url,
        None,
    )];
    let r = app.json("POST", "", &bundle("transaction", entries), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.get(&url).json()["birthDate"], "1931-01-01");
}

fn integrity_refuses_dangling_references_and_referenced_deletes(app: &TestApp) {
    let s = system();
    let r = app.json(
        "POST",
        "Observation",
        &observation(&s, "a", "Patient/ghost"),
        &[],
    );
    assert_eq!(r.status, 422);
    assert!(
        r.text().contains("Patient/ghost") && r.text().contains("Observation.subject"),
        "{}",
        r.text()
    );
    let p = app.create(&json!({"resourceType": "Patient", "identifier": ident(&s, "p")}));
    let pid = p["id"].as_str().unwrap();
    let o = app.create(&observation(&s, "b", &format!("Patient/{pid}")));
    // An absolute reference to this server is local; to another server it is not checked.
    let abs = format!("{}/Patient/{pid}", app.base);
    assert_eq!(
        app.json("POST", "Observation", &observation(&s, "c", &abs), &[])
            .status,
        201
    );
    assert_eq!(
        app.json(
            "POST",
            "Observation",
            &observation(&s, "d", "https://elsewhere.example/fhir/Patient/1"),
            &[]
        )
        .status,
        201
    );
    let r = app.send("DELETE", &format!("Patient/{pid}"), &[], None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text()
            .contains(&format!("Observation/{}", o["id"].as_str().unwrap())),
        "{}",
        r.text()
    );
    assert_eq!(app.get(&format!("Patient/{pid}")).status, 200);
    // Cascade removes the referrers first, each a delete the token must permit.
    let only_patients = app.token("system/Patient.cruds", None);
    let r = app.send(
        "DELETE",
        &format!("Patient/{pid}?_cascade=delete"),
        &[("Authorization", &format!("Bearer {only_patients}"))],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = app.send(
        "DELETE",
        &format!("Patient/{pid}?_cascade=delete"),
        &[],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        app.get(&format!("Observation/{}", o["id"].as_str().unwrap()))
            .status,
        410
    );
    // In a transaction the refusal names the entry, and nothing of the Bundle is stored.
    let entries = vec![
        entry(
            json!({"resourceType": "Patient", "identifier": ident(&s, "tx")}),
            "POST",
            "Patient",
            Some(&urn()),
        ),
        entry(
            observation(&s, "tx-o", "Patient/ghost"),
            "POST",
            "Observation",
            Some(&urn()),
        ),
    ];
    let r = app.json("POST", "", &bundle("transaction", entries), &[]);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("Bundle.entry[1]") && r.text().contains("Patient/ghost"),
        "{}",
        r.text()
    );
    assert_eq!(
        app.all_entries(&format!("Patient?identifier={s}|tx")).len(),
        0
    );
    // Deleted targets count as missing.
    assert_eq!(
        app.json(
            "POST",
            "Observation",
            &observation(&s, "e", &format!("Patient/{pid}")),
            &[]
        )
        .status,
        422
    );
}

fn integrity_can_be_switched_off_for_bulk_loads(backend: common::Backend) {
    let Some(app) = common::spawn_app_with(backend, |s| s.writes.referential_integrity = false)
    else {
        return;
    };
    let s = system();
    assert_eq!(
        app.json(
            "POST",
            "Observation",
            &observation(&s, "a", "Patient/later"),
            &[]
        )
        .status,
        201
    );
}

fn a_transaction_of_1000_entries(app: &TestApp) {
    let s = system();
    let p = urn();
    let mut entries = vec![entry(
        json!({"resourceType": "Patient", "identifier": ident(&s, "p")}),
        "POST",
        "Patient",
        Some(&p),
    )];
    for i in 0..999 {
        entries.push(entry(
            observation(&s, &format!("o{i}"), &p),
            "POST",
            "Observation",
            Some(&urn()),
        ));
    }
    let r = app.json("POST", "", &bundle("transaction", entries), &[]);
    assert_eq!(r.status, 200, "{}", &r.text()[..r.text().len().min(500)]);
    assert_eq!(r.json()["entry"].as_array().unwrap().len(), 1000);
    assert_eq!(found(app, "Observation", &s), 999);
}

fn bundles_over_the_entry_cap_are_413(backend: common::Backend) {
    let Some(app) = common::spawn_app_with(backend, |s| s.writes.bundle_max_entries = 10) else {
        return;
    };
    let s = system();
    let entries = (0..11)
        .map(|i| {
            entry(
                json!({"resourceType": "Patient", "identifier": ident(&s, &i.to_string())}),
                "POST",
                "Patient",
                None,
            )
        })
        .collect();
    let r = app.json("POST", "", &bundle("transaction", entries), &[]);
    assert_eq!(r.status, 413);
    r.outcome(413);
    assert_eq!(found(&app, "Patient", &s), 0);
}

/// What a careless or hostile client might send: refused cleanly, nothing changed, no crash.
fn hostile_and_ambiguous_requests_are_refused(app: &TestApp) {
    let s = system();
    let p = app.create(
        &json!({"resourceType": "Patient", "identifier": ident(&s, "p"),
        "name": [{"family": "Kim"}]}),
    );
    let pid = p["id"].as_str().unwrap();
    let url = format!("Patient/{pid}");
    // A FHIRPath Patch path nested too deep for the parser, and a JSON Patch that doubles the
    // resource with every operation.
    let deep = format!("{}Patient{}", "(".repeat(2000), ")".repeat(2000));
    let fp = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": deep}]}]});
    assert_eq!(app.json("PATCH", &url, &fp, &[]).status, 400);
    let doubling: Vec<Value> = (0..40)
        .map(|_| json!({"op": "copy", "from": "/name", "path": "/name/-"}))
        .collect();
    let r = app.send(
        "PATCH",
        &url,
        &[("Content-Type", "application/json-patch+json")],
        Some(Value::Array(doubling).to_string().as_bytes()),
    );
    assert!(r.status == 413 || r.status == 422, "{}", r.status);
    assert_eq!(app.get(&url).json()["meta"]["versionId"], "1");
    // A condition of result parameters only would match everything.
    for q in ["_format=json", "_summary=count", "_pretty=true"] {
        let r = app.send("DELETE", &format!("Patient?{q}"), &[], None);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
    assert_eq!(app.get(&url).status, 200);
    // No match, but the body names a resource that exists and did not match: 409, not overwritten.
    let other = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Other"}]}));
    let body =
        json!({"resourceType": "Patient", "id": other["id"], "identifier": ident(&s, "nomatch")});
    let r = app.json(
        "PUT",
        &format!("Patient?identifier={s}|nomatch"),
        &body,
        &[],
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        app.get(&format!("Patient/{}", other["id"].as_str().unwrap()))
            .json()["meta"]["versionId"],
        "1"
    );
    // Two entries resolving to one resource, and a urn: reference that stands for no entry.
    let mut renamed = p.clone();
    renamed["name"] = json!([{"family": "Twice"}]);
    let entries = vec![
        entry(renamed.clone(), "PUT", &url, None),
        entry(renamed, "PUT", &format!("Patient?identifier={s}|p"), None),
    ];
    let r = app.json("POST", "", &bundle("transaction", entries), &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    let entries = vec![entry(
        observation(&s, "o", &urn()),
        "POST",
        "Observation",
        None,
    )];
    let r = app.json("POST", "", &bundle("transaction", entries), &[]);
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(app.get(&url).json()["meta"]["versionId"], "1");
    // A cycle of references (two linked Patients) does not stop a cascade.
    let a = app.create(&json!({"resourceType": "Patient"}));
    let aid = a["id"].as_str().unwrap();
    let b = app.create(&json!({"resourceType": "Patient",
        "link": [{"other": {"reference": format!("Patient/{aid}")}, "type": "seealso"}]}));
    let bid = b["id"].as_str().unwrap();
    let mut a2 = a.clone();
    a2["link"] = json!([{"other": {"reference": format!("Patient/{bid}")}, "type": "seealso"}]);
    assert_eq!(
        app.json("PUT", &format!("Patient/{aid}"), &a2, &[]).status,
        200
    );
    assert_eq!(
        app.send("DELETE", &format!("Patient/{aid}"), &[], None)
            .status,
        409
    );
    let r = app.send(
        "DELETE",
        &format!("Patient/{aid}?_cascade=delete"),
        &[],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(app.get(&format!("Patient/{bid}")).status, 410);
}

/// A patient's token cannot probe another patient's data through PATCH: refused before the patch
/// is tried, whatever the patch says.
fn patch_does_not_probe_other_patients(app: &TestApp) {
    let s = system();
    let a = app.create(&json!({"resourceType": "Patient", "identifier": ident(&s, "a")}));
    let b = app.create(&json!({"resourceType": "Patient", "identifier": ident(&s, "b")}));
    let ob = app.create(&observation(
        &s,
        "ob",
        &format!("Patient/{}", b["id"].as_str().unwrap()),
    ));
    let t = app.token("patient/Observation.rus", Some(a["id"].as_str().unwrap()));
    let auth = format!("Bearer {t}");
    for value in ["44261-6", "wrong-guess"] {
        let test = json!([{"op": "test", "path": "/code/coding/0/code", "value": value}]);
        let r = app.send(
            "PATCH",
            &format!("Observation/{}", ob["id"].as_str().unwrap()),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json-patch+json"),
            ],
            Some(test.to_string().as_bytes()),
        );
        assert_eq!(r.status, 403, "{value}: {}", r.text());
    }
}

/// A batch entry that fails still leaves its AuditEvent (its own transaction was rolled back).
fn failed_batch_entries_are_audited(app: &TestApp) {
    let ghost = format!("ghost-{}", uuid::Uuid::new_v4().simple());
    let entries = vec![json!({"request": {"method": "GET", "url": format!("Patient/{ghost}")}})];
    let b = app.json("POST", "", &bundle("batch", entries), &[]).json();
    assert!(b["entry"][0]["response"]["status"]
        .as_str()
        .unwrap()
        .starts_with("404"));
    let t = app.token("system/AuditEvent.rs", None);
    let r = app.send(
        "GET",
        &format!("AuditEvent?entity=Patient/{ghost}&outcome=4"),
        &[("Authorization", &format!("Bearer {t}"))],
        None,
    );
    assert_eq!(
        r.json()["entry"].as_array().map_or(0, Vec::len),
        1,
        "{}",
        r.text()
    );
}

on_both_backends!(
    transaction_stores_everything_with_references_rewritten,
    a_failing_entry_rolls_back_everything,
    entries_run_in_the_spec_order,
    conditional_references_resolve_or_fail,
    batch_entries_are_independent,
    every_entry_is_checked_against_the_scopes,
    each_entry_has_its_audit_event_in_the_transaction,
    conditional_create_update_delete,
    concurrent_conditional_creates_make_one,
    patches_apply_validate_and_honour_if_match,
    integrity_refuses_dangling_references_and_referenced_deletes,
    a_transaction_of_1000_entries,
    hostile_and_ambiguous_requests_are_refused,
    patch_does_not_probe_other_patients,
    failed_batch_entries_are_audited,
);

#[test]
fn integrity_off_sqlite() {
    integrity_can_be_switched_off_for_bulk_loads(common::Backend::Sqlite);
}

#[test]
fn integrity_off_postgres() {
    integrity_can_be_switched_off_for_bulk_loads(common::Backend::Postgres);
}

#[test]
fn entry_cap_sqlite() {
    bundles_over_the_entry_cap_are_413(common::Backend::Sqlite);
}

#[test]
fn entry_cap_postgres() {
    bundles_over_the_entry_cap_are_413(common::Backend::Postgres);
}

/// kill -9 while a large transaction is being stored: after a restart, either all of it is there
/// or none of it.
fn killed_mid_transaction_stores_all_or_nothing(backend: common::Backend) {
    let Some((url, dir, pg)) = database(backend) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    let server = Server::start(&url, &dir.0);
    let t = token(&url, &dir.0);
    let s = system();
    let p = urn();
    let mut entries = vec![entry(
        json!({"resourceType": "Patient", "identifier": ident(&s, "p")}),
        "POST",
        "Patient",
        Some(&p),
    )];
    for i in 0..3000 {
        entries.push(entry(
            observation(&s, &format!("o{i}"), &p),
            "POST",
            "Observation",
            None,
        ));
    }
    let body = bundle("transaction", entries).to_string();
    let mut server = server;
    let base = server.base.clone();
    let sent = std::thread::spawn({
        let t = t.clone();
        move || {
            ureq::post(&format!("{base}/"))
                .timeout(Duration::from_secs(120))
                .set("Authorization", &format!("Bearer {t}"))
                .set("Content-Type", "application/fhir+json")
                .send_string(&body)
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        }
    });
    // Long enough for the body to arrive and the transaction to be well under way.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = server.child.kill();
    let _ = server.child.wait();
    let answered = sent.join().unwrap();
    let restarted = Server::start(&url, &dir.0);
    let n = |ty: &str| {
        let r: Value = ureq::get(&format!(
            "{}/{ty}?identifier={s}|&_summary=count",
            restarted.base
        ))
        .set("Authorization", &format!("Bearer {t}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
        r["total"].as_i64().unwrap()
    };
    let (patients, observations) = (n("Patient"), n("Observation"));
    assert!(
        (patients, observations) == (0, 0) || (patients, observations) == (1, 3000),
        "after the crash: {patients} Patients and {observations} Observations (answer: {answered:?})"
    );
    if answered.is_ok() {
        assert_eq!(
            (patients, observations),
            (1, 3000),
            "an answered transaction was lost"
        );
    }
    drop(restarted);
    drop_database(pg);
}

#[test]
fn killed_mid_transaction_sqlite() {
    killed_mid_transaction_stores_all_or_nothing(common::Backend::Sqlite);
}

#[test]
fn killed_mid_transaction_postgres() {
    killed_mid_transaction_stores_all_or_nothing(common::Backend::Postgres);
}
