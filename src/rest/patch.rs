//! PATCH bodies: JSON Patch (RFC 6902, `application/json-patch+json`) and FHIRPath Patch (a
//! `Parameters` resource, http://hl7.org/fhir/R4/fhirpatch.html). Either is applied to a copy of the
//! current version; the caller validates the result like any update.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::search::fhirpath;

/// Limits on what a patch may ask: its paths are parsed recursively, and a JSON Patch `copy` can
/// double the document each time.
const MAX_PATH_LEN: usize = 512;
const MAX_PATH_NESTING: usize = 16;
const MAX_OPERATIONS: usize = 1000;
const MAX_PATCHED_SIZE: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub enum Patch {
    Json(json_patch::Patch),
    FhirPath(Vec<FpOp>),
}

/// One FHIRPath Patch operation.
#[derive(Debug, Clone)]
pub struct FpOp {
    kind: String,
    path: String,
    expr: fhirpath::Expr,
    name: Option<String>,
    value: Option<Value>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

/// One step of a location in a JSON document.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

impl Patch {
    /// A JSON Patch document: an array of operations.
    pub fn json(body: &Value) -> FhirResult<Patch> {
        let p = serde_json::from_value::<json_patch::Patch>(body.clone())
            .map_err(|e| FhirError::BadRequest(format!("not a valid JSON Patch document: {e}")))?;
        if p.0.len() > MAX_OPERATIONS {
            return Err(FhirError::BadRequest(format!(
                "a patch may hold at most {MAX_OPERATIONS} operations"
            )));
        }
        Ok(Patch::Json(p))
    }

    /// A FHIRPath Patch: `Parameters` with one `operation` parameter per operation.
    pub fn fhirpath(body: &Value) -> FhirResult<Patch> {
        if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(FhirError::BadRequest(
                "a FHIRPath Patch is a Parameters resource".into(),
            ));
        }
        let params = body
            .get("parameter")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut ops = Vec::new();
        for (i, p) in params.iter().enumerate() {
            if p.get("name").and_then(Value::as_str) != Some("operation") {
                return Err(FhirError::invalid(
                    "every parameter of a FHIRPath Patch is named 'operation'",
                    format!("Parameters.parameter[{i}].name"),
                ));
            }
            ops.push(FpOp::parse(p, i)?);
        }
        if ops.is_empty() || ops.len() > MAX_OPERATIONS {
            return Err(FhirError::BadRequest(format!(
                "a FHIRPath Patch holds 1 to {MAX_OPERATIONS} operations"
            )));
        }
        Ok(Patch::FhirPath(ops))
    }

    /// The patch in a transaction entry: `Parameters` (FHIRPath Patch) or a `Binary` holding a JSON
    /// Patch document.
    pub fn from_entry(resource: &Value) -> FhirResult<Patch> {
        match resource.get("resourceType").and_then(Value::as_str) {
            Some("Parameters") => Patch::fhirpath(resource),
            Some("Binary") => {
                let ct = resource
                    .get("contentType")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !ct.starts_with("application/json-patch+json") {
                    return Err(FhirError::UnsupportedMediaType(format!(
                        "a Binary patch must be application/json-patch+json, not '{ct}'"
                    )));
                }
                let data = resource
                    .get("data")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|_| FhirError::BadRequest("Binary.data is not base64".into()))?;
                let doc: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| FhirError::BadRequest(format!("Binary.data is not JSON: {e}")))?;
                Patch::json(&doc)
            }
            other => Err(FhirError::BadRequest(format!(
                "a PATCH entry holds Parameters or Binary, not {}",
                other.unwrap_or("nothing")
            ))),
        }
    }

    /// Applies the patch to `doc`; 422 when an operation cannot apply.
    pub fn apply(&self, mut doc: Value) -> FhirResult<Value> {
        match self {
            Patch::Json(p) => {
                // One operation at a time, so a document that grows past the limit stops at once
                // (the copy is discarded on any error, which keeps the patch atomic).
                for (i, op) in p.0.iter().enumerate() {
                    json_patch::patch(&mut doc, std::slice::from_ref(op)).map_err(|e| {
                        FhirError::Unprocessable(format!(
                            "JSON Patch operation {i} does not apply: {e}"
                        ))
                    })?;
                    if matches!(
                        op,
                        json_patch::PatchOperation::Copy(_) | json_patch::PatchOperation::Add(_)
                    ) && serde_json::to_vec(&doc).map_or(0, |v| v.len()) > MAX_PATCHED_SIZE
                    {
                        return Err(FhirError::PayloadTooLarge(format!(
                            "the patched resource would exceed {MAX_PATCHED_SIZE} bytes"
                        )));
                    }
                }
                Ok(doc)
            }
            Patch::FhirPath(ops) => {
                for (i, op) in ops.iter().enumerate() {
                    op.apply(&mut doc).map_err(|why| {
                        FhirError::Unprocessable(format!(
                            "FHIRPath Patch operation {i} ({} at '{}'): {why}",
                            op.kind, op.path
                        ))
                    })?;
                }
                Ok(doc)
            }
        }
    }
}

