//! `tierwise grade`, `tierwise grades export | runs | show`, `tierwise override …`

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use tierwise_domain::grading::policy::MonetaryMeasure;
use tierwise_domain::grading::{Override, OverrideKind, Policy, Summary};
use tierwise_domain::{CustomerId, Period};
use tierwise_grading::{GradingReport, Mode, grade_period, grade_range};
use tierwise_store::grading::{
    GradedCustomer, clear_override, for_each_graded_customer, graded_customer, list_overrides,
    override_history, published_periods, published_run, recent_runs, set_override,
};
use tierwise_store::{Database, DbConnection};

use super::{open_database, print_table};
use crate::cli::{GradeArgs, GradesCommand, OverrideCommand, OverrideTarget};
use crate::settings::Settings;

fn period(raw: &str, flag: &str) -> anyhow::Result<Period> {
    Period::parse(raw).map_err(|e| anyhow::anyhow!("{flag}: {}", e.reason))
}

/// Reads a policy file: the keys of `[grading]`, at the top level or under a `[grading]` table.
pub fn load_policy(path: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading policy file {}", path.display()))?;
    let mut value: toml::Table = toml::from_str(&text)
        .with_context(|| format!("policy file {} is not TOML", path.display()))?;
    let table = match value.remove("grading") {
        Some(toml::Value::Table(t)) if value.is_empty() => t,
        Some(_) => bail!(
            "policy file {}: put every key under [grading] or none of them",
            path.display()
        ),
        None => value,
    };
    let policy: Policy = toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("policy file {}", path.display()))?;
    policy.validate().map_err(|e| {
        anyhow::anyhow!(
            "policy file {}: grading.{}: {}",
            path.display(),
            e.field,
            e.reason
        )
    })?;
    Ok(policy)
}

