//! Search: parameter definitions as data (`params`), a FHIRPath subset to evaluate them
//! (`fhirpath`), index extraction at write time (`index`) and request parsing into a
//! backend-neutral plan (`query`). `store` runs the plan; `rest` builds the Bundle.

pub mod fhirpath;
mod index;
mod params;
mod query;

use std::collections::HashMap;
use std::sync::OnceLock;

pub use fhirpath::reference_parts;
pub use index::{extract, extract_where, normalize, IndexEntry, IndexValue, QuantityValue};
pub use params::{registry, ParamType, SearchParam};
pub use query::{
    parse, Condition, Include, Match, ParseOptions, Prefix, SearchQuery, SortKey, StringMatch,
    Summary, Total, UriMatch, Visibility, CURSOR,
};

/// The codes of a value set the server knows (the enumerable R4 value sets, compiled into
/// `r4-value-sets.json` by `tools/gen_value_sets.py`), by system; a `|version` suffix is ignored.
pub fn value_set(url: &str) -> Option<&'static HashMap<String, Vec<String>>> {
    static MAP: OnceLock<HashMap<String, HashMap<String, Vec<String>>>> = OnceLock::new();
    let url = url.split('|').next().unwrap_or(url);
    MAP.get_or_init(|| {
        serde_json::from_str(include_str!("r4-value-sets.json"))
            .expect("r4-value-sets.json is valid (generated)")
    })
    .get(url)
}

/// The patients whose compartment holds this resource (a Patient is in its own).
pub fn patients_in(resource: &serde_json::Value, base_url: &str) -> Vec<String> {
    let ty = resource
        .get("resourceType")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let Some(params) = patient_compartment(ty) else {
        return vec![];
    };
    let mut out: Vec<String> = Vec::new();
    if ty == "Patient" {
        if let Some(id) = resource.get("id").and_then(serde_json::Value::as_str) {
            out.push(id.to_string());
        }
    }
    for e in extract_where(resource, base_url, |c| params.iter().any(|p| p == c)) {
        if let IndexValue::Reference {
            target_type,
            target_id,
            ..
        } = e.value
        {
            if target_type == "Patient" && !out.contains(&target_id) {
                out.push(target_id);
            }
        }
    }
    out
}

/// The reference parameters by which a resource type belongs to the Patient compartment
/// (the R4 CompartmentDefinition, compiled into `r4-patient-compartment.json`).
pub fn patient_compartment(resource_type: &str) -> Option<&'static [String]> {
    static MAP: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    MAP.get_or_init(|| {
        serde_json::from_str(include_str!("r4-patient-compartment.json"))
            .expect("r4-patient-compartment.json is valid (generated)")
    })
    .get(resource_type)
    .map(Vec::as_slice)
}
