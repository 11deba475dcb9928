//! Storage: one diesel code path over SQLite (embedded default) and PostgreSQL, through
//! `MultiConnection`, an r2d2 pool, and migrations embedded per backend. Database work runs on
//! tokio's blocking pool, never on an actix worker. Only this module sees diesel.

pub mod audit;
pub mod cache;
pub mod clients;
mod notify;
mod schema;
pub mod search;
mod sql;
mod versions;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, PgConnection, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{FhirError, FhirResult};

pub use versions::{
    advisory_xact_lock, append, append_new_many, current, current_for_update, history, version,
    CurrentRow, HistoryQuery, NewVersion, VersionRow,
};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database URL split into its backend and the string the driver expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    pub backend: Backend,
    pub target: String,
}

impl std::str::FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(
                    "a sqlite:// URL needs a file path, e.g. sqlite://./data/cairn.sqlite".into(),
                );
            }
            Ok(DatabaseUrl {
                backend: Backend::Sqlite,
                target: path.to_string(),
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // GSSAPI-encrypted connections only when asked for: libpq's default (`prefer`) loads
            // Kerberos on every connect, and Kerberos's exit handler then aborts a process whose
            // threads still hold connections as it exits (seen in test processes).
            let mut target = with_param(url, "gssencmode", "disable");
            // No TLS to a server on this host unless asked for: libpq's default (`prefer`)
            // encrypts a loopback connection, which nobody can listen to but root, at a cost in
            // CPU on both ends of every statement.
            if loopback_host(url) {
                target = with_param(&target, "sslmode", "disable");
            }
            Ok(DatabaseUrl {
                backend: Backend::Postgres,
                target,
            })
        } else {
            Err("must start with sqlite:// or postgres://".into())
        }
    }
}

/// `url` with `key=value` added to its query string, unless the query already sets `key`.
pub(crate) fn with_param(url: &str, key: &str, value: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|kv| kv.split('=').next() == Some(key)) {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// Whether a `postgres://` URL names only this host (`localhost`, `127.0.0.1`, `[::1]`), with no
/// `host` parameter to override it.
fn loopback_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a.split('/').next().unwrap_or_default(), q),
        None => (rest.split('/').next().unwrap_or_default(), ""),
    };
    let hostport = authority.rsplit('@').next().unwrap_or_default();
    let host = if hostport.starts_with('[') {
        hostport.split(']').next().map_or("", |h| &h[1..])
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    let overridden = query
        .split('&')
        .any(|kv| kv.starts_with("host=") || kv.starts_with("hostaddr="));
    !overridden && matches!(host, "localhost" | "127.0.0.1" | "::1")
}

impl DatabaseUrl {
    fn establish(&self) -> Result<DbConn, String> {
        keep_tls_at_exit();
        match self.backend {
            Backend::Sqlite => {
                if let Some(dir) = std::path::Path::new(&self.target).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    }
                }
                SqliteConnection::establish(&self.target)
                    .map(DbConn::Sqlite)
                    .map_err(|e| e.to_string())
            }
            Backend::Postgres => PgConnection::establish(&self.target)
                .map(DbConn::Postgres)
                .map_err(|e| e.to_string()),
        }
    }

    /// Applies pending migrations; returns the names of those applied.
    pub fn migrate(&self) -> Result<Vec<String>, String> {
        let mut conn = self.establish()?;
        let applied = match &mut conn {
            DbConn::Sqlite(c) => {
                c.batch_execute(SQLITE_PRAGMAS).map_err(|e| e.to_string())?;
                c.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(|v| v.iter().map(ToString::to_string).collect())
            }
            DbConn::Postgres(c) => {
                // Replicas may start together: one migrates while the others wait.
                c.batch_execute("SELECT pg_advisory_lock(7286452)")
                    .map_err(|e| e.to_string())?;
                let r = c
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|v| v.iter().map(ToString::to_string).collect());
                let _ = c.batch_execute("SELECT pg_advisory_unlock(7286452)");
                r
            }
        };
        applied.map_err(|e| format!("migration failed: {e}"))
    }
}

// case_sensitive_like lets `LIKE 'prefix%'` use the string index (its values are already folded).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 15000; PRAGMA foreign_keys = ON; \
     PRAGMA case_sensitive_like = ON;";

