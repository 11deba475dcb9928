//! HL7 SDC observation-based extraction: the Observations a QuestionnaireResponse stands for, and
//! the safety signal it raises. Pure: what to store is decided here, storing is `care::derive`.

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::scoring::{self, Scoring, OBSERVATION_EXTRACT};
use crate::error::FhirResult;

pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// The key of the total-score Observation among a response's derived ones.
pub const TOTAL_KEY: &str = "#total";

/// A derived Observation with the key (an item's linkId, or `TOTAL_KEY`) it is stored under.
#[derive(Debug, Clone)]
pub struct Derived {
    pub key: String,
    pub observation: Value,
}

/// An answer above a safety item's threshold.
#[derive(Debug, Clone)]
pub struct Signal {
    pub link_id: String,
    pub text: String,
    pub score: f64,
}

/// What a response stands for.
#[derive(Debug, Clone, Default)]
pub struct Extraction {
    pub observations: Vec<Derived>,
    pub total: Option<f64>,
    pub signals: Vec<Signal>,
}

/// Whether a response's content is live: completed or amended ones are extracted; any other
/// status (entered-in-error, in-progress, stopped) retracts what was extracted before.
pub fn is_live(response: &Value) -> bool {
    matches!(response["status"].as_str(), Some("completed" | "amended"))
}

