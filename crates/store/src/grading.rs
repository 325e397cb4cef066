//! Grading storage: the per-customer facts a run grades (one streaming pass over orders and one
//! over invoices, folded in Rust), grading runs and their publication, grade rows, and overrides.
//!
//! Snapshot rule: a run writes its grade rows under its own id, invisible to readers, who always
//! go through `grading_periods` (the published run of each period). Publishing switches that
//! pointer in one transaction, so readers see the old snapshot or the new one, never a mix.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Utc};
use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use serde::Serialize;
use tierwise_domain::grading::{
    CustomerFacts, InvoiceFacts, Override, OverrideKind, PreviousGrade, ProfitFacts, YearAgoGrade,
};
use tierwise_domain::{CustomerId, Period};

use crate::schema::{
    customers, grade_explanations, grade_explanations_load, grades, grades_load, grading_periods,
    grading_runs, invoices, notification_events, orders, override_events, overrides, owners,
};
use crate::{DbConnection, StoreError, StoreResult, with_backend};

/// The id of a grading run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct GradingRunId(pub i64);

/// Where a grading run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GradingStatus {
    /// Writing its grades.
    Running,
    /// Published: its grades are the period's snapshot.
    Succeeded,
    /// Ended with an error, or abandoned by a process that died; its grades were removed.
    Failed,
    /// Was published, then replaced by a later run of the same period.
    Superseded,
}

impl GradingStatus {
    /// The stored word.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
        }
    }

    fn parse(raw: &str) -> StoreResult<Self> {
        Ok(match raw {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "superseded" => Self::Superseded,
            other => return Err(StoreError::Corrupt(format!("grading run status '{other}'"))),
        })
    }
}

/// A stored grading run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GradingRun {
    /// Id.
    pub id: GradingRunId,
    /// The graded period.
    pub period: Period,
    /// Status.
    pub status: GradingStatus,
    /// Hash of the policy used.
    pub policy_hash: String,
    /// The policy used, as JSON.
    pub policy: String,
    /// Start (UTC).
    pub started_at: NaiveDateTime,
    /// End (UTC).
    pub finished_at: Option<NaiveDateTime>,
    /// Customers considered.
    pub customers: i64,
    /// Customers graded.
    pub graded: i64,
    /// Assigned tiers that differ from the previous period.
    pub tier_changes: i64,
    /// Phase timings in milliseconds, as JSON.
    pub timings: String,
    /// The run's summary, as JSON.
    pub summary: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The fitted predictive models, as JSON.
    pub predictive: Option<String>,
    /// Why the predictive models could not be fitted.
    pub predictive_error: Option<String>,
}

#[derive(Queryable)]
struct RunRow {
    id: i64,
    period: String,
    status: String,
    policy_hash: String,
    policy: String,
    started_at: NaiveDateTime,
    finished_at: Option<NaiveDateTime>,
    customers: i64,
    graded: i64,
    tier_changes: i64,
    timings: String,
    summary: Option<String>,
    error: Option<String>,
    predictive: Option<String>,
    predictive_error: Option<String>,
}

impl TryFrom<RunRow> for GradingRun {
    type Error = StoreError;

    fn try_from(r: RunRow) -> StoreResult<Self> {
        Ok(Self {
            id: GradingRunId(r.id),
            period: Period::parse(&r.period).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            status: GradingStatus::parse(&r.status)?,
            policy_hash: r.policy_hash,
            policy: r.policy,
            started_at: r.started_at,
            finished_at: r.finished_at,
            customers: r.customers,
            graded: r.graded,
            tier_changes: r.tier_changes,
            timings: r.timings,
            summary: r.summary,
            error: r.error,
            predictive: r.predictive,
            predictive_error: r.predictive_error,
        })
    }
}

/// Marks runs left `running` by a process that died as failed and removes their grade rows.
/// Call it while holding the grading lock, so no live run can be among them.
pub fn fail_abandoned_runs(conn: &mut DbConnection) -> StoreResult<Vec<GradingRunId>> {
    let abandoned: Vec<i64> = with_backend!(conn, c => grading_runs::table
        .filter(grading_runs::status.eq(GradingStatus::Running.as_str()))
        .select(grading_runs::id)
        .load(c)?);
    for &id in &abandoned {
        delete_run_grades(conn, GradingRunId(id))?;
        with_backend!(conn, c => {
            diesel::update(grading_runs::table.find(id))
                .set((
                    grading_runs::status.eq(GradingStatus::Failed.as_str()),
                    grading_runs::finished_at.eq(Some(Utc::now().naive_utc())),
                    grading_runs::error.eq(Some(
                        "abandoned: the process grading it ended before it finished; the period's previous snapshot was kept",
                    )),
                ))
                .execute(c)?;
        });
    }
    Ok(abandoned.into_iter().map(GradingRunId).collect())
}

/// Records the start of a run of `period` under a policy (committed on its own).
pub fn start_run(
    conn: &mut DbConnection,
    period: Period,
    policy_hash: &str,
    policy_json: &str,
) -> StoreResult<GradingRunId> {
    let values = (
        grading_runs::period.eq(period.to_string()),
        grading_runs::status.eq(GradingStatus::Running.as_str()),
        grading_runs::policy_hash.eq(policy_hash),
        grading_runs::policy.eq(policy_json),
        grading_runs::started_at.eq(Utc::now().naive_utc()),
    );
    let id: i64 = with_backend!(conn, c => diesel::insert_into(grading_runs::table)
        .values(values)
        .returning(grading_runs::id)
        .get_result(c)?);
    Ok(GradingRunId(id))
}

/// Records what a run's predictive models fitted (JSON), or why they could not be fitted.
pub fn set_run_predictive(
    conn: &mut DbConnection,
    run: GradingRunId,
    model_json: Option<&str>,
    error: Option<&str>,
) -> StoreResult<()> {
    with_backend!(conn, c => diesel::update(grading_runs::table.find(run.0))
        .set((
            grading_runs::predictive.eq(model_json),
            grading_runs::predictive_error.eq(error),
        ))
        .execute(c)?);
    Ok(())
}

/// Marks a run failed with its error and removes any grade rows it wrote.
pub fn fail_run(conn: &mut DbConnection, run: GradingRunId, error: &str) -> StoreResult<()> {
    delete_run_grades(conn, run)?;
    with_backend!(conn, c => {
        diesel::update(grading_runs::table.find(run.0))
            .set((
                grading_runs::status.eq(GradingStatus::Failed.as_str()),
                grading_runs::finished_at.eq(Some(Utc::now().naive_utc())),
                grading_runs::error.eq(Some(error)),
            ))
            .execute(c)?;
    });
    Ok(())
}

/// Counts a run reports when it is published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Customers considered.
    pub customers: i64,
    /// Customers graded.
    pub graded: i64,
    /// Tier changes against the previous period.
    pub tier_changes: i64,
}

/// Publishes a run as its period's snapshot, in one transaction: the period pointer moves to it,
/// it becomes `succeeded` and the run it replaces `superseded`. Returns the replaced run, whose
/// rows the caller removes with [`delete_run_grades`] once readers have moved on.
pub fn publish_run(
    conn: &mut DbConnection,
    run: GradingRunId,
    period: Period,
    counts: &RunCounts,
    timings_json: &str,
    summary_json: &str,
) -> StoreResult<Option<GradingRunId>> {
    let now = Utc::now().naive_utc();
    let key = period.to_string();
    crate::transaction(conn, |conn| {
        let replaced: Option<i64> = with_backend!(conn, c => grading_periods::table
            .find(&key)
            .select(grading_periods::run_id)
            .first(c)
            .optional()?);
        with_backend!(conn, c => {
            match replaced {
                Some(_) => diesel::update(grading_periods::table.find(&key))
                    .set((grading_periods::run_id.eq(run.0), grading_periods::published_at.eq(now)))
                    .execute(c)?,
                None => diesel::insert_into(grading_periods::table)
                    .values((
                        grading_periods::period.eq(&key),
                        grading_periods::run_id.eq(run.0),
                        grading_periods::published_at.eq(now),
                    ))
                    .execute(c)?,
            };
            diesel::update(grading_runs::table.find(run.0))
                .set((
                    grading_runs::status.eq(GradingStatus::Succeeded.as_str()),
                    grading_runs::finished_at.eq(Some(now)),
                    grading_runs::customers.eq(counts.customers),
                    grading_runs::graded.eq(counts.graded),
                    grading_runs::tier_changes.eq(counts.tier_changes),
                    grading_runs::timings.eq(timings_json),
                    grading_runs::summary.eq(Some(summary_json)),
                ))
                .execute(c)?;
            if let Some(old) = replaced {
                diesel::update(grading_runs::table.find(old))
                    .set(grading_runs::status.eq(GradingStatus::Superseded.as_str()))
                    .execute(c)?;
            }
            // Owed notifications (digests, alerts) are recorded with the publication itself.
            diesel::insert_into(notification_events::table)
                .values((
                    notification_events::kind.eq(crate::notify::PERIOD_PUBLISHED),
                    notification_events::period.eq(&key),
                    notification_events::run_id.eq(run.0),
                    notification_events::created_at.eq(now),
                ))
                .execute(c)?;
        });
        Ok(replaced.map(GradingRunId))
    })
}

