//! Request bodies in, response bodies out. Parsing is strict: the JSON is checked for depth, then
//! element by element against the R4 schema, then parsed by fhirbolt; what is kept is fhirbolt's
//! canonical re-serialization, so every stored resource is valid R4 in canonical element order.

use serde_json::Value;

use super::validate::validate_resource;
use crate::error::{FhirError, FhirResult};

/// The deepest nesting of objects and arrays (or XML elements) a resource may have.
pub const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }
}

/// Parses and validates one resource from a request body.
pub fn parse_resource(body: &[u8], format: Format) -> FhirResult<Value> {
    let (value, json_text) = parse_object(body, format)?;
    if !value.is_object() {
        return Err(FhirError::BadRequest(
            "the request body must be a JSON object holding one resource".into(),
        ));
    }
    validate_resource(&value)?;
    let canonical = cairn_fhir::canonical_json(&json_text)
        .map_err(|e| FhirError::BadRequest(format!("invalid FHIR R4 resource: {e}")))?;
    serde_json::from_str(&canonical).map_err(|e| FhirError::Internal(e.to_string()))
}

/// A request body as a JSON object, checked for syntax and depth only: for bodies whose parts are
/// checked one by one (a batch Bundle's entries) or that are not resources (a JSON Patch).
pub fn parse_json_body(body: &[u8], format: Format) -> FhirResult<Value> {
    let (value, _) = parse_object(body, format)?;
    Ok(value)
}

fn parse_object(body: &[u8], format: Format) -> FhirResult<(Value, String)> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FhirError::BadRequest("the request body is empty".into()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| FhirError::BadRequest("the request body is not valid UTF-8".into()))?;
    let json_text = match format {
        Format::Json => {
            check_depth(text.bytes(), b'{', b'[', b'}', b']')?;
            text.to_string()
        }
        Format::Xml => {
            check_xml_depth(text)?;
            cairn_fhir::xml_to_json(text)
                .map_err(|e| FhirError::BadRequest(format!("invalid FHIR XML: {e}")))?
        }
    };
    let value: Value = serde_json::from_str(&json_text)
        .map_err(|e| FhirError::BadRequest(format!("invalid JSON: {e}")))?;
    if !value.is_object() && !value.is_array() {
        return Err(FhirError::BadRequest(
            "the request body must be a JSON object holding one resource".into(),
        ));
    }
    Ok((value, json_text))
}

/// Checks a resource built on the server (a patched resource, a Bundle entry) as strictly as a
/// request body, and returns its canonical form.
pub fn check_resource(value: &Value) -> FhirResult<Value> {
    if !value.is_object() {
        return Err(FhirError::BadRequest(
            "a resource must be a JSON object".into(),
        ));
    }
    validate_resource(value)?;
    let text = serde_json::to_string(value).map_err(|e| FhirError::Internal(e.to_string()))?;
    let canonical = cairn_fhir::canonical_json(&text)
        .map_err(|e| FhirError::BadRequest(format!("invalid FHIR R4 resource: {e}")))?;
    serde_json::from_str(&canonical).map_err(|e| FhirError::Internal(e.to_string()))
}

/// Refuses JSON nested deeper than MAX_DEPTH before any recursive parser sees it.
fn check_depth(
    bytes: impl Iterator<Item = u8>,
    open_a: u8,
    open_b: u8,
    close_a: u8,
    close_b: u8,
) -> FhirResult<()> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if b == b'"' {
            in_string = true;
        } else if b == open_a || b == open_b {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(too_deep());
            }
        } else if b == close_a || b == close_b {
            depth = depth.saturating_sub(1);
        }
    }
    Ok(())
}

/// The same guard for XML: counts open elements (not comments, declarations or self-closing tags),
/// and refuses a document that ends with elements still open (fhirbolt's reader would accept it).
fn check_xml_depth(text: &str) -> FhirResult<()> {
    let mut depth = 0usize;
    let mut rest = text;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        if tag.starts_with('/') {
            depth = depth.saturating_sub(1);
        } else if !(tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/')) {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(too_deep());
            }
        }
        rest = &rest[end.min(rest.len())..];
    }
    if depth != 0 {
        return Err(FhirError::BadRequest(
            "the XML ends before all of its elements are closed".into(),
        ));
    }
    Ok(())
}

fn too_deep() -> FhirError {
    FhirError::BadRequest(format!(
        "the resource is nested more than {MAX_DEPTH} levels deep"
    ))
}

/// Serializes a resource in the negotiated format.
pub fn render(value: &Value, format: Format, pretty: bool) -> FhirResult<String> {
    let json = if pretty && format == Format::Json {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .map_err(|e| FhirError::Internal(e.to_string()))?;
    match format {
        Format::Json => Ok(json),
        Format::Xml => cairn_fhir::json_to_xml(&json)
            .map_err(|e| FhirError::Internal(format!("XML rendering failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!(
            r#"{{"resourceType":"Patient","extension":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let err = parse_resource(deep.as_bytes(), Format::Json).unwrap_err();
        assert!(err.to_string().contains("nested"), "{err}");
        let brackets_in_strings = r#"{"resourceType":"Patient","name":[{"family":"[[[[[[[["}]}"#;
        check_depth(brackets_in_strings.bytes(), b'{', b'[', b'}', b']').unwrap();
    }

    #[test]
    fn truncated_xml_is_refused() {
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><name><family value="A"/>"#;
        assert_eq!(
            parse_resource(xml.as_bytes(), Format::Xml)
                .unwrap_err()
                .status(),
            400
        );
        let whole = r#"<?xml version="1.0"?><!-- c --><Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>"#;
        parse_resource(whole.as_bytes(), Format::Xml).unwrap();
    }

    #[test]
    fn empty_and_truncated_bodies_are_bad_requests() {
        for body in [
            "",
            "  ",
            r#"{"resourceType":"Patient","name":[{"family":"Ri"#,
            "[1,2,3]",
        ] {
            let err = parse_resource(body.as_bytes(), Format::Json).unwrap_err();
            assert_eq!(err.status(), 400, "{body}: {err}");
        }
    }
}
