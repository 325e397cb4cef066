//! Errors of the store. Callers see what failed (connecting, migrating, a query) with the cause;
//! the diesel error type itself stays inside this crate.

/// Everything that can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configured database URL cannot be used.
    #[error("database URL '{url}' is not usable: {reason}")]
    InvalidUrl {
        /// The URL with any password masked.
        url: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Opening a connection failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL with any password masked.
        url: String,
        /// The driver's error.
        #[source]
        source: diesel::ConnectionError,
    },
    /// The pool could not hand out a connection in time.
    #[error("no database connection available: {0}")]
    Pool(#[from] r2d2::Error),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// Applying or reverting migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A blocking database task panicked or was cancelled.
    #[error("database task did not finish: {0}")]
    Task(String),
    /// A lock is held by another process: trying again later may work.
    #[error("{0}")]
    Busy(String),
    /// A lock could not be taken for another reason than its being held (its file cannot be
    /// opened or locked): waiting does not help.
    #[error("{0}")]
    LockFailed(String),
    /// A stored value could not be read back into a domain type.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;
