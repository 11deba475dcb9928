//! The RESTful interactions over real HTTP, on SQLite and on PostgreSQL.

mod common;

use common::TestApp;
use serde_json::{json, Value};

fn patient() -> Value {
    json!({"resourceType": "Patient", "active": true,
           "name": [{"family": "Rivera", "given": ["Ana"]}], "birthDate": "1990-04-02"})
}

fn create_assigns_id_version_and_location(app: &TestApp) {
    let r = app.json("POST", "Patient", &patient(), &[]);
    assert_eq!(r.status, 201);
    let body = r.json();
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        r.header("Location").unwrap(),
        format!("{}/Patient/{id}/_history/1", app.base)
    );
    assert_eq!(r.header("ETag"), Some("W/\"1\""));
    assert!(r.header("Last-Modified").is_some());
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    let read = app.get(&format!("Patient/{id}"));
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), body);
    // A client-supplied id and meta.versionId on create are the server's to set.
    let mut p = patient();
    p["id"] = json!("mine");
    p["meta"] = json!({"versionId": "42", "tag": [{"system": "urn:t", "code": "kept"}]});
    let c = app.create(&p);
    assert_ne!(c["id"], "mine");
    assert_eq!(c["meta"]["versionId"], "1");
    assert_eq!(c["meta"]["tag"][0]["code"], "kept");
}

