//! Element-level validation against the official R4 JSON schema (compiled into `r4-types.json` by
//! `tools/gen_r4_types.py`): unknown elements, wrong JSON types, primitive syntax, required code
//! bindings and calendar validity. It runs before fhirbolt's strict parse, so that every refusal names
//! the element's path (`Patient.name[0].family`); fhirbolt then checks what remains (choice types,
//! primitive/extension alignment, the XML form).

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::{FhirError, FhirResult};

enum Kind {
    Primitive(usize),
    Complex(String),
    Code(Vec<String>),
    Resource,
    Xhtml,
    ResourceType,
}

struct Element {
    kind: Kind,
    array: bool,
}

struct Primitive {
    name: String,
    json_type: String,
    pattern: Option<Regex>,
}

struct TypeMap {
    primitives: Vec<Primitive>,
    types: HashMap<String, HashMap<String, Element>>,
}

fn type_map() -> &'static TypeMap {
    static MAP: OnceLock<TypeMap> = OnceLock::new();
    MAP.get_or_init(|| {
        let raw: Value = serde_json::from_str(include_str!("r4-types.json"))
            .expect("r4-types.json is valid JSON (generated)");
        let mut primitives = Vec::new();
        let mut index = HashMap::new();
        for (name, def) in raw["primitives"].as_object().into_iter().flatten() {
            index.insert(name.clone(), primitives.len());
            primitives.push(Primitive {
                name: name.clone(),
                json_type: def[0].as_str().unwrap_or("string").to_string(),
                pattern: def[1]
                    .as_str()
                    .map(|p| Regex::new(p).expect("schema patterns are valid regexes")),
            });
        }
        let mut types = HashMap::new();
        for (name, props) in raw["types"].as_object().into_iter().flatten() {
            let mut elements = HashMap::new();
            for (prop, def) in props.as_object().into_iter().flatten() {
                let kind = def[0].as_str().unwrap_or_default();
                let kind = match kind.split_once(':') {
                    Some(("p", p)) => Kind::Primitive(index[p]),
                    Some(("c", c)) => Kind::Complex(c.to_string()),
                    Some(("e", codes)) => {
                        Kind::Code(codes.split('|').map(str::to_string).collect())
                    }
                    _ if kind == "r" => Kind::Resource,
                    _ if kind == "x" => Kind::Xhtml,
                    _ => Kind::ResourceType,
                };
                let array = def[1].as_bool().unwrap_or(false);
                elements.insert(prop.clone(), Element { kind, array });
            }
            types.insert(name.clone(), elements);
        }
        TypeMap { primitives, types }
    })
}

/// What the R4 schema says of element `name` of type `type_name` (a resource or a complex type,
/// e.g. `CarePlanActivityDetail`): whether it repeats, and its type when it is a complex one. None
/// when the type has no such element.
pub fn element_info(type_name: &str, name: &str) -> Option<(bool, Option<String>)> {
    let e = type_map().types.get(type_name)?.get(name)?;
    let complex = match &e.kind {
        Kind::Complex(c) => Some(c.clone()),
        _ => None,
    };
    Some((e.array, complex))
}

/// Checks a resource (a JSON object with `resourceType`) element by element.
pub fn validate_resource(resource: &Value) -> FhirResult<()> {
    let obj = resource
        .as_object()
        .ok_or_else(|| FhirError::invalid("a resource must be a JSON object", "$this"))?;
    let rt = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::invalid("resourceType is missing", "resourceType"))?;
    if !type_map().types.contains_key(rt) || rt.contains('_') {
        return Err(FhirError::invalid(
            format!("unknown resource type '{rt}'"),
            "resourceType",
        ));
    }
    check_object(rt, obj, rt)
}

fn check_object(type_name: &str, obj: &Map<String, Value>, path: &str) -> FhirResult<()> {
    let map = type_map();
    let Some(elements) = map.types.get(type_name) else {
        return Ok(());
    };
    if obj.is_empty() {
        return Err(FhirError::invalid(
            "an element must not be empty",
            path.to_string(),
        ));
    }
    for (name, value) in obj {
        let here = format!("{path}.{name}");
        let Some(element) = elements.get(name) else {
            return Err(FhirError::invalid(
                format!("unknown element '{name}' in {type_name}"),
                here,
            ));
        };
        if let Kind::ResourceType = element.kind {
            if value.as_str() != Some(type_name) {
                return Err(FhirError::invalid(
                    format!("resourceType must be '{type_name}'"),
                    here,
                ));
            }
            continue;
        }
        // `_name` elements (primitive extensions) may hold nulls to keep arrays aligned.
        let nullable = name.starts_with('_') || matches!(element.kind, Kind::Primitive(_));
        match (element.array, value) {
            (true, Value::Array(items)) => {
                if items.is_empty() {
                    return Err(FhirError::invalid("an array must not be empty", here));
                }
                for (i, item) in items.iter().enumerate() {
                    if item.is_null() && nullable {
                        continue;
                    }
                    check_value(element, item, &format!("{here}[{i}]"))?;
                }
            }
            (true, _) => {
                return Err(FhirError::invalid(
                    format!("'{name}' must be an array"),
                    here,
                ))
            }
            (false, Value::Array(_)) => {
                return Err(FhirError::invalid(
                    format!("'{name}' must not be an array"),
                    here,
                ))
            }
            (false, v) => check_value(element, v, &here)?,
        }
    }
    Ok(())
}

