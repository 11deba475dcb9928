//! Index extraction: from a resource, the typed values of every search parameter of its type,
//! computed by evaluating the parameters' FHIRPath expressions. `store` writes them to the index
//! tables in the same transaction as the resource.

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use super::fhirpath::{self, reference_parts, Node};
use super::params::{registry, ParamType, SearchParam};
use crate::fhir::parse_instant_range;

pub const UCUM: &str = "http://unitsofmeasure.org";

/// Longest string kept in the string index (longer values are cut, on a char boundary).
const MAX_STRING: usize = 512;

#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    String {
        norm: String,
        exact: String,
    },
    Token {
        system: String,
        code: String,
        text_norm: String,
        type_system: String,
        type_code: String,
    },
    Reference {
        target_type: String,
        target_id: String,
        url: String,
        ident_system: String,
        ident_value: String,
    },
    Date {
        lo: i64,
        hi: i64,
    },
    Number {
        lo: f64,
        hi: f64,
    },
    Quantity(QuantityValue),
    Uri {
        value: String,
    },
    Composite {
        system1: String,
        code1: String,
        second: Box<IndexValue>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantityValue {
    pub lo: f64,
    pub hi: f64,
    pub system: String,
    pub code: String,
    /// The value in its canonical UCUM unit, when the unit is UCUM: (lo, hi, unit).
    pub canonical: Option<(f64, f64, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub param: String,
    pub value: IndexValue,
}

/// Case- and accent-insensitive form of a string, for string search.
pub fn normalize(s: &str) -> String {
    s.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_STRING) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// A value of a UCUM unit in its canonical unit: (value × factor + offset, canonical unit).
pub fn ucum_canonical(value: f64, code: &str) -> Option<(f64, String)> {
    if code.starts_with('{') && code.ends_with('}') {
        // An annotation alone ({score}) is the unity.
        return Some((value, "1".into()));
    }
    let c = octofhir_ucum::get_canonical_units(code).ok()?;
    let v = value * c.factor.to_f64() + c.offset.to_f64();
    v.is_finite().then_some((v, c.unit))
}

/// Extracts every index entry of `resource`. `base_url` makes absolute references to this server
/// local ones.
pub fn extract(resource: &Value, base_url: &str) -> Vec<IndexEntry> {
    extract_where(resource, base_url, |_| true)
}

/// The index entries of the parameters whose code `wanted` accepts.
pub fn extract_where(
    resource: &Value,
    base_url: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<IndexEntry> {
    let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
        return vec![];
    };
    let Some(params) = registry().params(ty) else {
        return vec![];
    };
    let mut out = Vec::new();
    for param in params.values().filter(|p| p.indexed() && wanted(&p.code)) {
        let Some(expr) = &param.expression else {
            continue;
        };
        let nodes = fhirpath::evaluate(expr, resource);
        if param.kind == ParamType::Composite {
            composite(param, &nodes, base_url, &mut out);
            continue;
        }
        for node in &nodes {
            for value in values(param.kind, node, base_url) {
                out.push(IndexEntry {
                    param: param.code.clone(),
                    value,
                });
            }
        }
    }
    out.dedup();
    out
}

fn composite(param: &SearchParam, roots: &[Node], base_url: &str, out: &mut Vec<IndexEntry>) {
    let [first, second] = param.components.as_slice() else {
        return;
    };
    let Some(second_kind) = registry().by_url(&second.definition).map(|p| p.kind) else {
        return;
    };
    for root in roots {
        let root = std::slice::from_ref(root);
        let firsts: Vec<IndexValue> = fhirpath::evaluate_on(&first.expression, root)
            .iter()
            .flat_map(|n| values(ParamType::Token, n, base_url))
            .collect();
        let seconds: Vec<IndexValue> = fhirpath::evaluate_on(&second.expression, root)
            .iter()
            .flat_map(|n| values(second_kind, n, base_url))
            .collect();
        for f in &firsts {
            let IndexValue::Token { system, code, .. } = f else {
                continue;
            };
            if code.is_empty() {
                continue;
            }
            for s in &seconds {
                out.push(IndexEntry {
                    param: param.code.clone(),
                    value: IndexValue::Composite {
                        system1: system.clone(),
                        code1: code.clone(),
                        second: Box::new(s.clone()),
                    },
                });
            }
        }
    }
}

fn str_field<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The index values one node yields for a parameter of type `kind`.
pub fn values(kind: ParamType, node: &Node, base_url: &str) -> Vec<IndexValue> {
    let v = node.json();
    match kind {
        ParamType::String => strings(v)
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| IndexValue::String {
                norm: cut(&normalize(s)),
                exact: cut(s),
            })
            .collect(),
        ParamType::Token => tokens(v),
        ParamType::Reference => reference(v, base_url).into_iter().collect(),
        ParamType::Date => dates(v),
        ParamType::Number => v
            .as_f64()
            .map(|n| vec![IndexValue::Number { lo: n, hi: n }])
            .unwrap_or_default(),
        ParamType::Quantity => quantity(v).into_iter().map(IndexValue::Quantity).collect(),
        ParamType::Uri => v
            .as_str()
            .map(|s| vec![IndexValue::Uri { value: s.into() }])
            .unwrap_or_default(),
        ParamType::Composite | ParamType::Special => vec![],
    }
}

/// The searchable strings of a node: a primitive, or the parts of a HumanName or Address.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Object(o) => {
            let mut out = Vec::new();
            for key in [
                "family",
                "given",
                "prefix",
                "suffix",
                "text",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                match o.get(key) {
                    Some(Value::String(s)) => out.push(s.as_str()),
                    Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
                    _ => {}
                }
            }
            out
        }
        _ => vec![],
    }
}