/// Removes the grade rows of a run (a superseded or failed one): its partitions on PostgreSQL,
/// its rows on SQLite.
pub fn delete_run_grades(conn: &mut DbConnection, run: GradingRunId) -> StoreResult<()> {
    match conn {
        DbConnection::Postgresql(c) => {
            use diesel::connection::SimpleConnection;
            let id = run.0;
            c.batch_execute(&format!(
                "DROP TABLE IF EXISTS grades_r{id}; DROP TABLE IF EXISTS grade_explanations_r{id}"
            ))?;
        }
        DbConnection::Sqlite(c) => {
            diesel::delete(grade_explanations::table.filter(grade_explanations::run_id.eq(run.0)))
                .execute(c)?;
            diesel::delete(grades::table.filter(grades::run_id.eq(run.0))).execute(c)?;
        }
    }
    Ok(())
}

/// Records phase timings of a run that is still going (e.g. written after publishing).
pub fn set_run_timings(
    conn: &mut DbConnection,
    run: GradingRunId,
    timings_json: &str,
) -> StoreResult<()> {
    with_backend!(conn, c => diesel::update(grading_runs::table.find(run.0))
        .set(grading_runs::timings.eq(timings_json))
        .execute(c)?);
    Ok(())
}

/// The published run of `period`, if it was graded.
pub fn published_run(conn: &mut DbConnection, period: Period) -> StoreResult<Option<GradingRun>> {
    let row: Option<RunRow> = with_backend!(conn, c => grading_periods::table
        .inner_join(grading_runs::table)
        .filter(grading_periods::period.eq(period.to_string()))
        .select(grading_runs::all_columns)
        .first(c)
        .optional()?);
    row.map(GradingRun::try_from).transpose()
}

/// One run by id.
pub fn find_run(conn: &mut DbConnection, run: GradingRunId) -> StoreResult<Option<GradingRun>> {
    let row: Option<RunRow> = with_backend!(conn, c => grading_runs::table
        .find(run.0)
        .select(grading_runs::all_columns)
        .first(c)
        .optional()?);
    row.map(GradingRun::try_from).transpose()
}

/// The most recent runs, newest first.
pub fn recent_runs(conn: &mut DbConnection, limit: i64) -> StoreResult<Vec<GradingRun>> {
    let rows: Vec<RunRow> = with_backend!(conn, c => grading_runs::table
        .order(grading_runs::id.desc())
        .limit(limit)
        .select(grading_runs::all_columns)
        .load(c)?);
    rows.into_iter().map(GradingRun::try_from).collect()
}

/// The published periods, oldest first.
pub fn published_periods(conn: &mut DbConnection) -> StoreResult<Vec<Period>> {
    let rows: Vec<String> = with_backend!(conn, c => grading_periods::table
        .order(grading_periods::period.asc())
        .select(grading_periods::period)
        .load(c)?);
    rows.iter()
        .map(|p| Period::parse(p).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Facts

/// What a grading run needs to know to interpret stored history.
#[derive(Debug)]
pub struct FactsRequest<'a> {
    /// The graded period.
    pub period: Period,
    /// Window length in months.
    pub lookback_months: u32,
    /// Days after due that still count as on time.
    pub grace_days: i64,
    /// Customer attributes used by custom components (others are not parsed).
    pub attributes: &'a [String],
    /// Tier names of the current policy, best first (stored names map to these indices).
    pub tiers: &'a [String],
    /// Segment keys of the current policy's table (stored keys map to these indices).
    pub segments: &'a [String],
}

/// The facts of every customer, in tie-break order (source, then external id, as bytes).
#[derive(Debug, Default)]
pub struct GradingFacts {
    /// One entry per customer.
    pub customers: Vec<CustomerFacts>,
    /// Orders read.
    pub orders_read: u64,
    /// Invoices read.
    pub invoices_read: u64,
    /// Milliseconds spent per phase (customers, orders, gaps, invoices, history).
    pub timings: Vec<(&'static str, u64)>,
}

/// Maps a customer id to its position in tie-break order: a dense table when ids are compact
/// (identity columns), a hash map otherwise.
enum Positions {
    Dense(Vec<u32>),
    Sparse(HashMap<i64, u32>),
}

impl Positions {
    fn new(ids: &[i64]) -> Self {
        let max = ids.iter().copied().max().unwrap_or(0);
        let min = ids.iter().copied().min().unwrap_or(0);
        if min >= 0 && (max as u64) < 4 * ids.len() as u64 + 1_000_000 {
            let mut table = vec![u32::MAX; max as usize + 1];
            for (pos, &id) in ids.iter().enumerate() {
                table[id as usize] = pos as u32;
            }
            Self::Dense(table)
        } else {
            Self::Sparse(
                ids.iter()
                    .enumerate()
                    .map(|(p, &id)| (id, p as u32))
                    .collect(),
            )
        }
    }

    fn get(&self, id: i64) -> Option<usize> {
        match self {
            Self::Dense(t) => usize::try_from(id)
                .ok()
                .and_then(|i| t.get(i))
                .filter(|&&p| p != u32::MAX)
                .map(|&p| p as usize),
            Self::Sparse(m) => m.get(&id).map(|&p| p as usize),
        }
    }
}

/// Days since 1970-01-01 of a date (the unit the readers below hand out).
fn epoch_day(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - UNIX_EPOCH_CE_DAY
}

/// `NaiveDate::num_days_from_ce` of 1970-01-01.
const UNIX_EPOCH_CE_DAY: i32 = 719_163;

fn from_epoch_day(day: i32) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(day + UNIX_EPOCH_CE_DAY)
}

/// An order as the grading fold needs it.
#[derive(Debug, Clone, Copy)]
struct OrderFact {
    customer_id: i64,
    day: i32,
    amount: i64,
    cost: Option<i64>,
}

/// An invoice as the grading fold needs it (already filtered to the window and due by D).
#[derive(Debug, Clone, Copy)]
struct InvoiceFact {
    customer_id: i64,
    due: i32,
    amount: i64,
    paid: Option<i32>,
}

/// Rows handed to a fold this many at a time.
const FOLD_BATCH: usize = 256;

/// Hands rows to a fold in batches of [`FOLD_BATCH`]. Rows arrive in storage order, so each one
/// lands on a random customer's accumulators: a cache miss. Folded one by one between two row
/// decodes, the misses were paid one after another (the fold was a tenth of a run's CPU time);
/// folded in a tight loop over a batch, the CPU overlaps them.
struct Batches<T, F: FnMut(&[T])> {
    rows: Vec<T>,
    fold: F,
    /// Rows pushed so far.
    pushed: u64,
}

impl<T, F: FnMut(&[T])> Batches<T, F> {
    fn new(fold: F) -> Self {
        Self {
            rows: Vec::with_capacity(FOLD_BATCH),
            fold,
            pushed: 0,
        }
    }

    fn push(&mut self, row: T) {
        self.pushed += 1;
        self.rows.push(row);
        if self.rows.len() == FOLD_BATCH {
            (self.fold)(&self.rows);
            self.rows.clear();
        }
    }

    /// Folds the last rows; returns how many rows were pushed in all.
    fn finish(mut self) -> u64 {
        if !self.rows.is_empty() {
            (self.fold)(&self.rows);
        }
        self.pushed
    }
}

/// A SQLite `YYYY-MM-DD` date read straight from the row's text as days since 1970: no
/// allocation, no format-string parsing (both cost more than the rest of reading an order).
#[derive(Debug, Clone, Copy, diesel::deserialize::FromSqlRow)]
struct SqliteDay(i32);

impl diesel::deserialize::FromSql<diesel::sql_types::Date, diesel::sqlite::Sqlite> for SqliteDay {
    fn from_sql(
        mut value: diesel::sqlite::SqliteValue<'_, '_, '_>,
    ) -> diesel::deserialize::Result<Self> {
        let text = value.read_text();
        iso_epoch_day(text.as_bytes())
            .map(SqliteDay)
            .ok_or_else(|| format!("stored date '{text}' is not YYYY-MM-DD").into())
    }
}

/// Days since 1970 of a `YYYY-MM-DD` date, by the civil-calendar arithmetic (years of 365
/// days plus leap days, months from March so February's length comes last): building a chrono
/// date to count its days cost more than the rest of decoding the date.
fn iso_epoch_day(b: &[u8]) -> Option<i32> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i32> {
        b[range].iter().try_fold(0i32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i32::from(c - b'0'))
        })
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) {
        return None;
    }
    // Years start in March: January and February belong to the year before.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days from 0000-03-01 to 1970-01-01.
    Some(era * 146_097 + day_of_era - 719_468)
}

