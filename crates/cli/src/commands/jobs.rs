//! `tierwise jobs`: list the job definitions, show run history, request or perform a run.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use tierwise_jobs::{
    JobDefinition, JobEnv, Occurrence, SchedulerOptions, SystemClock, load_dir, parse_timezone,
};
use tierwise_store::Database;
use tierwise_store::jobs::{self as store, Claim, trigger};

use super::{open_database, print_table};
use crate::cli::JobsCommand;
use crate::settings::{Settings, load_mapping};

pub fn run(settings: &Settings, command: JobsCommand) -> anyhow::Result<ExitCode> {
    let defs = definitions(settings)?;
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    match command {
        JobsCommand::List => list(&db, &defs)?,
        JobsCommand::History { job, limit } => history(&db, job.as_deref(), limit)?,
        JobsCommand::Run {
            name,
            args,
            wait,
            here,
        } => {
            let Some(def) = defs.iter().find(|d| d.name == name) else {
                let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
                bail!(
                    "no job '{name}' in {}; jobs: {}",
                    settings.scheduler.jobs_dir,
                    names.join(", ")
                );
            };
            let overrides = parse_args(&args)?;
            def.kind_with(&overrides)
                .map_err(|e| anyhow::anyhow!("{}: {e}", def.file.display()))?;
            return match here {
                true => run_here(settings, db, def, overrides),
                false => request(&db, def, &overrides, wait),
            };
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The job definitions of [scheduler] jobs_dir, validated.
pub fn definitions(settings: &Settings) -> anyhow::Result<Vec<JobDefinition>> {
    let tz = parse_timezone(&settings.scheduler.timezone)
        .map_err(|e| anyhow::anyhow!("scheduler.timezone: {e}"))?;
    Ok(load_dir(Path::new(&settings.scheduler.jobs_dir), tz)?)
}

/// What jobs need, from the settings.
pub fn job_env(settings: &Settings, db: Database) -> anyhow::Result<JobEnv> {
    let mapping = match settings.import.mapping_file.as_str() {
        "" => tierwise_import::ColumnMapping::default(),
        path => load_mapping(Path::new(path))?,
    };
    Ok(JobEnv {
        db,
        policy: settings.grading.clone(),
        import: settings.import.clone(),
        mapping,
        crm: settings.crm.clone(),
        notify: settings.notify.clone(),
        smtp: settings.smtp.clone(),
        templates: super::notify::templates(settings)?,
        clock: Arc::new(SystemClock),
        replica: tierwise_jobs::replica_name(),
    })
}

/// Scheduler options from [scheduler].
pub fn options(settings: &Settings) -> SchedulerOptions {
    let s = &settings.scheduler;
    SchedulerOptions {
        lease: Duration::from_secs(s.lease_secs),
        poll: Duration::from_secs(s.poll_secs),
        catch_up_horizon: Duration::from_secs(s.catch_up_hours * 3600),
        shutdown_grace: Duration::from_secs(s.shutdown_grace_secs),
    }
}

fn parse_args(args: &[String]) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            bail!("--arg '{arg}' is not KEY=VALUE");
        };
        table.insert(
            key.trim().to_owned(),
            toml::Value::String(value.trim().to_owned()),
        );
    }
    Ok(table)
}

fn list(db: &Database, defs: &[JobDefinition]) -> anyhow::Result<()> {
    let recent = store::history(&mut *db.conn()?, None, 1000)?;
    let now = Utc::now();
    let rows: Vec<Vec<String>> = defs
        .iter()
        .map(|d| {
            let last = recent.iter().find(|r| r.job == d.name);
            vec![
                d.name.clone(),
                d.kind.key().to_owned(),
                d.schedule.clone(),
                d.timezone.to_string(),
                if d.enabled { "yes" } else { "no" }.to_owned(),
                d.next_occurrence(now)
                    .filter(|_| d.enabled)
                    .map_or("-".into(), |t| format!("{t} UTC")),
                last.map_or("-".into(), |r| format!("{} {}", r.scheduled_for, r.status)),
            ]
        })
        .collect();
    print_table(
        &[
            "job",
            "kind",
            "schedule",
            "time zone",
            "enabled",
            "next run",
            "last run",
        ],
        &rows,
    );
    Ok(())
}

