//! Access-token validation. A token is a JWS signed with RS256, RS384, ES256 or ES384 by a trusted
//! issuer: the built-in authorization server (the server's own key) or one external OAuth 2 / OIDC
//! provider (keys from its JWKS URL, cached, refetched on an unknown `kid` at most once per
//! interval, or from a static JWKS file). `iss`, `aud`, `exp` and `nbf` are checked with a small
//! leeway. Anything else (`alg: none`, HMAC, a key of the wrong family, an unknown `kid`) is refused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::keys::SigningKey;
use super::{parse_scopes, Access, AuthError};

/// The signature algorithms accepted on access tokens and client assertions.
pub const ACCEPTED: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// A public key usable for verification, with the algorithms it may verify.
#[derive(Clone)]
pub struct PublicKey {
    pub kid: Option<String>,
    pub algs: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// The usable signature keys of a JWKS document: RSA and EC (P-256, P-384) keys meant for
/// signatures. Symmetric keys and anything unparsable are skipped.
pub fn parse_jwks(doc: &Value) -> Vec<PublicKey> {
    let keys = doc.get("keys").and_then(Value::as_array);
    keys.into_iter()
        .flatten()
        .filter(|k| {
            k.get("use")
                .and_then(Value::as_str)
                .is_none_or(|u| u == "sig")
        })
        .filter_map(|k| {
            let jwk: Jwk = serde_json::from_value(k.clone()).ok()?;
            let named = k
                .get("alg")
                .and_then(Value::as_str)
                .and_then(|a| a.parse::<Algorithm>().ok());
            let family: Vec<Algorithm> = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => vec![Algorithm::RS256, Algorithm::RS384],
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => return None,
                },
                _ => return None,
            };
            let algs = match named {
                Some(a) if family.contains(&a) => vec![a],
                Some(_) => return None,
                None => family,
            };
            Some(PublicKey {
                kid: jwk.common.key_id.clone(),
                algs,
                key: DecodingKey::from_jwk(&jwk).ok()?,
            })
        })
        .collect()
}

/// The keys among `keys` that may have signed a token with this header.
fn candidates<'a>(keys: &'a [PublicKey], kid: Option<&str>, alg: Algorithm) -> Vec<&'a PublicKey> {
    keys.iter()
        .filter(|k| k.algs.contains(&alg))
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .collect()
}

/// The JWKS of an external provider, fetched over HTTP(S) and cached.
pub struct RemoteKeys {
    url: String,
    /// Least time between two fetches (so unknown `kid`s cannot make us hammer the provider).
    min_interval: Duration,
    /// Cached keys older than this are refetched on next use.
    max_age: Duration,
    state: Mutex<RemoteState>,
}

