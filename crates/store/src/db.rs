//! Connections: one `DbConnection` over SQLite and PostgreSQL, chosen from the URL, behind an
//! r2d2 pool; migrations embedded per backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::{StoreError, StoreResult};

/// A connection to either backend. Generic diesel queries work on it directly; code whose SQL
/// differs per backend matches on the variant (see [`with_backend!`](crate::with_backend)).
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    /// PostgreSQL, the production backend (several replicas may share it).
    Postgresql(PgConnection),
    /// SQLite, the embedded default (one instance, one writer).
    Sqlite(SqliteConnection),
}

impl std::fmt::Debug for DbConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgresql(_) => "DbConnection::Postgresql",
            Self::Sqlite(_) => "DbConnection::Sqlite",
        })
    }
}

/// Runs the same body against the concrete connection of either backend, so queries that
/// `MultiConnection` cannot express (multi-row inserts, upserts, COPY) compile once per backend.
#[macro_export]
#[doc(hidden)]
macro_rules! with_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::DbConnection::Postgresql($c) => $body,
            $crate::DbConnection::Sqlite($c) => $body,
        }
    };
}

/// Which database engine a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A parsed database location.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://user:password@host:port/db?params`.
    Postgres(String),
    /// A SQLite file path (from `sqlite://path`, `sqlite:path` or a bare path).
    Sqlite(PathBuf),
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl DatabaseUrl {
    /// Parses `postgres://…`/`postgresql://…`, `sqlite://path`, `sqlite:path` or a bare file path.
    /// Any other scheme is refused with a message that lists the accepted forms.
    pub fn parse(raw: &str) -> StoreResult<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(StoreError::InvalidUrl {
                url: String::new(),
                reason: "it is empty; set database.url to a file path such as data/tierwise.db or to postgres://user@host/db".into(),
            });
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_string()));
        }
        let path = if let Some(rest) = raw.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = raw.strip_prefix("sqlite:") {
            rest
        } else if let Some((scheme, _)) = raw.split_once("://") {
            return Err(StoreError::InvalidUrl {
                url: mask_password(raw),
                reason: format!(
                    "the scheme '{scheme}' is not supported; use postgres://… or a SQLite file path such as data/tierwise.db"
                ),
            });
        } else {
            raw
        };
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::InvalidUrl {
                url: raw.to_string(),
                reason: "SQLite needs a file path (an in-memory database is not shared between pooled connections)".into(),
            });
        }
        Ok(Self::Sqlite(PathBuf::from(path)))
    }

    /// The backend this URL selects.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The URL for logs and messages, password replaced by `***`.
    pub fn masked(&self) -> String {
        match self {
            Self::Postgres(url) => mask_password(url),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    fn connect(&self) -> StoreResult<DbConnection> {
        match self {
            Self::Postgres(url) => PgConnection::establish(url)
                .map(DbConnection::Postgresql)
                .map_err(|source| StoreError::Connect {
                    url: self.masked(),
                    source,
                }),
            Self::Sqlite(path) => {
                create_parent_dir(path)?;
                let url = path.to_string_lossy();
                let mut conn =
                    SqliteConnection::establish(&url).map_err(|source| StoreError::Connect {
                        url: self.masked(),
                        source,
                    })?;
                // WAL lets readers proceed during an import; NORMAL is durable at commit in WAL
                // mode; the busy timeout makes a second writer wait instead of failing at once.
                // A 32 MiB page cache loaded 1M orders fastest (16 and 64 MiB were slower).
                conn.batch_execute(&format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                     PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{SQLITE_CACHE_KIB};"
                ))?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }
}

fn create_parent_dir(path: &Path) -> StoreResult<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.exists() => {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::InvalidUrl {
                url: path.display().to_string(),
                reason: format!("cannot create the folder {}: {e}", parent.display()),
            })
        }
        _ => Ok(()),
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The r2d2 connection manager: connects by URL scheme (the derive's own `establish` would
/// swallow a PostgreSQL error and try SQLite instead).
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    url: DatabaseUrl,
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = StoreError;

    fn connect(&self) -> Result<DbConnection, StoreError> {
        let mut conn = self.url.connect()?;
        conn.set_instrumentation(ConnectionHealth::default());
        Ok(conn)
    }

    /// Pings a connection at checkout unless a query succeeded on it within
    /// [`ConnectionHealth::TRUSTED_FOR`]: under load that ping was a tenth of a page's database
    /// round trips.
    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), StoreError> {
        let recently_fine = conn
            .instrumentation()
            .downcast_ref::<ConnectionHealth>()
            .and_then(|health| health.last_success)
            .is_some_and(|at| at.elapsed() < ConnectionHealth::TRUSTED_FOR);
        if recently_fine {
            return Ok(());
        }
        conn.batch_execute("SELECT 1").map_err(StoreError::Query)
    }

    /// Broken: the server connection is gone, or (as diesel's own pool manager judges) the
    /// connection comes back inside a transaction — its holder panicked, or a rollback failed.
    /// Put back in the pool, such a connection would keep SQLite's write lock and hand its next
    /// user a savepoint instead of a transaction; dropped, its transaction is rolled back.
    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        use diesel::connection::TransactionManager;
        std::thread::panicking()
            || <DbConnection as Connection>::TransactionManager::is_broken_transaction_manager(conn)
            || conn
                .instrumentation()
                .downcast_ref::<ConnectionHealth>()
                .is_some_and(|health| health.lost)
    }
}