fn history(db: &Database, job: Option<&str>, limit: i64) -> anyhow::Result<()> {
    let runs = store::history(&mut *db.conn()?, job, limit)?;
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let seconds = r
                .finished_at
                .map(|f| format!("{:.1}", (f - r.started_at).num_milliseconds() as f64 / 1e3))
                .unwrap_or_default();
            vec![
                r.id.to_string(),
                r.job.clone(),
                r.scheduled_for.to_string(),
                r.trigger.clone(),
                r.replica.clone(),
                r.status.clone(),
                seconds,
                r.error
                    .clone()
                    .or_else(|| r.outcome.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "run",
            "job",
            "scheduled for (UTC)",
            "trigger",
            "replica",
            "status",
            "seconds",
            "outcome",
        ],
        &rows,
    );
    Ok(())
}

fn request(
    db: &Database,
    def: &JobDefinition,
    overrides: &toml::Table,
    wait: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let args = serde_json::to_string(overrides)?;
    let by = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let id = store::request_run(
        &mut *db.conn()?,
        &def.name,
        &args,
        &by,
        Utc::now().naive_utc(),
    )?;
    println!(
        "Requested a run of {} (request {id}); a running scheduler picks it up.",
        def.name
    );
    let Some(secs) = wait else {
        println!("Follow it with `tierwise jobs history {}`.", def.name);
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut conn = db.conn()?;
        let run = match store::find_request(&mut conn, id)?.and_then(|r| r.run_id) {
            Some(run) => store::find_run(&mut conn, run)?,
            None => None,
        };
        if let Some(run) = run.filter(|r| r.status != store::status::RUNNING) {
            println!(
                "Run {} {}: {}",
                run.id,
                run.status,
                run.error.or(run.outcome).unwrap_or_default()
            );
            return Ok(if run.status == store::status::SUCCEEDED {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if Instant::now() >= deadline {
            bail!(
                "no scheduler finished request {id} within {secs} s; is `tierwise serve scheduler` running? (or use --here)"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run_here(
    settings: &Settings,
    db: Database,
    def: &JobDefinition,
    overrides: toml::Table,
) -> anyhow::Result<ExitCode> {
    let env = job_env(settings, db)?;
    let now = Utc::now().naive_utc();
    let lease_until =
        now + chrono::TimeDelta::seconds(i64::try_from(settings.scheduler.lease_secs)?);
    let args = serde_json::to_string(&overrides)?;
    let lease = store::claim(
        &mut *env.db.conn()?,
        Claim {
            job: &def.name,
            scheduled_for: now,
            trigger: trigger::MANUAL,
            replica: &env.replica,
            args: &args,
            now,
            lease_until,
        },
    )?
    .context("this occurrence was claimed already; try again")?;
    let kind = def
        .kind_with(&overrides)
        .map_err(|e| anyhow::anyhow!("{}: {e}", def.file.display()))?;
    let occurrence = Occurrence {
        job: def.name.clone(),
        scheduled_for: now,
        timezone: def.timezone,
        lease,
    };
    // Renew the lease while the job works, as a scheduler would, so none takes it over.
    let working = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let renewer = {
        let (db, working) = (env.db.clone(), Arc::clone(&working));
        let lease_secs = settings.scheduler.lease_secs;
        std::thread::spawn(move || {
            let step = Duration::from_millis(250);
            let mut waited = Duration::ZERO;
            while working.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(step);
                waited += step;
                if waited >= Duration::from_secs(lease_secs / 3) {
                    waited = Duration::ZERO;
                    let until = Utc::now().naive_utc()
                        + chrono::TimeDelta::seconds(i64::try_from(lease_secs).unwrap_or(60));
                    if let Ok(mut conn) = db.conn() {
                        let _ = store::renew(&mut conn, lease, until);
                    }
                }
            }
        })
    };
    let result = tierwise_jobs::execute(&env, &kind, &occurrence);
    working.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = renewer.join();
    let done = Utc::now().naive_utc();
    let (ok, outcome, error) = match &result {
        Ok(v) => (true, Some(v.to_string()), None),
        Err(e) => (false, None, Some(format!("{e}"))),
    };
    store::finish(
        &mut *env.db.conn()?,
        lease,
        ok,
        outcome.as_deref(),
        error.as_deref(),
        done,
    )?;
    match result {
        Ok(v) => {
            println!("Run {} of {} succeeded: {v}", lease.run_id, def.name);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(anyhow::anyhow!(e).context(format!("job {}", def.name))),
    }
}
