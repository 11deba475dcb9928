//! Search parameters as data: the official R4 SearchParameter definitions (compiled into
//! `r4-search-parameters.json` by `tools/gen_search_params.py`), with their FHIRPath expressions
//! parsed once, per enabled resource type.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::fhirpath::{self, Expr};
use crate::fhir::ENABLED_TYPES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawParam {
    code: String,
    url: String,
    #[serde(rename = "type")]
    kind: ParamType,
    base: Vec<String>,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<RawComponent>,
    #[serde(default)]
    experimental: bool,
}

#[derive(Debug, Deserialize)]
struct RawComponent {
    definition: String,
    expression: String,
}

/// One composite component: the parameter it is defined by, and its expression relative to the
/// composite's root element.
#[derive(Debug)]
pub struct Component {
    pub definition: String,
    pub expression: Expr,
}

#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamType,
    pub expression: Option<Expr>,
    pub targets: Vec<String>,
    pub components: Vec<Component>,
}

impl SearchParam {
    /// Whether values are extracted into the index (the special and expression-less ones are not;
    /// `_id` and `_lastUpdated` live on the resource row itself).
    pub fn indexed(&self) -> bool {
        self.expression.is_some()
            && self.kind != ParamType::Special
            && self.code != "_id"
            && self.code != "_lastUpdated"
    }
}

pub struct Registry {
    by_type: HashMap<String, BTreeMap<String, Arc<SearchParam>>>,
    by_url: HashMap<String, Arc<SearchParam>>,
}

impl Registry {
    /// The parameters of a type (including the common `Resource` ones), by code.
    pub fn params(&self, resource_type: &str) -> Option<&BTreeMap<String, Arc<SearchParam>>> {
        self.by_type.get(resource_type)
    }

    pub fn get(&self, resource_type: &str, code: &str) -> Option<&Arc<SearchParam>> {
        self.by_type.get(resource_type)?.get(code)
    }

    pub fn by_url(&self, url: &str) -> Option<&Arc<SearchParam>> {
        self.by_url.get(url)
    }
}

pub fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let raw: Vec<RawParam> = serde_json::from_str(include_str!("r4-search-parameters.json"))
            .expect("r4-search-parameters.json is valid (generated)");
        let mut by_type: HashMap<String, BTreeMap<String, Arc<SearchParam>>> = HashMap::new();
        let mut by_url = HashMap::new();
        let kept = |t: &str, code: &str| {
            ONLY.iter()
                .find(|(ty, _)| *ty == t)
                .is_none_or(|(_, codes)| codes.contains(&code))
        };
        for r in raw {
            let parse =
                |e: &str| fhirpath::parse(e).unwrap_or_else(|err| panic!("{}: {err}", r.code));
            let param = Arc::new(SearchParam {
                expression: r.expression.as_deref().filter(|e| !e.is_empty()).map(parse),
                components: r
                    .component
                    .iter()
                    .map(|c| Component {
                        definition: c.definition.clone(),
                        expression: parse(&c.expression),
                    })
                    .collect(),
                code: r.code,
                url: r.url,
                kind: r.kind,
                targets: r.target,
            });
            by_url.insert(param.url.clone(), param.clone());
            for base in &r.base {
                let types: Vec<&str> = match base.as_str() {
                    "Resource" | "DomainResource" => ENABLED_TYPES.to_vec(),
                    t => vec![t],
                };
                for t in types.into_iter().filter(|t| kept(t, &param.code)) {
                    let entry = by_type.entry(t.to_string()).or_default();
                    // A type's own definition wins over a common one with the same code, and a
                    // standard one over an experimental example (e.g. Condition `subject`).
                    let common = base == "Resource" || base == "DomainResource";
                    if !entry.contains_key(&param.code) || (!common && !r.experimental) {
                        entry.insert(param.code.clone(), param.clone());
                    }
                }
            }
        }
        Registry { by_type, by_url }
    })
}

/// Types whose index holds only the parameters their users search by: the audit trail gets an
/// AuditEvent on every request, and each indexed parameter costs on each of them.
const ONLY: &[(&str, &[&str])] = &[(
    "AuditEvent",
    &[
        "_id",
        "_lastUpdated",
        "date",
        "patient",
        "entity",
        "agent",
        "action",
        "outcome",
        "type",
        "subtype",
    ],
)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enabled_type_has_its_parameters_and_the_common_ones() {
        let reg = registry();
        for t in ENABLED_TYPES {
            let params = reg.params(t).unwrap();
            if let Some((_, only)) = ONLY.iter().find(|(ty, _)| ty == t) {
                let mut have: Vec<&str> = params.keys().map(String::as_str).collect();
                let mut want = only.to_vec();
                have.sort();
                want.sort();
                assert_eq!(have, want, "{t} indexes exactly its listed parameters");
                continue;
            }
            for common in [
                "_id",
                "_lastUpdated",
                "_tag",
                "_profile",
                "_security",
                "_source",
            ] {
                assert!(params.contains_key(common), "{t} lacks {common}");
            }
        }
        let obs = reg.get("Observation", "code-value-quantity").unwrap();
        assert_eq!(obs.kind, ParamType::Composite);
        assert_eq!(obs.components.len(), 2);
        assert_eq!(reg.get("Patient", "name").unwrap().kind, ParamType::String);
        assert_eq!(reg.get("CarePlan", "goal").unwrap().targets, ["Goal"]);
    }
}
