//! The `cairn` command: `serve` runs the FHIR server, `migrate` prepares the database, `token`
//! and `client` drive the built-in authorization server.

use std::process::ExitCode;

// Requests allocate small objects on many threads (actix workers, the blocking pool, the audit
// committer); under load glibc's `malloc` took about a sixth of the committer's CPU samples.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc tuned for a long-running server's footprint: freed memory goes back to the system at
/// once, and no transparent huge pages. Untuned, the idle RSS after a small load was 90 MB;
/// tuned, 44 MB (glibc: 49 MB). The same as `MIMALLOC_PURGE_DELAY=0 MIMALLOC_ALLOW_THP=0`.
fn tune_allocator() {
    // `mi_option_purge_delay` in mimalloc.h (v3, the crate's default build); libmimalloc-sys
    // does not name it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is safe at any time; prctl only changes this process's THP use.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

use cairn::config::{DatabaseArgs, Settings};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a FHIR R4 server for personalized care plans"
)]
struct Cli {
    /// Without a subcommand, `cairn` serves (settings from CAIRN_* environment variables)
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server (migrates the database first)
    Serve(Box<Settings>),
    /// Apply pending database migrations, then exit
    Migrate(DatabaseArgs),
    /// Rebuild the search indexes of every resource (after search definitions change)
    Reindex(Box<Settings>),
    /// Mint a short-lived access token signed by the server's own key (for local use)
    Token(Box<TokenArgs>),
    /// Register and manage SMART Backend Services clients of the built-in authorization server
    #[command(subcommand)]
    Client(ClientCommand),
    /// Check or export the audit trail
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the OpenAPI 3.1 description of the API (what openapi/cairn.yaml holds)
    Openapi,
    /// Benchmarks only: serve a fixed body of --bytes bytes on every GET (the hardware's ceiling
    /// for an actix server, which bench/run.sh compares Cairn with)
    #[command(hide = true)]
    StaticCeiling {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        #[arg(long, default_value_t = 200)]
        bytes: usize,
    },
    /// Manage the scored instruments (canonical Questionnaires)
    #[command(subcommand)]
    Instruments(InstrumentsCommand),
}

