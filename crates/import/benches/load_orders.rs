//! Bulk-load benchmark: 1,000,000 orders from CSV into SQLite and PostgreSQL through the real
//! file importer, against `psql \copy` of the same file into a plain table and into a table
//! indexed like ours (the floors).
//!
//! ```text
//! cargo bench -p tierwise-import --bench load_orders                # 1M rows, median of 3
//! cargo bench -p tierwise-import --bench load_orders -- --rows 200000 --repeat 1
//! ```
//! PostgreSQL comes from TIERWISE_BENCH_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres); `psql` must be on PATH. Each measurement runs in
//! a child process so its peak RSS (VmHWM) is its own. The report is printed and written to
//! target/bench-report/load_orders.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{Days, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, RecordKind, import_file};
use tierwise_store::Database;
use tierwise_store::testing::{peak_rss_kb, with_database_name};

struct Args {
    rows: u64,
    repeat: usize,
    out: PathBuf,
    child: Option<(String, PathBuf, String)>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        rows: 1_000_000,
        repeat: 3,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-load"),
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rows" => args.rows = it.next().context("--rows N")?.parse()?,
            "--repeat" => args.repeat = it.next().context("--repeat N")?.parse()?,
            "--out" => args.out = it.next().context("--out DIR")?.into(),
            "--child" => {
                let backend = it.next().context("--child BACKEND FILE URL")?;
                let file = it.next().context("--child BACKEND FILE URL")?.into();
                let url = it.next().context("--child BACKEND FILE URL")?;
                args.child = Some((backend, file, url));
            }
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    Ok(args)
}

/// Orders in the layout of shared/bench/gen_orders.py: heterogeneous customers, log-normal
/// amounts, costs, due and paid dates (about 8.6 orders per customer).
fn generate(path: &Path, rows: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let customers = (rows as f64 / 8.6).ceil() as u64;
    let start = NaiveDate::from_ymd_opt(2023, 11, 2).context("date")?;
    let spend: LogNormal<f64> = LogNormal::new(4.6, 0.8)?;
    let mut writer = csv::Writer::from_path(path)?;
    writer.write_record([
        "customer_id",
        "order_id",
        "order_date",
        "amount",
        "cost",
        "due_date",
        "paid_date",
    ])?;
    for order in 1..=rows {
        // Skewed customer choice: a few buy often, most rarely.
        let u: f64 = rng.random();
        let customer = ((u * u) * customers as f64) as u64;
        let day = start + Days::new(rng.random_range(0..1095));
        let amount_minor = (spend.sample(&mut rng) * 100.0).round() as i64;
        let cost_minor = amount_minor * rng.random_range(55..85) / 100;
        let due = day + Days::new(30);
        let paid = if rng.random_bool(0.03) {
            String::new()
        } else {
            (due - Days::new(rng.random_range(0..20))).to_string()
        };
        writer.write_record([
            format!("C{customer:07}"),
            order.to_string(),
            day.to_string(),
            format!("{}.{:02}", amount_minor / 100, amount_minor % 100),
            format!("{}.{:02}", cost_minor / 100, cost_minor % 100),
            due.to_string(),
            paid,
        ])?;
    }
    writer.flush()?;
    Ok(())
}

/// Child: one import, printed as `rows seconds peak_rss_kb`.
fn child(file: &Path, url: &str) -> Result<()> {
    let db = Database::open(url, 2)?;
    db.migrate()?;
    let options = FileImportOptions::from_settings(
        &ImportSettings::default(),
        RecordKind::Orders,
        ColumnMapping::default(),
    )?;
    let started = Instant::now();
    let report = import_file(&db, file, &options)?;
    let secs = started.elapsed().as_secs_f64();
    if report.totals.rows_written != report.totals.rows_read || report.totals.rows_rejected != 0 {
        bail!("unexpected import result: {:?}", report.totals);
    }
    println!("{} {secs} {}", report.totals.rows_written, peak_rss_kb());
    Ok(())
}

struct Measure {
    secs: f64,
    rss_kb: u64,
}