fn update_makes_versions_readable_by_vread_and_history(app: &TestApp) {
    let p = app.create(&patient());
    let id = p["id"].as_str().unwrap();
    let mut changed = p.clone();
    changed["birthDate"] = json!("1991-05-03");
    let u = app.json("PUT", &format!("Patient/{id}"), &changed, &[]);
    assert_eq!(u.status, 200, "{}", u.text());
    assert_eq!(u.header("ETag"), Some("W/\"2\""));
    assert_eq!(u.json()["meta"]["versionId"], "2");
    let v1 = app.get(&format!("Patient/{id}/_history/1")).json();
    assert_eq!(v1["birthDate"], "1990-04-02");
    assert_eq!(v1["meta"]["versionId"], "1");
    let v2 = app.get(&format!("Patient/{id}/_history/2")).json();
    assert_eq!(v2["birthDate"], "1991-05-03");
    app.get(&format!("Patient/{id}/_history/3")).outcome(404);
    app.get(&format!("Patient/{id}/_history/x")).outcome(404);
    let h = app.get(&format!("Patient/{id}/_history")).json();
    assert_eq!(h["type"], "history");
    let versions: Vec<_> = h["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(versions, ["2", "1"]);
    assert_eq!(h["entry"][0]["request"]["method"], "PUT");
    assert_eq!(h["entry"][1]["request"]["method"], "POST");
    assert_eq!(h["entry"][1]["request"]["url"], "Patient");
    app.get("Patient/never-existed/_history").outcome(404);
}

fn update_as_create_keeps_client_id_and_enforces_id_rules(app: &TestApp) {
    let x = json!({"resourceType": "Patient", "id": "x"});
    assert_eq!(app.json("PUT", "Patient/x", &x, &[]).status, 201);
    let goal = json!({"resourceType": "Goal", "id": "goal-phq9-remission", "lifecycleStatus": "active",
        "description": {"text": "PHQ-9 below 5"}, "subject": {"reference": "Patient/x"}});
    let r = app.json("PUT", "Goal/goal-phq9-remission", &goal, &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        app.get("Goal/goal-phq9-remission").json()["id"],
        "goal-phq9-remission"
    );
    let again = app.json("PUT", "Goal/goal-phq9-remission", &goal, &[]);
    assert_eq!(again.status, 200);
    let long = "a".repeat(65);
    let mut g = goal.clone();
    g["id"] = json!(long);
    app.json("PUT", &format!("Goal/{long}"), &g, &[])
        .outcome(400);
    g["id"] = json!("bad id!");
    app.json("PUT", "Goal/bad%20id!", &g, &[]).outcome(400);
    g["id"] = json!("other-id");
    let oo = app
        .json("PUT", "Goal/goal-phq9-remission", &g, &[])
        .outcome(400);
    assert!(oo.to_string().contains("Goal.id"), "{oo}");
    let mut no_id = goal.clone();
    no_id.as_object_mut().unwrap().remove("id");
    app.json("PUT", "Goal/goal-phq9-remission", &no_id, &[])
        .outcome(400);
    assert_eq!(
        app.get("Goal/goal-phq9-remission").json()["meta"]["versionId"],
        "2"
    );
}

fn delete_leaves_a_tombstone_version(app: &TestApp) {
    let p = app.create(&patient());
    let id = p["id"].as_str().unwrap();
    let d = app.send("DELETE", &format!("Patient/{id}"), &[], None);
    assert_eq!(d.status, 204);
    assert_eq!(d.header("ETag"), Some("W/\"2\""));
    app.get(&format!("Patient/{id}")).outcome(410);
    app.get(&format!("Patient/{id}/_history/2")).outcome(410);
    assert_eq!(app.get(&format!("Patient/{id}/_history/1")).status, 200);
    let h = app.get(&format!("Patient/{id}/_history")).json();
    assert_eq!(h["entry"].as_array().unwrap().len(), 2);
    assert_eq!(h["entry"][0]["request"]["method"], "DELETE");
    assert!(
        h["entry"][0].get("resource").is_none(),
        "a deletion carries no resource"
    );
    // Deleting again, or deleting what never existed, changes nothing.
    assert_eq!(
        app.send("DELETE", &format!("Patient/{id}"), &[], None)
            .status,
        204
    );
    assert_eq!(
        app.send("DELETE", "Patient/never-was", &[], None).status,
        204
    );
    assert_eq!(
        app.get(&format!("Patient/{id}/_history")).json()["entry"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // An update brings it back as a new version.
    let back = app.json("PUT", &format!("Patient/{id}"), &p, &[]);
    assert_eq!(back.status, 201);
    assert_eq!(back.json()["meta"]["versionId"], "3");
}

fn if_match_mismatch_is_412_and_loses_nothing(app: &TestApp) {
    let p = app.create(&patient());
    let id = p["id"].as_str().unwrap();
    let path = format!("Patient/{id}");
    let mut female = p.clone();
    female["gender"] = json!("female");
    assert_eq!(
        app.json("PUT", &path, &female, &[("If-Match", "W/\"1\"")])
            .status,
        200
    );
    let mut male = p.clone();
    male["gender"] = json!("male");
    app.json("PUT", &path, &male, &[("If-Match", "W/\"1\"")])
        .outcome(412);
    app.send("DELETE", &path, &[("If-Match", "W/\"1\"")], None)
        .outcome(412);
    let cur = app.get(&path).json();
    assert_eq!(
        (cur["gender"].as_str(), cur["meta"]["versionId"].as_str()),
        (Some("female"), Some("2"))
    );
    app.json("PUT", &path, &male, &[("If-Match", "not-a-version")])
        .outcome(400);
    app.json(
        "PUT",
        "Patient/nobody",
        &json!({"resourceType": "Patient", "id": "nobody"}),
        &[("If-Match", "W/\"1\"")],
    )
    .outcome(412);
    assert_eq!(
        app.send("DELETE", &path, &[("If-Match", "W/\"2\"")], None)
            .status,
        204
    );
}

fn concurrent_if_match_updates_have_one_winner(app: &TestApp) {
    let p = app.create(&patient());
    let id = p["id"].as_str().unwrap().to_string();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (p, id) = (p.clone(), id.clone());
                s.spawn(move || {
                    let mut body = p;
                    body["gender"] = json!(if i % 2 == 0 { "male" } else { "female" });
                    app.json(
                        "PUT",
                        &format!("Patient/{id}"),
                        &body,
                        &[("If-Match", "W/\"1\"")],
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 412),
        "{statuses:?}"
    );
    // Without If-Match, concurrent writers all succeed, each on its own version: no gaps, none lost.
    let ok: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let (p, id) = (p.clone(), id.clone());
                s.spawn(move || app.json("PUT", &format!("Patient/{id}"), &p, &[]).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ok.iter().all(|s| *s == 200), "{ok:?}");
    let h = app.all_entries(&format!("Patient/{id}/_history?_count=7"));
    let mut versions: Vec<i64> = h
        .iter()
        .map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    versions.sort();
    assert_eq!(versions, (1..=22).collect::<Vec<i64>>());
}

fn conditional_read_answers_304(app: &TestApp) {
    let p = app.create(&patient());
    let path = format!("Patient/{}", p["id"].as_str().unwrap());
    let r = app.send("GET", &path, &[("If-None-Match", "W/\"1\"")], None);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(
        app.send("GET", &path, &[("If-None-Match", "W/\"7\"")], None)
            .status,
        200
    );
    let lm = app.get(&path).header("Last-Modified").unwrap().to_string();
    assert_eq!(
        app.send("GET", &path, &[("If-Modified-Since", &lm)], None)
            .status,
        304
    );
    let past = "Mon, 01 Jan 2001 00:00:00 GMT";
    assert_eq!(
        app.send("GET", &path, &[("If-Modified-Since", past)], None)
            .status,
        200
    );
}

fn prefer_chooses_what_a_write_returns(app: &TestApp) {
    let m = app.json(
        "POST",
        "Patient",
        &patient(),
        &[("Prefer", "return=minimal")],
    );
    assert_eq!(m.status, 201);
    assert!(m.body.is_empty());
    assert!(m.header("Location").is_some());
    let o = app.json(
        "POST",
        "Patient",
        &patient(),
        &[("Prefer", "return=OperationOutcome")],
    );
    assert_eq!(o.status, 201);
    assert_eq!(o.json()["resourceType"], "OperationOutcome");
    let r = app.json(
        "POST",
        "Patient",
        &patient(),
        &[("Prefer", "return=representation")],
    );
    assert_eq!(r.json()["resourceType"], "Patient");
}

fn unknown_types_and_methods_are_refused(app: &TestApp) {
    app.get("Patient/does-not-exist").outcome(404);
    app.get("NoSuchType/1").outcome(404);
    app.get("Encounter/1").outcome(404);
    app.json(
        "POST",
        "NoSuchType",
        &json!({"resourceType": "NoSuchType"}),
        &[],
    )
    .outcome(404);
    app.json("POST", "Patient/abc", &patient(), &[])
        .outcome(405);
    app.send("PATCH", "Patient/abc/_history", &[], None)
        .outcome(405);
    app.get("Patient/abc/_history/1/extra").outcome(404);
    app.send("GET", &format!("{}/nowhere", app.root), &[], None)
        .outcome(404);
}

fn formats_are_negotiated(app: &TestApp) {
    let p = app.create(&patient());
    let path = format!("Patient/{}", p["id"].as_str().unwrap());
    let x = app.send("GET", &path, &[("Accept", "application/fhir+xml")], None);
    assert_eq!(x.status, 200);
    assert!(x
        .header("Content-Type")
        .unwrap()
        .starts_with("application/fhir+xml"));
    assert!(
        x.text().contains(r#"<family value="Rivera"/>"#),
        "{}",
        x.text()
    );
    let xml = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/><name><family value="Okafor"/></name></Patient>"#;
    let c = app.send(
        "POST",
        "Patient",
        &[
            ("Content-Type", "application/fhir+xml"),
            ("Accept", "application/json"),
        ],
        Some(xml.as_bytes()),
    );
    assert_eq!(c.status, 201, "{}", c.text());
    assert_eq!(c.json()["name"][0]["family"], "Okafor");
    let bad_xml =
        r#"<Patient xmlns="http://hl7.org/fhir"><birthDate value="2020-13-45"/></Patient>"#;
    let oo = app
        .send(
            "POST",
            "Patient",
            &[("Content-Type", "application/fhir+xml")],
            Some(bad_xml.as_bytes()),
        )
        .outcome(400);
    assert!(oo.to_string().contains("Patient.birthDate"), "{oo}");
    let f = app.send(
        "GET",
        &format!("{path}?_format=xml"),
        &[("Accept", "application/json")],
        None,
    );
    assert!(
        f.text().contains("<Patient xmlns=\"http://hl7.org/fhir\""),
        "{}",
        f.text()
    );
    assert_eq!(
        app.send(
            "GET",
            &format!("{path}?_format=json"),
            &[("Accept", "*/*")],
            None
        )
        .json()["id"],
        p["id"]
    );
    let ranked = app.send(
        "GET",
        &path,
        &[(
            "Accept",
            "text/html, application/fhir+xml;q=0.9, application/fhir+json;q=0.5",
        )],
        None,
    );
    assert!(ranked.text().contains("<Patient xmlns"));
    app.send("GET", &path, &[("Accept", "text/csv")], None)
        .outcome(406);
    app.send("GET", &format!("{path}?_format=csv"), &[], None)
        .outcome(406);
    let pretty = app.send("GET", &format!("{path}?_pretty=true"), &[], None);
    assert!(
        pretty.text().contains("\n  \"resourceType\""),
        "{}",
        pretty.text()
    );
    assert!(!app.get(&path).text().contains('\n'));
    app.send(
        "POST",
        "Patient",
        &[("Content-Type", "text/plain")],
        Some(b"hello"),
    )
    .outcome(415);
}

fn history_pages_and_filters_by_time(app: &TestApp) {
    let mut ids = Vec::new();
    for i in 1..=5 {
        let mut p = patient();
        p["birthDate"] = json!(format!("1980-01-0{i}"));
        ids.push(app.create(&p)["id"].as_str().unwrap().to_string());
    }
    let first = app.get("Patient/_history?_count=2").json();
    assert_eq!(first["entry"].as_array().unwrap().len(), 2);
    assert!(common::link(&first, "next").is_some());
    // A write between pages neither repeats nor skips an entry of the original listing.
    let next_url = common::link(&first, "next").unwrap();
    let late = app.create(&patient());
    let rest = app.all_entries(&next_url);
    let mut seen: Vec<String> = first["entry"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest.iter())
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!seen.contains(&late["id"].as_str().unwrap().to_string()));
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
    // _since: only what was written at or after the instant.
    let since = app.get(&format!("Patient/{}", ids[3])).json()["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let newer = app.all_entries(&format!("Patient/_history?_since={since}"));
    let newer_ids: Vec<_> = newer
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        newer_ids,
        [
            late["id"].as_str().unwrap(),
            ids[4].as_str(),
            ids[3].as_str()
        ]
    );
    // _at: the versions current at that instant.
    let id0 = &ids[0];
    let v1_time = app.get(&format!("Patient/{id0}")).json()["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let mut p = app.get(&format!("Patient/{id0}")).json();
    p["gender"] = json!("other");
    app.json("PUT", &format!("Patient/{id0}"), &p, &[]);
    let at = app.all_entries(&format!("Patient/{id0}/_history?_at={v1_time}"));
    assert_eq!(at.len(), 1);
    assert_eq!(at[0]["resource"]["meta"]["versionId"], "1");
    let year = &v1_time[..4];
    assert_eq!(
        app.all_entries(&format!("Patient/{id0}/_history?_at={year}"))
            .len(),
        2
    );
    // System history spans types.
    app.create(&json!({"resourceType": "Goal", "lifecycleStatus": "proposed", "description": {"text": "sleep"},
        "subject": {"reference": format!("Patient/{id0}")}}));
    let sys = app.get("_history?_count=3").json();
    assert_eq!(sys["type"], "history");
    assert_eq!(sys["entry"][0]["resource"]["resourceType"], "Goal");
    app.get("Patient/_history?_count=-1").outcome(400);
    app.get("Patient/_history?_since=yesterday").outcome(400);
    app.get("NoSuchType/_history").outcome(404);
}

fn capability_statement_states_what_is_served(app: &TestApp) {
    let cs = app.get("metadata").json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let types: Vec<_> = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    for t in cairn::fhir::ENABLED_TYPES {
        assert!(types.contains(t), "{t} missing");
    }
    assert_eq!(types.len(), cairn::fhir::ENABLED_TYPES.len());
    let xml = app.send(
        "GET",
        "metadata",
        &[("Accept", "application/fhir+xml")],
        None,
    );
    assert!(
        xml.text().contains("<CapabilityStatement xmlns"),
        "{}",
        xml.text()
    );
}

fn health_readiness_and_request_ids(app: &TestApp) {
    assert_eq!(
        app.send("GET", &format!("{}/healthz", app.root), &[], None)
            .status,
        200
    );
    assert_eq!(
        app.send("GET", &format!("{}/readyz", app.root), &[], None)
            .status,
        200
    );
    let r = app.send("GET", "metadata", &[("X-Request-Id", "req-42")], None);
    assert_eq!(r.header("X-Request-Id"), Some("req-42"));
    let generated = app.get("metadata");
    assert!(generated
        .header("X-Request-Id")
        .is_some_and(|v| v.len() >= 16));
}

/// `$diff` between two versions is a JSON Patch that turns the first into the second.
fn diff_turns_one_version_into_another(app: &TestApp) {
    let p = app.create(&json!({"resourceType": "Patient", "active": true,
        "name": [{"family": "Old", "given": ["A", "B", "C"]}], "gender": "male",
        "telecom": [{"system": "phone", "value": "1"}]}));
    let id = p["id"].as_str().unwrap();
    let mut next = p.clone();
    next["name"][0]["given"] = json!(["Z", "A", "C", "d~/x"]);
    next.as_object_mut().unwrap().remove("active");
    next["gender"] = json!("female");
    next["telecom"] =
        json!([{"system": "email", "value": "a@b.c"}, {"system": "phone", "value": "1"}]);
    assert_eq!(
        app.json("PUT", &format!("Patient/{id}"), &next, &[]).status,
        200
    );
    let v1 = app.get(&format!("Patient/{id}/_history/1")).json();
    let v2 = app.get(&format!("Patient/{id}/_history/2")).json();
    for url in [
        format!("Patient/{id}/$diff?from=1&to=2"),
        format!("Patient/{id}/$diff?from=1"),
    ] {
        let r = app.get(&url);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("Content-Type"),
            Some("application/json-patch+json")
        );
        let ops: json_patch::Patch = serde_json::from_str(&r.text()).unwrap();
        assert!(!ops.0.is_empty());
        let mut doc = v1.clone();
        json_patch::patch(&mut doc, &ops.0).unwrap();
        assert_eq!(doc, v2);
    }
    app.get(&format!("Patient/{id}/$diff?from=9")).outcome(404);
    app.get(&format!("Patient/{id}/$diff")).outcome(400);
    // As readable as the versions themselves.
    let t = app.token("patient/Patient.rs", Some("someone-else"));
    let r = app.send(
        "GET",
        &format!("Patient/{id}/$diff?from=1"),
        &[("Authorization", &format!("Bearer {t}"))],
        None,
    );
    r.outcome(403);
}

/// `Patient/[id]/$everything`: the patient and its compartment, no one else's, with `_type`,
/// `_count` paging and `_since`; a patient token reaches only its own.
fn patient_everything_holds_the_compartment(app: &TestApp) {
    let a = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Everything"}]}));
    let b = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Other"}]}));
    let (aid, bid) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let subject = |p: &str| json!({"reference": format!("Patient/{p}")});
    let obs = |p: &str, v: i64| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "PHQ-9"},
            "subject": subject(p), "valueInteger": v})
    };
    let mut mine = vec![format!("Patient/{aid}")];
    for r in [
        json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "sleep"}, "subject": subject(aid)}),
        json!({"resourceType": "CareTeam", "subject": subject(aid)}),
        json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": subject(aid)}),
        obs(aid, 12),
        obs(aid, 9),
    ] {
        let c = app.create(&r);
        mine.push(format!(
            "{}/{}",
            c["resourceType"].as_str().unwrap(),
            c["id"].as_str().unwrap()
        ));
    }
    let theirs = app.create(&obs(bid, 20));
    let keys = |bundle_entries: Vec<Value>| -> Vec<String> {
        let mut k: Vec<String> = bundle_entries
            .iter()
            .map(|e| {
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap(),
                    e["resource"]["id"].as_str().unwrap()
                )
            })
            .collect();
        k.sort();
        k
    };
    let mut want = mine.clone();
    want.sort();
    let all = keys(app.all_entries(&format!("Patient/{aid}/$everything")));
    assert_eq!(all, want);
    assert!(!all.contains(&format!("Observation/{}", theirs["id"].as_str().unwrap())));
    let paged = keys(app.all_entries(&format!("Patient/{aid}/$everything?_count=2")));
    assert_eq!(paged, want);
    let first = app
        .get(&format!("Patient/{aid}/$everything?_count=2"))
        .json();
    assert_eq!(first["entry"].as_array().unwrap().len(), 2);
    assert_eq!(first["total"], 6);
    let only = keys(app.all_entries(&format!("Patient/{aid}/$everything?_type=Observation")));
    assert_eq!(only.len(), 3);
    assert!(only
        .iter()
        .all(|k| k.starts_with("Observation/") || k.starts_with("Patient/")));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let cut = chrono_like_now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let late = app.create(&obs(aid, 3));
    let recent = keys(app.all_entries(&format!("Patient/{aid}/$everything?_since={cut}")));
    assert_eq!(recent, {
        let mut r = vec![
            format!("Observation/{}", late["id"].as_str().unwrap()),
            format!("Patient/{aid}"),
        ];
        r.sort();
        r
    });
    app.get(&format!("Patient/{aid}/$everything?_type=Nope"))
        .outcome(404);
    let t = app.token("patient/*.rs", Some(aid));
    let auth = format!("Bearer {t}");
    let r = app.send(
        "GET",
        &format!("Patient/{aid}/$everything"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(bid));
    app.send(
        "GET",
        &format!("Patient/{bid}/$everything"),
        &[("Authorization", &auth)],
        None,
    )
    .outcome(403);
}

