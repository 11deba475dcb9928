//! The `cairn` command: `serve` runs the FHIR server, `migrate` prepares the database.

use std::process::ExitCode;

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
        Command::Serve(settings) => {
            if let Err(e) = settings.validate() {
                return fail(e);
            }
            cairn::telemetry::init(settings.log_format);
            let result = actix_web::rt::System::new().block_on(async move {
                let app = cairn::http::Application::build(&settings)?;
                app.run_until_stopped().await.map_err(|e| e.to_string())
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}
