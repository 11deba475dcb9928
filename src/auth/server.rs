//! The built-in authorization server: SMART Backend Services (`client_credentials` with a
//! `private_key_jwt` client assertion, backend-services.html), the client registry behind it, and
//! short-lived tokens for local use (`cairn token`). Tokens are ES384 JWTs signed with the server's
//! own key; `token::Validator` accepts them like any trusted issuer's.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Header};
use serde_json::{json, Map, Value};

use super::keys::{SigningKey, ALGORITHM};
use super::token::{self, parse_jwks, peek_claims, verify_with, ACCEPTED};
use super::{parse_scopes, AuthError, Scope};
use crate::store::{clients, Store};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// SMART Backend Services: a client assertion expires at most five minutes after it is made.
const MAX_ASSERTION_LIFETIME: i64 = 300;

/// What a minted token says.
#[derive(Debug, Clone, Default)]
pub struct Mint {
    pub subject: String,
    pub client_id: String,
    pub scope: String,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    /// Seconds from now until `exp` (negative mints an already expired token, for tests).
    pub lifetime: i64,
}

pub struct AuthServer {
    pub issuer: String,
    pub audience: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub key: SigningKey,
    /// Lifetime of issued access tokens, in seconds.
    pub lifetime: i64,
    pub leeway: u64,
}