/// What a pooled connection's queries showed of it (diesel instrumentation, set at connect).
#[derive(Debug, Default)]
struct ConnectionHealth {
    /// When a query last succeeded.
    last_success: Option<std::time::Instant>,
    /// A query failed because the server connection is gone: the pool drops the connection
    /// when it comes back.
    lost: bool,
}

impl ConnectionHealth {
    /// How long after a successful query a connection is handed out without a ping (the
    /// "alive bypass window" of JDBC pools).
    const TRUSTED_FOR: Duration = Duration::from_millis(500);
}

impl diesel::connection::Instrumentation for ConnectionHealth {
    fn on_connection_event(&mut self, event: diesel::connection::InstrumentationEvent<'_>) {
        use diesel::result::{DatabaseErrorKind, Error};
        if let diesel::connection::InstrumentationEvent::FinishQuery { error, .. } = event {
            match error {
                None => self.last_success = Some(std::time::Instant::now()),
                Some(Error::DatabaseError(
                    DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                    _,
                )) => self.lost = true,
                Some(_) => {}
            }
        }
    }
}

/// Page cache of each SQLite connection, in KiB.
pub(crate) const SQLITE_CACHE_KIB: i64 = 32 * 1024;

/// A pooled connection.
pub type PooledConnection = r2d2::PooledConnection<ConnectionManager>;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// Key of the PostgreSQL advisory lock held while migrating, so replicas starting together
/// apply migrations once.
const MIGRATION_LOCK_KEY: i64 = 0x7469_6572_7769_7365; // "tierwise"

/// A held database-wide lock (see [`Database::try_exclusive`]); dropping it releases the lock.
pub enum ExclusiveLock {
    /// PostgreSQL advisory lock held by this connection.
    Postgres {
        /// The connection holding the lock (boxed: a pooled connection is large).
        conn: Box<PooledConnection>,
        /// The lock key.
        key: i64,
    },
    /// Locked file beside the SQLite database.
    File(std::fs::File),
}

impl std::fmt::Debug for ExclusiveLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Postgres { key, .. } => write!(f, "ExclusiveLock::Postgres({key})"),
            Self::File(_) => f.write_str("ExclusiveLock::File"),
        }
    }
}

