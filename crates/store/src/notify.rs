//! Notification storage: what a digest or reminder reads (each owner's book of graded customers
//! with the grade before, last contacts), the events that owe notifications, and the outbox
//! every email goes through.
//!
//! Outbox life: `queued` → (claimed) `sending` → `sent`, or back to `queued` with a later
//! `next_attempt_at` after a transient failure, or `dead` after a permanent one or too many
//! attempts. A claim pushes `next_attempt_at` out by a lease, so a message whose sender died
//! mid-send is claimed again once the lease ends.

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};
use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use serde::Serialize;
use tierwise_domain::Period;

use crate::grading::published_run_id;
use crate::schema::{
    activities, customers, grades, grading_periods, notification_events, outbox, owners,
};
use crate::{DbConnection, StoreResult, with_backend};

/// Event kind: a period's grades were published.
pub const PERIOD_PUBLISHED: &str = "period_published";

diesel::alias!(grades as previous_grades: PreviousGrades);

/// Rows per page when reading a book from PostgreSQL.
const BOOK_PAGE: i64 = 50_000;

/// An account manager who can receive email.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct OwnerContact {
    /// Owner id.
    pub id: i64,
    /// Address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Locale tag (`zh-CN`, `en`).
    pub locale: String,
}

/// Every owner, by id.
pub fn owners(conn: &mut DbConnection) -> StoreResult<Vec<OwnerContact>> {
    Ok(with_backend!(conn, c => owners::table
        .select((owners::id, owners::email, owners::name, owners::locale))
        .order(owners::id)
        .load(c)?))
}

/// The grade columns a notification reads.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct BookGrade {
    /// Assigned tier.
    pub tier: Option<String>,
    /// computed | held | pinned | blocked | not_graded.
    pub tier_reason: String,
    /// Day the customer entered its tier.
    pub tier_since: Option<NaiveDate>,
    /// R score.
    pub r_score: Option<i32>,
    /// F score.
    pub f_score: Option<i32>,
    /// M score.
    pub m_score: Option<i32>,
    /// ABC class.
    pub abc_class: Option<String>,
    /// Credit grade.
    pub credit_grade: String,
    /// Lifecycle stage.
    pub lifecycle: String,
    /// Composite score.
    pub composite: Option<f64>,
    /// Window monetary.
    pub monetary: i64,
    /// P(alive) from the predictive model, when it ran.
    pub p_alive: Option<f64>,
}

/// One customer of an owner's book: its published grade of a period and, when asked for, the
/// published grade of the period before.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct BookRow {
    /// Customer id.
    pub customer_id: i64,
    /// Its account manager.
    pub owner_id: i64,
    /// Customer name.
    pub name: String,
    /// Its id in the source system.
    pub external_id: String,
    /// Grade of the period.
    pub now: BookGrade,
    /// Grade of the period before (none: not graded then, or not asked for).
    pub before: Option<BookGrade>,
}

