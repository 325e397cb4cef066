//! `tierwise notify`: queue digests and reminders, send the outbox, inspect it, preview emails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use tierwise_domain::Period;
use tierwise_notify::compose::{self, Owners};
use tierwise_notify::send;
use tierwise_notify::{Composer, Templates};
use tierwise_store::notify::{self as outbox, NewMessage, OutboxStatus};
use tierwise_store::{Database, DbConnection};

use super::{open_database, print_table};
use crate::cli::NotifyCommand;
use crate::settings::Settings;

pub fn run(settings: &Settings, command: NotifyCommand) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    match command {
        NotifyCommand::Digest { period, today } => {
            let today = day(today.as_deref())?;
            let templates = templates(settings)?;
            let domain = mail_domain(settings)?;
            let composer = composer(settings, &templates, &domain, today);
            let mut conn = db.conn()?;
            match period {
                Some(p) => {
                    let period = Period::parse(&p).map_err(|e| anyhow::anyhow!("--period: {e}"))?;
                    let report = tierwise_notify::queue_period(&mut conn, &composer, period)
                        .with_context(|| format!("queueing the digests of {period}"))?;
                    let Some(report) = report else {
                        bail!(
                            "{period} has no published grades; run `tierwise grade --period {period}` first"
                        );
                    };
                    println!(
                        "{period}: composed {} messages, queued {} new ({} were queued before).",
                        report.composed,
                        report.queued,
                        report.composed - report.queued
                    );
                }
                None => {
                    let queued = queue_pending(&mut conn, &composer)?;
                    if queued.is_none() {
                        println!("No publication is waiting for notifications.");
                    }
                }
            }
            print_next_step();
        }
        NotifyCommand::Reminders { today } => {
            let today = day(today.as_deref())?;
            let templates = templates(settings)?;
            let domain = mail_domain(settings)?;
            let composer = composer(settings, &templates, &domain, today);
            let report = tierwise_notify::queue_reminders(&mut *db.conn()?, &composer)
                .context("queueing reminders")?;
            let Some(report) = report else {
                bail!("nothing has been graded yet; run `tierwise grade --period YYYY-MM` first");
            };
            println!(
                "Week {}: composed {} reminders from the grades of {}, queued {} new.",
                compose::iso_week(today),
                report.composed,
                report.period.as_deref().unwrap_or("-"),
                report.queued
            );
            print_next_step();
        }
        NotifyCommand::Send => {
            let report = send::drain_blocking(&db, &settings.smtp, &settings.notify.sending)
                .with_context(|| {
                    format!(
                        "sending through {}:{} (smtp.host, smtp.port)",
                        settings.smtp.host, settings.smtp.port
                    )
                })?;
            println!(
                "Sent {}, will retry {}, dead-lettered {}.",
                report.sent, report.retried, report.dead
            );
            if report.retried > 0 {
                println!(
                    "Retries wait {}s and longer; run `tierwise notify send` again later (the scheduler does).",
                    settings.notify.sending.retry_base_secs
                );
            }
            if report.dead > 0 {
                println!("See why: tierwise notify outbox --status dead");
            }
        }
        NotifyCommand::Outbox {
            status,
            limit,
            show,
            retry,
        } => return outbox_command(&db, status, limit, show, retry),
        NotifyCommand::Preview {
            owner,
            out,
            period,
            today,
        } => {
            let today = day(today.as_deref())?;
            preview(settings, &db, &owner, &out, period.as_deref(), today)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Handles pending publications; prints what each did. None when there were none.
pub fn queue_pending(
    conn: &mut DbConnection,
    composer: &Composer<'_>,
) -> anyhow::Result<Option<usize>> {
    let outcomes =
        tierwise_notify::process_events(conn, composer).context("queueing notifications")?;
    if outcomes.is_empty() {
        return Ok(None);
    }
    let mut total = 0;
    for o in &outcomes {
        match (&o.skipped, o.queued) {
            (Some(why), _) => tracing::info!(period = %o.period, "no digests: {why}"),
            (None, n) => {
                let n = n.unwrap_or(0);
                total += n;
                println!("{}: queued {n} messages (digests, churn alerts).", o.period);
            }
        }
    }
    Ok(Some(total))
}

fn print_next_step() {
    println!("Send them with `tierwise notify send`; see them with `tierwise notify outbox`.");
}

fn day(raw: Option<&str>) -> anyhow::Result<NaiveDate> {
    match raw {
        None => Ok(tierwise_notify::today()),
        Some(raw) => NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .with_context(|| format!("--today '{raw}' is not a date like 2026-11-30")),
    }
}

/// The templates: built in, or from [notify] templates_dir.
pub fn templates(settings: &Settings) -> anyhow::Result<Templates> {
    let dir = &settings.notify.templates_dir;
    Templates::load((!dir.is_empty()).then(|| Path::new(dir)))
        .context("loading the email templates (notify.templates_dir)")
}

/// The domain of [smtp] from, for Message-IDs.
pub fn mail_domain(settings: &Settings) -> anyhow::Result<String> {
    tierwise_notify::mail_domain(&settings.smtp.from).context("smtp.from")
}

pub fn composer<'a>(
    settings: &'a Settings,
    templates: &'a Templates,
    domain: &'a str,
    today: NaiveDate,
) -> Composer<'a> {
    Composer {
        policy: &settings.grading,
        settings: &settings.notify,
        templates,
        mail_domain: domain,
        today,
    }
}

