//! The ingest benchmark (`cargo bench --bench ingest -- --help`): care plans pushed as transaction
//! Bundles of about 500 resources (a Patient, a Condition, Goals, a CareTeam, a CarePlan and PHQ-9 /
//! GAD-7 Observations, linked by `urn:uuid:` references), over real HTTP against an in-process
//! server with search indexing, referential integrity and the audit trail on. Prints resources/s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use cairn::config::{DatabaseArgs, LogFormat, Settings, WriteArgs};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Push transaction Bundles of care plans into Cairn and measure resources/s")]
struct Args {
    /// Database to load (a fresh one)
    #[arg(
        long,
        env = "CAIRN_DATABASE_URL",
        default_value = "sqlite://./data/ingest-bench.sqlite"
    )]
    database_url: String,
    /// Bundles to send (after one warm-up Bundle)
    #[arg(long, default_value_t = 40)]
    bundles: usize,
    /// Resources per Bundle
    #[arg(long, default_value_t = 500)]
    size: usize,
    /// Clients sending Bundles at the same time
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

fn urn() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

fn post(resource: Value, full_url: &str) -> Value {
    let ty = resource["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": ty}})
}

/// One patient's care plan with `size` resources in all.
fn care_bundle(n: usize, size: usize) -> Value {
    let (p, c, g1, g2, t) = (urn(), urn(), urn(), urn(), urn());
    let sys = "urn:bench:ingest";
    let mut entries = vec![
        post(
            json!({"resourceType": "Patient", "identifier": [{"system": sys, "value": format!("p{n}")}],
            "name": [{"family": "Ingest", "given": [format!("P{n}")]}], "gender": "female",
            "birthDate": "1980-02-03"}),
            &p,
        ),
        post(
            json!({"resourceType": "Condition", "subject": {"reference": p},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007",
                "display": "Depressive disorder"}]}}),
            &c,
        ),
        post(
            json!({"resourceType": "Goal", "lifecycleStatus": "active", "subject": {"reference": p},
            "description": {"text": "PHQ-9 below 5"},
            "target": [{"measure": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
                "detailQuantity": {"value": 5, "comparator": "<"}}]}),
            &g1,
        ),
        post(
            json!({"resourceType": "Goal", "lifecycleStatus": "active", "subject": {"reference": p},
            "description": {"text": "Walk 30 minutes a day"}}),
            &g2,
        ),
        post(
            json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": p},
            "participant": [{"member": {"reference": p}}]}),
            &t,
        ),
        post(
            json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": p}, "addresses": [{"reference": c}],
            "goal": [{"reference": g1}, {"reference": g2}], "careTeam": [{"reference": t}],
            "activity": [{"detail": {"status": "scheduled", "description": "CBT, weekly",
                "goal": [{"reference": g1}]}}]}),
            &urn(),
        ),
    ];
    let mut i = 0;
    while entries.len() < size {
        let (code, display) = if i % 2 == 0 {
            ("44261-6", "PHQ-9 total score")
        } else {
            ("70274-6", "GAD-7 total score")
        };
        entries.push(post(
            json!({"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "survey"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                "subject": {"reference": p},
                "effectiveDateTime": format!("2024-{:02}-{:02}T09:00:00Z", 1 + (i / 28) % 12, 1 + i % 28),
                "valueQuantity": {"value": (i * 7) % 27, "system": "http://unitsofmeasure.org", "code": "{score}"}}),
            &urn(),
        ));
        i += 1;
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let settings = Settings {
        db: DatabaseArgs {
            database_url: args.database_url.parse()?,
        },
        listen: "127.0.0.1:0".into(),
        base_url: None,
        data_dir: std::env::temp_dir().join("cairn-bench-keys"),
        log_format: LogFormat::Pretty,
        max_body_size: 64 << 20,
        workers: 0,
        pool_size: 16,
        pool_timeout_secs: 30,
        read_cache_mb: 64,
        default_count: 50,
        max_count: 1000,
        rate_limit_per_second: 0,
        rate_limit_burst: 0,
        request_timeout_secs: 60,
        writes: WriteArgs::default(),
        auth: cairn::config::AuthArgs::default(),
        audit: cairn::config::AuditMode::Enabled,
    };
    let (tx, rx) = mpsc::channel();
    let server_settings = settings.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match cairn::http::Application::build(&server_settings) {
                Ok(app) => {
                    tx.send(Ok(app.port())).unwrap();
                    let _ = app.run_until_stopped().await;
                }
                Err(e) => tx.send(Err(e)).unwrap(),
            }
        })
    });
    let port = rx.recv().map_err(|e| e.to_string())??;
    let base = format!("http://127.0.0.1:{port}/fhir");
    let auth = cairn::auth::Auth::from_settings(&settings, port)?;
    let token = auth.server.mint(&cairn::auth::server::Mint {
        subject: "bench".into(),
        client_id: "bench".into(),
        scope: "system/*.cruds".into(),
        patient: None,
        fhir_user: None,
        lifetime: 24 * 3600,
    })?;
    let bearer = format!("Bearer {token}");
    // The Bundles are built (and serialized) before the clock starts.
    let bodies: Vec<String> = (0..=args.bundles)
        .map(|n| care_bundle(n, args.size).to_string())
        .collect();
    let send = |body: &str| -> Result<usize, String> {
        let r = ureq::post(&format!("{base}/"))
            .set("Authorization", &bearer)
            .set("Content-Type", "application/fhir+json")
            .send_string(body)
            .map_err(|e| match e {
                ureq::Error::Status(s, r) => {
                    format!("{s}: {}", r.into_string().unwrap_or_default())
                }
                e => e.to_string(),
            })?;
        let b: Value = r.into_json().map_err(|e| e.to_string())?;
        let entries = b["entry"].as_array().map_or(0, Vec::len);
        let created = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["response"]["status"] == "201 Created")
            .count();
        if created != entries {
            return Err(format!("{} of {entries} entries were created", created));
        }
        Ok(created)
    };
    send(&bodies[0])?;
    let next = AtomicUsize::new(1);
    let stored = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= bodies.len() {
                            return Ok(());
                        }
                        stored.fetch_add(send(&bodies[i])?, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a client panicked".to_string())??;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let n = stored.load(Ordering::SeqCst);
    let backend = args.database_url.split(':').next().unwrap_or_default();
    println!(
        "ingest [{backend}]: {n} resources in {} Bundles of {} ({} clients) in {secs:.1} s: {:.0} resources/s",
        args.bundles,
        args.size,
        args.concurrency,
        n as f64 / secs
    );
    Ok(())
}