#[derive(Subcommand)]
enum InstrumentsCommand {
    /// Load the built-in instruments (PHQ-9, GAD-7) and those in --dir, each once (by url and
    /// version); the server also loads the built-in ones when it starts
    Load {
        /// A directory of Questionnaire JSON files to load as well
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the whole audit log's hash chain; exit 1 and name the first bad record if broken
    Verify {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Write the AuditEvents recorded since an instant to stdout
    Export {
        /// FHIR instant or date, e.g. 2026-11-30 or 2026-11-30T08:00:00Z
        #[arg(long)]
        since: String,
        /// Output format
        #[arg(long, value_parser = ["ndjson"], default_value = "ndjson")]
        format: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Space-separated SMART scopes, e.g. "patient/*.rs" or "system/Observation.cruds"
    #[arg(long)]
    scope: String,
    /// The patient in context (the `patient` claim that patient/ scopes are limited to)
    #[arg(long)]
    patient: Option<String>,
    /// The user (the `fhirUser` claim), e.g. Practitioner/123
    #[arg(long = "fhir-user")]
    fhir_user: Option<String>,
    /// Lifetime in seconds; a negative value mints an already expired token (for tests)
    #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
    ttl: i64,
    /// The client id (and subject) the token names
    #[arg(long = "client-id", default_value = "cairn-cli")]
    client_id: String,
    #[command(
        flatten,
        next_help_heading = "Server settings (the token must match the server's)"
    )]
    settings: Settings,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client (or replace its keys and scopes); prints its client id last
    Add {
        /// The client's public keys: a JWKS file, or the JWKS JSON itself
        #[arg(long)]
        jwks: String,
        /// The scopes the client may be granted at most, e.g. "system/Patient.rs"
        #[arg(long)]
        scope: String,
        /// The client id [default: a new random id]
        #[arg(long = "client-id")]
        client_id: Option<String>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// List registered clients
    List {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Remove a client
    Remove {
        /// The client id
        client_id: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

/// Reports a startup failure on one line (driver messages may span several) and exits with 2.
fn fail(msg: impl std::fmt::Display) -> ExitCode {
    let msg = msg.to_string();
    eprintln!(
        "cairn: {}",
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    ExitCode::from(2)
}

/// The settings `serve` would read, for a bare `cairn` (flags absent: environment and defaults).
#[derive(Parser)]
struct ServeOnly {
    #[command(flatten)]
    settings: Settings,
}

fn parse() -> Result<Command, clap::Error> {
    match Cli::try_parse()?.command {
        Some(command) => Ok(command),
        None => ServeOnly::try_parse_from(["cairn"]).map(|s| Command::Serve(Box::new(s.settings))),
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let command = match parse() {
        Ok(command) => command,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            return fail(first.trim_start_matches("error: "));
        }
    };
    match command {
        Command::Token(args) => token(*args),
        Command::Client(c) => client(c),
        Command::Audit(c) => audit(c),
        Command::Migrate(db) => match db.database_url.migrate() {
            Ok(applied) if applied.is_empty() => {
                println!("database is up to date");
                ExitCode::SUCCESS
            }
            Ok(applied) => {
                for m in applied {
                    println!("applied {m}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Reindex(settings) => {
            if let Err(e) = settings.validate() {
                return fail(e);
            }
            cairn::telemetry::init(settings.log_format);
            let result = actix_web::rt::System::new().block_on(async move {
                let engine = cairn::http::engine(&settings, 8080)?;
                engine.reindex().await.map_err(|e| e.to_string())
            });
            match result {
                Ok(n) => {
                    println!("reindexed {n} resources");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::StaticCeiling { listen, bytes } => {
            let body = format!(
                "{{\"resourceType\":\"Patient\",\"id\":\"{}\"}}",
                "x".repeat(bytes.saturating_sub(34).max(1))
            );
            match actix_web::rt::System::new().block_on(cairn::http::serve_static(&listen, body)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e.to_string()),
            }
        }
        Command::Openapi => {
            print!("{}", cairn::http::openapi::yaml());
            ExitCode::SUCCESS
        }
        Command::Instruments(InstrumentsCommand::Load { dir, settings }) => {
            if let Err(e) = settings.validate() {
                return fail(e);
            }
            cairn::telemetry::init(settings.log_format);
            let result = (|| {
                let engine = cairn::http::engine(&settings, 8080)?;
                let mut all = cairn::care::instruments::embedded();
                if let Some(d) = &dir {
                    all.extend(cairn::care::instruments::from_dir(d).map_err(|e| e.to_string())?);
                }
                engine.load_instruments_now(all).map_err(|e| e.to_string())
            })();
            match result {
                Ok(loaded) => {
                    for (name, id, created) in loaded {
                        let what = if created { "loaded" } else { "already present" };
                        println!("{name}: Questionnaire/{id} {what}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Serve(settings) => {
            if let Err(e) = settings.validate() {
                return fail(e);
            }
            cairn::telemetry::init(settings.log_format);
            let result = actix_web::rt::System::new().block_on(async move {
                let app = cairn::http::Application::build(&settings)?;
                app.run_until_stopped().await.map_err(|e| e.to_string())
            });
            cairn::telemetry::shutdown();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

/// `cairn token`: prints the token as the last line of stdout.
fn token(args: TokenArgs) -> ExitCode {
    if let Err(e) = args.settings.validate() {
        return fail(e);
    }
    if cairn::auth::parse_scopes(&args.scope).is_empty() {
        eprintln!(
            "cairn: warning: '{}' holds no resource scope; the token will open no data",
            args.scope
        );
    }
    let port = args
        .settings
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(8080);
    let auth = match cairn::auth::Auth::from_settings(&args.settings, port) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let mint = cairn::auth::server::Mint {
        subject: args.client_id.clone(),
        client_id: args.client_id,
        scope: args.scope,
        patient: args.patient,
        fhir_user: args.fhir_user,
        lifetime: args.ttl,
    };
    match auth.server.mint(&mint) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `cairn client add|list|remove`, directly on the database.
fn client(command: ClientCommand) -> ExitCode {
    use cairn::store::clients;
    let db = match &command {
        ClientCommand::Add { db, .. }
        | ClientCommand::List { db }
        | ClientCommand::Remove { db, .. } => db.clone(),
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let store =
            cairn::store::Store::open(&db.database_url, 1, std::time::Duration::from_secs(10))?;
        let e = |e: cairn::error::FhirError| e.to_string();
        match command {
            ClientCommand::Add {
                jwks,
                scope,
                client_id,
                ..
            } => {
                let text = match std::fs::read_to_string(&jwks) {
                    Ok(t) => t,
                    Err(_) if jwks.trim_start().starts_with('{') => jwks.clone(),
                    Err(err) => return Err(format!("cannot read the JWKS file {jwks}: {err}")),
                };
                let jwks = cairn::auth::server::check_client_jwks(&text)?;
                if cairn::auth::parse_scopes(&scope).is_empty() {
                    return Err(format!("'{scope}' holds no SMART resource scope"));
                }
                let id = client_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err("a client id must be non-empty, without spaces".into());
                }
                let row = clients::ClientRow {
                    client_id: id.clone(),
                    jwks,
                    scope,
                    created: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_micros() as i64)
                        .unwrap_or_default(),
                };
                store
                    .write(move |c| clients::put_client(c, &row))
                    .await
                    .map_err(e)?;
                Ok(format!("registered client {id}"))
            }
            ClientCommand::List { .. } => {
                let rows = store.read(clients::clients).await.map_err(e)?;
                Ok(rows
                    .iter()
                    .map(|r| format!("{}\t{}", r.client_id, r.scope))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
            ClientCommand::Remove { client_id, .. } => {
                let id = client_id.clone();
                if store
                    .write(move |c| clients::remove_client(c, &id))
                    .await
                    .map_err(e)?
                {
                    Ok(format!("removed client {client_id}"))
                } else {
                    Err(format!("no client {client_id}"))
                }
            }
        }
    });
    match result {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `cairn audit verify|export`, directly on the database.
fn audit(command: AuditCommand) -> ExitCode {
    let db = match &command {
        AuditCommand::Verify { db } | AuditCommand::Export { db, .. } => db.clone(),
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let store =
            cairn::store::Store::open(&db.database_url, 2, std::time::Duration::from_secs(10))?;
        let outcome: Result<bool, String> = match command {
            AuditCommand::Verify { .. } => {
                match cairn::audit::verify(&store)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    cairn::audit::Verdict::Intact { records, head } => {
                        println!("audit log intact: {records} records, chain head {head}");
                        Ok(true)
                    }
                    cairn::audit::Verdict::Broken { seq, problem } => {
                        println!("audit log BROKEN at record {seq}: {problem}");
                        Ok(false)
                    }
                }
            }
            AuditCommand::Export { since, .. } => {
                let from = cairn::fhir::parse_instant_range(&since)
                    .ok_or_else(|| format!("--since '{since}' is not a FHIR date or instant"))?
                    .start;
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                let n = cairn::audit::export(&store, from, &mut out)
                    .await
                    .map_err(|e| e.to_string())?;
                std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
                eprintln!("exported {n} AuditEvents");
                Ok(true)
            }
        };
        outcome
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    /// Option 15 is `purge_delay`: its default in mimalloc v3's options.c is 1000 (ms), and no
    /// neighbour's is.
    #[test]
    fn option_15_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(15) }, 1000);
            assert_ne!(unsafe { libmimalloc_sys::mi_option_get(14) }, 1000);
            assert_ne!(unsafe { libmimalloc_sys::mi_option_get(16) }, 1000);
        }
    }
}