fn outbox_command(
    db: &Database,
    status: Option<String>,
    limit: i64,
    show: Option<i64>,
    retry: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let mut conn = db.conn()?;
    if let Some(id) = retry {
        if outbox::requeue(&mut conn, id, chrono::Utc::now().naive_utc())? {
            println!("Message {id} is queued again; `tierwise notify send` will try it.");
            return Ok(ExitCode::SUCCESS);
        }
        bail!("message {id} is not dead-lettered (see `tierwise notify outbox --show {id}`)");
    }
    if let Some(id) = show {
        let Some(m) = outbox::find_message(&mut conn, id)? else {
            bail!("no message {id} in the outbox");
        };
        println!("Id:          {}", m.id);
        println!("Kind:        {}", m.kind);
        println!("Status:      {} after {} attempts", m.status, m.attempts);
        println!("To:          {}", m.recipient);
        println!("Subject:     {}", m.subject);
        println!("Message-ID:  {}", m.message_id);
        println!(
            "Queued:      {} UTC",
            m.created_at.format("%Y-%m-%d %H:%M:%S")
        );
        if let Some(at) = m.sent_at {
            println!("Sent:        {} UTC", at.format("%Y-%m-%d %H:%M:%S"));
        }
        if let Some(e) = &m.last_error {
            println!("Last error:  {e}");
        }
        println!();
        println!("{}", m.body_text);
        return Ok(ExitCode::SUCCESS);
    }
    let status = match status.as_deref() {
        None => None,
        Some(raw) => Some(OutboxStatus::parse(raw).with_context(|| {
            format!("--status '{raw}' is not one of queued, sending, sent, dead")
        })?),
    };
    let counts = outbox::outbox_counts(&mut conn)?;
    let messages = outbox::list_outbox(&mut conn, status, limit)?;
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.kind.clone(),
                m.status.clone(),
                m.attempts.to_string(),
                m.recipient.clone(),
                m.subject.clone(),
                m.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &[
            "id",
            "kind",
            "status",
            "attempts",
            "to",
            "subject",
            "last error",
        ],
        &rows,
    );
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!(
        "Outbox: {}",
        if summary.is_empty() {
            "empty".to_owned()
        } else {
            summary.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn preview(
    settings: &Settings,
    db: &Database,
    owner: &str,
    out: &Path,
    period: Option<&str>,
    today: NaiveDate,
) -> anyhow::Result<()> {
    let mut conn = db.conn()?;
    let owners = outbox::owners(&mut conn)?;
    let Some(found) = owners
        .iter()
        .find(|o| o.email.eq_ignore_ascii_case(owner) || o.id.to_string() == owner)
    else {
        bail!(
            "no owner '{owner}'; give an owner's email or id as imported (`tierwise import runs` lists imports)"
        );
    };
    let period = match period {
        Some(p) => Period::parse(p).map_err(|e| anyhow::anyhow!("--period: {e}"))?,
        None => outbox::latest_published_period(&mut conn)?
            .context("nothing has been graded yet; run `tierwise grade --period YYYY-MM` first")?,
    };
    let templates = templates(settings)?;
    let domain = mail_domain(settings)?;
    let composer = composer(settings, &templates, &domain, today);
    let mut messages =
        compose::compose_period(&mut conn, &composer, period, Owners::One(found.id))?
            .with_context(|| format!("{period} has no published grades"))?;
    messages.extend(
        compose::compose_reminders(&mut conn, &composer, Owners::One(found.id))?
            .unwrap_or_default(),
    );
    if messages.is_empty() {
        println!(
            "{} has no customers in {period}; nothing to preview.",
            found.email
        );
        return Ok(());
    }
    let written = write_messages(settings, &messages, out)?;
    println!(
        "Wrote {} files for {} to {}:",
        written.len(),
        found.email,
        out.display()
    );
    for path in written {
        println!("  {}", path.display());
    }
    Ok(())
}

/// Writes each message as `<kind>-<owner>.eml` (the MIME message as it would be sent) and
/// `.html` (its HTML part), returning the paths.
pub fn write_messages(
    settings: &Settings,
    messages: &[NewMessage],
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for m in messages {
        let who = m
            .owner_id
            .map(|id| format!("owner-{id}"))
            .unwrap_or_else(|| "admins".to_owned());
        let stem = format!("{}-{who}", m.kind);
        let eml = send::render_eml(&settings.smtp.from, m.into()).with_context(|| stem.clone())?;
        let eml_path = out.join(format!("{stem}.eml"));
        std::fs::write(&eml_path, eml)
            .with_context(|| format!("writing {}", eml_path.display()))?;
        let html_path = out.join(format!("{stem}.html"));
        std::fs::write(&html_path, &m.body_html)
            .with_context(|| format!("writing {}", html_path.display()))?;
        written.push(eml_path);
        written.push(html_path);
    }
    Ok(written)
}
