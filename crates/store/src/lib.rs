//! Storage of tierwise: the one diesel schema, its migrations for SQLite (the embedded default)
//! and PostgreSQL (production), the connection pool, and the repositories other crates call.
//!
//! Only this crate knows diesel. Callers get a [`DbConnection`] handle from [`Database`], pass it
//! to the functions here, and own transactions through [`transaction`]. Async callers use
//! [`Database::run`], which moves the work onto tokio's blocking pool.

pub mod crm;
pub mod dashboard;
mod db;
mod error;
pub mod grading;
pub mod jobs;
pub mod load;
pub mod notify;
pub mod policy;
pub mod queries;
pub mod runs;
mod schema;
mod staging;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod users;

pub use db::{
    Backend, ConnectionManager, Database, DatabaseUrl, DbConnection, ExclusiveLock,
    PooledConnection, mask_password, migration_status, read_transaction, revert_all_migrations,
    run_pending_migrations, transaction,
};
pub use error::{StoreError, StoreResult};
pub use runs::ImportRunId;
