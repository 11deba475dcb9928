//! Authorization: who is calling (`Access`, from a validated Bearer token) and what they may touch.
//!
//! `scope` parses SMART scopes; `token` validates access tokens (the built-in issuer's and an
//! external OAuth 2 / OIDC provider's, through its JWKS); `keys` holds the server's own signing key;
//! `server` is the built-in authorization server (Backend Services client_credentials, client
//! registry, `cairn token`). Nothing here knows HTTP: `http` maps `AuthError` to 401 and `rest`
//! asks `Access::rule` before every interaction.

pub mod keys;
pub mod scope;
pub mod server;
pub mod token;

use std::collections::HashMap;

use serde_json::Value;

use crate::search::{self, Condition, IndexEntry, IndexValue, Match, ParamType, Visibility};
pub use scope::{parse_scopes, Context, Perm, Scope};

/// Types outside the Patient compartment that `patient/` scopes may read: the forms a patient fills
/// in and the clinicians on their care team. (Listed, so that enabling another type never opens it
/// to patient apps by accident.)
pub const SHARED_TYPES: &[&str] = &["Practitioner", "Questionnaire"];

/// The caller of one request, from its access token.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `client_id` (or `azp`, or `sub`) of the token.
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    /// The `fhirUser` claim (a Practitioner, Patient, RelatedPerson or Person reference).
    pub fhir_user: Option<String>,
    /// The `patient` claim: the compartment `patient/` scopes are limited to.
    pub patient: Option<String>,
    pub scopes: Vec<Scope>,
    /// Authorization is switched off (`--auth disabled`): everything is allowed.
    pub unrestricted: bool,
}

/// The client id the server's own work is recorded under.
pub const SERVER_ACTOR: &str = "cairn (server)";

/// What a token may do with one resource type for one kind of interaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Deny,
    /// Every resource of the type.
    All,
    /// Only resources one of these grants admits.
    Only(Vec<Grant>),
}

/// A part of a type a scope opens: the patient's compartment and/or a granular filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub patient: Option<String>,
    /// Token conditions from a granular scope's query, ANDed.
    pub filter: Vec<Condition>,
}

impl Access {
    /// Everything allowed: auth disabled, and the server's own internal work.
    pub fn unrestricted() -> Access {
        Access {
            unrestricted: true,
            ..Default::default()
        }
    }

    /// The server itself, for its own work (built-in instruments, derived resources): everything
    /// allowed, and named as the server in audit records.
    pub fn server() -> Access {
        Access {
            unrestricted: true,
            client_id: Some(SERVER_ACTOR.into()),
            ..Default::default()
        }
    }

    /// The rule for `perm` on `resource_type`: the union of what each scope grants.
    pub fn rule(&self, perm: Perm, resource_type: &str) -> Rule {
        if self.unrestricted {
            return Rule::All;
        }
        let compartment = search::patient_compartment(resource_type);
        let mut grants = Vec::new();
        for s in &self.scopes {
            if !s.covers_type(resource_type) || !s.perms.has(perm) {
                continue;
            }
            // The audit trail is for auditors: system/ scopes only.
            if crate::fhir::is_server_written(resource_type) && s.context != Context::System {
                continue;
            }
            let mut patient = None;
            if s.context == Context::Patient {
                let Some(p) = &self.patient else {
                    // A patient/ scope without a patient in context opens nothing.
                    continue;
                };
                match compartment {
                    Some(_) => patient = Some(p.clone()),
                    // Shared definitions and directories hold no patient's data: patient/ scopes
                    // may read them, never write them. Any other type outside the compartment
                    // stays closed.
                    None if SHARED_TYPES.contains(&resource_type)
                        && matches!(perm, Perm::Read | Perm::Search) => {}
                    None => continue,
                }
            }
            let Some(filter) = compile_filter(resource_type, &s.filter) else {
                tracing::warn!(scope = %s, "granular scope with an unsupported query grants nothing");
                continue;
            };
            if patient.is_none() && filter.is_empty() {
                return Rule::All;
            }
            grants.push(Grant { patient, filter });
        }
        if grants.is_empty() {
            Rule::Deny
        } else {
            Rule::Only(grants)
        }
    }