impl Drop for ExclusiveLock {
    fn drop(&mut self) {
        if let Self::Postgres { conn, key } = self {
            // If unlocking fails the connection is unusable anyway and the lock ends with it.
            let unlocked = with_backend!(&mut ***conn, c => c.batch_execute(&format!("SELECT pg_advisory_unlock({key})")));
            if let Err(error) = unlocked {
                tracing::warn!(%error, "releasing an advisory lock failed");
            }
        }
    }
}

/// Advisory lock key of a lock name: FNV-1a of the name, so names need no registry.
fn lock_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// The database: a pool of connections to one backend.
#[derive(Clone)]
pub struct Database {
    pool: r2d2::Pool<ConnectionManager>,
    url: DatabaseUrl,
    /// One permit per pooled connection, for [`Database::run`]: async callers queue here, in
    /// order, rather than as blocked threads racing for the pool (unfair, and a thread each).
    permits: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("url", &self.url).finish()
    }
}

impl Database {
    /// Opens a pool of up to `pool_size` connections, at least 4 (SQLite pools have exactly 4:
    /// one writer at a time, a few readers). The first connection is made now, so a wrong URL fails here.
    pub fn open(url: &str, pool_size: u32) -> StoreResult<Self> {
        let url = DatabaseUrl::parse(url)?;
        // At least 4: a grading run holds its lock's connection, its main one and a reader.
        let max = match url.backend() {
            Backend::Sqlite => 4,
            Backend::Postgres => pool_size.max(4),
        };
        // Connect once directly to report the driver's own error rather than a pool timeout.
        drop(url.connect()?);
        let pool = r2d2::Pool::builder()
            .max_size(max)
            // No idle minimum: r2d2 would refill it from a background thread, and a process
            // exiting while that thread is inside libpq's TLS handshake can crash at exit.
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(30))
            .build(ConnectionManager { url: url.clone() })?;
        let permits = Arc::new(tokio::sync::Semaphore::new(max as usize));
        Ok(Self { pool, url, permits })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// The URL with its password masked.
    pub fn masked_url(&self) -> String {
        self.url.masked()
    }

    /// Takes the database-wide lock `name` without waiting, or fails with [`StoreError::Busy`]
    /// when another process (or replica) holds it. PostgreSQL: a session advisory lock on a
    /// connection kept out of the pool until the lock is dropped. SQLite: an exclusive lock on
    /// the file `<database>.<name>.lock`. Either is released if the holder dies.
    pub fn try_exclusive(&self, name: &str) -> StoreResult<ExclusiveLock> {
        match &self.url {
            DatabaseUrl::Postgres(_) => {
                let mut conn = self.conn()?;
                let key = lock_key(name);
                #[derive(QueryableByName)]
                struct Locked {
                    #[diesel(sql_type = diesel::sql_types::Bool)]
                    locked: bool,
                }
                let got: Locked = with_backend!(&mut *conn, c => diesel::sql_query(format!(
                    "SELECT pg_try_advisory_lock({key}) AS locked"
                ))
                .get_result(c)?);
                if !got.locked {
                    return Err(StoreError::Busy(format!(
                        "another process holds the '{name}' lock on this database; wait for it to finish"
                    )));
                }
                Ok(ExclusiveLock::Postgres {
                    conn: Box::new(conn),
                    key,
                })
            }
            DatabaseUrl::Sqlite(path) => {
                let mut lock_path = path.as_os_str().to_owned();
                lock_path.push(format!(".{name}.lock"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| {
                        StoreError::LockFailed(format!(
                            "cannot open lock file {}: {e}",
                            PathBuf::from(&lock_path).display()
                        ))
                    })?;
                match file.try_lock() {
                    Ok(()) => Ok(ExclusiveLock::File(file)),
                    Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Busy(format!(
                        "another process holds the '{name}' lock on this database ({}); wait for it to finish",
                        PathBuf::from(&lock_path).display()
                    ))),
                    Err(std::fs::TryLockError::Error(e)) => Err(StoreError::LockFailed(format!(
                        "cannot lock {}: {e}",
                        PathBuf::from(&lock_path).display()
                    ))),
                }
            }
        }
    }