/// A PostgreSQL `date` read straight from its binary form (days since 2000-01-01) as days since
/// 1970, without building a chrono date and counting its days back.
#[derive(Debug, Clone, Copy, diesel::deserialize::FromSqlRow)]
struct PgDay(i32);

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's date epoch.
const PG_EPOCH_DAY: i32 = 10_957;

impl diesel::deserialize::FromSql<diesel::sql_types::Date, diesel::pg::Pg> for PgDay {
    fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let bytes: [u8; 4] = value
            .as_bytes()
            .try_into()
            .map_err(|_| "a binary date is 4 bytes")?;
        i32::from_be_bytes(bytes)
            .checked_add(PG_EPOCH_DAY)
            .map(PgDay)
            .ok_or_else(|| "stored date out of range".into())
    }
}

/// An order as PostgreSQL's binary `COPY` hands it out, without its id (see `copy_live_rows`).
///
/// At most one nullable column, and it last: diesel 2.3's binary `COPY TO` reader does not step
/// over a NULL field's length, so every field after a NULL decodes as NULL too (a deleted order
/// without a cost read as live). Deleted rows are therefore looked up apart, through their
/// partial index (they are few).
#[derive(Queryable, Selectable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
struct OrderCopyFacts {
    customer_id: i64,
    order_date: PgDay,
    amount_minor: i64,
    cost_minor: Option<i64>,
}

/// [`OrderCopyFacts`] with the order's id, read when some orders are deleted (flat: diesel's
/// `COPY` does not take embedded selections).
#[derive(Queryable, Selectable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
struct OrderCopyRow {
    id: i64,
    customer_id: i64,
    order_date: PgDay,
    amount_minor: i64,
    cost_minor: Option<i64>,
}

impl OrderCopyRow {
    fn facts(self) -> OrderCopyFacts {
        OrderCopyFacts {
            customer_id: self.customer_id,
            order_date: self.order_date,
            amount_minor: self.amount_minor,
            cost_minor: self.cost_minor,
        }
    }
}

/// An invoice as PostgreSQL's binary `COPY` hands it out, without its id (one nullable column,
/// last: see [`OrderCopyFacts`]).
#[derive(Queryable, Selectable)]
#[diesel(table_name = invoices, check_for_backend(diesel::pg::Pg))]
struct InvoiceCopyFacts {
    customer_id: i64,
    issued_on: PgDay,
    due_on: PgDay,
    amount_minor: i64,
    paid_on: Option<PgDay>,
}

/// [`InvoiceCopyFacts`] with the invoice's id, read when some invoices are deleted.
#[derive(Queryable, Selectable)]
#[diesel(table_name = invoices, check_for_backend(diesel::pg::Pg))]
struct InvoiceCopyRow {
    id: i64,
    customer_id: i64,
    issued_on: PgDay,
    due_on: PgDay,
    amount_minor: i64,
    paid_on: Option<PgDay>,
}

impl InvoiceCopyRow {
    fn facts(self) -> InvoiceCopyFacts {
        InvoiceCopyFacts {
            customer_id: self.customer_id,
            issued_on: self.issued_on,
            due_on: self.due_on,
            amount_minor: self.amount_minor,
            paid_on: self.paid_on,
        }
    }
}

/// PostgreSQL: hands every row of `$table` not deleted at its source to `$each` as `$facts`, by
/// binary `COPY` on `$c` (which is unusable afterwards). The deleted ids are read first, through
/// their partial index; while there are none the ids are not copied at all (the server encodes
/// a fifth less), otherwise `$row` (the facts with the id) is copied and deleted rows skipped.
/// A macro: diesel's `COPY` bounds do not fit a readable generic function.
macro_rules! copy_live_rows {
    ($c:expr, $table:ident, $facts:ty, $row:ty, $each:expr) => {{
        let deleted: std::collections::HashSet<i64> = $table::table
            .filter($table::deleted_at.is_not_null())
            .select($table::id)
            .load_iter::<i64, DefaultLoadingMode>($c)?
            .collect::<QueryResult<_>>()?;
        let mut each = $each;
        if deleted.is_empty() {
            for row in diesel::copy_to($table::table).load::<$facts, _>($c)? {
                each(row?);
            }
        } else {
            for row in diesel::copy_to($table::table).load::<$row, _>($c)? {
                let row = row?;
                if !deleted.contains(&row.id) {
                    each(row.facts());
                }
            }
        }
    }};
}

/// Streams every order dated on or before `as_of` and not deleted at its source, in storage
/// order. PostgreSQL streams the
/// table with binary `COPY TO` (libpq's row-by-row mode cost several times as much per row),
/// which leaves the connection unusable afterwards: pass a dedicated one and drop it.
fn for_each_order(
    conn: &mut DbConnection,
    as_of: NaiveDate,
    fold: impl FnMut(&[OrderFact]),
) -> StoreResult<u64> {
    let mut batches = Batches::new(fold);
    let as_of_day = epoch_day(as_of);
    match conn {
        DbConnection::Sqlite(c) => {
            // No date filter in SQL: the DATE columns have NUMERIC affinity, so comparing them
            // with a bound date converts the bound text to a number on every row (a fifth of
            // the read). The few later rows are skipped here instead.
            let rows = orders::table
                .select((
                    orders::customer_id,
                    orders::order_date,
                    orders::amount_minor,
                    orders::cost_minor,
                    orders::deleted_at.is_null(),
                ))
                .load_iter::<(i64, SqliteDay, i64, Option<i64>, bool), DefaultLoadingMode>(c)?;
            for row in rows {
                let (customer_id, SqliteDay(day), amount, cost, live) = row?;
                if day > as_of_day || !live {
                    continue;
                }
                batches.push(OrderFact {
                    customer_id,
                    day,
                    amount,
                    cost,
                });
            }
        }
        DbConnection::Postgresql(c) => {
            copy_live_rows!(
                c,
                orders,
                OrderCopyFacts,
                OrderCopyRow,
                |row: OrderCopyFacts| {
                    if row.order_date.0 <= as_of_day {
                        batches.push(OrderFact {
                            customer_id: row.customer_id,
                            day: row.order_date.0,
                            amount: row.amount_minor,
                            cost: row.cost_minor,
                        });
                    }
                }
            );
        }
    }
    Ok(batches.finish())
}