#[derive(Default)]
struct RemoteState {
    keys: Vec<PublicKey>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

impl RemoteKeys {
    pub fn new(url: String, min_interval: Duration, max_age: Duration) -> RemoteKeys {
        RemoteKeys {
            url,
            min_interval,
            max_age,
            state: Mutex::new(RemoteState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches the JWKS now (blocking). Keeps the old keys on failure.
    fn fetch(&self) -> Result<(), String> {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        let doc: Value = agent
            .get(&self.url)
            .call()
            .map_err(|e| format!("cannot fetch the JWKS at {}: {e}", self.url))?
            .into_json()
            .map_err(|e| format!("the JWKS at {} is not JSON: {e}", self.url))?;
        let keys = parse_jwks(&doc);
        if keys.is_empty() {
            return Err(format!(
                "the JWKS at {} holds no usable signing key",
                self.url
            ));
        }
        let mut st = self.lock();
        tracing::info!(url = %self.url, keys = keys.len(), "fetched the provider's JWKS");
        st.keys = keys;
        st.fetched = Some(Instant::now());
        Ok(())
    }

    /// Fetches in the background of the async runtime, if the rate limit allows.
    async fn refresh(self: &Arc<Self>) -> Result<(), AuthError> {
        {
            let mut st = self.lock();
            if st
                .attempted
                .is_some_and(|t| t.elapsed() < self.min_interval)
            {
                // No fetch now; without any keys yet, that is an outage, not a bad token.
                return match st.fetched {
                    Some(_) => Ok(()),
                    None => Err(AuthError::Unavailable(format!(
                        "the JWKS at {} could not be fetched yet",
                        self.url
                    ))),
                };
            }
            st.attempted = Some(Instant::now());
        }
        let this = Arc::clone(self);
        let result = tokio::task::spawn_blocking(move || this.fetch())
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        if let Err(e) = result {
            tracing::warn!(error = %e, "JWKS refresh failed");
            if self.lock().fetched.is_none() {
                return Err(AuthError::Unavailable(e));
            }
        }
        Ok(())
    }

    /// The keys that may have signed a token with this header: from the cache, refreshed when it
    /// is stale or does not know the `kid`.
    async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<PublicKey>, AuthError> {
        let (stale, found) = {
            let st = self.lock();
            let stale = st.fetched.is_none_or(|t| t.elapsed() > self.max_age);
            (
                stale,
                candidates(&st.keys, kid, alg)
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        };
        if !stale && !found.is_empty() {
            return Ok(found);
        }
        self.refresh().await?;
        let st = self.lock();
        Ok(candidates(&st.keys, kid, alg)
            .into_iter()
            .cloned()
            .collect())
    }

    /// Fetches once at startup so the first request does not wait; a failure is only logged.
    pub fn prefetch(&self) {
        if let Err(e) = self.fetch() {
            tracing::warn!(error = %e, "the OIDC provider's JWKS is not reachable yet");
        }
        self.lock().attempted = Some(Instant::now());
    }
}

/// Where an external issuer's keys come from.
pub enum KeySource {
    Static(Vec<PublicKey>),
    Remote(Arc<RemoteKeys>),
}

/// An external OAuth 2 / OIDC provider trusted for access tokens.
pub struct External {
    pub issuer: String,
    pub keys: KeySource,
}

/// Checks access tokens against the trusted issuers.
pub struct Validator {
    pub audience: String,
    pub leeway: u64,
    /// The built-in authorization server: its issuer and key.
    pub own_issuer: String,
    pub own_key: SigningKey,
    pub external: Option<External>,
    pub cache: TokenCache,
}

/// Tokens already verified, by the SHA-256 of their exact text: a client sends the same token on
/// every request, and signature checks (P-384 above all) cost far more than the request. An entry
/// is used only until the token's `exp`, and an external provider's only while its key is still
/// published.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

#[derive(Clone)]
struct Verified {
    /// Shared with every request that presents the token: a reference count, not a copy.
    access: std::sync::Arc<Access>,
    exp: i64,
    /// For an external provider's token: the key that verified it.
    external_key: Option<(Option<String>, Algorithm)>,
}

const CACHE_MAX: usize = 10_000;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], Verified>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &[u8; 32], leeway: u64) -> Option<Verified> {
        let mut map = self.lock();
        match map.get(key) {
            Some(v) if v.exp + leeway as i64 >= now_secs() => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: [u8; 32], v: Verified) {
        let mut map = self.lock();
        if map.len() >= CACHE_MAX {
            let now = now_secs();
            map.retain(|_, e| e.exp >= now);
            if map.len() >= CACHE_MAX {
                map.clear();
            }
        }
        map.insert(key, v);
    }

    fn forget(&self, key: &[u8; 32]) {
        self.lock().remove(key);
    }
}

fn invalid(why: impl Into<String>) -> AuthError {
    AuthError::Invalid(why.into())
}

/// The claims of a compact JWS, decoded without checking anything (to pick the issuer's keys).
pub fn peek_claims(token: &str) -> Result<Value, AuthError> {
    let mut parts = token.split('.');
    let (_, Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("it is not a signed JWT (header.payload.signature)"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid("its payload is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| invalid("its payload is not a JSON object"))
}

/// Verifies `token` with the first of `keys` that accepts it; returns its claims.
pub fn verify_with(
    token: &str,
    keys: &[PublicKey],
    alg: Algorithm,
    validation: &Validation,
) -> Result<Value, AuthError> {
    if keys.is_empty() {
        return Err(invalid("no key of the issuer matches its kid and alg"));
    }
    let mut last = String::new();
    for k in keys {
        let mut v = validation.clone();
        v.algorithms = vec![alg];
        match jsonwebtoken::decode::<Value>(token, &k.key, &v) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last = describe(&e),
        }
    }
    Err(invalid(last))
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "it has expired".into(),
        K::ImmatureSignature => "it is not valid yet (nbf)".into(),
        K::InvalidSignature => "its signature does not verify".into(),
        K::InvalidAudience => "it is meant for another audience".into(),
        K::InvalidIssuer => "its issuer is not trusted".into(),
        K::MissingRequiredClaim(c) => format!("it lacks the '{c}' claim"),
        K::InvalidAlgorithm => "its algorithm does not fit the key".into(),
        other => format!("{other:?}"),
    }
}

/// A `Validation` for tokens of `issuer` meant for `audience`.
pub fn validation(alg: Algorithm, issuer: &str, audience: &str, leeway: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

impl Validator {
    /// Validates a Bearer token; on success, who is calling and with which scopes.
    pub async fn validate(&self, token: &str) -> Result<std::sync::Arc<Access>, AuthError> {
        use sha2::{Digest, Sha256};
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.cache.get(&key, self.leeway) {
            let still_published = match (&v.external_key, &self.external) {
                (None, _) => true,
                (
                    Some((kid, alg)),
                    Some(External {
                        keys: KeySource::Remote(r),
                        ..
                    }),
                ) => !r.keys_for(kid.as_deref(), *alg).await?.is_empty(),
                (Some(_), _) => true,
            };
            if still_published {
                return Ok(v.access);
            }
            self.cache.forget(&key);
        }
        let (access, exp, external_key) = self.verify(token).await?;
        let access = std::sync::Arc::new(access);
        self.cache.put(
            key,
            Verified {
                access: access.clone(),
                exp,
                external_key,
            },
        );
        Ok(access)
    }

    /// The full check: signature, issuer, audience, times.
    #[allow(clippy::type_complexity)]
    async fn verify(
        &self,
        token: &str,
    ) -> Result<(Access, i64, Option<(Option<String>, Algorithm)>), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("it is not a signed JWT with an accepted algorithm"))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(invalid(format!(
                "its algorithm {:?} is not accepted (RS256, RS384, ES256, ES384)",
                header.alg
            )));
        }
        let claims = peek_claims(token)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kid = header.kid.as_deref();
        let own = iss == self.own_issuer;
        let keys: Vec<PublicKey> = if own {
            let own = PublicKey {
                kid: Some(self.own_key.kid.clone()),
                algs: vec![super::keys::ALGORITHM],
                key: self.own_key.decoding.clone(),
            };
            candidates(std::slice::from_ref(&own), kid, header.alg)
                .into_iter()
                .cloned()
                .collect()
        } else {
            match &self.external {
                Some(ext) if ext.issuer == iss => match &ext.keys {
                    KeySource::Static(keys) => candidates(keys, kid, header.alg)
                        .into_iter()
                        .cloned()
                        .collect(),
                    KeySource::Remote(remote) => remote.keys_for(kid, header.alg).await?,
                },
                _ => return Err(invalid("its issuer is not trusted")),
            }
        };
        let v = validation(header.alg, iss, &self.audience, self.leeway);
        let claims = verify_with(token, &keys, header.alg, &v)?;
        let exp = claims
            .get("exp")
            .and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64)))
            .ok_or_else(|| invalid("its exp is not a NumericDate"))?;
        let external_key = (!own).then(|| (header.kid.clone(), header.alg));
        Ok((access_from(&claims), exp, external_key))
    }
}

