//! `tierwise demo`: realistic demo data through the real importer into a local database.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use tierwise_domain::Period;
use tierwise_import::demo::{DemoSpec, generate};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, RecordKind, import_file};
use tierwise_store::queries::table_counts;

use std::path::{Path, PathBuf};

use tierwise_store::Database;
use tierwise_store::notify::{self as outbox, NewMessage, OutboxStatus};

use super::{notify, open_database, print_table};
use crate::cli::DemoArgs;
use crate::commands::import::print_report;
use crate::settings::Settings;

/// The demo's dashboard login.
const DEMO_USER: &str = "admin";
const DEMO_PASSWORD: &str = "tierwise-demo";

fn ensure_demo_user(db: &Database) -> anyhow::Result<()> {
    let mut conn = db.conn()?;
    if tierwise_store::users::find_user(&mut conn, DEMO_USER)?.is_none() {
        let hash =
            tierwise_dashboard::hash_password(DEMO_PASSWORD).map_err(|e| anyhow::anyhow!(e))?;
        tierwise_store::users::add_user(
            &mut conn,
            tierwise_store::users::NewUser {
                username: DEMO_USER,
                password_hash: &hash,
                role: "admin",
                owner_id: None,
                locale: "zh-CN",
                now: chrono::Utc::now().naive_utc(),
            },
        )?;
    }
    Ok(())
}

/// Admin address of the demo, so its admins' digest is rendered too.
const DEMO_ADMIN: &str = "admin@tierwise.localhost";

/// Queues the demo's digests, churn alerts and this week's reminders in the outbox (as a real
/// run would) and writes every queued message to `dir` as .eml and .html files.
fn render_demo_emails(settings: &Settings, db: &Database, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut settings = settings.clone();
    if settings.notify.admins.is_empty() {
        settings.notify.admins = vec![DEMO_ADMIN.to_owned()];
    }
    let templates = notify::templates(&settings)?;
    let domain = notify::mail_domain(&settings)?;
    let composer = notify::composer(&settings, &templates, &domain, tierwise_notify::today());
    let mut conn = db.conn()?;
    notify::queue_pending(&mut conn, &composer)?;
    tierwise_notify::queue_reminders(&mut conn, &composer)
        .context("queueing the demo reminders")?;
    let queued: Vec<NewMessage> =
        outbox::list_outbox(&mut conn, Some(OutboxStatus::Queued), 10_000)?
            .into_iter()
            .map(|m| NewMessage {
                dedupe_key: m.dedupe_key,
                kind: m.kind,
                owner_id: m.owner_id,
                recipient: m.recipient,
                subject: m.subject,
                body_text: m.body_text,
                body_html: m.body_html,
                message_id: m.message_id,
            })
            .collect();
    let written = notify::write_messages(&settings, &queued, dir)?;
    println!(
        "Rendered {} queued emails ({} files) to {}",
        queued.len(),
        written.len(),
        dir.display()
    );
    Ok(dir.to_path_buf())
}

/// Source name of demo records, so they never mix with a real file feed.
const DEMO_SOURCE: &str = "demo";

pub fn run(settings: &Settings, args: &DemoArgs, progress: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // The demo's history ends with the last complete month, the period a monthly run grades.
    let period = Period::containing(chrono::Utc::now().date_naive()).prev();
    let spec = DemoSpec {
        seed: args.seed,
        customers: args.customers,
        owners: args.owners,
        as_of: period.as_of(),
        ..DemoSpec::default()
    };
    let files = generate(&args.dir, &spec)
        .with_context(|| format!("generating demo data in {}", args.dir.display()))?;
    println!(
        "Generated demo data for {} customers up to {} (seed {}) in {}",
        spec.customers,
        spec.as_of,
        spec.seed,
        args.dir.display()
    );

    let db = open_database(&args.database, settings.database.pool_size)?;
    let import = ImportSettings {
        source: DEMO_SOURCE.to_string(),
        ..settings.import.clone()
    };
    let mut mapping = ColumnMapping::default();
    mapping
        .customers
        .attributes
        .insert("nps".to_string(), "nps".to_string());
    let inputs = [
        (RecordKind::Owners, &files.owners),
        (RecordKind::Customers, &files.customers),
        (RecordKind::Orders, &files.orders),
        (RecordKind::Invoices, &files.invoices),
        (RecordKind::Activities, &files.activities),
    ];
    let mut rejected = 0;
    for (kind, path) in inputs {
        let mut options = FileImportOptions::from_settings(&import, kind, mapping.clone())?;
        options.progress = progress;
        let report = import_file(&db, path, &options)
            .with_context(|| format!("importing {}", path.display()))?;
        rejected += report.totals.rows_rejected;
        print_report(&report);
    }
    let counts = table_counts(&mut *db.conn()?)?;
    println!();
    println!("Demo database {} now holds:", db.masked_url());
    print_table(
        &["owners", "customers", "orders", "invoices", "activities"],
        &[vec![
            counts.owners.to_string(),
            counts.customers.to_string(),
            counts.orders.to_string(),
            counts.invoices.to_string(),
            counts.activities.to_string(),
        ]],
    );
    // Grade the last thirteen months in order: hysteresis needs the months before, and the
    // churn rate behind CLV needs a year of history.
    println!();
    let from = period.shift(-12);
    let policy = super::grade::effective_policy(&db, settings)?;
    let graded = tierwise_grading::grade_range(&db, from, period, &policy, |r| {
        tracing::info!(period = %r.period, graded = r.summary.graded, "graded");
    })
    .with_context(|| format!("grading the demo months {from} to {period}"))?;
    if let Some(last) = graded.last() {
        println!("Graded {} months, {from} to {period}.", graded.len());
        super::grade::print_grading_report(last, &policy, false);
    }
    println!();
    let emails = render_demo_emails(settings, &db, &args.dir.join("emails"))?;
    println!();
    // Name the binary as the user can run it from here (after `cargo run` it is not on PATH).
    let program = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let here = std::env::current_dir().ok()?;
            exe.strip_prefix(here).ok().map(|p| p.display().to_string())
        })
        .unwrap_or_else(|| "tierwise".to_string());
    println!(
        "Done in {:.1}s. Look around:",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  TIERWISE__DATABASE__URL={} {program} import runs",
        args.database
    );
    println!(
        "  TIERWISE__DATABASE__URL={} {program} grades export --period {period} --out grades.csv",
        args.database
    );
    println!(
        "  TIERWISE__DATABASE__URL={} {program} notify outbox",
        args.database
    );
    println!(
        "  open {}                  the demo owners' emails, as .eml and .html",
        emails.display()
    );
    println!("  {program} import fields       what your own files may contain");
    println!("  {program} import file --help  how to import them");
    if rejected > 0 {
        anyhow::bail!(
            "{rejected} demo rows were rejected; the generator and importer disagree (a bug)"
        );
    }
    if args.no_serve {
        return Ok(ExitCode::SUCCESS);
    }
    ensure_demo_user(&db)?;
    let mut demo = settings.clone();
    demo.database.url = args.database.clone();
    // The demo is served over plain HTTP on this machine.
    demo.dashboard.secure_cookies = false;
    println!();
    println!(
        "Dashboard: http://{}/  (log in as {DEMO_USER} / {DEMO_PASSWORD}; Ctrl-C stops it)",
        demo.dashboard.bind
    );
    super::serve::run(&demo, crate::cli::ServeCommand::Dashboard { bind: None })
}
