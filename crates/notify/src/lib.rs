//! Notifications of tierwise: per-owner digests and churn alerts after a grading run, the admins'
//! digest, and weekly follow-up reminders by each tier's contact cadence.
//!
//! Every message goes through the outbox (`tierwise_store::notify`): composing writes rendered
//! messages with a dedupe key in one transaction, so re-running queues nothing twice; the
//! [`send`] module drains the outbox over SMTP with lettre, retrying transient failures with
//! exponential back-off and dead-lettering permanent ones.
//!
//! A publication of grades records an event in the same transaction as the publication;
//! [`process_events`] turns pending events into messages and marks them processed in one
//! transaction, so a crash between grading and notifying loses nothing.

pub mod compose;
pub mod locale;
pub mod send;
pub mod settings;
pub mod templates;

use chrono::{NaiveDate, Utc};
use serde::Serialize;
use tierwise_domain::Period;
use tierwise_store::notify as store;
use tierwise_store::{DbConnection, StoreError};

pub use compose::{Composer, Owners, iso_week};
pub use settings::{LocalText, NotifySettings, SendingSettings, SmtpSecurity, SmtpSettings};
pub use templates::{Rendered, Templates};

/// What can go wrong while composing or sending.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A template failed to load or render.
    #[error("template {template}: {reason}")]
    Template {
        /// Template path.
        template: String,
        /// What went wrong.
        reason: String,
    },
    /// A message catalog is malformed.
    #[error("message catalog {locale}: {reason}")]
    Catalog {
        /// Locale.
        locale: String,
        /// What went wrong.
        reason: String,
    },
    /// An address cannot be used.
    #[error("address '{recipient}': {reason}")]
    Recipient {
        /// The address as configured or imported.
        recipient: String,
        /// Why.
        reason: String,
    },
    /// The SMTP settings cannot be used.
    #[error("smtp: {0}")]
    Smtp(String),
}

/// What a queueing step did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueReport {
    /// Period the messages are about (digests: the graded period; reminders: the newest one).
    pub period: Option<String>,
    /// Messages composed.
    pub composed: usize,
    /// Messages newly queued (the rest were queued before).
    pub queued: usize,
}

/// Composes `period`'s digests, churn alerts and admin digests and queues them in one
/// transaction. Messages queued before (same dedupe key) are left alone. None when the period
/// has no published grades.
pub fn queue_period(
    conn: &mut DbConnection,
    composer: &Composer<'_>,
    period: Period,
) -> Result<Option<QueueReport>, NotifyError> {
    tierwise_store::transaction(conn, |conn| {
        let Some(messages) = compose::compose_period(conn, composer, period, Owners::All)? else {
            return Ok(None);
        };
        let queued = store::enqueue(conn, &messages, Utc::now().naive_utc())?;
        Ok(Some(QueueReport {
            period: Some(period.to_string()),
            composed: messages.len(),
            queued,
        }))
    })
}

/// Composes this week's follow-up reminders and queues them in one transaction (one per owner
/// and ISO week). None when nothing has been graded.
pub fn queue_reminders(
    conn: &mut DbConnection,
    composer: &Composer<'_>,
) -> Result<Option<QueueReport>, NotifyError> {
    tierwise_store::transaction(conn, |conn| {
        let Some(messages) = compose::compose_reminders(conn, composer, Owners::All)? else {
            return Ok(None);
        };
        let queued = store::enqueue(conn, &messages, Utc::now().naive_utc())?;
        Ok(Some(QueueReport {
            period: store::latest_published_period(conn)?.map(|p| p.to_string()),
            composed: messages.len(),
            queued,
        }))
    })
}

/// What became of one pending event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventOutcome {
    /// Event id.
    pub event: i64,
    /// Its period.
    pub period: String,
    /// Messages queued, or none when skipped.
    pub queued: Option<usize>,
    /// Why it was skipped.
    pub skipped: Option<String>,
}

/// Turns pending publication events into messages. Only the publication of the newest graded
/// period notifies: a backfilled older period or a run superseded since is marked skipped, so a
/// 13-month backfill sends one digest per owner, not thirteen. Each event's messages and its
/// processed mark share one transaction.
pub fn process_events(
    conn: &mut DbConnection,
    composer: &Composer<'_>,
) -> Result<Vec<EventOutcome>, NotifyError> {
    let mut outcomes = Vec::new();
    for event in store::pending_events(conn)? {
        let outcome = tierwise_store::transaction(conn, |conn| {
            let latest = store::latest_published_period(conn)?;
            let period = Period::parse(&event.period).ok();
            let current_run = match period {
                Some(p) => tierwise_store::grading::published_run(conn, p)?.map(|r| r.id.0),
                None => None,
            };
            let skip = match (period, latest) {
                (None, _) => Some(format!("'{}' is not a period", event.period)),
                (Some(p), Some(l)) if p < l => Some(format!("not the newest period ({l})")),
                _ if current_run != Some(event.run_id) => Some("its run was superseded".to_owned()),
                _ => None,
            };
            let now = Utc::now().naive_utc();
            let queued = match (&skip, period) {
                (None, Some(p)) => {
                    let messages = compose::compose_period(conn, composer, p, Owners::All)?
                        .unwrap_or_default();
                    Some(store::enqueue(conn, &messages, now)?)
                }
                _ => None,
            };
            let note = match (&skip, queued) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, n) => format!("queued {}", n.unwrap_or(0)),
            };
            store::mark_event_processed(conn, event.id, now, &note)?;
            Ok::<_, NotifyError>(EventOutcome {
                event: event.id,
                period: event.period.clone(),
                queued,
                skipped: skip,
            })
        })?;
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// The domain part of a sender address (`noreply@example.com` or `Name <noreply@example.com>`),
/// for Message-IDs.
pub fn mail_domain(from: &str) -> Result<String, NotifyError> {
    let mailbox: lettre::message::Mailbox =
        from.parse()
            .map_err(|e: lettre::address::AddressError| NotifyError::Recipient {
                recipient: from.to_owned(),
                reason: e.to_string(),
            })?;
    Ok(mailbox.email.domain().to_owned())
}

/// Today in UTC, the day follow-ups are judged on by default.
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}
