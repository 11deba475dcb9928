//! Settings: one typed struct, from flags or `CAIRN_*` environment variables, validated at start so
//! that a bad value stops the server with one line naming it.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::store::DatabaseUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where the database is (shared by every subcommand that touches it).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://PATH (embedded, the default) or postgres://USER@HOST:PORT/DB
    #[arg(
        long,
        env = "CAIRN_DATABASE_URL",
        default_value = "sqlite://./data/cairn.sqlite"
    )]
    pub database_url: DatabaseUrl,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub db: DatabaseArgs,

    /// Address to listen on, host:port
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Public FHIR base URL used in Location headers and Bundle links [default: http://LISTEN/fhir]
    #[arg(long, env = "CAIRN_BASE_URL", value_parser = parse_base_url)]
    pub base_url: Option<String>,

    /// Directory for keys and other local state
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Log output: human-readable lines or one JSON object per line
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Largest request body accepted, in bytes (larger gets 413)
    #[arg(long, env = "CAIRN_MAX_BODY_SIZE", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub max_body_size: u64,

    /// Database connections in the pool
    #[arg(long, env = "CAIRN_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,

    /// Seconds a request waits for a database connection before it gets 503
    #[arg(long, env = "CAIRN_POOL_TIMEOUT", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub pool_timeout_secs: u64,

    /// Page size of history (and search) Bundles when the client gives no _count
    #[arg(long, env = "CAIRN_DEFAULT_COUNT", default_value_t = 50,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub default_count: i64,

    /// Largest page size a client may ask for with _count (larger values are capped)
    #[arg(long, env = "CAIRN_MAX_COUNT", default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub max_count: i64,
}

fn parse_base_url(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err("must be an http:// or https:// URL".into());
    }
    Ok(s.trim_end_matches('/').to_string())
}

impl Settings {
    pub fn database_url(&self) -> &DatabaseUrl {
        &self.db.database_url
    }

    /// Checks what clap cannot check alone.
    pub fn validate(&self) -> Result<(), String> {
        use std::net::ToSocketAddrs;
        self.listen
            .to_socket_addrs()
            .map_err(|e| format!("invalid CAIRN_LISTEN '{}': {e}", self.listen))?;
        if self.default_count > self.max_count {
            return Err(format!(
                "CAIRN_DEFAULT_COUNT ({}) must not exceed CAIRN_MAX_COUNT ({})",
                self.default_count, self.max_count
            ));
        }
        Ok(())
    }

    /// The public base URL; without one configured, derived from the address actually bound.
    pub fn base_url_for(&self, port: u16) -> String {
        self.base_url.clone().unwrap_or_else(|| {
            let host = self.listen.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
            let host = if host == "0.0.0.0" || host.is_empty() {
                "127.0.0.1"
            } else {
                host
            };
            format!("http://{host}:{port}/fhir")
        })
    }
}
