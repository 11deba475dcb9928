//! Cairn as a separate process (`cairn serve` and the other commands), for tests that kill it,
//! run several instances on one database, or drive the CLI.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `cairn` binary of this build.
pub fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

pub struct Server {
    pub child: std::process::Child,
    pub base: String,
}

impl Server {
    pub fn start(db_url: &str, data_dir: &std::path::Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = cairn()
            .env("CAIRN_DATABASE_URL", db_url)
            .env("CAIRN_LISTEN", format!("127.0.0.1:{port}"))
            .env("CAIRN_DATA_DIR", data_dir)
            .env("CAIRN_BASE_URL", "http://cairn.test/fhir")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}/fhir");
        super::eventually(Duration::from_secs(30), || {
            ureq::get(&format!("http://127.0.0.1:{port}/readyz"))
                .call()
                .map(drop)
                .map_err(|e| format!("server did not start: {e}"))
        });
        Server { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token(db_url: &str, data_dir: &std::path::Path) -> String {
    let out = cairn()
        .args(["token", "--scope", "system/*.cruds system/AuditEvent.rs"])
        .env("CAIRN_DATABASE_URL", db_url)
        .env("CAIRN_DATA_DIR", data_dir)
        .env("CAIRN_BASE_URL", "http://cairn.test/fhir")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string()
}

pub fn call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<u16, String> {
    let req = ureq::request(method, &format!("{base}/{path}"))
        .timeout(Duration::from_secs(30))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/fhir+json");
    let r = match body {
        Some(b) => req.send_string(&b.to_string()),
        None => req.call(),
    };
    match r {
        Ok(r) => Ok(r.status()),
        Err(ureq::Error::Status(s, _)) => Ok(s),
        Err(e) => Err(e.to_string()),
    }
}

/// A database for process tests: a fresh PostgreSQL database, or a SQLite file.
/// A database URL, the data directory, and (PostgreSQL) the admin URL and database to drop.
pub type ProcessDb = (String, tempdir::Dir, Option<(String, String)>);

pub fn database(backend: super::Backend) -> Option<ProcessDb> {
    let dir = tempdir::Dir::new();
    match backend {
        super::Backend::Sqlite => Some((
            format!("sqlite://{}/cairn.sqlite", dir.0.display()),
            dir,
            None,
        )),
        super::Backend::Postgres => {
            use diesel::{Connection, RunQueryDsl};
            let admin = super::postgres_url()?;
            let db = format!("cairn_proc_{}", uuid::Uuid::new_v4().simple());
            let mut c = diesel::PgConnection::establish(&admin).unwrap();
            diesel::sql_query(format!("CREATE DATABASE {db}"))
                .execute(&mut c)
                .unwrap();
            let (prefix, _) = admin.rsplit_once('/').unwrap();
            Some((format!("{prefix}/{db}"), dir, Some((admin, db))))
        }
    }
}

pub fn drop_database(pg: Option<(String, String)>) {
    use diesel::{Connection, RunQueryDsl};
    if let Some((admin, db)) = pg {
        if let Ok(mut c) = diesel::PgConnection::establish(&admin) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&mut c);
        }
    }
}

pub mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let d =
                std::env::temp_dir().join(format!("cairn-proc-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn verify_url(db_url: &str) -> (bool, String) {
    let out = cairn()
        .args(["audit", "verify"])
        .env("CAIRN_DATABASE_URL", db_url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}