/// Calls `each` for every customer with an owner in the published run of `period`, in customer
/// id order, with the previous period's grade when `with_previous`. Returns false when the period
/// has no published run.
pub fn for_each_book_row(
    conn: &mut DbConnection,
    period: Period,
    with_previous: bool,
    mut each: impl FnMut(BookRow) -> StoreResult<()>,
) -> StoreResult<bool> {
    let Some(run) = published_run_id(conn, period)? else {
        return Ok(false);
    };
    // A run id that matches nothing when there is no previous run or it was not asked for.
    let before_run = match with_previous {
        true => published_run_id(conn, period.prev())?.unwrap_or(-1),
        false => -1,
    };
    let prev = previous_grades;
    // One query shape for both backends; `after` pages through customer ids on PostgreSQL.
    let query = |after: i64| {
        grades::table
            .inner_join(customers::table)
            .left_join(
                prev.on(prev
                    .field(grades::run_id)
                    .eq(before_run)
                    .and(prev.field(grades::customer_id).eq(grades::customer_id))),
            )
            .filter(grades::run_id.eq(run))
            .filter(grades::customer_id.gt(after))
            // Said twice so that PostgreSQL starts the customers side of the join there too.
            .filter(customers::id.gt(after))
            .filter(customers::owner_id.is_not_null())
            .order(grades::customer_id)
            .select((
                grades::customer_id,
                customers::owner_id.assume_not_null(),
                customers::name,
                customers::external_id,
                (
                    grades::tier,
                    grades::tier_reason,
                    grades::tier_since,
                    grades::r_score,
                    grades::f_score,
                    grades::m_score,
                    grades::abc_class,
                    grades::credit_grade,
                    grades::lifecycle,
                    grades::composite,
                    grades::monetary,
                    grades::p_alive,
                ),
                (
                    prev.field(grades::tier),
                    prev.field(grades::tier_reason),
                    prev.field(grades::tier_since),
                    prev.field(grades::r_score),
                    prev.field(grades::f_score),
                    prev.field(grades::m_score),
                    prev.field(grades::abc_class),
                    prev.field(grades::credit_grade),
                    prev.field(grades::lifecycle),
                    prev.field(grades::composite),
                    prev.field(grades::monetary),
                    prev.field(grades::p_alive),
                )
                    .nullable(),
            ))
    };
    match conn {
        // SQLite streams from its B-tree cheaply.
        DbConnection::Sqlite(c) => {
            for row in query(i64::MIN).load_iter::<BookRow, DefaultLoadingMode>(c)? {
                each(row?)?;
            }
        }
        // libpq's row-by-row mode costs a result object per row (about twice the time of the
        // whole fold); pages of ids keep memory bounded at the speed of buffered results.
        DbConnection::Postgresql(c) => {
            let mut after = i64::MIN;
            loop {
                let page: Vec<BookRow> = query(after).limit(BOOK_PAGE).load(c)?;
                let Some(last) = page.last() else { break };
                after = last.customer_id;
                let full = page.len() as i64 == BOOK_PAGE;
                for row in page {
                    each(row)?;
                }
                if !full {
                    break;
                }
            }
        }
    }
    Ok(true)
}

/// The latest call and visit of a customer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastContacts {
    /// Latest call (UTC day).
    pub call: Option<NaiveDate>,
    /// Latest visit (UTC day).
    pub visit: Option<NaiveDate>,
}

/// The latest call and visit of every customer that had one, up to and including `until`.
pub fn last_contacts(
    conn: &mut DbConnection,
    until: NaiveDate,
) -> StoreResult<HashMap<i64, LastContacts>> {
    let end = until
        .succ_opt()
        .unwrap_or(NaiveDate::MAX)
        .and_hms_opt(0, 0, 0)
        .unwrap_or(NaiveDateTime::MAX);
    let rows: Vec<(i64, String, Option<NaiveDateTime>)> = with_backend!(conn, c => activities::table
        .filter(activities::kind.eq_any(["call", "visit"]))
        .filter(activities::occurred_at.lt(end))
        .filter(activities::deleted_at.is_null())
        .group_by((activities::customer_id, activities::kind))
        .select((
            activities::customer_id,
            activities::kind,
            diesel::dsl::max(activities::occurred_at),
        ))
        .load(c)?);
    let mut map: HashMap<i64, LastContacts> = HashMap::with_capacity(rows.len());
    for (customer, kind, at) in rows {
        let entry = map.entry(customer).or_default();
        let day = at.map(|t| t.date());
        match kind.as_str() {
            "call" => entry.call = day,
            _ => entry.visit = day,
        }
    }
    Ok(map)
}

/// The newest period with a published run.
pub fn latest_published_period(conn: &mut DbConnection) -> StoreResult<Option<Period>> {
    let key: Option<String> = with_backend!(conn, c => grading_periods::table
        .select(grading_periods::period)
        .order(grading_periods::period.desc())
        .first(c)
        .optional()?);
    Ok(key.and_then(|k| Period::parse(&k).ok()))
}

// ---------------------------------------------------------------------------------------------
// Events

/// An event that owes notifications.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct NotificationEvent {
    /// Event id.
    pub id: i64,
    /// Kind ([`PERIOD_PUBLISHED`]).
    pub kind: String,
    /// Period it concerns.
    pub period: String,
    /// Grading run it concerns.
    pub run_id: i64,
    /// When it happened.
    pub created_at: NaiveDateTime,
    /// When it was turned into messages.
    pub processed_at: Option<NaiveDateTime>,
    /// What processing did (queued counts or why it was skipped).
    pub outcome: Option<String>,
}

/// Events not processed yet, oldest first.
pub fn pending_events(conn: &mut DbConnection) -> StoreResult<Vec<NotificationEvent>> {
    Ok(with_backend!(conn, c => notification_events::table
        .filter(notification_events::processed_at.is_null())
        .order(notification_events::id)
        .load(c)?))
}

