//! SMART on FHIR authorization over real HTTP: secure by default, token forgery, clock skew, the
//! scope matrix, the patient compartment (every leakage path), granular scopes, discovery and the
//! built-in Backend Services token endpoint. Each test runs on SQLite and PostgreSQL.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cairn::auth::keys::SigningKey;
use cairn::auth::server::Mint;
use common::{Resp, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const OBS_CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

impl TestApp {
    fn as_token(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let auth = format!("Bearer {token}");
        let mut h = vec![
            ("Accept", "application/fhir+json"),
            ("Authorization", auth.as_str()),
        ];
        match body {
            Some(b) => {
                h.push(("Content-Type", "application/fhir+json"));
                self.send(method, path, &h, Some(b.to_string().as_bytes()))
            }
            None => self.send(method, path, &h, None),
        }
    }

    fn put(&self, r: &Value) -> String {
        let path = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        let resp = self.json("PUT", &path, r, &[]);
        assert!(resp.status == 200 || resp.status == 201, "{}", resp.text());
        r["id"].as_str().unwrap().to_string()
    }

    /// The app's signing key, for hand-made tokens.
    fn key(&self) -> SigningKey {
        SigningKey::load_or_create(&self.settings.data_dir).unwrap()
    }

    fn issuer(&self) -> String {
        format!("{}/auth", self.root)
    }

    /// A token signed by the app's key with exactly these claims.
    fn signed(&self, claims: &Value) -> String {
        let key = self.key();
        let mut h = Header::new(Algorithm::ES384);
        h.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
    }

    fn claims(&self, scope: &str) -> Value {
        json!({"iss": self.issuer(), "aud": self.base, "sub": "t", "client_id": "t",
            "iat": now(), "exp": now() + 300, "scope": scope})
    }
}

/// Asserts a 401 with a Bearer challenge and an OperationOutcome.
fn unauthorized(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let www = r.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        www.starts_with("Bearer"),
        "{what}: WWW-Authenticate {www:?}"
    );
    r.outcome(401);
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| {
                    let r = e.get("resource")?;
                    Some(format!(
                        "{}/{}",
                        r["resourceType"].as_str()?,
                        r["id"].as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------ secure by default, discovery

fn every_fhir_endpoint_needs_a_token(app: &TestApp) {
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    for (method, path, body) in [
        ("GET", "Patient", None),
        ("GET", "Patient/does-not-exist", None),
        ("GET", "Patient/x/_history", None),
        ("GET", "Patient/x/_history/1", None),
        ("GET", "Patient/_history", None),
        ("GET", "_history", None),
        ("GET", "?_type=Patient", None),
        ("GET", "Patient/x/Observation", None),
        ("GET", "NotAType/x", None),
        ("POST", "Observation", Some(&obs)),
        ("PUT", "Observation/x", Some(&obs)),
        ("DELETE", "Patient/x", None),
        ("POST", "Patient/_search", None),
    ] {
        let r = app.send(
            method,
            path,
            &[
                ("Authorization", ""),
                ("Content-Type", "application/fhir+json"),
            ],
            body.map(|b| b.to_string().into_bytes()).as_deref(),
        );
        unauthorized(&r, &format!("{method} {path} without a token"));
    }
    for bad in [
        "Bearer",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Basic dXNlcjpwdw==",
    ] {
        let r = app.send("GET", "Patient", &[("Authorization", bad)], None);
        unauthorized(&r, bad);
    }
    // Nothing was written by the refused requests.
    let r = app.get("Observation");
    assert_eq!(r.json()["total"], 0, "{}", r.text());
}

fn discovery_is_public_and_consistent(app: &TestApp) {
    for path in [
        format!("{}/metadata", app.base),
        format!("{}/.well-known/smart-configuration", app.base),
        format!("{}/.well-known/smart-configuration", app.root),
        format!("{}/auth/jwks", app.root),
        format!("{}/healthz", app.root),
        format!("{}/readyz", app.root),
    ] {
        let r = app.send("GET", &path, &[("Authorization", "")], None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let smart = app
        .send(
            "GET",
            ".well-known/smart-configuration",
            &[("Authorization", "")],
            None,
        )
        .json();
    assert_eq!(smart["token_endpoint"], format!("{}/auth/token", app.root));
    assert_eq!(smart["jwks_uri"], format!("{}/auth/jwks", app.root));
    assert_eq!(smart["issuer"], app.issuer());
    assert!(smart["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("client_credentials")));
    assert!(smart["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("permission-v2")));
    assert!(!smart["scopes_supported"].as_array().unwrap().is_empty());
    let jwks = app
        .send("GET", smart["jwks_uri"].as_str().unwrap(), &[], None)
        .json();
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"], app.key().kid);
    assert!(key.get("d").is_none(), "private key published: {key}");
    let cs = app
        .send("GET", "metadata", &[("Authorization", "")], None)
        .json();
    let sec = &cs["rest"][0]["security"];
    let ext = &sec["extension"][0];
    assert_eq!(
        ext["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(ext["extension"][0]["url"], "token");
    assert_eq!(ext["extension"][0]["valueUri"], smart["token_endpoint"]);
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
}

// ------------------------------------------------------------------ token validation

fn forged_and_misdirected_tokens_are_refused(app: &TestApp) {
    let good = app.token("system/*.cruds", None);
    assert_eq!(app.as_token(&good, "GET", "Patient", None).status, 200);
    let mut parts = good.split('.');
    let (h, p, sig) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
    let kid = app.key().kid;
    let mut forged: Vec<(String, String)> = vec![];
    for alg in ["none", "None", "NONE"] {
        forged.push((
            format!("alg {alg}"),
            format!(
                "{}.{p}.",
                b64(&json!({"alg": alg, "typ": "JWT", "kid": kid}))
            ),
        ));
    }
    // HS256 with the server's public key as the HMAC secret (key confusion).
    let jwk = app.key().jwk;
    for secret in [jwk.to_string(), serde_json::to_string(&jwk["x"]).unwrap()] {
        let mut hh = Header::new(Algorithm::HS256);
        hh.kid = Some(kid.clone());
        let t = jsonwebtoken::encode(&hh, &payload, &EncodingKey::from_secret(secret.as_bytes()))
            .unwrap();
        forged.push(("HS256 with public key bytes".into(), t));
    }
    let mut raised = payload.clone();
    raised["scope"] = json!("system/*.cruds system/AuditEvent.cruds");
    forged.push((
        "raised scope, old signature".into(),
        format!("{h}.{}.{sig}", b64(&raised)),
    ));
    let mut flipped = p.to_string().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    forged.push((
        "one payload byte flipped".into(),
        format!("{h}.{}.{sig}", String::from_utf8(flipped).unwrap()),
    ));
    forged.push((
        "unknown kid".into(),
        format!("{}.{p}.{sig}", b64(&json!({"alg": "ES384", "kid": "nope"}))),
    ));
    forged.push(("signature stripped".into(), format!("{h}.{p}.")));
    // Signed by another key that claims the server's kid.
    let dir = std::env::temp_dir().join(format!("cairn-other-key-{}", uuid::Uuid::new_v4()));
    let other = SigningKey::load_or_create(&dir).unwrap();
    let mut oh = Header::new(Algorithm::ES384);
    oh.kid = Some(kid.clone());
    forged.push((
        "another key, same kid".into(),
        jsonwebtoken::encode(&oh, &payload, &other.encoding).unwrap(),
    ));
    let _ = std::fs::remove_dir_all(&dir);
    // Well signed, but wrong in what it says.
    let mut c = app.claims("system/*.cruds");
    c["iss"] = json!("https://evil.example/auth");
    forged.push(("foreign issuer".into(), app.signed(&c)));
    let mut c = app.claims("system/*.cruds");
    c["aud"] = json!("https://other-server.example/fhir");
    forged.push(("foreign audience".into(), app.signed(&c)));
    let mut c = app.claims("system/*.cruds");
    c.as_object_mut().unwrap().remove("aud");
    forged.push(("no audience".into(), app.signed(&c)));
    let mut c = app.claims("system/*.cruds");
    c.as_object_mut().unwrap().remove("exp");
    forged.push(("no exp".into(), app.signed(&c)));
    let mut c = app.claims("system/*.cruds");
    c["exp"] = json!(now() - 3600);
    forged.push(("expired an hour ago".into(), app.signed(&c)));
    for (name, t) in &forged {
        let r = app.as_token(t, "GET", "Patient", None);
        unauthorized(&r, name);
    }
}

fn clock_skew_is_tolerated_up_to_the_leeway(app: &TestApp) {
    // The test app's leeway is 30 s.
    let at = |exp: i64, nbf: Option<i64>| {
        let mut c = app.claims("system/*.rs");
        c["exp"] = json!(exp);
        if let Some(n) = nbf {
            c["nbf"] = json!(n);
        }
        app.as_token(&app.signed(&c), "GET", "Patient", None).status
    };
    let t = now();
    assert_eq!(at(t - 20, None), 200, "expired 20 s ago, within the leeway");
    assert_eq!(at(t - 45, None), 401, "expired 45 s ago, past the leeway");
    assert_eq!(
        at(t + 300, Some(t + 20)),
        200,
        "nbf 20 s ahead, within the leeway"
    );
    assert_eq!(
        at(t + 300, Some(t + 45)),
        401,
        "nbf 45 s ahead, past the leeway"
    );
}

// ------------------------------------------------------------------ scope matrix

/// Every scope form against every interaction: allowed ones succeed, the others get 403 with an
/// OperationOutcome (and change nothing).
fn scope_matrix(app: &TestApp) {
    let pid = app.put(&json!({"resourceType": "Patient", "id": "m-p"}));
    let subj = json!({"reference": format!("Patient/{pid}")});
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "m"},
        "category": [{"coding": [{"system": OBS_CAT, "code": "survey"}]}], "subject": subj});
    let cp =
        json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": subj});
    let with_id = |mut v: Value, id: &str| {
        v["id"] = json!(id);
        v
    };
    let oid = app.put(&with_id(obs.clone(), "m-o"));
    let cid = app.put(&with_id(cp.clone(), "m-c"));
    const OPS: [&str; 9] = [
        "read",
        "vread",
        "search",
        "history-instance",
        "history-type",
        "create",
        "update",
        "delete",
        "compartment-search",
    ];
    let run = |t: &str, ty: &str, op: &str| -> Resp {
        let (body, id) = if ty == "Observation" {
            (&obs, &oid)
        } else {
            (&cp, &cid)
        };
        match op {
            "read" => app.as_token(t, "GET", &format!("{ty}/{id}"), None),
            "vread" => app.as_token(t, "GET", &format!("{ty}/{id}/_history/1"), None),
            "search" => app.as_token(t, "GET", &format!("{ty}?subject=Patient/{pid}"), None),
            "history-instance" => app.as_token(t, "GET", &format!("{ty}/{id}/_history"), None),
            "history-type" => app.as_token(t, "GET", &format!("{ty}/_history"), None),
            "compartment-search" => app.as_token(t, "GET", &format!("Patient/{pid}/{ty}"), None),
            "create" => app.as_token(t, "POST", ty, Some(body)),
            "update" => app.as_token(
                t,
                "PUT",
                &format!("{ty}/{id}"),
                Some(&with_id(body.clone(), id)),
            ),
            "delete" => {
                let throwaway = app.create(body)["id"].as_str().unwrap().to_string();
                app.as_token(t, "DELETE", &format!("{ty}/{throwaway}"), None)
            }
            _ => unreachable!(),
        }
    };
    let perm_of = |op: &str| match op {
        "read" | "vread" | "history-instance" => 'r',
        "search" | "history-type" | "compartment-search" => 's',
        "create" => 'c',
        "update" => 'u',
        "delete" => 'd',
        _ => unreachable!(),
    };
    // (scope, patient, per type: the permission letters it grants there)
    let rows: Vec<(&str, Option<&str>, &str, &str)> = vec![
        ("system/*.cruds", None, "cruds", "cruds"),
        ("system/*.rs", None, "rs", "rs"),
        ("system/Observation.c", None, "c", ""),
        ("system/Observation.r", None, "r", ""),
        ("system/Observation.u", None, "u", ""),
        ("system/Observation.d", None, "d", ""),
        ("system/Observation.s", None, "s", ""),
        ("system/Observation.*", None, "cruds", ""),
        ("system/Observation.read", None, "rs", ""),
        ("system/Observation.write", None, "cud", ""),
        ("system/Patient.rs", None, "", ""),
        ("user/CarePlan.write", None, "", "cud"),
        ("user/CarePlan.cud", None, "", "cud"),
        ("user/CarePlan.rs", None, "", "rs"),
        ("user/*.read", None, "rs", "rs"),
        ("patient/Observation.rs", Some("m-p"), "rs", ""),
        ("patient/Observation.read", Some("m-p"), "rs", ""),
        ("patient/*.read", Some("m-p"), "rs", "rs"),
        ("patient/*.cruds", Some("m-p"), "cruds", "cruds"),
        ("patient/*.*", Some("m-p"), "cruds", "cruds"),
        ("patient/CarePlan.cu", Some("m-p"), "", "cu"),
        // A patient/ scope without a patient in context opens nothing.
        ("patient/*.cruds", None, "", ""),
        // Malformed scopes open nothing.
        ("system/Observation.sr system/*.x openid", None, "", ""),
    ];
    let mut wrong = vec![];
    for (scope, patient, obs_perms, cp_perms) in rows {
        let t = app.token(scope, patient);
        for (ty, perms) in [("Observation", obs_perms), ("CarePlan", cp_perms)] {
            for op in OPS {
                let allowed = perms.contains(perm_of(op));
                let r = run(&t, ty, op);
                let ok = if allowed {
                    matches!(r.status, 200 | 201 | 204)
                } else {
                    r.status == 403
                        && r.json()["resourceType"] == "OperationOutcome"
                        && r.json()["issue"][0]["code"] == "forbidden"
                };
                if !ok {
                    wrong.push(format!(
                        "[{scope}{}] {op} {ty}: want {}, got {} {}",
                        patient.map(|p| format!(" patient={p}")).unwrap_or_default(),
                        if allowed { "allowed" } else { "403" },
                        r.status,
                        r.text().chars().take(120).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // System-level search and history need a search scope on some type.
    let none = app.token("system/Observation.r", None);
    app.as_token(&none, "GET", "?_type=Observation", None)
        .outcome(403);
    app.as_token(&none, "GET", "_history", None).outcome(403);
    let some = app.token("system/Observation.s", None);
    let b = app
        .as_token(&some, "GET", "_history?_count=1000", None)
        .json();
    assert!(ids(&b).iter().all(|i| i.starts_with("Observation/")), "{b}");
    let b = app.as_token(&some, "GET", "?_count=1000", None).json();
    assert!(
        !ids(&b).is_empty() && ids(&b).iter().all(|i| i.starts_with("Observation/")),
        "{b}"
    );
    // Asking explicitly for a type the token cannot search is refused, not silently narrowed.
    app.as_token(&some, "GET", "?_type=Observation,CarePlan", None)
        .outcome(403);
}

// ------------------------------------------------------------------ patient compartment

struct TwoPatients {
    a: String,
    b: String,
    h: String,
    token_a: String,
}

/// Patients A and B with look-alike data. Both CarePlans point at both Goals, so `_include`,
/// `_revinclude`, `_has` and chains all have a path from A's data to B's.
fn two_patients(app: &TestApp, scope: &str) -> TwoPatients {
    let h = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    for who in ["a", "b"] {
        app.put(
            &json!({"resourceType": "Patient", "id": format!("pat-{who}-{h}"),
            "name": [{"family": format!("Lookalike{h}"), "given": ["Sam"]}],
            "gender": "female", "birthDate": "1980-01-01"}),
        );
    }
    for who in ["a", "b"] {
        let subj = json!({"reference": format!("Patient/pat-{who}-{h}")});
        app.put(&json!({"resourceType": "Observation", "id": format!("obs-{who}-{h}"),
            "status": "final", "code": {"coding": [{"system": "urn:t", "code": format!("same-{h}")}]},
            "category": [{"coding": [{"system": OBS_CAT, "code": "survey"}]}],
            "subject": subj, "valueInteger": 7}));
        app.put(
            &json!({"resourceType": "Goal", "id": format!("goal-{who}-{h}"),
            "lifecycleStatus": "active", "description": {"text": "PHQ-9 below 5"},
            "identifier": [{"system": "urn:t", "value": format!("goal-{who}-{h}")}],
            "subject": subj}),
        );
    }
    for who in ["a", "b"] {
        app.put(
            &json!({"resourceType": "CarePlan", "id": format!("cp-{who}-{h}"),
            "status": "active", "intent": "plan",
            "identifier": [{"system": "urn:t", "value": format!("cp-{who}-{h}")}],
            "subject": {"reference": format!("Patient/pat-{who}-{h}")},
            "goal": [{"reference": format!("Goal/goal-a-{h}")},
                     {"reference": format!("Goal/goal-b-{h}")}]}),
        );
    }
    // Data only B has.
    app.put(
        &json!({"resourceType": "Observation", "id": format!("only-b-{h}"), "status": "final",
        "code": {"coding": [{"system": "urn:t", "code": format!("only-b-{h}")}]},
        "subject": {"reference": format!("Patient/pat-b-{h}")}}),
    );
    let a = format!("pat-a-{h}");
    TwoPatients {
        token_a: app.token(scope, Some(&a)),
        a,
        b: format!("pat-b-{h}"),
        h,
    }
}

impl TwoPatients {
    /// Every id of B's data (Goal B excepted: A's CarePlan names it, so its id may appear in A's
    /// own resources; it is checked as an entry instead).
    fn b_ids(&self) -> Vec<String> {
        let h = &self.h;
        vec![
            self.b.clone(),
            format!("obs-b-{h}"),
            format!("cp-b-{h}"),
            format!("only-b-{h}"),
        ]
    }

    /// Fetches every page of `path` with A's token: 200, and nothing of B's anywhere.
    fn visible(&self, app: &TestApp, path: &str) -> Vec<String> {
        let mut out = vec![];
        let mut next = Some(app.url(path));
        while let Some(url) = next.take() {
            let r = app.as_token(&self.token_a, "GET", &url, None);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let b = r.json();
            let text = serde_json::to_string(&b["entry"]).unwrap();
            for id in self.b_ids() {
                assert!(!text.contains(&id), "{path} leaked {id}: {text}");
            }
            let found = ids(&b);
            let goal_b = format!("Goal/goal-b-{}", self.h);
            assert!(!found.contains(&goal_b), "{path} leaked {goal_b}");
            out.extend(found);
            next = common::link(&b, "next");
        }
        out
    }
}

fn compartment_reads(app: &TestApp) {
    let t = two_patients(app, "patient/*.rs");
    let h = &t.h;
    for p in [
        format!("Patient/{}", t.a),
        format!("Observation/obs-a-{h}"),
        format!("Observation/obs-a-{h}/_history/1"),
        format!("Goal/goal-a-{h}"),
        format!("CarePlan/cp-a-{h}"),
    ] {
        assert_eq!(app.as_token(&t.token_a, "GET", &p, None).status, 200, "{p}");
    }
    for p in [
        format!("Patient/{}", t.b),
        format!("Observation/obs-b-{h}"),
        format!("Observation/obs-b-{h}/_history/1"),
        format!("Goal/goal-b-{h}"),
        format!("CarePlan/cp-b-{h}"),
        format!("Observation/obs-b-{h}/_history"),
        format!("Patient/{}/_history", t.b),
    ] {
        let r = app.as_token(&t.token_a, "GET", &p, None);
        r.outcome(403);
        assert!(!r.text().contains("Sam"), "{p}: {}", r.text());
    }
}

fn compartment_searches(app: &TestApp) {
    let t = two_patients(app, "patient/*.rs");
    let (a, b, h) = (&t.a, &t.b, &t.h);
    let got = t.visible(app, &format!("Observation?code=urn:t|same-{h}"));
    assert_eq!(got, [format!("Observation/obs-a-{h}")]);
    let got = t.visible(app, &format!("Patient?family=Lookalike{h}"));
    assert_eq!(got, [format!("Patient/{a}")]);
    assert!(t
        .visible(app, "Observation?_count=1")
        .contains(&format!("Observation/obs-a-{h}")));
    for q in [
        format!("Observation?subject=Patient/{b}"),
        format!("Observation?patient={b}"),
        format!("Observation?code=urn:t|only-b-{h}"),
        format!("Patient?_id={b}"),
        format!("Patient/{b}/Observation"),
        format!("Observation?subject:Patient.family=Lookalike{h}&subject={b}"),
    ] {
        assert!(t.visible(app, &q).is_empty(), "{q}");
    }
    // Compartment search of A's own compartment works.
    assert_eq!(
        t.visible(app, &format!("Patient/{a}/Observation")),
        [format!("Observation/obs-a-{h}")]
    );
    // POST _search is the same search.
    let r = app.send(
        "POST",
        "Observation/_search",
        &[
            ("Authorization", &format!("Bearer {}", t.token_a)),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(format!("code=urn:t|same-{h}").as_bytes()),
    );
    assert_eq!(ids(&r.json()), [format!("Observation/obs-a-{h}")]);
}

fn compartment_includes(app: &TestApp) {
    let t = two_patients(app, "patient/*.rs");
    let (a, h) = (&t.a, &t.h);
    let got = t.visible(
        app,
        &format!("CarePlan?_id=cp-a-{h}&_include=CarePlan:goal"),
    );
    assert_eq!(
        got,
        [format!("CarePlan/cp-a-{h}"), format!("Goal/goal-a-{h}")]
    );
    let got = t.visible(
        app,
        &format!("Goal?_id=goal-a-{h}&_revinclude=CarePlan:goal"),
    );
    assert_eq!(
        got,
        [format!("Goal/goal-a-{h}"), format!("CarePlan/cp-a-{h}")]
    );
    let got = t.visible(
        app,
        &format!("Patient?_id={a}&_revinclude=Observation:subject&_revinclude=CarePlan:subject"),
    );
    assert_eq!(got.len(), 3, "{got:?}");
    t.visible(app, &format!("CarePlan?_id=cp-a-{h}&_include=CarePlan:goal&_include:iterate=Goal:subject&_revinclude:iterate=CarePlan:goal"));
    t.visible(app, &format!("Observation?_id=obs-a-{h}&_include=*"));
    // Includes need read permission on the included type.
    let obs_only = app.token("patient/CarePlan.rs", Some(a));
    let r = app.as_token(
        &obs_only,
        "GET",
        &format!("CarePlan?_id=cp-a-{h}&_include=CarePlan:goal"),
        None,
    );
    assert_eq!(
        ids(&r.json()),
        [format!("CarePlan/cp-a-{h}")],
        "{}",
        r.text()
    );
}

fn compartment_has_and_chains(app: &TestApp) {
    let t = two_patients(app, "patient/*.rs");
    let h = &t.h;
    let has_b = format!("Goal?_has:CarePlan:goal:identifier=urn:t|cp-b-{h}");
    let chain_b = format!("CarePlan?goal:Goal.identifier=urn:t|goal-b-{h}");
    // Controls: the system token sees the links.
    assert!(ids(&app.get(&has_b).json()).contains(&format!("Goal/goal-a-{h}")));
    assert!(ids(&app.get(&chain_b).json()).contains(&format!("CarePlan/cp-a-{h}")));
    // A's token does not: the linked resources are B's.
    assert!(t.visible(app, &has_b).is_empty());
    assert!(t.visible(app, &chain_b).is_empty());
    assert_eq!(
        t.visible(
            app,
            &format!("Goal?_has:CarePlan:goal:identifier=urn:t|cp-a-{h}")
        ),
        [format!("Goal/goal-a-{h}")]
    );
    assert_eq!(
        t.visible(
            app,
            &format!("CarePlan?goal:Goal.identifier=urn:t|goal-a-{h}")
        ),
        [format!("CarePlan/cp-a-{h}")]
    );
    assert!(t
        .visible(
            app,
            &format!("Patient?_has:Observation:subject:code=urn:t|only-b-{h}")
        )
        .is_empty());
}

fn compartment_system_search_and_history(app: &TestApp) {
    let t = two_patients(app, "patient/*.rs");
    let (a, b, h) = (&t.a, &t.b, &t.h);
    // More history for both: A's and B's Observations get a second version.
    for who in ["a", "b"] {
        app.put(&json!({"resourceType": "Observation", "id": format!("obs-{who}-{h}"),
            "status": "amended", "code": {"coding": [{"system": "urn:t", "code": format!("same-{h}")}]},
            "subject": {"reference": format!("Patient/pat-{who}-{h}")}, "valueInteger": 8}));
    }
    let all = format!("{a},{b},obs-a-{h},obs-b-{h},only-b-{h}");
    let got = t.visible(app, &format!("?_type=Patient,Observation&_id={all}"));
    assert_eq!(got.len(), 2, "{got:?}");
    t.visible(app, &format!("?_id={all}"));
    let got = t.visible(app, &format!("Observation/obs-a-{h}/_history"));
    assert_eq!(got.len(), 2, "{got:?}");
    // Small pages: paging through a filtered history still ends and leaks nothing.
    let got = t.visible(app, "Observation/_history?_count=1");
    assert_eq!(got.len(), 2, "{got:?}");
    // A's Patient, Goal and CarePlan, and both versions of A's Observation; and the built-in
    // instruments, which are no patient's data.
    let got = t.visible(app, "_history?_count=2");
    let (instruments, got): (Vec<String>, Vec<String>) = got
        .into_iter()
        .partition(|k| k.starts_with("Questionnaire/"));
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(
        instruments.len(),
        cairn::care::instruments::embedded().len()
    );
    t.visible(app, "CarePlan/_history");
    t.visible(app, "Goal/_history");
}

fn compartment_writes(app: &TestApp) {
    let t = two_patients(app, "patient/*.cruds");
    let (a, b, h) = (&t.a, &t.b, &t.h);
    let obs = |pid: &str, id: Option<&str>| {
        let mut o = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "w"}, "subject": {"reference": format!("Patient/{pid}")}});
        if let Some(i) = id {
            o["id"] = json!(i);
        }
        o
    };
    let tw = &t.token_a;
    assert_eq!(
        app.as_token(tw, "POST", "Observation", Some(&obs(a, None)))
            .status,
        201
    );
    app.as_token(tw, "POST", "Observation", Some(&obs(b, None)))
        .outcome(403);
    // An Observation about both patients is in both compartments: A may not write it either.
    let mut both = obs(a, None);
    both["performer"] = json!([{"reference": format!("Patient/{b}")}]);
    app.as_token(tw, "POST", "Observation", Some(&both))
        .outcome(403);
    let oa = format!("obs-a-{h}");
    let ob = format!("obs-b-{h}");
    app.as_token(
        tw,
        "PUT",
        &format!("Observation/{oa}"),
        Some(&obs(b, Some(&oa))),
    )
    .outcome(403);
    app.as_token(
        tw,
        "PUT",
        &format!("Observation/new-{h}"),
        Some(&obs(b, Some(&format!("new-{h}")))),
    )
    .outcome(403);
    app.as_token(
        tw,
        "PUT",
        &format!("Observation/{ob}"),
        Some(&obs(a, Some(&ob))),
    )
    .outcome(403);
    app.as_token(tw, "DELETE", &format!("Observation/{ob}"), None)
        .outcome(403);
    app.as_token(
        tw,
        "PUT",
        &format!("Patient/{b}"),
        Some(&json!({"resourceType": "Patient", "id": b})),
    )
    .outcome(403);
    app.as_token(
        tw,
        "POST",
        "Patient",
        Some(&json!({"resourceType": "Patient"})),
    )
    .outcome(403);
    // A may update A's own Patient and Observation.
    assert_eq!(
        app.as_token(
            tw,
            "PUT",
            &format!("Patient/{a}"),
            Some(&json!({"resourceType": "Patient", "id": a, "gender": "female"}))
        )
        .status,
        200
    );
    assert_eq!(
        app.as_token(
            tw,
            "PUT",
            &format!("Observation/{oa}"),
            Some(&obs(a, Some(&oa)))
        )
        .status,
        200
    );
    // Nothing of B's changed; the refused update-as-create created nothing.
    assert_eq!(
        app.get(&format!("Observation/{ob}")).json()["meta"]["versionId"],
        "1"
    );
    assert_eq!(
        app.get(&format!("Patient/{b}")).json()["meta"]["versionId"],
        "1"
    );
    assert_eq!(app.get(&format!("Observation/new-{h}")).status, 404);
    // Read-only patient scopes write nothing, not even for A.
    let tr = app.token("patient/*.rs", Some(a));
    app.as_token(&tr, "POST", "Observation", Some(&obs(a, None)))
        .outcome(403);
    // Shared, non-patient data (a Questionnaire) is readable with patient scopes, never writable.
    let q = app.create(&json!({"resourceType": "Questionnaire", "status": "active"}));
    let qid = q["id"].as_str().unwrap();
    assert_eq!(
        app.as_token(&tr, "GET", &format!("Questionnaire/{qid}"), None)
            .status,
        200
    );
    app.as_token(
        tw,
        "PUT",
        &format!("Questionnaire/{qid}"),
        Some(&json!({"resourceType": "Questionnaire", "id": qid, "status": "retired"})),
    )
    .outcome(403);
}

/// Writes that would reach another patient's data by the back door are refused too.
fn compartment_writes_through_side_doors(app: &TestApp) {
    let t = two_patients(app, "patient/*.cruds");
    let (a, b, h) = (&t.a, &t.b, &t.h);
    let tw = &t.token_a;
    // B's Patient, even when it links to A (it is in A's compartment for reading).
    let linked = json!({"resourceType": "Patient", "id": b,
        "link": [{"other": {"reference": format!("Patient/{a}")}, "type": "seealso"}]});
    app.put(&linked);
    assert_eq!(
        app.as_token(tw, "GET", &format!("Patient/{b}"), None)
            .status,
        200
    );
    let mut takeover = linked.clone();
    takeover["telecom"] = json!([{"system": "phone", "value": "555"}]);
    app.as_token(tw, "PUT", &format!("Patient/{b}"), Some(&takeover))
        .outcome(403);
    app.as_token(tw, "DELETE", &format!("Patient/{b}"), None)
        .outcome(403);
    // A CareTeam of both patients belongs to B as well: A may not change or remove it.
    let team = app.put(
        &json!({"resourceType": "CareTeam", "id": format!("team-{h}"),
        "subject": {"reference": format!("Patient/{a}")},
        "participant": [{"member": {"reference": format!("Patient/{b}")}}]}),
    );
    assert_eq!(
        app.as_token(tw, "GET", &format!("CareTeam/{team}"), None)
            .status,
        200
    );
    app.as_token(tw, "DELETE", &format!("CareTeam/{team}"), None)
        .outcome(403);
    app.as_token(tw, "PUT", &format!("CareTeam/{team}"),
        Some(&json!({"resourceType": "CareTeam", "id": team, "subject": {"reference": format!("Patient/{a}")}})))
        .outcome(403);
    // References that name B in disguise: a path ending in B, an absolute URL under another name.
    for reference in [
        format!("Patient/{a}/Patient/{b}"),
        format!("http://localhost:8080/fhir/Patient/{b}"),
        format!("Patient/{b}/_history/1"),
    ] {
        let o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "d"},
            "subject": {"reference": reference}, "performer": [{"reference": format!("Patient/{a}")}]});
        app.as_token(tw, "POST", "Observation", Some(&o))
            .outcome(403);
    }
    // If-Match on B's data is refused before the version is compared (no version oracle).
    let r = app.send(
        "DELETE",
        &format!("Observation/obs-b-{h}"),
        &[
            ("Authorization", &format!("Bearer {tw}")),
            ("If-Match", "W/\"9\""),
        ],
        None,
    );
    r.outcome(403);
    // B's deleted data stays B's: 403, not 410.
    app.delete_as_admin(&format!("Observation/only-b-{h}"));
    app.as_token(tw, "GET", &format!("Observation/only-b-{h}"), None)
        .outcome(403);
    // Its CarePlans (A's and B's) refer to it: they go first.
    app.delete_as_admin(&format!("Goal/goal-a-{h}?_cascade=delete"));
    assert_eq!(
        app.as_token(tw, "GET", &format!("Goal/goal-a-{h}"), None)
            .status,
        410
    );
    // Nothing of B's changed.
    assert_eq!(
        app.get(&format!("Patient/{b}")).json()["meta"]["versionId"],
        "2"
    );
    assert_eq!(
        app.get(&format!("CareTeam/{team}")).json()["meta"]["versionId"],
        "1"
    );
}

impl TestApp {
    fn delete_as_admin(&self, path: &str) {
        let r = self.send("DELETE", path, &[], None);
        assert_eq!(r.status, 204, "{}", r.text());
    }
}

// ------------------------------------------------------------------ granular scopes

fn granular_scopes_filter_results(app: &TestApp) {
    let pid = app.put(&json!({"resourceType": "Patient", "id": "gr-p"}));
    for cat in ["survey", "vital-signs", "laboratory"] {
        app.put(
            &json!({"resourceType": "Observation", "id": format!("gr-{cat}"), "status": "final",
            "code": {"coding": [{"system": "urn:t", "code": "gran"}]},
            "category": [{"coding": [{"system": OBS_CAT, "code": cat}]}],
            "subject": {"reference": format!("Patient/{pid}")}, "valueInteger": 3}),
        );
    }
    let scope = format!("patient/Observation.rs?category={OBS_CAT}|survey");
    let t = app.token(&scope, Some(&pid));
    for q in [
        "Observation?code=urn:t|gran",
        "Observation",
        &format!("Observation?subject=Patient/{pid}"),
        "Observation/_history",
        "_history",
        "?_type=Observation",
    ] {
        let b = app.as_token(&t, "GET", q, None).json();
        assert_eq!(ids(&b), ["Observation/gr-survey"], "{q}: {b}");
    }
    assert_eq!(
        app.as_token(&t, "GET", "Observation/gr-survey", None)
            .status,
        200
    );
    app.as_token(&t, "GET", "Observation/gr-laboratory", None)
        .outcome(403);
    app.as_token(&t, "GET", "Observation/gr-laboratory/_history/1", None)
        .outcome(403);
    app.as_token(&t, "GET", &format!("Patient/{pid}"), None)
        .outcome(403);
    // Two granular scopes: their union.
    let both = format!("system/Observation.rs?category={OBS_CAT}|survey system/Observation.rs?category={OBS_CAT}|laboratory");
    let t2 = app.token(&both, None);
    let mut got = ids(&app
        .as_token(&t2, "GET", "Observation?code=urn:t|gran", None)
        .json());
    got.sort();
    assert_eq!(got, ["Observation/gr-laboratory", "Observation/gr-survey"]);
    // A granular write scope writes only what matches it.
    let tw = app.token(
        &format!("system/Observation.cu?category={OBS_CAT}|survey"),
        None,
    );
    let mk = |cat: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "g"},
        "category": [{"coding": [{"system": OBS_CAT, "code": cat}]}]})
    };
    assert_eq!(
        app.as_token(&tw, "POST", "Observation", Some(&mk("survey")))
            .status,
        201
    );
    app.as_token(&tw, "POST", "Observation", Some(&mk("laboratory")))
        .outcome(403);
    // Turning a survey into a laboratory Observation is outside the grant too.
    let mut lab = mk("laboratory");
    lab["id"] = json!("gr-survey");
    app.as_token(&tw, "PUT", "Observation/gr-survey", Some(&lab))
        .outcome(403);
}

// ------------------------------------------------------------------ Backend Services

fn register_client(app: &TestApp, id: &str, scope: &str) {
    let jwks = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/test-client-rs384.jwks.json"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "client",
            "add",
            "--jwks",
            jwks,
            "--scope",
            scope,
            "--client-id",
            id,
        ])
        .env("CAIRN_DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim().ends_with(id), "{stdout}");
}

fn assertion(app: &TestApp, client: &str, claims: Value) -> String {
    let pem = include_bytes!("fixtures/test-client-rs384.pem");
    let key = EncodingKey::from_rsa_pem(pem).unwrap();
    let mut h = Header::new(Algorithm::RS384);
    h.kid = Some("test-rs384".into());
    let mut c = json!({"iss": client, "sub": client, "aud": format!("{}/auth/token", app.root),
        "exp": now() + 240, "jti": uuid::Uuid::new_v4().to_string()});
    c.as_object_mut()
        .unwrap()
        .extend(claims.as_object().unwrap().clone());
    jsonwebtoken::encode(&h, &c, &key).unwrap()
}

fn token_request(app: &TestApp, assertion: &str, scope: &str) -> Resp {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("scope", scope)
        .append_pair("client_assertion_type", JWT_BEARER)
        .append_pair("client_assertion", assertion)
        .finish();
    app.send(
        "POST",
        &format!("{}/auth/token", app.root),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", ""),
        ],
        Some(form.as_bytes()),
    )
}

fn backend_services_token_endpoint(app: &TestApp) {
    register_client(app, "lab-sync", "system/Patient.rs system/Observation.rs");
    let a = assertion(app, "lab-sync", json!({}));
    let r = token_request(app, &a, "system/Patient.rs");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let body = r.json();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["scope"], "system/Patient.rs");
    assert!(body["expires_in"].as_i64().unwrap() > 0);
    let at = body["access_token"].as_str().unwrap();
    assert_eq!(app.as_token(at, "GET", "Patient", None).status, 200);
    app.as_token(
        at,
        "POST",
        "Patient",
        Some(&json!({"resourceType": "Patient"})),
    )
    .outcome(403);
    // The same assertion again: a replay.
    let r = token_request(app, &a, "system/Patient.rs");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // Scopes are capped by the registration.
    let r = token_request(
        app,
        &assertion(app, "lab-sync", json!({})),
        "system/Patient.rs system/Observation.cruds system/CarePlan.rs",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["scope"], "system/Patient.rs system/Observation.rs");
    let capped = r.json()["access_token"].as_str().unwrap().to_string();
    app.as_token(
        &capped,
        "POST",
        "Observation",
        Some(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})),
    )
    .outcome(403);
    app.as_token(&capped, "GET", "CarePlan", None).outcome(403);
    let r = token_request(
        app,
        &assertion(app, "lab-sync", json!({})),
        "system/CarePlan.rs",
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    // Refused assertions.
    let other_dir = std::env::temp_dir().join(format!("cairn-k-{}", uuid::Uuid::new_v4()));
    let other = SigningKey::load_or_create(&other_dir).unwrap();
    let mut h = Header::new(Algorithm::ES384);
    h.kid = Some("test-rs384".into());
    let foreign_key = jsonwebtoken::encode(
        &h,
        &json!({"iss": "lab-sync", "sub": "lab-sync",
        "aud": format!("{}/auth/token", app.root), "exp": now() + 60, "jti": "x1"}),
        &other.encoding,
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(other_dir);
    for (what, a) in [
        ("signed by an unregistered key", foreign_key),
        (
            "foreign audience",
            assertion(
                app,
                "lab-sync",
                json!({"aud": "https://elsewhere.example/token"}),
            ),
        ),
        (
            "expired",
            assertion(app, "lab-sync", json!({"exp": now() - 3600})),
        ),
        (
            "exp too far ahead",
            assertion(app, "lab-sync", json!({"exp": now() + 3600})),
        ),
        (
            "sub differs from iss",
            assertion(app, "lab-sync", json!({"sub": "someone-else"})),
        ),
        ("unregistered client", assertion(app, "nobody", json!({}))),
        ("no jti", assertion(app, "lab-sync", json!({"jti": null}))),
        (
            "exp as a fraction",
            assertion(app, "lab-sync", json!({"exp": now() as f64 + 60.5})),
        ),
        (
            "exp beyond i64",
            assertion(app, "lab-sync", json!({"exp": u64::MAX})),
        ),
        ("tampered signature", {
            let mut c = assertion(app, "lab-sync", json!({}));
            c.push('x');
            c
        }),
    ] {
        let r = token_request(app, &a, "system/Patient.rs");
        assert!(
            matches!(r.status, 400 | 401),
            "{what}: {} {}",
            r.status,
            r.text()
        );
        assert!(r.json()["error"].is_string(), "{what}: {}", r.text());
    }
    let r = app.send(
        "POST",
        &format!("{}/auth/token", app.root),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(b"grant_type=password"),
    );
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    // Every token request is audited as a login, failures included.
    let logins = app.all_entries(
        "AuditEvent?type=http://dicom.nema.org/resources/ontology/DCM|110114&_count=100",
    );
    let outcomes: Vec<&str> = logins
        .iter()
        .map(|e| e["resource"]["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.iter().filter(|o| **o == "0").count() >= 2,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().filter(|o| **o != "0").count() >= 10,
        "{outcomes:?}"
    );
    assert!(logins
        .iter()
        .any(|e| e["resource"]["agent"][0]["who"]["identifier"]["value"] == "lab-sync"));
}

on_both_backends!(
    every_fhir_endpoint_needs_a_token,
    discovery_is_public_and_consistent,
    forged_and_misdirected_tokens_are_refused,
    clock_skew_is_tolerated_up_to_the_leeway,
    scope_matrix,
    compartment_reads,
    compartment_searches,
    compartment_includes,
    compartment_has_and_chains,
    compartment_system_search_and_history,
    compartment_writes,
    compartment_writes_through_side_doors,
    granular_scopes_filter_results,
    backend_services_token_endpoint,
);

#[test]
fn auth_disabled_allows_everything_and_says_so() {
    let app = common::spawn_app_with(common::Backend::Sqlite, |s| {
        s.auth.mode = cairn::config::AuthMode::Disabled;
    })
    .unwrap();
    let r = app.send(
        "POST",
        "Patient",
        &[
            ("Authorization", ""),
            ("Content-Type", "application/fhir+json"),
        ],
        Some(br#"{"resourceType":"Patient"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let cs = app
        .send("GET", "metadata", &[("Authorization", "")], None)
        .json();
    let desc = cs["rest"][0]["security"]["description"].as_str().unwrap();
    assert!(desc.contains("DISABLED"), "{desc}");
}

#[test]
fn fhir_user_and_patient_claims_reach_the_caller() {
    let app = common::spawn_app(common::Backend::Sqlite).unwrap();
    let t = app.mint(&Mint {
        subject: "dr".into(),
        client_id: "ehr".into(),
        scope: "user/*.rs".into(),
        fhir_user: Some("Practitioner/dr-1".into()),
        patient: None,
        lifetime: 60,
    });
    let payload = t.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let access = cairn::auth::token::access_from(&claims);
    assert_eq!(access.fhir_user.as_deref(), Some("Practitioner/dr-1"));
    assert_eq!(access.client_id.as_deref(), Some("ehr"));
    assert_eq!(app.as_token(&t, "GET", "Patient", None).status, 200);
}

/// A verified token is remembered, but never past its `exp`.
#[test]
fn a_remembered_token_still_expires() {
    let app = common::spawn_app_with(common::Backend::Sqlite, |s| s.auth.leeway = 0).unwrap();
    let t = app.mint(&Mint {
        subject: "t".into(),
        client_id: "t".into(),
        scope: "system/*.rs".into(),
        lifetime: 2,
        ..Default::default()
    });
    assert_eq!(app.as_token(&t, "GET", "Patient", None).status, 200);
    assert_eq!(app.as_token(&t, "GET", "Patient", None).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(3100));
    unauthorized(
        &app.as_token(&t, "GET", "Patient", None),
        "expired while remembered",
    );
}
