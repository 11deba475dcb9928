//! `_summary` and `_elements`: the parts of a resource a client asked for. Which elements are in
//! the summary, and which are mandatory, comes from the official StructureDefinitions
//! (compiled into `r4-summary.json`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subset {
    /// `_summary=true`: the elements marked isSummary.
    Summary,
    /// `_summary=text`: text, id, meta and the mandatory elements.
    Text,
    /// `_summary=data`: everything but the narrative.
    Data,
    /// `_elements=a,b`: those, plus id and meta.
    Elements(Vec<String>),
}

#[derive(Deserialize)]
struct Lists {
    summary: Vec<String>,
    mandatory: Vec<String>,
}

fn lists(resource_type: &str) -> Option<&'static Lists> {
    static MAP: OnceLock<HashMap<String, Lists>> = OnceLock::new();
    MAP.get_or_init(|| {
        serde_json::from_str(include_str!("r4-summary.json")).expect("r4-summary.json is valid")
    })
    .get(resource_type)
}

/// Whether JSON key `key` is element `name` (`deceased[x]` covers `deceasedBoolean`; `_birthDate`
/// goes with `birthDate`).
fn is_element(key: &str, name: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    match name.strip_suffix("[x]") {
        Some(stem) => key
            .strip_prefix(stem)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => key == name,
    }
}

/// The subset of `resource`, tagged SUBSETTED in `meta.tag` as the spec asks (except for `Data`,
/// which only drops the narrative).
pub fn subset(resource: &Value, mode: &Subset) -> Value {
    let Some(obj) = resource.as_object() else {
        return resource.clone();
    };
    let ty = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let keep: Box<dyn Fn(&str) -> bool> = match mode {
        Subset::Data => Box::new(|k: &str| k != "text"),
        Subset::Summary => {
            let l = lists(ty);
            Box::new(move |k: &str| l.is_some_and(|l| l.summary.iter().any(|n| is_element(k, n))))
        }
        Subset::Text => {
            let l = lists(ty);
            Box::new(move |k: &str| {
                k == "text" || l.is_some_and(|l| l.mandatory.iter().any(|n| is_element(k, n)))
            })
        }
        Subset::Elements(names) => {
            let names = names.clone();
            Box::new(move |k: &str| names.iter().any(|n| is_element(k, n)))
        }
    };
    let mut out = Map::new();
    for (k, v) in obj {
        if k == "resourceType" || k == "id" || k == "meta" || keep(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    if *mode != Subset::Data {
        let meta = out.entry("meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            let tags = m.entry("tag").or_insert_with(|| json!([]));
            if let Some(t) = tags.as_array_mut() {
                t.push(
                    json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED", "display": "subsetted"}),
                );
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_text_data_and_elements() {
        let p = json!({"resourceType": "Patient", "id": "1", "text": {"status": "generated", "div": "<div/>"},
            "name": [{"family": "A"}], "deceasedBoolean": false, "photo": [{"url": "x"}], "gender": "female"});
        let s = subset(&p, &Subset::Summary);
        assert!(s.get("name").is_some() && s.get("deceasedBoolean").is_some());
        assert!(s.get("photo").is_none() && s.get("text").is_none());
        assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
        let t = subset(&p, &Subset::Text);
        assert!(t.get("text").is_some() && t.get("name").is_none());
        let d = subset(&p, &Subset::Data);
        assert!(d.get("text").is_none() && d.get("photo").is_some() && d.get("meta").is_none());
        let e = subset(&p, &Subset::Elements(vec!["gender".into()]));
        assert_eq!(e.as_object().unwrap().len(), 4, "{e}");
    }
}