fn token(system: &str, code: &str, text: &str) -> IndexValue {
    IndexValue::Token {
        system: system.into(),
        code: code.into(),
        text_norm: cut(&normalize(text)),
        type_system: String::new(),
        type_code: String::new(),
    }
}

const CONTACT_SYSTEMS: &[&str] = &["phone", "fax", "email", "pager", "url", "sms", "other"];

fn tokens(v: &Value) -> Vec<IndexValue> {
    match v {
        Value::String(s) => vec![token("", s, "")],
        Value::Bool(b) => vec![token("", if *b { "true" } else { "false" }, "")],
        Value::Object(o)
            if o.contains_key("coding") || (o.contains_key("text") && !o.contains_key("value")) =>
        {
            // CodeableConcept: each coding, plus its text.
            let mut out: Vec<IndexValue> = o
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    token(
                        str_field(c, "system"),
                        str_field(c, "code"),
                        str_field(c, "display"),
                    )
                })
                .collect();
            if let Some(text) = o.get("text").and_then(Value::as_str) {
                out.push(token("", "", text));
            }
            out
        }
        Value::Object(o) if o.contains_key("value") => {
            let system = str_field(v, "system");
            let value = str_field(v, "value");
            if o.contains_key("rank")
                || (CONTACT_SYSTEMS.contains(&system) && !o.contains_key("type"))
            {
                // ContactPoint
                return vec![token(system, value, "")];
            }
            // Identifier, with its type for :of-type.
            let types: Vec<(&str, &str)> = o
                .get("type")
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| (str_field(c, "system"), str_field(c, "code")))
                .collect();
            let text = v.get("type").map(|t| str_field(t, "text")).unwrap_or("");
            if types.is_empty() {
                return vec![token(system, value, text)];
            }
            types
                .into_iter()
                .map(|(ts, tc)| IndexValue::Token {
                    system: system.into(),
                    code: value.into(),
                    text_norm: cut(&normalize(text)),
                    type_system: ts.into(),
                    type_code: tc.into(),
                })
                .collect()
        }
        Value::Object(_) => vec![token(
            str_field(v, "system"),
            str_field(v, "code"),
            str_field(v, "display"),
        )],
        _ => vec![],
    }
}

/// A reference's target: local (`Type/id`, or an absolute URL under our base), or a URL.
fn reference(v: &Value, base_url: &str) -> Option<IndexValue> {
    let (mut target_type, mut target_id, mut url) = (String::new(), String::new(), String::new());
    let (mut ident_system, mut ident_value) = (String::new(), String::new());
    let literal = match v {
        Value::String(s) => Some(s.as_str()), // canonical or uri
        Value::Object(o) => {
            if let Some(ident) = o.get("identifier") {
                ident_system = str_field(ident, "system").into();
                ident_value = str_field(ident, "value").into();
            }
            o.get("reference").and_then(Value::as_str)
        }
        _ => None,
    };
    if let Some(r) = literal {
        if r.starts_with('#') {
            return None;
        }
        let local = r
            .strip_prefix(base_url)
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or(r);
        let is_relative = !local.contains("://") && !local.starts_with("urn:");
        match (is_relative, reference_parts(local)) {
            (true, Some((t, id))) => {
                target_type = t.into();
                target_id = id.into();
            }
            _ => url = r.split('|').next().unwrap_or(r).into(),
        }
    }
    if target_id.is_empty() && url.is_empty() && ident_value.is_empty() {
        return None;
    }
    Some(IndexValue::Reference {
        target_type,
        target_id,
        url,
        ident_system,
        ident_value,
    })
}

