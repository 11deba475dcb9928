//! The one crate that sees fhirbolt. It parses FHIR R4 strictly (JSON and XML) and converts between
//! the two formats, behind plain functions over strings, so fhirbolt's large generic serde code is
//! compiled here once (at a low opt-level) and never in the crates that call it.

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};

/// Why a resource could not be parsed: fhirbolt's message, which names the position in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// Runs a fhirbolt call, turning a panic inside it (fhirbolt unwraps on some unusual inputs) into a
/// `ParseError`, so no input can take a request down.
fn guarded<T>(f: impl FnOnce() -> Result<T, ParseError>) -> Result<T, ParseError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(ParseError(
            "the FHIR library could not process this resource".into(),
        ))
    })
}

fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    })
}

fn parse_json(json: &str) -> Result<Resource, ParseError> {
    fhirbolt::json::from_str(json, strict()).map_err(|e| ParseError(e.to_string()))
}

/// Parses a FHIR R4 JSON resource strictly and returns it re-serialized in canonical element order.
pub fn canonical_json(json: &str) -> Result<String, ParseError> {
    guarded(|| {
        let resource = parse_json(json)?;
        fhirbolt::json::to_string(&resource, None).map_err(|e| ParseError(e.to_string()))
    })
}

/// Parses a FHIR R4 XML resource strictly and returns it as FHIR JSON.
pub fn xml_to_json(xml: &str) -> Result<String, ParseError> {
    guarded(|| {
        let resource: Resource =
            fhirbolt::xml::from_str(xml, strict()).map_err(|e| ParseError(e.to_string()))?;
        fhirbolt::json::to_string(&resource, None).map_err(|e| ParseError(e.to_string()))
    })
}

/// Renders a FHIR R4 JSON resource (already validated) as FHIR XML.
pub fn json_to_xml(json: &str) -> Result<String, ParseError> {
    guarded(|| {
        let resource = parse_json(json)?;
        fhirbolt::xml::to_string(&resource, None).map_err(|e| ParseError(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing_refuses_unknown_elements() {
        let err =
            canonical_json(r#"{"resourceType":"Patient","favouriteColour":"blue"}"#).unwrap_err();
        assert!(err.0.contains("favouriteColour"), "{err}");
    }

    #[test]
    fn a_panic_inside_fhirbolt_is_an_error() {
        assert!(guarded::<()>(|| panic!("boom")).is_err());
    }

    #[test]
    fn json_and_xml_round_trip() {
        let json = r#"{"resourceType":"Patient","active":true,"name":[{"family":"Rivera"}]}"#;
        let xml = json_to_xml(json).unwrap();
        assert!(xml.contains(r#"<family value="Rivera"/>"#), "{xml}");
        let back: serde_json::Value = serde_json::from_str(&xml_to_json(&xml).unwrap()).unwrap();
        let orig: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(back, orig);
    }
}