fn check_value(element: &Element, value: &Value, path: &str) -> FhirResult<()> {
    let map = type_map();
    match &element.kind {
        Kind::Primitive(i) => check_primitive(&map.primitives[*i], value, path),
        Kind::Code(codes) => match value.as_str() {
            Some(s) if codes.iter().any(|c| c == s) => Ok(()),
            Some(s) => Err(FhirError::invalid(
                format!(
                    "'{s}' is not one of the allowed codes ({})",
                    codes.join(", ")
                ),
                path.to_string(),
            )),
            None => Err(FhirError::invalid(
                "a code must be a string",
                path.to_string(),
            )),
        },
        Kind::Complex(type_name) => match value {
            Value::Object(obj) => check_object(type_name, obj, path),
            _ => Err(FhirError::invalid(
                format!("expected a {type_name} object"),
                path.to_string(),
            )),
        },
        Kind::Resource => {
            let rt = value.get("resourceType").and_then(Value::as_str);
            match (value, rt) {
                (Value::Object(obj), Some(rt))
                    if map.types.contains_key(rt) && !rt.contains('_') =>
                {
                    check_object(rt, obj, path)
                }
                _ => Err(FhirError::invalid(
                    "expected a resource with a known resourceType",
                    path.to_string(),
                )),
            }
        }
        Kind::Xhtml => match value {
            Value::String(s) if s.trim_start().starts_with("<div") => Ok(()),
            _ => Err(FhirError::invalid(
                "narrative must be an XHTML <div> string",
                path.to_string(),
            )),
        },
        Kind::ResourceType => Ok(()),
    }
}

fn check_primitive(p: &Primitive, value: &Value, path: &str) -> FhirResult<()> {
    let bad = |why: String| Err(FhirError::invalid(why, path.to_string()));
    let text = match (p.json_type.as_str(), value) {
        ("string", Value::String(s)) => s.clone(),
        ("boolean", Value::Bool(_)) => return Ok(()),
        ("number", Value::Number(n)) => n.to_string(),
        _ => {
            return bad(format!(
                "expected a JSON {} for FHIR {}, found {}",
                p.json_type,
                p.name,
                json_kind(value)
            ))
        }
    };
    if let Some(re) = &p.pattern {
        if !re.is_match(&text) {
            return bad(format!("'{text}' is not a valid FHIR {}", p.name));
        }
    }
    let calendar_checked = matches!(p.name.as_str(), "date" | "dateTime" | "instant");
    if calendar_checked && text.len() >= 10 && !valid_calendar_date(&text[..10]) {
        return bad(format!("'{text}' is not a valid FHIR {}", p.name));
    }
    if p.name == "integer" || p.name == "positiveInt" || p.name == "unsignedInt" {
        match text.parse::<i64>() {
            Ok(n) if n <= i32::MAX as i64 && n >= i32::MIN as i64 => {}
            _ => return bad(format!("'{text}' is out of range for FHIR {}", p.name)),
        }
    }
    Ok(())
}

fn valid_calendar_date(s: &str) -> bool {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, fmt).is_ok()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path_of(v: Value) -> String {
        match validate_resource(&v) {
            Err(FhirError::Invalid {
                expression: Some(e),
                ..
            }) => e,
            other => panic!("expected an invalid-content error, got {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_path() {
        let p = |extra: Value| {
            let mut base = json!({"resourceType": "Patient", "name": [{"family": "Rivera"}]});
            for (k, v) in extra.as_object().unwrap() {
                base[k] = v.clone();
            }
            base
        };
        assert_eq!(
            path_of(p(json!({"favouriteColour": "blue"}))),
            "Patient.favouriteColour"
        );
        assert_eq!(path_of(p(json!({"birthDate": 12}))), "Patient.birthDate");
        assert_eq!(
            path_of(p(json!({"birthDate": "2020-13-45"}))),
            "Patient.birthDate"
        );
        assert_eq!(
            path_of(p(json!({"birthDate": "2021-02-29"}))),
            "Patient.birthDate"
        );
        assert_eq!(path_of(p(json!({"gender": "sometimes"}))), "Patient.gender");
        assert_eq!(
            path_of(p(json!({"name": [{"family": "A", "given": [""]}]}))),
            "Patient.name[0].given[0]"
        );
    }

    #[test]
    fn valid_resources_pass() {
        let v = json!({"resourceType": "Observation", "status": "final", "code": {"text": "PHQ-9"},
            "valueQuantity": {"value": 1.50, "unit": "score"}, "effectiveDateTime": "2024-03-01T10:00:00Z",
            "contained": [{"resourceType": "Patient", "id": "p1"}]});
        validate_resource(&v).unwrap();
    }
}
