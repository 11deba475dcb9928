//! Test harness: spawns the real application on a random port with a fresh database (a new SQLite
//! file, or a new PostgreSQL database when CAIRN_TEST_POSTGRES_URL is set) and talks HTTP to it.

#![allow(dead_code)]

pub mod process;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn::auth::server::Mint;
use cairn::config::{AuthArgs, DatabaseArgs, LogFormat, Settings, WriteArgs};
use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::Value;

/// Calls `probe` every 20 ms until it returns `Ok`; once `limit` has passed, panics with its last
/// `Err`. For what another thread or process does in its own time.
pub fn eventually<E: std::fmt::Display>(limit: Duration, mut probe: impl FnMut() -> Result<(), E>) {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(()) => return,
            Err(e) => assert!(started.elapsed() < limit, "after {limit:?}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub root: String,
    pub base: String,
    pub backend: Backend,
    pub settings: Settings,
    /// The database URL the app runs on (for CLI commands against the same database).
    pub db_url: String,
    pub port: u16,
    /// Sent with every request that names no Authorization header: `system/*.cruds`.
    pub admin_token: String,
    /// For PostgreSQL: the admin URL and the database to drop at the end.
    pg: Option<(String, String)>,
    _dir: tempdir::TempDir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn postgres_url() -> Option<String> {
    // Before this process's first connection (see the function).
    cairn::store::keep_tls_at_exit();
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// The shared test data beside the project.
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

pub fn settings(url: &str, data_dir: PathBuf) -> Settings {
    Settings {
        db: DatabaseArgs {
            database_url: url.parse().expect("test database URL"),
        },
        listen: "127.0.0.1:0".into(),
        base_url: None,
        data_dir,
        log_format: LogFormat::Pretty,
        max_body_size: 4 * 1024 * 1024,
        workers: 0,
        pool_size: 8,
        pool_timeout_secs: 2,
        read_cache_mb: 64,
        default_count: 50,
        max_count: 1000,
        rate_limit_per_second: 0,
        rate_limit_burst: 0,
        request_timeout_secs: 60,
        writes: WriteArgs::default(),
        auth: AuthArgs::default(),
        audit: cairn::config::AuditMode::Enabled,
    }
}

/// Starts Cairn on `backend`; None when that backend is not available (PostgreSQL without
/// CAIRN_TEST_POSTGRES_URL).
pub fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {})
}

/// Starts Cairn on `backend` with settings adjusted by `adjust`.
pub fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> Option<TestApp> {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("cairn-test-{unique}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (url, pg) = match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}/cairn.sqlite", dir.display());
            (url, None)
        }
        Backend::Postgres => {
            let admin = postgres_url()?;
            let db = format!("cairn_test_{unique}");
            let mut conn =
                PgConnection::establish(&admin).expect("connect to CAIRN_TEST_POSTGRES_URL");
            diesel::sql_query(format!("CREATE DATABASE {db}"))
                .execute(&mut conn)
                .expect("create test database");
            let (prefix, _) = admin
                .rsplit_once('/')
                .expect("postgres URL with a database");
            (format!("{prefix}/{db}"), Some((admin, db)))
        }
    };
    let mut settings = settings(&url, dir.join("data"));
    adjust(&mut settings);
    let server_settings = settings.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let settings = server_settings;
        actix_web::rt::System::new().block_on(async move {
            match cairn::http::Application::build(&settings) {
                Ok(app) => {
                    tx.send(Ok(app.port())).unwrap();
                    let _ = app.run_until_stopped().await;
                }
                Err(e) => tx.send(Err(e)).unwrap(),
            }
        })
    });
    let port = rx.recv().unwrap().expect("the application starts");
    let root = format!("http://127.0.0.1:{port}");
    let mut app = TestApp {
        base: format!("{root}/fhir"),
        root,
        backend,
        settings,
        db_url: url,
        port,
        admin_token: String::new(),
        pg,
        _dir: tempdir::TempDir(dir),
    };
    app.admin_token = app.token("system/*.cruds", None);
    Some(app)
}