/// Marks an event processed with what came of it.
pub fn mark_event_processed(
    conn: &mut DbConnection,
    id: i64,
    at: NaiveDateTime,
    outcome: &str,
) -> StoreResult<()> {
    with_backend!(conn, c => diesel::update(notification_events::table.find(id))
        .set((
            notification_events::processed_at.eq(Some(at)),
            notification_events::outcome.eq(Some(outcome)),
        ))
        .execute(c)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Outbox

/// Where an outbox message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting for its next attempt.
    Queued,
    /// Claimed by a sender.
    Sending,
    /// Accepted by the SMTP server.
    Sent,
    /// Given up: rejected permanently, or too many attempts.
    Dead,
}

impl OutboxStatus {
    /// Every status.
    pub const ALL: [Self; 4] = [Self::Queued, Self::Sending, Self::Sent, Self::Dead];

    /// Its key.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Dead => "dead",
        }
    }

    /// Parses a key.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// A message to queue.
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = outbox)]
pub struct NewMessage {
    /// Unique per message that must go out once (kind, recipient, period or week).
    pub dedupe_key: String,
    /// digest | admin_digest | reminders | churn_alert.
    pub kind: String,
    /// Owner it is for (none: admins).
    pub owner_id: Option<i64>,
    /// Recipient address (`Name <addr>` or `addr`).
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text part.
    pub body_text: String,
    /// HTML part.
    pub body_html: String,
    /// Message-ID header, fixed when queued so that a resend after a crash carries the same id.
    pub message_id: String,
}

/// A queued, sent or dead message.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct OutboxMessage {
    /// Message id (row).
    pub id: i64,
    /// Dedupe key.
    pub dedupe_key: String,
    /// Kind.
    pub kind: String,
    /// Owner.
    pub owner_id: Option<i64>,
    /// Recipient.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Text part.
    pub body_text: String,
    /// HTML part.
    pub body_html: String,
    /// Message-ID header.
    pub message_id: String,
    /// queued | sending | sent | dead.
    pub status: String,
    /// Attempts so far (a claim counts as one).
    pub attempts: i32,
    /// Earliest next attempt (or end of a claim's lease).
    pub next_attempt_at: NaiveDateTime,
    /// Error of the latest failed attempt.
    pub last_error: Option<String>,
    /// Queued at.
    pub created_at: NaiveDateTime,
    /// Accepted by the server at.
    pub sent_at: Option<NaiveDateTime>,
}

/// Queues `messages`, skipping any whose dedupe key is already in the outbox. Returns how many
/// were queued. Run it inside the transaction that records what caused the messages.
pub fn enqueue(
    conn: &mut DbConnection,
    messages: &[NewMessage],
    now: NaiveDateTime,
) -> StoreResult<usize> {
    let mut queued = 0;
    for m in messages {
        let values = (
            m,
            outbox::status.eq(OutboxStatus::Queued.as_str()),
            outbox::attempts.eq(0),
            outbox::next_attempt_at.eq(now),
            outbox::created_at.eq(now),
        );
        queued += with_backend!(conn, c => diesel::insert_into(outbox::table)
            .values(values)
            .on_conflict(outbox::dedupe_key)
            .do_nothing()
            .execute(c)?);
    }
    Ok(queued)
}

