//! Measurement-based care over real HTTP, on SQLite and on PostgreSQL: the built-in instruments,
//! scoring and extraction in the response's transaction, the safety signal, goal progress,
//! `$extract` and `$progress` (its chart rendered to PNG).

mod common;

use common::TestApp;
use serde_json::{json, Value};

const PHQ9: &str = "http://cairn.example/fhir/Questionnaire/phq-9";
const GAD7: &str = "http://cairn.example/fhir/Questionnaire/gad-7";
const PHQ9_TOTAL: &str = "44261-6";
const GAD7_TOTAL: &str = "70274-6";
const ORDINAL: &str = "http://hl7.org/fhir/StructureDefinition/ordinalValue";
const SEVERITY: &str = "http://cairn.example/fhir/CodeSystem/score-severity";

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn instrument(app: &TestApp, url: &str) -> Value {
    let found = app.all_entries(&format!("Questionnaire?url={}&version=1.0.0", enc(url)));
    assert_eq!(found.len(), 1, "{url}: {found:?}");
    found[0]["resource"].clone()
}

/// A patient with a practitioner, a care team and an active plan.
struct Person {
    patient: String,
    author: String,
    team: String,
    plan: Value,
}

fn person(app: &TestApp) -> Person {
    let p = app.create(&json!({"resourceType": "Patient", "name": [{"family": "Measured"}]}));
    let pid = p["id"].as_str().unwrap().to_string();
    let doc = app.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}));
    let author = format!("Practitioner/{}", doc["id"].as_str().unwrap());
    let team = app.create(&json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": format!("Patient/{pid}")},
        "participant": [{"member": {"reference": author}}]}));
    let team = format!("CareTeam/{}", team["id"].as_str().unwrap());
    let plan = app.create(
        &json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": format!("Patient/{pid}")}, "careTeam": [{"reference": team}]}),
    );
    Person {
        patient: pid,
        author,
        team,
        plan,
    }
}

/// A response to `q` choosing, for each scored item in order, the option scoring `scores[i]`.
fn response(q: &Value, who: &Person, scores: &[u8], authored: &str, status: &str) -> Value {
    let scored: Vec<&Value> = q["item"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|it| it["answerOption"].is_array())
        .collect();
    assert_eq!(scored.len(), scores.len());
    let items: Vec<Value> = scored
        .iter()
        .zip(scores)
        .map(|(it, s)| {
            let opt = it["answerOption"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| {
                    o["extension"][0]["url"] == ORDINAL
                        && o["extension"][0]["valueDecimal"] == json!(*s)
                })
                .unwrap();
            json!({"linkId": it["linkId"], "answer": [{"valueCoding": opt["valueCoding"]}]})
        })
        .collect();
    json!({"resourceType": "QuestionnaireResponse", "status": status,
        "questionnaire": format!("{}|{}", q["url"].as_str().unwrap(), q["version"].as_str().unwrap()),
        "subject": {"reference": format!("Patient/{}", who.patient)}, "authored": authored,
        "author": {"reference": who.author}, "item": items})
}

fn derived(app: &TestApp, qr_id: &str) -> Vec<Value> {
    app.all_entries(&format!(
        "Observation?derived-from=QuestionnaireResponse/{qr_id}&_count=100"
    ))
    .into_iter()
    .map(|e| e["resource"].clone())
    .collect()
}

fn has_code(o: &Value, code: &str) -> bool {
    o["code"]["coding"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["code"] == code))
}

fn total(app: &TestApp, qr_id: &str, code: &str) -> Value {
    let t: Vec<Value> = derived(app, qr_id)
        .into_iter()
        .filter(|o| has_code(o, code))
        .collect();
    assert_eq!(t.len(), 1, "{t:?}");
    t[0].clone()
}

/// `n` item scores (0..3) adding up to `sum`.
fn pattern(sum: u8, n: usize) -> Vec<u8> {
    let mut left = sum;
    (0..n)
        .map(|_| {
            let v = left.min(3);
            left -= v;
            v
        })
        .collect()
}

