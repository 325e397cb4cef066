//! The scheduler of tierwise: job definitions from `jobs/` (one TOML file each), cron triggers
//! (tokio-cron-scheduler), and the database deciding who runs each occurrence, so any number of
//! replicas run every occurrence exactly once. Also: leases with fencing and take-over, catch-up
//! of occurrences missed while every replica was down, manual run requests and run history.
//!
//! `docs/operations.md` explains scheduling, time zones and replicas.

pub mod clock;
pub mod definition;
pub mod execute;
pub mod scheduler;

pub use clock::{Clock, FixedClock, SystemClock};
pub use definition::{JobDefinition, JobKind, PeriodSpec, load_dir, parse_timezone};
pub use execute::{JobEnv, Occurrence, execute};
pub use scheduler::{RunStats, Scheduler, SchedulerOptions, State};

/// What can go wrong scheduling or running jobs.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// A job file is invalid.
    #[error("{file}: {reason}")]
    Definition {
        /// The job file.
        file: String,
        /// Field and reason.
        reason: String,
    },
    /// A run or request names a job no file defines.
    #[error("no job named '{0}' in the jobs folder")]
    UnknownJob(String),
    /// Another replica took the run over; this one's result was refused.
    #[error("job {0}: the lease was lost to another replica; result not written")]
    LeaseLost(String),
    /// The cron scheduler failed.
    #[error("scheduler: {0}")]
    Scheduler(String),
    /// A file could not be read or moved.
    #[error("{0}")]
    Io(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] tierwise_store::StoreError),
    /// Grading failed.
    #[error(transparent)]
    Grading(#[from] tierwise_grading::GradingError),
    /// Notifications failed.
    #[error(transparent)]
    Notify(#[from] tierwise_notify::NotifyError),
    /// Import failed.
    #[error(transparent)]
    Import(#[from] tierwise_import::ImportError),
}

/// A name for this process in run history: host name and process id.
pub fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "tierwise".to_owned());
    format!("{host}-{}", std::process::id())
}