/// The caller described by verified claims.
pub fn access_from(claims: &Value) -> Access {
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
    let scope = match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    };
    Access {
        client_id: s("client_id").or_else(|| s("azp")).or_else(|| s("sub")),
        subject: s("sub"),
        issuer: s("iss"),
        fhir_user: s("fhirUser"),
        patient: s("patient"),
        scopes: parse_scopes(&scope),
        unrestricted: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A JWKS endpoint on localhost that counts its requests.
    fn jwks_server(doc: Value) -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                counter.fetch_add(1, Ordering::SeqCst);
                let body = doc.to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, hits)
    }

    #[test]
    fn unknown_kids_refetch_the_jwks_at_most_once_per_interval() {
        let dir = std::env::temp_dir().join(format!("cairn-jwks-{}", uuid::Uuid::new_v4()));
        let key = SigningKey::load_or_create(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let (url, hits) = jwks_server(key.jwks());
        let remote = Arc::new(RemoteKeys::new(
            url,
            Duration::from_secs(60),
            Duration::from_secs(600),
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let known = remote
                .keys_for(Some(&key.kid), Algorithm::ES384)
                .await
                .unwrap();
            assert_eq!(known.len(), 1);
            for i in 0..5 {
                let kid = format!("unknown-{i}");
                let none = remote.keys_for(Some(&kid), Algorithm::ES384).await.unwrap();
                assert!(none.is_empty());
            }
            // A known kid of the wrong algorithm family matches nothing either.
            let rs = remote
                .keys_for(Some(&key.kid), Algorithm::RS256)
                .await
                .unwrap();
            assert!(rs.is_empty());
        });
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "one fetch, then the rate limit"
        );
    }

    #[test]
    fn symmetric_and_unknown_keys_are_never_used() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "enc", "use": "enc"},
        ]});
        assert!(parse_jwks(&doc).is_empty());
    }
}