fn dates(v: &Value) -> Vec<IndexValue> {
    match v {
        Value::String(s) => parse_instant_range(s)
            .map(|r| {
                vec![IndexValue::Date {
                    lo: r.start,
                    hi: r.end,
                }]
            })
            .unwrap_or_default(),
        Value::Object(o) if o.contains_key("start") || o.contains_key("end") => {
            let lo = o
                .get("start")
                .and_then(Value::as_str)
                .and_then(parse_instant_range)
                .map_or(i64::MIN, |r| r.start);
            let hi = o
                .get("end")
                .and_then(Value::as_str)
                .and_then(parse_instant_range)
                .map_or(i64::MAX, |r| r.end);
            vec![IndexValue::Date { lo, hi }]
        }
        Value::Object(o) => o
            .get("event")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(dates)
            .collect(),
        _ => vec![],
    }
}

fn quantity(v: &Value) -> Vec<QuantityValue> {
    let one = |q: &Value, lo: Option<f64>, hi: Option<f64>| -> Option<QuantityValue> {
        let (lo, hi) = (lo?, hi?);
        let system = str_field(q, "system").to_string();
        let code = match str_field(q, "code") {
            "" => str_field(q, "unit"),
            c => c,
        }
        .to_string();
        let canonical = (system == UCUM)
            .then(|| {
                let (clo, unit) = ucum_canonical(lo, &code)?;
                let (chi, _) = ucum_canonical(hi, &code)?;
                Some((clo, chi, unit))
            })
            .flatten();
        Some(QuantityValue {
            lo,
            hi,
            system,
            code,
            canonical,
        })
    };
    match v {
        Value::Object(o) if o.contains_key("low") || o.contains_key("high") => {
            // Range
            let low = o.get("low");
            let high = o.get("high");
            let unit_of = low.or(high).cloned().unwrap_or(Value::Null);
            let lo = low
                .and_then(|l| l.get("value"))
                .and_then(Value::as_f64)
                .or(Some(f64::MIN));
            let hi = high
                .and_then(|h| h.get("value"))
                .and_then(Value::as_f64)
                .or(Some(f64::MAX));
            one(&unit_of, lo, hi).into_iter().collect()
        }
        Value::Object(o) => {
            let value = o.get("value").and_then(Value::as_f64);
            one(v, value, value).into_iter().collect()
        }
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries(r: Value, param: &str) -> Vec<IndexValue> {
        extract(&r, "http://h/fhir")
            .into_iter()
            .filter(|e| e.param == param)
            .map(|e| e.value)
            .collect()
    }

    #[test]
    fn names_fold_case_and_accents() {
        assert_eq!(normalize("Müller José"), "muller jose");
        let p = json!({"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Ana", "Luz"]}]});
        let names = entries(p, "name");
        assert_eq!(names.len(), 3);
        assert!(names.contains(&IndexValue::String {
            norm: "muller".into(),
            exact: "Müller".into()
        }));
    }

    #[test]
    fn references_quantities_dates_and_composites() {
        let o = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
            "subject": {"reference": "http://h/fhir/Patient/p1"},
            "effectivePeriod": {"start": "2024-03-01"},
            "valueQuantity": {"value": 500, "unit": "mg", "system": UCUM, "code": "mg"}});
        let subject = entries(o.clone(), "subject");
        assert!(
            matches!(&subject[0], IndexValue::Reference { target_type, target_id, .. }
            if target_type == "Patient" && target_id == "p1")
        );
        assert_eq!(entries(o.clone(), "patient"), subject);
        let IndexValue::Quantity(q) = &entries(o.clone(), "value-quantity")[0] else {
            panic!()
        };
        let (clo, _, unit) = q.canonical.clone().unwrap();
        assert!((clo - 0.5).abs() < 1e-9 && unit == "g", "{q:?}");
        let IndexValue::Date { hi, .. } = entries(o.clone(), "date")[0] else {
            panic!()
        };
        assert_eq!(hi, i64::MAX);
        let comp = entries(o, "code-value-quantity");
        assert!(matches!(&comp[0], IndexValue::Composite { code1, .. } if code1 == "44261-6"));
    }
}
