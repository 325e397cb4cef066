//! Job runs: claiming occurrences (the unique key decides who runs), leases and their renewal,
//! take-over of expired leases with a fence, manual run requests, and run history.
//!
//! Fencing: every claim or take-over sets `fence`; the holder passes it back on every renewal
//! and on finishing, and those writes match only while `fence` is still theirs. A replica that
//! stalled past its lease and wakes up finds its writes refused.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use crate::schema::{job_probes, job_requests, job_runs};
use crate::{DbConnection, StoreResult, with_backend};

/// How a run started.
pub mod trigger {
    /// Its cron schedule fired.
    pub const SCHEDULE: &str = "schedule";
    /// Missed while every scheduler was down; run on start.
    pub const CATCH_UP: &str = "catch_up";
    /// Someone asked (`tierwise jobs run`, the dashboard).
    pub const MANUAL: &str = "manual";
}

/// Run status.
pub mod status {
    /// Claimed and going (or its replica died and the lease has not run out yet).
    pub const RUNNING: &str = "running";
    /// Finished.
    pub const SUCCEEDED: &str = "succeeded";
    /// Finished with an error.
    pub const FAILED: &str = "failed";
}

/// A run this replica holds: its id and fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Run id.
    pub run_id: i64,
    /// Fence value the holder must present.
    pub fence: i32,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct JobRun {
    /// Id.
    pub id: i64,
    /// Job name.
    pub job: String,
    /// The occurrence (UTC).
    pub scheduled_for: NaiveDateTime,
    /// schedule | catch_up | manual.
    pub trigger: String,
    /// running | succeeded | failed.
    pub status: String,
    /// The replica that holds or held it.
    pub replica: String,
    /// Bumped on every take-over.
    pub fence: i32,
    /// Lease end (UTC).
    pub lease_until: NaiveDateTime,
    /// Start (UTC).
    pub started_at: NaiveDateTime,
    /// End (UTC).
    pub finished_at: Option<NaiveDateTime>,
    /// Arguments (JSON) of a manual run.
    pub args: String,
    /// What the job reported (JSON).
    pub outcome: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What a new claim records.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// Job name.
    pub job: &'a str,
    /// The occurrence (UTC).
    pub scheduled_for: NaiveDateTime,
    /// schedule | catch_up | manual.
    pub trigger: &'a str,
    /// This replica.
    pub replica: &'a str,
    /// Arguments (JSON).
    pub args: &'a str,
    /// Now (UTC).
    pub now: NaiveDateTime,
    /// End of the first lease.
    pub lease_until: NaiveDateTime,
}

/// Claims an occurrence: returns the lease when this insert won, None when another replica
/// (or an earlier start of this one) already has it.
pub fn claim(conn: &mut DbConnection, c: Claim<'_>) -> StoreResult<Option<Lease>> {
    let values = (
        job_runs::job.eq(c.job),
        job_runs::scheduled_for.eq(c.scheduled_for),
        job_runs::trigger.eq(c.trigger),
        job_runs::status.eq(status::RUNNING),
        job_runs::replica.eq(c.replica),
        job_runs::fence.eq(1),
        job_runs::lease_until.eq(c.lease_until),
        job_runs::started_at.eq(c.now),
        job_runs::args.eq(c.args),
    );
    let id: Option<i64> = with_backend!(conn, cn => diesel::insert_into(job_runs::table)
        .values(values)
        .on_conflict((job_runs::job, job_runs::scheduled_for))
        .do_nothing()
        .returning(job_runs::id)
        .get_result(cn)
        .optional()?);
    Ok(id.map(|run_id| Lease { run_id, fence: 1 }))
}

/// Extends a held lease. False when the run is no longer ours (taken over or finished).
pub fn renew(conn: &mut DbConnection, lease: Lease, until: NaiveDateTime) -> StoreResult<bool> {
    let n = with_backend!(conn, c => diesel::update(
        job_runs::table
            .find(lease.run_id)
            .filter(job_runs::fence.eq(lease.fence))
            .filter(job_runs::status.eq(status::RUNNING)),
    )
    .set(job_runs::lease_until.eq(until))
    .execute(c)?);
    Ok(n == 1)
}