/// `CarePlan/[id]/$everything`: the plan, what it refers to and what those refer to; never another
/// patient's data, even when something in the package points at it.
fn careplan_everything_is_the_plan_package(app: &TestApp) {
    let a = app.create(&json!({"resourceType": "Patient"}));
    let b = app.create(&json!({"resourceType": "Patient"}));
    let (aid, bid) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let key = |r: &Value| {
        format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        )
    };
    let qr = app.create(
        &json!({"resourceType": "QuestionnaireResponse", "status": "completed",
        "subject": {"reference": format!("Patient/{aid}")}}),
    );
    let score = app.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "PHQ-9"},
        "subject": {"reference": format!("Patient/{aid}")}, "derivedFrom": [{"reference": key(&qr)}],
        "focus": [{"reference": format!("Patient/{bid}")}], "valueInteger": 8}));
    let goal = app.create(&json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "PHQ-9 < 5"},
        "subject": {"reference": format!("Patient/{aid}")}, "outcomeReference": [{"reference": key(&score)}]}));
    let team = app.create(
        &json!({"resourceType": "CareTeam", "subject": {"reference": format!("Patient/{aid}")}}),
    );
    let task = app.create(
        &json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "for": {"reference": format!("Patient/{aid}")}}),
    );
    let plan = app.create(&json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": format!("Patient/{aid}")}, "goal": [{"reference": key(&goal)}],
        "careTeam": [{"reference": key(&team)}], "activity": [{"reference": {"reference": key(&task)}}]}));
    let other = app.create(
        &json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": format!("Patient/{bid}")}}),
    );
    let r = app.get(&format!(
        "CarePlan/{}/$everything",
        plan["id"].as_str().unwrap()
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let got: Vec<String> = r.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| key(&e["resource"]))
        .collect();
    for want in [&plan, &goal, &team, &task, &score, &qr, &a] {
        assert!(
            got.contains(&key(want)),
            "{} missing from {got:?}",
            key(want)
        );
    }
    assert!(
        !got.contains(&key(&b)) && !got.contains(&key(&other)),
        "{got:?}"
    );
    let t = app.token("patient/*.rs", Some(aid));
    app.send(
        "GET",
        &format!("CarePlan/{}/$everything", other["id"].as_str().unwrap()),
        &[("Authorization", &format!("Bearer {t}"))],
        None,
    )
    .outcome(403);
}

