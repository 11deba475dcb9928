//! The one error type of the FHIR API. Every layer returns `FhirError`; `http` renders it exactly once,
//! as an OperationOutcome with the matching HTTP status. Internal details are logged, never sent.

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// Malformed or invalid content: `expression` names the element, when known.
    #[error("{message}")]
    Invalid {
        message: String,
        expression: Option<String>,
    },
    #[error("{0}")]
    BadRequest(String),
    /// No valid access token (401, with `WWW-Authenticate: Bearer`). `presented`: a token was
    /// sent but is not valid (as opposed to none at all).
    #[error("{message}")]
    Unauthorized { message: String, presented: bool },
    /// The token's scopes or patient compartment do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Conflict(String),
    /// Another writer changed the same resource first; the engine retries or reports 409.
    #[error("the resource was changed by another request at the same time; retry")]
    WriteConflict,
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    /// The client's rate limit is spent; retry after this many seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// A bug or an unexpected failure: the detail goes to the log, the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl FhirError {
    pub fn invalid(message: impl Into<String>, expression: impl Into<String>) -> Self {
        FhirError::Invalid {
            message: message.into(),
            expression: Some(expression.into()),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            FhirError::Invalid { .. } | FhirError::BadRequest(_) => 400,
            FhirError::Unauthorized { .. } => 401,
            FhirError::Forbidden(_) => 403,
            FhirError::NotFound(_) => 404,
            FhirError::MethodNotAllowed(_) => 405,
            FhirError::NotAcceptable(_) => 406,
            FhirError::Conflict(_) | FhirError::WriteConflict => 409,
            FhirError::Gone(_) => 410,
            FhirError::PreconditionFailed(_) => 412,
            FhirError::PayloadTooLarge(_) => 413,
            FhirError::UnsupportedMediaType(_) => 415,
            FhirError::Unprocessable(_) => 422,
            FhirError::Internal(_) => 500,
            FhirError::Unavailable(_) => 503,
            FhirError::TooManyRequests { .. } => 429,
        }
    }

    /// The OperationOutcome `issue.code` (FHIR R4 valueset issue-type).
    fn issue_code(&self) -> &'static str {
        match self {
            FhirError::Invalid { .. } => "invalid",
            FhirError::BadRequest(_) => "invalid",
            FhirError::Unauthorized { .. } => "login",
            FhirError::Forbidden(_) => "forbidden",
            FhirError::NotFound(_) | FhirError::Gone(_) => "not-found",
            FhirError::MethodNotAllowed(_) | FhirError::NotAcceptable(_) => "not-supported",
            FhirError::UnsupportedMediaType(_) => "not-supported",
            FhirError::Conflict(_) | FhirError::WriteConflict => "conflict",
            FhirError::PreconditionFailed(_) => "conflict",
            FhirError::PayloadTooLarge(_) => "too-costly",
            FhirError::Unprocessable(_) => "processing",
            FhirError::Unavailable(_) => "transient",
            FhirError::TooManyRequests { .. } => "throttled",
            FhirError::Internal(_) => "exception",
        }
    }

    /// The same error, its message prefixed with where it happened (a Bundle entry, say). An
    /// element path becomes relative to `path_prefix` when one is given.
    pub fn within(self, prefix: &str, path_prefix: Option<&str>) -> FhirError {
        let p = |m: String| format!("{prefix}: {m}");
        match self {
            FhirError::Invalid {
                message,
                expression,
            } => FhirError::Invalid {
                message: p(message),
                // `Patient.name[0]` inside an entry is `Bundle.entry[3].resource.name[0]`.
                expression: match (expression, path_prefix) {
                    (Some(e), Some(pp)) => Some(match e.split_once('.') {
                        Some((head, rest)) if head.starts_with(char::is_uppercase) => {
                            format!("{pp}.{rest}")
                        }
                        _ if e.starts_with(char::is_uppercase) => pp.to_string(),
                        _ => format!("{pp}.{e}"),
                    }),
                    (e, _) => e,
                },
            },
            FhirError::BadRequest(m) => FhirError::BadRequest(p(m)),
            FhirError::Unauthorized { message, presented } => FhirError::Unauthorized {
                message: p(message),
                presented,
            },
            FhirError::Forbidden(m) => FhirError::Forbidden(p(m)),
            FhirError::NotFound(m) => FhirError::NotFound(p(m)),
            FhirError::Gone(m) => FhirError::Gone(p(m)),
            FhirError::MethodNotAllowed(m) => FhirError::MethodNotAllowed(p(m)),
            FhirError::NotAcceptable(m) => FhirError::NotAcceptable(p(m)),
            FhirError::Conflict(m) => FhirError::Conflict(p(m)),
            FhirError::PreconditionFailed(m) => FhirError::PreconditionFailed(p(m)),
            FhirError::PayloadTooLarge(m) => FhirError::PayloadTooLarge(p(m)),
            FhirError::UnsupportedMediaType(m) => FhirError::UnsupportedMediaType(p(m)),
            FhirError::Unprocessable(m) => FhirError::Unprocessable(p(m)),
            FhirError::Unavailable(m) => FhirError::Unavailable(p(m)),
            FhirError::TooManyRequests {
                message,
                retry_after,
            } => FhirError::TooManyRequests {
                message: p(message),
                retry_after,
            },
            // Kept as they are: the engine retries the one, the other is logged and hidden.
            e @ (FhirError::WriteConflict | FhirError::Internal(_)) => e,
        }
    }

    pub fn operation_outcome(&self) -> Value {
        let text = match self {
            FhirError::Internal(_) => "An internal error occurred; see the server log".to_string(),
            other => other.to_string(),
        };
        let mut issue = json!({
            "severity": if self.status() >= 500 { "fatal" } else { "error" },
            "code": self.issue_code(),
            "diagnostics": fhir_string(&text),
        });
        if let FhirError::Invalid {
            expression: Some(e),
            ..
        } = self
        {
            issue["expression"] = json!([fhir_string(e)]);
        }
        json!({"resourceType": "OperationOutcome", "issue": [issue]})
    }
}

/// Text made a valid FHIR `string` (`[ \r\n\t\S]+`): a message may quote what a client sent,
/// control characters and odd whitespace included; those are shown as `\u{..}` escapes.
fn fhir_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (c.is_control() || c.is_whitespace()) && !matches!(c, ' ' | '\r' | '\n' | '\t') {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    if out.trim().is_empty() {
        out = "(no detail)".into();
    }
    out
}

/// An OperationOutcome that reports success (for `Prefer: return=OperationOutcome`).
pub fn information_outcome(message: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational", "diagnostics": message}]})
}

pub type FhirResult<T> = Result<T, FhirError>;

impl From<crate::auth::AuthError> for FhirError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::Unavailable(_) => FhirError::Unavailable(e.to_string()),
            other => FhirError::Unauthorized {
                presented: !matches!(other, crate::auth::AuthError::Missing),
                message: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client sent, quoted in a message, never makes the OperationOutcome invalid FHIR.
    #[test]
    fn diagnostics_are_valid_fhir_strings() {
        let e = FhirError::NotAcceptable("_format=|\u{2}x\u{c}\u{a0}y is not supported".into());
        let d = e.operation_outcome()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(d, "_format=|\\u{2}x\\u{c}\\u{a0}y is not supported");
        assert!(d
            .chars()
            .all(|c| !c.is_control() && (!c.is_whitespace() || c == ' ')));
        assert_eq!(fhir_string("\u{1}"), "\\u{1}");
        assert_eq!(fhir_string("line\nnext\tcol"), "line\nnext\tcol");
    }
}
