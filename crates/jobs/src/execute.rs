//! Running one occurrence of a job (blocking; the scheduler calls it on tokio's blocking pool).
//! Every kind is idempotent, so an occurrence taken over after its replica died may run again
//! safely: grading republishes the same period, queueing is deduplicated, sending claims rows.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeDelta};
use chrono_tz::Tz;
use serde_json::json;
use tierwise_domain::Period;
use tierwise_domain::grading::Policy;
use tierwise_grading::{GradingError, GradingReport, Mode, effective_policy, grade_period};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, import_file};
use tierwise_notify::{Composer, NotifySettings, SmtpSettings, Templates};
use tierwise_store::jobs::{self as store, Lease};
use tierwise_store::{Database, DbConnection, StoreError};

use crate::JobsError;
use crate::clock::Clock;
use crate::definition::JobKind;

/// What jobs need from the rest of tierwise.
#[derive(Debug)]
pub struct JobEnv {
    /// The database.
    pub db: Database,
    /// `[grading]` as configured (grading runs apply the policy version in force over it).
    pub policy: Policy,
    /// `[import]`.
    pub import: ImportSettings,
    /// Column mapping of imported files (`[import] mapping_file`).
    pub mapping: ColumnMapping,
    /// `[crm]`: the CRM connectors.
    pub crm: tierwise_import::crm::CrmSettings,
    /// `[notify]`.
    pub notify: NotifySettings,
    /// `[smtp]`.
    pub smtp: SmtpSettings,
    /// Email templates.
    pub templates: Templates,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// This process's name in run history.
    pub replica: String,
}

/// One occurrence being run.
#[derive(Debug, Clone)]
pub struct Occurrence {
    /// Job name.
    pub job: String,
    /// When it was due (UTC).
    pub scheduled_for: NaiveDateTime,
    /// The job's time zone.
    pub timezone: Tz,
    /// The lease held on it.
    pub lease: Lease,
}

impl JobEnv {
    fn composer<'a>(&'a self, domain: &'a str, o: &Occurrence) -> Composer<'a> {
        Composer {
            policy: &self.policy,
            settings: &self.notify,
            templates: &self.templates,
            mail_domain: domain,
            today: self.clock.now().with_timezone(&o.timezone).date_naive(),
        }
    }
}

/// Runs `kind` for occurrence `o`; returns what it did, as JSON for the run history.
pub fn execute(
    env: &JobEnv,
    kind: &JobKind,
    o: &Occurrence,
) -> Result<serde_json::Value, JobsError> {
    let domain = tierwise_notify::mail_domain(&env.smtp.from)?;
    Ok(match kind {
        JobKind::Grade { period, lock_wait } => {
            let period = period.resolve(o.scheduled_for, o.timezone);
            let report = grade_when_unlocked(env, o, period, *lock_wait)?;
            let queued = match env.notify.after_grading {
                true => queue_pending(&mut *env.db.conn()?, &env.composer(&domain, o))?,
                false => 0,
            };
            json!({
                "period": period.to_string(),
                "graded": report.summary.graded,
                "tier_changes": report.summary.tier_changes,
                "queued": queued,
            })
        }
        JobKind::Digest => {
            let queued = queue_pending(&mut *env.db.conn()?, &env.composer(&domain, o))?;
            json!({ "queued": queued })
        }
        JobKind::Reminders => {
            let report =
                tierwise_notify::queue_reminders(&mut *env.db.conn()?, &env.composer(&domain, o))?;
            json!({
                "period": report.as_ref().and_then(|r| r.period.clone()),
                "composed": report.as_ref().map_or(0, |r| r.composed),
                "queued": report.as_ref().map_or(0, |r| r.queued),
            })
        }
        JobKind::SendOutbox => {
            let r = tierwise_notify::send::drain_blocking(&env.db, &env.smtp, &env.notify.sending)?;
            json!({ "sent": r.sent, "retried": r.retried, "dead": r.dead })
        }
        JobKind::Cleanup { keep_days } => {
            let cutoff = env.clock.now().naive_utc() - TimeDelta::days(i64::from(*keep_days));
            let mut conn = env.db.conn()?;
            let runs = store::delete_finished_before(&mut conn, cutoff)?;
            let messages = tierwise_store::notify::delete_sent_before(&mut conn, cutoff)?;
            json!({ "job_runs_deleted": runs, "messages_deleted": messages })
        }
        JobKind::Import {
            dir,
            records,
            source,
        } => import_folder(env, dir, *records, source.as_deref())?,
        JobKind::CrmImport { sources } => crm_import(env, sources.as_deref())?,
        JobKind::Probe { sleep_ms } => {
            std::thread::sleep(std::time::Duration::from_millis(*sleep_ms));
            let written = store::record_probe(
                &mut *env.db.conn()?,
                o.lease,
                &o.job,
                o.scheduled_for,
                &env.replica,
                env.clock.now().naive_utc(),
            )?;
            if !written {
                return Err(JobsError::LeaseLost(o.job.clone()));
            }
            json!({ "probe": "written" })
        }
    })
}

/// How often a waiting grade job tries the grading lock again.
const LOCK_RETRY: Duration = Duration::from_secs(2);

