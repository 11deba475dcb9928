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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server (migrates the database first)
    Serve(Box<Settings>),
    /// Apply pending database migrations, then exit
    Migrate(DatabaseArgs),
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("cairn: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            return fail(
                text.lines()
                    .next()
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: "),
            );
        }
    };
    match cli.command {
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
