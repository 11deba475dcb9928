//! Scoring as data: the `questionnaire-scoring` extension a Questionnaire carries (documented in
//! `shared/instruments/README.md`) read into `Scoring`, and a QuestionnaireResponse scored by it.
//! Nothing here knows PHQ-9 or GAD-7: an answer's score is its option's `ordinalValue`.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::error::{FhirError, FhirResult};

pub const SCORING: &str = "http://cairn.example/fhir/StructureDefinition/questionnaire-scoring";
pub const ORDINAL: &str = "http://hl7.org/fhir/StructureDefinition/ordinalValue";
pub const OBSERVATION_EXTRACT: &str =
    "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-observationExtract";

/// A severity band: totals in `[low, high]` get `interpretation` (a Coding).
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub low: f64,
    pub high: f64,
    pub interpretation: Value,
}

/// The measurement-based-care rules for goals measured by this total.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalRules {
    pub improvement_percent: f64,
    pub improvement_points: f64,
    pub worsening_points: f64,
}

impl Default for GoalRules {
    fn default() -> Self {
        GoalRules {
            improvement_percent: 50.0,
            improvement_points: 5.0,
            worsening_points: 5.0,
        }
    }
}

/// An item whose score above `above` is a safety signal.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyItem {
    pub code: Value,
    pub above: f64,
}

/// A Questionnaire's scoring metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    /// The total-score Observation's code (a Coding).
    pub total_code: Value,
    pub total_link_id: Option<String>,
    pub bands: Vec<Band>,
    pub rules: GoalRules,
    pub safety: Vec<SafetyItem>,
}

fn invalid(what: impl Into<String>) -> FhirError {
    FhirError::Unprocessable(format!(
        "Questionnaire.extension({SCORING}): {}",
        what.into()
    ))
}

fn sub<'a>(ext: &'a Value, url: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ext["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| e["url"] == url)
}

fn one<'a>(ext: &'a Value, url: &'a str) -> FhirResult<Option<&'a Value>> {
    let mut all = sub(ext, url);
    let first = all.next();
    if all.next().is_some() {
        return Err(invalid(format!("'{url}' is given more than once")));
    }
    Ok(first)
}

fn decimal(ext: &Value, url: &str) -> FhirResult<Option<f64>> {
    match one(ext, url)? {
        None => Ok(None),
        Some(e) => e["valueDecimal"]
            .as_f64()
            .or_else(|| e["valueInteger"].as_f64())
            .map(Some)
            .ok_or_else(|| invalid(format!("'{url}' needs a valueDecimal"))),
    }
}

fn coding(ext: &Value, url: &str) -> FhirResult<Option<Value>> {
    match one(ext, url)? {
        None => Ok(None),
        Some(e) => match &e["valueCoding"] {
            c @ Value::Object(_) if c["code"].is_string() => Ok(Some(c.clone())),
            _ => Err(invalid(format!("'{url}' needs a valueCoding with a code"))),
        },
    }
}

/// Two Codings name the same concept: same code, and same system when both give one.
pub fn same_coding(a: &Value, b: &Value) -> bool {
    a["code"].is_string()
        && a["code"] == b["code"]
        && (a["system"].is_null() || b["system"].is_null() || a["system"] == b["system"])
}