/// Streams invoices issued in (window_start, as_of], due on or before `as_of`, with a positive
/// amount, not deleted at their source.
fn for_each_invoice(
    conn: &mut DbConnection,
    window_start: NaiveDate,
    as_of: NaiveDate,
    fold: impl FnMut(&[InvoiceFact]),
) -> StoreResult<u64> {
    let (as_of_day, start_day) = (epoch_day(as_of), epoch_day(window_start));
    let in_window =
        |issued: i32, due: i32| issued > start_day && issued <= as_of_day && due <= as_of_day;
    let mut batches = Batches::new(fold);
    match conn {
        DbConnection::Sqlite(c) => {
            let rows = invoices::table
                .filter(invoices::amount_minor.gt(0))
                .select((
                    invoices::customer_id,
                    invoices::issued_on,
                    invoices::due_on,
                    invoices::amount_minor,
                    invoices::paid_on,
                    invoices::deleted_at.is_null(),
                ))
                .load_iter::<(i64, SqliteDay, SqliteDay, i64, Option<SqliteDay>, bool), DefaultLoadingMode>(
                    c,
                )?;
            for row in rows {
                let (customer_id, SqliteDay(issued), SqliteDay(due), amount, paid, live) = row?;
                // Dates are filtered here, not in SQL (see `for_each_order`).
                if !in_window(issued, due) || !live {
                    continue;
                }
                batches.push(InvoiceFact {
                    customer_id,
                    due,
                    amount,
                    paid: paid.map(|d| d.0),
                });
            }
        }
        DbConnection::Postgresql(c) => {
            copy_live_rows!(
                c,
                invoices,
                InvoiceCopyFacts,
                InvoiceCopyRow,
                |row: InvoiceCopyFacts| {
                    if row.amount_minor > 0 && in_window(row.issued_on.0, row.due_on.0) {
                        batches.push(InvoiceFact {
                            customer_id: row.customer_id,
                            due: row.due_on.0,
                            amount: row.amount_minor,
                            paid: row.paid_on.map(|d| d.0),
                        });
                    }
                }
            );
        }
    }
    Ok(batches.finish())
}

/// Order dates of a customer, folded as day numbers and turned into dates at the end.
#[derive(Debug, Clone, Copy)]
struct DayFold {
    first: i32,
    last: i32,
    window_latest: i32,
    /// Σ amount of the orders on the first day seen so far.
    first_day_amount: i64,
    /// Σ amount of every order up to D.
    lifetime_amount: i64,
}

impl Default for DayFold {
    fn default() -> Self {
        Self {
            first: i32::MAX,
            last: i32::MIN,
            window_latest: i32::MIN,
            first_day_amount: 0,
            lifetime_amount: 0,
        }
    }
}

/// Loads the facts of every customer as of the period's last day. One pass over customers, one
/// over orders dated up to then, one over invoices due by then; previous grades, the grades of
/// twelve months before and overrides come from their tables.
///
/// Orders and invoices are read at the same time on two connections (two cores, two scans). On
/// PostgreSQL they are dedicated connections streaming binary `COPY` in the main transaction's
/// exported snapshot, so the facts are consistent to the row; they are closed afterwards
/// (diesel leaves a connection mid-COPY). On SQLite orders are read on `conn` and invoices on a
/// pooled connection; each snapshot starts at its first read, a moment apart, so an import
/// committing in that moment could be half-seen (do not import while grading).
pub fn load_facts(
    db: &crate::Database,
    conn: &mut DbConnection,
    req: &FactsRequest<'_>,
) -> StoreResult<GradingFacts> {
    match db.backend() {
        crate::Backend::Sqlite => {
            let mut side = db.conn()?;
            // The side connection only scans: a small page cache for the run keeps memory down
            // (the pool's default is 32 MB per connection), restored afterwards.
            set_sqlite_cache_kib(&mut side, 2 * 1024)?;
            let facts = crate::read_transaction(conn, |conn| {
                crate::read_transaction(&mut side, |side| {
                    load_facts_in_transaction(conn, Readers::Sqlite { invoices: side }, req)
                })
            });
            set_sqlite_cache_kib(&mut side, crate::db::SQLITE_CACHE_KIB)?;
            facts
        }
        crate::Backend::Postgres => crate::read_transaction(conn, |conn| {
            let snapshot = export_snapshot(conn)?;
            let mut orders = db.snapshot_connection(&snapshot)?;
            let mut invoices = db.snapshot_connection(&snapshot)?;
            load_facts_in_transaction(
                conn,
                Readers::Postgres {
                    orders: &mut orders,
                    invoices: &mut invoices,
                },
                req,
            )
        }),
    }
}

/// Where orders and invoices are read from.
enum Readers<'a> {
    /// Orders on the main connection, invoices on this one.
    Sqlite { invoices: &'a mut DbConnection },
    /// Dedicated connections in the main transaction's snapshot (closed afterwards).
    Postgres {
        orders: &'a mut DbConnection,
        invoices: &'a mut DbConnection,
    },
}

fn set_sqlite_cache_kib(conn: &mut DbConnection, kib: i64) -> StoreResult<()> {
    if let DbConnection::Sqlite(c) = conn {
        use diesel::connection::SimpleConnection;
        c.batch_execute(&format!("PRAGMA cache_size = -{kib}"))?;
    }
    Ok(())
}

