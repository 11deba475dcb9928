//! The resource-type registry: the engine is generic, and this list (data, not code) says which types
//! the server exposes. Every other type answers 404.

pub const FHIR_VERSION: &str = "4.0.1";

/// The resource types Cairn serves, in the order the CapabilityStatement lists them.
pub const ENABLED_TYPES: &[&str] = &[
    "CarePlan",
    "CareTeam",
    "Condition",
    "Flag",
    "Goal",
    "Observation",
    "Patient",
    "Practitioner",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "Task",
    "AuditEvent",
];

/// Types only the server writes (the audit trail): clients may read and search them, never create,
/// update or delete them (405), and system-wide search and history leave them out unless asked
/// for by `_type`.
pub const SERVER_WRITTEN: &[&str] = &["AuditEvent"];

pub fn is_server_written(resource_type: &str) -> bool {
    SERVER_WRITTEN.contains(&resource_type)
}

pub fn is_enabled(resource_type: &str) -> bool {
    ENABLED_TYPES.contains(&resource_type)
}

/// FHIR R4 `id`: 1 to 64 of `A-Z a-z 0-9 - .`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_syntax_follows_r4() {
        assert!(valid_id("abc-123.X"));
        assert!(!valid_id(""));
        assert!(!valid_id("bad id!"));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(valid_id(&"a".repeat(64)));
    }
}
