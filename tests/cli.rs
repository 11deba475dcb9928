//! The `cairn` command itself: settings validation, migrations, and graceful shutdown on SIGTERM.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cairn() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CAIRN_")) {
        c.env_remove(k);
    }
    c
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cairn-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn bad_settings_fail_at_startup_with_one_line() {
    let cases = [
        ("CAIRN_DATABASE_URL", "mysql://x/y", "database-url"),
        ("CAIRN_POOL_SIZE", "0", "pool-size"),
        ("CAIRN_POOL_SIZE", "many", "pool-size"),
        ("CAIRN_LOG_FORMAT", "xml", "log-format"),
        ("CAIRN_BASE_URL", "ftp://x", "base-url"),
        ("CAIRN_MAX_BODY_SIZE", "-1", "max-body-size"),
        ("CAIRN_LISTEN", "nowhere", "CAIRN_LISTEN"),
    ];
    for (var, value, named) in cases {
        let out = cairn().args(["serve"]).env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{var}={value}: {err}");
        assert!(err.contains(named), "{var}={value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = cairn()
        .env("CAIRN_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
    ] {
        let out = cairn().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn migrate_prepares_the_database_once() {
    let dir = temp_dir();
    let url = format!("sqlite://{}/db/cairn.sqlite", dir.display());
    let first = cairn()
        .args(["migrate"])
        .env("CAIRN_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied"));
    let again = cairn()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("up to date"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let dir = temp_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = cairn()
        .env(
            "CAIRN_DATABASE_URL",
            format!("sqlite://{}/cairn.sqlite", dir.display()),
        )
        .env("CAIRN_LISTEN", format!("127.0.0.1:{port}"))
        .env("CAIRN_DATA_DIR", format!("{}/data", dir.display()))
        .env("CAIRN_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let started = Instant::now();
    while ureq::get(&ready).call().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = ureq::get(&format!("http://127.0.0.1:{port}/fhir/metadata"))
        .set("X-Request-Id", "trace-me")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopping = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "no exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    // JSON logs: one object per line, and the request's span carries its id.
    let line = log
        .lines()
        .find(|l| l.contains("trace-me"))
        .expect("request id in the log");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "INFO");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn reindex_rebuilds_the_search_index() {
    use diesel::{Connection, RunQueryDsl, SqliteConnection};
    let dir = temp_dir();
    let db = format!("{}/cairn.sqlite", dir.display());
    let url = format!("sqlite://{db}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let env = [
        ("CAIRN_DATABASE_URL", url.clone()),
        ("CAIRN_LISTEN", format!("127.0.0.1:{port}")),
        ("CAIRN_DATA_DIR", format!("{}/data", dir.display())),
    ];
    // Stopped even when an assertion fails.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Guard(
        cairn()
            .envs(env.clone())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // `cairn token` with the server's settings mints a token the server accepts.
    let minted = cairn()
        .args(["token", "--scope", "system/Patient.cruds"])
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let stdout = String::from_utf8(minted.stdout).unwrap();
    let bearer = format!("Bearer {}", stdout.lines().last().unwrap());
    let started = Instant::now();
    while ureq::get(&format!("{base}/metadata")).call().is_err() {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    let patient = r#"{"resourceType":"Patient","name":[{"family":"Okafor"}]}"#;
    ureq::post(&format!("{base}/Patient"))
        .set("Authorization", &bearer)
        .set("Content-Type", "application/fhir+json")
        .send_string(patient)
        .unwrap();
    let found = |base: &str| -> usize {
        let b: serde_json::Value = ureq::get(&format!("{base}/Patient?family=okafor"))
            .set("Authorization", &bearer)
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        b["entry"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(found(&base), 1);
    // Lose the index, as if the definitions had changed.
    let mut conn = SqliteConnection::establish(&db).unwrap();
    diesel::sql_query("DELETE FROM idx_string")
        .execute(&mut conn)
        .unwrap();
    assert_eq!(found(&base), 0);
    let out = cairn()
        .args(["reindex"])
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The Patient, and the AuditEvents of the requests so far (they are resources too).
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let n: usize = stdout
        .trim()
        .strip_prefix("reindexed ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(n >= 4, "{stdout}");
    assert_eq!(found(&base), 1);
    let _ = std::fs::remove_dir_all(dir);
}
