//! Import runs and the records they rejected.

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use tierwise_domain::SourceName;

use crate::schema::{import_rejects, import_runs};
use crate::{DbConnection, StoreError, StoreResult, with_backend};

/// Id of an import run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ImportRunId(pub i64);

/// Where an import run ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Still going (or its process died; see the docs on interrupted runs).
    Running,
    /// Everything loaded.
    Succeeded,
    /// Good rows loaded; some rows rejected (see import_rejects).
    CompletedWithRejects,
    /// Nothing was loaded: the run failed and its transaction rolled back.
    Failed,
}

impl RunStatus {
    /// Stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::CompletedWithRejects => "completed_with_rejects",
            Self::Failed => "failed",
        }
    }

    fn parse(raw: &str) -> StoreResult<Self> {
        Ok(match raw {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "completed_with_rejects" => Self::CompletedWithRejects,
            "failed" => Self::Failed,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown import run status '{other}'"
                )));
            }
        })
    }
}

/// Counts of a finished run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunTotals {
    /// Data rows read from the input (header excluded).
    pub rows_read: u64,
    /// Rows inserted or changed.
    pub rows_written: u64,
    /// Valid rows identical to what was stored (or superseded by a later row with the same id).
    pub rows_unchanged: u64,
    /// Rows rejected (kept in import_rejects).
    pub rows_rejected: u64,
    /// Customers created from order or invoice rows.
    pub customers_created: u64,
    /// Input columns no mapping used.
    pub unused_columns: Vec<String>,
}

/// An import run as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportRun {
    /// Run id.
    pub id: ImportRunId,
    /// Source name.
    pub source: String,
    /// Record kind (`orders`, `customers`, ...).
    pub kind: String,
    /// File path or connector name.
    pub origin: String,
    /// Outcome.
    pub status: RunStatus,
    /// Start (UTC).
    pub started_at: NaiveDateTime,
    /// End (UTC), when finished.
    pub finished_at: Option<NaiveDateTime>,
    /// Counts.
    pub totals: RunTotals,
    /// Why it failed.
    pub error: Option<String>,
}