/// Now as a FHIR instant (UTC, microseconds).
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    cairn::fhir::format_instant(now.as_micros() as i64)
}

/// A read by id is answered from the current-version cache once the resource was read; every
/// kind of write (update, patch, transaction, delete, update-as-create again) is seen by the next
/// read, and a cached resource is judged against the caller's access like any other.
fn cached_reads_follow_every_write(app: &TestApp) {
    let p = app.create(&json!({"resourceType": "Patient", "active": false,
                               "name": [{"family": "Cache"}]}));
    let id = p["id"].as_str().unwrap().to_string();
    let path = format!("Patient/{id}");
    let read = |want: &str| {
        let r = app.get(&path);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("ETag"), Some(format!("W/\"{want}\"").as_str()));
        let body = r.json();
        assert_eq!(body["meta"]["versionId"], want, "{body}");
        body
    };
    // Twice: the second read is the cached one, and the same.
    let (a, b) = (app.get(&path), app.get(&path));
    assert_eq!((a.status, a.text()), (b.status, b.text()));
    read("1");
    let put = json!({"resourceType": "Patient", "id": id, "active": true});
    assert_eq!(app.json("PUT", &path, &put, &[]).status, 200);
    assert_eq!(read("2")["active"], true);
    let patch = br#"[{"op": "replace", "path": "/active", "value": false}]"#;
    let r = app.send(
        "PATCH",
        &path,
        &[("Content-Type", "application/json-patch+json")],
        Some(patch),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(read("3")["active"], false);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Patient", "id": id, "gender": "other"},
        "request": {"method": "PUT", "url": path}}]});
    assert_eq!(app.json("POST", "", &bundle, &[]).status, 200);
    assert_eq!(read("4")["gender"], "other");
    assert_eq!(app.send("DELETE", &path, &[], None).status, 204);
    assert_eq!(app.get(&path).status, 410);
    assert_eq!(app.json("PUT", &path, &put, &[]).status, 201);
    read("6");
    // The version read before stays readable as a version.
    assert_eq!(
        app.get(&format!("{path}/_history/4")).json()["gender"],
        "other"
    );
    // Cached, it is still outside another patient's compartment.
    let other = app.create(&json!({"resourceType": "Patient"}));
    let t = app.token("patient/*.rs", other["id"].as_str());
    let auth = format!("Bearer {t}");
    let r = app.send("GET", &path, &[("Authorization", auth.as_str())], None);
    assert_eq!(r.status, 403, "{}", r.text());
    let own = format!("Patient/{}", other["id"].as_str().unwrap());
    app.get(&own);
    let r = app.send("GET", &own, &[("Authorization", auth.as_str())], None);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Reads by id are routed ahead of the two-segment routes they overlap (a guarded copy of the
/// instance route); those routes still get their own requests, escaped spellings included.
fn overlapping_two_segment_routes_keep_their_handlers(app: &TestApp) {
    let mut p = patient();
    p["id"] = json!("a-1");
    assert_eq!(app.json("PUT", "Patient/a-1", &p, &[]).status, 201);
    assert_eq!(app.get("Patient/a-1").json()["id"], "a-1");
    // The same read, spelled with escapes, goes the usual way and finds the same resource.
    assert_eq!(app.get("Patient/a%2D1").json()["id"], "a-1");
    let history = app.get("Patient/_history");
    assert_eq!(history.status, 200, "{}", history.text());
    assert_eq!(history.json()["type"], "history");
    assert_eq!(app.get("Patient/%5Fhistory").json()["type"], "history");
    let search = app.send(
        "POST",
        "Patient/_search",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"_id=a-1"),
    );
    assert_eq!(search.status, 200, "{}", search.text());
    assert_eq!(search.json()["type"], "searchset");
    assert_eq!(search.json()["entry"][0]["resource"]["id"], "a-1");
    app.send("DELETE", "Patient/_history", &[], None)
        .outcome(405);
    app.get("Patient/_search").outcome(405);
    app.get("QuestionnaireResponse/$extract").outcome(405);
    let smart = app.get(".well-known/smart-configuration");
    assert_eq!(smart.status, 200, "{}", smart.text());
    assert!(smart.json()["token_endpoint"].is_string());
}

on_both_backends!(
    overlapping_two_segment_routes_keep_their_handlers,
    cached_reads_follow_every_write,
    diff_turns_one_version_into_another,
    patient_everything_holds_the_compartment,
    careplan_everything_is_the_plan_package,
    create_assigns_id_version_and_location,
    update_makes_versions_readable_by_vread_and_history,
    update_as_create_keeps_client_id_and_enforces_id_rules,
    delete_leaves_a_tombstone_version,
    if_match_mismatch_is_412_and_loses_nothing,
    concurrent_if_match_updates_have_one_winner,
    conditional_read_answers_304,
    prefer_chooses_what_a_write_returns,
    unknown_types_and_methods_are_refused,
    formats_are_negotiated,
    history_pages_and_filters_by_time,
    capability_statement_states_what_is_served,
    health_readiness_and_request_ids,
);
