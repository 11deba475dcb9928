//! What the server accepts and refuses as content: every official R4 example round-trips through
//! JSON and XML, and each kind of bad input gets the right status and leaves the store unchanged.

mod common;

use common::{shared, TestApp};
use serde_json::{json, Value};

fn strip_meta(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("meta");
    v
}

/// The narrative with whitespace next to tags dropped and runs collapsed: fhirbolt's XML reader
/// trims text nodes, which is the one thing an XML round trip may change.
fn loose_div(v: Value) -> Value {
    let mut v = strip_meta(v);
    if let Some(div) = v.pointer_mut("/text/div") {
        let s = div.as_str().unwrap().to_string();
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_whitespace() {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                let next_is_tag = chars.peek().is_some_and(|c| *c == '<' || *c == '>');
                let prev_is_tag = out.ends_with('<') || out.ends_with('>');
                if !next_is_tag && !prev_is_tag && !out.is_empty() && chars.peek().is_some() {
                    out.push(' ');
                }
            } else {
                out.push(c);
            }
        }
        *div = json!(out);
    }
    v
}

/// Official examples that are not valid R4 (see ../shared/fhir/README.md).
const INVALID_EXAMPLES: &[&str] = &["Questionnaire-qs1.json"];

fn official_examples_round_trip_through_json_and_xml(app: &TestApp) {
    let mut done = 0;
    // Types only the server writes cannot be PUT (tests/audit.rs renders ours as JSON and XML).
    for t in cairn::fhir::ENABLED_TYPES
        .iter()
        .filter(|t| !cairn::fhir::is_server_written(t))
    {
        let dir = shared().join("fhir/examples").join(t);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let res: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            let id = res["id"].as_str().unwrap();
            let path = format!("{t}/{id}");
            let put = app.json("PUT", &path, &res, &[]);
            if INVALID_EXAMPLES.contains(&name.as_str()) {
                put.outcome(400);
                continue;
            }
            assert!(
                put.status == 201 || put.status == 200,
                "{name}: {}",
                put.text()
            );
            let back = app.get(&path).json();
            assert_eq!(
                strip_meta(back),
                strip_meta(res.clone()),
                "{name}: JSON round trip"
            );
            let xml = app.send("GET", &path, &[("Accept", "application/fhir+xml")], None);
            assert_eq!(xml.status, 200, "{name}");
            let again = app.send(
                "PUT",
                &path,
                &[("Content-Type", "application/fhir+xml")],
                Some(&xml.body),
            );
            assert_eq!(again.status, 200, "{name}: {}", again.text());
            assert_eq!(
                loose_div(app.get(&path).json()),
                loose_div(res),
                "{name}: XML round trip"
            );
            done += 1;
        }
    }
    assert!(done >= 100, "only {done} examples");
}

fn patient_versions(app: &TestApp) -> usize {
    app.all_entries("Patient/_history?_count=500").len()
}