impl Scoring {
    /// The scoring of a Questionnaire: None when it carries no scoring extension; an error (422)
    /// when the extension is malformed, so such a Questionnaire is refused when written.
    pub fn of(questionnaire: &Value) -> FhirResult<Option<Scoring>> {
        let exts: Vec<&Value> = questionnaire["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["url"] == SCORING)
            .collect();
        let ext = match exts.as_slice() {
            [] => return Ok(None),
            [e] => *e,
            _ => return Err(invalid("given more than once")),
        };
        match one(ext, "method")?.map(|m| &m["valueCode"]) {
            Some(Value::String(m)) if m == "sum" => {}
            Some(other) => {
                return Err(invalid(format!("method {other} is not supported (sum is)")))
            }
            None => return Err(invalid("'method' is required")),
        }
        let total_code =
            coding(ext, "totalCode")?.ok_or_else(|| invalid("'totalCode' is required"))?;
        let total_link_id = match one(ext, "totalLinkId")? {
            None => None,
            Some(e) => Some(
                e["valueString"]
                    .as_str()
                    .ok_or_else(|| invalid("'totalLinkId' needs a valueString"))?
                    .to_string(),
            ),
        };
        let mut bands = Vec::new();
        for b in sub(ext, "band") {
            let low = decimal(b, "low")?.ok_or_else(|| invalid("a band needs 'low'"))?;
            let high = decimal(b, "high")?.ok_or_else(|| invalid("a band needs 'high'"))?;
            let interpretation = coding(b, "interpretation")?
                .ok_or_else(|| invalid("a band needs 'interpretation'"))?;
            if low > high {
                return Err(invalid(format!("band [{low}, {high}] is empty")));
            }
            bands.push(Band {
                low,
                high,
                interpretation,
            });
        }
        bands.sort_by(|a, b| a.low.total_cmp(&b.low));
        if let Some(w) = bands.windows(2).find(|w| w[1].low <= w[0].high) {
            return Err(invalid(format!(
                "bands [{}, {}] and [{}, {}] overlap",
                w[0].low, w[0].high, w[1].low, w[1].high
            )));
        }
        let d = GoalRules::default();
        let rules = GoalRules {
            improvement_percent: decimal(ext, "improvementPercent")?
                .unwrap_or(d.improvement_percent),
            improvement_points: decimal(ext, "improvementPoints")?.unwrap_or(d.improvement_points),
            worsening_points: decimal(ext, "worseningPoints")?.unwrap_or(d.worsening_points),
        };
        let mut safety = Vec::new();
        for s in sub(ext, "safetyItem") {
            safety.push(SafetyItem {
                code: coding(s, "code")?.ok_or_else(|| invalid("a safetyItem needs 'code'"))?,
                above: decimal(s, "above")?.unwrap_or(0.0),
            });
        }
        Ok(Some(Scoring {
            total_code,
            total_link_id,
            bands,
            rules,
            safety,
        }))
    }

    /// The band a total falls in.
    pub fn band(&self, total: f64) -> Option<&Band> {
        self.bands
            .iter()
            .find(|b| b.low <= total && total <= b.high)
    }
}

/// A Questionnaire's items by linkId, nested ones included.
pub fn items_by_link(questionnaire: &Value) -> HashMap<&str, &Value> {
    fn walk<'a>(items: &'a Value, out: &mut HashMap<&'a str, &'a Value>) {
        for it in items.as_array().into_iter().flatten() {
            if let Some(l) = it["linkId"].as_str() {
                out.insert(l, it);
            }
            walk(&it["item"], out);
        }
    }
    let mut out = HashMap::new();
    walk(&questionnaire["item"], &mut out);
    out
}

/// A response's answered items, in document order, nested ones (under items and answers)
/// included: `(linkId, answers)`.
pub fn answered(response: &Value) -> Vec<(&str, &Vec<Value>)> {
    fn walk<'a>(items: &'a Value, out: &mut Vec<(&'a str, &'a Vec<Value>)>) {
        for it in items.as_array().into_iter().flatten() {
            if let (Some(l), Some(a)) = (it["linkId"].as_str(), it["answer"].as_array()) {
                if !a.is_empty() {
                    out.push((l, a));
                }
                for ans in a {
                    walk(&ans["item"], out);
                }
            }
            walk(&it["item"], out);
        }
    }
    let mut out = Vec::new();
    walk(&response["item"], &mut out);
    out
}