fn run_child(backend: &str, file: &Path, url: &str) -> Result<Measure> {
    let out = Command::new(std::env::current_exe()?)
        .args(["--child", backend])
        .arg(file)
        .arg(url)
        .output()?;
    if !out.status.success() {
        bail!(
            "{backend} load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut parts = text.split_whitespace();
    let _rows: u64 = parts.next().context("rows")?.parse()?;
    let secs: f64 = parts.next().context("secs")?.parse()?;
    let rss_kb: u64 = parts.next().context("rss")?.parse()?;
    Ok(Measure { secs, rss_kb })
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let status = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .status()?;
    if !status.success() {
        bail!("psql failed: {sql}");
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some((_, file, url)) = &args.child {
        return child(file, url);
    }
    let admin = std::env::var("TIERWISE_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    std::fs::create_dir_all(&args.out)?;
    let file = args.out.join(format!("orders_{}.csv", args.rows));
    if !file.exists() {
        eprintln!("generating {} orders into {}", args.rows, file.display());
        generate(&file, args.rows)?;
    }
    let file = file.canonicalize()?;
    let size_mb = std::fs::metadata(&file)?.len() as f64 / 1e6;

    let (mut sqlite, mut postgres, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.repeat {
        eprintln!("round {}/{}", round + 1, args.repeat);
        let db_path = args.out.join("bench.db");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
        }
        sqlite.push(run_child("sqlite", &file, &db_path.to_string_lossy())?);

        let name = format!("tierwise_bench_{}", std::process::id());
        psql(&admin, &format!("DROP DATABASE IF EXISTS {name}"))?;
        psql(&admin, &format!("CREATE DATABASE {name}"))?;
        let url = with_database_name(&admin, &name);
        let measured = run_child("postgres", &file, &url);
        // The floors: psql's client-side COPY of the same file into a plain table, and into a
        // table indexed like tierwise's orders (surrogate key, unique order id, customer index).
        let copy_into = |table: &str| -> Result<f64> {
            let started = Instant::now();
            psql(
                &url,
                &format!(
                    "\\copy {table} (customer_id, order_id, order_date, amount, cost, due_date, paid_date) FROM '{}' WITH (FORMAT csv, HEADER true)",
                    file.display()
                ),
            )?;
            Ok(started.elapsed().as_secs_f64())
        };
        psql(
            &url,
            "CREATE TABLE orders_plain (customer_id text, order_id text, order_date date, amount numeric(14,2), cost numeric(14,2), due_date date, paid_date date)",
        )?;
        psql(
            &url,
            "CREATE TABLE orders_indexed (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id text COLLATE \"C\" NOT NULL, order_id text COLLATE \"C\" NOT NULL UNIQUE, order_date date NOT NULL, amount numeric(14,2) NOT NULL, cost numeric(14,2), due_date date, paid_date date); CREATE INDEX ON orders_indexed (customer_id, order_date)",
        )?;
        copy.push((copy_into("orders_plain")?, copy_into("orders_indexed")?));
        psql(
            &admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        postgres.push(measured?);
    }

    let rows = args.rows as f64;
    let rate = |secs: f64| rows / secs;
    let sqlite_secs = median(sqlite.iter().map(|m| m.secs).collect());
    let pg_secs = median(postgres.iter().map(|m| m.secs).collect());
    let plain_secs = median(copy.iter().map(|c| c.0).collect());
    let indexed_secs = median(copy.iter().map(|c| c.1).collect());
    let mib = |m: &[Measure]| m.iter().map(|m| m.rss_kb).max().unwrap_or(0) as f64 / 1024.0;
    let mut report = String::new();
    writeln!(
        report,
        "# Bulk load of {} orders from CSV ({size_mb:.0} MB), median of {}",
        args.rows, args.repeat
    )?;
    writeln!(report)?;
    writeln!(
        report,
        "| path | seconds | rows/s | ratio to \\copy plain / indexed | peak RSS | target |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    writeln!(
        report,
        "| tierwise → SQLite | {sqlite_secs:.2} | {:.0} | {:.2} / {:.2} | {:.0} MiB | ≥ 200,000 rows/s, < 150 MB |",
        rate(sqlite_secs),
        plain_secs / sqlite_secs,
        indexed_secs / sqlite_secs,
        mib(&sqlite)
    )?;
    writeln!(
        report,
        "| tierwise → PostgreSQL | {pg_secs:.2} | {:.0} | {:.2} / {:.2} | {:.0} MiB | ≥ 0.50 of \\copy, < 150 MB |",
        rate(pg_secs),
        plain_secs / pg_secs,
        indexed_secs / pg_secs,
        mib(&postgres)
    )?;
    writeln!(
        report,
        "| psql \\copy, plain table | {plain_secs:.2} | {:.0} | 1.00 / – | – | floor |",
        rate(plain_secs)
    )?;
    writeln!(
        report,
        "| psql \\copy, table indexed like orders | {indexed_secs:.2} | {:.0} | – / 1.00 | – | equivalent-table floor |",
        rate(indexed_secs)
    )?;
    writeln!(report)?;
    writeln!(
        report,
        "tierwise validates every row, deduplicates by (source, id), creates customers on the fly and merges with ON CONFLICT into indexed tables, all in one transaction."
    )?;
    print!("{report}");
    let report_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-report");
    std::fs::create_dir_all(&report_dir)?;
    std::fs::write(report_dir.join("load_orders.md"), report)?;
    Ok(())
}
