//! Cairn as a resource server behind a genuine external OAuth 2 / OIDC provider: `oidc-provider`
//! (npm, installed here on first run with `npm ci`) issues JWT access tokens with
//! client_credentials; Cairn trusts it by issuer and JWKS URL, and follows its key rotation.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use common::{Backend, TestApp};
use serde_json::Value;

const CLIENT: &str = "cairn-ci";
const SECRET: &str = "s3cret-for-tests";

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// Installs the provider's npm packages once (from package-lock.json).
fn npm_ci() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if idp_dir().join("node_modules/oidc-provider").exists() {
            return;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(idp_dir())
            .output()
            .expect("npm is needed for this test (Node.js 18 or later)");
        assert!(
            out.status.success(),
            "npm ci failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A running provider; stopped when dropped.
struct Idp {
    child: Child,
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    port: u16,
}

impl Idp {
    fn start(port: u16, audience: &str, keys: &Path, kids: &str) -> Idp {
        npm_ci();
        let mut child = Command::new("node")
            .arg(idp_dir().join("server.mjs"))
            .env("IDP_PORT", port.to_string())
            .env("IDP_AUDIENCE", audience)
            .env("IDP_CLIENT_ID", CLIENT)
            .env("IDP_CLIENT_SECRET", SECRET)
            .env(
                "IDP_SCOPES",
                "system/Patient.rs system/Observation.rs system/*.cruds",
            )
            .env("IDP_KEYS_DIR", keys)
            .env("IDP_KIDS", kids)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node is needed for this test");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(
            line.strip_prefix("READY ")
                .unwrap_or_else(|| panic!("the provider did not start: {line:?}")),
        )
        .unwrap();
        let s = |k: &str| ready[k].as_str().unwrap().to_string();
        let issuer = s("issuer");
        let port = issuer.rsplit(':').next().unwrap().parse().unwrap();
        Idp {
            child,
            jwks_uri: s("jwks_uri"),
            token_endpoint: s("token_endpoint"),
            issuer,
            port,
        }
    }

    /// An access token from the provider's token endpoint (client_credentials, client_secret_basic).
    fn token(&self, scope: &str) -> String {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT}:{SECRET}"));
        let r = ureq::post(&self.token_endpoint)
            .set("Authorization", &format!("Basic {basic}"))
            .send_form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .unwrap_or_else(|e| panic!("token request: {e}"));
        let body: Value = r.into_json().unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn status(app: &TestApp, token: &str, method: &str, path: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let body = br#"{"resourceType":"Patient"}"#;
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/fhir+json"),
    ];
    let body = (method == "POST").then_some(&body[..]);
    app.send(method, path, &headers, body).status
}

fn tokens_of_an_external_provider_are_honoured_through_key_rotation(backend: Backend) {
    let keys = std::env::temp_dir().join(format!("cairn-idp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&keys).unwrap();
    // The FHIR base must be known before the provider starts (it is the tokens' audience).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let idp = Idp::start(0, &base, &keys, "k1");
    let (issuer, jwks_uri) = (idp.issuer.clone(), idp.jwks_uri.clone());
    let Some(app) = common::spawn_app_with(backend, |s| {
        s.listen = format!("127.0.0.1:{port}");
        s.auth.oidc_issuer = Some(issuer);
        s.auth.oidc_jwks_url = Some(jwks_uri);
        s.auth.oidc_jwks_min_interval = 1;
        s.auth.oidc_jwks_max_age = 3;
    }) else {
        eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return;
    };
    let t1 = idp.token("system/Patient.rs");
    assert_eq!(kid_of(&t1), "k1");
    assert_eq!(status(&app, &t1, "GET", "Patient"), 200);
    // The provider's scopes are enforced like any others.
    assert_eq!(status(&app, &t1, "POST", "Patient"), 403);
    assert_eq!(status(&app, &t1, "GET", "Observation"), 403);
    let wide = idp.token("system/*.cruds");
    assert_eq!(status(&app, &wide, "POST", "Patient"), 201);

    // Rotation, step 1: a new key signs, the old one is still published.
    let port = idp.port;
    drop(idp);
    let idp = Idp::start(port, &base, &keys, "k2,k1");
    std::thread::sleep(Duration::from_millis(1100)); // the refetch interval
    let t2 = idp.token("system/Patient.rs");
    assert_eq!(kid_of(&t2), "k2");
    assert_eq!(
        status(&app, &t2, "GET", "Patient"),
        200,
        "unknown kid refetched"
    );
    assert_eq!(
        status(&app, &t1, "GET", "Patient"),
        200,
        "old key still published"
    );

    // Step 2: the old key is withdrawn; once the cache has aged, its tokens are refused.
    drop(idp);
    let idp = Idp::start(port, &base, &keys, "k2");
    std::thread::sleep(Duration::from_millis(3200)); // the cache's maximum age
    assert_eq!(status(&app, &t2, "GET", "Patient"), 200);
    assert_eq!(status(&app, &t1, "GET", "Patient"), 401, "withdrawn key");
    // The built-in issuer keeps working beside the external one.
    assert_eq!(status(&app, &app.admin_token, "GET", "Patient"), 200);
    drop(idp);
    let _ = std::fs::remove_dir_all(keys);
}

#[test]
fn external_provider_sqlite() {
    tokens_of_an_external_provider_are_honoured_through_key_rotation(Backend::Sqlite);
}

#[test]
fn external_provider_postgres() {
    tokens_of_an_external_provider_are_honoured_through_key_rotation(Backend::Postgres);
}