impl TestApp {
    /// A token from the app's built-in authorization server.
    pub fn mint(&self, m: &Mint) -> String {
        let auth = cairn::auth::Auth::from_settings(&self.settings, self.port).expect("auth");
        auth.server.mint(m).expect("mint")
    }

    /// A token with `scope` (and a patient in context), valid for ten minutes.
    pub fn token(&self, scope: &str, patient: Option<&str>) -> String {
        self.mint(&Mint {
            subject: "test".into(),
            client_id: "test".into(),
            scope: scope.into(),
            patient: patient.map(str::to_string),
            fhir_user: None,
            lifetime: 600,
        })
    }

    /// PostgreSQL only: drops the app's database under it (its connections are cut).
    pub fn drop_database(&self) {
        if let Some((admin, db)) = &self.pg {
            let mut conn = PgConnection::establish(admin).expect("connect as admin");
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut conn)
                .expect("drop the test database");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some((admin, db)) = &self.pg {
            if let Ok(mut conn) = PgConnection::establish(admin) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .execute(&mut conn);
            }
        }
    }
}

/// An HTTP response, whatever its status.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an error answered with `status` and an OperationOutcome; returns it.
    pub fn outcome(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let oo = self.json();
        assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
        assert!(oo["issue"][0]["code"].is_string(), "{oo}");
        oo
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// Sends a request; `body` is sent as given with `headers`.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut req = ureq::request(method, &self.url(path));
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            req = req.set("Authorization", &format!("Bearer {}", self.admin_token));
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let result = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_string())))
            .collect();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[("Accept", "application/fhir+json")], None)
    }

    pub fn json(&self, method: &str, path: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let mut h = vec![("Content-Type", "application/fhir+json")];
        h.extend_from_slice(headers);
        self.send(method, path, &h, Some(body.to_string().as_bytes()))
    }

    pub fn create(&self, resource: &Value) -> Value {
        let ty = resource["resourceType"].as_str().unwrap();
        let r = self.json("POST", ty, resource, &[]);
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    }

    /// Every resource of a paged history or search, following next links.
    pub fn all_entries(&self, path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut next = Some(self.url(path));
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            assert!(pages < 10_000, "paging does not end");
            let b = self.get(&url).json();
            out.extend(b["entry"].as_array().cloned().unwrap_or_default());
            next = link(&b, "next");
        }
        out
    }
}

/// The URL of a Bundle's link with relation `rel` (`next`, `previous`, `self`).
pub fn link(bundle: &Value, rel: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == rel)?["url"]
        .as_str()
        .map(str::to_string)
}

/// Runs each named test body once per backend: `mod sqlite { fn name() }` and `mod postgres { … }`.
#[macro_export]
macro_rules! on_both_backends {
    // `on_both_backends!(mod name, |settings| …; test, …)`: on apps whose settings are adjusted.
    (mod $module:ident, $adjust:expr; $($name:ident),* $(,)?) => {
        mod $module {
            mod sqlite {
                $(#[test]
                fn $name() {
                    let app = $crate::common::spawn_app_with($crate::common::Backend::Sqlite, $adjust)
                        .unwrap();
                    super::super::$name(&app);
                })*
            }
            mod postgres {
                $(#[test]
                fn $name() {
                    match $crate::common::spawn_app_with($crate::common::Backend::Postgres, $adjust) {
                        Some(app) => super::super::$name(&app),
                        None => eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested"),
                    }
                })*
            }
        }
    };
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                let app = $crate::common::spawn_app($crate::common::Backend::Sqlite).unwrap();
                super::$name(&app);
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                match $crate::common::spawn_app($crate::common::Backend::Postgres) {
                    Some(app) => super::$name(&app),
                    None => eprintln!("CAIRN_TEST_POSTGRES_URL is not set: PostgreSQL not tested"),
                }
            })*
        }
    };
}