/// PostgreSQL: makes the transaction REPEATABLE READ (one snapshot for every read) and exports
/// the snapshot for the reader connections. SQLite has no exported snapshots: an error.
fn export_snapshot(conn: &mut DbConnection) -> StoreResult<String> {
    #[derive(QueryableByName)]
    struct Snapshot {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    match conn {
        DbConnection::Postgresql(c) => {
            use diesel::connection::SimpleConnection;
            c.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")?;
            let snapshot: Snapshot =
                diesel::sql_query("SELECT pg_export_snapshot() AS id").get_result(c)?;
            Ok(snapshot.id)
        }
        DbConnection::Sqlite(_) => Err(StoreError::Corrupt(
            "snapshots are exported on PostgreSQL only".into(),
        )),
    }
}

fn load_facts_in_transaction(
    conn: &mut DbConnection,
    readers: Readers<'_>,
    req: &FactsRequest<'_>,
) -> StoreResult<GradingFacts> {
    let as_of = req.period.as_of();
    let window_start = req.period.as_of_minus_months(req.lookback_months);
    let year_start = req.period.as_of_minus_months(12);
    let (window_start_day, year_start_day) = (epoch_day(window_start), epoch_day(year_start));
    let mut timings = Vec::new();
    let mut clock = std::time::Instant::now();
    let mut lap = |name: &'static str, timings: &mut Vec<(&'static str, u64)>| {
        timings.push((name, clock.elapsed().as_millis() as u64));
        clock = std::time::Instant::now();
    };

    // Customers in tie-break order: the ids alone, read along the (source, external_id) unique
    // index, whose "C" collation is the contract's byte order. (PostgreSQL once sorted the keys
    // itself here in 3 s; sorting them in Rust instead left ~100 MB of freed strings in the
    // process for the rest of the run.)
    let ids: Vec<i64> = with_backend!(conn, c => customers::table
        .order((customers::source.asc(), customers::external_id.asc()))
        .select(customers::id)
        .load(c)?);
    // Customers deleted at their source keep their history but are graded no more.
    let deleted: Vec<i64> = with_backend!(conn, c => customers::table
        .filter(customers::deleted_at.is_not_null())
        .select(customers::id)
        .load(c)?);
    let ids = if deleted.is_empty() {
        ids
    } else {
        let deleted: std::collections::HashSet<i64> = deleted.into_iter().collect();
        ids.into_iter().filter(|id| !deleted.contains(id)).collect()
    };
    let positions = Positions::new(&ids);
    let mut facts: Vec<CustomerFacts> = ids
        .iter()
        .map(|&id| CustomerFacts {
            customer: CustomerId(id),
            ..CustomerFacts::default()
        })
        .collect();
    drop(ids);
    type CustomerRow = (i64, Option<NaiveDate>, Option<i32>);
    let base = (
        customers::id,
        customers::created_on,
        customers::prospect_rating,
    );
    let mut place = |(id, created_on, rating): CustomerRow, attributes: Option<&str>| {
        if let Some(pos) = positions.get(id) {
            let f = &mut facts[pos];
            f.created_on = created_on;
            f.prospect_rating = rating.and_then(|r| u8::try_from(r).ok());
            if let Some(json) = attributes {
                f.attributes = wanted_attributes(json, req.attributes).into_boxed_slice();
            }
        }
    };
    if req.attributes.is_empty() {
        let rows: Vec<CustomerRow> =
            with_backend!(conn, c => customers::table.select(base).load(c)?);
        rows.into_iter().for_each(|r| place(r, None));
    } else {
        let rows: Vec<(CustomerRow, String)> = with_backend!(conn, c => customers::table
            .select((base, customers::attributes))
            .load(c)?);
        rows.into_iter().for_each(|(r, json)| place(r, Some(&json)));
    }
    lap("customers", &mut timings);

    // Invoices on a second thread and connection while this one reads orders.
    let grace = i32::try_from(req.grace_days.max(0)).unwrap_or(i32::MAX);
    let as_of_day = epoch_day(as_of);
    let customer_count = facts.len();
    let positions_ref = &positions;
    let (orders_conn, side): (&mut DbConnection, &mut DbConnection) = match readers {
        Readers::Sqlite { invoices } => (&mut *conn, invoices),
        Readers::Postgres { orders, invoices } => (orders, invoices),
    };
    let (orders_read, invoices) = std::thread::scope(|scope| -> StoreResult<_> {
        let invoices = scope.spawn(move || -> StoreResult<(Vec<InvoiceFacts>, u64, u64)> {
            let started = std::time::Instant::now();
            let mut totals = vec![InvoiceFacts::default(); customer_count];
            let read = for_each_invoice(side, window_start, as_of, |batch| {
                for i in batch {
                    let Some(pos) = positions_ref.get(i.customer_id) else {
                        continue;
                    };
                    let f = &mut totals[pos];
                    f.due_amount += i.amount;
                    let paid_by_d = i.paid.filter(|&p| p <= as_of_day);
                    match paid_by_d {
                        Some(paid) if paid <= i.due.saturating_add(grace) => {
                            f.on_time_amount += i.amount;
                        }
                        Some(_) => {}
                        None => f.unpaid_amount += i.amount,
                    }
                    let late = (paid_by_d.unwrap_or(as_of_day) - i.due).max(0);
                    f.late_amount_days = f
                        .late_amount_days
                        .saturating_add(i.amount.saturating_mul(i64::from(late)));
                }
            })?;
            Ok((totals, read, started.elapsed().as_millis() as u64))
        });
        let orders_read = read_orders(
            orders_conn,
            &positions,
            &mut facts,
            as_of,
            window_start_day,
            year_start_day,
        )?;
        let invoices = invoices
            .join()
            .map_err(|_| StoreError::Task("the invoice reader panicked".into()))??;
        Ok((orders_read, invoices))
    })?;
    let (invoice_totals, invoices_read, invoices_ms) = invoices;
    for (f, totals) in facts.iter_mut().zip(invoice_totals) {
        f.invoices = totals;
    }
    lap("orders and gaps", &mut timings);
    timings.push(("invoices (beside orders)", invoices_ms));

    // Previous period's tiers and the grades of twelve months before.
    if let Some(run) = published_run_id(conn, req.period.prev())? {
        type Row = (i64, Option<String>, i32, Option<NaiveDate>);
        let rows: Vec<Row> = with_backend!(conn, c => grades::table
            .filter(grades::run_id.eq(run))
            .select((grades::customer_id, grades::tier, grades::periods_below, grades::tier_since))
            .load(c)?);
        for (id, tier, below, since) in rows {
            if let Some(pos) = positions.get(id) {
                facts[pos].previous = PreviousGrade {
                    assigned_tier: tier
                        .and_then(|t| req.tiers.iter().position(|n| *n == t))
                        .and_then(|i| u8::try_from(i).ok()),
                    periods_below: u32::try_from(below).unwrap_or(0),
                    tier_since: since,
                };
            }
        }
    }
    if let Some(run) = published_run_id(conn, req.period.shift(-12))? {
        let rows: Vec<(i64, Option<String>, String)> = with_backend!(conn, c => grades::table
            .filter(grades::run_id.eq(run))
            .select((grades::customer_id, grades::segment, grades::lifecycle))
            .load(c)?);
        for (id, segment, lifecycle) in rows {
            if let Some(pos) = positions.get(id) {
                facts[pos].year_ago = Some(YearAgoGrade {
                    segment: segment
                        .and_then(|s| req.segments.iter().position(|k| *k == s))
                        .and_then(|i| u16::try_from(i).ok()),
                    churned: lifecycle == "churned",
                });
            }
        }
    }
    for (id, o) in list_overrides(conn)? {
        if let Some(pos) = positions.get(id.0) {
            facts[pos].override_ = Some(Box::new(o));
        }
    }
    lap("history", &mut timings);

    Ok(GradingFacts {
        customers: facts,
        orders_read,
        invoices_read,
        timings,
    })
}

/// Folds every order up to D into the customers' facts, then their median gaps.
fn read_orders(
    conn: &mut DbConnection,
    positions: &Positions,
    facts: &mut [CustomerFacts],
    as_of: NaiveDate,
    window_start_day: i32,
    year_start_day: i32,
) -> StoreResult<u64> {
    // Orders up to D, in storage order, folded per customer.
    let mut folds = vec![DayFold::default(); facts.len()];
    let mut days: Vec<u64> = Vec::new();
    let orders_read = for_each_order(conn, as_of, |batch| {
        for o in batch {
            let Some(pos) = positions.get(o.customer_id) else {
                continue;
            };
            let f = &mut facts[pos];
            let d = &mut folds[pos];
            f.lifetime_orders += 1;
            d.lifetime_amount += o.amount;
            if o.day < d.first {
                d.first_day_amount = o.amount;
            } else if o.day == d.first {
                d.first_day_amount += o.amount;
            }
            d.first = d.first.min(o.day);
            d.last = d.last.max(o.day);
            let add_profit = |p: &mut ProfitFacts| match o.cost {
                Some(cost) => p.costed_profit += o.amount - cost,
                None => {
                    p.uncosted_amount += o.amount;
                    p.uncosted_orders += 1;
                }
            };
            if o.day > window_start_day {
                f.window_orders += 1;
                f.window_amount += o.amount;
                d.window_latest = d.window_latest.max(o.day);
                add_profit(&mut f.window_profit);
            }
            if o.day > year_start_day {
                f.last_year_revenue += o.amount;
                add_profit(&mut f.last_year_profit);
            }
            // Offset keeps the day positive for any stored date (year ≥ 1900).
            days.push(((pos as u64) << 32) | u64::from((o.day + DAY_OFFSET) as u32));
        }
    })?;
    for (f, d) in facts.iter_mut().zip(&folds) {
        if f.lifetime_orders > 0 {
            f.first_order = from_epoch_day(d.first);
            f.last_order = from_epoch_day(d.last);
            f.repeat_amount = d.lifetime_amount - d.first_day_amount;
        }
        if f.window_orders > 0 {
            f.window_latest = from_epoch_day(d.window_latest);
        }
    }
    drop(folds);

    // Median gap between distinct order days, per customer.
    days.sort_unstable();
    days.dedup();
    let mut gaps: Vec<f64> = Vec::new();
    let mut start = 0;
    while start < days.len() {
        let pos = days[start] >> 32;
        let mut end = start + 1;
        while end < days.len() && days[end] >> 32 == pos {
            end += 1;
        }
        facts[pos as usize].order_days = u32::try_from(end - start).unwrap_or(u32::MAX);
        if end - start >= 2 {
            gaps.clear();
            gaps.extend(
                days[start..end]
                    .windows(2)
                    .map(|w| f64::from((w[1] & 0xffff_ffff) as u32 - (w[0] & 0xffff_ffff) as u32)),
            );
            // Gaps are whole days; f32 holds their median exactly.
            facts[pos as usize].median_gap_days =
                tierwise_domain::grading::score::median(&mut gaps).map(|m| m as f32);
        }
        start = end;
    }
    drop(days);

    Ok(orders_read)
}

/// Added to epoch days before packing them unsigned (covers dates back to 1900).
const DAY_OFFSET: i32 = 30_000;

/// The id of `period`'s published run, if it has one.
pub(crate) fn published_run_id(
    conn: &mut DbConnection,
    period: Period,
) -> StoreResult<Option<i64>> {
    Ok(with_backend!(conn, c => grading_periods::table
        .find(period.to_string())
        .select(grading_periods::run_id)
        .first(c)
        .optional()?))
}