/// Keeps OpenSSL (which libpq loads for TLS to PostgreSQL) from tearing itself down at process
/// exit: its exit handler, `OPENSSL_cleanup`, crashed test processes as they exited, with idle
/// threads that had used TLS connections still alive. The first initialization decides, so this
/// runs before the first connection (`DatabaseUrl::establish`, and the tests' own connections).
/// A no-op when no OpenSSL is loaded.
pub fn keep_tls_at_exit() {
    const OPENSSL_INIT_NO_ATEXIT: u64 = 0x0008_0000;
    type Init = unsafe extern "C" fn(u64, *const libc::c_void) -> libc::c_int;
    // SAFETY: the symbol, if present, is OpenSSL's
    // `int OPENSSL_init_crypto(uint64_t opts, const OPENSSL_INIT_SETTINGS *settings)`, which
    // accepts a null settings pointer and may be called from any thread, any number of times.
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"OPENSSL_init_crypto".as_ptr());
        if !sym.is_null() {
            let init: Init = std::mem::transmute::<*mut libc::c_void, Init>(sym);
            init(OPENSSL_INIT_NO_ATEXIT, std::ptr::null());
        }
    }
}

/// Read-held while a thread of our own (the audit committer's idle work, the cache listener)
/// uses the database in the background; true once the process is exiting. The exit waits for the
/// work under way and stops it, so that no background query runs while the process tears down.
/// (The crash at exit that this was first written for turned out to be OpenSSL's own exit
/// handler: `keep_tls_at_exit`.)
static EXITING: std::sync::RwLock<bool> = std::sync::RwLock::new(false);

extern "C" fn stop_background_work() {
    *EXITING.write().unwrap_or_else(|e| e.into_inner()) = true;
}

/// Permission to do background database work now (held while it runs); None once the process
/// is exiting.
pub fn background_work() -> Option<std::sync::RwLockReadGuard<'static, bool>> {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function with no arguments, run once at exit.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(stop_background_work);
    });
    let g = EXITING.read().unwrap_or_else(|e| e.into_inner());
    (!*g).then_some(g)
}

/// The first row of `query`, if any: diesel's `first`, except on SQLite, where it runs without a
/// `LIMIT`. Diesel binds the limit as a parameter, and SQLite (3.53) plans with a bound LIMIT's
/// value, so rebinding it re-prepares the statement on every run, which defeats the statement
/// cache; SQLite steps rows lazily, so only the first is read. (PostgreSQL sends a whole result at
/// once, so there the `LIMIT` stays.)
pub(crate) fn first_row<'q, Q, U>(query: Q, conn: &mut DbConn) -> FhirResult<Option<U>>
where
    Q: diesel::query_dsl::methods::LimitDsl + diesel::query_dsl::LoadQuery<'q, DbConn, U> + 'q,
    diesel::dsl::Limit<Q>: diesel::query_dsl::LoadQuery<'q, DbConn, U>,
    U: 'q,
{
    use diesel::OptionalExtension;
    Ok(match conn {
        DbConn::Sqlite(_) => query
            .load_iter::<U, diesel::connection::DefaultLoadingMode>(conn)?
            .next()
            .transpose()?,
        DbConn::Postgres(_) => query.first(conn).optional()?,
    })
}

/// Every PostgreSQL connection's transactions, unless one says otherwise.
const PG_ISOLATION: &str =
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED;";

/// Session settings of every new connection: SQLite's pragmas; PostgreSQL's isolation level and
/// statement timeout.
#[derive(Debug)]
struct SessionSetup {
    statement_timeout: Option<Duration>,
}