    /// The row-level visibility of `perm` over `types`, for the search planner; None when every
    /// type is wholly visible. Types the token cannot touch at all are absent.
    pub fn visibility<'a>(
        &self,
        perm: Perm,
        types: impl IntoIterator<Item = &'a str>,
    ) -> Option<Visibility> {
        if self.unrestricted {
            return None;
        }
        let mut map = HashMap::new();
        let mut restricted = false;
        for ty in types {
            match self.rule(perm, ty) {
                Rule::Deny => restricted = true,
                Rule::All => {
                    map.insert(ty.to_string(), vec![vec![]]);
                }
                Rule::Only(grants) => {
                    restricted = true;
                    map.insert(
                        ty.to_string(),
                        grants.iter().map(|g| g.conditions(ty)).collect(),
                    );
                }
            }
        }
        restricted.then_some(Visibility { types: map })
    }

    /// A short description for logs and the audit trail.
    pub fn who(&self) -> String {
        if self.unrestricted && self.client_id.is_none() {
            return "anonymous (auth disabled)".into();
        }
        self.client_id
            .clone()
            .or_else(|| self.subject.clone())
            .unwrap_or_else(|| "unknown client".into())
    }
}

/// Compiles a granular scope's query into conditions the server can check both in SQL and on one
/// resource in memory: token parameters only (SMART's examples: category, code, status). None for
/// anything else, so such a scope grants nothing rather than too much.
fn compile_filter(resource_type: &str, filter: &[(String, String)]) -> Option<Vec<Condition>> {
    if filter.is_empty() {
        return Some(vec![]);
    }
    let opts = search::ParseOptions {
        default_count: 1,
        max_count: 1,
        strict: true,
        base_url: "",
    };
    let q = search::parse(vec![resource_type.to_string()], filter, &opts).ok()?;
    let ok = !q.conditions.is_empty()
        && q.conditions.iter().all(|c| {
            matches!(c, Condition::Param { kind: ParamType::Token, negate: false, any, .. }
                if any.iter().all(|m| matches!(m, Match::Token { .. })))
        });
    ok.then_some(q.conditions)
}

impl Grant {
    /// The grant as search conditions on `resource_type`.
    pub fn conditions(&self, resource_type: &str) -> Vec<Condition> {
        let mut out = self.filter.clone();
        if let Some(p) = &self.patient {
            out.push(Condition::Compartment {
                comp_type: "Patient".into(),
                id: p.clone(),
                params: search::patient_compartment(resource_type)
                    .unwrap_or_default()
                    .to_vec(),
            });
        }
        out
    }

    /// Whether the resource `resource_type/id`, with these index entries, is within the grant.
    /// The same test as `conditions`, evaluated in memory (for reads, history and writes). For a
    /// write (`writing`), the resource must also stay out of every other patient's compartment.
    pub fn admits(
        &self,
        resource_type: &str,
        id: &str,
        entries: &[IndexEntry],
        writing: bool,
    ) -> bool {
        if let Some(p) = &self.patient {
            let params = search::patient_compartment(resource_type).unwrap_or_default();
            let own = resource_type == "Patient" && id == p;
            if writing && resource_type == "Patient" && !own {
                // Another Patient is that patient's own compartment, whatever it links to.
                return false;
            }
            let mut linked = false;
            for e in entries.iter().filter(|e| params.contains(&e.param)) {
                let IndexValue::Reference {
                    target_type,
                    target_id,
                    url,
                    ..
                } = &e.value
                else {
                    continue;
                };
                if target_type == "Patient" && target_id == p {
                    linked = true;
                    continue;
                }
                // Writing: no reference to another patient, local or as an absolute URL.
                let other = if target_type.is_empty() {
                    search::reference_parts(url).is_some_and(|(t, i)| t == "Patient" && i != p)
                } else {
                    target_type == "Patient"
                };
                if writing && other {
                    return false;
                }
            }
            if !own && !linked {
                return false;
            }
        }
        self.filter.iter().all(|c| match c {
            Condition::Param { param, any, .. } => entries.iter().any(|e| {
                e.param == *param
                    && matches!(&e.value, IndexValue::Token { system, code, .. }
                        if any.iter().any(|m| token_matches(m, system, code)))
            }),
            _ => false,
        })
    }
}