/// The attributes named in `wanted`, sorted by name, from a stored JSON object.
fn wanted_attributes(json: &str, wanted: &[String]) -> Vec<(String, f64)> {
    if wanted.is_empty() || json.len() <= 2 {
        return Vec::new();
    }
    let Ok(map) = serde_json::from_str::<std::collections::BTreeMap<String, f64>>(json) else {
        return Vec::new();
    };
    map.into_iter()
        .filter(|(k, _)| wanted.contains(k))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Grade rows

/// One grade row as written. Its text columns other than the explanation come from a small set
/// of names (tiers, segments, stages), so they are `'static`: callers intern them once. That
/// lets the SQLite writer reuse one prepared statement (diesel caches only statements whose
/// types are `'static`).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = grades, table_name = grades_load, treat_none_as_default_value = false)]
pub struct NewGrade {
    /// Run.
    pub run_id: i64,
    /// Customer.
    pub customer_id: i64,
    /// In the graded population.
    pub graded: bool,
    /// Days since the latest window order.
    pub recency_days: Option<i32>,
    /// Window orders.
    pub frequency: i32,
    /// Window monetary.
    pub monetary: i64,
    /// R score.
    pub r_score: Option<i32>,
    /// F score.
    pub f_score: Option<i32>,
    /// M score.
    pub m_score: Option<i32>,
    /// Segment key.
    pub segment: Option<&'static str>,
    /// ABC class.
    pub abc_class: Option<&'static str>,
    /// Credit score.
    pub credit_score: Option<f64>,
    /// Credit grade (`unrated` when none).
    pub credit_grade: &'static str,
    /// Window profit.
    pub profit: Option<i64>,
    /// Composite score.
    pub composite: Option<f64>,
    /// Tier from the composite.
    pub computed_tier: Option<&'static str>,
    /// Assigned tier.
    pub tier: Option<&'static str>,
    /// computed | held | pinned | blocked | not_graded.
    pub tier_reason: &'static str,
    /// Consecutive periods below the held tier.
    pub periods_below: i32,
    /// Loyalty step name.
    pub loyalty: Option<&'static str>,
    /// Lifecycle stage.
    pub lifecycle: &'static str,
    /// Simple CLV.
    pub clv: Option<i64>,
    /// Day the customer entered its tier.
    pub tier_since: Option<NaiveDate>,
    /// P(alive) from the purchase model.
    pub p_alive: Option<f64>,
    /// Expected purchases in the next 90 days.
    pub expected_purchases_90d: Option<f64>,
    /// Expected purchases in the next 12 months.
    pub expected_purchases_12m: Option<f64>,
    /// Expected average order value (minor units).
    pub expected_order_value: Option<i64>,
    /// Model-based CLV (minor units).
    pub clv_model: Option<i64>,
}

/// The explanation of one grade, as written.
#[derive(Debug, Clone, Insertable)]
#[diesel(
    table_name = grade_explanations,
    table_name = grade_explanations_load,
    treat_none_as_default_value = false
)]
pub struct NewExplanation {
    /// Run.
    pub run_id: i64,
    /// Customer.
    pub customer_id: i64,
    /// Everything beyond the grade's columns that explains it, as JSON.
    pub explanation: String,
}

/// Rows per multi-row INSERT on SQLite (28 columns each: well under its 32,766 variable limit).
const SQLITE_GRADES_PER_INSERT: usize = 128;

/// Grade rows per commit while a run's grades are written on SQLite (see [`write_run_grades`]).
const SQLITE_GRADES_PER_COMMIT: usize = 100_000;

/// Inserts `rows` into `table` on SQLite, [`SQLITE_GRADES_PER_INSERT`] at a time. Fixed-size
/// arrays give diesel a static query id, so each statement is prepared once and reused;
/// preparing a fresh multi-row INSERT per batch cost a tenth of a run's instructions.
macro_rules! insert_in_cached_batches {
    ($conn:expr, $table:ident, $rows:expr) => {{
        let (arrays, rest) = $rows.as_chunks::<SQLITE_GRADES_PER_INSERT>();
        for array in arrays {
            diesel::insert_into($table::table)
                .values(array)
                .execute($conn)?;
        }
        if !rest.is_empty() {
            diesel::insert_into($table::table)
                .values(rest)
                .execute($conn)?;
        }
    }};
}

/// Writes a run's grade rows and explanations, batch by batch as `batches` hands them out, in
/// customer-id order (the primary key's order, so pages fill sequentially).
///
/// PostgreSQL: one transaction; binary COPY into bare load tables (no key), which then get their
/// key, a check that they hold only this run (so attaching needs no scan) and are attached as the
/// run's partitions; the grades' statistics are gathered (without them the planner takes a fresh
/// million-row partition for a few thousand rows and sorts on disk where it should merge along
/// the key; readers such as the digests run right after). The grading lock makes the fixed load
/// table names safe.
///
/// SQLite: multi-row INSERTs, committed every [`SQLITE_GRADES_PER_COMMIT`] rows while a second
/// connection checkpoints the committed part of the write-ahead log into the database file. In
/// one transaction the whole log (about 400 MB per million grades) was copied at the commit,
/// on the run's clock; now the copy runs beside the writes. Committing in parts is safe: readers
/// reach grades only through a period's published run, and the rows of a run that fails are
/// removed by [`fail_run`] (or, if its process died, [`fail_abandoned_runs`]).
pub fn write_run_grades(
    db: &crate::Database,
    conn: &mut DbConnection,
    run: GradingRunId,
    batches: impl Iterator<Item = (Vec<NewGrade>, Vec<NewExplanation>)>,
) -> StoreResult<()> {
    if let DbConnection::Postgresql(_) = conn {
        return crate::transaction(conn, |conn| {
            let DbConnection::Postgresql(c) = conn else {
                unreachable!("matched above")
            };
            write_grades_by_copy(c, run, batches)
        });
    }
    // Without a spare connection the log is checkpointed at the commits, as SQLite does.
    let Some(side) = db.try_conn() else {
        return write_grades_in_commits(conn, batches, || {});
    };
    set_autocheckpoint(conn, 0)?;
    let written = std::thread::scope(|scope| {
        let (committed, commits) = std::sync::mpsc::channel::<()>();
        let checkpointer = scope.spawn(move || {
            let mut side = side;
            while commits.recv().is_ok() {
                // Several commits may have queued up: one checkpoint covers them all.
                while commits.try_recv().is_ok() {}
                if let DbConnection::Sqlite(c) = &mut *side {
                    use diesel::connection::SimpleConnection;
                    // The grades are committed whatever happens here: a failed checkpoint
                    // leaves the log to SQLite's own checkpoint at a later commit.
                    if let Err(error) = c.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                        tracing::warn!(%error, "checkpointing beside the grade writes failed");
                        return;
                    }
                }
            }
        });
        let written = write_grades_in_commits(conn, batches, || {
            // A checkpointer that stopped has logged why; the writes go on without it.
            let _ = committed.send(());
        });
        drop(committed);
        checkpointer
            .join()
            .map_err(|_| StoreError::Task("the WAL checkpointer panicked".into()))?;
        written
    });
    set_autocheckpoint(conn, SQLITE_AUTOCHECKPOINT_PAGES)?;
    written
}

/// SQLite's default: checkpoint at a commit once the log holds this many pages.
const SQLITE_AUTOCHECKPOINT_PAGES: i64 = 1000;

fn set_autocheckpoint(conn: &mut DbConnection, pages: i64) -> StoreResult<()> {
    if let DbConnection::Sqlite(c) = conn {
        use diesel::connection::SimpleConnection;
        c.batch_execute(&format!("PRAGMA wal_autocheckpoint = {pages}"))?;
    }
    Ok(())
}