/// The score of an answer to a questionnaire item whose options carry `ordinalValue`; None when
/// the item is not scored.
pub fn option_score(item: &Value, answer: &Value) -> FhirResult<Option<f64>> {
    let options: Vec<&Value> = item["answerOption"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| ordinal(o).is_some())
        .collect();
    if options.is_empty() {
        return Ok(None);
    }
    let link = item["linkId"].as_str().unwrap_or_default();
    let Some(coding) = answer.get("valueCoding") else {
        return Err(FhirError::Unprocessable(format!(
            "item '{link}' is scored: its answer must be a valueCoding of one of its options"
        )));
    };
    options
        .iter()
        .find(|o| {
            o["valueCoding"]["system"] == coding["system"]
                && o["valueCoding"]["code"] == coding["code"]
        })
        .and_then(|o| ordinal(o))
        .map(Some)
        .ok_or_else(|| {
            FhirError::Unprocessable(format!(
                "item '{link}': the answer {}|{} is not one of its options",
                coding["system"].as_str().unwrap_or_default(),
                coding["code"].as_str().unwrap_or_default()
            ))
        })
}

fn ordinal(option: &Value) -> Option<f64> {
    option["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == ORDINAL)
        .and_then(|e| {
            e["valueDecimal"]
                .as_f64()
                .or_else(|| e["valueInteger"].as_f64())
        })
}

/// A scored response.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub total: f64,
    /// Each scored answer: (linkId, score).
    pub items: Vec<(String, f64)>,
}

/// Scores a response against its Questionnaire: the sum of the chosen options' `ordinalValue`s.
/// The total item's own answer (a client's) is ignored. An answer that is not an option of its
/// scored item, or a scored item left unanswered in a completed response, is a 422.
pub fn score(questionnaire: &Value, scoring: &Scoring, response: &Value) -> FhirResult<Scored> {
    let items = items_by_link(questionnaire);
    let mut scored = Vec::new();
    for (link, answers) in answered(response) {
        if scoring.total_link_id.as_deref() == Some(link) {
            continue;
        }
        let Some(item) = items.get(link) else {
            return Err(FhirError::Unprocessable(format!(
                "item '{link}' is not an item of {}",
                questionnaire["url"].as_str().unwrap_or("the questionnaire")
            )));
        };
        for a in answers {
            if let Some(s) = option_score(item, a)? {
                scored.push((link.to_string(), s));
            }
        }
    }
    if matches!(response["status"].as_str(), Some("completed" | "amended")) {
        let mut required: Vec<&str> = items
            .iter()
            .filter(|(l, it)| {
                it["required"] == true
                    && scoring.total_link_id.as_deref() != Some(**l)
                    && it["answerOption"]
                        .as_array()
                        .is_some_and(|o| o.iter().any(|o| ordinal(o).is_some()))
            })
            .map(|(l, _)| *l)
            .filter(|l| !scored.iter().any(|(s, _)| s == l))
            .collect();
        required.sort_unstable();
        if !required.is_empty() {
            return Err(FhirError::Unprocessable(format!(
                "a {} response must answer every required scored item; missing: {}",
                response["status"].as_str().unwrap_or_default(),
                required.join(", ")
            )));
        }
    }
    Ok(Scored {
        total: scored.iter().map(|(_, s)| s).sum(),
        items: scored,
    })
}

