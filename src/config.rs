//! Settings: one typed struct, from flags or `CAIRN_*` environment variables, validated at start so
//! that a bad value stops the server with one line naming it.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::store::DatabaseUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every FHIR request needs a valid Bearer token
    Enabled,
    /// No token needed, everything allowed: for local experiments only
    Disabled,
}

/// Rules and caps of writes (transactions, conditional operations, references).
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// Refuse writes whose local references point to nothing, and deletes of referenced
    /// resources (off: for bulk loads of data whose references are completed later)
    #[arg(long, env = "CAIRN_REFERENTIAL_INTEGRITY", default_value = "on",
          value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub referential_integrity: bool,

    /// Most resources one conditional delete may remove (more matches: 412, nothing deleted)
    #[arg(long, env = "CAIRN_CONDITIONAL_DELETE_MAX", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub conditional_delete_max: u32,

    /// Most entries in one transaction or batch Bundle (more: 413)
    #[arg(long, env = "CAIRN_BUNDLE_MAX_ENTRIES", default_value_t = 5_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub bundle_max_entries: u32,
}

impl Default for WriteArgs {
    fn default() -> WriteArgs {
        WriteArgs {
            referential_integrity: true,
            conditional_delete_max: 10,
            bundle_max_entries: 5_000,
        }
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

/// Authorization: the built-in authorization server, and an optional external OIDC provider.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Require Bearer tokens (enabled), or allow every request (disabled: local experiments only)
    #[arg(
        long = "auth",
        env = "CAIRN_AUTH",
        value_enum,
        default_value = "enabled"
    )]
    pub mode: AuthMode,

    /// Issuer (`iss`) of the built-in authorization server's tokens [default: ROOT/auth]
    #[arg(long = "auth-issuer", env = "CAIRN_AUTH_ISSUER", value_parser = parse_base_url)]
    pub issuer: Option<String>,

    /// Audience (`aud`) every access token must name [default: the FHIR base URL]
    #[arg(long = "auth-audience", env = "CAIRN_AUTH_AUDIENCE")]
    pub audience: Option<String>,

    /// Clock skew tolerated when checking `exp` and `nbf`, in seconds
    #[arg(long = "auth-leeway", env = "CAIRN_AUTH_LEEWAY", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=600))]
    pub leeway: u64,

    /// Lifetime of the access tokens the built-in server issues, in seconds
    #[arg(long = "auth-token-lifetime", env = "CAIRN_AUTH_TOKEN_LIFETIME", default_value_t = 300,
          value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub token_lifetime: i64,

    /// Issuer of an external OAuth 2 / OIDC provider whose access tokens are accepted too
    #[arg(long = "oidc-issuer", env = "CAIRN_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,

    /// The external provider's JWKS URL (keys are cached and refetched on an unknown kid)
    #[arg(long = "oidc-jwks-url", env = "CAIRN_OIDC_JWKS_URL", value_parser = parse_base_url)]
    pub oidc_jwks_url: Option<String>,

    /// A static JWKS file with the external provider's keys (instead of a URL)
    #[arg(long = "oidc-jwks-file", env = "CAIRN_OIDC_JWKS_FILE")]
    pub oidc_jwks_file: Option<PathBuf>,

    /// Least time between two fetches of the provider's JWKS, in seconds
    #[arg(long = "oidc-jwks-min-interval", env = "CAIRN_OIDC_JWKS_MIN_INTERVAL", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub oidc_jwks_min_interval: u64,

    /// How long fetched keys are used before they are fetched again, in seconds
    #[arg(long = "oidc-jwks-max-age", env = "CAIRN_OIDC_JWKS_MAX_AGE", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub oidc_jwks_max_age: u64,
}