fn token_matches(m: &Match, system: &str, code: &str) -> bool {
    let Match::Token {
        system: ms,
        code: mc,
    } = m
    else {
        return false;
    };
    // `system|` (no code) matches codes of that system, never an empty one (as in SQL).
    ms.as_deref().is_none_or(|s| s == system)
        && match mc.as_deref() {
            Some(c) => c == code,
            None => !code.is_empty(),
        }
}

impl Rule {
    /// Whether the rule admits this resource (JSON as stored) to be read.
    pub fn admits(&self, resource_type: &str, id: &str, resource: &Value, base_url: &str) -> bool {
        self.check(resource_type, id, resource, base_url, false)
    }

    /// Whether the rule admits this content to be written (it must not reach into another
    /// patient's compartment either).
    pub fn admits_write(
        &self,
        resource_type: &str,
        id: &str,
        resource: &Value,
        base_url: &str,
    ) -> bool {
        self.check(resource_type, id, resource, base_url, true)
    }

    fn check(&self, ty: &str, id: &str, resource: &Value, base_url: &str, writing: bool) -> bool {
        match self {
            Rule::Deny => false,
            Rule::All => true,
            Rule::Only(grants) => {
                let entries = search::extract(resource, base_url);
                grants.iter().any(|g| g.admits(ty, id, &entries, writing))
            }
        }
    }
}

/// Authorization as configured: on or off, the token validator and the built-in server.
pub struct Auth {
    pub enabled: bool,
    pub validator: token::Validator,
    pub server: server::AuthServer,
}

impl Auth {
    /// From the settings of a server bound to `port`: loads (or first creates) the signing key in
    /// the data directory, and reads a static JWKS file if one is configured.
    pub fn from_settings(s: &crate::config::Settings, port: u16) -> Result<Auth, String> {
        let a = &s.auth;
        let root = s.root_url_for(port);
        let key = keys::SigningKey::load_or_create(&s.data_dir)?;
        let issuer = a.issuer.clone().unwrap_or_else(|| format!("{root}/auth"));
        let audience = a.audience.clone().unwrap_or_else(|| s.base_url_for(port));
        if a.oidc_issuer.as_deref() == Some(issuer.as_str()) {
            return Err(format!(
                "CAIRN_OIDC_ISSUER must differ from the built-in issuer {issuer} (set CAIRN_AUTH_ISSUER)"
            ));
        }
        let external = match (&a.oidc_issuer, &a.oidc_jwks_url, &a.oidc_jwks_file) {
            (Some(iss), Some(url), _) => Some(token::External {
                issuer: iss.clone(),
                keys: token::KeySource::Remote(std::sync::Arc::new(token::RemoteKeys::new(
                    url.clone(),
                    std::time::Duration::from_secs(a.oidc_jwks_min_interval),
                    std::time::Duration::from_secs(a.oidc_jwks_max_age),
                ))),
            }),
            (Some(iss), None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read CAIRN_OIDC_JWKS_FILE {}: {e}", path.display())
                })?;
                let doc: Value = serde_json::from_str(&text)
                    .map_err(|e| format!("CAIRN_OIDC_JWKS_FILE is not JSON: {e}"))?;
                let keys = token::parse_jwks(&doc);
                if keys.is_empty() {
                    return Err(format!(
                        "CAIRN_OIDC_JWKS_FILE {} holds no usable signing key",
                        path.display()
                    ));
                }
                Some(token::External {
                    issuer: iss.clone(),
                    keys: token::KeySource::Static(keys),
                })
            }
            _ => None,
        };
        Ok(Auth {
            enabled: a.mode == crate::config::AuthMode::Enabled,
            validator: token::Validator {
                audience: audience.clone(),
                leeway: a.leeway,
                own_issuer: issuer.clone(),
                own_key: key.clone(),
                external,
                cache: token::TokenCache::default(),
            },
            server: server::AuthServer {
                issuer,
                audience,
                token_endpoint: format!("{root}/auth/token"),
                jwks_uri: format!("{root}/auth/jwks"),
                key,
                lifetime: a.token_lifetime,
                leeway: a.leeway,
            },
        })
    }

    /// The caller of a request with this `Authorization` header value.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<std::sync::Arc<Access>, AuthError> {
        if !self.enabled {
            return Ok(std::sync::Arc::new(Access::unrestricted()));
        }
        let header = authorization.ok_or(AuthError::Missing)?.trim();
        let (scheme, token) = header.split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Missing);
        }
        self.validator.validate(token.trim()).await
    }

    /// `CapabilityStatement.rest.security`: SMART on FHIR with the oauth-uris extension, or a
    /// plain statement that authorization is off.
    pub fn capability_security(&self) -> Value {
        if !self.enabled {
            return serde_json::json!({"description": "AUTHORIZATION IS DISABLED (--auth disabled): \
                every request is allowed without a token. For local experiments only."});
        }
        serde_json::json!({
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": self.server.token_endpoint}],
            }],
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                }],
                "text": "OAuth2 using SMART-on-FHIR profile (see .well-known/smart-configuration)",
            }],
            "description": "Every request needs a Bearer token with SMART App Launch 2.x scopes \
                (patient/, user/, system/; v1 and v2). Backend Services clients get tokens at the \
                token endpoint with a private_key_jwt client assertion.",
        })
    }

    /// Fetches an external provider's JWKS ahead of the first request (blocking).
    pub fn prefetch(&self) {
        if let Some(token::External {
            keys: token::KeySource::Remote(r),
            ..
        }) = &self.validator.external
        {
            r.prefetch();
        }
    }
}