impl FpOp {
    fn parse(p: &Value, i: usize) -> FhirResult<FpOp> {
        let at = |name: &str| format!("Parameters.parameter[{i}].part({name})");
        let parts = p
            .get("part")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let part = |name: &str| {
            parts
                .iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some(name))
        };
        let text = |name: &str| -> Option<String> {
            part(name).and_then(|x| {
                x.as_object()?
                    .iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .and_then(|(_, v)| v.as_str().map(str::to_string))
            })
        };
        let number = |name: &str| -> FhirResult<Option<usize>> {
            match part(name) {
                None => Ok(None),
                Some(x) => x
                    .get("valueInteger")
                    .and_then(Value::as_u64)
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| {
                        FhirError::invalid("must be a non-negative valueInteger", at(name))
                    }),
            }
        };
        let kind = text("type").ok_or_else(|| FhirError::invalid("missing", at("type")))?;
        let path = text("path").ok_or_else(|| FhirError::invalid("missing", at("path")))?;
        // The parser recurses per nesting level and per operand: bounded before it runs.
        let mut depth = 0usize;
        let mut deepest = 0usize;
        for c in path.chars() {
            match c {
                '(' | '[' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ')' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if path.len() > MAX_PATH_LEN || deepest > MAX_PATH_NESTING {
            return Err(FhirError::invalid(
                format!(
                    "a path is at most {MAX_PATH_LEN} characters and {MAX_PATH_NESTING} levels deep"
                ),
                at("path"),
            ));
        }
        let expr = fhirpath::parse(&path).map_err(|e| {
            FhirError::invalid(
                format!("'{path}' is not a FHIRPath this server evaluates: {e}"),
                at("path"),
            )
        })?;
        let op = FpOp {
            name: text("name"),
            value: part("value").map(value_of),
            index: number("index")?,
            source: number("source")?,
            destination: number("destination")?,
            kind,
            path,
            expr,
        };
        let need = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(FhirError::invalid(
                    format!("a '{}' operation needs {what}", op.kind),
                    format!("Parameters.parameter[{i}]"),
                ))
            }
        };
        match op.kind.as_str() {
            "add" => need(op.name.is_some() && op.value.is_some(), "a name and a value")?,
            "insert" => need(op.index.is_some() && op.value.is_some(), "an index and a value")?,
            "delete" => {}
            "replace" => need(op.value.is_some(), "a value")?,
            "move" => need(
                op.source.is_some() && op.destination.is_some(),
                "a source and a destination",
            )?,
            other => {
                return Err(FhirError::invalid(
                    format!("'{other}' is not a FHIRPath Patch operation (add, insert, delete, replace, move)"),
                    at("type"),
                ))
            }
        }
        Ok(op)
    }

    fn apply(&self, doc: &mut Value) -> Result<(), String> {
        let found = locate(doc, &self.expr);
        match self.kind.as_str() {
            "add" => {
                let [loc] = found.as_slice() else {
                    return Err(format!(
                        "the path selects {} elements, not one",
                        found.len()
                    ));
                };
                let name = self.name.clone().unwrap_or_default();
                let repeats = repeats(doc, loc, &name);
                let value = self.value.clone().unwrap_or(Value::Null);
                let Some(Value::Object(container)) = get_mut(doc, loc) else {
                    return Err("the path does not select an element that has children".into());
                };
                match (container.get_mut(&name), repeats) {
                    (Some(Value::Array(items)), _) => items.push(value),
                    (Some(_), _) => return Err(format!("'{name}' is already present")),
                    (None, Some(true)) => {
                        container.insert(name, Value::Array(vec![value]));
                    }
                    (None, Some(false)) => {
                        container.insert(name, value);
                    }
                    (None, None) => return Err(format!("'{name}' is not an element here")),
                }
                Ok(())
            }
            "insert" => {
                let (items, _) = list_of(doc, &found)?;
                let index = self.index.unwrap_or_default();
                if index > items.len() {
                    return Err(format!("index {index} is past the end of the list"));
                }
                items.insert(index, self.value.clone().unwrap_or(Value::Null));
                Ok(())
            }
            "delete" => match found.as_slice() {
                [] => Ok(()),
                [loc] => {
                    remove(doc, loc);
                    Ok(())
                }
                _ => Err(format!(
                    "the path selects {} elements, not one",
                    found.len()
                )),
            },
            "replace" => {
                let [loc] = found.as_slice() else {
                    return Err(format!(
                        "the path selects {} elements, not one",
                        found.len()
                    ));
                };
                let target = get_mut(doc, loc).ok_or("the element is gone")?;
                *target = self.value.clone().unwrap_or(Value::Null);
                Ok(())
            }
            "move" => {
                let (items, _) = list_of(doc, &found)?;
                let (from, to) = (
                    self.source.unwrap_or_default(),
                    self.destination.unwrap_or_default(),
                );
                if from >= items.len() || to >= items.len() {
                    return Err("source or destination is past the end of the list".into());
                }
                let item = items.remove(from);
                items.insert(to, item);
                Ok(())
            }
            _ => Err("unknown operation".into()),
        }
    }
}