/// The id a derived resource of `source` (`Type/id`) gets for `key`: the same every time, so
/// storing a response again revises its Observations instead of adding new ones.
pub fn derived_id(source: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{source}|{key}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn flag_of(ext_holder: &Value) -> Option<bool> {
    ext_holder["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == OBSERVATION_EXTRACT)
        .and_then(|e| e["valueBoolean"].as_bool())
}

/// The items that extract to an Observation (the flag is inherited from the Questionnaire or a
/// parent item unless an item says otherwise), each with a code.
fn extract_items(questionnaire: &Value) -> Vec<&Value> {
    fn walk<'a>(items: &'a Value, inherited: bool, out: &mut Vec<&'a Value>) {
        for it in items.as_array().into_iter().flatten() {
            let on = flag_of(it).unwrap_or(inherited);
            if on && it["code"].as_array().is_some_and(|c| !c.is_empty()) {
                out.push(it);
            }
            walk(&it["item"], on, out);
        }
    }
    let mut out = Vec::new();
    walk(
        &questionnaire["item"],
        flag_of(questionnaire).unwrap_or(false),
        &mut out,
    );
    out
}

/// Every key a response to this Questionnaire could derive an Observation under.
pub fn possible_keys(questionnaire: &Value, scoring: Option<&Scoring>) -> Vec<String> {
    let mut keys: Vec<String> = extract_items(questionnaire)
        .iter()
        .filter(|it| Some(it["linkId"].as_str().unwrap_or_default()) != total_link(scoring))
        .filter_map(|it| it["linkId"].as_str().map(str::to_string))
        .collect();
    if scoring.is_some() {
        keys.push(TOTAL_KEY.into());
    }
    keys
}

fn total_link(scoring: Option<&Scoring>) -> Option<&str> {
    scoring.and_then(|s| s.total_link_id.as_deref())
}

/// An answer's value as an Observation value element.
fn observation_value(answer: &Value) -> Option<(String, Value)> {
    let obj = answer.as_object()?;
    let (k, v) = obj.iter().find(|(k, _)| k.starts_with("value"))?;
    Some(match k.as_str() {
        "valueCoding" => ("valueCodeableConcept".into(), json!({"coding": [v]})),
        "valueDate" => ("valueDateTime".into(), v.clone()),
        "valueUri" | "valueReference" | "valueAttachment" => return None,
        _ => (k.clone(), v.clone()),
    })
}

/// The Observations of `response` (to `questionnaire`, whose scoring is `scoring`) and its safety
/// signals. `source` is the response's `Type/id` when it is stored (it becomes `derivedFrom`).
pub fn extract(
    questionnaire: &Value,
    scoring: Option<&Scoring>,
    response: &Value,
    source: Option<&str>,
) -> FhirResult<Extraction> {
    let scored = match scoring {
        Some(s) => Some(scoring::score(questionnaire, s, response)?),
        None => None,
    };
    let status = match response["status"].as_str() {
        Some("amended") => "amended",
        _ => "final",
    };
    let mut base = Map::new();
    base.insert("resourceType".into(), json!("Observation"));
    base.insert("status".into(), json!(status));
    base.insert(
        "category".into(),
        json!([{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}]}]),
    );
    for (from, to) in [("subject", "subject"), ("encounter", "encounter")] {
        if response[from].is_object() {
            base.insert(to.into(), response[from].clone());
        }
    }
    if let Some(t) = response["authored"].as_str() {
        base.insert("effectiveDateTime".into(), json!(t));
    }
    let author = &response["author"];
    let performer_ok = author["reference"]
        .as_str()
        .map(|r| {
            let ty = r.rsplit('/').nth(1).unwrap_or_default();
            matches!(
                ty,
                "Practitioner"
                    | "PractitionerRole"
                    | "Organization"
                    | "CareTeam"
                    | "Patient"
                    | "RelatedPerson"
            )
        })
        .unwrap_or(false);
    if performer_ok {
        base.insert("performer".into(), json!([author]));
    }
    if let Some(src) = source {
        base.insert("derivedFrom".into(), json!([{"reference": src}]));
    }
    let observation = |code: Value, text: Option<&Value>, value: (String, Value)| {
        let mut o = base.clone();
        let mut cc = json!({"coding": code});
        if let Some(t) = text.filter(|t| t.is_string()) {
            cc["text"] = t.clone();
        }
        o.insert("code".into(), cc);
        o.insert(value.0, value.1);
        o
    };

    let mut out = Extraction::default();
    let answers = scoring::answered(response);
    let items = extract_items(questionnaire);
    for item in &items {
        let link = item["linkId"].as_str().unwrap_or_default();
        if Some(link) == total_link(scoring) {
            continue;
        }
        let given: Vec<&Value> = answers
            .iter()
            .filter(|(l, _)| *l == link)
            .flat_map(|(_, a)| a.iter())
            .collect();
        // One Observation per item: the first answer (a repeating item's others are components).
        let mut values = given.iter().filter_map(|a| observation_value(a));
        let Some(first) = values.next() else {
            continue;
        };
        let mut o = observation(item["code"].clone(), item.get("text"), first);
        let rest: Vec<Value> = values
            .map(|(k, v)| json!({"code": {"coding": item["code"]}, k: v}))
            .collect();
        if !rest.is_empty() {
            o.insert("component".into(), json!(rest));
        }
        out.observations.push(Derived {
            key: link.to_string(),
            observation: Value::Object(o),
        });
    }
    if let (Some(sc), Some(scored)) = (scoring, scored.as_ref()) {
        let total_item = sc
            .total_link_id
            .as_deref()
            .and_then(|l| items.iter().find(|it| it["linkId"] == l));
        let v = scoring::number(scored.total);
        let kind = if v.is_i64() {
            "valueInteger"
        } else {
            "valueDecimal"
        };
        let mut o = observation(
            json!([sc.total_code]),
            total_item.and_then(|it| it.get("text")),
            (kind.into(), v),
        );
        if let Some(b) = sc.band(scored.total) {
            let mut cc = json!({"coding": [b.interpretation]});
            if let Some(d) = b.interpretation["display"].as_str() {
                cc["text"] = json!(d);
            }
            o.insert("interpretation".into(), json!([cc]));
        }
        out.total = Some(scored.total);
        out.observations.push(Derived {
            key: TOTAL_KEY.into(),
            observation: Value::Object(o),
        });
        let by_link = scoring::items_by_link(questionnaire);
        for safety in &sc.safety {
            for (link, score) in &scored.items {
                let item = by_link.get(link.as_str());
                let coded = item.is_some_and(|it| {
                    it["code"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| scoring::same_coding(c, &safety.code)))
                });
                if coded && *score > safety.above {
                    out.signals.push(Signal {
                        link_id: link.clone(),
                        text: item
                            .and_then(|it| it["text"].as_str())
                            .unwrap_or(link)
                            .to_string(),
                        score: *score,
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_valid_ids() {
        let a = derived_id("QuestionnaireResponse/x", "44250-9");
        assert_eq!(a, derived_id("QuestionnaireResponse/x", "44250-9"));
        assert_ne!(a, derived_id("QuestionnaireResponse/y", "44250-9"));
        assert!(crate::fhir::valid_id(&a));
    }
}