impl CustomizeConnection<DbConn, diesel::r2d2::Error> for SessionSetup {
    fn on_acquire(&self, conn: &mut DbConn) -> Result<(), diesel::r2d2::Error> {
        match conn {
            DbConn::Sqlite(c) => c.batch_execute(SQLITE_PRAGMAS),
            // Statements see what committed before them (the audit chain's head is read after its
            // lock), whatever the database's default isolation: set once per connection rather
            // than per transaction, a round trip less for every write.
            DbConn::Postgres(c) => c.batch_execute(&match self.statement_timeout {
                Some(t) => format!("{PG_ISOLATION} SET statement_timeout = {};", t.as_millis()),
                None => PG_ISOLATION.to_string(),
            }),
        }
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// A connection checked out of the pool.
pub type Pooled = PooledConnection<ConnectionManager<DbConn>>;

/// The shared handle to the database: cheap to clone, one per application.
#[derive(Clone)]
pub struct Store {
    pool: Pool<ConnectionManager<DbConn>>,
    backend: Backend,
    /// How long a request's database work may take before it is answered 503.
    deadline: Option<Duration>,
    /// The current-version cache (None: off, as for the CLI's commands).
    cache: Option<std::sync::Arc<cache::ReadCache>>,
}

impl Store {
    /// Migrates the database and opens a pool. Fails (with a one-line reason) if it is unreachable.
    pub fn open(url: &DatabaseUrl, pool_size: u32, wait: Duration) -> Result<Store, String> {
        Store::open_with_deadline(url, pool_size, wait, None)
    }

    /// `open`, with a deadline for each request's database work (None: no deadline). On
    /// PostgreSQL a statement running longer is also cancelled by the server.
    pub fn open_with_deadline(
        url: &DatabaseUrl,
        pool_size: u32,
        wait: Duration,
        deadline: Option<Duration>,
    ) -> Result<Store, String> {
        url.migrate()?;
        let manager = ConnectionManager::<DbConn>::new(match url.backend {
            Backend::Sqlite => url.target.clone(),
            Backend::Postgres => url.target.clone(),
        });
        let pool = Pool::builder()
            .max_size(pool_size)
            // No connections opened in the background: a process (a CLI command) may exit while
            // r2d2's thread is still inside libpq, which can crash at exit.
            .min_idle(Some(0))
            .connection_timeout(wait)
            .connection_customizer(Box::new(SessionSetup {
                statement_timeout: deadline,
            }))
            .build(manager)
            .map_err(|e| format!("cannot open a database pool: {e}"))?;
        Ok(Store {
            pool,
            backend: url.backend,
            deadline,
            cache: None,
        })
    }

    /// Turns on the current-version cache, of at most `bytes` (see `cache`); on PostgreSQL it
    /// starts bypassed until its listener is connected.
    pub fn with_read_cache(mut self, url: &DatabaseUrl, bytes: u64) -> Store {
        let pg = url.backend == Backend::Postgres;
        let cache = std::sync::Arc::new(cache::ReadCache::new(bytes, !pg));
        if pg {
            cache::listen(&cache, url.target.clone());
        }
        self.cache = Some(cache);
        self
    }

    /// The current-version cache, when it is on.
    pub fn cache(&self) -> Option<&cache::ReadCache> {
        self.cache.as_deref()
    }

    /// How long a request's database work may take (None: no limit).
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn conn(&self) -> FhirResult<Pooled> {
        crate::metrics::POOL_WAITING.inc();
        let got = self.pool.get();
        crate::metrics::POOL_WAITING.dec();
        got.map_err(|e| {
            crate::metrics::POOL_TIMEOUTS.inc();
            tracing::warn!(error = %e, "no database connection available");
            FhirError::Unavailable("the database is unavailable; retry later".into())
        })
    }

    /// The pool's connections: (in use, idle, maximum).
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let s = self.pool.state();
        (
            s.connections - s.idle_connections,
            s.idle_connections,
            self.pool.max_size(),
        )
    }

    /// Runs read-only work on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> FhirResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> FhirResult<T> + Send + 'static,
    {
        let store = self.clone();
        self.blocking(move || f(&mut *store.conn()?)).await
    }

    /// Runs read-only work on the calling thread (for threads of our own, such as the audit
    /// committer; never on an async worker).
    pub fn read_now<T, F>(&self, f: F) -> FhirResult<T>
    where
        F: FnOnce(&mut DbConn) -> FhirResult<T>,
    {
        f(&mut *self.conn()?)
    }

    /// Runs an append to the audit log on the calling thread (the audit committer's), on the
    /// connection it holds (`held`: taken from the pool when empty; given back after an error, so
    /// a broken one is replaced, and at once if the pool has fewer than four connections): on
    /// PostgreSQL one statement that is its own transaction
    /// (`audit::chain::append`), so a group commit is one round trip; on SQLite a write
    /// transaction.
    pub fn append_now<T, F>(&self, held: &mut Option<Pooled>, f: F) -> FhirResult<T>
    where
        F: FnOnce(&mut DbConn) -> FhirResult<T>,
    {
        let conn: &mut DbConn = match held {
            Some(c) => c,
            None => held.insert(self.conn()?),
        };
        let result = match self.backend {
            Backend::Postgres => f(conn),
            Backend::Sqlite => self.write_on(conn, f),
        };
        // Kept only if requests are left enough of a small pool.
        if result.is_err() || self.pool.max_size() < 4 {
            *held = None;
        }
        result
    }

    /// Runs `f` in one transaction on the calling thread (for threads of our own, such as the
    /// audit committer; never on an async worker).
    pub fn write_now<T, F>(&self, f: F) -> FhirResult<T>
    where
        F: FnOnce(&mut DbConn) -> FhirResult<T>,
    {
        self.write_on(&mut *self.conn()?, f)
    }

    /// `write_now` on a connection the caller holds.
    fn write_on<T, F>(&self, conn: &mut DbConn, f: F) -> FhirResult<T>
    where
        F: FnOnce(&mut DbConn) -> FhirResult<T>,
    {
        let touched = cache::Touched::start();
        // On PostgreSQL every writer tells the instances' caches, the CLI's commands included.
        let notify = self.backend == Backend::Postgres;
        let result = conn.transaction(|c: &mut DbConn| {
            // Take SQLite's write lock first (see the write_lock table). PostgreSQL's connections
            // are READ COMMITTED (`SessionSetup`).
            if let DbConn::Sqlite(_) = c {
                c.batch_execute("UPDATE write_lock SET n = n + 1 WHERE id = 1")?
            }
            let out = f(c)?;
            // Other instances forget what this one wrote, when it commits.
            if notify {
                use diesel::RunQueryDsl;
                for payload in cache::payloads(&cache::Touched::so_far()) {
                    diesel::sql_query("SELECT pg_notify($1, $2)")
                        .bind::<diesel::sql_types::Text, _>(cache::CHANNEL)
                        .bind::<diesel::sql_types::Text, _>(payload)
                        .execute(c)?;
                }
            }
            Ok(out)
        });
        // Committed or not, what it wrote is read from the database again.
        let keys = touched.take();
        if let (Some(cache), false) = (&self.cache, keys.is_empty()) {
            cache.forget(keys.iter().map(|(t, i)| (t.as_str(), i.as_str())));
        }
        result
    }

    /// Runs read-only work that makes several queries in one transaction on a consistent snapshot
    /// (a search: what was matched under the caller's visibility is what is sent).
    pub async fn snapshot<T, F>(&self, f: F) -> FhirResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> FhirResult<T> + Send + 'static,
    {
        let store = self.clone();
        self.blocking(move || {
            let mut pooled = store.conn()?;
            let conn: &mut DbConn = &mut pooled;
            conn.transaction(|c: &mut DbConn| {
                if let DbConn::Postgres(_) = c {
                    c.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
                }
                f(c)
            })
        })
        .await
    }

    /// Runs `f` in one database transaction on a blocking thread: it all commits or none of it does.
    pub async fn write<T, F>(&self, f: F) -> FhirResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> FhirResult<T> + Send + 'static,
    {
        let store = self.clone();
        let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = abandoned.clone();
        self.blocking_abandonable(
            move || {
                store.write_now(move |conn| {
                    let out = f(conn)?;
                    // Answered 503 at the deadline meanwhile: roll back, so what the client was
                    // told (not done) is what happened.
                    if flag.load(std::sync::atomic::Ordering::SeqCst) {
                        return Err(FhirError::Unavailable("abandoned at the deadline".into()));
                    }
                    Ok(out)
                })
            },
            Some(abandoned),
        )
        .await
    }

    /// Refreshes the planner's statistics (after bulk loads or a reindex: without them the
    /// planner may drive a search from an unselective index).
    pub async fn analyze(&self) -> FhirResult<()> {
        self.read(|c| c.batch_execute("ANALYZE").map_err(FhirError::from))
            .await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> FhirResult<()> {
        self.read(|c| c.batch_execute("SELECT 1").map_err(FhirError::from))
            .await
    }
}

impl Store {
    /// Runs database work on tokio's blocking pool, within the deadline: past it the request is
    /// answered 503 (work already under way finishes or, on PostgreSQL, is cancelled by the
    /// statement timeout; a write that commits anyway keeps its audit record).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> FhirResult<T> + Send + 'static,
    ) -> FhirResult<T> {
        self.blocking_abandonable(f, None).await
    }

    /// `blocking`; at the deadline `abandoned` is set, for work that can still undo itself.
    async fn blocking_abandonable<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> FhirResult<T> + Send + 'static,
        abandoned: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> FhirResult<T> {
        let task = tokio::task::spawn_blocking(f);
        let joined = match self.deadline {
            None => task.await,
            Some(d) => match tokio::time::timeout(d, task).await {
                Ok(j) => j,
                Err(_) => {
                    if let Some(a) = abandoned {
                        a.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    tracing::warn!(seconds = d.as_secs_f64(), "request deadline passed");
                    return Err(FhirError::Unavailable(format!(
                        "the request did not complete within {} s; retry later",
                        d.as_secs_f64()
                    )));
                }
            },
        };
        joined.map_err(|e| FhirError::Internal(format!("database task failed: {e}")))?
    }
}

impl From<DieselError> for FhirError {
    fn from(e: DieselError) -> Self {
        match &e {
            DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::SerializationFailure,
                _,
            ) => FhirError::WriteConflict,
            // Two transactions that locked rows in opposite orders: PostgreSQL aborts one; the
            // engine retries it like any lost race.
            DieselError::DatabaseError(_, info) if info.message().contains("deadlock detected") => {
                FhirError::WriteConflict
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                FhirError::Unavailable("the database connection was lost; retry".into())
            }
            // PostgreSQL's statement_timeout (the request deadline): answered like the deadline.
            DieselError::DatabaseError(_, info) if info.message().contains("statement timeout") => {
                FhirError::Unavailable("the request did not complete in time; retry later".into())
            }
            DieselError::DatabaseError(_, info)
                if info.message().contains("locked") || info.message().contains("busy") =>
            {
                FhirError::Unavailable("the database is busy; retry".into())
            }
            _ => {
                tracing::error!(error = %e, "database error");
                FhirError::Internal(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_name_their_backend() {
        let s: DatabaseUrl = "sqlite:///tmp/x/cairn.sqlite".parse().unwrap();
        assert_eq!(
            (s.backend, s.target.as_str()),
            (Backend::Sqlite, "/tmp/x/cairn.sqlite")
        );
        let p: DatabaseUrl = "postgres://u@h/db".parse().unwrap();
        assert_eq!(
            (p.backend, p.target.as_str()),
            (Backend::Postgres, "postgres://u@h/db?gssencmode=disable")
        );
        let p: DatabaseUrl = "postgres://u@h/db?sslmode=require".parse().unwrap();
        assert_eq!(
            p.target,
            "postgres://u@h/db?sslmode=require&gssencmode=disable"
        );
        let p: DatabaseUrl = "postgres://u@h/db?gssencmode=require".parse().unwrap();
        assert_eq!(p.target, "postgres://u@h/db?gssencmode=require");
        for (url, target) in [
            (
                "postgres://u:p@127.0.0.1:5432/db",
                "postgres://u:p@127.0.0.1:5432/db?gssencmode=disable&sslmode=disable",
            ),
            (
                "postgres://localhost/db?application_name=x",
                "postgres://localhost/db?application_name=x&gssencmode=disable&sslmode=disable",
            ),
            (
                "postgresql://u@[::1]:5433/db",
                "postgresql://u@[::1]:5433/db?gssencmode=disable&sslmode=disable",
            ),
            // Only the query's own parameters count, not text that looks like one.
            (
                "postgres://u:sslmode=x@localhost/db",
                "postgres://u:sslmode=x@localhost/db?gssencmode=disable&sslmode=disable",
            ),
            // Asked for, another host, or a host parameter: left to libpq.
            (
                "postgres://u@127.0.0.1/db?sslmode=require",
                "postgres://u@127.0.0.1/db?sslmode=require&gssencmode=disable",
            ),
            (
                "postgres://u@127.0.0.2/db",
                "postgres://u@127.0.0.2/db?gssencmode=disable",
            ),
            (
                "postgres://localhost.example.org/db",
                "postgres://localhost.example.org/db?gssencmode=disable",
            ),
            (
                "postgres://u@localhost/db?host=db.example.org",
                "postgres://u@localhost/db?host=db.example.org&gssencmode=disable",
            ),
        ] {
            let p: DatabaseUrl = url.parse().unwrap();
            assert_eq!(p.target, target, "{url}");
        }
        assert!("mysql://x".parse::<DatabaseUrl>().is_err());
        assert!("sqlite://".parse::<DatabaseUrl>().is_err());
    }
}