/// An OAuth 2 error response (RFC 6749 section 5.2).
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": self.error, "error_description": self.description})
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl AuthServer {
    /// Signs an access token.
    pub fn mint(&self, m: &Mint) -> Result<String, String> {
        let now = now_secs();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(m.subject));
        claims.insert("aud".into(), json!(self.audience));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now.min(now + m.lifetime)));
        claims.insert("exp".into(), json!(now + m.lifetime));
        claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
        claims.insert("client_id".into(), json!(m.client_id));
        claims.insert("scope".into(), json!(m.scope));
        if let Some(p) = &m.patient {
            claims.insert("patient".into(), json!(p));
        }
        if let Some(u) = &m.fhir_user {
            claims.insert("fhirUser".into(), json!(u));
        }
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("JWT".into());
        encode(&header, &Value::Object(claims), &self.key.encoding).map_err(|e| e.to_string())
    }

    /// `[base]/.well-known/smart-configuration` (SMART App Launch 2.x conformance).
    pub fn smart_configuration(&self) -> Value {
        let mut scopes = vec![
            "system/*.cruds".to_string(),
            "system/*.rs".to_string(),
            "user/*.cruds".to_string(),
            "user/*.rs".to_string(),
            "patient/*.cruds".to_string(),
            "patient/*.rs".to_string(),
        ];
        for t in crate::fhir::ENABLED_TYPES {
            if crate::fhir::is_server_written(t) {
                scopes.push(format!("system/{t}.rs"));
                continue;
            }
            scopes.push(format!("system/{t}.cruds"));
            scopes.push(format!("patient/{t}.rs"));
        }
        json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": self.token_endpoint,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": scopes,
            "capabilities": [
                "client-confidential-asymmetric",
                "permission-v1",
                "permission-v2",
                "permission-patient",
                "permission-user"
            ],
        })
    }

    /// The token endpoint: checks the client assertion and answers with an access token whose
    /// scopes are those asked for, capped by the client's registration.
    pub async fn token(
        &self,
        store: &Store,
        form: &[(String, String)],
    ) -> Result<Value, OAuthError> {
        let field = |k: &str| {
            form.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        match field("grant_type") {
            "client_credentials" => {}
            "" => {
                return Err(OAuthError::new(
                    400,
                    "invalid_request",
                    "grant_type is missing",
                ))
            }
            other => {
                return Err(OAuthError::new(
                    400,
                    "unsupported_grant_type",
                    format!("grant_type '{other}' is not supported; use client_credentials"),
                ))
            }
        }
        if field("client_assertion_type") != JWT_BEARER {
            return Err(OAuthError::new(
                401,
                "invalid_client",
                format!("client_assertion_type must be {JWT_BEARER}"),
            ));
        }
        let assertion = field("client_assertion").to_string();
        let bad_client = |why: String| OAuthError::new(401, "invalid_client", why);
        let header = jsonwebtoken::decode_header(&assertion)
            .map_err(|_| bad_client("client_assertion is not a signed JWT".into()))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(bad_client(format!(
                "client_assertion algorithm {:?} is not accepted (RS384, ES384)",
                header.alg
            )));
        }
        let peeked = peek_claims(&assertion).map_err(|e| bad_client(e.to_string()))?;
        let client_id = peeked
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let id = client_id.clone();
        if let Some(named) = form.iter().find(|(n, _)| n == "client_id") {
            if named.1 != client_id {
                return Err(bad_client(
                    "client_id differs from the assertion's iss".into(),
                ));
            }
        }
        let unavailable = |_| OAuthError::new(503, "temporarily_unavailable", "retry in a moment");
        // One answer for an unknown client and a bad signature: client ids are not disclosed.
        let failed = || bad_client("client authentication failed".into());
        let client = store
            .read(move |conn| clients::client(conn, &id))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                tracing::info!(client = %client_id, "token request from an unregistered client");
                failed()
            })?;
        let jwks: Value = serde_json::from_str(&client.jwks).unwrap_or_default();
        let keys: Vec<_> = parse_jwks(&jwks)
            .into_iter()
            .filter(|k| k.algs.contains(&header.alg))
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        let mut v = token::validation(header.alg, &client_id, &self.token_endpoint, self.leeway);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = verify_with(&assertion, &keys, header.alg, &v).map_err(|e| {
            tracing::info!(client = %client_id, error = %e, "client assertion refused");
            match e {
                AuthError::Invalid(why) if !why.contains("signature") && !why.contains("key") => {
                    bad_client(format!("client_assertion: {why}"))
                }
                _ => failed(),
            }
        })?;
        if claims.get("sub").and_then(Value::as_str) != Some(client_id.as_str()) {
            return Err(bad_client(
                "client_assertion: sub must equal iss (the client id)".into(),
            ));
        }
        let now = now_secs();
        // A whole number of seconds, and soon: the jti is remembered until then.
        let Some(exp) = claims.get("exp").and_then(Value::as_i64) else {
            return Err(bad_client(
                "client_assertion: exp must be a whole number of seconds".into(),
            ));
        };
        if exp > now + MAX_ASSERTION_LIFETIME + self.leeway as i64 {
            return Err(bad_client(
                "client_assertion: exp is more than five minutes away".into(),
            ));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty())
            .ok_or_else(|| bad_client("client_assertion: jti is missing".into()))?
            .to_string();
        let registered = parse_scopes(&client.scope);
        let mut granted: Vec<Scope> = Vec::new();
        for want in parse_scopes(field("scope")) {
            for g in registered.iter().filter_map(|r| want.within(r)) {
                if !granted.contains(&g) {
                    granted.push(g);
                }
            }
        }
        if granted.is_empty() {
            return Err(OAuthError::new(
                400,
                "invalid_scope",
                format!(
                    "none of the requested scopes '{}' is within what client '{client_id}' is registered for",
                    field("scope")
                ),
            ));
        }
        let (cid, until) = (client_id.clone(), exp + self.leeway as i64);
        let fresh = store
            .write(move |conn| clients::use_assertion(conn, &cid, &jti, until, now))
            .await
            .map_err(unavailable)?;
        if !fresh {
            return Err(OAuthError::new(
                400,
                "invalid_grant",
                "this client_assertion (jti) was already used",
            ));
        }
        let scope = granted
            .iter()
            .map(Scope::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let access_token = self
            .mint(&Mint {
                subject: client_id.clone(),
                client_id,
                scope: scope.clone(),
                lifetime: self.lifetime,
                ..Default::default()
            })
            .map_err(|e| OAuthError::new(500, "server_error", e))?;
        Ok(json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self.lifetime,
            "scope": scope,
        }))
    }
}

/// Checks a JWKS for client registration: JSON with at least one usable public signing key, and
/// no private key material. Returns it compacted.
pub fn check_client_jwks(text: &str) -> Result<String, String> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    const PRIVATE: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];
    if keys
        .iter()
        .any(|k| PRIVATE.iter().any(|m| k.get(m).is_some()))
    {
        return Err(
            "the JWKS holds private or symmetric key material; register public keys only".into(),
        );
    }
    if parse_jwks(&doc).is_empty() {
        return Err("the JWKS holds no usable RSA or EC (P-256, P-384) signing key".into());
    }
    serde_json::to_string(&doc).map_err(|e| e.to_string())
}
