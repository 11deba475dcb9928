//! Referential integrity: what a write stores may refer only to resources that exist here, and
//! what is deleted must not be referenced by anything live. Absolute references to other servers,
//! contained (`#`) references and types this server does not hold are not checked.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Stored;
use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::store::{self, DbConn};

/// `(path, Type, id)` of a local reference; `(path, urn)` of a `urn:` one.
type LocalRef = (String, String, String);
type UrnRef = (String, String);

/// How many referrers a refused delete lists.
const LISTED: usize = 5;

/// The local references in `resource`: `(path, Type, id)`, e.g. `("CarePlan.subject", "Patient",
/// "p1")`. `base` is the server's own base URL (absolute references to it are local).
pub fn local_references(resource: &Value, base: &str) -> Vec<LocalRef> {
    references(resource, base).0
}

/// The local references, and the `urn:uuid:` / `urn:oid:` ones `(path, urn)`: those stand for
/// entries of a transaction, and one left after the rewriting stands for nothing.
fn references(resource: &Value, base: &str) -> (Vec<LocalRef>, Vec<UrnRef>) {
    let mut out = Vec::new();
    let mut urns = Vec::new();
    let root = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource")
        .to_string();
    walk(resource, &root, base, &mut out, &mut urns);
    (out, urns)
}

fn walk(v: &Value, path: &str, base: &str, out: &mut Vec<LocalRef>, urns: &mut Vec<UrnRef>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                // Contained resources carry their own references, local to the container.
                if k == "contained" {
                    continue;
                }
                let p = format!("{path}.{k}");
                // `reference` is a Reference's string, or an element named so that holds a
                // Reference (CarePlan.activity.reference).
                if let (true, Some(r)) = (k == "reference", child.as_str()) {
                    if let Some((t, id)) = local(r, base) {
                        out.push((p, t, id));
                    } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
                        urns.push((p, r.to_string()));
                    }
                } else {
                    walk(child, &p, base, out, urns);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), base, out, urns);
            }
        }
        _ => {}
    }
}

/// `Type/id` (relative, or absolute on this server, with or without `/_history/v`) of a type this
/// server holds.
pub(crate) fn local(reference: &str, base: &str) -> Option<(String, String)> {
    let r = reference
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(reference);
    if r.contains("://") || r.starts_with('#') || r.starts_with("urn:") {
        return None;
    }
    let mut parts = r.split('/');
    let (t, id) = (parts.next()?, parts.next()?);
    match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) | (Some("_history"), Some(_), None) => {}
        _ => return None,
    }
    (fhir::is_enabled(t) && fhir::valid_id(id)).then(|| (t.to_string(), id.to_string()))
}

