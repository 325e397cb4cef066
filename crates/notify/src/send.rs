//! Draining the outbox over SMTP (lettre, tokio).
//!
//! A pass claims due messages in batches and sends them with at most `concurrency` in flight
//! over a pooled connection. Per message: accepted → `sent`; a permanent SMTP reply (5xx, e.g.
//! 550 unknown recipient) or an unusable address → `dead`; anything else (server down, timeout,
//! 4xx) → queued again after `retry_base · 2^(attempt−1)` seconds, until `max_attempts`, then
//! `dead`.
//!
//! Duplicates: a message is marked sent right after the server accepts it. If the process dies
//! in between, the claim's lease runs out and the message is sent again, with the same
//! Message-ID (fixed when queued), so mail clients can fold the copy. That window, one database
//! update long, is the only one.

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta, Utc};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde::Serialize;
use tierwise_store::Database;
use tierwise_store::notify::{self as store, NewMessage, OutboxMessage};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::NotifyError;
use crate::settings::{SendingSettings, SmtpSecurity, SmtpSettings};

/// What one pass over the outbox did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SendReport {
    /// Accepted by the server.
    pub sent: usize,
    /// Failed transiently; queued for a later attempt.
    pub retried: usize,
    /// Given up on (permanent failure or too many attempts).
    pub dead: usize,
}

/// How one attempt ended.
#[derive(Debug)]
enum Attempt {
    Sent,
    Transient(String),
    Permanent(String),
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

fn transport(smtp: &SmtpSettings, sending: &SendingSettings) -> Result<Transport, NotifyError> {
    let host = smtp.host.trim();
    let builder = match smtp.security {
        SmtpSecurity::None => Transport::builder_dangerous(host),
        SmtpSecurity::Starttls => Transport::starttls_relay(host)
            .map_err(|e| NotifyError::Smtp(format!("starttls to {host}: {e}")))?,
        SmtpSecurity::Tls => {
            Transport::relay(host).map_err(|e| NotifyError::Smtp(format!("tls to {host}: {e}")))?
        }
    };
    let mut builder = builder
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(smtp.timeout_secs.max(1))))
        .pool_config(PoolConfig::new().max_size(sending.concurrency.max(1) as u32));
    if !smtp.username.is_empty() {
        builder = builder.credentials(Credentials::new(
            smtp.username.clone(),
            smtp.password.expose_secret().to_owned(),
        ));
    }
    Ok(builder.build())
}

/// The parts of an email, as the outbox holds them.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// `Name <address>` or `address`.
    pub recipient: &'a str,
    /// Subject line.
    pub subject: &'a str,
    /// Message-ID header.
    pub message_id: &'a str,
    /// Plain-text part.
    pub text: &'a str,
    /// HTML part.
    pub html: &'a str,
}

impl<'a> From<&'a OutboxMessage> for Parts<'a> {
    fn from(m: &'a OutboxMessage) -> Self {
        Self {
            recipient: &m.recipient,
            subject: &m.subject,
            message_id: &m.message_id,
            text: &m.body_text,
            html: &m.body_html,
        }
    }
}

impl<'a> From<&'a NewMessage> for Parts<'a> {
    fn from(m: &'a NewMessage) -> Self {
        Self {
            recipient: &m.recipient,
            subject: &m.subject,
            message_id: &m.message_id,
            text: &m.body_text,
            html: &m.body_html,
        }
    }
}

/// Builds the MIME message: multipart/alternative, text then HTML.
pub fn build_message(from: &Mailbox, parts: Parts<'_>) -> Result<Message, String> {
    let to: Mailbox = parts
        .recipient
        .parse()
        .map_err(|e| format!("recipient '{}': {e}", parts.recipient))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(parts.subject)
        .message_id(Some(parts.message_id.to_owned()))
        .date_now()
        .multipart(MultiPart::alternative_plain_html(
            parts.text.to_owned(),
            parts.html.to_owned(),
        ))
        .map_err(|e| format!("message: {e}"))
}

/// The message as it would be sent (RFC 5322 bytes), for previews: `from` is [smtp] from.
pub fn render_eml(from: &str, parts: Parts<'_>) -> Result<Vec<u8>, NotifyError> {
    let from: Mailbox = from
        .parse()
        .map_err(|e| NotifyError::Smtp(format!("from '{from}' is not an address: {e}")))?;
    build_message(&from, parts)
        .map(|m| m.formatted())
        .map_err(NotifyError::Smtp)
}

