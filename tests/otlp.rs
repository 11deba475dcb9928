//! With the `otlp` feature (`cargo test --features otlp --test otlp`): request spans reach an
//! OTLP/HTTP collector named by OTEL_EXPORTER_OTLP_ENDPOINT.
#![cfg(feature = "otlp")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn request_spans_are_exported_over_otlp() {
    // A collector that records each request's line and body size, and answers 200.
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let (tx, rx) = mpsc::channel::<(String, usize)>();
    std::thread::spawn(move || {
        for stream in collector.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut length = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut s = stream;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ncontent-type: application/x-protobuf\r\n\r\n");
            let _ = tx.send((line.trim().to_string(), body.len()));
        }
    });
    let dir = std::env::temp_dir().join(format!("cairn-otlp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = common::process::cairn()
        .env(
            "CAIRN_DATABASE_URL",
            format!("sqlite://{}/c.sqlite", dir.display()),
        )
        .env("CAIRN_DATA_DIR", &dir)
        .env("CAIRN_LISTEN", format!("127.0.0.1:{port}"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let root = format!("http://127.0.0.1:{port}");
    common::eventually(Duration::from_secs(10), || {
        ureq::get(&format!("{root}/readyz"))
            .call()
            .map(drop)
            .map_err(|e| format!("the server did not start: {e}"))
    });
    assert_eq!(
        ureq::get(&format!("{root}/fhir/metadata"))
            .call()
            .unwrap()
            .status(),
        200
    );
    // SIGTERM: a graceful stop flushes the exporter.
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let (line, size) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no export reached the collector");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(line.starts_with("POST /v1/traces"), "{line}");
    assert!(size > 0);
}
