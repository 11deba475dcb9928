//! The CapabilityStatement, built from the type registry and stating only what the server does.

use serde_json::{json, Value};

use crate::fhir::{format_instant, is_enabled, ENABLED_TYPES, FHIR_VERSION};
use crate::search::{registry, ParamType};

/// The type-level interactions every enabled type supports.
const INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// The search parameters of a type as the CapabilityStatement lists them, with the `_include`
/// values it supports and the `_revinclude` values that point at it.
fn search_capabilities(t: &str) -> (Vec<Value>, Vec<String>, Vec<String>) {
    let reg = registry();
    let mut params = vec![];
    let mut includes = vec![];
    for (code, p) in reg.params(t).into_iter().flatten() {
        let supported = p.indexed() || code == "_id" || code == "_lastUpdated";
        if !supported {
            continue;
        }
        params.push(json!({"name": code, "definition": p.url, "type": p.kind.as_str()}));
        if p.kind == ParamType::Reference {
            includes.push(format!("{t}:{code}"));
        }
    }
    let mut revincludes = vec![];
    for source in ENABLED_TYPES {
        for (code, p) in reg.params(source).into_iter().flatten() {
            let targets_t = p.targets.iter().any(|x| x == t || x == "Resource");
            if p.kind == ParamType::Reference && p.indexed() && targets_t && is_enabled(source) {
                revincludes.push(format!("{source}:{code}"));
            }
        }
    }
    (params, includes, revincludes)
}

/// The statement; `security` is `rest.security` (how clients authorize, from `auth`).
pub fn capability_statement(base_url: &str, security: Value) -> Value {
    let interactions: Vec<Value> = INTERACTIONS.iter().map(|c| json!({"code": c})).collect();
    let resources: Vec<Value> = ENABLED_TYPES
        .iter()
        .map(|t| {
            let (search_params, includes, revincludes) = search_capabilities(t);
            let written_here = crate::fhir::is_server_written(t);
            let interactions: Vec<Value> = if written_here {
                ["read", "vread", "history-instance", "search-type"]
                    .iter()
                    .map(|c| json!({"code": c}))
                    .collect()
            } else {
                interactions.clone()
            };
            let mut r = json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": !written_here,
                "conditionalCreate": false,
                "conditionalRead": "full-support",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": search_params,
            });
            // FHIR forbids empty arrays.
            if !includes.is_empty() {
                r["searchInclude"] = json!(includes);
            }
            if !revincludes.is_empty() {
                r["searchRevInclude"] = json!(revincludes);
            }
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": format_instant(super::now_micros()),
        "publisher": "Cairn",
        "kind": "instance",
        "software": {"name": "Cairn", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Cairn FHIR R4 server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        "rest": [{
            "mode": "server",
            "security": security,
            "resource": resources,
            "interaction": [{"code": "history-system"}, {"code": "search-system"}],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capability_statement_is_valid_r4() {
        let security = json!({"description": "test"});
        let cs = capability_statement("http://h/fhir", security);
        crate::fhir::validate_resource(&cs).unwrap();
        let json = serde_json::to_string(&cs).unwrap();
        cairn_fhir::canonical_json(&json).unwrap();
        cairn_fhir::json_to_xml(&json).unwrap();
    }
}