/// Records the end of a held run. False when the run is no longer ours: the write is refused.
pub fn finish(
    conn: &mut DbConnection,
    lease: Lease,
    ok: bool,
    outcome: Option<&str>,
    error: Option<&str>,
    now: NaiveDateTime,
) -> StoreResult<bool> {
    let n = with_backend!(conn, c => diesel::update(
        job_runs::table
            .find(lease.run_id)
            .filter(job_runs::fence.eq(lease.fence))
            .filter(job_runs::status.eq(status::RUNNING)),
    )
    .set((
        job_runs::status.eq(if ok { status::SUCCEEDED } else { status::FAILED }),
        job_runs::finished_at.eq(Some(now)),
        job_runs::outcome.eq(outcome),
        job_runs::error.eq(error),
    ))
    .execute(c)?);
    Ok(n == 1)
}

/// Ends a held lease now (graceful shutdown past its deadline), so another replica may take the
/// run over at once.
pub fn release(conn: &mut DbConnection, lease: Lease, now: NaiveDateTime) -> StoreResult<bool> {
    renew(conn, lease, now)
}

/// Whether `lease` still holds its run. Call it inside the transaction that writes a job's
/// result, so a replaced holder's late write rolls back.
pub fn holds(conn: &mut DbConnection, lease: Lease) -> StoreResult<bool> {
    let n: i64 = match conn {
        DbConnection::Postgresql(c) => job_runs::table
            .find(lease.run_id)
            .filter(job_runs::fence.eq(lease.fence))
            .filter(job_runs::status.eq(status::RUNNING))
            .select(job_runs::id)
            .for_update()
            .load::<i64>(c)?
            .len() as i64,
        DbConnection::Sqlite(c) => job_runs::table
            .find(lease.run_id)
            .filter(job_runs::fence.eq(lease.fence))
            .filter(job_runs::status.eq(status::RUNNING))
            .count()
            .get_result(c)?,
    };
    Ok(n == 1)
}

/// Takes over runs whose lease ran out (their replica died or stalled): bumps each one's fence
/// and leases it to `replica`. Returns the runs taken, with their new leases.
///
/// `working_here` are the leases the calling process is still working under: it is alive even
/// if it could not renew them in time (on SQLite a long import's transaction holds renewals up),
/// so it does not take them over from itself and run them a second time beside the first. A run
/// whose fence moved on since (another replica took it over, then died) is taken as any other.
pub fn take_over_expired(
    conn: &mut DbConnection,
    replica: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    working_here: &[Lease],
) -> StoreResult<Vec<(JobRun, Lease)>> {
    let expired: Vec<JobRun> = with_backend!(conn, c => job_runs::table
        .filter(job_runs::status.eq(status::RUNNING))
        .filter(job_runs::lease_until.lt(now))
        .order(job_runs::id)
        .load(c)?);
    let mut taken = Vec::new();
    for run in expired {
        let held_here = Lease {
            run_id: run.id,
            fence: run.fence,
        };
        if working_here.contains(&held_here) {
            continue;
        }
        // Compare-and-set on the fence: of two replicas taking over at once, one wins.
        let n = with_backend!(conn, c => diesel::update(
            job_runs::table
                .find(run.id)
                .filter(job_runs::fence.eq(run.fence))
                .filter(job_runs::status.eq(status::RUNNING))
                .filter(job_runs::lease_until.lt(now)),
        )
        .set((
            job_runs::fence.eq(run.fence + 1),
            job_runs::replica.eq(replica),
            job_runs::lease_until.eq(lease_until),
        ))
        .execute(c)?);
        if n == 1 {
            let lease = Lease {
                run_id: run.id,
                fence: run.fence + 1,
            };
            taken.push((run, lease));
        }
    }
    Ok(taken)
}

/// Whether an occurrence has a run (in any state).
pub fn occurrence_exists(
    conn: &mut DbConnection,
    job: &str,
    scheduled_for: NaiveDateTime,
) -> StoreResult<bool> {
    let n: i64 = with_backend!(conn, c => job_runs::table
        .filter(job_runs::job.eq(job))
        .filter(job_runs::scheduled_for.eq(scheduled_for))
        .count()
        .get_result(c)?);
    Ok(n > 0)
}

/// Runs, newest first, optionally of one job.
pub fn history(conn: &mut DbConnection, job: Option<&str>, limit: i64) -> StoreResult<Vec<JobRun>> {
    Ok(with_backend!(conn, c => {
        let mut query = job_runs::table.order(job_runs::id.desc()).limit(limit).into_boxed();
        if let Some(job) = job {
            query = query.filter(job_runs::job.eq(job));
        }
        query.load(c)?
    }))
}

/// One run.
pub fn find_run(conn: &mut DbConnection, id: i64) -> StoreResult<Option<JobRun>> {
    Ok(with_backend!(conn, c => job_runs::table.find(id).first(c).optional()?))
}

