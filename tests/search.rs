//! Search over real HTTP, on SQLite and PostgreSQL, with hand-built fixtures whose answers are
//! known. Fixtures use client-chosen ids (PUT), so the same queries give the same ids on both
//! backends, which `both_backends_give_the_same_answers` checks.

mod common;

use common::{Backend, TestApp};
use serde_json::{json, Value};

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const PHQ9: &str = "44261-6";
const GAD7: &str = "70274-6";

fn put(app: &TestApp, r: Value) -> Value {
    let path = format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap(),
        r["id"].as_str().unwrap()
    );
    let resp = app.json("PUT", &path, &r, &[]);
    assert!(
        resp.status == 200 || resp.status == 201,
        "{path}: {}",
        resp.text()
    );
    resp.json()
}

fn obs(id: &str, patient: &str, code: Value, extra: Value) -> Value {
    let mut o = json!({"resourceType": "Observation", "id": id, "status": "final", "code": code,
        "subject": {"reference": format!("Patient/{patient}")}});
    for (k, v) in extra.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

fn loinc(code: &str) -> Value {
    json!({"coding": [{"system": LOINC, "code": code}]})
}

fn score(v: f64) -> Value {
    json!({"valueQuantity": {"value": v, "unit": "{score}", "system": UCUM, "code": "{score}"}})
}

/// A small clinic: two patients with practitioners, PHQ-9/GAD-7 scores over time, goals and plans.
fn load_clinic(app: &TestApp) {
    put(
        app,
        json!({"resourceType": "Practitioner", "id": "dr-ode", "name": [{"family": "Ode", "given": ["Nia"]}]}),
    );
    put(
        app,
        json!({"resourceType": "Practitioner", "id": "dr-lee", "name": [{"family": "Lee"}]}),
    );
    put(
        app,
        json!({"resourceType": "Patient", "id": "ana", "gender": "female", "birthDate": "1990-04-02",
        "identifier": [{"system": "urn:mrn", "value": "A1",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "name": [{"family": "Müller", "given": ["Ana", "Sofía"]}],
        "telecom": [{"system": "email", "value": "ana@example.org"}],
        "generalPractitioner": [{"reference": "Practitioner/dr-ode"}]}),
    );
    put(
        app,
        json!({"resourceType": "Patient", "id": "ben", "gender": "male", "birthDate": "1985-11",
        "identifier": [{"system": "urn:mrn", "value": "B2"}, {"value": "B2-local"}],
        "name": [{"family": "Mayer", "given": ["Ben"]}],
        "generalPractitioner": [{"reference": "Practitioner/dr-lee"}]}),
    );
    put(
        app,
        json!({"resourceType": "Patient", "id": "cy", "name": [{"family": "Mueller,Cy"}]}),
    );
    let phq = [
        ("o-ana-1", "ana", "2024-01-10T09:00:00Z", 21.0),
        ("o-ana-2", "ana", "2024-03-15T14:30:00+02:00", 14.0),
        ("o-ana-3", "ana", "2024-05-20", 4.0),
        ("o-ben-1", "ben", "2024-03-01", 9.0),
    ];
    for (id, p, date, v) in phq {
        let mut extra = score(v);
        extra["effectiveDateTime"] = json!(date);
        put(app, obs(id, p, loinc(PHQ9), extra));
    }
    let mut gad = score(12.0);
    gad["effectivePeriod"] = json!({"start": "2024-02-20", "end": "2024-03-10"});
    put(
        app,
        obs(
            "o-ben-gad",
            "ben",
            json!({"coding": [{"system": LOINC, "code": GAD7, "display": "GAD-7 total"}],
        "text": "anxiety severity"}),
            gad,
        ),
    );
    put(
        app,
        obs(
            "o-ana-mass",
            "ana",
            json!({"text": "serum level"}),
            json!({"valueQuantity": {"value": 0.5, "unit": "g", "system": UCUM, "code": "g"}}),
        ),
    );
    put(
        app,
        obs("o-ana-none", "ana", json!({"text": "note"}), json!({})),
    );
    put(
        app,
        obs(
            "o-panel",
            "ana",
            json!({"text": "panel"}),
            json!({"hasMember": [
        {"reference": "Observation/o-ana-1"}, {"reference": "Observation/o-ana-2"}]}),
        ),
    );
    for (id, p, goal_text) in [
        ("g-ana-rem", "ana", "PHQ-9 below 5"),
        ("g-ana-sleep", "ana", "sleep 7h"),
        ("g-ben", "ben", "walk daily"),
    ] {
        put(
            app,
            json!({"resourceType": "Goal", "id": id, "lifecycleStatus": "active",
            "description": {"text": goal_text}, "subject": {"reference": format!("Patient/{p}")}}),
        );
    }
    put(
        app,
        json!({"resourceType": "CarePlan", "id": "cp-ana", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/ana"}, "period": {"start": "2024-01-01"},
        "goal": [{"reference": "Goal/g-ana-rem"}, {"reference": "Goal/g-ana-sleep"}]}),
    );
    put(
        app,
        json!({"resourceType": "CarePlan", "id": "cp-ana-old", "status": "revoked", "intent": "plan",
        "subject": {"reference": "Patient/ana"}, "goal": [{"reference": "Goal/g-ana-rem"}]}),
    );
    put(
        app,
        json!({"resourceType": "CarePlan", "id": "cp-ben", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/ben"}, "goal": [{"reference": "Goal/g-ben"}]}),
    );
    put(
        app,
        json!({"resourceType": "Questionnaire", "id": "q-phq9", "status": "active",
        "url": "http://example.org/Questionnaire/phq9"}),
    );
    put(
        app,
        json!({"resourceType": "Questionnaire", "id": "q-draft", "status": "draft"}),
    );
}

/// The ids a search matches, in order, following next links.
fn ids(app: &TestApp, query: &str) -> Vec<String> {
    app.all_entries(query)
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn assert_finds(app: &TestApp, query: &str, want: &[&str]) {
    let got = sorted(ids(app, query));
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{query}");
}

fn string_parameters_fold_case_and_accents(app: &TestApp) {
    load_clinic(app);
    assert_finds(app, "Patient?family=muller", &["ana"]);
    assert_finds(app, "Patient?family=MÜL", &["ana"]);
    assert_finds(app, "Patient?family=m", &["ana", "ben", "cy"]);
    assert_finds(app, "Patient?name=sofia", &["ana"]);
    assert_finds(app, "Patient?family:exact=Müller", &["ana"]);
    assert_finds(app, "Patient?family:exact=Muller", &[]);
    assert_finds(app, "Patient?family:exact=Mül", &[]);
    assert_finds(app, "Patient?family:contains=ye", &["ben"]);
    assert_finds(app, "Patient?family:exact=Mueller\\,Cy", &["cy"]);
    assert_finds(app, "Patient?family=mayer,muller", &["ana", "ben"]);
    assert_finds(app, "Patient?given=ana&given=sofia", &["ana"]);
    assert_finds(app, "Patient?given=ana&given=ben", &[]);
}

fn token_parameters_and_modifiers(app: &TestApp) {
    load_clinic(app);
    assert_finds(app, "Patient?identifier=urn:mrn|A1", &["ana"]);
    assert_finds(app, "Patient?identifier=urn:mrn|", &["ana", "ben"]);
    assert_finds(app, "Patient?identifier=|B2-local", &["ben"]);
    assert_finds(app, "Patient?identifier=B2", &["ben"]);
    assert_finds(
        app,
        "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A1",
        &["ana"],
    );
    assert_finds(app, "Patient?gender=female", &["ana"]);
    assert_finds(app, "Patient?gender:not=female", &["ben", "cy"]);
    assert_finds(app, "Patient?email=ana@example.org", &["ana"]);
    assert_finds(
        app,
        &format!("Observation?code={LOINC}|{PHQ9}"),
        &["o-ana-1", "o-ana-2", "o-ana-3", "o-ben-1"],
    );
    assert_finds(app, &format!("Observation?code={GAD7}"), &["o-ben-gad"]);
    assert_finds(
        app,
        &format!("Observation?code={LOINC}|{GAD7},{LOINC}|{PHQ9}&subject=Patient/ben"),
        &["o-ben-1", "o-ben-gad"],
    );
    assert_finds(app, "Observation?code:text=anxiety", &["o-ben-gad"]);
    assert_finds(app, "Observation?code:text=gad-7", &["o-ben-gad"]);
    // The built-in instruments are active Questionnaires too.
    assert_finds(
        app,
        "Questionnaire?status=active",
        &["q-phq9", "phq-9", "gad-7"],
    );
    // :in / :not-in with a value set the server knows (the R4 value sets it can expand).
    let gender_vs = "http://hl7.org/fhir/ValueSet/administrative-gender";
    assert_finds(
        app,
        &format!("Patient?gender:in={gender_vs}"),
        &["ana", "ben"],
    );
    assert_finds(app, &format!("Patient?gender:not-in={gender_vs}"), &["cy"]);
    assert_finds(
        app,
        "Questionnaire?status:in=http://hl7.org/fhir/ValueSet/publication-status|4.0.1",
        &["q-phq9", "q-draft", "phq-9", "gad-7"],
    );
    assert_finds(
        app,
        &format!("Observation?patient=ben&code:not-in={gender_vs}"),
        &["o-ben-1", "o-ben-gad"],
    );
    assert_finds(
        app,
        &format!("Observation?patient=ben&code:in={gender_vs}"),
        &[],
    );
    app.get("Observation?code:in=http://example.org/vs")
        .outcome(400);
}

fn reference_parameters_chains_and_has(app: &TestApp) {
    load_clinic(app);
    assert_finds(
        app,
        "Observation?subject=Patient/ben",
        &["o-ben-1", "o-ben-gad"],
    );
    assert_finds(app, "Observation?subject=ben", &["o-ben-1", "o-ben-gad"]);
    assert_finds(
        app,
        &format!("Observation?subject={}/Patient/ben", app.base),
        &["o-ben-1", "o-ben-gad"],
    );
    assert_finds(
        app,
        "Observation?subject:Patient=ben",
        &["o-ben-1", "o-ben-gad"],
    );
    assert_finds(app, "Observation?patient=ben", &["o-ben-1", "o-ben-gad"]);
    assert_finds(
        app,
        "Observation?subject:Patient.name=mayer",
        &["o-ben-1", "o-ben-gad"],
    );
    assert_finds(
        app,
        "Observation?subject:Patient.general-practitioner:Practitioner.name=lee",
        &["o-ben-1", "o-ben-gad"],
    );
    assert_finds(
        app,
        &format!("Patient?_has:Observation:subject:code={LOINC}|{GAD7}"),
        &["ben"],
    );
    assert_finds(
        app,
        &format!(
            "Practitioner?_has:Patient:general-practitioner:_has:Observation:subject:code={GAD7}"
        ),
        &["dr-lee"],
    );
    assert_finds(
        app,
        "CarePlan?goal=Goal/g-ana-rem",
        &["cp-ana", "cp-ana-old"],
    );
    assert_finds(
        app,
        "Observation?has-member=Observation/o-ana-2",
        &["o-panel"],
    );
    assert_finds(
        app,
        "Questionnaire?url=http://example.org/Questionnaire/phq9",
        &["q-phq9"],
    );
    assert_finds(
        app,
        "Questionnaire?url:below=http://example.org/Questionnaire",
        &["q-phq9"],
    );
}

fn date_prefixes_precision_and_time_zones(app: &TestApp) {
    load_clinic(app);
    let subj = "Observation?code=44261-6";
    // o-ana-1 2024-01-10T09Z, o-ana-2 2024-03-15T12:30Z, o-ana-3 2024-05-20, o-ben-1 2024-03-01
    let cases: &[(&str, &[&str])] = &[
        ("2024-03", &["o-ana-2", "o-ben-1"]),
        ("eq2024-03-15", &["o-ana-2"]),
        ("ne2024-03", &["o-ana-1", "o-ana-3"]),
        ("lt2024-03", &["o-ana-1"]),
        ("le2024-03", &["o-ana-1", "o-ana-2", "o-ben-1"]),
        ("gt2024-03", &["o-ana-3"]),
        ("ge2024-03", &["o-ana-2", "o-ana-3", "o-ben-1"]),
        ("sa2024-03", &["o-ana-3"]),
        ("eb2024-03", &["o-ana-1"]),
        ("2024", &["o-ana-1", "o-ana-2", "o-ana-3", "o-ben-1"]),
        ("2023", &[]),
        ("ge2024-03-15T12:30:00Z", &["o-ana-2", "o-ana-3"]),
        ("gt2024-03-15T12:30:00Z", &["o-ana-3"]),
        ("lt2024-03-15T14:30:00%2B02:00", &["o-ana-1", "o-ben-1"]),
        // ap is 10% of the distance from now either side: far from the data, nothing is near.
        ("ap2019-01-10", &[]),
    ];
    for (value, want) in cases {
        assert_finds(app, &format!("{subj}&date={value}"), want);
    }
    assert!(ids(app, &format!("{subj}&date=ap2024-01-10")).contains(&"o-ana-1".to_string()));
    assert_finds(
        app,
        &format!("{subj}&date=ge2024-03-01&date=le2024-03-31"),
        &["o-ana-2", "o-ben-1"],
    );
    // A period: GAD-7 over 2024-02-20..2024-03-10 is inside March? No: it straddles.
    assert_finds(app, "Observation?code=70274-6&date=eq2024-03", &[]);
    assert_finds(app, "Observation?code=70274-6&date=2024", &["o-ben-gad"]);
    assert_finds(
        app,
        "Observation?code=70274-6&date=ge2024-03-05",
        &["o-ben-gad"],
    );
    // birthdate with month precision in the resource.
    assert_finds(app, "Patient?birthdate=1985", &["ben"]);
    assert_finds(app, "Patient?birthdate=1985-11-20", &[]);
    assert_finds(app, "Patient?birthdate=gt1986", &["ana"]);
    // _lastUpdated on every type
    let lu = app.get("Goal/g-ben").json()["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    assert_finds(
        app,
        &format!("Goal?_id=g-ben&_lastUpdated=ge{lu}"),
        &["g-ben"],
    );
    assert_finds(app, "Goal?_id=g-ben&_lastUpdated=lt2000-01-01", &[]);
}

fn number_and_quantity_prefixes_with_units(app: &TestApp) {
    load_clinic(app);
    let phq = "Observation?code=44261-6&value-quantity=";
    let cases: &[(&str, &[&str])] = &[
        ("14", &["o-ana-2"]),
        ("gt10", &["o-ana-1", "o-ana-2"]),
        ("ge14", &["o-ana-2", "o-ana-1"]),
        ("lt9", &["o-ana-3"]),
        ("le9", &["o-ana-3", "o-ben-1"]),
        ("ne14", &["o-ana-1", "o-ana-3", "o-ben-1"]),
        ("ap20", &["o-ana-1"]),
        ("gt19|http://unitsofmeasure.org|{score}", &["o-ana-1"]),
        ("gt19||{score}", &["o-ana-1"]),
    ];
    for (value, want) in cases {
        assert_finds(app, &format!("{phq}{value}"), want);
    }
    // 0.5 g is 500 mg: compared in the canonical unit.
    assert_finds(
        app,
        "Observation?value-quantity=gt100|http://unitsofmeasure.org|mg",
        &["o-ana-mass"],
    );
    assert_finds(
        app,
        "Observation?value-quantity=500|http://unitsofmeasure.org|mg",
        &["o-ana-mass"],
    );
    assert_finds(
        app,
        "Observation?value-quantity=lt0.2|http://unitsofmeasure.org|kg",
        &["o-ana-mass"],
    );
    assert_finds(
        app,
        &format!("Observation?code-value-quantity={LOINC}|{PHQ9}$gt10"),
        &["o-ana-1", "o-ana-2"],
    );
    assert_finds(
        app,
        &format!("Observation?code-value-quantity={LOINC}|{GAD7}$gt10"),
        &["o-ben-gad"],
    );
    assert_finds(
        app,
        &format!("Observation?code-value-quantity={PHQ9}$lt5"),
        &["o-ana-3"],
    );
}

fn missing_works_on_every_parameter_type(app: &TestApp) {
    load_clinic(app);
    assert_finds(app, "Patient?gender:missing=true", &["cy"]);
    assert_finds(app, "Patient?birthdate:missing=false", &["ana", "ben"]);
    assert_finds(app, "Patient?general-practitioner:missing=true", &["cy"]);
    assert_finds(app, "Patient?family:missing=false", &["ana", "ben", "cy"]);
    assert_finds(
        app,
        "Observation?patient=ana&value-quantity:missing=true",
        &["o-ana-none", "o-panel"],
    );
    assert_finds(app, "Questionnaire?url:missing=true", &["q-draft"]);
}

fn includes_never_duplicate_and_iterate(app: &TestApp) {
    load_clinic(app);
    let b = app
        .get("CarePlan?subject=Patient/ana&_include=CarePlan:goal")
        .json();
    let entries: Vec<(String, String)> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["search"]["mode"].as_str().unwrap().into(),
                e["resource"]["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut all: Vec<&String> = entries.iter().map(|(_, id)| id).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), entries.len(), "{entries:?}");
    assert_eq!(
        entries.iter().filter(|(m, _)| m == "include").count(),
        2,
        "{entries:?}"
    );
    let inc = |q: &str| -> Vec<String> {
        sorted(
            app.get(q).json()["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["search"]["mode"] == "include")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect(),
        )
    };
    assert_eq!(
        inc("Patient?_id=ana&_revinclude=CarePlan:subject"),
        ["cp-ana", "cp-ana-old"]
    );
    assert_eq!(
        inc("Patient?_id=ana&_revinclude=CarePlan:subject&_include:iterate=CarePlan:goal"),
        ["cp-ana", "cp-ana-old", "g-ana-rem", "g-ana-sleep"]
    );
    assert_eq!(inc("CarePlan?_id=cp-ben&_include=CarePlan:subject&_include:iterate=Patient:general-practitioner"),
        ["ben", "dr-lee"]);
    assert_eq!(inc("Goal?_id=g-ben&_include=*"), ["ben"]);
    // Matched and included at once: listed once, as a match.
    let panel = app
        .get("Observation?patient=ana&code=44261-6&_include=Observation:has-member")
        .json();
    assert!(panel["entry"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["search"]["mode"] == "match"));
}

fn sort_paging_and_totals(app: &TestApp) {
    load_clinic(app);
    assert_eq!(
        ids(app, "Observation?code=44261-6&_sort=-date&_count=1"),
        ["o-ana-3", "o-ana-2", "o-ben-1", "o-ana-1"]
    );
    assert_eq!(
        ids(app, "Observation?code=44261-6&_sort=patient,date&_count=3"),
        ["o-ana-1", "o-ana-2", "o-ana-3", "o-ben-1"]
    );
    assert_eq!(
        ids(app, "Patient?_sort=-birthdate,family&_count=2"),
        ["ana", "ben", "cy"]
    );
    assert_eq!(ids(app, "Patient?_sort=_id"), ["ana", "ben", "cy"]);
    let first = app
        .get("Observation?code=44261-6&_sort=date&_count=2&_total=accurate")
        .json();
    assert_eq!(first["total"], 4);
    assert_eq!(first["entry"].as_array().unwrap().len(), 2);
    let next = common::link(&first, "next").unwrap();
    let second = app.get(&next).json();
    let prev = common::link(&second, "previous").unwrap();
    assert_eq!(app.get(&prev).json()["entry"], first["entry"]);
    let zero = app.get("Observation?code=44261-6&_count=0").json();
    assert_eq!(zero["total"], 4);
    assert!(zero.get("entry").is_none());
    // A tampered paging link is a 400, never a database error.
    let sorted_next = common::link(&first, "next").unwrap();
    let (head, _) = sorted_next.split_once("_cursor=").unwrap();
    for bad in [
        "%7B%22d%22%3A%22n%22%2C%22r%22%3A1%2C%22k%22%3A%5B%22x%22%5D%7D",
        "garbage",
        "%7B%22d%22%3A%22n%22%2C%22r%22%3A1%2C%22k%22%3A%5B%5D%7D",
    ] {
        app.get(&format!("{head}_cursor={bad}")).outcome(400);
    }
    let count = app.get("Observation?code=44261-6&_summary=count").json();
    assert_eq!(count["total"], 4);
    assert!(count.get("entry").is_none());
    // Inserts between pages neither repeat nor skip what was there.
    let page1 = app.get("Patient?_count=2").json();
    let next = common::link(&page1, "next").unwrap();
    std::thread::scope(|s| {
        for i in 0..4 {
            s.spawn(move || {
                app.create(
                    &json!({"resourceType": "Patient", "name": [{"family": format!("new{i}")}]}),
                )
            });
        }
    });
    let mut seen: Vec<String> = page1["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    seen.extend(ids(app, &next));
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "{seen:?}");
    for p in ["ana", "ben", "cy"] {
        assert!(seen.iter().any(|s| s == p), "{p} missed: {seen:?}");
    }
}

fn summary_elements_and_parameter_handling(app: &TestApp) {
    load_clinic(app);
    let e = &app.get("Patient?_id=ana&_elements=gender").json()["entry"][0]["resource"];
    assert_eq!(e["gender"], "female");
    assert!(e.get("name").is_none() && e.get("birthDate").is_none());
    let s = &app.get("Patient?_id=ana&_summary=true").json()["entry"][0]["resource"];
    assert!(s.get("name").is_some() && s.get("generalPractitioner").is_none());
    let b = app.get("Patient?_id=ana&no-such-param=1").json();
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    assert!(!b["link"][0]["url"]
        .as_str()
        .unwrap()
        .contains("no-such-param"));
    let strict = app
        .send(
            "GET",
            "Patient?no-such-param=1",
            &[("Prefer", "handling=strict")],
            None,
        )
        .outcome(400);
    assert!(strict.to_string().contains("no-such-param"));
    for bad in [
        "Patient?birthdate=2024-13-45",
        "Observation?date=yesterday",
        "Observation?value-quantity=gtabc",
        "Patient?gender:missing=maybe",
        "Patient?_sort=nonsense",
        "Patient?_count=x",
    ] {
        app.get(bad).outcome(400);
    }
    let posted = app.send(
        "POST",
        "Patient/_search",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"family=mayer"),
    );
    assert_eq!(posted.json()["entry"][0]["resource"]["id"], "ben");
}

fn common_meta_parameters(app: &TestApp) {
    load_clinic(app);
    put(
        app,
        json!({"resourceType": "Goal", "id": "g-tagged", "lifecycleStatus": "active",
        "description": {"text": "tagged"}, "subject": {"reference": "Patient/ana"},
        "meta": {"source": "urn:ehr:1", "profile": ["http://example.org/StructureDefinition/goal-x"],
            "tag": [{"system": "urn:tags", "code": "mbc"}],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}),
    );
    assert_finds(app, "Goal?_tag=urn:tags|mbc", &["g-tagged"]);
    assert_finds(app, "Goal?_tag=other", &[]);
    assert_finds(
        app,
        "Goal?_profile=http://example.org/StructureDefinition/goal-x",
        &["g-tagged"],
    );
    assert_finds(app, "Goal?_security=R", &["g-tagged"]);
    assert_finds(app, "Goal?_source=urn:ehr:1", &["g-tagged"]);
    assert_finds(app, "?_type=Goal,Patient&_tag=urn:tags|mbc", &["g-tagged"]);
}

fn system_and_compartment_searches(app: &TestApp) {
    load_clinic(app);
    let all = app.all_entries("?_type=Goal,CarePlan&patient=ben");
    let mut got: Vec<String> = all
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, ["CarePlan/cp-ben", "Goal/g-ben"]);
    assert_finds(app, "Patient/ben/Observation", &["o-ben-1", "o-ben-gad"]);
    assert_finds(app, "Patient/ben/Observation?code=70274-6", &["o-ben-gad"]);
    assert_finds(app, "Patient/ana/CarePlan?status=active", &["cp-ana"]);
    app.get("Patient/ben/Practitioner").outcome(404);
    // Deleted resources leave the index.
    // cp-ben refers to the goal: deleted with it.
    assert_eq!(
        app.send("DELETE", "Goal/g-ben?_cascade=delete", &[], None)
            .status,
        204
    );
    assert_finds(app, "Goal?patient=ben", &[]);
    // An update moves the index with it.
    let mut g = app.get("Goal/g-ana-sleep").json();
    g["subject"] = json!({"reference": "Patient/ben"});
    put(app, g);
    assert_finds(app, "Goal?patient=ben", &["g-ana-sleep"]);
}

on_both_backends!(
    string_parameters_fold_case_and_accents,
    token_parameters_and_modifiers,
    reference_parameters_chains_and_has,
    date_prefixes_precision_and_time_zones,
    number_and_quantity_prefixes_with_units,
    missing_works_on_every_parameter_type,
    includes_never_duplicate_and_iterate,
    sort_paging_and_totals,
    summary_elements_and_parameter_handling,
    system_and_compartment_searches,
    common_meta_parameters,
);

#[test]
fn both_backends_give_the_same_answers() {
    let Some(pg) = common::spawn_app(Backend::Postgres) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not compared");
        return;
    };
    let lite = common::spawn_app(Backend::Sqlite).unwrap();
    load_clinic(&lite);
    load_clinic(&pg);
    let queries = [
        "Patient?family=m&_sort=family",
        "Patient?_sort=-birthdate",
        "Patient?gender:not=male&_sort=_id",
        "Observation?code=44261-6&_sort=-date&_count=2",
        "Observation?value-quantity=gt5&_sort=value-quantity",
        "Observation?subject:Patient.name=mül&_sort=date",
        "Observation?date=2024-03&_sort=_id",
        "CarePlan?patient=ana&status=active&_include=CarePlan:goal",
        "Patient?_has:Observation:subject:code=44261-6&_sort=_id",
        "Observation?code:text=anxiety",
        "Patient?identifier=urn:mrn|&_sort=-_id",
        "Observation?_sort=patient,-value-quantity",
    ];
    for q in queries {
        let a = lite.all_entries(q);
        let b = pg.all_entries(q);
        let key = |es: &[Value]| -> Vec<String> {
            es.iter()
                .map(|e| format!("{}:{}", e["search"]["mode"], e["resource"]["id"]))
                .collect()
        };
        assert_eq!(key(&a), key(&b), "{q}");
    }
}