/// The value of a `value` part: its `value[x]`, or an object built from its own parts.
fn value_of(part: &Value) -> Value {
    if let Some((_, v)) = part
        .as_object()
        .into_iter()
        .flatten()
        .find(|(k, _)| k.starts_with("value"))
    {
        return v.clone();
    }
    let mut obj = Map::new();
    for p in part
        .get("part")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = p.get("name").and_then(Value::as_str) {
            obj.insert(name.to_string(), value_of(p));
        }
    }
    Value::Object(obj)
}

/// Where in `doc` the nodes `expr` selects are: the evaluator returns references into the
/// document, found again by address.
fn locate(doc: &Value, expr: &fhirpath::Expr) -> Vec<Vec<Step>> {
    let targets: Vec<*const Value> = fhirpath::evaluate(expr, doc)
        .iter()
        .filter_map(|n| match n.value {
            fhirpath::NodeValue::Json(v) => Some(v as *const Value),
            fhirpath::NodeValue::Owned(_) => None,
        })
        .collect();
    let mut out = Vec::new();
    let mut path = Vec::new();
    find(doc, &targets, &mut path, &mut out);
    out
}

fn find(v: &Value, targets: &[*const Value], path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    if targets.contains(&(v as *const Value)) {
        out.push(path.clone());
    }
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                path.push(Step::Key(k.clone()));
                find(child, targets, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Step::Index(i));
                find(child, targets, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(doc: &'a mut Value, loc: &[Step]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for step in loc {
        cur = match step {
            Step::Key(k) => cur.get_mut(k.as_str())?,
            Step::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// Removes the element at `loc` (an emptied list goes too).
fn remove(doc: &mut Value, loc: &[Step]) {
    let Some((last, parent)) = loc.split_last() else {
        return;
    };
    let Some(p) = get_mut(doc, parent) else {
        return;
    };
    match (last, p) {
        (Step::Key(k), Value::Object(m)) => {
            m.shift_remove(k);
        }
        (Step::Index(i), Value::Array(items)) => {
            if *i < items.len() {
                items.remove(*i);
            }
            if items.is_empty() {
                remove(doc, parent);
            }
        }
        _ => {}
    }
}

/// The list the selected elements are the items of (insert and move name a list by its items).
fn list_of<'a>(
    doc: &'a mut Value,
    found: &[Vec<Step>],
) -> Result<(&'a mut Vec<Value>, Vec<Step>), String> {
    let parent = match found.first() {
        Some(loc) => match loc.split_last() {
            Some((Step::Index(_), parent)) => parent.to_vec(),
            _ => return Err("the path does not select the items of a list".into()),
        },
        None => return Err("the path selects nothing".into()),
    };
    if found
        .iter()
        .any(|l| l.len() != parent.len() + 1 || l[..parent.len()] != parent[..])
    {
        return Err("the path selects items of more than one list".into());
    }
    match get_mut(doc, &parent) {
        Some(Value::Array(items)) => Ok((items, parent)),
        _ => Err("the path does not select the items of a list".into()),
    }
}

/// Whether element `name` of the element at `loc` repeats, from the R4 schema (None: no such
/// element).
fn repeats(doc: &Value, loc: &[Step], name: &str) -> Option<bool> {
    let mut ty = doc.get("resourceType")?.as_str()?.to_string();
    for step in loc {
        if let Step::Key(k) = step {
            ty = fhir::element_info(&ty, k)?.1?;
        }
    }
    fhir::element_info(&ty, name).map(|(array, _)| array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(kind: &str, path: &str, extra: Vec<Value>) -> Value {
        let mut part = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        part.extend(extra);
        json!({"name": "operation", "part": part})
    }

    fn fp(ops: Vec<Value>) -> Patch {
        Patch::fhirpath(&json!({"resourceType": "Parameters", "parameter": ops})).unwrap()
    }

    #[test]
    fn fhirpath_patch_adds_replaces_inserts_moves_and_deletes() {
        let doc = json!({"resourceType": "Patient", "id": "p", "active": true,
            "name": [{"family": "A"}, {"family": "B"}], "gender": "male"});
        let p = fp(vec![
            op(
                "add",
                "Patient",
                vec![
                    json!({"name": "name", "valueString": "birthDate"}),
                    json!({"name": "value", "valueDate": "1930-01-01"}),
                ],
            ),
            op(
                "add",
                "Patient",
                vec![
                    json!({"name": "name", "valueString": "telecom"}),
                    json!({"name": "value", "valueContactPoint": {"system": "phone", "value": "1"}}),
                ],
            ),
            op(
                "replace",
                "Patient.gender",
                vec![json!({"name": "value", "valueCode": "female"})],
            ),
            op(
                "insert",
                "Patient.name",
                vec![
                    json!({"name": "index", "valueInteger": 0}),
                    json!({"name": "value", "valueHumanName": {"family": "Z"}}),
                ],
            ),
            op(
                "move",
                "Patient.name",
                vec![
                    json!({"name": "source", "valueInteger": 0}),
                    json!({"name": "destination", "valueInteger": 2}),
                ],
            ),
            op("delete", "Patient.active", vec![]),
            op("delete", "Patient.name.where(family = 'A')", vec![]),
        ]);
        let out = p.apply(doc).unwrap();
        assert_eq!(out["birthDate"], "1930-01-01");
        assert_eq!(out["telecom"], json!([{"system": "phone", "value": "1"}]));
        assert_eq!(out["gender"], "female");
        assert_eq!(out["name"], json!([{"family": "B"}, {"family": "Z"}]));
        assert!(out.get("active").is_none());
    }

    #[test]
    fn fhirpath_patch_refuses_what_cannot_apply() {
        let doc = json!({"resourceType": "Patient", "id": "p", "gender": "male"});
        let unknown = fp(vec![op(
            "add",
            "Patient",
            vec![
                json!({"name": "name", "valueString": "favouriteColour"}),
                json!({"name": "value", "valueString": "blue"}),
            ],
        )]);
        assert_eq!(unknown.apply(doc.clone()).unwrap_err().status(), 422);
        let twice = fp(vec![op(
            "add",
            "Patient",
            vec![
                json!({"name": "name", "valueString": "gender"}),
                json!({"name": "value", "valueCode": "female"}),
            ],
        )]);
        assert_eq!(twice.apply(doc).unwrap_err().status(), 422);
        assert!(
            Patch::fhirpath(&json!({"resourceType": "Parameters", "parameter": [
            {"name": "operation", "part": [{"name": "type", "valueCode": "frobnicate"},
                {"name": "path", "valueString": "Patient"}]}]}))
            .is_err()
        );
    }

    #[test]
    fn json_patch_applies_atomically() {
        let doc = json!({"resourceType": "Patient", "id": "p", "name": [{"given": ["A"]}]});
        let ok =
            Patch::json(&json!([{"op": "add", "path": "/name/0/given/-", "value": "B"}])).unwrap();
        assert_eq!(
            ok.apply(doc.clone()).unwrap()["name"][0]["given"],
            json!(["A", "B"])
        );
        let bad = Patch::json(&json!([{"op": "add", "path": "/x", "value": 1},
            {"op": "remove", "path": "/nothing"}]))
        .unwrap();
        assert_eq!(bad.apply(doc).unwrap_err().status(), 422);
        assert!(Patch::json(&json!({"op": "add"})).is_err());
    }
}
