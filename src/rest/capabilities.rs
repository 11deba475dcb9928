//! The CapabilityStatement, built from the type registry and stating only what the server does.

use serde_json::{json, Value};

use crate::fhir::{format_instant, ENABLED_TYPES, FHIR_VERSION};

/// The type-level interactions every enabled type supports.
const INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
];

pub fn capability_statement(base_url: &str) -> Value {
    let interactions: Vec<Value> = INTERACTIONS.iter().map(|c| json!({"code": c})).collect();
    let resources: Vec<Value> = ENABLED_TYPES
        .iter()
        .map(|t| {
            json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalRead": "full-support",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
            })
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
            "resource": resources,
            "interaction": [{"code": "history-system"}],
        }],
    })
}
