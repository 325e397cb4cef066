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
    let composed = tierwise_store::read_transaction(conn, |conn| {
        compose::compose_period(conn, composer, period, Owners::All)
    })?;
    let Some(messages) = composed else {
        return Ok(None);
    };
    let queued = enqueue(conn, &messages)?;
    Ok(Some(QueueReport {
        period: Some(period.to_string()),
        composed: messages.len(),
        queued,
    }))
}

/// Queues composed messages in one short transaction. Composing reads a whole book of grades
/// and takes seconds with a million customers: it runs in a read transaction before this, so
/// SQLite's write lock (which [`tierwise_store::transaction`] takes at once) is held only while
/// the messages are inserted, not while every other writer waits on the composition.
fn enqueue(conn: &mut DbConnection, messages: &[store::NewMessage]) -> Result<usize, NotifyError> {
    Ok(tierwise_store::transaction(conn, |conn| {
        store::enqueue(conn, messages, Utc::now().naive_utc())
    })?)
}

/// Composes this week's follow-up reminders and queues them in one transaction (one per owner
/// and ISO week). None when nothing has been graded.
pub fn queue_reminders(
    conn: &mut DbConnection,
    composer: &Composer<'_>,
) -> Result<Option<QueueReport>, NotifyError> {
    let composed = tierwise_store::read_transaction(conn, |conn| {
        let Some(messages) = compose::compose_reminders(conn, composer, Owners::All)? else {
            return Ok::<_, NotifyError>(None);
        };
        let period = store::latest_published_period(conn)?.map(|p| p.to_string());
        Ok(Some((messages, period)))
    })?;
    let Some((messages, period)) = composed else {
        return Ok(None);
    };
    let queued = enqueue(conn, &messages)?;
    Ok(Some(QueueReport {
        period,
        composed: messages.len(),
        queued,
    }))
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
/// 13-month backfill sends one digest per owner, not thirteen. Each event's messages are
/// composed in a read transaction (see [`enqueue`] for why), then queued with its processed mark
/// in one short transaction, which first checks that the decision still holds: an event whose
/// period was published anew meanwhile stays pending for the next pass.
pub fn process_events(
    conn: &mut DbConnection,
    composer: &Composer<'_>,
) -> Result<Vec<EventOutcome>, NotifyError> {
    let mut outcomes = Vec::new();
    for event in store::pending_events(conn)? {
        let period = Period::parse(&event.period).ok();
        let (skip, messages) = tierwise_store::read_transaction(conn, |conn| {
            let skip = skip_reason(conn, &event, period)?;
            let messages = match (&skip, period) {
                (None, Some(p)) => {
                    compose::compose_period(conn, composer, p, Owners::All)?.unwrap_or_default()
                }
                _ => Vec::new(),
            };
            Ok::<_, NotifyError>((skip, messages))
        })?;
        let outcome = tierwise_store::transaction(conn, |conn| {
            if skip_reason(conn, &event, period)? != skip {
                return Ok(None);
            }
            let now = Utc::now().naive_utc();
            let queued = match skip {
                None => Some(store::enqueue(conn, &messages, now)?),
                Some(_) => None,
            };
            let note = match (&skip, queued) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, n) => format!("queued {}", n.unwrap_or(0)),
            };
            store::mark_event_processed(conn, event.id, now, &note)?;
            Ok::<_, NotifyError>(Some(EventOutcome {
                event: event.id,
                period: event.period.clone(),
                queued,
                skipped: skip.clone(),
            }))
        })?;
        outcomes.extend(outcome);
    }
    Ok(outcomes)
}

/// Why a publication event notifies nobody (None: it notifies): its period is not the newest
/// graded one, or its run is no longer the period's published run.
fn skip_reason(
    conn: &mut DbConnection,
    event: &store::NotificationEvent,
    period: Option<Period>,
) -> Result<Option<String>, NotifyError> {
    let Some(period) = period else {
        return Ok(Some(format!("'{}' is not a period", event.period)));
    };
    if let Some(latest) = store::latest_published_period(conn)?
        && period < latest
    {
        return Ok(Some(format!("not the newest period ({latest})")));
    }
    let current_run = tierwise_store::grading::published_run(conn, period)?.map(|r| r.id.0);
    Ok((current_run != Some(event.run_id)).then(|| "its run was superseded".to_owned()))
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
