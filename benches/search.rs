//! The search benchmark (`cargo bench --bench search -- --help`): loads a deterministic synthetic data set (patients with PHQ-9 and GAD-7 scores,
//! goals and care plans) and measures search latency and throughput over real HTTP against an
//! in-process server. Figures go to BENCHMARKS.md; see `cairn-bench --help`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn::config::{DatabaseArgs, LogFormat, Settings};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Load synthetic care data and measure Cairn's search latency")]
struct Args {
    /// Database to load and search (a fresh one is best)
    #[arg(
        long,
        env = "CAIRN_DATABASE_URL",
        default_value = "sqlite://./data/bench.sqlite"
    )]
    database_url: String,
    /// Synthetic patients to load (each with --obs-per-patient Observations, 2 Goals, 1 CarePlan)
    #[arg(long, default_value_t = 2000)]
    patients: usize,
    #[arg(long, default_value_t = 50)]
    obs_per_patient: usize,
    /// Skip loading (the database already holds the data set)
    #[arg(long)]
    no_load: bool,
    /// Requests per patient-scoped query (and per read)
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Requests per query over the whole data set (the count and the name prefix)
    #[arg(long, default_value_t = 40)]
    wide_requests: usize,
    /// Concurrent clients
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

const FAMILIES: &[&str] = &[
    "Smith", "Smithson", "Okafor", "Rivera", "Nguyen", "Müller", "Kowalski", "Haddad", "Tanaka",
    "Silva",
];
const GIVEN: &[&str] = &[
    "Ana", "Ben", "Chidi", "Dana", "Eli", "Fatima", "Goran", "Hana",
];