fn instruments_are_loaded_once(app: &TestApp) {
    for url in [PHQ9, GAD7] {
        let q = instrument(app, url);
        assert_eq!(q["status"], "active");
        for it in q["item"].as_array().unwrap() {
            for o in it["answerOption"].as_array().into_iter().flatten() {
                assert_eq!(o["extension"][0]["url"], ORDINAL);
            }
        }
    }
    // Loading again (the CLI, on the same database) finds them and stores nothing.
    let dir = std::env::temp_dir().join(format!("cairn-instruments-{}", std::process::id()));
    let out = common::process::cairn()
        .args(["instruments", "load"])
        .env("CAIRN_DATABASE_URL", &app.db_url)
        .env("CAIRN_DATA_DIR", &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("already present").count(), 2, "{text}");
    for url in [PHQ9, GAD7] {
        assert_eq!(
            app.all_entries(&format!("Questionnaire?url={}", enc(url)))
                .len(),
            1
        );
        let q = instrument(app, url);
        assert_eq!(q["meta"]["versionId"], "1");
    }
}

/// Every band boundary of both instruments, against the published bands written out here.
fn scores_and_band_boundaries(app: &TestApp) {
    let who = person(app);
    type Bands = &'static [(u8, &'static str)];
    let cases: [(&str, &str, usize, Bands); 2] = [
        (
            PHQ9,
            PHQ9_TOTAL,
            9,
            &[
                (0, "minimal"),
                (4, "minimal"),
                (5, "mild"),
                (9, "mild"),
                (10, "moderate"),
                (14, "moderate"),
                (15, "moderately-severe"),
                (19, "moderately-severe"),
                (20, "severe"),
                (27, "severe"),
            ],
        ),
        (
            GAD7,
            GAD7_TOTAL,
            7,
            &[
                (0, "minimal"),
                (4, "minimal"),
                (5, "mild"),
                (9, "mild"),
                (10, "moderate"),
                (14, "moderate"),
                (15, "severe"),
                (21, "severe"),
            ],
        ),
    ];
    for (url, code, n, bands) in cases {
        let q = instrument(app, url);
        for (sum, band) in bands {
            let mut scores = pattern(*sum, n);
            scores.reverse(); // keeps PHQ-9 item 9 at 0 until the total needs it
            let qr = app.create(&response(
                &q,
                &who,
                &scores,
                "2024-05-01T09:00:00Z",
                "completed",
            ));
            let t = total(app, qr["id"].as_str().unwrap(), code);
            assert_eq!(t["valueInteger"], json!(sum), "{url} {scores:?}");
            assert_eq!(t["interpretation"][0]["coding"][0]["system"], SEVERITY);
            assert_eq!(
                t["interpretation"][0]["coding"][0]["code"], *band,
                "{url} total {sum}"
            );
            assert_eq!(t["status"], "final");
            assert_eq!(t["effectiveDateTime"], "2024-05-01T09:00:00Z");
            assert_eq!(t["performer"][0]["reference"], who.author);
            assert_eq!(
                t["subject"]["reference"],
                format!("Patient/{}", who.patient)
            );
            assert_eq!(t["category"][0]["coding"][0]["code"], "survey");
            // One Observation per item plus the total.
            assert_eq!(derived(app, qr["id"].as_str().unwrap()).len(), n + 1);
        }
    }
}