fn bad_input_is_refused_and_nothing_is_stored(app: &TestApp) {
    let base = json!({"resourceType": "Patient", "name": [{"family": "Rivera"}]});
    let existing = app.create(&base);
    let existing_path = format!("Patient/{}", existing["id"].as_str().unwrap());
    let before = patient_versions(app);
    let with = |k: &str, v: Value| {
        let mut p = base.clone();
        p[k] = v;
        p.to_string()
    };
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (
            "unknown element",
            with("favouriteColour", json!("blue")),
            400,
            Some("Patient.favouriteColour"),
        ),
        (
            "wrong type",
            with("birthDate", json!(12)),
            400,
            Some("Patient.birthDate"),
        ),
        (
            "bad primitive",
            with("birthDate", json!("2020-13-45")),
            400,
            Some("Patient.birthDate"),
        ),
        (
            "impossible date",
            with("birthDate", json!("2021-02-29")),
            400,
            Some("Patient.birthDate"),
        ),
        (
            "bad code",
            with("gender", json!("sometimes")),
            400,
            Some("Patient.gender"),
        ),
        (
            "nested path",
            with("name", json!([{"family": "A", "given": [7]}])),
            400,
            Some("Patient.name[0].given[0]"),
        ),
        (
            "object for array",
            with("name", json!({"family": "A"})),
            400,
            Some("Patient.name"),
        ),
        (
            "wrong resourceType",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                .to_string(),
            400,
            None,
        ),
        (
            "unknown resourceType",
            json!({"resourceType": "Nonsense"}).to_string(),
            400,
            None,
        ),
        (
            "no resourceType",
            json!({"name": [{"family": "A"}]}).to_string(),
            400,
            None,
        ),
        ("not an object", "[1,2,3]".into(), 400, None),
        ("empty body", String::new(), 400, None),
        (
            "truncated",
            r#"{"resourceType":"Patient","name":[{"family":"Ri"#.into(),
            400,
            None,
        ),
        (
            "deep nesting",
            format!(
                r#"{{"resourceType":"Patient","extension":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            400,
            None,
        ),
        (
            "101 levels",
            format!(
                r#"{{"resourceType":"Patient","contained":[{}]}}"#,
                "{\"resourceType\":\"Patient\",\"contained\":[".repeat(50) + &"]}".repeat(50)
            ),
            400,
            None,
        ),
        (
            "not UTF-8",
            String::from_utf8_lossy(b"{\"resourceType\":\"Patient\"}").into_owned() + "\u{FFFD}",
            400,
            None,
        ),
    ];
    for (what, body, status, path) in &cases {
        for (method, url) in [
            ("POST", "Patient".to_string()),
            ("PUT", existing_path.clone()),
        ] {
            let r = app.send(
                method,
                &url,
                &[("Content-Type", "application/fhir+json")],
                Some(body.as_bytes()),
            );
            assert_eq!(r.status, *status, "{what} ({method}): {}", r.text());
            let oo = r.outcome(*status);
            if let Some(p) = path {
                assert_eq!(oo["issue"][0]["expression"][0], *p, "{what}: {oo}");
            }
        }
    }
    let invalid_utf8 = app.send(
        "POST",
        "Patient",
        &[("Content-Type", "application/fhir+json")],
        Some(b"{\"resourceType\":\"Patient\",\"gender\":\"\xff\"}"),
    );
    invalid_utf8.outcome(400);
    let huge = vec![b' '; 5 * 1024 * 1024];
    app.send(
        "POST",
        "Patient",
        &[("Content-Type", "application/fhir+json")],
        Some(&huge),
    )
    .outcome(413);
    app.send(
        "POST",
        "Patient",
        &[("Content-Type", "text/plain")],
        Some(b"hello"),
    )
    .outcome(415);
    let bad_xml = b"<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"A\"/>";
    app.send(
        "POST",
        "Patient",
        &[("Content-Type", "application/fhir+xml")],
        Some(bad_xml),
    )
    .outcome(400);
    let deep_xml = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
        "<extension>".repeat(150),
        "</extension>".repeat(150)
    );
    app.send(
        "POST",
        "Patient",
        &[("Content-Type", "application/fhir+xml")],
        Some(deep_xml.as_bytes()),
    )
    .outcome(400);
    assert_eq!(
        patient_versions(app),
        before,
        "a refused request stored something"
    );
    assert_eq!(app.get(&existing_path).json(), existing);
}

on_both_backends!(bad_input_is_refused_and_nothing_is_stored);

/// The examples refer to resources that are not in the set: loaded as a bulk load would be, with
/// referential integrity off.
fn examples_round_trip(backend: common::Backend) {
    match common::spawn_app_with(backend, |s| s.writes.referential_integrity = false) {
        Some(app) => official_examples_round_trip_through_json_and_xml(&app),
        None => eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested"),
    }
}

#[test]
fn official_examples_round_trip_sqlite() {
    examples_round_trip(common::Backend::Sqlite);
}

#[test]
fn official_examples_round_trip_postgres() {
    examples_round_trip(common::Backend::Postgres);
}

#[test]
fn postgres_outage_gives_503_not_500() {
    let Some(app) = common::spawn_app(common::Backend::Postgres) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    let p = app.create(&json!({"resourceType": "Patient", "active": true}));
    app.drop_database();
    let ready = app.send("GET", &format!("{}/readyz", app.root), &[], None);
    ready.outcome(503);
    app.get(&format!("Patient/{}", p["id"].as_str().unwrap()))
        .outcome(503);
    let w = app.json("POST", "Patient", &json!({"resourceType": "Patient"}), &[]);
    w.outcome(503);
    assert!(w.header("Retry-After").is_some());
}