/// Claims up to `limit` messages due at `now` (queued, or sending with an expired lease): marks
/// them sending, counts the attempt and sets the lease end. On PostgreSQL concurrent senders
/// skip each other's claimed rows.
pub fn claim_due(
    conn: &mut DbConnection,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
) -> StoreResult<Vec<OutboxMessage>> {
    let due = outbox::status
        .eq_any([
            OutboxStatus::Queued.as_str(),
            OutboxStatus::Sending.as_str(),
        ])
        .and(outbox::next_attempt_at.le(now));
    crate::transaction(conn, |conn| {
        let ids: Vec<i64> = match conn {
            DbConnection::Postgresql(c) => outbox::table
                .filter(due)
                .order((outbox::next_attempt_at, outbox::id))
                .limit(limit)
                .select(outbox::id)
                .for_update()
                .skip_locked()
                .load(c)?,
            DbConnection::Sqlite(c) => outbox::table
                .filter(due)
                .order((outbox::next_attempt_at, outbox::id))
                .limit(limit)
                .select(outbox::id)
                .load(c)?,
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let claimed: Vec<OutboxMessage> = with_backend!(conn, c => diesel::update(
            outbox::table.filter(outbox::id.eq_any(&ids)),
        )
        .set((
            outbox::status.eq(OutboxStatus::Sending.as_str()),
            outbox::attempts.eq(outbox::attempts + 1),
            outbox::next_attempt_at.eq(lease_until),
        ))
        .returning(outbox::all_columns)
        .get_results(c)?);
        Ok(claimed)
    })
}

/// Marks a claimed message sent. Returns false when it was not in `sending` (e.g. requeued).
pub fn mark_sent(conn: &mut DbConnection, id: i64, at: NaiveDateTime) -> StoreResult<bool> {
    let n = with_backend!(conn, c => diesel::update(
        outbox::table
            .find(id)
            .filter(outbox::status.eq(OutboxStatus::Sending.as_str())),
    )
    .set((
        outbox::status.eq(OutboxStatus::Sent.as_str()),
        outbox::sent_at.eq(Some(at)),
        outbox::last_error.eq(None::<String>),
    ))
    .execute(c)?);
    Ok(n == 1)
}

/// Returns a claimed message to the queue for another attempt at `next_attempt_at`.
pub fn schedule_retry(
    conn: &mut DbConnection,
    id: i64,
    next_attempt_at: NaiveDateTime,
    error: &str,
) -> StoreResult<()> {
    with_backend!(conn, c => diesel::update(outbox::table.find(id))
        .set((
            outbox::status.eq(OutboxStatus::Queued.as_str()),
            outbox::next_attempt_at.eq(next_attempt_at),
            outbox::last_error.eq(Some(error)),
        ))
        .execute(c)?);
    Ok(())
}

/// Gives up on a message: it stays in the outbox, visible, with the error.
pub fn dead_letter(conn: &mut DbConnection, id: i64, error: &str) -> StoreResult<()> {
    with_backend!(conn, c => diesel::update(outbox::table.find(id))
        .set((
            outbox::status.eq(OutboxStatus::Dead.as_str()),
            outbox::last_error.eq(Some(error)),
        ))
        .execute(c)?);
    Ok(())
}

/// Puts a dead message back in the queue with its attempts reset. Returns false when it is not
/// dead.
pub fn requeue(conn: &mut DbConnection, id: i64, now: NaiveDateTime) -> StoreResult<bool> {
    let n = with_backend!(conn, c => diesel::update(
        outbox::table
            .find(id)
            .filter(outbox::status.eq(OutboxStatus::Dead.as_str())),
    )
    .set((
        outbox::status.eq(OutboxStatus::Queued.as_str()),
        outbox::attempts.eq(0),
        outbox::next_attempt_at.eq(now),
    ))
    .execute(c)?);
    Ok(n == 1)
}

/// Messages, newest first, optionally of one status.
pub fn list_outbox(
    conn: &mut DbConnection,
    status: Option<OutboxStatus>,
    limit: i64,
) -> StoreResult<Vec<OutboxMessage>> {
    let statuses: Vec<&str> = match status {
        Some(s) => vec![s.as_str()],
        None => OutboxStatus::ALL.iter().map(|s| s.as_str()).collect(),
    };
    Ok(with_backend!(conn, c => outbox::table
        .filter(outbox::status.eq_any(statuses))
        .order(outbox::id.desc())
        .limit(limit)
        .load(c)?))
}

/// One message by id.
pub fn find_message(conn: &mut DbConnection, id: i64) -> StoreResult<Option<OutboxMessage>> {
    Ok(with_backend!(conn, c => outbox::table.find(id).first(c).optional()?))
}

/// Message counts by status.
pub fn outbox_counts(conn: &mut DbConnection) -> StoreResult<Vec<(String, i64)>> {
    Ok(with_backend!(conn, c => outbox::table
        .group_by(outbox::status)
        .select((outbox::status, diesel::dsl::count_star()))
        .order(outbox::status)
        .load(c)?))
}

/// Deletes messages sent before `cutoff`; returns how many. Their dedupe keys go with them, so
/// keep them longer than any period or week might be re-queued.
pub fn delete_sent_before(conn: &mut DbConnection, cutoff: NaiveDateTime) -> StoreResult<usize> {
    Ok(with_backend!(conn, c => diesel::delete(
        outbox::table
            .filter(outbox::status.eq(OutboxStatus::Sent.as_str()))
            .filter(outbox::sent_at.lt(cutoff)),
    )
    .execute(c)?))
}