    /// PostgreSQL: a new connection outside the pool, in a REPEATABLE READ transaction that
    /// shares `snapshot` (from `pg_export_snapshot()` in a live transaction). For work that
    /// leaves a connection unusable (diesel's `COPY TO`); drop it afterwards.
    pub(crate) fn snapshot_connection(&self, snapshot: &str) -> StoreResult<DbConnection> {
        let mut conn = self.url.connect()?;
        // The id comes from pg_export_snapshot (hex digits and dashes), never from input.
        let id: String = snapshot
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        conn.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{id}'"
        ))?;
        Ok(conn)
    }

    /// A connection from the pool, for synchronous callers (CLI commands, blocking tasks).
    pub fn conn(&self) -> StoreResult<PooledConnection> {
        Ok(self.pool.get()?)
    }

    /// An idle connection from the pool if one is there now, without waiting (for work that
    /// can be done without it).
    pub fn try_conn(&self) -> Option<PooledConnection> {
        self.pool.try_get()
    }

    /// Runs `f` with a pooled connection on tokio's blocking thread pool, carrying the caller's
    /// tracing span, so async callers never block the runtime on database I/O.
    pub async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> StoreResult<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let pool = self.pool.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let _permit = permit;
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Applies pending migrations (under an advisory lock on PostgreSQL) and returns the
    /// versions applied.
    pub fn migrate(&self) -> StoreResult<Vec<String>> {
        let mut conn = self.conn()?;
        run_pending_migrations(&mut conn)
    }
}

/// Applies pending migrations on `conn`; see [`Database::migrate`].
pub fn run_pending_migrations(conn: &mut DbConnection) -> StoreResult<Vec<String>> {
    let applied = match conn {
        DbConnection::Postgresql(pg) => {
            pg.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
            let result = pg
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>());
            pg.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))?;
            result
        }
        DbConnection::Sqlite(lite) => lite
            .run_pending_migrations(SQLITE_MIGRATIONS)
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>()),
    };
    applied.map_err(|e| StoreError::Migration(e.to_string()))
}

/// Reverts every applied migration (newest first); returns the versions reverted.
pub fn revert_all_migrations(conn: &mut DbConnection) -> StoreResult<Vec<String>> {
    let reverted = match conn {
        DbConnection::Postgresql(pg) => pg
            .revert_all_migrations(POSTGRES_MIGRATIONS)
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>()),
        DbConnection::Sqlite(lite) => lite
            .revert_all_migrations(SQLITE_MIGRATIONS)
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>()),
    };
    reverted.map_err(|e| StoreError::Migration(e.to_string()))
}

/// Each known migration (`version_name`) with whether it is applied.
pub fn migration_status(conn: &mut DbConnection) -> StoreResult<Vec<(String, bool)>> {
    fn status<B, C>(
        conn: &mut C,
        source: &EmbeddedMigrations,
    ) -> diesel::migration::Result<Vec<(String, bool)>>
    where
        B: diesel::backend::Backend,
        C: MigrationHarness<B>,
        EmbeddedMigrations: diesel::migration::MigrationSource<B>,
    {
        let applied: Vec<String> = conn
            .applied_migrations()?
            .iter()
            .map(ToString::to_string)
            .collect();
        let known = diesel::migration::MigrationSource::<B>::migrations(source)?;
        Ok(known
            .iter()
            .map(|m| {
                let is_applied = applied.contains(&m.name().version().to_string());
                (m.name().to_string(), is_applied)
            })
            .collect())
    }
    match conn {
        DbConnection::Postgresql(pg) => status(pg, &POSTGRES_MIGRATIONS),
        DbConnection::Sqlite(lite) => status(lite, &SQLITE_MIGRATIONS),
    }
    .map_err(|e| StoreError::Migration(e.to_string()))
}