/// A refused response leaves nothing: not itself, not a single derived Observation.
fn extraction_is_atomic(app: &TestApp) {
    let who = person(app);
    let q = instrument(app, PHQ9);
    let mut dangling = response(&q, &who, &[3; 9], "2024-05-01T09:00:00Z", "completed");
    dangling["author"] = json!({"reference": "Practitioner/nobody-here"});
    let r = app.json("POST", "QuestionnaireResponse", &dangling, &[]);
    assert_eq!(r.status, 422, "{}", r.text());
    let mut foreign = response(&q, &who, &[1; 9], "2024-05-01T09:00:00Z", "completed");
    foreign["item"][2]["answer"][0]["valueCoding"]["code"] = json!("LA-not-an-option");
    let r = app.json("POST", "QuestionnaireResponse", &foreign, &[]);
    assert!(r.outcome(422)["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("not one of its options"));
    let mut short = response(&q, &who, &[1; 9], "2024-05-01T09:00:00Z", "completed");
    short["item"].as_array_mut().unwrap().remove(0);
    app.json("POST", "QuestionnaireResponse", &short, &[])
        .outcome(422);
    let subject = format!("subject=Patient/{}", who.patient);
    for ty in ["QuestionnaireResponse", "Observation", "Flag"] {
        assert!(
            app.all_entries(&format!("{ty}?{subject}")).is_empty(),
            "{ty} left behind"
        );
    }
    assert!(app
        .all_entries(&format!("Task?owner={}", who.team))
        .is_empty());
    // An in-progress response may leave items out; it derives nothing.
    let qr = app.create(&json!(dict_with(&short, "status", json!("in-progress"))));
    assert!(derived(app, qr["id"].as_str().unwrap()).is_empty());
}

fn dict_with(v: &Value, k: &str, x: Value) -> Value {
    let mut v = v.clone();
    v[k] = x;
    v
}

/// Storing a response again revises its Observations (same ids, new versions only when they
/// change); entered-in-error and delete retract them.
fn revision_is_idempotent_and_retraction_works(app: &TestApp) {
    let who = person(app);
    let q = instrument(app, GAD7);
    let first = response(
        &q,
        &who,
        &[1, 1, 1, 1, 1, 1, 1],
        "2024-05-01T09:00:00Z",
        "completed",
    );
    let qr = app.create(&first);
    let id = qr["id"].as_str().unwrap().to_string();
    let before = derived(app, &id);
    assert_eq!(before.len(), 8);
    let t1 = total(app, &id, GAD7_TOTAL);
    assert_eq!(t1["valueInteger"], 7);
    // The same content again: nothing new, no new versions.
    let put = |body: &Value| {
        let r = app.json(
            "PUT",
            &format!("QuestionnaireResponse/{id}"),
            &dict_with(body, "id", json!(id)),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    put(&first);
    let again = derived(app, &id);
    assert_eq!(again.len(), 8);
    assert!(
        again.iter().all(|o| o["meta"]["versionId"] == "1"),
        "{again:?}"
    );
    // Amended: the same Observations, revised.
    put(&response(
        &q,
        &who,
        &[3, 3, 2, 2, 2, 1, 1],
        "2024-05-01T09:00:00Z",
        "amended",
    ));
    let t2 = total(app, &id, GAD7_TOTAL);
    assert_eq!(
        (t2["id"].clone(), t2["valueInteger"].clone()),
        (t1["id"].clone(), json!(14))
    );
    assert_eq!(t2["meta"]["versionId"], "2");
    assert_eq!(t2["status"], "amended");
    assert_eq!(t2["interpretation"][0]["coding"][0]["code"], "moderate");
    assert_eq!(derived(app, &id).len(), 8);
    // Entered in error: every derived Observation is retracted.
    put(&response(
        &q,
        &who,
        &[3, 3, 2, 2, 2, 1, 1],
        "2024-05-01T09:00:00Z",
        "entered-in-error",
    ));
    let gone = derived(app, &id);
    assert_eq!(gone.len(), 8);
    assert!(
        gone.iter().all(|o| o["status"] == "entered-in-error"),
        "{gone:?}"
    );
    // What was derived refers to the response, so (referential integrity on) deleting it is
    // refused; entered-in-error is how a response is withdrawn.
    let r = app.send("DELETE", &format!("QuestionnaireResponse/{id}"), &[], None);
    assert!(r.outcome(409)["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("Observation/"));
}

/// PHQ-9 item 9 above 0: one safety Flag and one urgent Task for the plan's care team, however
/// often the response is stored; none for item 9 at 0. A patient's own app may submit it.
fn safety_signal_once(app: &TestApp) {
    let who = person(app);
    let q = instrument(app, PHQ9);
    let body = response(
        &q,
        &who,
        &[1, 1, 1, 1, 0, 0, 0, 0, 2],
        "2024-05-01T09:00:00Z",
        "completed",
    );
    // Submitted by the patient's app: it may not write Observations, Flags or Tasks itself.
    let t = app.token(
        "patient/QuestionnaireResponse.cu patient/*.rs",
        Some(&who.patient),
    );
    let auth = format!("Bearer {t}");
    let r = app.json(
        "POST",
        "QuestionnaireResponse",
        &body,
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let check = || {
        let flags: Vec<Value> = app
            .all_entries(&format!("Flag?subject=Patient/{}", who.patient))
            .into_iter()
            .map(|e| e["resource"].clone())
            .collect();
        let tasks: Vec<Value> = app
            .all_entries(&format!("Task?owner={}", who.team))
            .into_iter()
            .map(|e| e["resource"].clone())
            .collect();
        assert_eq!((flags.len(), tasks.len()), (1, 1), "{flags:?} {tasks:?}");
        assert_eq!(flags[0]["category"][0]["coding"][0]["code"], "safety");
        assert!(flags[0]
            .to_string()
            .contains(&format!("QuestionnaireResponse/{id}")));
        assert_eq!(tasks[0]["priority"], "urgent");
        assert_eq!(tasks[0]["owner"]["reference"], who.team);
        assert_eq!(
            tasks[0]["focus"]["reference"],
            format!("QuestionnaireResponse/{id}")
        );
    };
    check();
    let put = app.json(
        "PUT",
        &format!("QuestionnaireResponse/{id}"),
        &dict_with(&body, "id", json!(id)),
        &[],
    );
    assert_eq!(put.status, 200);
    check();
    let calm = person(app);
    app.create(&response(
        &q,
        &calm,
        &[1, 1, 1, 0, 0, 0, 0, 0, 0],
        "2024-05-01T09:00:00Z",
        "completed",
    ));
    assert!(app
        .all_entries(&format!("Flag?subject=Patient/{}", calm.patient))
        .is_empty());
}

fn goal(app: &TestApp, who: &Person) -> String {
    let g = app.create(&json!({"resourceType": "Goal", "lifecycleStatus": "active",
        "description": {"text": "Remission: PHQ-9 below 5"}, "startDate": "2024-01-01",
        "subject": {"reference": format!("Patient/{}", who.patient)},
        "target": [{"measure": {"coding": [{"system": "http://loinc.org", "code": PHQ9_TOTAL}]},
            "detailQuantity": {"value": 5, "comparator": "<", "system": "http://unitsofmeasure.org",
                "code": "{score}"}}]}));
    let gid = g["id"].as_str().unwrap().to_string();
    let mut plan = who.plan.clone();
    plan["goal"] = json!([{"reference": format!("Goal/{gid}")}]);
    let pid = plan["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.json("PUT", &format!("CarePlan/{pid}"), &plan, &[])
            .status,
        200
    );
    gid
}

/// achievementStatus over 19 -> 22 -> 13 -> 24 -> 4, each score kept in outcomeReference.
fn goal_status_follows_the_scores(app: &TestApp) {
    let who = person(app);
    let gid = goal(app, &who);
    let q = instrument(app, PHQ9);
    let want = [
        "in-progress",
        "no-change",
        "improving",
        "worsening",
        "achieved",
    ];
    for (i, (score, status)) in [19u8, 22, 13, 24, 4].iter().zip(want).enumerate() {
        let mut scores = pattern(*score, 8);
        scores.push(0);
        let qr = app.create(&response(
            &q,
            &who,
            &scores,
            &format!("2024-0{}-10T09:00:00Z", i + 1),
            "completed",
        ));
        let t = total(app, qr["id"].as_str().unwrap(), PHQ9_TOTAL);
        let g = app.get(&format!("Goal/{gid}")).json();
        assert_eq!(
            g["achievementStatus"]["coding"][0]["code"], status,
            "after {score}"
        );
        let refs: Vec<&str> = g["outcomeReference"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["reference"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), i + 1);
        assert_eq!(
            *refs.last().unwrap(),
            format!("Observation/{}", t["id"].as_str().unwrap())
        );
    }
}

fn progress_parameters_and_chart(app: &TestApp) {
    let who = person(app);
    let gid = goal(app, &who);
    let q = instrument(app, PHQ9);
    for (i, s) in [19u8, 13].iter().enumerate() {
        let mut scores = pattern(*s, 8);
        scores.push(0);
        app.create(&response(
            &q,
            &who,
            &scores,
            &format!("2024-0{}-10T09:00:00Z", i + 1),
            "completed",
        ));
    }
    let plan = who.plan["id"].as_str().unwrap();
    let p = app.get(&format!("CarePlan/{plan}/$progress"));
    assert_eq!(p.status, 200, "{}", p.text());
    let p = p.json();
    assert_eq!(p["resourceType"], "Parameters");
    let parts = p["parameter"][0]["part"].as_array().unwrap();
    let part = |name: &str| parts.iter().find(|x| x["name"] == name).unwrap().clone();
    assert_eq!(
        part("goal")["valueReference"]["reference"],
        format!("Goal/{gid}")
    );
    assert_eq!(part("measure")["valueCoding"]["code"], PHQ9_TOTAL);
    assert_eq!(part("baseline")["valueInteger"], 19);
    assert_eq!(part("latest")["valueInteger"], 13);
    assert_eq!(part("trend")["valueCode"], "down");
    assert_eq!(
        part("status")["valueCodeableConcept"]["coding"][0]["code"],
        "improving"
    );
    assert_eq!(parts.iter().filter(|x| x["name"] == "score").count(), 2);

    let svg = app.send(
        "GET",
        &format!("CarePlan/{plan}/$progress"),
        &[("Accept", "image/svg+xml")],
        None,
    );
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("Content-Type"), Some("image/svg+xml"));
    // Rendered to PNG, the chart shows the score line, the goal target and the severity bands.
    let tree = resvg::usvg::Tree::from_data(&svg.body, &resvg::usvg::Options::default()).unwrap();
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    let png = pixmap.encode_png().unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let decoded = resvg::tiny_skia::Pixmap::decode_png(&png).unwrap();
    let has = |rgb: (u8, u8, u8)| {
        decoded
            .pixels()
            .iter()
            .any(|p| (p.red(), p.green(), p.blue(), p.alpha()) == (rgb.0, rgb.1, rgb.2, 255))
    };
    assert!(has((0x15, 0x65, 0xc0)), "no score line in the chart");
    assert!(has((0x2e, 0x7d, 0x32)), "no goal target in the chart");
    assert!(has((0xe8, 0xf5, 0xe9)), "no 'minimal' band in the chart");
    assert!(has((0xff, 0xeb, 0xee)), "no 'severe' band in the chart");
    // Another patient's token may not see this plan's progress.
    let other = person(app);
    let t = app.token("patient/*.rs", Some(&other.patient));
    let r = app.send(
        "GET",
        &format!("CarePlan/{plan}/$progress"),
        &[("Authorization", &format!("Bearer {t}"))],
        None,
    );
    assert!(matches!(r.status, 403 | 404), "{}", r.status);
}

fn extract_operation(app: &TestApp) {
    let who = person(app);
    let q = instrument(app, GAD7);
    let body = response(
        &q,
        &who,
        &[2, 3, 1, 0, 2, 1, 3],
        "2024-05-01T09:00:00Z",
        "completed",
    );
    let params = json!({"resourceType": "Parameters",
        "parameter": [{"name": "questionnaire-response", "resource": body}]});
    let r = app.json("POST", "QuestionnaireResponse/$extract", &params, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    assert_eq!(
        (b["resourceType"].as_str(), b["type"].as_str()),
        (Some("Bundle"), Some("transaction"))
    );
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    let t = entries
        .iter()
        .find(|e| has_code(&e["resource"], GAD7_TOTAL))
        .unwrap();
    assert_eq!(t["resource"]["valueInteger"], 12);
    assert_eq!(t["request"]["method"], "POST");
    // Nothing was stored.
    assert!(app
        .all_entries(&format!("Observation?subject=Patient/{}", who.patient))
        .is_empty());
    // The Bundle, submitted, stores them.
    let tx = app.json("POST", "", &b, &[]);
    assert_eq!(tx.status, 200, "{}", tx.text());
    assert_eq!(
        app.all_entries(&format!("Observation?subject=Patient/{}", who.patient))
            .len(),
        8
    );
    // A stored response's $extract names the Observations the server derived.
    let qr = app.create(&body);
    let id = qr["id"].as_str().unwrap();
    let inst = app
        .get(&format!("QuestionnaireResponse/{id}/$extract"))
        .json();
    let tot = inst["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| has_code(&e["resource"], GAD7_TOTAL))
        .unwrap()
        .clone();
    assert_eq!(tot["request"]["method"], "PUT");
    assert_eq!(tot["resource"]["id"], total(app, id, GAD7_TOTAL)["id"]);
    // An unknown questionnaire, or a response in progress, is a 422.
    let mut unknown = body.clone();
    unknown["questionnaire"] = json!("http://example.org/Questionnaire/none|1");
    app.json("POST", "QuestionnaireResponse/$extract", &unknown, &[])
        .outcome(422);
    app.json(
        "POST",
        "QuestionnaireResponse/$extract",
        &dict_with(&body, "status", json!("in-progress")),
        &[],
    )
    .outcome(422);
    app.json(
        "POST",
        "QuestionnaireResponse/$extract",
        &json!({"resourceType": "Parameters"}),
        &[],
    )
    .outcome(400);
}

/// The mechanism is generic: a client's own scored Questionnaire works the same way, and a
/// malformed scoring extension is refused.
fn client_questionnaires_are_scored_too(app: &TestApp) {
    let mut q = instrument(app, GAD7);
    for k in ["id", "meta"] {
        q.as_object_mut().unwrap().remove(k);
    }
    q["url"] = json!("http://example.org/Questionnaire/gad-2");
    q["item"] = json!([q["item"][0], q["item"][1]]);
    let ext = &mut q["extension"][0]["extension"];
    ext.as_array_mut()
        .unwrap()
        .retain(|e| e["url"] != "band" && e["url"] != "totalLinkId");
    ext.as_array_mut()
        .unwrap()
        .push(json!({"url": "band", "extension": [
        {"url": "low", "valueDecimal": 0}, {"url": "high", "valueDecimal": 2},
        {"url": "interpretation", "valueCoding": {"system": "urn:x", "code": "low"}}]}));
    ext.as_array_mut()
        .unwrap()
        .push(json!({"url": "band", "extension": [
        {"url": "low", "valueDecimal": 3}, {"url": "high", "valueDecimal": 6},
        {"url": "interpretation", "valueCoding": {"system": "urn:x", "code": "high"}}]}));
    let q = app.create(&q);
    let who = person(app);
    let qr = app.create(&response(
        &q,
        &who,
        &[2, 3],
        "2024-05-01T09:00:00Z",
        "completed",
    ));
    let t = total(app, qr["id"].as_str().unwrap(), GAD7_TOTAL);
    assert_eq!(t["valueInteger"], 5);
    assert_eq!(t["interpretation"][0]["coding"][0]["code"], "high");
    let mut bad = q.clone();
    bad.as_object_mut().unwrap().remove("id");
    bad["url"] = json!("http://example.org/Questionnaire/bad");
    bad["extension"][0]["extension"][0]["valueCode"] = json!("average");
    let r = app.json("POST", "Questionnaire", &bad, &[]);
    assert!(r.outcome(422)["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("method"));
    assert!(app
        .all_entries(&format!(
            "Questionnaire?url={}",
            enc("http://example.org/Questionnaire/bad")
        ))
        .is_empty());
}

on_both_backends!(
    instruments_are_loaded_once,
    scores_and_band_boundaries,
    extraction_is_atomic,
    revision_is_idempotent_and_retraction_works,
    safety_signal_once,
    goal_status_follows_the_scores,
    progress_parameters_and_chart,
    extract_operation,
    client_questionnaires_are_scored_too,
);

/// With referential integrity off, a response can be deleted, and that retracts what it derived.
fn delete_retracts_without_integrity(app: &TestApp) {
    let who = person(app);
    let q = instrument(app, GAD7);
    let qr = app.create(&response(
        &q,
        &who,
        &[1, 1, 1, 1, 1, 1, 1],
        "2024-05-01T09:00:00Z",
        "completed",
    ));
    let id = qr["id"].as_str().unwrap();
    assert_eq!(
        app.send("DELETE", &format!("QuestionnaireResponse/{id}"), &[], None)
            .status,
        204
    );
    let gone = derived(app, id);
    assert_eq!(gone.len(), 8);
    assert!(
        gone.iter().all(|o| o["status"] == "entered-in-error"),
        "{gone:?}"
    );
}

on_both_backends!(mod integrity_off, |s| s.writes.referential_integrity = false;
    delete_retracts_without_integrity);
