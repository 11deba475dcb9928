//! The search definitions compiled into the binary still match the official ones in ../shared.

mod common;

use serde_json::Value;

fn load(rel: &str) -> Value {
    let path = common::shared().join(rel);
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

#[test]
fn embedded_search_parameters_match_the_official_definitions() {
    let official = load("fhir/search-parameters.json");
    let mut checked = 0;
    for e in official["entry"].as_array().unwrap() {
        let sp = &e["resource"];
        let url = sp["url"].as_str().unwrap();
        let bases: Vec<&str> = sp["base"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter(|b| cairn::fhir::is_enabled(b) || *b == "Resource" || *b == "DomainResource")
            .collect();
        if bases.is_empty() {
            continue;
        }
        let ours = cairn::search::registry()
            .by_url(url)
            .unwrap_or_else(|| panic!("{url} is not embedded"));
        assert_eq!(ours.code, sp["code"].as_str().unwrap(), "{url}");
        assert_eq!(ours.kind.as_str(), sp["type"].as_str().unwrap(), "{url}");
        // The one difference allowed: an experimental example whose expression is rooted in another
        // type (Patient `part-agree` reads DocumentReference) keeps no expression.
        if !sp["experimental"].as_bool().unwrap_or(false) {
            let official_has = sp.get("expression").is_some();
            assert_eq!(ours.expression.is_some(), official_has, "{url}");
        }
        checked += 1;
    }
    assert!(checked > 150, "{checked}");
}

#[test]
fn embedded_patient_compartment_matches_the_official_definition() {
    let official = load("fhir/compartment-patient.json");
    for r in official["resource"].as_array().unwrap() {
        let code = r["code"].as_str().unwrap();
        if !cairn::fhir::is_enabled(code) {
            continue;
        }
        let params: Vec<String> = r["param"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        let ours = cairn::search::patient_compartment(code)
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        assert_eq!(ours, params, "{code}");
    }
}
