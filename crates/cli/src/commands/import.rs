//! `tierwise import file | runs | rejects`

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tierwise_import::{ColumnMapping, FileImportOptions, ImportReport, RecordKind, import_file};
use tierwise_store::ImportRunId;
use tierwise_store::runs::{find_import_run, recent_import_runs, rejects_of_run};

use super::{EXIT_REJECTS, open_database, print_table};
use crate::cli::{ImportCommand, ImportFileArgs};
use crate::settings::{Settings, load_mapping};

pub fn run(
    settings: &Settings,
    command: ImportCommand,
    progress: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        ImportCommand::File(args) => file(settings, &args, progress),
        ImportCommand::Fields { kind } => fields(kind),
        ImportCommand::Runs { limit } => runs(settings, limit),
        ImportCommand::Rejects { run, limit } => rejects(settings, run, limit),
        ImportCommand::Crm { source, full } => crm(settings, &source, full),
        ImportCommand::Status => status(settings),
    }
}

fn crm(settings: &Settings, source: &str, full: bool) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let locale = tierwise_domain::Locale::parse(&settings.import.default_locale)
        .map_err(|e| anyhow::anyhow!("import.default_locale: {}", e.reason))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime
        .block_on(tierwise_import::crm::sync_source(
            &db,
            &settings.crm,
            source,
            full,
            locale,
        ))
        .with_context(|| format!("importing from {source}"))?;
    let rows: Vec<Vec<String>> = report
        .entities
        .iter()
        .map(|e| {
            vec![
                e.entity.to_owned(),
                e.run.map(|r| r.0.to_string()).unwrap_or_default(),
                e.pages.to_string(),
                e.records.to_string(),
                e.written.to_string(),
                e.deleted.to_string(),
                e.rejected.to_string(),
                if e.resumed { "resumed" } else { "" }.to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "entity",
            "run",
            "pages",
            "read",
            "written",
            "marked deleted",
            "rejected",
            "",
        ],
        &rows,
    );
    if report.rejected() > 0 {
        println!(
            "{} records were rejected; see them with: tierwise import rejects RUN",
            report.rejected()
        );
        return Ok(ExitCode::from(EXIT_REJECTS));
    }
    Ok(ExitCode::SUCCESS)
}