// ---------------------------------------------------------------------------------------------
// Manual requests

/// A request to run a job now.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct JobRequest {
    /// Id.
    pub id: i64,
    /// Job name.
    pub job: String,
    /// Arguments (JSON object merged over the definition's).
    pub args: String,
    /// Who asked.
    pub requested_by: String,
    /// When (UTC).
    pub requested_at: NaiveDateTime,
    /// When a scheduler took it.
    pub claimed_at: Option<NaiveDateTime>,
    /// The run it became.
    pub run_id: Option<i64>,
}

/// Records a request; returns its id.
pub fn request_run(
    conn: &mut DbConnection,
    job: &str,
    args: &str,
    requested_by: &str,
    now: NaiveDateTime,
) -> StoreResult<i64> {
    Ok(
        with_backend!(conn, c => diesel::insert_into(job_requests::table)
        .values((
            job_requests::job.eq(job),
            job_requests::args.eq(args),
            job_requests::requested_by.eq(requested_by),
            job_requests::requested_at.eq(now),
        ))
        .returning(job_requests::id)
        .get_result(c)?),
    )
}

/// Claims pending requests (compare-and-set per request, so two schedulers never take one).
pub fn claim_requests(conn: &mut DbConnection, now: NaiveDateTime) -> StoreResult<Vec<JobRequest>> {
    let pending: Vec<JobRequest> = with_backend!(conn, c => job_requests::table
        .filter(job_requests::claimed_at.is_null())
        .order(job_requests::id)
        .load(c)?);
    let mut claimed = Vec::new();
    for r in pending {
        let n = with_backend!(conn, c => diesel::update(
            job_requests::table
                .find(r.id)
                .filter(job_requests::claimed_at.is_null()),
        )
        .set(job_requests::claimed_at.eq(Some(now)))
        .execute(c)?);
        if n == 1 {
            claimed.push(r);
        }
    }
    Ok(claimed)
}

/// Links a request to the run it became.
pub fn link_request(conn: &mut DbConnection, request: i64, run: i64) -> StoreResult<()> {
    with_backend!(conn, c => diesel::update(job_requests::table.find(request))
        .set(job_requests::run_id.eq(Some(run)))
        .execute(c)?);
    Ok(())
}

/// One request.
pub fn find_request(conn: &mut DbConnection, id: i64) -> StoreResult<Option<JobRequest>> {
    Ok(with_backend!(conn, c => job_requests::table.find(id).first(c).optional()?))
}

// ---------------------------------------------------------------------------------------------
// The probe job's side effect

/// Records a probe, in one transaction with a fence check: false (nothing written) when the
/// lease is no longer held.
pub fn record_probe(
    conn: &mut DbConnection,
    lease: Lease,
    job: &str,
    scheduled_for: NaiveDateTime,
    replica: &str,
    now: NaiveDateTime,
) -> StoreResult<bool> {
    crate::transaction(conn, |conn| {
        if !holds(conn, lease)? {
            return Ok(false);
        }
        with_backend!(conn, c => diesel::insert_into(job_probes::table)
            .values((
                job_probes::job.eq(job),
                job_probes::scheduled_for.eq(scheduled_for),
                job_probes::run_id.eq(lease.run_id),
                job_probes::replica.eq(replica),
                job_probes::written_at.eq(now),
            ))
            .execute(c)?);
        Ok(true)
    })
}

/// Probe rows of a job: (scheduled_for, run id, replica).
pub fn probes(
    conn: &mut DbConnection,
    job: &str,
) -> StoreResult<Vec<(NaiveDateTime, i64, String)>> {
    Ok(with_backend!(conn, c => job_probes::table
        .filter(job_probes::job.eq(job))
        .order(job_probes::scheduled_for)
        .select((job_probes::scheduled_for, job_probes::run_id, job_probes::replica))
        .load(c)?))
}

/// Deletes finished runs (and their claimed requests) that started before `cutoff`; returns how
/// many runs went.
pub fn delete_finished_before(
    conn: &mut DbConnection,
    cutoff: NaiveDateTime,
) -> StoreResult<usize> {
    Ok(with_backend!(conn, c => {
        diesel::delete(
            job_requests::table
                .filter(job_requests::claimed_at.is_not_null())
                .filter(job_requests::requested_at.lt(cutoff)),
        )
        .execute(c)?;
        diesel::delete(
            job_runs::table
                .filter(job_runs::status.ne(status::RUNNING))
                .filter(job_runs::started_at.lt(cutoff)),
        )
        .execute(c)?
    }))
}