async fn attempt(transport: &Transport, from: &Mailbox, m: &OutboxMessage) -> Attempt {
    let message = match build_message(from, m.into()) {
        Ok(message) => message,
        Err(e) => return Attempt::Permanent(e),
    };
    match transport.send(message).await {
        Ok(_) => Attempt::Sent,
        Err(e) if e.is_permanent() => Attempt::Permanent(e.to_string()),
        Err(e) => Attempt::Transient(e.to_string()),
    }
}

/// Sends every message due now, then returns. Messages that fail transiently wait for a later
/// pass; run it on a schedule (`tierwise notify send`, or the scheduler's job).
pub async fn drain(
    db: &Database,
    smtp: &SmtpSettings,
    sending: &SendingSettings,
) -> Result<SendReport, NotifyError> {
    let transport = transport(smtp, sending)?;
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| NotifyError::Smtp(format!("from '{}' is not an address: {e}", smtp.from)))?;
    let concurrency = sending.concurrency.max(1);
    let lease = TimeDelta::seconds(i64::try_from(sending.lease_secs.max(1)).unwrap_or(i64::MAX));
    // Claim only what was due when the pass began, so retries scheduled during it wait.
    let cutoff = Utc::now().naive_utc();
    let mut report = SendReport::default();
    loop {
        let lease_until = Utc::now().naive_utc() + lease;
        let batch_size = (concurrency * 8) as i64;
        let batch = db
            .run(move |c| store::claim_due(c, cutoff, lease_until, batch_size))
            .await?;
        if batch.is_empty() {
            break;
        }
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut in_flight = JoinSet::new();
        for m in batch {
            let permits = Arc::clone(&permits);
            let transport = transport.clone();
            let from = from.clone();
            in_flight.spawn(async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = permits.acquire_owned().await.ok();
                let outcome = attempt(&transport, &from, &m).await;
                (m, outcome)
            });
        }
        while let Some(joined) = in_flight.join_next().await {
            let (m, outcome) =
                joined.map_err(|e| NotifyError::Smtp(format!("a send task failed: {e}")))?;
            record(db, sending, &m, outcome, &mut report).await?;
        }
    }
    Ok(report)
}

async fn record(
    db: &Database,
    sending: &SendingSettings,
    m: &OutboxMessage,
    outcome: Attempt,
    report: &mut SendReport,
) -> Result<(), NotifyError> {
    let id = m.id;
    let attempts = u32::try_from(m.attempts).unwrap_or(u32::MAX);
    let now = Utc::now().naive_utc();
    match outcome {
        Attempt::Sent => {
            db.run(move |c| store::mark_sent(c, id, now)).await?;
            report.sent += 1;
            tracing::info!(id, recipient = %m.recipient, kind = %m.kind, "sent");
        }
        Attempt::Permanent(error) => {
            tracing::warn!(id, recipient = %m.recipient, %error, "dead-lettered");
            db.run(move |c| store::dead_letter(c, id, &error)).await?;
            report.dead += 1;
        }
        Attempt::Transient(error) if attempts >= sending.max_attempts => {
            let error = format!("gave up after {attempts} attempts: {error}");
            tracing::warn!(id, recipient = %m.recipient, %error, "dead-lettered");
            db.run(move |c| store::dead_letter(c, id, &error)).await?;
            report.dead += 1;
        }
        Attempt::Transient(error) => {
            let delay = sending.backoff_secs(attempts).max(1);
            let next: NaiveDateTime =
                now + TimeDelta::seconds(i64::try_from(delay).unwrap_or(i64::MAX / 2));
            tracing::info!(id, recipient = %m.recipient, %error, retry_in_secs = delay, "will retry");
            db.run(move |c| store::schedule_retry(c, id, next, &error))
                .await?;
            report.retried += 1;
        }
    }
    Ok(())
}

/// [`drain`] on a runtime of its own, for synchronous callers.
pub fn drain_blocking(
    db: &Database,
    smtp: &SmtpSettings,
    sending: &SendingSettings,
) -> Result<SendReport, NotifyError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NotifyError::Smtp(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(drain(db, smtp, sending))
}