fn write_grades_by_copy(
    c: &mut diesel::PgConnection,
    run: GradingRunId,
    batches: impl Iterator<Item = (Vec<NewGrade>, Vec<NewExplanation>)>,
) -> StoreResult<()> {
    use diesel::connection::SimpleConnection;
    c.batch_execute(
        "DROP TABLE IF EXISTS grades_load; DROP TABLE IF EXISTS grade_explanations_load; \
         CREATE TABLE grades_load (LIKE grades); \
         CREATE TABLE grade_explanations_load (LIKE grade_explanations)",
    )?;
    for (rows, explanations) in batches {
        diesel::copy_from(grades_load::table)
            .from_insertable(&rows)
            .execute(c)?;
        diesel::copy_from(grade_explanations_load::table)
            .from_insertable(&explanations)
            .execute(c)?;
    }
    let id = run.0;
    c.batch_execute(&format!(
        "ALTER TABLE grades_load ADD PRIMARY KEY (run_id, customer_id), \
             ADD CONSTRAINT grades_r{id}_run CHECK (run_id = {id}); \
         ALTER TABLE grades_load RENAME TO grades_r{id}; \
         ALTER TABLE grades ATTACH PARTITION grades_r{id} FOR VALUES IN ({id}); \
         ANALYZE grades_r{id}; \
         ALTER TABLE grade_explanations_load ADD PRIMARY KEY (run_id, customer_id), \
             ADD CONSTRAINT grade_explanations_r{id}_run CHECK (run_id = {id}); \
         ALTER TABLE grade_explanations_load RENAME TO grade_explanations_r{id}; \
         ALTER TABLE grade_explanations ATTACH PARTITION grade_explanations_r{id} \
             FOR VALUES IN ({id})"
    ))?;
    Ok(())
}

/// SQLite: inserts the batches, committing every [`SQLITE_GRADES_PER_COMMIT`] grade rows and
/// calling `after_commit` after each commit.
fn write_grades_in_commits(
    conn: &mut DbConnection,
    batches: impl Iterator<Item = (Vec<NewGrade>, Vec<NewExplanation>)>,
    mut after_commit: impl FnMut(),
) -> StoreResult<()> {
    let mut batches = batches.peekable();
    while batches.peek().is_some() {
        crate::transaction(conn, |conn| -> StoreResult<()> {
            let DbConnection::Sqlite(c) = conn else {
                return Err(StoreError::Corrupt("SQLite writer on PostgreSQL".into()));
            };
            let mut written = 0;
            while written < SQLITE_GRADES_PER_COMMIT {
                let Some((rows, explanations)) = batches.next() else {
                    break;
                };
                insert_in_cached_batches!(c, grades, rows);
                insert_in_cached_batches!(c, grade_explanations, explanations);
                written += rows.len();
            }
            Ok(())
        })?;
        after_commit();
    }
    Ok(())
}

/// A published grade with its customer, for exports and drill-downs.
#[derive(Debug, Clone, PartialEq, Queryable, Serialize)]
pub struct GradedCustomer {
    /// Customer id.
    pub customer_id: i64,
    /// Source.
    pub source: String,
    /// External id.
    pub external_id: String,
    /// Name.
    pub name: String,
    /// Contact person.
    pub contact_name: Option<String>,
    /// Contact email.
    pub contact_email: Option<String>,
    /// Owner's email.
    pub owner_email: Option<String>,
    /// In the graded population.
    pub graded: bool,
    /// Days since the latest window order.
    pub recency_days: Option<i32>,
    /// Window orders.
    pub frequency: i32,
    /// Window monetary.
    pub monetary: i64,
    /// R score.
    pub r_score: Option<i32>,
    /// F score.
    pub f_score: Option<i32>,
    /// M score.
    pub m_score: Option<i32>,
    /// Segment key.
    pub segment: Option<String>,
    /// ABC class.
    pub abc_class: Option<String>,
    /// Credit score.
    pub credit_score: Option<f64>,
    /// Credit grade.
    pub credit_grade: String,
    /// Window profit.
    pub profit: Option<i64>,
    /// Composite.
    pub composite: Option<f64>,
    /// Computed tier.
    pub computed_tier: Option<String>,
    /// Assigned tier.
    pub tier: Option<String>,
    /// Why the tier.
    pub tier_reason: String,
    /// Loyalty step.
    pub loyalty: Option<String>,
    /// Lifecycle stage.
    pub lifecycle: String,
    /// Simple CLV.
    pub clv: Option<i64>,
    /// The day the customer entered its tier (contact cadences count from it).
    pub tier_since: Option<NaiveDate>,
    /// The predictive models' view of the customer.
    #[serde(flatten)]
    pub prediction: GradePrediction,
    /// Explanation JSON (absent only if it was never written).
    pub explanation: Option<String>,
}

/// A grade's predictions (all `None` when the customer had no order or the model did not fit).
#[derive(Debug, Clone, Default, PartialEq, Queryable, Serialize)]
pub struct GradePrediction {
    /// P(alive).
    pub p_alive: Option<f64>,
    /// Expected purchases in the next 90 days.
    pub expected_purchases_90d: Option<f64>,
    /// Expected purchases in the next 12 months.
    pub expected_purchases_12m: Option<f64>,
    /// Expected average order value (minor units).
    pub expected_order_value: Option<i64>,
    /// Model-based CLV (minor units).
    pub clv_model: Option<i64>,
}

/// Calls `each` for every customer of the published run of `period`, in tie-break order.
/// Returns false when the period has not been graded.
pub fn for_each_graded_customer(
    conn: &mut DbConnection,
    period: Period,
    each: impl FnMut(GradedCustomer) -> StoreResult<()>,
) -> StoreResult<bool> {
    let Some(run) = published_run_id(conn, period)? else {
        return Ok(false);
    };
    graded_customers(conn, run, each)?;
    Ok(true)
}

/// One customer's published grade for `period` (None when the period was not graded or the
/// customer has no grade in it).
pub fn graded_customer(
    conn: &mut DbConnection,
    period: Period,
    customer: CustomerId,
) -> StoreResult<Option<GradedCustomer>> {
    match published_run_id(conn, period)? {
        Some(run) => graded_customer_in_run(conn, run, customer),
        None => Ok(None),
    }
}

/// Grades joined with their customer, owner and explanation, selected as a [`GradedCustomer`].
/// A macro, not a function: both callers keep a concrete query type, which diesel caches as a
/// prepared statement (PostgreSQL then plans it once per connection).
macro_rules! graded_customer_query {
    () => {
        grades::table
            .inner_join(customers::table)
            .left_join(owners::table.on(customers::owner_id.eq(owners::id.nullable())))
            .left_join(
                grade_explanations::table.on(grade_explanations::run_id
                    .eq(grades::run_id)
                    .and(grade_explanations::customer_id.eq(grades::customer_id))),
            )
            .select((
                grades::customer_id,
                customers::source,
                customers::external_id,
                customers::name,
                customers::contact_name,
                customers::contact_email,
                owners::email.nullable(),
                grades::graded,
                grades::recency_days,
                grades::frequency,
                grades::monetary,
                grades::r_score,
                grades::f_score,
                grades::m_score,
                grades::segment,
                grades::abc_class,
                grades::credit_score,
                grades::credit_grade,
                grades::profit,
                grades::composite,
                grades::computed_tier,
                grades::tier,
                grades::tier_reason,
                grades::loyalty,
                grades::lifecycle,
                grades::clv,
                grades::tier_since,
                (
                    grades::p_alive,
                    grades::expected_purchases_90d,
                    grades::expected_purchases_12m,
                    grades::expected_order_value,
                    grades::clv_model,
                ),
                grade_explanations::explanation.nullable(),
            ))
    };
}

/// One customer's grade in `run` (a published run's id, or any run's), if it has one.
pub fn graded_customer_in_run(
    conn: &mut DbConnection,
    run: i64,
    customer: CustomerId,
) -> StoreResult<Option<GradedCustomer>> {
    // An equality, not a range: PostgreSQL keeps a generic plan for it instead of planning the
    // four-table join on every call.
    Ok(with_backend!(conn, c => graded_customer_query!()
        .filter(grades::run_id.eq(run))
        .filter(grades::customer_id.eq(customer.0))
        .first::<GradedCustomer>(c)
        .optional()?))
}