/// A number as FHIR JSON: an integer when it is one.
pub fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instrument(name: &str) -> Value {
        crate::care::instruments::embedded()
            .into_iter()
            .find(|q| q["id"] == name)
            .unwrap()
    }

    /// A response choosing, for each scored item in order, the option with score `scores[i]`.
    fn response(q: &Value, scores: &[u8]) -> Value {
        let scored: Vec<&Value> = q["item"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|it| it["answerOption"].is_array())
            .collect();
        let items: Vec<Value> = scored
            .iter()
            .zip(scores)
            .map(|(it, s)| {
                let opt = it["answerOption"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| ordinal(o) == Some(*s as f64))
                    .unwrap();
                json!({"linkId": it["linkId"], "answer": [{"valueCoding": opt["valueCoding"]}]})
            })
            .collect();
        json!({"resourceType": "QuestionnaireResponse", "status": "completed", "item": items})
    }

    /// Every answer pattern of PHQ-9 (4^9) and GAD-7 (4^7) scores the independent sum of its
    /// item scores, and falls in exactly the published band.
    #[test]
    fn every_answer_pattern_scores_its_sum_and_band() {
        type Bands = &'static [(u8, u8, &'static str)];
        let published: [(&str, usize, Bands); 2] = [
            (
                "phq-9",
                9,
                &[
                    (0, 4, "minimal"),
                    (5, 9, "mild"),
                    (10, 14, "moderate"),
                    (15, 19, "moderately-severe"),
                    (20, 27, "severe"),
                ],
            ),
            (
                "gad-7",
                7,
                &[
                    (0, 4, "minimal"),
                    (5, 9, "mild"),
                    (10, 14, "moderate"),
                    (15, 21, "severe"),
                ],
            ),
        ];
        for (name, n, bands) in published {
            let q = instrument(name);
            let scoring = Scoring::of(&q).unwrap().unwrap();
            // The answer items of each score, built once: 4^9 responses are many.
            let items: Vec<Vec<Value>> = (0..4u8)
                .map(|s| {
                    response(&q, &vec![s; n])["item"]
                        .as_array()
                        .unwrap()
                        .clone()
                })
                .collect();
            let mut count = 0;
            for pattern in 0..4u32.pow(n as u32) {
                let scores: Vec<u8> = (0..n).map(|i| ((pattern >> (2 * i)) & 3) as u8).collect();
                let want: u32 = scores.iter().map(|s| *s as u32).sum();
                let answers: Vec<Value> = scores
                    .iter()
                    .enumerate()
                    .map(|(i, s)| items[*s as usize][i].clone())
                    .collect();
                let r = json!({"resourceType": "QuestionnaireResponse", "status": "completed",
                    "item": answers});
                let got = score(&q, &scoring, &r).unwrap();
                assert_eq!(got.total, want as f64, "{name} {scores:?}");
                let band = bands
                    .iter()
                    .find(|(lo, hi, _)| (*lo as u32) <= want && want <= *hi as u32)
                    .unwrap()
                    .2;
                assert_eq!(
                    scoring.band(got.total).unwrap().interpretation["code"],
                    band,
                    "{name} total {want}"
                );
                count += 1;
            }
            assert_eq!(count, 4usize.pow(n as u32));
        }
    }

    #[test]
    fn the_clients_total_is_ignored_and_foreign_answers_refused() {
        let q = instrument("phq-9");
        let scoring = Scoring::of(&q).unwrap().unwrap();
        let mut r = response(&q, &[1; 9]);
        r["item"]
            .as_array_mut()
            .unwrap()
            .push(json!({"linkId": "44261-6", "answer": [{"valueInteger": 27}]}));
        assert_eq!(score(&q, &scoring, &r).unwrap().total, 9.0);
        let mut bad = response(&q, &[1; 9]);
        bad["item"][0]["answer"][0]["valueCoding"]["code"] = json!("LA-nope");
        assert!(matches!(
            score(&q, &scoring, &bad),
            Err(FhirError::Unprocessable(_))
        ));
        let mut short = response(&q, &[1; 9]);
        short["item"].as_array_mut().unwrap().pop();
        assert!(matches!(
            score(&q, &scoring, &short),
            Err(FhirError::Unprocessable(_))
        ));
        short["status"] = json!("in-progress");
        assert_eq!(score(&q, &scoring, &short).unwrap().total, 8.0);
    }

    #[test]
    fn malformed_scoring_is_refused() {
        let mut q = instrument("gad-7");
        q["extension"][0]["extension"][0]["valueCode"] = json!("mean");
        assert!(Scoring::of(&q).is_err());
        let mut q = instrument("gad-7");
        let exts = q["extension"][0]["extension"].as_array_mut().unwrap();
        exts.retain(|e| e["url"] != "totalCode");
        assert!(Scoring::of(&q).is_err());
        let mut q = instrument("gad-7");
        // The first band [0, 4] widened to overlap [5, 9].
        q["extension"][0]["extension"][3]["extension"][1]["valueDecimal"] = json!(6);
        assert!(Scoring::of(&q).is_err());
        assert_eq!(
            Scoring::of(&json!({"resourceType": "Questionnaire"})).unwrap(),
            None
        );
    }
}