/// Grades and publishes `period` with the policy in force, trying again every [`LOCK_RETRY`]
/// while another run holds the grading lock (a what-if on the dashboard, a manual `tierwise
/// grade`), for up to `wait`. The scheduler is the one caller that should wait (its lease is
/// renewed meanwhile); a person at the CLI or on the dashboard is told at once instead.
fn grade_when_unlocked(
    env: &JobEnv,
    o: &Occurrence,
    period: Period,
    wait: Duration,
) -> Result<GradingReport, JobsError> {
    let started = Instant::now();
    let mut waited = false;
    loop {
        // The policy in force now: an admin may have applied a version since start-up, or
        // while this job waited for their what-if.
        let policy = effective_policy(&mut *env.db.conn()?, &env.policy)?.policy;
        match grade_period(&env.db, period, &policy, Mode::Publish) {
            Err(GradingError::Store(StoreError::Busy(why))) if started.elapsed() < wait => {
                if !waited {
                    tracing::info!(%period, reason = %why, wait_secs = wait.as_secs(), "grading lock held; waiting for it");
                    waited = true;
                }
                std::thread::sleep(LOCK_RETRY.min(wait.saturating_sub(started.elapsed())));
                // A replica that lost its lease while waiting (shut down, or stalled) leaves
                // the occurrence to the one that took it over.
                if !store::holds(&mut *env.db.conn()?, o.lease)? {
                    return Err(JobsError::LeaseLost(o.job.clone()));
                }
            }
            result => {
                if waited {
                    tracing::info!(%period, waited_ms = started.elapsed().as_millis() as u64, "grading lock taken after waiting");
                }
                return Ok(result?);
            }
        }
    }
}

/// Runs the named CRM connectors, or every enabled one, one after the other. One that fails
/// does not stop the others (each resumes from its own position next time); the job fails if
/// any did.
fn crm_import(env: &JobEnv, sources: Option<&[String]>) -> Result<serde_json::Value, JobsError> {
    let names: Vec<String> = match sources {
        Some(list) => list.to_vec(),
        None => env.crm.enabled().iter().map(|s| (*s).to_owned()).collect(),
    };
    let locale = tierwise_domain::Locale::parse(&env.import.default_locale)
        .map_err(|e| JobsError::Io(format!("import.default_locale: {}", e.reason)))?;
    let run = |source: &str| {
        let work = tierwise_import::crm::sync_source(&env.db, &env.crm, source, false, locale);
        // The scheduler runs jobs on its blocking threads, inside its runtime; `jobs run --here`
        // runs them on a plain thread.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(work),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| tierwise_import::crm::CrmError::Setup(e.to_string()))?
                .block_on(work),
        }
    };
    let mut done = serde_json::Map::new();
    let mut failed = Vec::new();
    for name in &names {
        match run(name) {
            Ok(report) => {
                let read: u64 = report.entities.iter().map(|e| e.records).sum();
                done.insert(
                    name.clone(),
                    json!({ "read": read, "rejected": report.rejected() }),
                );
            }
            Err(e) => {
                tracing::error!(source = %name, error = %e, "CRM import failed");
                failed.push(format!("{name}: {e}"));
            }
        }
    }
    if !failed.is_empty() {
        return Err(JobsError::Io(failed.join("; ")));
    }
    Ok(json!({ "sources": done }))
}

fn queue_pending(conn: &mut DbConnection, composer: &Composer<'_>) -> Result<usize, JobsError> {
    Ok(tierwise_notify::process_events(conn, composer)?
        .iter()
        .filter_map(|o| o.queued)
        .sum())
}

/// Imports each CSV/XLSX file of `dir` in name order and moves it to `done/` (loaded, perhaps
/// with rejects) or `failed/` (nothing loaded), so every file is imported once.
fn import_folder(
    env: &JobEnv,
    dir: &Path,
    records: tierwise_import::RecordKind,
    source: Option<&str>,
) -> Result<serde_json::Value, JobsError> {
    let settings = ImportSettings {
        source: source.map_or_else(|| env.import.source.clone(), str::to_owned),
        ..env.import.clone()
    };
    let options = FileImportOptions::from_settings(&settings, records, env.mapping.clone())?;
    let io = |e: std::io::Error, what: &Path| JobsError::Io(format!("{}: {e}", what.display()));
    // A missing drop folder is created, so operators see where files go.
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(e, dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    matches!(x.to_ascii_lowercase().as_str(), "csv" | "xlsx" | "xls")
                })
        })
        .collect();
    files.sort();
    let (mut loaded, mut failed, mut rows, mut rejected) = (0, 0, 0u64, 0u64);
    for file in files {
        let (outcome, target) = match import_file(&env.db, &file, &options) {
            Ok(report) => {
                loaded += 1;
                rows += report.totals.rows_written;
                rejected += report.totals.rows_rejected;
                ("loaded", dir.join("done"))
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(file = %file.display(), error = %e, "import failed; file moved to failed/");
                ("failed", dir.join("failed"))
            }
        };
        std::fs::create_dir_all(&target).map_err(|e| io(e, &target))?;
        if let Some(name) = file.file_name() {
            std::fs::rename(&file, target.join(name)).map_err(|e| io(e, &file))?;
        }
        tracing::info!(file = %file.display(), outcome, "imported");
    }
    Ok(
        json!({ "files_loaded": loaded, "files_failed": failed, "rows_written": rows, "rows_rejected": rejected }),
    )
}
