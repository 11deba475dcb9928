//! The standard instruments (PHQ-9, GAD-7) as canonical Questionnaires. Copies of
//! `shared/instruments/*.json` are built into the binary (a test keeps them identical) and loaded
//! once: at startup, and with `cairn instruments load [--dir D]` for more.

use serde_json::Value;

use crate::error::{FhirError, FhirResult};

/// The built-in instruments, in the files' own form.
const EMBEDDED: &[(&str, &str)] = &[
    ("phq-9.json", include_str!("instruments/phq-9.json")),
    ("gad-7.json", include_str!("instruments/gad-7.json")),
];

/// The built-in instruments.
pub fn embedded() -> Vec<Value> {
    EMBEDDED
        .iter()
        .map(|(name, text)| {
            serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("built-in {name} is not JSON: {e}"))
        })
        .collect()
}

/// The Questionnaires in the `*.json` files of a directory (other resource types are skipped).
pub fn from_dir(dir: &std::path::Path) -> FhirResult<Vec<Value>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| FhirError::BadRequest(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| FhirError::BadRequest(format!("cannot read {}: {e}", path.display())))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| FhirError::BadRequest(format!("{} is not JSON: {e}", path.display())))?;
        if v["resourceType"] == "Questionnaire" {
            out.push(v);
        }
    }
    Ok(out)
}

/// The condition that finds an instrument: its canonical url and version.
pub fn condition(q: &Value) -> FhirResult<String> {
    let url = q["url"]
        .as_str()
        .ok_or_else(|| FhirError::Unprocessable("an instrument needs a canonical url".into()))?;
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    s.append_pair("url", url);
    if let Some(v) = q["version"].as_str() {
        s.append_pair("version", v);
    }
    Ok(s.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in copies are the files of `shared/instruments`, and every instrument there is
    /// built in.
    #[test]
    fn built_in_copies_match_the_shared_instruments() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/instruments");
        if !dir.is_dir() {
            eprintln!("{} is absent: nothing to compare", dir.display());
            return;
        }
        let shared = from_dir(&dir).unwrap();
        assert!(shared.len() >= 2);
        let built_in = embedded();
        for q in &shared {
            assert!(
                built_in.contains(q),
                "{} differs from its built-in copy, or is not built in: copy it to src/care/instruments/ \
                 and list it in EMBEDDED",
                q["url"]
            );
        }
        assert_eq!(shared.len(), built_in.len());
    }
}