impl Default for AuthArgs {
    /// The settings with no flag or variable given (as clap fills them): for embedding and tests.
    fn default() -> Self {
        AuthArgs {
            mode: AuthMode::Enabled,
            issuer: None,
            audience: None,
            leeway: 30,
            token_lifetime: 300,
            oidc_issuer: None,
            oidc_jwks_url: None,
            oidc_jwks_file: None,
            oidc_jwks_min_interval: 10,
            oidc_jwks_max_age: 600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditMode {
    /// Every interaction is recorded before it is answered
    Enabled,
    /// Nothing is recorded: for benchmarks that measure the audit's cost only
    Disabled,
}

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

    /// HTTP worker threads (0: one per CPU core)
    #[arg(long, env = "CAIRN_WORKERS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub workers: u16,

    /// Database connections in the pool
    #[arg(long, env = "CAIRN_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,

    /// Seconds a request waits for a database connection before it gets 503
    #[arg(long, env = "CAIRN_POOL_TIMEOUT", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub pool_timeout_secs: u64,

    /// Memory for the current-version cache that answers reads by id, in MiB (0: off)
    #[arg(long, env = "CAIRN_READ_CACHE_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub read_cache_mb: u64,

    /// Seconds a request's database work may take before it gets 503 (0: no limit); on
    /// PostgreSQL also each statement's timeout
    #[arg(long, env = "CAIRN_REQUEST_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub request_timeout_secs: u64,

    /// Page size of history (and search) Bundles when the client gives no _count
    #[arg(long, env = "CAIRN_DEFAULT_COUNT", default_value_t = 50,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub default_count: i64,

    /// Requests per second each client may make (a token bucket per client id, or per address
    /// before authentication); 0 turns rate limiting off. Over it: 429 with Retry-After
    #[arg(long, env = "CAIRN_RATE_LIMIT_PER_SECOND", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub rate_limit_per_second: u32,

    /// Requests a client may make at once before the rate applies (the bucket's size; 0: the
    /// same as CAIRN_RATE_LIMIT_PER_SECOND)
    #[arg(long, env = "CAIRN_RATE_LIMIT_BURST", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub rate_limit_burst: u32,

    /// Largest page size a client may ask for with _count (larger values are capped)
    #[arg(long, env = "CAIRN_MAX_COUNT", default_value_t = 1000,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub max_count: i64,

    #[command(flatten)]
    pub writes: WriteArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    /// The audit trail (enabled), or none (disabled: only to measure what auditing costs)
    #[arg(
        long = "audit",
        env = "CAIRN_AUDIT",
        value_enum,
        default_value = "enabled"
    )]
    pub audit: AuditMode,
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
        let a = &self.auth;
        match (&a.oidc_issuer, &a.oidc_jwks_url, &a.oidc_jwks_file) {
            (None, None, None) | (Some(_), Some(_), None) | (Some(_), None, Some(_)) => {}
            (Some(_), None, None) => {
                return Err(
                    "CAIRN_OIDC_ISSUER needs CAIRN_OIDC_JWKS_URL or CAIRN_OIDC_JWKS_FILE".into(),
                )
            }
            (_, Some(_), Some(_)) => {
                return Err("set CAIRN_OIDC_JWKS_URL or CAIRN_OIDC_JWKS_FILE, not both".into())
            }
            (None, _, _) => {
                return Err(
                    "CAIRN_OIDC_JWKS_URL / CAIRN_OIDC_JWKS_FILE need CAIRN_OIDC_ISSUER".into(),
                )
            }
        }
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

    /// The server's root URL (where /healthz and /auth live): the base URL without its `/fhir`.
    pub fn root_url_for(&self, port: u16) -> String {
        let base = self.base_url_for(port);
        match base.strip_suffix("/fhir") {
            Some(root) => root.to_string(),
            None => url::Url::parse(&base)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or(base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        auth: AuthArgs,
    }

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn workers_default_to_one_per_core_and_are_bounded() {
        let workers = |args: &[&str]| Serve::try_parse_from(args).map(|s| s.settings.workers);
        assert_eq!(workers(&["cairn"]).unwrap(), 0);
        assert_eq!(workers(&["cairn", "--workers", "3"]).unwrap(), 3);
        assert!(workers(&["cairn", "--workers", "5000"]).is_err());
        assert!(workers(&["cairn", "--workers", "-1"]).is_err());
    }

    #[test]
    fn auth_defaults_are_the_flags_defaults() {
        let parsed = Only::try_parse_from(["cairn"]).unwrap().auth;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", AuthArgs::default()));
    }
}