pub fn grade(settings: &Settings, args: &GradeArgs, progress: bool) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let policy = match &args.policy {
        // A policy file holds `[grading]` only; the models run as `[predictive]` says.
        Some(path) => Policy {
            predictive: settings.predictive.clone(),
            ..load_policy(path)?
        },
        None => effective_policy(&db, settings)?,
    };
    match (&args.period, &args.from, &args.to) {
        (Some(p), _, _) => {
            let period = period(p, "--period")?;
            let mode = if args.dry_run {
                Mode::DryRun
            } else {
                Mode::Publish
            };
            let report = grade_period(&db, period, &policy, mode)
                .with_context(|| format!("grading {period}"))?;
            print_grading_report(&report, &policy, true);
            if mode == Mode::Publish {
                notify_after_grading(settings, &db)?;
            }
        }
        (None, Some(from), Some(to)) => {
            let (from, to) = (period(from, "--from")?, period(to, "--to")?);
            let bar = progress_bar(progress, from, to);
            let reports = grade_range(&db, from, to, &policy, |r| {
                if let Some(bar) = &bar {
                    bar.set_message(r.period.to_string());
                    bar.inc(1);
                }
            })
            .with_context(|| format!("back-filling {from} to {to}"))?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let rows: Vec<Vec<String>> = reports.iter().map(|r| range_row(r, &policy)).collect();
            let mut headers = vec!["period", "run", "graded", "changes"];
            let names: Vec<&str> = policy
                .tiers
                .levels
                .iter()
                .map(|l| l.name.as_str())
                .collect();
            headers.extend(&names);
            headers.push("seconds");
            print_table(&headers, &rows);
            notify_after_grading(settings, &db)?;
        }
        _ => bail!("give --period, or --from and --to"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Queues the digests the publication owes, when [notify] after_grading is on. A failure here
/// leaves the grades published and the publication pending for `tierwise notify digest`.
fn notify_after_grading(settings: &Settings, db: &Database) -> anyhow::Result<()> {
    if !settings.notify.after_grading {
        return Ok(());
    }
    let templates = super::notify::templates(settings)?;
    let domain = super::notify::mail_domain(settings)?;
    let composer = super::notify::composer(settings, &templates, &domain, tierwise_notify::today());
    if let Some(n) = super::notify::queue_pending(&mut *db.conn()?, &composer)
        .context("grades are published; queueing their notifications failed (retry with `tierwise notify digest`)")?
    {
        println!("Queued {n} notifications; send them with `tierwise notify send`.");
    }
    Ok(())
}

fn progress_bar(progress: bool, from: Period, to: Period) -> Option<indicatif::ProgressBar> {
    if !progress {
        return None;
    }
    let months = (to.year() - from.year()) * 12 + to.month() as i32 - from.month() as i32 + 1;
    let bar = indicatif::ProgressBar::new(u64::try_from(months).unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("grading {bar:30} {pos}/{len} months, last {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

fn range_row(r: &GradingReport, policy: &Policy) -> Vec<String> {
    let mut row = vec![
        r.period.to_string(),
        r.run.map_or("-".into(), |id| id.0.to_string()),
        r.summary.graded.to_string(),
        r.summary.tier_changes.to_string(),
    ];
    for level in &policy.tiers.levels {
        let n = r
            .summary
            .tiers
            .iter()
            .find(|(name, _)| *name == level.name)
            .map_or(0, |(_, g)| g.customers);
        row.push(n.to_string());
    }
    row.push(format!("{:.1}", r.total_ms() as f64 / 1000.0));
    row
}

fn percent(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Customers per tier before (previous period's assigned tier) and now, from the migration matrix.
fn previous_counts(summary: &Summary) -> std::collections::BTreeMap<String, u64> {
    summary
        .migration
        .iter()
        .map(|(from, row)| (from.clone(), row.values().sum()))
        .collect()
}

pub fn print_grading_report(report: &GradingReport, policy: &Policy, verbose: bool) {
    let s = &report.summary;
    match (report.run, &report.movement) {
        (Some(run), _) => println!(
            "Graded {} as of {}: {} of {} customers graded (run {}, policy {}).",
            report.period,
            report.period.as_of(),
            s.graded,
            s.customers,
            run.0,
            report.policy_hash
        ),
        (None, _) => println!(
            "Dry run for {} as of {} (policy {}): {} of {} customers graded; nothing was written.",
            report.period,
            report.period.as_of(),
            report.policy_hash,
            s.graded,
            s.customers
        ),
    }
    if report.unknown_pin_tiers > 0 {
        println!(
            "Warning: {} pins name a tier this policy does not have; those customers kept their computed tier. Re-pin them (`tierwise override list`).",
            report.unknown_pin_tiers
        );
    }
    if !report.abandoned.is_empty() {
        let ids: Vec<String> = report.abandoned.iter().map(|r| r.0.to_string()).collect();
        println!(
            "Marked abandoned run(s) {} failed (their process ended mid-run; earlier grades were kept).",
            ids.join(", ")
        );
    }
    print_predictive(report);
    println!();
    let before = previous_counts(s);
    let rows: Vec<Vec<String>> = s
        .tiers
        .iter()
        .map(|(name, g)| {
            vec![
                name.clone(),
                g.customers.to_string(),
                before.get(name).copied().unwrap_or(0).to_string(),
                percent(g.revenue_share),
            ]
        })
        .collect();
    print_table(
        &["tier", "customers", "last period", "revenue share"],
        &rows,
    );
    if let Some(m) = &report.movement {
        println!();
        if m.compared {
            println!(
                "Against the published grades of {}: {} customers would change tier ({} up, {} down).",
                report.period, m.moved, m.up, m.down
            );
        } else {
            println!("{} has no published grades to compare with.", report.period);
        }
    } else {
        println!();
        println!(
            "{} tier changes against the previous period.",
            s.tier_changes
        );
    }
    if verbose {
        println!();
        let segments: Vec<Vec<String>> = s
            .segments
            .iter()
            .map(|(k, g)| vec![k.clone(), g.customers.to_string(), percent(g.revenue_share)])
            .collect();
        print_table(&["segment", "customers", "revenue share"], &segments);
        println!();
        let abc: Vec<String> = s
            .abc
            .iter()
            .map(|(k, g)| format!("{k} {} ({})", g.customers, percent(g.revenue_share)))
            .collect();
        println!("ABC: {}", abc.join(", "));
        let stages: Vec<String> = s
            .lifecycle
            .iter()
            .map(|(k, g)| format!("{k} {}", g.customers))
            .collect();
        println!("Lifecycle: {}", stages.join(", "));
        let timings: Vec<String> = report
            .timings
            .iter()
            .map(|(k, ms)| format!("{k} {ms} ms"))
            .collect();
        println!(
            "Read {} orders and {} invoices in {:.2}s ({}).",
            report.orders_read,
            report.invoices_read,
            report.total_ms() as f64 / 1000.0,
            timings.join(", ")
        );
    }
    let _ = policy;
}

pub fn grades(settings: &Settings, command: GradesCommand) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    match command {
        GradesCommand::Export {
            period: p,
            out,
            format,
        } => {
            let period = period(&p, "--period")?;
            let format = match format.as_deref() {
                Some(f) => f.to_ascii_lowercase(),
                None => out
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_default(),
            };
            let n = match format.as_str() {
                "csv" => export_csv(&db, period, &out)?,
                "xlsx" => export_xlsx(&db, period, &out)?,
                other => bail!(
                    "unknown export format '{other}'; use --format csv or xlsx (or an .csv/.xlsx file name)"
                ),
            };
            println!(
                "Wrote {n} customers graded for {period} to {}",
                out.display()
            );
        }
        GradesCommand::Runs { limit } => {
            let runs = recent_runs(&mut *db.conn()?, limit)?;
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|r| {
                    let seconds = r
                        .finished_at
                        .map(|f| {
                            format!(
                                "{:.1}",
                                (f - r.started_at).num_milliseconds() as f64 / 1000.0
                            )
                        })
                        .unwrap_or_default();
                    vec![
                        r.id.0.to_string(),
                        r.period.to_string(),
                        r.status.as_str().to_string(),
                        r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        seconds,
                        r.graded.to_string(),
                        r.tier_changes.to_string(),
                        r.policy_hash.clone(),
                        r.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "run",
                    "period",
                    "status",
                    "started (UTC)",
                    "seconds",
                    "graded",
                    "changes",
                    "policy",
                    "error",
                ],
                &rows,
            );
        }
        GradesCommand::Show {
            customer,
            period: p,
            source,
        } => show(settings, &db, &customer, p.as_deref(), source.as_deref())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Export columns, in order.
const EXPORT_HEADERS: [&str; 32] = [
    "source",
    "external_id",
    "name",
    "contact_name",
    "contact_email",
    "owner_email",
    "graded",
    "recency_days",
    "frequency",
    "monetary",
    "average_order_value",
    "r_score",
    "f_score",
    "m_score",
    "segment",
    "abc_class",
    "credit_score",
    "credit_grade",
    "profit",
    "composite",
    "computed_tier",
    "tier",
    "tier_reason",
    "lifecycle",
    "loyalty",
    "clv",
    "p_alive",
    "expected_purchases_90d",
    "expected_purchases_12m",
    "expected_order_value",
    "clv_model",
    "explanation",
];

/// A cell of an export row.
enum Cell {
    Text(String),
    Int(i64),
    Float(f64),
    Empty,
}

fn text(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

fn opt_text(s: Option<String>) -> Cell {
    s.map_or(Cell::Empty, Cell::Text)
}

/// A float rounded to `decimals` places, or an empty cell.
fn float(v: Option<f64>, decimals: i32) -> Cell {
    let scale = 10f64.powi(decimals);
    v.map_or(Cell::Empty, |v| Cell::Float((v * scale).round() / scale))
}

/// The fitted predictive models, or why they could not be fitted.
fn print_predictive(report: &GradingReport) {
    if let Some(error) = &report.predictive_error {
        println!(
            "Predictive models not fitted: {error}. Grades carry no P(alive) or model CLV this period."
        );
    }
    let Some(m) = &report.predictive else {
        return;
    };
    let p = &m.purchases.params;
    let unit = match m.time_unit {
        tierwise_domain::grading::TimeUnit::Days => "days",
        tierwise_domain::grading::TimeUnit::Weeks => "weeks",
    };
    let variant = match m.purchases.variant {
        tierwise_domain::predictive::Variant::Bg => "BG/NBD",
        tierwise_domain::predictive::Variant::Modified => "MBG/NBD",
    };
    println!(
        "{variant} on {} buyers ({} repeat): r {:.4}, alpha {:.4} {unit}, a {:.4}, b {:.4}; log-likelihood {:.2}.",
        m.customers, m.repeat_buyers, p.r, p.alpha, p.a, p.b, m.purchases.log_likelihood
    );
    match (&m.spend, &m.spend_error) {
        (Some(g), _) => println!(
            "Gamma-Gamma on {} repeat buyers: p {:.4}, q {:.4}, gamma {:.4}; log-likelihood {:.2}.",
            g.customers, g.params.p, g.params.q, g.params.gamma, g.log_likelihood
        ),
        (None, Some(error)) => {
            println!("Gamma-Gamma not fitted: {error}. Grades carry no model CLV this period.")
        }
        (None, None) => {}
    }
}

/// The policy in force: `[grading]` with the newest version applied from the dashboard over it.
pub fn effective_policy(db: &Database, settings: &Settings) -> anyhow::Result<Policy> {
    let effective = tierwise_grading::effective_policy(&mut *db.conn()?, &settings.grading)?;
    if let Some(v) = &effective.version {
        tracing::info!(
            version = v.id,
            author = %v.author,
            "grading with policy version {} applied by {} on {}",
            v.id,
            v.author,
            v.created_at.format("%Y-%m-%d")
        );
    }
    Ok(effective.policy)
}

/// The policy a published period was graded with (its snapshot is stored with the run).
fn run_policy(db: &Database, period: Period) -> anyhow::Result<Policy> {
    let run = published_run(&mut *db.conn()?, period)?.ok_or_else(|| not_graded(period))?;
    serde_json::from_str(&run.policy)
        .with_context(|| format!("reading the policy stored with grading run {}", run.id.0))
}

fn export_row(c: GradedCustomer, monetary_is_average: bool) -> Vec<Cell> {
    let int = |v: Option<i64>| v.map_or(Cell::Empty, Cell::Int);
    let aov = if monetary_is_average {
        Some(c.monetary)
    } else {
        (c.frequency > 0).then(|| c.monetary / i64::from(c.frequency))
    };
    vec![
        text(c.source),
        text(c.external_id),
        text(c.name),
        opt_text(c.contact_name),
        opt_text(c.contact_email),
        opt_text(c.owner_email),
        text(if c.graded { "yes" } else { "no" }),
        int(c.recency_days.map(i64::from)),
        Cell::Int(i64::from(c.frequency)),
        Cell::Int(c.monetary),
        int(aov),
        int(c.r_score.map(i64::from)),
        int(c.f_score.map(i64::from)),
        int(c.m_score.map(i64::from)),
        opt_text(c.segment),
        opt_text(c.abc_class),
        c.credit_score
            .map_or(Cell::Empty, |v| Cell::Float((v * 100.0).round() / 100.0)),
        text(c.credit_grade),
        int(c.profit),
        c.composite
            .map_or(Cell::Empty, |v| Cell::Float((v * 1000.0).round() / 1000.0)),
        opt_text(c.computed_tier),
        opt_text(c.tier),
        text(c.tier_reason),
        text(c.lifecycle),
        opt_text(c.loyalty),
        int(c.clv),
        float(c.prediction.p_alive, 4),
        float(c.prediction.expected_purchases_90d, 3),
        float(c.prediction.expected_purchases_12m, 3),
        int(c.prediction.expected_order_value),
        int(c.prediction.clv_model),
        opt_text(
            c.explanation
                .map(|e| tierwise_grading::explanation_object(&e).into_owned()),
        ),
    ]
}

/// Text a spreadsheet would run as a formula gets a leading apostrophe (CSV injection).
fn spreadsheet_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

fn not_graded(period: Period) -> anyhow::Error {
    anyhow::anyhow!("{period} has not been graded; run `tierwise grade --period {period}` first")
}

fn export_csv(db: &Database, period: Period, out: &Path) -> anyhow::Result<u64> {
    let average = run_policy(db, period)?.rfm.monetary == MonetaryMeasure::Average;
    let mut writer =
        csv::Writer::from_path(out).with_context(|| format!("creating {}", out.display()))?;
    writer.write_record(EXPORT_HEADERS)?;
    let mut n = 0u64;
    let mut record = csv::StringRecord::new();
    let graded = for_each_graded_customer(&mut *db.conn()?, period, |c| {
        record.clear();
        for cell in export_row(c, average) {
            match cell {
                Cell::Text(s) => record.push_field(&spreadsheet_safe(&s)),
                Cell::Int(v) => record.push_field(&v.to_string()),
                Cell::Float(v) => record.push_field(&v.to_string()),
                Cell::Empty => record.push_field(""),
            }
        }
        writer
            .write_record(&record)
            .map_err(|e| tierwise_store::StoreError::Corrupt(format!("writing the export: {e}")))?;
        n += 1;
        Ok(())
    })?;
    if !graded {
        bail!(not_graded(period));
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(n)
}

fn export_xlsx(db: &Database, period: Period, out: &Path) -> anyhow::Result<u64> {
    let average = run_policy(db, period)?.rfm.monetary == MonetaryMeasure::Average;
    use rust_xlsxwriter::{Format, Workbook};
    let mut workbook = Workbook::new();
    let sheet = workbook.add_worksheet_with_constant_memory()?;
    sheet.set_name(period.to_string())?;
    let bold = Format::new().set_bold();
    for (col, header) in EXPORT_HEADERS.iter().enumerate() {
        sheet.write_string_with_format(0, col as u16, *header, &bold)?;
    }
    let mut row = 0u32;
    let mut failure: Option<rust_xlsxwriter::XlsxError> = None;
    let graded = for_each_graded_customer(&mut *db.conn()?, period, |c| {
        row += 1;
        for (col, cell) in export_row(c, average).into_iter().enumerate() {
            let col = col as u16;
            // write_string never evaluates formulas; text stays text in Excel.
            let written = match cell {
                Cell::Text(s) => sheet.write_string(row, col, s).map(|_| ()),
                Cell::Int(v) => sheet.write_number(row, col, v as f64).map(|_| ()),
                Cell::Float(v) => sheet.write_number(row, col, v).map(|_| ()),
                Cell::Empty => Ok(()),
            };
            if let Err(e) = written {
                failure.get_or_insert(e);
            }
        }
        Ok(())
    })?;
    if let Some(e) = failure {
        return Err(e).context("writing the XLSX export");
    }
    if !graded {
        bail!(not_graded(period));
    }
    workbook
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(u64::from(row))
}

fn resolve_customer(
    conn: &mut DbConnection,
    settings: &Settings,
    customer: &str,
    source: Option<&str>,
) -> anyhow::Result<CustomerId> {
    let source = source.unwrap_or(&settings.import.source);
    let found = tierwise_store::queries::find_customer(conn, source, customer)?;
    found.map(|c| c.id).with_context(|| {
        format!("no customer '{customer}' from source '{source}'; check the id, or pass --source")
    })
}

fn show(
    settings: &Settings,
    db: &Database,
    customer: &str,
    period_arg: Option<&str>,
    source: Option<&str>,
) -> anyhow::Result<()> {
    let mut conn = db.conn()?;
    let id = resolve_customer(&mut conn, settings, customer, source)?;
    let period = match period_arg {
        Some(p) => period(p, "--period")?,
        None => *published_periods(&mut conn)?
            .last()
            .context("nothing has been graded yet; run `tierwise grade --period YYYY-MM`")?,
    };
    if published_run(&mut conn, period)?.is_none() {
        bail!(not_graded(period));
    }
    let c = graded_customer(&mut conn, period, id)?
        .with_context(|| format!("customer '{customer}' has no grade for {period}"))?;
    println!("{} ({}:{}) — {period}", c.name, c.source, c.external_id);
    let field = |k: &str, v: String| println!("  {k:<16}{v}");
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    field(
        "tier",
        format!(
            "{} (computed {}, {})",
            opt(c.tier.clone()),
            opt(c.computed_tier.clone()),
            c.tier_reason
        ),
    );
    field(
        "composite",
        c.composite.map_or("-".into(), |v| format!("{v:.2}")),
    );
    field(
        "RFM",
        format!(
            "R {} F {} M {} — {} ({} days, {} orders, {} monetary)",
            opt(c.r_score.map(|v| v.to_string())),
            opt(c.f_score.map(|v| v.to_string())),
            opt(c.m_score.map(|v| v.to_string())),
            opt(c.segment.clone()),
            opt(c.recency_days.map(|v| v.to_string())),
            c.frequency,
            c.monetary
        ),
    );
    field("ABC", opt(c.abc_class.clone()));
    field(
        "credit",
        format!(
            "{} {}",
            c.credit_grade,
            opt(c.credit_score.map(|v| format!("{v:.1}")))
        ),
    );
    field("profit", opt(c.profit.map(|v| v.to_string())));
    field(
        "lifecycle",
        format!("{} (loyalty: {})", c.lifecycle, opt(c.loyalty.clone())),
    );
    field("CLV", opt(c.clv.map(|v| v.to_string())));
    let p = &c.prediction;
    if let Some(alive) = p.p_alive {
        field(
            "P(alive)",
            format!(
                "{alive:.3}; expected purchases {} in 90 days, {} in 12 months",
                opt(p.expected_purchases_90d.map(|v| format!("{v:.2}"))),
                opt(p.expected_purchases_12m.map(|v| format!("{v:.2}")))
            ),
        );
        field(
            "model CLV",
            format!(
                "{} (expected order value {})",
                opt(p.clv_model.map(|v| v.to_string())),
                opt(p.expected_order_value.map(|v| v.to_string()))
            ),
        );
    }
    let explanation = c
        .explanation
        .as_deref()
        .map(|e| tierwise_grading::explanation_object(e).into_owned())
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(&explanation).unwrap_or_default();
    if let Some(components) = parsed.get("components").and_then(|v| v.as_object()) {
        // The weights the run used, from its stored policy (today's configuration may differ).
        let policy = run_policy(db, period)?;
        let weights = policy.components.weights();
        let names = tierwise_domain::grading::BUILTIN_COMPONENTS
            .iter()
            .map(|s| s.to_string())
            .chain(policy.components.custom.keys().cloned());
        let parts: Vec<String> = names
            .zip(weights)
            .filter_map(|(name, w)| {
                components
                    .get(&name)
                    .and_then(|v| v.as_f64())
                    .map(|v| format!("{name} {v:.3} × {w}"))
            })
            .collect();
        field("components", parts.join(", "));
    }
    field("explanation", explanation);
    let history = override_history(&mut conn, id)?;
    for e in history {
        field(
            "override",
            format!(
                "{} {} by {} at {}: {}{}",
                e.action,
                e.tier.unwrap_or_default(),
                e.author,
                e.at.format("%Y-%m-%d %H:%M"),
                e.reason,
                e.until.map(|u| format!(" (until {u})")).unwrap_or_default()
            ),
        );
    }
    Ok(())
}

fn parse_until(raw: Option<&str>) -> anyhow::Result<Option<NaiveDate>> {
    raw.map(|s| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| anyhow::anyhow!("--until '{s}' is not a date like 2027-03-31"))
    })
    .transpose()
}

fn author(target: &OverrideTarget) -> String {
    target
        .author
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "cli".into())
}

/// Sets `kind` on the target customer with the target's reason and author.
fn apply_override(
    conn: &mut DbConnection,
    settings: &Settings,
    target: &OverrideTarget,
    kind: OverrideKind,
    until: Option<&str>,
) -> anyhow::Result<()> {
    let id = resolve_customer(conn, settings, &target.customer, target.source.as_deref())?;
    let o = Override {
        kind,
        reason: target.reason.clone(),
        author: author(target),
        until: parse_until(until)?,
    };
    set_override(conn, id, &o)?;
    Ok(())
}

pub fn override_command(settings: &Settings, command: OverrideCommand) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let mut conn = db.conn()?;
    match command {
        OverrideCommand::Pin {
            target,
            tier,
            until,
        } => {
            if settings.grading.tier_index(&tier).is_none() {
                let names: Vec<&str> = settings
                    .grading
                    .tiers
                    .levels
                    .iter()
                    .map(|l| l.name.as_str())
                    .collect();
                bail!(
                    "--tier '{tier}' is not a configured tier ({})",
                    names.join(", ")
                );
            }
            let kind = OverrideKind::Pin { tier: tier.clone() };
            apply_override(&mut conn, settings, &target, kind, until.as_deref())?;
            println!(
                "Pinned {} to tier {tier}; it applies from the next grading run.",
                target.customer
            );
        }
        OverrideCommand::Block { target, until } => {
            apply_override(
                &mut conn,
                settings,
                &target,
                OverrideKind::Block,
                until.as_deref(),
            )?;
            println!(
                "Blocked {} from grading; it applies from the next grading run.",
                target.customer
            );
        }
        OverrideCommand::Clear { target } => {
            let id = resolve_customer(
                &mut conn,
                settings,
                &target.customer,
                target.source.as_deref(),
            )?;
            if clear_override(&mut conn, id, &author(&target), &target.reason)? {
                println!("Cleared the override of {}.", target.customer);
            } else {
                bail!("{} has no override to clear", target.customer);
            }
        }
        OverrideCommand::List => {
            let rows: Vec<Vec<String>> = list_overrides(&mut conn)?
                .into_iter()
                .map(|(id, o)| {
                    let (kind, tier) = match o.kind {
                        OverrideKind::Pin { tier } => ("pin", tier),
                        OverrideKind::Block => ("block", String::new()),
                    };
                    vec![
                        id.0.to_string(),
                        kind.into(),
                        tier,
                        o.until.map(|u| u.to_string()).unwrap_or_default(),
                        o.author,
                        o.reason,
                    ]
                })
                .collect();
            print_table(
                &["customer id", "kind", "tier", "until", "author", "reason"],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
