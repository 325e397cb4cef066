//! What the dashboard reads: pages of graded customers with filters (keyset by customer id, so a
//! page costs the same at the millionth customer), a customer's grade history, and the run
//! summaries of recent periods.

use diesel::prelude::*;
use serde::Serialize;
use tierwise_domain::Period;

use crate::grading::published_run_id;
use crate::schema::{customers, grades, grading_periods, grading_runs, overrides, owners};
use crate::{DbConnection, StoreResult, with_backend};

diesel::alias!(grades as previous_grades: PreviousGrades);

/// Filters of the customer list; None = any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerFilter {
    /// Assigned tier name (`none` = no tier).
    pub tier: Option<String>,
    /// Segment key.
    pub segment: Option<String>,
    /// ABC class.
    pub abc: Option<String>,
    /// Lifecycle stage.
    pub lifecycle: Option<String>,
    /// Owner id.
    pub owner_id: Option<i64>,
    /// Part of the name, or the exact external id.
    pub search: Option<String>,
    /// Only customers with (true) or without (false) an override.
    pub overridden: Option<bool>,
    /// Assigned tier in the period before (`none` = no tier then): one cell of the migration
    /// matrix together with `tier`.
    pub from_tier: Option<String>,
}

/// One row of the customer list.
#[derive(Debug, Clone, PartialEq, Queryable, Serialize)]
pub struct CustomerRow {
    /// Customer id.
    pub customer_id: i64,
    /// Id in the source system.
    pub external_id: String,
    /// Name.
    pub name: String,
    /// Contact person.
    pub contact_name: Option<String>,
    /// Contact email.
    pub contact_email: Option<String>,
    /// Owner's email.
    pub owner_email: Option<String>,
    /// Assigned tier.
    pub tier: Option<String>,
    /// Segment.
    pub segment: Option<String>,
    /// ABC class.
    pub abc_class: Option<String>,
    /// Lifecycle stage.
    pub lifecycle: String,
    /// Composite score.
    pub composite: Option<f64>,
    /// Window orders.
    pub frequency: i32,
    /// Window monetary (minor units).
    pub monetary: i64,
    /// Simple CLV (minor units).
    pub clv: Option<i64>,
}

/// Up to `limit` customers of `period`'s published grades matching `filter`, with ids after
/// `after`, in id order. None when the period has no published run.
pub fn customer_page(
    conn: &mut DbConnection,
    period: Period,
    filter: &CustomerFilter,
    after: Option<i64>,
    limit: i64,
) -> StoreResult<Option<Vec<CustomerRow>>> {
    let Some(run) = published_run_id(conn, period)? else {
        return Ok(None);
    };
    // The run before matters only to a migration-cell filter; -1 matches nothing.
    let before = match filter.from_tier {
        Some(_) => published_run_id(conn, period.prev())?.unwrap_or(-1),
        None => -1,
    };
    let rows = with_backend!(conn, c => {
        let mut q = grades::table
            .inner_join(customers::table)
            .left_join(owners::table.on(customers::owner_id.eq(owners::id.nullable())))
            .filter(grades::run_id.eq(run))
            .filter(grades::customer_id.gt(after.unwrap_or(i64::MIN)))
            // Said twice so that PostgreSQL starts the customers side of the join there too
            // (else a page deep in the list scans every customer before it).
            .filter(customers::id.gt(after.unwrap_or(i64::MIN)))
            .order(grades::customer_id)
            .limit(limit)
            .select((
                grades::customer_id,
                customers::external_id,
                customers::name,
                customers::contact_name,
                customers::contact_email,
                owners::email.nullable(),
                grades::tier,
                grades::segment,
                grades::abc_class,
                grades::lifecycle,
                grades::composite,
                grades::frequency,
                grades::monetary,
                grades::clv,
            ))
            .into_boxed();
        match filter.tier.as_deref() {
            Some("none") => q = q.filter(grades::tier.is_null()),
            Some(t) => q = q.filter(grades::tier.eq(t.to_owned())),
            None => {}
        }
        if let Some(s) = &filter.segment {
            q = q.filter(grades::segment.eq(s.clone()));
        }
        if let Some(a) = &filter.abc {
            q = q.filter(grades::abc_class.eq(a.clone()));
        }
        if let Some(l) = &filter.lifecycle {
            q = q.filter(grades::lifecycle.eq(l.clone()));
        }
        if let Some(o) = filter.owner_id {
            q = q.filter(customers::owner_id.eq(o));
        }
        if let Some(text) = filter.search.as_deref().filter(|t| !t.trim().is_empty()) {
            let text = text.trim();
            let pattern = format!(
                "%{}%",
                text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
            );
            q = q.filter(
                customers::name
                    .like(pattern)
                    .escape('\\')
                    .or(customers::external_id.eq(text.to_owned())),
            );
        }
        let tiered_before = previous_grades
            .filter(previous_grades.field(grades::run_id).eq(before))
            .select(previous_grades.field(grades::customer_id));
        match filter.from_tier.as_deref() {
            Some("none") => {
                q = q.filter(diesel::dsl::not(grades::customer_id.eq_any(
                    tiered_before.filter(previous_grades.field(grades::tier).is_not_null()),
                )))
            }
            Some(t) => {
                q = q.filter(grades::customer_id.eq_any(
                    tiered_before.filter(previous_grades.field(grades::tier).eq(t.to_owned())),
                ))
            }
            None => {}
        }
        match filter.overridden {
            Some(true) => {
                q = q.filter(customers::id.eq_any(overrides::table.select(overrides::customer_id)))
            }
            Some(false) => {
                q = q.filter(diesel::dsl::not(
                    customers::id.eq_any(overrides::table.select(overrides::customer_id)),
                ))
            }
            None => {}
        }
        q.load::<CustomerRow>(c)?
    });
    Ok(Some(rows))
}