/// Streams every grade of `run`, in tie-break order.
fn graded_customers(
    conn: &mut DbConnection,
    run: i64,
    mut each: impl FnMut(GradedCustomer) -> StoreResult<()>,
) -> StoreResult<()> {
    let query = graded_customer_query!()
        .filter(grades::run_id.eq(run))
        .order((customers::source.asc(), customers::external_id.asc()));
    // Streamed on both backends: PostgreSQL's default mode would buffer every customer first.
    match conn {
        DbConnection::Sqlite(c) => {
            for row in query.load_iter::<GradedCustomer, DefaultLoadingMode>(c)? {
                each(row?)?;
            }
        }
        DbConnection::Postgresql(c) => {
            for row in query.load_iter::<GradedCustomer, diesel::pg::PgRowByRowLoadingMode>(c)? {
                each(row?)?;
            }
        }
    }
    Ok(())
}

/// A customer whose assigned tier differs between a period and the one before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierChange {
    /// Customer id.
    pub customer_id: i64,
    /// Tier before (none = had no tier).
    pub from: Option<String>,
    /// Tier now.
    pub to: Option<String>,
}

/// Tier changes of `period` against the period before (both published).
pub fn tier_changes(conn: &mut DbConnection, period: Period) -> StoreResult<Vec<TierChange>> {
    let Some(now) = published_run_id(conn, period)? else {
        return Ok(Vec::new());
    };
    let before = published_run_id(conn, period.prev())?;
    let current = tiers_of_run(conn, now)?;
    let previous: HashMap<i64, Option<String>> = match before {
        Some(run) => tiers_of_run(conn, run)?.into_iter().collect(),
        None => HashMap::new(),
    };
    Ok(current
        .into_iter()
        .filter_map(|(id, to)| {
            let from = previous.get(&id).cloned().flatten();
            (from != to).then_some(TierChange {
                customer_id: id,
                from,
                to,
            })
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Overrides

/// Every current override.
pub fn list_overrides(conn: &mut DbConnection) -> StoreResult<Vec<(CustomerId, Override)>> {
    type Row = (
        i64,
        String,
        Option<String>,
        String,
        String,
        Option<NaiveDate>,
    );
    let rows: Vec<Row> = with_backend!(conn, c => overrides::table
        .order(overrides::customer_id)
        .select((
            overrides::customer_id,
            overrides::kind,
            overrides::tier,
            overrides::reason,
            overrides::author,
            overrides::until,
        ))
        .load(c)?);
    rows.into_iter()
        .map(|(id, kind, tier, reason, author, until)| {
            let kind = match (kind.as_str(), tier) {
                ("pin", Some(tier)) => OverrideKind::Pin { tier },
                ("block", _) => OverrideKind::Block,
                (other, _) => {
                    return Err(StoreError::Corrupt(format!(
                        "override of customer {id} has kind '{other}'"
                    )));
                }
            };
            Ok((
                CustomerId(id),
                Override {
                    kind,
                    reason,
                    author,
                    until,
                },
            ))
        })
        .collect()
}

/// Sets (replaces) a customer's override and records the event.
pub fn set_override(
    conn: &mut DbConnection,
    customer: CustomerId,
    o: &Override,
) -> StoreResult<()> {
    let now = Utc::now().naive_utc();
    let (kind, tier) = match &o.kind {
        OverrideKind::Pin { tier } => ("pin", Some(tier.as_str())),
        OverrideKind::Block => ("block", None),
    };
    crate::transaction(conn, |conn| {
        with_backend!(conn, c => {
            diesel::delete(overrides::table.find(customer.0)).execute(c)?;
            diesel::insert_into(overrides::table)
                .values((
                    overrides::customer_id.eq(customer.0),
                    overrides::kind.eq(kind),
                    overrides::tier.eq(tier),
                    overrides::reason.eq(&o.reason),
                    overrides::author.eq(&o.author),
                    overrides::until.eq(o.until),
                    overrides::created_at.eq(now),
                ))
                .execute(c)?;
            diesel::insert_into(override_events::table)
                .values((
                    override_events::customer_id.eq(customer.0),
                    override_events::action.eq(kind),
                    override_events::tier.eq(tier),
                    override_events::reason.eq(&o.reason),
                    override_events::author.eq(&o.author),
                    override_events::until.eq(o.until),
                    override_events::at.eq(now),
                ))
                .execute(c)?;
        });
        Ok(())
    })
}

/// Clears a customer's override, recording who and why. Returns false when it had none.
pub fn clear_override(
    conn: &mut DbConnection,
    customer: CustomerId,
    author: &str,
    reason: &str,
) -> StoreResult<bool> {
    let now = Utc::now().naive_utc();
    crate::transaction(conn, |conn| {
        let removed =
            with_backend!(conn, c => diesel::delete(overrides::table.find(customer.0)).execute(c)?);
        if removed == 0 {
            return Ok(false);
        }
        with_backend!(conn, c => diesel::insert_into(override_events::table)
            .values((
                override_events::customer_id.eq(customer.0),
                override_events::action.eq("clear"),
                override_events::reason.eq(reason),
                override_events::author.eq(author),
                override_events::at.eq(now),
            ))
            .execute(c)?);
        Ok(true)
    })
}

/// An entry of a customer's override audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct OverrideEvent {
    /// pin | block | clear.
    pub action: String,
    /// Pinned tier.
    pub tier: Option<String>,
    /// Why.
    pub reason: String,
    /// Who.
    pub author: String,
    /// Until.
    pub until: Option<NaiveDate>,
    /// When (UTC).
    pub at: NaiveDateTime,
}

/// A customer's override history, oldest first.
pub fn override_history(
    conn: &mut DbConnection,
    customer: CustomerId,
) -> StoreResult<Vec<OverrideEvent>> {
    Ok(with_backend!(conn, c => override_events::table
        .filter(override_events::customer_id.eq(customer.0))
        .order(override_events::id.asc())
        .select((
            override_events::action,
            override_events::tier,
            override_events::reason,
            override_events::author,
            override_events::until,
            override_events::at,
        ))
        .load(c)?))
}

/// Assigned tier of every customer in the published run of `period` (None when not graded).
pub fn published_tiers(
    conn: &mut DbConnection,
    period: Period,
) -> StoreResult<Option<HashMap<i64, Option<String>>>> {
    let Some(run) = published_run_id(conn, period)? else {
        return Ok(None);
    };
    Ok(Some(tiers_of_run(conn, run)?.into_iter().collect()))
}

/// (customer id, assigned tier) of every grade of a run, in customer-id order.
fn tiers_of_run(conn: &mut DbConnection, run: i64) -> StoreResult<Vec<(i64, Option<String>)>> {
    Ok(with_backend!(conn, c => grades::table
        .filter(grades::run_id.eq(run))
        .select((grades::customer_id, grades::tier))
        .order(grades::customer_id)
        .load(c)?))
}

/// Grade rows stored over all runs (published, superseded or left by a dead run).
pub fn count_grade_rows(conn: &mut DbConnection) -> StoreResult<u64> {
    let n: i64 = with_backend!(conn, c => grades::table.count().get_result(c)?);
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_epoch_day_counts_days_like_chrono() {
        let mut date = NaiveDate::from_ymd_opt(1600, 1, 1).unwrap();
        let end = NaiveDate::from_ymd_opt(2500, 12, 31).unwrap();
        while date <= end {
            let text = date.format("%Y-%m-%d").to_string();
            assert_eq!(
                iso_epoch_day(text.as_bytes()),
                Some(epoch_day(date)),
                "{text}"
            );
            date = date.succ_opt().unwrap();
        }
        assert_eq!(iso_epoch_day(b"1970-01-01"), Some(0));
        assert_eq!(iso_epoch_day(b"0000-03-01"), Some(-719_468));
    }

    #[test]
    fn iso_epoch_day_rejects_what_is_not_a_date() {
        for text in [
            "2023-02-29",
            "2100-02-29",
            "2024-04-31",
            "2024-13-01",
            "2024-00-10",
            "2024-01-00",
            "2024-1-01",
            "2024/01/01",
            "2024-01-0a",
            "",
            "20240101",
        ] {
            assert_eq!(iso_epoch_day(text.as_bytes()), None, "{text}");
        }
        assert!(iso_epoch_day(b"2000-02-29").is_some());
        assert!(iso_epoch_day(b"2024-02-29").is_some());
    }
}