fn status(settings: &Settings) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let states = tierwise_store::crm::sync_states(&mut *db.conn()?)?;
    if states.is_empty() {
        println!(
            "No CRM imports yet. Enabled connectors: {}. Try: tierwise import crm pipedrive",
            match settings.crm.enabled().join(", ") {
                list if list.is_empty() => "none".to_owned(),
                list => list,
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let time = |t: Option<chrono::NaiveDateTime>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "—".into())
    };
    let rows: Vec<Vec<String>> = states
        .iter()
        .map(|s| {
            vec![
                s.source.clone(),
                s.entity.clone(),
                time(s.watermark),
                if s.in_progress {
                    format!("interrupted after {} pages; resumes next run", s.run_pages)
                } else {
                    "complete".into()
                },
                time(Some(s.updated_at)),
            ]
        })
        .collect();
    print_table(
        &[
            "source",
            "entity",
            "changes up to (UTC)",
            "state",
            "updated (UTC)",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn file(settings: &Settings, args: &ImportFileArgs, progress: bool) -> anyhow::Result<ExitCode> {
    let mut import = settings.import.clone();
    if let Some(encoding) = &args.encoding {
        import.encoding = encoding.clone();
    }
    if let Some(source) = &args.source {
        import.source = source.clone();
    }
    if args.no_create_customers {
        import.create_missing_customers = false;
    }
    let mapping = match args.mapping.as_deref().or_else(|| {
        (!settings.import.mapping_file.is_empty()).then(|| Path::new(&settings.import.mapping_file))
    }) {
        Some(path) => load_mapping(path)?,
        None => ColumnMapping::default(),
    };
    let mut options = FileImportOptions::from_settings(&import, args.kind, mapping)
        .context("invalid import options")?;
    options.sheet = args.sheet.clone();
    options.progress = progress;
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let mut any_rejected = false;
    for path in &args.paths {
        let report = import_file(&db, path, &options).with_context(|| {
            format!(
                "importing {} failed; nothing from it was loaded",
                path.display()
            )
        })?;
        any_rejected |= report.totals.rows_rejected > 0;
        print_report(&report);
    }
    Ok(if any_rejected {
        ExitCode::from(EXIT_REJECTS)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints what one file import did, with the first rejects and how to see them all.
pub fn print_report(report: &ImportReport) {
    let t = &report.totals;
    let secs = report.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        t.rows_read as f64 / secs
    } else {
        0.0
    };
    println!(
        "{} ({}, {}): {} rows read, {} written, {} unchanged, {} rejected{} in {:.2}s ({:.0} rows/s) [run {}]",
        report.path.display(),
        report.kind,
        report.encoding,
        t.rows_read,
        t.rows_written,
        t.rows_unchanged,
        t.rows_rejected,
        if t.customers_created > 0 {
            format!(", {} customers created", t.customers_created)
        } else {
            String::new()
        },
        secs,
        rate,
        report.run.0,
    );
    if !t.unused_columns.is_empty() {
        println!("  columns not used: {}", t.unused_columns.join(", "));
    }
    if t.rows_rejected > 0 {
        let by_field: Vec<String> = report
            .rejects_by_field
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        println!("  rejects by column: {}", by_field.join(", "));
        for reject in &report.first_rejects {
            println!("  line {}: {}", reject.line, reject.reason);
        }
        if t.rows_rejected as usize > report.first_rejects.len() {
            println!(
                "  … all {} with their raw records: tierwise import rejects {}",
                t.rows_rejected, report.run.0
            );
        }
    }
}

fn fields(only: Option<RecordKind>) -> anyhow::Result<ExitCode> {
    for kind in RecordKind::ALL
        .into_iter()
        .filter(|k| only.is_none_or(|o| o == *k))
    {
        println!("{kind}:");
        let rows: Vec<Vec<String>> = kind
            .fields()
            .iter()
            .map(|f| {
                vec![
                    f.name.to_string(),
                    if f.required { "required" } else { "optional" }.to_string(),
                    f.help.to_string(),
                ]
            })
            .collect();
        print_table(&["field", "", "meaning"], &rows);
        if kind == RecordKind::Customers {
            println!(
                "  + any numeric column mapped under [customers.attributes] in a mapping file"
            );
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn runs(settings: &Settings, limit: i64) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let runs = recent_import_runs(&mut *db.conn()?, limit)?;
    if runs.is_empty() {
        println!("No imports yet. Try: tierwise import file --kind customers customers.csv");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.0.to_string(),
                r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.kind.clone(),
                r.status.as_str().to_string(),
                r.totals.rows_read.to_string(),
                r.totals.rows_written.to_string(),
                r.totals.rows_rejected.to_string(),
                r.error.clone().unwrap_or_else(|| r.origin.clone()),
            ]
        })
        .collect();
    print_table(
        &[
            "run",
            "started (UTC)",
            "kind",
            "status",
            "read",
            "written",
            "rejected",
            "file / error",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn rejects(settings: &Settings, run: i64, limit: i64) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let mut conn = db.conn()?;
    let Some(found) = find_import_run(&mut conn, ImportRunId(run))? else {
        anyhow::bail!("there is no import run {run}; `tierwise import runs` lists them");
    };
    let rejects = rejects_of_run(&mut conn, found.id, limit)?;
    println!(
        "Run {run} ({}, {}): {} rejected row(s)",
        found.kind, found.origin, found.totals.rows_rejected
    );
    for r in rejects {
        println!(
            "line {} [{}]: {}",
            r.line,
            r.field.as_deref().unwrap_or("row"),
            r.reason
        );
        println!("    {}", r.raw_record);
    }
    Ok(ExitCode::SUCCESS)
}
