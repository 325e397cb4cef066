//! The scheduler: tokio-cron-scheduler triggers each enabled job; the database decides who runs.
//!
//! - Each trigger computes the occurrence it stands for (the job's latest cron time at or before
//!   now) and claims `(job, occurrence)`; only the replica whose insert wins runs it.
//! - A running occurrence holds a lease, renewed every third of its length. A replica that dies
//!   stops renewing; once the lease runs out another replica takes the occurrence over (new
//!   fence) and runs it again. Writes of the replaced holder are refused. A replica never takes
//!   over a run it is still working on (its renewals may merely have been held up).
//! - On start, each job's latest occurrence within the catch-up horizon runs once if nobody ran
//!   it (every replica was down).
//! - Manual requests (`tierwise jobs run`, the dashboard) are polled from the database.
//! - Shutdown stops claiming, waits for running jobs up to a deadline, then releases their
//!   leases so another replica takes over at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeDelta};
use serde::Serialize;
use tierwise_store::jobs::{self as store, Claim, Lease, trigger};
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::Instrument;

use crate::JobsError;
use crate::definition::{JobDefinition, JobKind};
use crate::execute::{JobEnv, Occurrence, execute};

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Lease length of a running occurrence.
    pub lease: Duration,
    /// How often to look for expired leases and manual requests.
    pub poll: Duration,
    /// How far back a missed occurrence is still caught up on start.
    pub catch_up_horizon: Duration,
    /// How long shutdown waits for running jobs.
    pub shutdown_grace: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(5),
            catch_up_horizon: Duration::from_secs(3 * 24 * 3600),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Finished runs by job and status, for `/metrics`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunStats {
    /// Runs finished.
    pub count: u64,
    /// Their total duration in seconds.
    pub seconds: f64,
}

/// What the scheduler process shows on `/healthz` and `/metrics`.
#[derive(Debug, Default)]
pub struct State {
    running: Mutex<HashMap<i64, (String, Lease)>>,
    stats: Mutex<BTreeMap<(String, String), RunStats>>,
    stopping: AtomicBool,
}

impl State {
    /// Jobs running in this process: (run id, job).
    pub fn running(&self) -> Vec<(i64, String)> {
        self.running
            .lock()
            .map(|r| r.iter().map(|(id, (job, _))| (*id, job.clone())).collect())
            .unwrap_or_default()
    }

    /// The leases this process is working under.
    fn leases(&self) -> Vec<Lease> {
        self.running
            .lock()
            .map(|r| r.values().map(|(_, lease)| *lease).collect())
            .unwrap_or_default()
    }

    /// Finished runs by (job, status).
    pub fn stats(&self) -> BTreeMap<(String, String), RunStats> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn record(&self, job: &str, status: &str, seconds: f64) {
        if let Ok(mut stats) = self.stats.lock() {
            let entry = stats
                .entry((job.to_owned(), status.to_owned()))
                .or_default();
            entry.count += 1;
            entry.seconds += seconds;
        }
    }
}

struct Shared {
    env: Arc<JobEnv>,
    defs: Vec<JobDefinition>,
    options: SchedulerOptions,
    state: Arc<State>,
}

/// A started scheduler.
pub struct Scheduler {
    shared: Arc<Shared>,
    cron: JobScheduler,
    poller: JoinHandle<()>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("replica", &self.shared.env.replica)
            .field("jobs", &self.shared.defs.len())
            .finish()
    }
}

fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl Scheduler {
    /// Catches up missed occurrences, registers every enabled job's trigger and starts polling
    /// for expired leases and manual requests.
    pub async fn start(
        env: Arc<JobEnv>,
        defs: Vec<JobDefinition>,
        options: SchedulerOptions,
    ) -> Result<Self, JobsError> {
        let shared = Arc::new(Shared {
            env,
            defs,
            options,
            state: Arc::new(State::default()),
        });
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let spawn = {
            let tasks = Arc::clone(&tasks);
            move |f: JoinHandle<()>| {
                if let Ok(mut t) = tasks.lock() {
                    t.retain(|h| !h.is_finished());
                    t.push(f);
                }
            }
        };

        // Catch-up: the latest occurrence of each job, if recent and never claimed.
        let now = shared.env.clock.now();
        let horizon = to_delta(shared.options.catch_up_horizon);
        for def in shared.defs.iter().filter(|d| d.enabled && d.catch_up) {
            let Some(last) = def.occurrence_at_or_before(now) else {
                continue;
            };
            if last < now.naive_utc() - horizon {
                continue;
            }
            let (name, db) = (def.name.clone(), shared.env.db.clone());
            let exists = db
                .run(move |c| store::occurrence_exists(c, &name, last))
                .await?;
            if !exists {
                tracing::info!(job = %def.name, occurrence = %last, "catching up a missed occurrence");
                let s = Arc::clone(&shared);
                let name = def.name.clone();
                spawn(tokio::spawn(async move {
                    claim_and_run(s, name, last, trigger::CATCH_UP, toml::Table::new()).await;
                }));
            }
        }

        let cron = JobScheduler::new()
            .await
            .map_err(|e| JobsError::Scheduler(e.to_string()))?;
        for def in shared.defs.iter().filter(|d| d.enabled) {
            let s = Arc::clone(&shared);
            let name = def.name.clone();
            let spawn = spawn.clone();
            let job = Job::new_async_tz(def.schedule.as_str(), def.timezone, move |_, _| {
                let s = Arc::clone(&s);
                let name = name.clone();
                let spawn = spawn.clone();
                Box::pin(async move {
                    if s.state.is_stopping() {
                        return;
                    }
                    let Some(def) = s.defs.iter().find(|d| d.name == name) else {
                        return;
                    };
                    // The trigger fires at or just after the occurrence, never before it.
                    let Some(occurrence) = def.occurrence_at_or_before(chrono::Utc::now()) else {
                        return;
                    };
                    spawn(tokio::spawn(async move {
                        claim_and_run(s, name, occurrence, trigger::SCHEDULE, toml::Table::new())
                            .await;
                    }));
                })
            })
            .map_err(|e| JobsError::Definition {
                file: def.file.display().to_string(),
                reason: format!("schedule: {e}"),
            })?;
            cron.add(job)
                .await
                .map_err(|e| JobsError::Scheduler(e.to_string()))?;
        }
        cron.start()
            .await
            .map_err(|e| JobsError::Scheduler(e.to_string()))?;

        let poller = {
            let s = Arc::clone(&shared);
            let spawn = spawn.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(s.options.poll);
                loop {
                    tick.tick().await;
                    if s.state.is_stopping() {
                        break;
                    }
                    if let Err(e) = poll_once(&s, &spawn).await {
                        tracing::warn!(error = %e, "scheduler poll failed; retrying");
                    }
                }
            })
        };
        tracing::info!(replica = %shared.env.replica, jobs = shared.defs.len(), "scheduler started");
        Ok(Self {
            shared,
            cron,
            poller,
            tasks,
        })
    }

    /// What `/healthz` and `/metrics` show.
    pub fn state(&self) -> Arc<State> {
        Arc::clone(&self.shared.state)
    }

    /// Stops claiming, waits for running jobs up to the grace period, then releases the leases
    /// of those still running so another replica can take them over.
    pub async fn shutdown(mut self) -> Result<(), JobsError> {
        self.shared.state.stopping.store(true, Ordering::SeqCst);
        self.poller.abort();
        if let Err(e) = self.cron.shutdown().await {
            tracing::warn!(error = %e, "stopping the cron triggers");
        }
        let deadline = Instant::now() + self.shared.options.shutdown_grace;
        while !self.shared.state.running().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left: Vec<(i64, (String, Lease))> = self
            .shared
            .state
            .running
            .lock()
            .map(|r| r.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        for (_, (job, lease)) in left {
            let now = self.shared.env.clock.now().naive_utc();
            let released = self
                .shared
                .env
                .db
                .run(move |c| store::release(c, lease, now))
                .await?;
            tracing::warn!(job = %job, run = lease.run_id, released, "shutdown deadline passed; lease released");
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        tracing::info!(replica = %self.shared.env.replica, "scheduler stopped");
        Ok(())
    }
}

/// Takes over expired leases and claims manual requests.
async fn poll_once(s: &Arc<Shared>, spawn: &impl Fn(JoinHandle<()>)) -> Result<(), JobsError> {
    let now = s.env.clock.now().naive_utc();
    let lease_until = now + to_delta(s.options.lease);
    let replica = s.env.replica.clone();
    let working_here = s.state.leases();
    let taken = s
        .env
        .db
        .run(move |c| store::take_over_expired(c, &replica, now, lease_until, &working_here))
        .await?;
    for (run, lease) in taken {
        tracing::warn!(job = %run.job, run = run.id, from = %run.replica, "took over an occurrence whose lease ran out");
        let args: toml::Table = serde_json::from_str::<serde_json::Value>(&run.args)
            .ok()
            .and_then(|v| toml::Table::try_from(v).ok())
            .unwrap_or_default();
        spawn(tokio::spawn(run_held(
            Arc::clone(s),
            run.job,
            run.scheduled_for,
            lease,
            args,
        )));
    }
    let requests = s.env.db.run(move |c| store::claim_requests(c, now)).await?;
    for r in requests {
        let args: toml::Table = serde_json::from_str::<serde_json::Value>(&r.args)
            .ok()
            .and_then(|v| toml::Table::try_from(v).ok())
            .unwrap_or_default();
        tracing::info!(job = %r.job, request = r.id, by = %r.requested_by, "manual run requested");
        let s2 = Arc::clone(s);
        spawn(tokio::spawn(async move {
            if let Some(run) = claim_and_run(
                s2.clone(),
                r.job.clone(),
                r.requested_at,
                trigger::MANUAL,
                args,
            )
            .await
            {
                let _ = s2
                    .env
                    .db
                    .run(move |c| store::link_request(c, r.id, run))
                    .await;
            }
        }));
    }
    Ok(())
}

/// Claims an occurrence and, if this replica won, runs it. Returns the run id when it ran here.
async fn claim_and_run(
    s: Arc<Shared>,
    job: String,
    scheduled_for: NaiveDateTime,
    how: &'static str,
    args: toml::Table,
) -> Option<i64> {
    let now = s.env.clock.now().naive_utc();
    let lease_until = now + to_delta(s.options.lease);
    let replica = s.env.replica.clone();
    let args_json = serde_json::to_string(&args).unwrap_or_else(|_| "{}".into());
    let name = job.clone();
    let claimed = s
        .env
        .db
        .run(move |c| {
            store::claim(
                c,
                Claim {
                    job: &name,
                    scheduled_for,
                    trigger: how,
                    replica: &replica,
                    args: &args_json,
                    now,
                    lease_until,
                },
            )
        })
        .await;
    match claimed {
        Ok(Some(lease)) => {
            run_held(s, job, scheduled_for, lease, args).await;
            Some(lease.run_id)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(job = %job, error = %e, "claiming an occurrence failed");
            None
        }
    }
}

/// Runs an occurrence this replica holds: renews the lease while the job works, then records
/// the outcome (refused if the lease was lost meanwhile).
async fn run_held(
    s: Arc<Shared>,
    job: String,
    scheduled_for: NaiveDateTime,
    lease: Lease,
    args: toml::Table,
) {
    let span = tracing::info_span!("job", job = %job, run = lease.run_id, fence = lease.fence);
    run_held_in_span(s, job, scheduled_for, lease, args)
        .instrument(span)
        .await;
}

async fn run_held_in_span(
    s: Arc<Shared>,
    job: String,
    scheduled_for: NaiveDateTime,
    lease: Lease,
    args: toml::Table,
) {
    let started = Instant::now();
    if let Ok(mut r) = s.state.running.lock() {
        r.insert(lease.run_id, (job.clone(), lease));
    }
    let renewer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            let every = s.options.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                let until = s.env.clock.now().naive_utc() + to_delta(s.options.lease);
                match s.env.db.run(move |c| store::renew(c, lease, until)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            run = lease.run_id,
                            "lease lost: another replica took the run over"
                        );
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing a lease failed"),
                }
            }
        })
    };
    let result = match s.defs.iter().find(|d| d.name == job) {
        None => Err(JobsError::UnknownJob(job.clone())),
        Some(def) => match def.kind_with(&args) {
            Err(reason) => Err(JobsError::Definition {
                file: def.file.display().to_string(),
                reason,
            }),
            Ok(kind) => {
                let occurrence = Occurrence {
                    job: job.clone(),
                    scheduled_for,
                    timezone: def.timezone,
                    lease,
                };
                run_blocking(Arc::clone(&s.env), kind, occurrence).await
            }
        },
    };
    renewer.abort();
    let now = s.env.clock.now().naive_utc();
    let (ok, outcome, error) = match &result {
        Ok(v) => (true, Some(v.to_string()), None),
        Err(e) => (false, None, Some(e.to_string())),
    };
    let status = if ok { "succeeded" } else { "failed" };
    let recorded = s
        .env
        .db
        .run(move |c| store::finish(c, lease, ok, outcome.as_deref(), error.as_deref(), now))
        .await;
    match (&result, recorded) {
        (Ok(v), Ok(true)) => tracing::info!(outcome = %v, "job succeeded"),
        (Err(e), Ok(true)) => tracing::error!(error = %e, "job failed"),
        (_, Ok(false)) => {
            tracing::warn!("the run was taken over meanwhile; its outcome is not recorded here")
        }
        (_, Err(e)) => tracing::warn!(error = %e, "recording the outcome failed"),
    }
    s.state
        .record(&job, status, started.elapsed().as_secs_f64());
    if let Ok(mut r) = s.state.running.lock() {
        r.remove(&lease.run_id);
    }
}

async fn run_blocking(
    env: Arc<JobEnv>,
    kind: JobKind,
    occurrence: Occurrence,
) -> Result<serde_json::Value, JobsError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        execute(&env, &kind, &occurrence)
    })
    .await
    .map_err(|e| JobsError::Scheduler(format!("the job panicked or was cancelled: {e}")))?
}