#[derive(Queryable)]
struct ImportRunRow {
    id: i64,
    source: String,
    kind: String,
    origin: String,
    status: String,
    started_at: NaiveDateTime,
    finished_at: Option<NaiveDateTime>,
    rows_read: i64,
    rows_written: i64,
    rows_unchanged: i64,
    rows_rejected: i64,
    customers_created: i64,
    unused_columns: String,
    error: Option<String>,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
fn stored(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl TryFrom<ImportRunRow> for ImportRun {
    type Error = StoreError;
    fn try_from(row: ImportRunRow) -> StoreResult<Self> {
        Ok(Self {
            id: ImportRunId(row.id),
            source: row.source,
            kind: row.kind,
            origin: row.origin,
            status: RunStatus::parse(&row.status)?,
            started_at: row.started_at,
            finished_at: row.finished_at,
            totals: RunTotals {
                rows_read: count(row.rows_read),
                rows_written: count(row.rows_written),
                rows_unchanged: count(row.rows_unchanged),
                rows_rejected: count(row.rows_rejected),
                customers_created: count(row.customers_created),
                unused_columns: serde_json::from_str(&row.unused_columns)
                    .map_err(|e| StoreError::Corrupt(format!("import_runs.unused_columns: {e}")))?,
            },
            error: row.error,
        })
    }
}

/// Records the start of an import run (committed on its own, so a failed run stays visible).
#[tracing::instrument(skip_all, fields(source = %source, kind, origin))]
pub fn start_import_run(
    conn: &mut DbConnection,
    source: &SourceName,
    kind: &str,
    origin: &str,
) -> StoreResult<ImportRunId> {
    let values = (
        import_runs::source.eq(source.as_str()),
        import_runs::kind.eq(kind),
        import_runs::origin.eq(origin),
        import_runs::status.eq(RunStatus::Running.as_str()),
        import_runs::started_at.eq(Utc::now().naive_utc()),
    );
    let id: i64 = with_backend!(conn, c => diesel::insert_into(import_runs::table)
        .values(values)
        .returning(import_runs::id)
        .get_result(c)?);
    Ok(ImportRunId(id))
}

/// Records how a run ended.
pub fn finish_import_run(
    conn: &mut DbConnection,
    run: ImportRunId,
    status: RunStatus,
    totals: &RunTotals,
    error: Option<&str>,
) -> StoreResult<()> {
    let unused = serde_json::to_string(&totals.unused_columns)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let changes = (
        import_runs::status.eq(status.as_str()),
        import_runs::finished_at.eq(Some(Utc::now().naive_utc())),
        import_runs::rows_read.eq(stored(totals.rows_read)),
        import_runs::rows_written.eq(stored(totals.rows_written)),
        import_runs::rows_unchanged.eq(stored(totals.rows_unchanged)),
        import_runs::rows_rejected.eq(stored(totals.rows_rejected)),
        import_runs::customers_created.eq(stored(totals.customers_created)),
        import_runs::unused_columns.eq(unused),
        import_runs::error.eq(error),
    );
    with_backend!(conn, c => diesel::update(import_runs::table.find(run.0)).set(changes).execute(c)?);
    Ok(())
}

/// The most recent runs, newest first.
pub fn recent_import_runs(conn: &mut DbConnection, limit: i64) -> StoreResult<Vec<ImportRun>> {
    let rows: Vec<ImportRunRow> = with_backend!(conn, c => import_runs::table
        .order(import_runs::id.desc())
        .limit(limit)
        .load(c)?);
    rows.into_iter().map(ImportRun::try_from).collect()
}

/// One run by id.
pub fn find_import_run(
    conn: &mut DbConnection,
    run: ImportRunId,
) -> StoreResult<Option<ImportRun>> {
    let row: Option<ImportRunRow> = with_backend!(conn, c => import_runs::table
        .find(run.0)
        .first(c)
        .optional()?);
    row.map(ImportRun::try_from).transpose()
}

/// A rejected input record, kept verbatim with where and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reject {
    /// 1-based line (CSV) or row (XLSX) number.
    pub line: u64,
    /// The column at fault, when one is.
    pub field: Option<String>,
    /// Why the record was refused, in words a person can act on.
    pub reason: String,
    /// The record as read (re-joined as one CSV line).
    pub raw_record: String,
}

#[derive(Insertable)]
#[diesel(table_name = import_rejects)]
struct NewRejectRow<'a> {
    import_run_id: i64,
    origin: &'a str,
    line: i64,
    field: Option<&'a str>,
    reason: &'a str,
    raw_record: &'a str,
}

/// Stores rejected records of a run.
pub fn insert_rejects(
    conn: &mut DbConnection,
    run: ImportRunId,
    origin: &str,
    rejects: &[Reject],
) -> StoreResult<()> {
    let rows: Vec<NewRejectRow<'_>> = rejects
        .iter()
        .map(|r| NewRejectRow {
            import_run_id: run.0,
            origin,
            line: stored(r.line),
            field: r.field.as_deref(),
            reason: &r.reason,
            raw_record: &r.raw_record,
        })
        .collect();
    for chunk in rows.chunks(4_000) {
        with_backend!(conn, c => diesel::insert_into(import_rejects::table).values(chunk).execute(c)?);
    }
    Ok(())
}

/// Rejects of a run in line order.
pub fn rejects_of_run(
    conn: &mut DbConnection,
    run: ImportRunId,
    limit: i64,
) -> StoreResult<Vec<Reject>> {
    let rows: Vec<(i64, Option<String>, String, String)> = with_backend!(conn, c => import_rejects::table
        .filter(import_rejects::import_run_id.eq(run.0))
        .order((import_rejects::line, import_rejects::id))
        .select((import_rejects::line, import_rejects::field, import_rejects::reason, import_rejects::raw_record))
        .limit(limit)
        .load(c)?);
    Ok(rows
        .into_iter()
        .map(|(line, field, reason, raw_record)| Reject {
            line: count(line),
            field,
            reason,
            raw_record,
        })
        .collect())
}