/// One period of a customer's history.
#[derive(Debug, Clone, PartialEq, Queryable, Serialize)]
pub struct GradeHistoryRow {
    /// Period (`2026-10`).
    pub period: String,
    /// Assigned tier.
    pub tier: Option<String>,
    /// computed | held | pinned | blocked | not_graded.
    pub tier_reason: String,
    /// Composite score.
    pub composite: Option<f64>,
    /// R, F, M scores.
    pub r_score: Option<i32>,
    /// F score.
    pub f_score: Option<i32>,
    /// M score.
    pub m_score: Option<i32>,
    /// Segment.
    pub segment: Option<String>,
    /// Lifecycle stage.
    pub lifecycle: String,
}

/// A customer's published grades, newest period first.
pub fn grade_history(
    conn: &mut DbConnection,
    customer_id: i64,
    limit: i64,
) -> StoreResult<Vec<GradeHistoryRow>> {
    Ok(with_backend!(conn, c => grading_periods::table
        .inner_join(grades::table.on(grades::run_id.eq(grading_periods::run_id)))
        .filter(grades::customer_id.eq(customer_id))
        .order(grading_periods::period.desc())
        .limit(limit)
        .select((
            grading_periods::period,
            grades::tier,
            grades::tier_reason,
            grades::composite,
            grades::r_score,
            grades::f_score,
            grades::m_score,
            grades::segment,
            grades::lifecycle,
        ))
        .load(c)?))
}

/// The run summaries (JSON) of the newest `limit` published periods, newest first.
pub fn recent_summaries(
    conn: &mut DbConnection,
    limit: i64,
) -> StoreResult<Vec<(String, Option<String>)>> {
    Ok(with_backend!(conn, c => grading_periods::table
        .inner_join(grading_runs::table)
        .order(grading_periods::period.desc())
        .limit(limit)
        .select((grading_periods::period, grading_runs::summary))
        .load(c)?))
}

/// The customer's owner id, if any (for authorisation).
pub fn customer_owner(
    conn: &mut DbConnection,
    customer_id: i64,
) -> StoreResult<Option<Option<i64>>> {
    Ok(with_backend!(conn, c => customers::table
        .find(customer_id)
        .select(customers::owner_id)
        .first(c)
        .optional()?))
}