/// Why a request has no valid caller (401).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("this request needs a Bearer access token")]
    Missing,
    #[error("the access token is not valid: {0}")]
    Invalid(String),
    /// The keys to check the token cannot be had right now (the provider's JWKS is unreachable).
    #[error("the access token cannot be checked now: {0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn access(scopes: &str, patient: Option<&str>) -> Access {
        Access {
            scopes: parse_scopes(scopes),
            patient: patient.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn rules_follow_context_type_and_permission() {
        let a = access("system/Observation.rs user/CarePlan.cud", None);
        assert_eq!(a.rule(Perm::Read, "Observation"), Rule::All);
        assert_eq!(a.rule(Perm::Create, "Observation"), Rule::Deny);
        assert_eq!(a.rule(Perm::Update, "CarePlan"), Rule::All);
        assert_eq!(a.rule(Perm::Read, "CarePlan"), Rule::Deny);
        assert_eq!(a.rule(Perm::Read, "Patient"), Rule::Deny);
        assert_eq!(Access::unrestricted().rule(Perm::Delete, "Goal"), Rule::All);
    }

    #[test]
    fn patient_scopes_need_a_patient_and_stay_in_its_compartment() {
        assert_eq!(
            access("patient/*.rs", None).rule(Perm::Read, "Observation"),
            Rule::Deny
        );
        let a = access("patient/*.cruds", Some("p1"));
        let rule = a.rule(Perm::Read, "Observation");
        let mine = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"}});
        let theirs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/p2"}});
        assert!(rule.admits("Observation", "o1", &mine, "http://x/fhir"));
        assert!(!rule.admits("Observation", "o2", &theirs, "http://x/fhir"));
        let pat = a.rule(Perm::Update, "Patient");
        assert!(pat.admits("Patient", "p1", &json!({"resourceType": "Patient"}), ""));
        assert!(!pat.admits("Patient", "p2", &json!({"resourceType": "Patient"}), ""));
        // Outside the compartment: readable, never writable.
        assert_eq!(a.rule(Perm::Read, "Questionnaire"), Rule::All);
        assert_eq!(a.rule(Perm::Create, "Questionnaire"), Rule::Deny);
    }

    #[test]
    fn granular_scopes_admit_only_matching_resources() {
        let cat = "http://terminology.hl7.org/CodeSystem/observation-category";
        let a = access(
            &format!("system/Observation.rs?category={cat}|survey"),
            None,
        );
        let rule = a.rule(Perm::Search, "Observation");
        let obs = |code: &str| {
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "category": [{"coding": [{"system": cat, "code": code}]}]})
        };
        assert!(rule.admits("Observation", "a", &obs("survey"), ""));
        assert!(!rule.admits("Observation", "b", &obs("laboratory"), ""));
        // A query on a parameter that is not a token is not understood: nothing is granted.
        let b = access("system/Observation.rs?date=2020", None);
        assert_eq!(b.rule(Perm::Read, "Observation"), Rule::Deny);
        let c = access("system/Observation.rs?nonsense=1", None);
        assert_eq!(c.rule(Perm::Read, "Observation"), Rule::Deny);
    }
}