/// 422 naming the first reference of `written` whose target does not exist (or is deleted); 409
/// naming a few referrers of the first deleted resource something live still references. Each
/// written version comes with the name its errors give it (`Observation/1`, or a Bundle entry).
/// `listable(type)`: whether the caller may see every resource of the type (referrers it may not
/// see are counted, not named).
pub fn check(
    conn: &mut DbConn,
    base: &str,
    written: &[(&Stored, String)],
    listable: &dyn Fn(&str) -> bool,
) -> FhirResult<()> {
    // Targets by type, with the first place each is referred to from.
    let mut wanted: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (s, name) in written {
        let Some(content) = &s.content else { continue };
        let v: Value = serde_json::from_str(content)
            .map_err(|e| FhirError::Internal(format!("stored resource: {e}")))?;
        let (refs, urns) = references(&v, base);
        if let Some((path, urn)) = urns.first() {
            return Err(FhirError::Unprocessable(format!(
                "{path} of {name} refers to {urn}, which no entry of the transaction stands for \
                 (referential integrity)"
            )));
        }
        // An update is held only to the references it adds: one its previous version already
        // had (to something since deleted) does not block unrelated changes.
        let before: BTreeSet<(String, String)> = match s.version {
            1 => BTreeSet::new(),
            v => store::version(conn, &s.resource_type, &s.id, Some(v - 1))?
                .filter(|r| !r.is_deleted())
                .and_then(|r| serde_json::from_str::<Value>(&r.content).ok())
                .map(|old| {
                    local_references(&old, base)
                        .into_iter()
                        .map(|(_, t, id)| (t, id))
                        .collect()
                })
                .unwrap_or_default(),
        };
        for (path, t, id) in refs {
            if before.contains(&(t.clone(), id.clone())) {
                continue;
            }
            wanted
                .entry(t)
                .or_default()
                .entry(id)
                .or_insert_with(|| format!("{path} of {name}"));
        }
    }
    for (t, ids) in &wanted {
        let list: Vec<String> = ids.keys().cloned().collect();
        let mut live = BTreeSet::new();
        for chunk in list.chunks(500) {
            for hit in store::search::live_locked(conn, t, chunk)? {
                live.insert(hit.res_id);
            }
        }
        if let Some((id, at)) = ids.iter().find(|(id, _)| !live.contains(*id)) {
            return Err(FhirError::Unprocessable(format!(
                "{at} refers to {t}/{id}, which does not exist here (referential integrity)"
            )));
        }
    }
    for (s, name) in written.iter().filter(|(s, _)| s.content.is_none()) {
        let hits = referrers(conn, &s.resource_type, &s.id, LISTED)?;
        if !hits.is_empty() {
            let mut names: Vec<String> = hits
                .iter()
                .filter(|(t, _)| listable(t))
                .map(|(t, i)| format!("{t}/{i}"))
                .collect();
            let hidden = hits.len() - names.len();
            if hidden > 0 {
                names.push(format!(
                    "{hidden} resource(s) outside what the token may read"
                ));
            }
            return Err(FhirError::Conflict(format!(
                "{name} is still referenced by {}; delete those first, or ask for _cascade=delete",
                names.join(", ")
            )));
        }
    }
    Ok(())
}

/// Live resources that reference `ty/id`.
pub fn referrers(
    conn: &mut DbConn,
    ty: &str,
    id: &str,
    limit: usize,
) -> FhirResult<Vec<(String, String)>> {
    Ok(store::search::referrers(conn, ty, id, limit)?
        .into_iter()
        .filter(|h| !(h.res_type == ty && h.res_id == id))
        .map(|h| (h.res_type, h.res_id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_element_named_reference_holding_a_reference_is_followed() {
        let r = json!({"resourceType": "CarePlan",
            "activity": [{"reference": {"reference": "Task/t1"}}]});
        assert_eq!(
            local_references(&r, "http://x/fhir"),
            vec![(
                "CarePlan.activity[0].reference.reference".to_string(),
                "Task".to_string(),
                "t1".to_string()
            )]
        );
    }

    #[test]
    fn local_references_are_found_in_nested_elements_and_named_by_path() {
        let base = "http://x/fhir";
        let r = json!({"resourceType": "CarePlan", "subject": {"reference": "Patient/p1"},
            "activity": [{"detail": {"goal": [{"reference": "http://x/fhir/Goal/g1/_history/2"}]}}],
            "contained": [{"resourceType": "Goal", "subject": {"reference": "Patient/inner"}}],
            "author": {"reference": "https://elsewhere.example/fhir/Practitioner/1"},
            "careTeam": [{"reference": "#team"}, {"reference": "urn:uuid:1"}, {"reference": "Device/d"}]});
        let mut refs = local_references(&r, base);
        refs.sort();
        assert_eq!(
            refs,
            vec![
                (
                    "CarePlan.activity[0].detail.goal[0].reference".to_string(),
                    "Goal".to_string(),
                    "g1".to_string()
                ),
                (
                    "CarePlan.subject.reference".to_string(),
                    "Patient".to_string(),
                    "p1".to_string()
                ),
            ]
        );
    }
}