fn score(id: String, patient: &str, code: &str, display: &str, day: i64, value: i64) -> Value {
    let date = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(day);
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": format!("{}-{:02}-{:02}T10:00:00Z", date.year(), date.month() as u8, date.day()),
        "valueQuantity": {"value": value, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"}})
}

/// Everything about patient `i`, from a generator seeded by `i` (the same data on every run).
fn patient_bundle(i: usize, obs: usize) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(i as u64);
    let pid = format!("p{i}");
    let mut out = vec![json!({"resourceType": "Patient", "id": pid,
        "identifier": [{"system": "urn:cairn:bench", "value": pid}],
        "name": [{"family": FAMILIES[rng.gen_range(0..FAMILIES.len())], "given": [GIVEN[rng.gen_range(0..GIVEN.len())]]}],
        "gender": if rng.gen_bool(0.5) { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", rng.gen_range(1940..2005), rng.gen_range(1..13), rng.gen_range(1..29))})];
    let start = 19_358 + rng.gen_range(0..200); // from 2023-01-01 on
    for k in 0..obs {
        let day = start + (k as i64) * 14;
        let (code, display, max) = if k % 2 == 0 {
            ("44261-6", "PHQ-9 total", 27)
        } else {
            ("70274-6", "GAD-7 total", 21)
        };
        out.push(score(
            format!("{pid}-o{k}"),
            &pid,
            code,
            display,
            day,
            rng.gen_range(0..=max),
        ));
    }
    for (g, text) in [("rem", "PHQ-9 below 5"), ("sleep", "sleep 7 hours")] {
        out.push(json!({"resourceType": "Goal", "id": format!("{pid}-g-{g}"), "lifecycleStatus": "active",
            "description": {"text": text}, "subject": {"reference": format!("Patient/{pid}")}}));
    }
    out.push(json!({"resourceType": "CarePlan", "id": format!("{pid}-cp"), "status": if rng.gen_bool(0.8) { "active" } else { "completed" },
        "intent": "plan", "subject": {"reference": format!("Patient/{pid}")},
        "goal": [{"reference": format!("Goal/{pid}-g-rem")}, {"reference": format!("Goal/{pid}-g-sleep")}]}));
    out
}

/// The request URL (relative to the base) for a patient number.
type UrlFor = Box<dyn Fn(usize) -> String + Sync>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
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
        max_body_size: 16 << 20,
        workers: 0,
        pool_size: 16,
        pool_timeout_secs: 10,
        read_cache_mb: 64,
        default_count: 50,
        max_count: 1000,
        rate_limit_per_second: 0,
        rate_limit_burst: 0,
        request_timeout_secs: 60,
        writes: cairn::config::WriteArgs::default(),
        auth: cairn::config::AuthArgs::default(),
        audit: cairn::config::AuditMode::Enabled,
    };
    let (tx, rx) = mpsc::channel();
    let server_settings = settings.clone();
    let loader = if args.no_load { 0 } else { args.patients };
    let obs = args.obs_per_patient;
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let engine = match cairn::http::engine(&server_settings, 0) {
                Ok(e) => e,
                Err(e) => return tx.send(Err(e)).unwrap(),
            };
            let started = Instant::now();
            let mut batch = Vec::new();
            let mut loaded = 0usize;
            for i in 0..loader {
                batch.extend(patient_bundle(i, obs));
                if batch.len() >= 1000 || i + 1 == loader {
                    loaded += engine
                        .load_batch(std::mem::take(&mut batch))
                        .await
                        .map_err(|e| e.to_string())
                        .unwrap();
                }
                if i % 1000 == 999 {
                    eprintln!(
                        "loaded {} patients, {loaded} resources, {:.0} resources/s",
                        i + 1,
                        loaded as f64 / started.elapsed().as_secs_f64()
                    );
                }
            }
            if loaded > 0 {
                println!(
                    "load: {loaded} resources in {:.1} s ({:.0} resources/s)",
                    started.elapsed().as_secs_f64(),
                    loaded as f64 / started.elapsed().as_secs_f64()
                );
            }
            // Fresh statistics, as an operator runs ANALYZE after a bulk load.
            if let Err(e) = engine.store.analyze().await {
                eprintln!("analyze: {e}");
            }
            for (ty, query) in [
                ("Observation", "patient=p1&code=http://loinc.org|44261-6&date=ge2024-01-01&_sort=-date&_count=50"),
                ("CarePlan", "patient=p1&status=active"),
                ("Observation", "code=http://loinc.org|44261-6&value-quantity=gt19&_count=100"),
                ("Patient", "name=smi"),
            ] {
                let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
                match engine.explain_search(ty, &params).await {
                    Ok(plan) => {
                        println!("plan of {ty}?{query}:");
                        for line in plan {
                            println!("    {line}");
                        }
                    }
                    Err(e) => eprintln!("explain {ty}?{query}: {e}"),
                }
            }
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
    let patients = args.patients.max(1);
    // Every request carries a token; the patient-token rows show what compartment enforcement
    // costs against the same search asked with a system token.
    let auth = cairn::auth::Auth::from_settings(&settings, port)?;
    let mint = |scope: &str, patient: Option<String>| {
        auth.server.mint(&cairn::auth::server::Mint {
            subject: "bench".into(),
            client_id: "bench".into(),
            scope: scope.into(),
            patient,
            fhir_user: None,
            lifetime: 24 * 3600,
        })
    };
    let system = format!("Bearer {}", mint("system/*.rs", None)?);
    // A token per patient would be minted per request; a fixed pool of 64 is enough.
    let patient_tokens: Vec<String> = (0..patients.min(64))
        .map(|p| mint("patient/*.rs", Some(format!("p{p}"))).map(|t| format!("Bearer {t}")))
        .collect::<Result<_, _>>()?;
    // (label, URL for a patient number, patient-scoped?, patient token?)
    let queries: Vec<(&str, UrlFor, bool, bool)> = vec![
        ("Observation?patient=X&code=http://loinc.org|44261-6&date=ge2024-01-01&_sort=-date&_count=50",
         Box::new(|p| format!("Observation?patient=p{p}&code=http://loinc.org|44261-6&date=ge2024-01-01&_sort=-date&_count=50")), true, false),
        ("same, patient token (compartment from the token, no patient= parameter)",
         Box::new(|_| "Observation?code=http://loinc.org|44261-6&date=ge2024-01-01&_sort=-date&_count=50".into()), true, true),
        ("CarePlan?patient=X&status=active&_include=CarePlan:goal",
         Box::new(|p| format!("CarePlan?patient=p{p}&status=active&_include=CarePlan:goal")), true, false),
        ("Observation?code=http://loinc.org|44261-6&value-quantity=gt19&_count=100&_total=accurate",
         Box::new(|_| "Observation?code=http://loinc.org|44261-6&value-quantity=gt19&_count=100&_total=accurate".into()), false, false),
        ("Patient?name=smi", Box::new(|_| "Patient?name=smi".into()), false, false),
        ("Patient/X (read, for scale)", Box::new(|p| format!("Patient/p{p}")), true, false),
    ];
    println!("| query | requests | p50 ms | p99 ms | requests/s |");
    println!("|---|---|---|---|---|");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    for (name, make, scoped, as_patient) in &queries {
        // With a patient token, patient p's token asks; the URL is the same for all.
        let auth_for = |p: usize| -> &str {
            if *as_patient {
                &patient_tokens[p % patient_tokens.len()]
            } else {
                &system
            }
        };
        let requests = if *scoped {
            args.requests
        } else {
            args.wide_requests
        };
        // Warm up, then measure.
        for i in 0..requests.min(20) {
            let p = i % patients;
            let _ = agent
                .get(&format!("{base}/{}", make(p)))
                .set("Authorization", auth_for(p))
                .call();
        }
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        let mut all: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..args.concurrency)
                .map(|_| {
                    let (agent, next, base, auth_for) = (agent.clone(), &next, &base, &auth_for);
                    s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64(7);
                        let mut lat = Vec::new();
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= requests {
                                return lat;
                            }
                            let p = rng.gen_range(0..patients);
                            let url = format!("{base}/{}", make(p));
                            let t = Instant::now();
                            let r = agent.get(&url).set("Authorization", auth_for(p)).call();
                            lat.push(t.elapsed());
                            if let Err(e) = r {
                                eprintln!("{url}: {e}");
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let wall = started.elapsed();
        all.sort();
        println!(
            "| `{name}` | {} | {:.1} | {:.1} | {:.0} |",
            all.len(),
            percentile(&all, 0.5).as_secs_f64() * 1e3,
            percentile(&all, 0.99).as_secs_f64() * 1e3,
            all.len() as f64 / wall.as_secs_f64()
        );
    }
    Ok(())
}