/// Runs `f` inside one transaction that may write: committed when `f` returns `Ok`, rolled back
/// otherwise; a nested call is a savepoint.
///
/// SQLite: the outermost one begins `IMMEDIATE`, taking the write lock at once (waiting up to
/// the busy timeout for another writer). A deferred transaction that reads and then writes fails
/// at its first write with "database is locked", without waiting, whenever another connection
/// committed since its first read (in WAL mode its snapshot is then stale): a scheduler's lease
/// renewal while a digest was being composed failed the monthly grade job that way. Reads that
/// only need one snapshot use [`read_transaction`], which does not hold other writers up.
pub fn transaction<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
{
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    type Manager = AnsiTransactionManager;
    fn on_sqlite<E: From<StoreError>>(
        conn: &mut DbConnection,
        step: impl FnOnce(&mut SqliteConnection) -> QueryResult<()>,
    ) -> Result<(), E> {
        match conn {
            DbConnection::Sqlite(c) => step(c).map_err(|e| E::from(StoreError::Query(e))),
            DbConnection::Postgresql(_) => Ok(()),
        }
    }
    let outermost_on_sqlite = match conn {
        DbConnection::Sqlite(c) => {
            <Manager as TransactionManager<SqliteConnection>>::transaction_manager_status_mut(c)
                .transaction_depth()
                .map_err(|e| E::from(StoreError::Query(e)))?
                .is_none()
        }
        DbConnection::Postgresql(_) => false,
    };
    if !outermost_on_sqlite {
        return diesel_transaction(conn, f);
    }
    on_sqlite(conn, |c| {
        Manager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
    })?;
    match f(conn) {
        Ok(value) => on_sqlite(conn, Manager::commit_transaction).map(|()| value),
        Err(error) => {
            if let Err(rollback) = on_sqlite::<StoreError>(conn, Manager::rollback_transaction) {
                tracing::warn!(error = %rollback, "rolling back a failed transaction failed");
            }
            Err(error)
        }
    }
}

/// Runs `f` inside one transaction that only reads (one consistent snapshot): on SQLite a
/// deferred transaction, which takes no write lock. Writing in it risks the stale-snapshot
/// failure [`transaction`] describes.
pub fn read_transaction<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
{
    diesel_transaction(conn, f)
}

/// diesel's own transaction (deferred on SQLite), or a savepoint inside one.
fn diesel_transaction<T, E, F>(conn: &mut DbConnection, f: F) -> Result<T, E>
where
    E: From<StoreError>,
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
{
    enum TxError<E> {
        Inner(E),
        Db(diesel::result::Error),
    }
    impl<E> From<diesel::result::Error> for TxError<E> {
        fn from(e: diesel::result::Error) -> Self {
            Self::Db(e)
        }
    }
    conn.transaction::<T, TxError<E>, _>(|c| f(c).map_err(TxError::Inner))
        .map_err(|e| match e {
            TxError::Inner(e) => e,
            TxError::Db(e) => E::from(StoreError::Query(e)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_by_scheme() {
        assert_eq!(
            DatabaseUrl::parse("data/t.db").unwrap().backend(),
            Backend::Sqlite
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/t.db").unwrap(),
            DatabaseUrl::Sqlite(PathBuf::from("data/t.db"))
        );
        assert_eq!(
            DatabaseUrl::parse("postgresql://u@h/db").unwrap().backend(),
            Backend::Postgres
        );
        let err = DatabaseUrl::parse("mysql://root:pw@h/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'mysql' is not supported"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(DatabaseUrl::parse(":memory:").is_err());
        assert!(DatabaseUrl::parse("").is_err());
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_password("postgres://app:s3cret@db:5432/tw?sslmode=require"),
            "postgres://app:***@db:5432/tw?sslmode=require"
        );
        assert_eq!(
            mask_password("postgres://app@db/tw"),
            "postgres://app@db/tw"
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://a:b@h/d").unwrap().masked(),
            "postgres://a:***@h/d"
        );
    }
}
